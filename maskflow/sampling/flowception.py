r"""Flowception sampling in the discrete setting (supplementary Algorithms 1 and 3, appendix B.3).

A window starts from its clean context frames (``t = 1``) and a global clock :math:`t_g = 0`. Each step
(:func:`flowception_step`, Algorithm 1's FLOWCEPTIONSTEP) makes one backbone call on the present
frames (padding frames masked out of attention) that returns token logits and each frame's insertion
rate :math:`\lambda_i`, then

1. unmasks tokens of the generated frames with the existing per-step code: ``unmasking='fm'``
   (default) — :func:`maskflow.sampling.fm.jump_unmask` with each frame's own Euler jump probability
   :math:`(t_i' - t_i)\,\dot\kappa(t_i)/(1-\kappa(t_i))` (1 at the frame's last step), ``t_i`` the
   frame's level :math:`(\text{age}/S)^{\gamma_f}` and :math:`t_i'` the next one
   (:func:`frame_time`; ``frame_time_power`` :math:`\gamma_f = 1`, the default, gives ``t_i`` =
   age × ``h`` and steps of ``h``; appendix E's power schedule for :math:`\gamma_f > 1`);
   ``unmasking='mgm'`` — each frame commits its most confident tokens so that a share
   :math:`\gamma((\text{age}/S)^{\gamma_f})` stays masked (:func:`maskflow.sampling.unmasking.mask_ratio`),
   level :math:`\kappa^{-1}(\text{unmasked share})` as in :mod:`maskflow.sampling.mgm`. A frame is clean
   after exactly ``S = sampling_steps`` steps of its own;
2. advances :math:`t_g \leftarrow \min(1, t_g + h)`, ``h = 1/S`` (Algorithm 1's :math:`\max_i t_i` for
   a start frame inserted at :math:`t_g = 0`; a clock, so that a window of context frames alone
   also moves on);
3. inserts fully masked frames (``t = 0``) to the right of frame ``i``:
   ``insertion='bernoulli'`` — one with probability :math:`\min(1, \lambda_i\,p_i)` (Algorithm 1),
   ``'poisson'`` — :math:`\mathrm{Poisson}(\lambda_i\,p_i)` of them (eq. 33), where
   :math:`p_i = (h_i/h)\,p` and

   .. math:: p = \frac{\kappa(t_g) - \kappa(t_g - h)}{1 - \kappa(t_g - h)}
             = 1 - \exp\Big(-\int_{t_g - h}^{t_g} \rho_\kappa(s)\,ds\Big)

   is the probability that a pending frame, not yet revealed at the clock :math:`t_g - h` at which
   the backbone computed :math:`\lambda_i = \mathbb E[K_i \mid X]`, is revealed during the step
   (reveal times have CDF :math:`\kappa`, section A.3; hazard :math:`\rho_\kappa = \dot\kappa/(1-\kappa)`,
   Lemma B.1). So :math:`\lambda_i p` is the expected number of frames the data law reveals in slot
   ``i`` during the step, at any step size. Algorithm 1's first-order factor
   :math:`h\rho_\kappa(t_g)` at the updated clock is the same for :math:`h \to 0`, but at the few steps
   a discrete sampler takes it over-inserts (sigmoid :math:`\kappa`, ``S = 10``: 1.3× the exact
   probability at the first step, 2× at :math:`t_g = 0.9`, where it exceeds 1), and the videos come
   out too long. :math:`h_i = \min(h, 1 - t_i)` (clean frames are frozen: no insertion after them).
   At the step where :math:`t_g` reaches 1, :math:`p = 1`: every pending frame is due
   (``min(1, λ_i)`` / ``Poisson(λ_i)``). After that :math:`\rho_\kappa = 0` (Lemma B.1): no more
   insertions.
   Context frames other than the last one never insert (the context is a prefix of real,
   consecutive frames); the last context frame inserts with :math:`h_i = h`.
   Insertion-rate guidance (eq. 36, ``insertion_guidance`` :math:`w_s \ne 1`):
   :math:`\lambda = \lambda(X \mid c)^{w_s} \lambda(X)^{1-w_s}`, the unconditional rate from the
   context fully masked at ``t = 0`` (the partial context guidance pass when it runs; otherwise one
   extra backbone pass per step, counted).

The loop stops when :math:`t_g = 1` and every frame is clean (Algorithm 1's ``while min t_i < 1``).
A window holds at most ``chunk_size`` frames: insertions that would overflow it are dropped at
random. Videos longer than the window (``num_frames > chunk_size``) are generated block by block
(Algorithm 3 in its sequential, block-wise form, appendix F "Long video generation": "we partition the
target video into temporal blocks and sequentially sample each block conditioned on the previously
generated frames"): the next window starts from the last ``n_context_frames`` frames as context, and
``blockwise_stop`` says when a video ends — ``'length'`` (default, appendix F): at ``num_frames``
(cut there), or earlier when a window adds no frame; ``'underfill'``: also as soon as a window does
not fill up. A window is one piece of a longer video, and nothing in a piece says whether the video
ends there, so ``'underfill'`` ends videos at the first window the insertion draws leave one frame
short (a trained model's window from mid-video fills with probability about 0.86 at ``S = 10``).

NFE is counted from the backbone calls (:class:`~maskflow.sampling.guidance.Denoiser`). Expected
value: per window, steps :math:`= S + i_{last}` where :math:`i_{last} = \lceil S\,t_{ins}^{max}\rceil`
is the step of the last insertion; for ``n`` frames inserted at i.i.d. times of CDF :math:`\kappa`,
:math:`\mathbb E[i_{last}] = \sum_{i=0}^{S-1} (1 - \kappa(i/S)^n)`, so
:math:`\mathbb E[\mathrm{NFE}] = P \cdot \big(S + \sum_{i=0}^{S-1} (1 - \kappa(i/S)^n)\big) \le 2PS`
with ``P`` passes per step (:func:`maskflow.sampling.nfe.expected_nfe`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from maskflow.sampling.categorical import sample_categorical, uniform
from maskflow.sampling.config import SamplerConfig
from maskflow.sampling.fm import jump_unmask
from maskflow.sampling.guidance import Denoiser, HeadLogits
from maskflow.sampling.result import ChunkInfo, SampleResult
from maskflow.sampling.unmasking import mask_ratio
from maskflow.schedules import Scheduler, get_scheduler
from maskflow.training import unwrap_model

__all__ = [
    "RateCapture",
    "WindowState",
    "step_hazard",
    "frame_time",
    "insertion_counts",
    "insert_frames",
    "flowception_step",
    "sample_window",
    "generate_flowception",
]


# ================================================================================ the backbone as the sampler sees it
class RateCapture:
    """Calls a rate-head backbone with the window's frame mask and keeps the log rates of the last call.

    :class:`~maskflow.sampling.guidance.Denoiser` calls it like a backbone (``(tokens, t[,
    return_hidden])``); ``module`` is the bare backbone, so the Denoiser's masked head projects with it.
    A call on ``r × B`` rows (partial context guidance) tiles the frame mask ``r`` times.

    Args:
        model: a backbone with ``has_rate_head`` (bare or wrapped).

    Raises:
        ValueError: a backbone without a rate head.
    """

    def __init__(self, model: nn.Module) -> None:
        self.module = unwrap_model(model)
        if not getattr(self.module, "has_rate_head", False):
            raise ValueError(
                "sampler=flowception needs a checkpoint trained with dynamics=flowception (a backbone with a rate head)"
            )
        self.frame_mask: torch.Tensor | None = None
        self.log_rates: torch.Tensor | None = None

    @property
    def codebook_size(self) -> int:
        return self.module.codebook_size

    @property
    def mask_token_id(self) -> int:
        return self.module.mask_token_id

    def __call__(self, tokens: torch.Tensor, t: torch.Tensor, return_hidden: bool = False) -> torch.Tensor:
        mask = self.frame_mask
        if mask is not None and tokens.shape[0] != mask.shape[0]:
            mask = mask.repeat(tokens.shape[0] // mask.shape[0], 1)
        out, self.log_rates = self.module(tokens, t, return_hidden=return_hidden, frame_mask=mask, return_log_rates=True)
        return out


# ================================================================================ state of one window
@dataclass
class WindowState:
    """The frames of one window for ``B`` videos (padded to the longest).

    Attributes:
        tokens: int64 ``[B, F, h, w]``; padding frames hold the mask id.
        age: int64 ``[B, F]``: steps a generated frame has been denoised (``S`` = clean); context
            frames and padding hold ``S``.
        frame_mask: bool ``[B, F]``: real frames.
        n_context: clean leading context frames (the same for every video).
    """

    tokens: torch.Tensor
    age: torch.Tensor
    frame_mask: torch.Tensor
    n_context: int

    @property
    def lengths(self) -> torch.Tensor:
        """Frames per video, int64 ``[B]``."""
        return self.frame_mask.sum(dim=1)


def step_hazard(scheduler: Scheduler, t_g: float, h: float) -> float:
    r"""Probability that a pending frame is revealed during the step that ends at clock ``t_g``.

    The step runs from :math:`t_g - h` (the clock of the state the backbone saw when it predicted
    :math:`\lambda`) to :math:`t_g`; reveal times have CDF :math:`\kappa` (section A.3), so a frame still
    pending at :math:`t_g - h` is revealed during the step with probability

    .. math:: \frac{\kappa(t_g) - \kappa(t_g - h)}{1 - \kappa(t_g - h)}
              = 1 - \exp\Big(-\int_{t_g - h}^{t_g} \rho_\kappa(s)\,ds\Big),

    the exact step version of Algorithm 1's :math:`h\rho_\kappa(t_g)` (equal to it to first order in
    ``h``; the first-order factor, evaluated at the updated clock, over-estimates it, by 2× at
    :math:`t_g = 0.9` for the sigmoid :math:`\kappa` and ``h = 0.1``). 1 at ``t_g >= 1`` (every
    pending frame is due by then).

    Args:
        scheduler: :math:`\kappa`.
        t_g: the clock after the step, in ``(0, 1]``.
        h: the step, ``1 / sampling_steps``.

    Returns:
        A probability in ``[0, 1]``.
    """
    if t_g >= 1.0 - 1e-9:
        return 1.0
    t = torch.tensor([max(0.0, t_g - h), t_g], dtype=torch.float64)
    k_prev, k_now = (float(x) for x in scheduler.kappa(t))
    if k_prev >= 1.0:
        return 1.0
    return min(1.0, max(0.0, (k_now - k_prev) / (1.0 - k_prev)))


def insertion_counts(
    rates: torch.Tensor,
    can_insert: torch.Tensor,
    factor: float | torch.Tensor,
    *,
    mode: str = "bernoulli",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Frames to insert right of each frame: Bernoulli (Algorithm 1) or Poisson (eq. 33) draws.

    Args:
        rates: float ``[B, F]``, :math:`\lambda_i \ge 0`.
        can_insert: bool ``[B, F]``; ``False`` frames insert nothing.
        factor: :math:`(h_i / h)\,p`, :math:`p` the step's reveal probability of a pending frame
            (:func:`step_hazard`): a float or float ``[B, F]``.
        mode: ``'bernoulli'`` (0 or 1 with probability :math:`\min(1, \text{factor}\cdot\lambda_i)`) or
            ``'poisson'`` (:math:`\mathrm{Poisson}(\text{factor}\cdot\lambda_i)`).
        generator: randomness (same device as ``rates``).

    Returns:
        int64 ``[B, F]``.

    Raises:
        ValueError: unknown ``mode``.
    """
    mean = (rates.float() * factor).clamp_min(0.0)
    mean = torch.where(can_insert, mean, torch.zeros_like(mean))
    if mode == "bernoulli":
        return (uniform(mean.shape, generator, mean.device) < mean.clamp(max=1.0)).long()
    if mode == "poisson":
        return torch.poisson(mean, generator=generator).long()
    raise ValueError(f"insertion must be 'bernoulli' or 'poisson', got {mode!r}")


