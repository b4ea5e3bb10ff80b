r"""The two baselines of the paper, re-implemented in the discrete masking setting (appendix A.2, A.4).

Both move frames through per-frame levels ``t`` (0 = fully masked, 1 = clean). A frame that goes from
level :math:`t_a` to :math:`t_b` in one pass unmasks each of its masked tokens independently with
probability

.. math:: p = \frac{\kappa(t_b) - \kappa(t_a)}{1 - \kappa(t_a)},

drawing the code from the model's distribution (:func:`~maskflow.sampling.fm.jump_unmask`; with the
masked head, :meth:`~maskflow.sampling.guidance.Denoiser.lazy`, the ``K``-way head runs only at the tokens
that unmask, each token once per chunk, as in FM). This is the
exact transition of the masking process of training (a token at level ``t`` is unmasked with probability
:math:`\kappa(t)`), i.e. the FM-style jump with its rate integrated over the step instead of Euler's
linearisation; the expected unmasked share follows :math:`\kappa` at every level, :math:`p = 0` when the
level does not change (a waiting frame is never touched), and :math:`p = 1` when :math:`t_b = 1`
(nothing stays masked). With ``time_conditioning='dependent'`` the model gets each frame's current
level, context frames ``t = 1``.

**Diffusion Forcing, pyramid scheduling** (:func:`pyramid_schedule`, :func:`sample_chunk_pyramid`): per
chunk, the matrix of A.2 with :math:`H = S + k` rows and ``k`` columns,
``E[i, j] = clip(S + j − i, 0, S − 1)``. Row ``i`` is the noise index of window column ``j`` *after*
pass ``i`` (one pass per row, so exactly :math:`k + S` passes per chunk, as A.2 counts), with level
:math:`t = 1 - E/(S-1)`: ``S − 1`` is fully masked, ``0`` clean. The last row is all zeros, so every
frame is clean after the last pass; column ``j`` stays fully masked until pass ``j + 2`` and is clean
after pass ``S + j``. Window columns are right-aligned with the matrix (a window shorter than ``k``
uses its last columns); the context columns stay clean whatever their entry says, so the generated
frames wait while the pyramid passes over the context columns — the price of the A.2 count. (The
authors' code moves frames that should still wait; here a frame's level is exactly its column's.)
``S = 1`` degenerates to ``E ≡ 0``: every generated frame is unmasked in the first pass.

**Rolling Diffusion** (:func:`rolling_schedule`, :func:`generate_rolling`): a window of ``w = min(k, L)``
frames, the first ``m`` clean context, the other :math:`r = w - m` "rolling". In the rolling state,
rolling frame ``q`` (0 = next to the context) sits at level :math:`(r - 1 - q)/r`.

1. *init*: ``S`` passes take the fully masked rolling frames linearly to the rolling state;
2. *sliding*: :math:`L - k` times, :math:`P = \lceil S/r \rceil` passes raise every rolling level by
   :math:`1/r` (linearly), which makes frame 0 clean; it becomes the newest context frame, the oldest
   context frame leaves the window and a fully masked frame enters at the end (level 0);
3. *final window*: ``S`` passes take every remaining frame linearly to level 1.

NFE :math:`= S + (L - k)\lceil S/(k - m)\rceil + S` exactly (A.2). Every frame ends clean and the
window never leaves ``[0, L)`` (the authors' final phase can leave frames masked or index out of range).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from maskflow.sampling.fm import jump_unmask
from maskflow.sampling.guidance import Denoiser
from maskflow.sampling.nfe import rolling_passes_per_shift
from maskflow.sampling.result import ChunkInfo
from maskflow.schedules import Scheduler

__all__ = [
    "pyramid_matrix",
    "pyramid_schedule",
    "rolling_schedule",
    "LevelSchedule",
    "sample_chunk_pyramid",
    "generate_rolling",
]


# ================================================================================ level schedules
class LevelSchedule:
    """Per-pass levels of a group of frames, and the per-frame unmasking probabilities they imply.

    Args:
        before: float64 ``[P, F]``, each frame's level when pass ``i`` runs (what the model is told).
        after: float64 ``[P, F]``, its level after pass ``i``; ``after[i] == before[i + 1]``.
        scheduler: ``κ``.

    Attributes:
        before, after: as given (CPU).
        p_unmask: float64 ``[P, F]``, :math:`(\\kappa(t_b) - \\kappa(t_a))/(1 - \\kappa(t_a))` (0 where the
            level does not change, 1 where it reaches 1).
        active: per pass, ``(lo, hi)`` such that only frames ``lo … hi-1`` move (``lo == hi``: none).
    """

    def __init__(self, before: torch.Tensor, after: torch.Tensor, scheduler: Scheduler) -> None:
        self.before, self.after = before, after
        ka, kb = scheduler.kappa(before), scheduler.kappa(after)
        p = ((kb - ka) / (1.0 - ka).clamp_min(1e-12)).clamp(0.0, 1.0)
        p = torch.where(after >= 1.0, torch.ones_like(p), p)
        self.p_unmask = torch.where(after > before, p, torch.zeros_like(p))
        self.active: list[tuple[int, int]] = []
        for row in (self.p_unmask > 0).tolist():
            idx = [j for j, moving in enumerate(row) if moving]
            self.active.append((idx[0], idx[-1] + 1) if idx else (0, 0))

    @property
    def num_passes(self) -> int:
        return self.before.shape[0]


def pyramid_matrix(steps: int, chunk_size: int) -> torch.Tensor:
    """The A.2 scheduling matrix ``E[i, j] = clip(S + j − i, 0, S − 1)``: int64 ``[S + k, k]``."""
    i = torch.arange(steps + chunk_size)[:, None]
    j = torch.arange(chunk_size)[None, :]
    return (steps + j - i).clamp(0, steps - 1)


def pyramid_schedule(steps: int, chunk_size: int, n_context: int, n_new: int, scheduler: Scheduler) -> LevelSchedule:
    """Levels of the ``n_new`` generated frames of one Diffusion Forcing chunk, one row per pass.

    Args:
        steps: ``S``.
        chunk_size: ``k`` (the matrix has ``S + k`` rows whatever the window length).
        n_context: context frames of the window.
        n_new: generated frames; the window has ``n_context + n_new <= k`` frames.
        scheduler: ``κ``.

    Returns:
        A :class:`LevelSchedule` with ``S + k`` passes over the ``n_new`` generated frames.
    """
    e = pyramid_matrix(steps, chunk_size).double()
    after = 1.0 - e / (steps - 1) if steps > 1 else (e == 0).double()
    after = after[:, chunk_size - n_new :]  # window right-aligned: generated frames are the last columns
    before = torch.cat([torch.zeros_like(after[:1]), after[:-1]], dim=0)
    return LevelSchedule(before, after, scheduler)


def rolling_schedule(
    steps: int, window: int, n_context: int, phase: str, passes: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(before, after)`` levels ``[P, r]`` of the ``r = window − n_context`` rolling frames in one phase.

    Args:
        steps: ``S``.
        window: frames in the window (``min(k, L)``).
        n_context: ``m``.
        phase: ``'init'`` (``S`` passes, masked → rolling state), ``'shift'`` (``passes`` passes, every
            level up by ``1/r``) or ``'final'`` (``S`` passes, rolling state → clean).
        passes: passes per shift (``⌈S/(k − m)⌉``); only for ``'shift'``.
    """
    r = window - n_context
    q = torch.arange(r, dtype=torch.float64)
    rolling_state = (r - 1 - q) / r  # [r]
    if phase == "shift":
        p = torch.arange(passes + 1, dtype=torch.float64)[:, None]
        levels = (r - 1 - q + p / passes) / r  # [P+1, r]; frame 0 reaches exactly r/r = 1
    else:
        p = torch.arange(steps + 1, dtype=torch.float64)[:, None] / steps
        if phase == "init":
            levels = rolling_state * p
        elif phase == "final":
            levels = rolling_state + (1.0 - rolling_state) * p
            levels[-1] = 1.0
        else:
            raise ValueError(f"unknown rolling phase {phase!r}")
    return levels[:-1], levels[1:]


