r"""Frame-level masking (Algorithm 1, lines 3–7) and the constant-level baseline.

Two steps corrupt a clean chunk :math:`\mathbf{x}_1`:

1. :func:`sample_frame_levels` draws one unmasking level ``t_f`` per frame (``t = 1`` clean);
2. :func:`mask_tokens` masks each token of frame ``f`` independently with probability
   :math:`1 - \kappa(t_f)` — a sample of the mixture path of eq. 5 with the scheduler :math:`\kappa`.

No one-hot tensor is ever built: corruption costs one uniform draw per token, whatever ``K``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange

from maskflow.schedules import Scheduler

__all__ = ["MASKING_MODES", "MaskedTokens", "sample_frame_levels", "mask_tokens"]

MASKING_MODES = ("frame", "constant")


@dataclass
class MaskedTokens:
    """A corrupted chunk.

    Attributes:
        x_t: int64 ``[B, T, h, w]``; masked positions hold ``mask_token_id``, the others the clean code.
        is_masked: bool ``[B, T, h, w]``; ``True`` where a token was replaced by the mask token.
    """

    x_t: torch.Tensor
    is_masked: torch.Tensor

    def masked_fraction(self) -> torch.Tensor:
        """Fraction of masked tokens per frame: float32 ``[B, T]``."""
        return self.is_masked.float().mean(dim=(-2, -1))


def _device_of(generator: torch.Generator | None, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return generator.device if generator is not None else torch.device("cpu")


def sample_frame_levels(
    batch_size: int,
    num_frames: int,
    *,
    mode: str = "frame",
    n_context_frames: int | torch.Tensor = 0,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""Per-frame unmasking levels ``t`` for a batch of chunks (Algorithm 1, line 4; section 3.3).

    ``mode='frame'`` draws :math:`t_f = (1 - \epsilon) u_f + \epsilon`, :math:`u_f \sim \mathcal{U}(0, 1)`,
    independently for every (video, frame) — MaskFlow's frame-level masking. ``mode='constant'`` draws
    one such level per video and gives it to all of its frames — the baseline of section 4.4.
    In both modes the first ``n_context_frames`` frames of a video get ``t = 1`` (clean context, as in
    chunkwise sampling, section 3.3).

    Args:
        batch_size: ``B >= 1``.
        num_frames: ``T >= 1``.
        mode: ``'frame'`` or ``'constant'``.
        n_context_frames: clean leading frames; an int in ``[0, T)`` for all videos or an integer tensor
            ``[B]`` with one count per video.
        eps: lower bound of the levels, in ``[0, 1)``; keeps ``t`` off exactly 0.
        generator: source of randomness (its device is used when ``device`` is ``None``).
        device: where ``t`` is created.

    Returns:
        float32 ``[B, T]`` in ``[eps, 1]``.

    Raises:
        ValueError: ``batch_size`` or ``num_frames`` < 1, unknown ``mode``, ``eps`` outside ``[0, 1)``,
            or ``n_context_frames`` outside ``[0, num_frames - 1]`` (or of the wrong shape).
    """
    if batch_size < 1 or num_frames < 1:
        raise ValueError(f"batch_size and num_frames must be >= 1, got {batch_size} and {num_frames}")
    if mode not in MASKING_MODES:
        raise ValueError(f"masking mode must be one of {MASKING_MODES}, got {mode!r}")
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps must lie in [0, 1), got {eps}")
    dev = _device_of(generator, device)
    ctx = torch.as_tensor(n_context_frames, device=dev)
    if ctx.is_floating_point() or ctx.ndim > 1 or (ctx.ndim == 1 and ctx.shape[0] != batch_size):
        raise ValueError(f"n_context_frames must be an int or an integer tensor [B={batch_size}], got {n_context_frames!r}")
    if ctx.numel() and (int(ctx.min()) < 0 or int(ctx.max()) >= num_frames):
        raise ValueError(
            f"n_context_frames must lie in [0, num_frames - 1 = {num_frames - 1}] so that some frame is masked, "
            f"got {ctx.tolist()}"
        )

    shape = (batch_size, num_frames) if mode == "frame" else (batch_size, 1)
    u = torch.rand(shape, generator=generator, device=dev, dtype=torch.float32)
    t = ((1.0 - eps) * u + eps).expand(batch_size, num_frames)
    frame_index = torch.arange(num_frames, device=dev)
    is_context = frame_index[None, :] < rearrange(ctx.reshape(-1), "b -> b 1")  # (B or 1, T)
    return torch.where(is_context, torch.ones_like(t), t).contiguous()


def mask_tokens(
    x1: torch.Tensor,
    t: torch.Tensor,
    scheduler: Scheduler,
    mask_token_id: int,
    generator: torch.Generator | None = None,
) -> MaskedTokens:
    r"""Corrupt clean tokens: each token of frame ``f`` is masked w.p. :math:`1 - \kappa(t_f)` (Algorithm 1, line 5).

    Args:
        x1: int64 ``[B, T, h, w]``, clean codes in ``[0, mask_token_id - 1]``.
        t: float ``[B, T]`` in [0, 1]; ``t_f = 1`` leaves frame ``f`` untouched (``κ(1) = 1``).
        scheduler: the masking scheduler :math:`\kappa`.
        mask_token_id: ``K``, the id written at masked positions.
        generator: source of randomness; must live on ``x1``'s device.

    Returns:
        :class:`MaskedTokens` with ``x_t`` (int64 ``[B, T, h, w]``) and ``is_masked`` (bool, same shape).

    Raises:
        ValueError: ``x1`` not a 4-D integer tensor, ``t`` not ``[B, T]`` or outside [0, 1], or ``x1``
            holding ids outside ``[0, mask_token_id - 1]`` (a clean chunk holds no mask token).
    """
    if x1.ndim != 4 or x1.is_floating_point() or x1.dtype == torch.bool:
        raise ValueError(f"x1 must be an integer tensor [B, T, h, w], got {x1.dtype} {tuple(x1.shape)}")
    if t.shape != x1.shape[:2]:
        raise ValueError(f"t must have shape [B, T] = {tuple(x1.shape[:2])}, got {tuple(t.shape)}")
    if float(t.min()) < 0.0 or float(t.max()) > 1.0:
        raise ValueError(f"t must lie in [0, 1], got [{float(t.min()):.4g}, {float(t.max()):.4g}]")
    lo, hi = int(x1.min()), int(x1.max())
    if lo < 0 or hi >= mask_token_id:
        raise ValueError(
            f"clean tokens x1 must lie in [0, mask_token_id - 1 = {mask_token_id - 1}], got [{lo}, {hi}]"
        )
    p_masked = 1.0 - scheduler.kappa(t.float())  # (B, T)
    u = torch.rand(x1.shape, generator=generator, device=x1.device, dtype=torch.float32)
    is_masked = u < rearrange(p_masked, "b t -> b t 1 1")  # (B, T, h, w)
    x_t = torch.where(is_masked, torch.full_like(x1, mask_token_id), x1).long()
    return MaskedTokens(x_t=x_t, is_masked=is_masked)