def insert_frames(
    state: WindowState,
    counts: torch.Tensor,
    *,
    capacity: int,
    steps: int,
    mask_id: int,
    generator: torch.Generator | None = None,
) -> tuple[WindowState, torch.Tensor]:
    """Insert ``counts[b, i]`` fully masked frames (age 0) right after frame ``i`` of video ``b``.

    Insertions beyond ``capacity`` frames per video are dropped (a uniformly random subset is kept).

    Args:
        state: the window.
        counts: int64 ``[B, F]`` (from :func:`insertion_counts`).
        capacity: most frames a video's window may hold.
        steps: ``S`` (the age of clean frames, used for padding).
        mask_id: ``K``, the tokens of an inserted frame.
        generator: randomness of the capacity cut.

    Returns:
        ``(new_state, inserted)``: ``inserted`` int64 ``[B]``, frames actually inserted per video.
    """
    b, f = state.age.shape
    counts = counts.clone()
    counts[~state.frame_mask] = 0
    lengths = state.lengths
    room = (capacity - lengths).clamp_min(0)
    for v in range(b):
        total = int(counts[v].sum())
        if total > int(room[v]):  # keep a random subset of the individual insertions
            slots = torch.repeat_interleave(torch.arange(f, device=counts.device), counts[v])
            keep = slots[torch.randperm(total, generator=generator, device=counts.device)[: int(room[v])]]
            counts[v] = torch.bincount(keep, minlength=f)
    inserted = counts.sum(dim=1)
    if int(inserted.sum()) == 0:
        return state, inserted
    new_len = lengths + inserted
    out_f = int(new_len.max())
    return _rebuild(state, counts, out_f, steps, mask_id), inserted