# ================================================================================ one pass
def _levels_pass(
    denoiser: Denoiser,
    x: torch.Tensor,
    n_context: int,
    before: torch.Tensor,
    p_unmask: torch.Tensor,
    active: tuple[int, int],
    *,
    temperature: float,
    generator: torch.Generator | None,
) -> None:
    """One backbone pass over window ``x`` [B, w, h, w'] (updated in place): frames after the context
    get levels ``before`` (float32 ``[r]``, device) and unmask with ``p_unmask`` (``[r]``); only the
    ``active`` frame range is sampled."""
    t = torch.ones(x.shape[:2], dtype=torch.float32, device=x.device)
    t[:, n_context:] = before
    head = denoiser.lazy(x, t, n_context)  # logits [B, r, h, w, K] on request: only the jumping tokens' rows
    lo, hi = active
    if lo == hi:
        return
    frames = x[:, n_context + lo : n_context + hi]
    kwargs = dict(mask_id=denoiser.mask_id, temperature=temperature, generator=generator)
    frames.copy_(jump_unmask(frames, head.narrow(lo, hi - lo), p_unmask[lo:hi], **kwargs))


def _run_schedule(
    denoiser: Denoiser, x: torch.Tensor, n_context: int, sched: LevelSchedule, *, temperature: float, generator
) -> None:
    """Run every pass of ``sched`` over window ``x`` (updated in place)."""
    device = x.device
    before = sched.before.to(device=device, dtype=torch.float32)
    p_unmask = sched.p_unmask.to(device=device, dtype=torch.float32)
    for i in range(sched.num_passes):
        kwargs = dict(temperature=temperature, generator=generator)
        _levels_pass(denoiser, x, n_context, before[i], p_unmask[i], sched.active[i], **kwargs)


