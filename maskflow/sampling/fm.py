r"""FM-style sampling of one chunk (Algorithm 3, appendix A.3): discrete Euler steps of the masking flow.

The generated frames start fully masked at ``t = 0`` and move to ``t = 1`` in ``S`` steps of size
:math:`h = 1/S`. At step ``i`` (:math:`t = i h`) the velocity of a masked token is

.. math::
    u_t = \frac{\kappa'(t)}{1 - \kappa(t)} \big( p_\theta(\cdot \mid x_t, \mathbf{t}) - \delta_{x_t} \big),
    \qquad x_{t+h} \sim \mathrm{Cat}(\delta_{x_t} + h\, u_t),

(Gat et al. 2024; Algorithm 3 writes the linear-κ case ``t/(1−t)``). Because the softmax has no mask
class, :math:`\delta_{x_t} + h u_t` puts mass :math:`1 - h\kappa'/(1-\kappa)` on staying masked and
:math:`h\kappa'/(1-\kappa)\, p_\theta(j)` on code ``j``: a masked token *jumps* with probability
:math:`h\kappa'(t)/(1-\kappa(t))` (clipped to [0, 1]) to a code drawn from :math:`p_\theta`. That is how
it is sampled here: one uniform per token decides the jump, and only the tokens that jump draw a code
(one ``[n_jump, K]`` probability buffer; no one-hot :math:`\delta`, no dense ``p``). With the masked
head (:meth:`~maskflow.sampling.guidance.Denoiser.lazy`) only those ``n_jump`` rows of logits are
computed at all: the uniforms are drawn after the backbone pass, as in the dense path, and the
``K``-way head runs on the jumping tokens alone. Each token jumps once per chunk, so the categorical
work of a whole chunk is that of a single dense step, at the price of one host sync per step (the
number of jumping tokens). Unmasked tokens never move. At the last step the jump probability is set
to exactly 1 (the Euler rate is singular at :math:`\kappa(1) = 1`), so no masked token survives and
the chunk takes exactly ``S`` passes.
"""

from __future__ import annotations

import torch

from maskflow.sampling.categorical import sample_categorical, uniform
from maskflow.sampling.guidance import Denoiser, HeadLogits
from maskflow.schedules import Scheduler

__all__ = ["fm_jump_probabilities", "jump_unmask", "sample_chunk_fm"]


def fm_jump_probabilities(steps: int, scheduler: Scheduler) -> list[float]:
    r"""Probability that a masked token is unmasked at each Euler step, :math:`h\kappa'(t_i)/(1-\kappa(t_i))`.

    Args:
        steps: ``S >= 1``; :math:`t_i = i/S`, ``i = 0 … S−1``.
        scheduler: the masking scheduler ``κ``.

    Returns:
        ``S`` Python floats in [0, 1]; the last is exactly 1.
    """
    t = torch.arange(steps, dtype=torch.float64) / steps
    rate = scheduler.d_kappa(t) / (1.0 - scheduler.kappa(t)).clamp_min(1e-12)
    probs = (rate / steps).clamp(0.0, 1.0).tolist()
    probs[-1] = 1.0
    return probs


def jump_unmask(
    tokens: torch.Tensor,
    logits: torch.Tensor | HeadLogits,
    p_unmask: float | torch.Tensor,
    *,
    mask_id: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Unmask each masked token with probability ``p_unmask``, drawing its code from the logits.

    Shared by FM sampling and the Diffusion Forcing / Rolling Diffusion baselines.

    Args:
        tokens: int64 ``[B, F, h, w]`` (generated frames; ``mask_id`` = masked).
        logits: ``[B, F, h, w, K]``, or :class:`~maskflow.sampling.guidance.HeadLogits` of these frames
            (from :meth:`Denoiser.lazy`), of which only the jumping tokens' rows are computed.
        p_unmask: a float, or float32 ``[F]`` / ``[B, F]`` per frame, in [0, 1]; 1 unmasks every masked
            token of the frame, 0 none.
        mask_id: the mask token id ``K``.
        temperature: softmax temperature.
        generator: randomness (same device as ``tokens``).

    Returns:
        New int64 ``[B, F, h, w]``; unmasked input tokens are unchanged.
    """
    if isinstance(p_unmask, torch.Tensor):
        p_unmask = p_unmask.reshape(*p_unmask.shape, 1, 1)  # [..., F, 1, 1]
    jump = (tokens == mask_id) & (uniform(tokens.shape, generator, tokens.device) < p_unmask)
    where = jump.nonzero(as_tuple=True)  # one host sync per step
    rows = logits.rows(where) if isinstance(logits, HeadLogits) else logits[where]  # [n_jump, K], row-major order
    codes, _ = sample_categorical(rows, temperature, generator, with_confidence=False)  # [n_jump]
    out = tokens.clone()
    out[where] = codes
    return out


@torch.no_grad()
def sample_chunk_fm(
    denoiser: Denoiser,
    context: torch.Tensor,
    n_new: int,
    *,
    steps: int,
    scheduler: Scheduler,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Generate ``n_new`` frames after ``context`` with ``steps`` FM Euler steps (Algorithm 3).

    Args:
        denoiser: the wrapped backbone (time conditioning, guidance, NFE count).
        context: int64 ``[B, c, h, w]`` clean context frames (never modified).
        n_new: frames to generate.
        steps: ``S``, exactly the number of denoiser calls.
        scheduler: ``κ`` of the jump rates.
        temperature: softmax temperature.
        generator: randomness.

    Returns:
        int64 ``[B, n_new, h, w]`` in ``[0, K)`` (no mask token).
    """
    b, c, hh, ww = context.shape
    x = torch.cat([context, context.new_full((b, n_new, hh, ww), denoiser.mask_id)], dim=1)  # [B, c+n, h, w]
    t = torch.ones(b, c + n_new, dtype=torch.float32, device=context.device)
    for i, p in enumerate(fm_jump_probabilities(steps, scheduler)):
        t[:, c:] = i / steps  # Algorithm 3: the generated frames share the global time t
        logits = denoiser.lazy(x, t, c)  # [B, n_new, h, w, K] on request: only the jumping tokens' rows
        new = jump_unmask(x[:, c:], logits, p, mask_id=denoiser.mask_id, temperature=temperature, generator=generator)
        x[:, c:] = new
    return x[:, c:].clone()