def _rebuild(state: WindowState, counts: torch.Tensor, out_f: int, steps: int, mask_id: int) -> WindowState:
    b, f, hh, ww = state.tokens.shape
    dev = state.tokens.device
    tokens = torch.full((b, out_f, hh, ww), mask_id, dtype=state.tokens.dtype, device=dev)
    age = torch.full((b, out_f), steps, dtype=state.age.dtype, device=dev)
    frame_mask = torch.zeros(b, out_f, dtype=torch.bool, device=dev)
    for v in range(b):
        n = int(state.frame_mask[v].sum())
        c = counts[v, :n]
        # old frame i lands at i + (insertions before it, its own slot excluded)
        dest = torch.arange(n, device=dev) + torch.cumsum(c, 0) - c
        tokens[v, dest] = state.tokens[v, :n]
        age[v, dest] = state.age[v, :n]
        total = n + int(c.sum())
        frame_mask[v, :total] = True
        new = torch.ones(total, dtype=torch.bool, device=dev)
        new[dest] = False
        age[v, :total][new] = 0  # inserted frames: fully masked (tokens already the mask id), age 0
    return WindowState(tokens=tokens, age=age, frame_mask=frame_mask, n_context=state.n_context)


# ================================================================================ one step (Algorithm 1)
def flowception_step(
    denoiser: Denoiser,
    capture: RateCapture,
    state: WindowState,
    t_g: float,
    config: SamplerConfig,
    scheduler: Scheduler,
    *,
    capacity: int,
    generator: torch.Generator | None = None,
) -> tuple[WindowState, float, torch.Tensor]:
    """One FLOWCEPTIONSTEP: a backbone call, per-frame unmasking, then insertions (module docstring).

    Args:
        denoiser: wraps ``capture`` (time conditioning, partial context guidance, NFE count).
        capture: the :class:`RateCapture` the denoiser calls.
        state: the window before the step.
        t_g: the global clock before the step, in [0, 1].
        config: sampler settings (``sampling_steps``, ``insertion``, ``insertion_guidance``,
            ``unmasking``, ``unmasking_schedule``, ``temperature``).
        scheduler: ``κ``.
        capacity: most frames per window.
        generator: randomness.

    Returns:
        ``(state, t_g, inserted)``: the window after the step, the clock after it and the frames
        inserted per video (int64 ``[B]``).
    """
    steps, m = int(config.sampling_steps), state.n_context
    h = 1.0 / steps
    mask_id = denoiser.mask_id
    b, f = state.age.shape
    real, age = state.frame_mask, state.age
    evolving = real & (age < steps)
    evolving[:, :m] = False
    level = _levels(state, config, scheduler, mask_id)
    capture.frame_mask = real
    head = denoiser.lazy(state.tokens, level, m)
    log_rates = capture.log_rates[:b].float()
    if config.insertion_guidance != 1.0:
        if capture.log_rates.shape[0] == 3 * b:  # the unconditional rows of the partial context guidance call
            log_uncond = capture.log_rates[2 * b :].float()
        else:
            uncond = state.tokens.clone()
            uncond[:, :m] = mask_id
            t_unc = level.clone()
            t_unc[:, :m] = 0.0
            denoiser.lazy(uncond, t_unc, 0)
            log_uncond = capture.log_rates.float()
        w = float(config.insertion_guidance)
        log_rates = w * log_rates + (1.0 - w) * log_uncond  # eq. 36 in log space
    # 1. unmask tokens of the evolving frames
    gen_tokens = state.tokens[:, m:]
    gen_evolving = evolving[:, m:]
    gen_age = age[:, m:]
    if config.unmasking == "fm":
        power = config.frame_time_power
        t_now, t_next = frame_time(gen_age, steps, power), frame_time(gen_age + 1, steps, power)
        rate = scheduler.d_kappa(t_now) / (1.0 - scheduler.kappa(t_now)).clamp_min(1e-12)
        p = ((t_next - t_now) * rate).clamp(0.0, 1.0)
        p = torch.where(gen_age + 1 >= steps, torch.ones_like(p), p)
        p = torch.where(gen_evolving, p, torch.zeros_like(p))
        new = jump_unmask(gen_tokens, head, p, mask_id=mask_id, temperature=config.temperature, generator=generator)
    else:
        new = _mgm_unmask(gen_tokens, head, gen_evolving, gen_age + 1, config, mask_id, generator)
    tokens = state.tokens.clone()
    tokens[:, m:] = new
    h_i = torch.where(evolving, (steps - age).clamp(min=0).float() / steps, torch.zeros_like(age, dtype=torch.float32))
    h_i = h_i.clamp(max=h)
    if m > 0:
        h_i[:, m - 1] = h  # the last context frame may insert after itself
    age = torch.where(evolving, age + 1, age)
    state = WindowState(tokens=tokens, age=age, frame_mask=real, n_context=m)
    # 2. the clock, 3. insertions
    t_prev, t_g = t_g, min(1.0, t_g + h)
    if t_prev >= 1.0 - 1e-9:  # ρ_κ = 0 once the clock is at 1: no insertions any more
        return state, t_g, torch.zeros(b, dtype=torch.long, device=tokens.device)
    factor = step_hazard(scheduler, t_g, h) * (h_i / h)  # (h_i / h) · P(a pending frame is revealed in (t_prev, t_g])
    counts = insertion_counts(log_rates.exp(), real & (h_i > 0), factor, mode=config.insertion, generator=generator)
    state, inserted = insert_frames(state, counts, capacity=capacity, steps=steps, mask_id=mask_id, generator=generator)
    return state, t_g, inserted