# ================================================================================ Diffusion Forcing
@torch.no_grad()
def sample_chunk_pyramid(
    denoiser: Denoiser,
    context: torch.Tensor,
    n_new: int,
    *,
    steps: int,
    chunk_size: int,
    scheduler: Scheduler,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Generate ``n_new`` frames after ``context`` with the Diffusion Forcing pyramid (``S + k`` passes).

    Args:
        denoiser: the wrapped backbone.
        context: int64 ``[B, c, h, w]`` clean context frames (never modified).
        n_new: frames to generate, ``c + n_new <= chunk_size``.
        steps: ``S``.
        chunk_size: ``k``.
        scheduler: ``κ``.
        temperature: softmax temperature.
        generator: randomness.

    Returns:
        int64 ``[B, n_new, h, w]`` in ``[0, K)``.
    """
    b, c, hh, ww = context.shape
    x = torch.cat([context, context.new_full((b, n_new, hh, ww), denoiser.mask_id)], dim=1)
    sched = pyramid_schedule(steps, chunk_size, c, n_new, scheduler)
    _run_schedule(denoiser, x, c, sched, temperature=temperature, generator=generator)
    return x[:, c:].clone()


# ================================================================================ Rolling Diffusion
@torch.no_grad()
def generate_rolling(
    denoiser: Denoiser,
    video: torch.Tensor,
    n_context: int,
    *,
    steps: int,
    chunk_size: int,
    scheduler: Scheduler,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    on_phase: Callable[[ChunkInfo], None] | None = None,
) -> list[ChunkInfo]:
    """Fill ``video[:, n_context:]`` with Rolling Diffusion (init, one-frame shifts, final window).

    Args:
        denoiser: the wrapped backbone.
        video: int64 ``[B, L, h, w]``, the first ``n_context`` frames clean; the rest is overwritten.
        n_context: ``m``.
        steps: ``S``.
        chunk_size: ``k``.
        scheduler: ``κ``.
        temperature: softmax temperature.
        generator: randomness.
        on_phase: called after each phase (progress reporting).

    Returns:
        One :class:`ChunkInfo` per phase: ``'init'``, one ``'shift'`` per one-frame shift, ``'final'``.
    """
    b, length, hh, ww = video.shape
    m = n_context
    if length <= m:
        return []
    w = min(chunk_size, length)
    per_shift = rolling_passes_per_shift(steps, chunk_size, m)
    x = video[:, :w].clone()
    x[:, m:] = denoiser.mask_id
    phases: list[ChunkInfo] = []

    def run(kind: str, start: int, sched: LevelSchedule, n_done: int) -> None:
        nfe0, t0 = denoiser.nfe, time.perf_counter()
        _run_schedule(denoiser, x, m, sched, temperature=temperature, generator=generator)
        info = ChunkInfo(kind, start, m, n_done, denoiser.nfe - nfe0, time.perf_counter() - t0)
        phases.append(info)
        if on_phase is not None:
            on_phase(info)

    shift = LevelSchedule(*rolling_schedule(steps, w, m, "shift", per_shift), scheduler)
    run("init", 0, LevelSchedule(*rolling_schedule(steps, w, m, "init"), scheduler), 0)
    for start in range(length - w):  # L - k one-frame shifts
        run("shift", start, shift, 1)
        video[:, start + m] = x[:, m]  # rolling frame 0 is clean: it becomes context
        x = torch.cat([x[:, 1:], x.new_full((b, 1, hh, ww), denoiser.mask_id)], dim=1)
    run("final", length - w, LevelSchedule(*rolling_schedule(steps, w, m, "final"), scheduler), w - m)
    video[:, length - w + m :] = x[:, m:]
    return phases
