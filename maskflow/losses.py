r"""The training loss: masked cross-entropy (eq. 7) and frame-level (fused-)SNR weights (appendix A.3).

Two implementations of eq. 7 give the same loss and gradients (up to float rounding):

- :func:`masked_cross_entropy` takes dense logits ``[B, T, h, w, K]`` (the reference, ``head='dense'``);
- :func:`fused_masked_cross_entropy` takes the head's input at the masked positions only and fuses the
  ``K``-way linear head with the cross-entropy, chunk by chunk, forward and backward
  (``head='masked'``, the default): with ``K = 16384`` the dense logits and their float32 copy are the
  largest tensors of a training step, and eq. 7 needs only the masked rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

from maskflow.schedules import Scheduler

__all__ = [
    "LossOutput",
    "masked_cross_entropy",
    "fused_masked_cross_entropy",
    "snr",
    "snr_weights",
    "SNR_FORMULAS",
    "DEFAULT_HEAD_CHUNK_ROWS",
]

DEFAULT_HEAD_CHUNK_ROWS = 4096

SNR_FORMULAS = ("paper", "reference")


@dataclass
class LossOutput:
    """Result of one loss evaluation.

    Attributes:
        loss: float32 scalar with grad, the weighted masked cross-entropy (eq. 7).
        accuracy: float32 scalar without grad, top-1 accuracy over masked tokens: the share whose target
            logit is above every other logit (``argmax == target`` with a unique maximum; a tie counts as
            wrong, so a zero-initialised head scores 0); 0 when none is masked.
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
        if num_masked:  # the target beats every other logit (a tie counts as wrong, as in the fused path)
            target_logit = sel_logits.gather(1, sel_targets[:, None])
            other = sel_logits.scatter(1, sel_targets[:, None], float("-inf")).amax(dim=-1, keepdim=True)
            accuracy = (target_logit > other).float().mean()
        else:
            accuracy = torch.zeros((), device=logits.device)
    return LossOutput(loss=loss, accuracy=accuracy, num_masked=num_masked, masked_ce=masked_ce)