def frame_time(age: torch.Tensor, steps: int, power: float = 1.0) -> torch.Tensor:
    r"""A frame's level after ``age`` of its ``S`` steps: :math:`t = (a / S)^\gamma`.

    Appendix E ("Local sampling schedules") of the supplementary: each frame advances its solver
    coordinate :math:`u = a / S` by a fixed :math:`1/S` per step and its level is :math:`t = f(u)`,
    here the power schedule :math:`f(u) = u^\gamma`; ``γ > 1`` takes small steps in level right
    after a frame is inserted, where it must become consistent with its neighbours, and larger ones
    later. ``γ = 1`` is the uniform schedule.

    Args:
        age: int64 ``[...]``, steps a frame has taken (clipped to ``[0, S]``).
        steps: ``S``.
        power: ``γ > 0``.

    Returns:
        float32 ``[...]`` in ``[0, 1]``.
    """
    return (age.float().clamp(0, steps) / steps) ** float(power)


def _levels(state: WindowState, config: SamplerConfig, scheduler: Scheduler, mask_id: int) -> torch.Tensor:
    """Per-frame levels passed to the backbone: context 1, FM :func:`frame_time`, MGM κ⁻¹(unmasked share);
    padding 0."""
    steps, m = int(config.sampling_steps), state.n_context
    if config.unmasking == "fm":
        level = frame_time(state.age, steps, config.frame_time_power)
    else:
        level = scheduler.inverse((state.tokens != mask_id).float().mean(dim=(2, 3)))
    level[:, :m] = 1.0
    return torch.where(state.frame_mask, level, torch.zeros_like(level))


