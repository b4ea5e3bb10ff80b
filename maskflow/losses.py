r"""The training loss: masked cross-entropy (eq. 7) and frame-level (fused-)SNR weights (appendix A.3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

from maskflow.schedules import Scheduler

__all__ = ["LossOutput", "masked_cross_entropy", "snr", "snr_weights", "SNR_FORMULAS"]

SNR_FORMULAS = ("paper", "reference")


@dataclass
class LossOutput:
    """Result of one loss evaluation.

    Attributes:
        loss: float32 scalar with grad, the weighted masked cross-entropy (eq. 7).
        accuracy: float32 scalar without grad, top-1 accuracy over masked tokens (0 when none is masked).
        num_masked: number of masked tokens that entered the loss.
        masked_ce: float32 scalar without grad, the *unweighted* mean cross-entropy over masked tokens
            (nats/token; equals ``loss`` when no frame weights are given) — the curve to watch, since the
            weighted loss moves with the sampled levels.
    """

    loss: torch.Tensor
    accuracy: torch.Tensor
    num_masked: int
    masked_ce: torch.Tensor | None = None


def masked_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    is_masked: torch.Tensor,
    frame_weights: torch.Tensor | None = None,
    eps: float = 1e-8,
) -> LossOutput:
    r"""Cross-entropy on masked tokens only (eq. 7's loss masking :math:`\delta_{[M]}(\mathbf{x}_t)`).

    .. math::
        \mathcal{L} = \frac{\sum_n w_{f(n)}\, m_n\, \mathrm{CE}(\lambda_n, x_1^n)}{\sum_n m_n + \epsilon}

    with :math:`m_n = 1` where token ``n`` is masked and :math:`w_f` the weight of its frame. Only the
    masked positions' logits are gathered and promoted to float32, so bf16 logits over a large ``K``
    are never copied whole.

    Args:
        logits: float ``[B, T, h, w, K]`` (any float dtype).
        targets: int64 ``[B, T, h, w]`` in ``[0, K - 1]``, the clean tokens ``x_1``.
        is_masked: bool ``[B, T, h, w]``.
        frame_weights: optional float ``[B, T]``, per-frame weights ``w_f`` (e.g. :func:`snr_weights`);
            ``None`` weighs every masked token 1.
        eps: added to the masked count, so a batch without masked tokens gives loss 0.

    Returns:
        :class:`LossOutput` (``loss``, ``accuracy``, ``num_masked``).

    Raises:
        ValueError: mismatched shapes.
    """
    if logits.ndim != 5 or logits.shape[:4] != targets.shape:
        raise ValueError(
            f"logits must be [B, T, h, w, K] matching targets [B, T, h, w]; got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    if is_masked.shape != targets.shape or is_masked.dtype != torch.bool:
        raise ValueError(f"is_masked must be bool {tuple(targets.shape)}, got {is_masked.dtype} {tuple(is_masked.shape)}")
    if frame_weights is not None and frame_weights.shape != targets.shape[:2]:
        raise ValueError(f"frame_weights must be [B, T] = {tuple(targets.shape[:2])}, got {tuple(frame_weights.shape)}")

    sel_logits = logits[is_masked].float()  # (M, K)
    sel_targets = targets[is_masked]  # (M,)
    ce = F.cross_entropy(sel_logits, sel_targets, reduction="none")  # (M,)
    masked_ce = ce.detach().sum() / (sel_targets.numel() + eps)
    if frame_weights is not None:
        w = rearrange(frame_weights.float(), "b t -> b t 1 1").expand(targets.shape)[is_masked]  # (M,)
        ce = ce * w
    num_masked = int(sel_targets.numel())
    loss = ce.sum() / (num_masked + eps)
    with torch.no_grad():
        if num_masked:
            accuracy = (sel_logits.argmax(dim=-1) == sel_targets).float().mean()
        else:
            accuracy = torch.zeros((), device=logits.device)
    return LossOutput(loss=loss, accuracy=accuracy, num_masked=num_masked, masked_ce=masked_ce)


def snr(t: torch.Tensor, scheduler: Scheduler, *, snr_formula: str = "paper", eps: float = 1e-6) -> torch.Tensor:
    r"""Signal-to-noise ratio of a masking level.

    ``'paper'`` (appendix A.3): :math:`\kappa^2 / (1 - \kappa^2)` — :meth:`Scheduler.snr`.
    ``'reference'``: :math:`\kappa^2 / (1 - \kappa)^2`, what the authors' released code computes
    (a port of the Gaussian :math:`\alpha^2/\sigma^2` with :math:`\sigma = 1 - \kappa`). Both are 0 at
    ``κ = 0`` and grow without bound as ``κ → 1``; the reference one grows faster (about 4× near 1).

    Args:
        t: float ``[...]`` in [0, 1].
        scheduler: the masking scheduler :math:`\kappa`.
        snr_formula: ``'paper'`` or ``'reference'``.
        eps: floor of the denominator (``t = 1`` gives a large finite value).

    Returns:
        float ``[...]``, non-negative.

    Raises:
        ValueError: unknown ``snr_formula``.
    """
    if snr_formula == "paper":
        return scheduler.snr(t, eps=eps)
    if snr_formula == "reference":
        k = scheduler.kappa(t)
        return k.square() / (1.0 - k).square().clamp_min(eps)
    raise ValueError(f"snr_formula must be one of {SNR_FORMULAS}, got {snr_formula!r}")


def snr_weights(
    t: torch.Tensor,
    scheduler: Scheduler,
    *,
    snr_clip: float = 6.0,
    cum_snr_decay: float = 0.8,
    fused: bool = True,
    snr_formula: str = "paper",
) -> torch.Tensor:
    r"""Frame-level loss weights from the (fused) SNR of each frame's level (appendix A.3).

    Without fusion: :math:`w_f = \min(\mathrm{SNR}(t_f), c)`, ``c = snr_clip``.

    Fused (from Diffusion Forcing, as adopted by the paper): an exponentially decaying running SNR over
    the preceding frames raises the weight of frames that follow clean (or lightly masked) frames:

    .. math::
        n_f = \min(\mathrm{SNR}_f, c) / c, \quad C_{-1} = 0,\ C_0 = n_0,\
        C_f = d\, C_{f-1} + (1 - d)\, n_f, \\
        w_f = c \left[1 - (1 - d\, C_{f-1})(1 - n_f)\right],

    with ``d = cum_snr_decay``; ``w_0 = min(SNR_0, c)``. Weights lie in ``[0, c]``.

    ``snr_formula`` picks the SNR: ``'paper'`` is A.3's :math:`\kappa^2/(1-\kappa^2)`; ``'reference'``
    is the authors' code's :math:`\kappa^2/(1-\kappa)^2` (see :func:`snr`).

    Args:
        t: float ``[B, T]`` in [0, 1], per-frame levels (frames in temporal order).
        scheduler: the masking scheduler :math:`\kappa`.
        snr_clip: ``c > 0``.
        cum_snr_decay: ``d`` in ``[0, 1]``.
        fused: apply the running-SNR fusion across frames.
        snr_formula: ``'paper'`` or ``'reference'``.

    Returns:
        float32 ``[B, T]``, detached (weights carry no gradient).

    Raises:
        ValueError: ``t`` not 2-D, ``snr_clip <= 0``, ``cum_snr_decay`` outside ``[0, 1]`` or unknown ``snr_formula``.
    """
    if t.ndim != 2:
        raise ValueError(f"t must be [B, T], got shape {tuple(t.shape)}")
    if not snr_clip > 0:
        raise ValueError(f"snr_clip must be > 0, got {snr_clip}")
    if not 0.0 <= cum_snr_decay <= 1.0:
        raise ValueError(f"cum_snr_decay must lie in [0, 1], got {cum_snr_decay}")
    with torch.no_grad():
        clipped = snr(t.float(), scheduler, snr_formula=snr_formula).clamp_max(snr_clip)  # (B, T)
        if not fused:
            return clipped
        n = clipped / snr_clip  # (B, T) in [0, 1]
        d = cum_snr_decay
        weights = []
        prev_cum = torch.zeros_like(n[:, 0])  # C_{-1} = 0
        for f in range(n.shape[1]):
            weights.append(snr_clip * (1.0 - (1.0 - d * prev_cum) * (1.0 - n[:, f])))
            prev_cum = n[:, f] if f == 0 else d * prev_cum + (1.0 - d) * n[:, f]
        return torch.stack(weights, dim=1)