def _matmul_dtype(device: torch.device, param_dtype: torch.dtype) -> torch.dtype:
    """The dtype ``F.linear`` would compute in here: the autocast dtype when autocast is on, else the parameter's."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return param_dtype


class _ChunkedHeadCrossEntropy(torch.autograd.Function):
    r"""Fused ``K``-way head + cross-entropy over row chunks; no ``[M, K]`` logits tensor is kept.

    Inputs (rows sorted by sub-position, ``groups[s]`` rows of sub-position ``s`` in a row):
    ``rows [M, D]``, ``weight [p², K, D]``, ``bias [p², K]``, ``targets`` int64 ``[M]``,
    ``row_weights`` float32 ``[M]``, ``grad_enabled`` (the caller's grad mode: no gradient work under
    ``torch.no_grad``). Outputs: the weighted CE sum :math:`\sum_n w_n \mathrm{CE}_n`
    (float32 scalar, differentiable), the unweighted CE sum and the number of rows whose target logit
    is above every other logit (float32 scalars, not differentiable): ``argmax == target`` where the
    maximum is unique; a tie counts as wrong (a zero-initialised head scores 0, not the share of
    targets that happen to be class 0). One ``amax`` pass instead of an ``argmax``, which is several
    times slower on a CPU.

    Each chunk's logits ``[≤ chunk_rows, K]`` are computed once, in float32 (the matmuls run in
    ``dtype``, as autocast would run them). When a gradient is needed, the forward pass also turns them
    into :math:`\partial L/\partial \text{logits} = w_n(\mathrm{softmax} - \mathrm{onehot})` in place
    and accumulates the input, weight and bias gradients of the whole loss (weight and bias in float32);
    the backward pass only scales them by the incoming gradient of the scalar. This is the fused
    linear-cross-entropy scheme of Liger-Kernel: three matmuls per chunk (logits, input grad, weight
    grad) instead of four with a recomputation of the logits in the backward pass, and one softmax.
    The extra memory of the stored gradients is ``M·D + p²·K·D`` values.
    """

    @staticmethod
    def forward(ctx, rows, weight, bias, targets, row_weights, groups, chunk_rows, dtype, grad_enabled):
        need_rows, need_w, need_b = (bool(grad_enabled) and n for n in ctx.needs_input_grad[:3])
        grad_rows = torch.zeros_like(rows) if need_rows else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        need_grad = need_rows or need_w or need_b
        with torch.autocast(rows.device.type, enabled=False):
            w_c, b_c, h_c = weight.to(dtype), bias.to(dtype), rows.to(dtype)
            wsum = torch.zeros((), dtype=torch.float32, device=rows.device)
            ce_sum = torch.zeros_like(wsum)
            correct = torch.zeros_like(wsum)
            start = 0
            for s, count in enumerate(groups):
                for lo in range(start, start + count, chunk_rows):
                    hi = min(lo + chunk_rows, start + count)
                    logits = F.linear(h_c[lo:hi], w_c[s], b_c[s]).float()  # (m, K)
                    tgt = targets[lo:hi, None]  # (m, 1)
                    rw = row_weights[lo:hi]
                    target_logit = logits.gather(1, tgt)  # (m, 1)
                    # the largest other logit: correct = the target beats every other class (a tie is wrong)
                    other = logits.scatter_(1, tgt, float("-inf")).amax(dim=-1, keepdim=True)  # (m, 1)
                    logits.scatter_(1, tgt, target_logit)
                    correct += (target_logit > other).sum()
                    top = torch.maximum(other, target_logit)  # (m, 1): the row's max, for a stable exp
                    e = logits.sub_(top).exp_()  # exp(logit - max), in place of the logits
                    del logits
                    total = e.sum(dim=-1, keepdim=True)  # (m, 1)
                    ce = (top + total.log() - target_logit).squeeze(1)  # (m,) = logsumexp - target logit
                    wsum += (ce * rw).sum()
                    ce_sum += ce.sum()
                    if not need_grad:
                        del e
                        continue
                    grad = e.mul_((rw[:, None] / total))  # w · softmax, in place
                    del e
                    grad.scatter_add_(1, tgt, -rw[:, None])  # - w · onehot
                    if need_b:
                        grad_b[s] += grad.sum(dim=0)
                    grad_lo = grad.to(dtype)
                    del grad
                    if need_rows:
                        grad_rows[lo:hi] = (grad_lo @ w_c[s]).to(rows.dtype)
                    if need_w:
                        grad_w[s] += (grad_lo.t() @ h_c[lo:hi]).float()
                    del grad_lo
                start += count
        ctx.save_for_backward(grad_rows, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, bias.dtype)
        ctx.mark_non_differentiable(ce_sum, correct)
        return wsum, ce_sum, correct

    @staticmethod
    def backward(ctx, grad_wsum, _grad_ce, _grad_correct):
        grad_rows, grad_w, grad_b = ctx.saved_tensors
        g = grad_wsum.float()
        if grad_rows is not None:
            grad_rows = grad_rows * g.to(grad_rows.dtype)
        if grad_w is not None:
            grad_w = (grad_w * g).to(ctx.dtypes[0])
        if grad_b is not None:
            grad_b = (grad_b * g).to(ctx.dtypes[1])
        return grad_rows, grad_w, grad_b, None, None, None, None, None, None


def fused_masked_cross_entropy(
    rows: torch.Tensor,
    sub: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    targets: torch.Tensor,
    row_weights: torch.Tensor | None = None,
    *,
    chunk_rows: int = DEFAULT_HEAD_CHUNK_ROWS,
    eps: float = 1e-8,
) -> LossOutput:
    r"""Eq. 7's masked cross-entropy computed from the head's input at the masked positions only.

    The same loss as :func:`masked_cross_entropy` (weighted eq. 7, ``masked_ce``, ``accuracy``,
    ``num_masked``), but the ``K``-way head is applied only to the ``M`` masked positions, fused with
    the cross-entropy and chunked: at most ``chunk_rows × K`` float32 logits exist at once, in the
    forward pass, which also computes the gradients (the backward pass only scales them). With
    ``K = 16384`` this removes the dense
    ``[B, T, h, w, K]`` logits and their float32 copy from training.

    Args:
        rows: float ``[M, D]``, the hidden state of each masked position's patch
            (:meth:`~maskflow.models.MaskFlowTransformer.head_rows`), with grad.
        sub: int64 ``[M]`` in ``[0, p²)``, each position's sub-position in its patch.
        weight: ``[p², K, D]`` head weight by sub-position (:meth:`~maskflow.models.MaskFlowTransformer.head_weights`).
        bias: ``[p², K]``.
        targets: int64 ``[M]`` in ``[0, K - 1]``, the clean codes ``x_1`` at those positions.
        row_weights: optional float ``[M]``, the frame weight ``w_f`` of each position; ``None`` = 1.
        chunk_rows: rows per chunk (>= 1).
        eps: added to ``M`` in the normalisation, as in :func:`masked_cross_entropy`.

    Returns:
        :class:`LossOutput`; ``loss`` is a float32 scalar with grad w.r.t. ``rows``, ``weight`` and
        ``bias`` (0 with zero gradients when ``M = 0``).

    Raises:
        ValueError: mismatched shapes or ``chunk_rows < 1``.
    """
    m = rows.shape[0]
    if rows.ndim != 2 or sub.shape != (m,) or targets.shape != (m,):
        raise ValueError(
            f"rows must be [M, D] with sub and targets [M]; got {tuple(rows.shape)}, {tuple(sub.shape)}, {tuple(targets.shape)}"
        )
    if weight.ndim != 3 or bias.shape != weight.shape[:2] or weight.shape[2] != rows.shape[1]:
        raise ValueError(f"weight must be [p², K, D={rows.shape[1]}] and bias [p², K]; got {tuple(weight.shape)}, {tuple(bias.shape)}")
    if row_weights is not None and row_weights.shape != (m,):
        raise ValueError(f"row_weights must be [M] = ({m},), got {tuple(row_weights.shape)}")
    if int(chunk_rows) < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    w = torch.ones(m, dtype=torch.float32, device=rows.device) if row_weights is None else row_weights.float()
    p2 = weight.shape[0]
    if p2 > 1:  # group the rows by sub-position (the loss is a sum: order does not matter)
        order = torch.argsort(sub, stable=True)
        groups = tuple(torch.bincount(sub, minlength=p2).tolist())
        rows, targets, w = rows[order], targets[order], w[order]
    else:
        groups = (m,)
    dtype = _matmul_dtype(rows.device, weight.dtype)
    wsum, ce_sum, correct = _ChunkedHeadCrossEntropy.apply(
        rows, weight, bias, targets, w, groups, int(chunk_rows), dtype, torch.is_grad_enabled()
    )
    loss = wsum / (m + eps)
    masked_ce = ce_sum / (m + eps)
    accuracy = correct / m if m else torch.zeros((), device=rows.device)
    return LossOutput(loss=loss, accuracy=accuracy, num_masked=int(m), masked_ce=masked_ce)


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