def _mgm_unmask(
    tokens: torch.Tensor, head: HeadLogits, evolving: torch.Tensor, age_after: torch.Tensor,
    config: SamplerConfig, mask_id: int, generator: torch.Generator | None,
) -> torch.Tensor:
    """MGM's confidence rule per frame: commit the most confident tokens down to the frame's schedule."""
    b, f, hh, ww = tokens.shape
    n = hh * ww
    is_masked = (tokens == mask_id) & evolving[:, :, None, None]
    where = is_masked.nonzero(as_tuple=True)
    out = tokens.clone()
    if where[0].numel() == 0:
        return out
    rows = head.rows(where)
    codes, conf = sample_categorical(rows, config.temperature, generator)
    steps = int(config.sampling_steps)
    u = frame_time(torch.arange(steps + 1), steps, config.frame_time_power).tolist()  # each age's schedule point
    ratio = torch.tensor([mask_ratio(config.unmasking_schedule, x) for x in u], device=tokens.device)
    target = torch.floor(n * ratio[age_after.clamp(0, steps)] + 0.5).long()  # masked tokens left after the step
    masked_now = is_masked.flatten(2).sum(dim=2)
    n_commit = (masked_now - target).clamp_min(0)
    n_commit = torch.where(evolving & (masked_now > 0), n_commit.clamp_min(1), torch.zeros_like(n_commit))
    score = torch.full((b, f, n), -1.0, device=tokens.device)
    flat_pos = where[2] * ww + where[3]
    score[where[0], where[1], flat_pos] = conf
    order = score.argsort(dim=2, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(2, order, torch.arange(n, device=tokens.device).expand(b, f, n).contiguous())
    commit = rank[where[0], where[1], flat_pos] < n_commit[where[0], where[1]]
    out[where[0][commit], where[1][commit], where[2][commit], where[3][commit]] = codes[commit]
    return out


# ================================================================================ a window and a whole video
def sample_window(
    denoiser: Denoiser,
    capture: RateCapture,
    context: torch.Tensor,
    config: SamplerConfig,
    scheduler: Scheduler,
    *,
    capacity: int,
    generator: torch.Generator | None = None,
    frames_per_step: list[int] | None = None,
) -> WindowState:
    """Algorithm 1 in one window: from clean ``context`` until ``t_g = 1`` and every frame is clean.

    Args:
        denoiser, capture: the backbone (see :func:`flowception_step`).
        context: int64 ``[B, m, h, w]`` clean frames.
        config, scheduler: sampler settings and ``κ``.
        capacity: most frames in the window (context included), ``> m``.
        generator: randomness.
        frames_per_step: if given, the window's frame count (longest video) at each backbone step is appended.

    Returns:
        The final :class:`WindowState` (every real frame clean, no mask token in them).
    """
    b, m = context.shape[:2]
    steps = int(config.sampling_steps)
    state = WindowState(
        tokens=context.clone(), age=torch.full((b, m), steps, dtype=torch.long, device=context.device),
        frame_mask=torch.ones(b, m, dtype=torch.bool, device=context.device), n_context=m,
    )
    t_g = 0.0
    while t_g < 1.0 - 1e-9 or bool((state.frame_mask & (state.age < steps)).any()):
        if frames_per_step is not None:
            frames_per_step.append(int(state.lengths.max()))
        state, t_g, _ = flowception_step(denoiser, capture, state, t_g, config, scheduler, capacity=capacity, generator=generator)
    return state


@torch.no_grad()
def generate_flowception(
    model,
    context: torch.Tensor,
    num_frames: int,
    config: SamplerConfig,
    *,
    generator: torch.Generator | None = None,
    progress: bool = False,
    head: str = "masked",
) -> SampleResult:
    """Generate videos of model-chosen length (at most ``num_frames``) that continue ``context``.

    Args:
        model: a backbone with a rate head (trained with ``dynamics=flowception``), eval mode.
        context: int64 ``[B, m, h, w]`` clean tokens.
        num_frames: the maximum length ``L_max`` including the context (``> m``); beyond
            ``chunk_size`` the video is generated block by block, and with
            ``config.blockwise_stop='length'`` it is the target length (module docstring).
        config: validated sampler settings with ``sampler='flowception'``.
        generator: randomness; the same seed gives the same videos.
        progress: a tqdm bar over windows.
        head: ``'masked'`` or ``'dense'`` (see :func:`maskflow.sampling.generate`).

    Returns:
        :class:`SampleResult` with ``tokens`` int64 ``[B, max(lengths), h, w]`` (frames past a video's
        length hold code 0), ``lengths`` (frames per video, context included), ``nfe`` counted,
        ``num_chunks`` windows, ``frames_per_step``.

    Raises:
        ValueError: a backbone without a rate head.
        RuntimeError: a mask token survived in a real frame (a bug).
    """
    t0 = time.perf_counter()
    scheduler = get_scheduler(config.scheduler)
    capture = RateCapture(model)
    denoiser = Denoiser(
        capture, scheduler=scheduler, guidance_scale=config.guidance_scale,
        partial_context_level=config.resolved_partial_context_level, time_conditioning=config.time_conditioning,
        generator=generator, head=head,
    )
    b, m, hh, ww = context.shape
    k, max_len = int(config.chunk_size), int(num_frames)
    videos = [list(context[v]) for v in range(b)]
    active = list(range(b))
    infos, frames_per_step = [], []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc="sampling (flowception)", unit="window")
    while active:
        nfe0, tw = denoiser.nfe, time.perf_counter()
        ctx = torch.stack([torch.stack(videos[v][-m:]) for v in active])
        done = len(videos[active[0]])
        capacity = min(k, m + max_len - min(len(videos[v]) for v in active))
        state = sample_window(denoiser, capture, ctx, config, scheduler, capacity=capacity, generator=generator,
                              frames_per_step=frames_per_step)
        new_len = state.lengths.tolist()
        still = []
        for row, v in enumerate(active):
            room = max_len - len(videos[v])
            new = state.tokens[row, m : new_len[row]][:room]
            videos[v].extend(list(new))
            if max_len <= k:  # one window (Algorithm 1): the model chose the length
                goes_on = False
            elif config.blockwise_stop == "underfill":
                goes_on = new_len[row] >= capacity
            else:  # 'length': blocks until num_frames, unless a window adds nothing
                goes_on = new_len[row] > m
            if goes_on and len(videos[v]) < max_len:
                still.append(v)
        infos.append(ChunkInfo("window", done - m, m, int(sum(new_len)) // len(active) - m, denoiser.nfe - nfe0,
                               time.perf_counter() - tw))
        if bar is not None:
            bar.update(1)
        active = still
    if bar is not None:
        bar.close()
    lengths = [len(v) for v in videos]
    out = context.new_zeros((b, max(lengths), hh, ww))
    for v in range(b):
        out[v, : lengths[v]] = torch.stack(videos[v])
        if bool((out[v, : lengths[v]] == denoiser.mask_id).any()):
            raise RuntimeError("flowception sampling left mask tokens in a video (a sampler bug)")
    return SampleResult(tokens=out, nfe=denoiser.nfe, num_chunks=len(infos), wall_time_s=time.perf_counter() - t0,
                        chunks=infos, lengths=lengths, frames_per_step=frames_per_step)
