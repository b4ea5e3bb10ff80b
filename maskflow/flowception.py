r"""Flowception in the discrete (masked-token) setting: frame deletion/insertion bookkeeping and training.

Flowception (supplementary, appendices A–E) generates a video's *length* as well as its content: frames
are inserted while others are being denoised. Here it runs on VQ tokens: an inserted frame starts
**fully masked** (``t = 0``) instead of as Gaussian noise, and its tokens are unmasked along the same
:math:`\kappa(t)` path as MaskFlow's frame-level masking (eq. 5 of the MaskFlow paper).

One training example (Algorithm 2, discrete), for a clean video :math:`X_1` of ``n`` frames:

1. insertion offsets :math:`\kappa^{-1}(u_i)`, :math:`u_i \sim \mathcal U(0, 1)` per frame (eq. 26);
   the first ``m`` frames are clean context (``t = 1``, never deleted, ``m`` drawn per video in
   ``[0, max_context_frames]``); with ``m = 0`` frame 0 is the start frame, offset 0 (Algorithm 1's
   ``n_start = 1``);
2. terminal-time sampling (appendix E): :math:`\tau_{max} = \max_i \kappa^{-1}(u_i) + 1`,
   :math:`\tau_g = \tau_{max} \cdot s` with ``s ~ U(0, 1)`` (``global_time='uniform'``, default) or
   ``s = sigmoid(N(0, 1))`` (``'logit_normal'``, the supplementary's "lognorm" read as a law on
   (0, 1)); then :math:`\tau_i = \tau_g - \kappa^{-1}(u_i)` (eq. 26) and :math:`t_i = \mathrm{clip}(\tau_i, 0, 1)`;
   some frame is always evolving when ``m = 0`` (the start frame or the last-inserted one);
3. frames with :math:`\tau_i < 0` are deleted (:func:`f_strip`); the slot counts :math:`K_j` — deleted
   frames between present frame ``j`` and the next present one (:func:`slot_counts`, the alignment
   of eq. 16) — are the insertion targets;
4. each token of a present frame is masked with probability :math:`1 - \kappa(t_i)`
   (:func:`maskflow.masking.mask_tokens`);
5. loss = MaskFlow's masked cross-entropy on the present frames (eq. 7 of MaskFlow, with its frame
   weighting) + ``insertion_loss_weight`` × the insertion loss (:func:`insertion_loss`)

   .. math:: \mathcal L_{ins} = \sum_j \lambda_j - K_j \log \lambda_j        \quad\text{(eq. 19)}

   with the rate parameterised per unit of hazard, :math:`u_{t,j} = \rho_\kappa(t)\,\lambda_j` (eq. 17),
   :math:`\rho_\kappa = \dot\kappa / (1 - \kappa)` (eq. 27). Eq. 31,
   :math:`\sum_j u_j - \rho_\kappa(t) K_j \log u_j`, is the same loss written for :math:`u = \rho_\kappa \lambda`:
   substituting gives :math:`\rho_\kappa \sum_j (\lambda_j - K_j \log \lambda_j)` plus a term free of
   :math:`\theta` — eq. 18, ``insertion_weighting='hazard'`` (the ELBO weighting). The default
   ``'none'`` drops the factor (eq. 19, "what we use in practice"); its minimiser is
   :math:`\lambda_j = \mathbb E[K_j \mid X_t]` (Corollary B.3; ``'hazard'`` has the same one where
   :math:`t_g` is a function of :math:`X_t`, e.g. the start frame's level, and the
   :math:`\rho_\kappa`-weighted mean otherwise), the expected number of frames missing right of frame
   ``j``. The sampler multiplies it by the probability that a pending frame is revealed during its step,
   :math:`(\kappa(t_g) - \kappa(t_g - h)) / (1 - \kappa(t_g - h))`
   (:func:`maskflow.sampling.flowception.step_hazard`; Algorithm 1's :math:`h\,\rho_\kappa(t_g)` to
   first order in ``h``). The model does not see :math:`t_g` (only per-frame levels), which is why the
   rate is learnt per unit of hazard; where the levels do not pin :math:`t_g` (a window of context
   frames alone) it learns :math:`K_j` averaged over the :math:`\tau_g` of such training states.

Reductions (appendix E, ``reduction``): ``'frame'`` (default, the one the supplementary found more
stable) — the cross-entropy is a mean over all masked tokens of the batch and the insertion loss a
mean over all present frames of the batch; ``'video'`` — both are means per video first, then over
the videos (each video counts the same whatever its number of active frames).

Batches of videos of different lengths: padding frames (after a video's last frame) hold the mask
token id ``K`` in every position (a clean frame never does). They are never present, never counted
and never attended to (the backbone's ``frame_mask``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from maskflow.losses import DEFAULT_HEAD_CHUNK_ROWS, LossOutput, fused_masked_cross_entropy, masked_cross_entropy
from maskflow.masking import mask_tokens
from maskflow.schedules import Scheduler
from maskflow.training import MaskFlowObjective, ObjectiveConfig, unwrap_model

__all__ = [
    "GLOBAL_TIMES",
    "REDUCTIONS",
    "INSERTION_WEIGHTINGS",
    "ExtendedTimes",
    "FlowceptionConfig",
    "FlowceptionLossOutput",
    "FlowceptionObjective",
    "hazard",
    "real_frames",
    "sample_extended_times",
    "f_strip",
    "slot_counts",
    "insertion_loss",
]

GLOBAL_TIMES = ("uniform", "logit_normal")
REDUCTIONS = ("frame", "video")
INSERTION_WEIGHTINGS = ("none", "hazard")
MAX_HAZARD = 1e3  # cap of ρ_κ(t) where 1 − κ(t) → 0 (the 'hazard' weighting only)


# ================================================================================ the insertion schedule
def hazard(scheduler: Scheduler, t: torch.Tensor, *, max_value: float = MAX_HAZARD) -> torch.Tensor:
    r"""Reveal hazard :math:`\rho_\kappa(t) = \dot\kappa(t) / (1 - \kappa(t))` (Lemma B.1, eq. 27).

    Args:
        scheduler: the scheduler :math:`\kappa`.
        t: float ``[...]``.
        max_value: cap where :math:`1 - \kappa(t)` vanishes (``t → 1``).

    Returns:
        float32 ``[...]``, in ``[0, max_value]``; 0 for ``t <= 0`` or ``t >= 1`` (no reveal outside (0, 1)).
    """
    t = t.float()
    inside = (t > 0) & (t < 1)
    tc = t.clamp(0.0, 1.0)
    rate = scheduler.d_kappa(tc) / (1.0 - scheduler.kappa(tc)).clamp_min(1.0 / max_value)
    return torch.where(inside, rate.clamp(0.0, max_value), torch.zeros_like(rate))


def real_frames(x: torch.Tensor, mask_token_id: int) -> torch.Tensor:
    """Which frames of a padded batch are real: bool ``[B, T]``, ``False`` for padding frames.

    Args:
        x: int64 ``[B, T, h, w]``; a padding frame holds ``mask_token_id`` at every position.
        mask_token_id: ``K``.

    Raises:
        ValueError: a video with no real frame, or padding before a real frame (padding must trail).
    """
    real = ~(x == mask_token_id).flatten(2).all(dim=2)  # (B, T)
    lengths = real.sum(dim=1)
    if bool((lengths == 0).any()):
        raise ValueError("every video needs at least one real frame (a frame not entirely made of mask tokens)")
    expected = torch.arange(x.shape[1], device=x.device)[None] < lengths[:, None]
    if not torch.equal(real, expected):
        raise ValueError("padding frames (all mask tokens) must come after a video's real frames")
    return real


@dataclass
class ExtendedTimes:
    """The extended-time construction of one batch (eqs. 25–26, appendix E).

    Attributes:
        tau_g: float32 ``[B]``, global extended time :math:`\\tau_g \\in [0, 2]`.
        t_g: float32 ``[B]``, :math:`\\mathrm{clip}(\\tau_g, 0, 1)`.
        offsets: float32 ``[B, T]``, insertion offsets :math:`\\kappa^{-1}(u_i)` (0 for context / start
            frames, ``inf`` for padding).
        tau: float32 ``[B, T]``, :math:`\\tau_i = \\tau_g - \\text{offset}_i` (``+inf`` for context frames).
        t: float32 ``[B, T]``, per-frame level :math:`\\mathrm{clip}(\\tau_i, 0, 1)` (1 for context frames).
        present: bool ``[B, T]``: real frames with :math:`\\tau_i \\ge 0` (context frames always).
        is_context: bool ``[B, T]``: the ``m`` clean leading frames of each video.
    """

    tau_g: torch.Tensor
    t_g: torch.Tensor
    offsets: torch.Tensor
    tau: torch.Tensor
    t: torch.Tensor
    present: torch.Tensor
    is_context: torch.Tensor


def sample_extended_times(
    real: torch.Tensor,
    scheduler: Scheduler,
    *,
    n_context: torch.Tensor | int = 0,
    global_time: str = "uniform",
    generator: torch.Generator | None = None,
) -> ExtendedTimes:
    r"""Per-frame extended times with terminal-time sampling (eq. 26, appendix E "Time sampling").

    Args:
        real: bool ``[B, T]``, real (non-padding) frames, a prefix of each row (:func:`real_frames`).
        scheduler: :math:`\kappa`; offsets are :math:`\kappa^{-1}(u)` (insertion-time density
            :math:`\dot\kappa`, section A.3).
        n_context: ``m``, clean leading frames per video (int or int64 ``[B]``), each ``< length``.
        global_time: ``'uniform'`` (:math:`\tau_g = \tau_{max} U`) or ``'logit_normal'``
            (:math:`\tau_g = \tau_{max}\,\sigma(N(0, 1))`).
        generator: randomness (on ``real``'s device).

    Returns:
        :class:`ExtendedTimes`.

    Raises:
        ValueError: unknown ``global_time``, or ``n_context`` not smaller than a video's length.
    """
    if global_time not in GLOBAL_TIMES:
        raise ValueError(f"global_time must be one of {GLOBAL_TIMES}, got {global_time!r}")
    b, n = real.shape
    dev = real.device
    lengths = real.sum(dim=1)
    m = torch.as_tensor(n_context, device=dev).long().expand(b)  # an int or [B] counts
    if bool((m >= lengths).any()) or bool((m < 0).any()):
        raise ValueError(f"n_context must lie in [0, length - 1] per video; got {m.tolist()} for lengths {lengths.tolist()}")
    index = torch.arange(n, device=dev)[None]  # (1, T)
    is_context = index < m[:, None]
    start = (m[:, None] == 0) & (index == 0)  # the start frame of a video without context: offset 0
    u = torch.rand((b, n), generator=generator, device=dev)
    offsets = scheduler.inverse(u).float()
    offsets = torch.where(is_context | start, torch.zeros_like(offsets), offsets)
    offsets = torch.where(real, offsets, torch.full_like(offsets, float("inf")))
    evolving = real & ~is_context
    tau_max = torch.where(evolving, offsets, torch.zeros_like(offsets)).amax(dim=1) + 1.0  # (B,)
    if global_time == "uniform":
        s = torch.rand(b, generator=generator, device=dev)
    else:
        s = torch.sigmoid(torch.randn(b, generator=generator, device=dev))
    tau_g = tau_max * s
    tau = tau_g[:, None] - offsets
    tau = torch.where(is_context, torch.full_like(tau, float("inf")), tau)
    t = tau.clamp(0.0, 1.0)
    present = real & (tau >= 0)
    return ExtendedTimes(tau_g=tau_g, t_g=tau_g.clamp(0.0, 1.0), offsets=offsets, tau=tau, t=t,
                         present=present, is_context=is_context)


# ================================================================================ deletions and slots
def f_strip(x: torch.Tensor, keep: torch.Tensor, *, fill: float | int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    r""":math:`f_{strip}`: remove the deleted frames of every video, keeping order, and left-align (A.1).

    Args:
        x: ``[B, T, ...]`` (any dtype): per-frame values (tokens, levels, …).
        keep: bool ``[B, T]``; ``False`` = deleted (a blank :math:`\emptyset`) or padding.
        fill: value written into the padding of the result.

    Returns:
        ``(packed, frame_mask)``: ``packed [B, L, ...]`` with ``L = max_b Σ_i keep[b, i]`` (at least 1),
        row ``b`` holding its kept frames in order then ``fill``; ``frame_mask`` bool ``[B, L]``.

    Raises:
        ValueError: ``keep`` not a bool ``[B, T]`` matching ``x``.
    """
    if keep.dtype != torch.bool or keep.shape != x.shape[:2]:
        raise ValueError(f"keep must be bool [B, T] = {tuple(x.shape[:2])}, got {keep.dtype} {tuple(keep.shape)}")
    lengths = keep.sum(dim=1)
    out_len = max(1, int(lengths.max()))
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :out_len]  # kept frames first, in order
    gather = order.reshape(*order.shape, *([1] * (x.ndim - 2))).expand(-1, -1, *x.shape[2:])
    packed = x.gather(1, gather)
    frame_mask = torch.arange(out_len, device=x.device)[None] < lengths[:, None]
    pad = frame_mask.reshape(*frame_mask.shape, *([1] * (x.ndim - 2)))
    return torch.where(pad, packed, torch.full_like(packed, fill)), frame_mask


def slot_counts(keep: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    r"""Pending insertions per slot, :math:`K_j`, aligned with the frames :func:`f_strip` keeps (eq. 16).

    A deleted real frame belongs to the slot of the nearest kept frame on its left ("the first
    non-:math:`\emptyset` coordinate to the left"); :math:`K_j` counts them.

    Args:
        keep: bool ``[B, T]``, present frames (a subset of ``real``).
        real: bool ``[B, T]``, real frames (padding ``False``).

    Returns:
        int64 ``[B, L]``, the shape of :func:`f_strip`'s output; 0 at padding.

    Raises:
        ValueError: a deleted real frame with no kept frame on its left (frame 0 must be kept).
    """
    if bool((keep & ~real).any()):
        raise ValueError("keep must be a subset of real frames")
    deleted = real & ~keep
    slot = keep.long().cumsum(dim=1) - 1  # (B, T): packed index of the last kept frame at or before i
    if bool((deleted & (slot < 0)).any()):
        raise ValueError("a deleted frame has no present frame on its left: the first frame of a video must be kept")
    out_len = max(1, int(keep.sum(dim=1).max()))
    counts = torch.zeros(keep.shape[0], out_len, dtype=torch.long, device=keep.device)
    counts.scatter_add_(1, slot.clamp_min(0), deleted.long())
    return counts


# ================================================================================ the insertion loss
def insertion_loss(
    log_rates: torch.Tensor,
    counts: torch.Tensor,
    frame_mask: torch.Tensor,
    *,
    weights: torch.Tensor | None = None,
    reduction: str = "frame",
) -> torch.Tensor:
    r"""Poisson insertion loss :math:`\lambda_j - K_j \log \lambda_j` (eq. 19; eq. 18/31 with ``weights``).

    Args:
        log_rates: float ``[B, L]``, :math:`\log \lambda_j` of the present frames (with grad).
        counts: int or float ``[B, L]``, :math:`K_j` (:func:`slot_counts`).
        frame_mask: bool ``[B, L]``, present frames (padding ``False``: not in the loss).
        weights: optional float ``[B]``, a factor per video (:math:`\rho_\kappa(t_g)` for eq. 18).
        reduction: ``'frame'`` — sum over all present frames of the batch / their number;
            ``'video'`` — mean over each video's present frames, then over videos.

    Returns:
        float32 scalar.

    Raises:
        ValueError: mismatched shapes or an unknown ``reduction``.
    """
    if log_rates.shape != counts.shape or frame_mask.shape != counts.shape:
        raise ValueError(
            f"log_rates, counts and frame_mask must share one [B, L] shape; got {tuple(log_rates.shape)}, "
            f"{tuple(counts.shape)}, {tuple(frame_mask.shape)}"
        )
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    z = log_rates.float()
    term = torch.exp(z) - counts.float() * z  # (B, L)
    if weights is not None:
        term = term * weights.float()[:, None]
    term = torch.where(frame_mask, term, torch.zeros_like(term))
    per_video = frame_mask.sum(dim=1)
    if reduction == "frame":
        return term.sum() / per_video.sum().clamp_min(1)
    return (term.sum(dim=1) / per_video.clamp_min(1)).mean()


# ================================================================================ the objective
@dataclass
class FlowceptionConfig:
    """How a clean video becomes a Flowception loss (Algorithm 2, discrete; appendix E).

    Attributes:
        scheduler, max_context_frames, loss_weighting, snr_clip, cum_snr_decay, snr_formula, head,
            head_chunk_rows: as in :class:`maskflow.training.ObjectiveConfig` (the masked cross-entropy
            part is MaskFlow's eq. 7 with its weighting, on the present frames).
        global_time: law of :math:`\\tau_g / \\tau_{max}`: ``'uniform'`` (default) or ``'logit_normal'``.
        reduction: ``'frame'`` (default) or ``'video'`` (module docstring).
        insertion_weighting: ``'none'`` (default, eq. 19) or ``'hazard'`` (eq. 18 = eq. 31 with
            :math:`u = \\rho_\\kappa \\lambda`: each video's term times :math:`\\rho_\\kappa(t_g)`, capped).
        insertion_loss_weight: factor of the insertion loss in the total (>= 0).
        context_drop_prob: probability that a video's context frames are fully masked (``t = 0``)
            instead of clean, so the model also learns the context-free rates of insertion-rate
            guidance (eq. 36, "we randomly drop the conditional information").

    Raises:
        ValueError: a setting outside its allowed values, naming it.
    """

    scheduler: str = "sigmoid"
    max_context_frames: int = 0
    loss_weighting: str = "fused_snr"
    snr_clip: float = 6.0
    cum_snr_decay: float = 0.8
    snr_formula: str = "paper"
    head: str = "masked"
    head_chunk_rows: int = DEFAULT_HEAD_CHUNK_ROWS
    global_time: str = "uniform"
    reduction: str = "frame"
    insertion_weighting: str = "none"
    insertion_loss_weight: float = 1.0
    context_drop_prob: float = 0.0

    def __post_init__(self) -> None:
        self.base_config()  # validates the shared settings
        if self.global_time not in GLOBAL_TIMES:
            raise ValueError(f"global_time must be one of {GLOBAL_TIMES}, got {self.global_time!r}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        if self.insertion_weighting not in INSERTION_WEIGHTINGS:
            raise ValueError(f"insertion_weighting must be one of {INSERTION_WEIGHTINGS}, got {self.insertion_weighting!r}")
        if not self.insertion_loss_weight >= 0:
            raise ValueError(f"insertion_loss_weight must be >= 0, got {self.insertion_loss_weight}")
        if not 0.0 <= self.context_drop_prob <= 1.0:
            raise ValueError(f"context_drop_prob must lie in [0, 1], got {self.context_drop_prob}")

    def base_config(self) -> ObjectiveConfig:
        """The MaskFlow :class:`~maskflow.training.ObjectiveConfig` of the cross-entropy part."""
        return ObjectiveConfig(
            scheduler=self.scheduler, masking="frame", max_context_frames=self.max_context_frames,
            loss_weighting=self.loss_weighting, snr_clip=self.snr_clip, cum_snr_decay=self.cum_snr_decay,
            snr_formula=self.snr_formula, head=self.head, head_chunk_rows=self.head_chunk_rows,
        )


@dataclass
class FlowceptionLossOutput(LossOutput):
    """:class:`~maskflow.losses.LossOutput` (``loss`` is the total) plus Flowception's parts.

    Attributes:
        insertion_loss: float32 scalar without grad, :func:`insertion_loss` before its weight.
        extras: floats to log: ``insertion_loss``, ``present_frames`` (mean per video),
            ``pending_frames`` (mean :math:`\\sum_j K_j` per video), ``mean_rate`` (mean
            :math:`\\lambda` over present frames).
    """

    insertion_loss: torch.Tensor | None = None
    extras: dict[str, float] = field(default_factory=dict)


class FlowceptionObjective:
    """One evaluation of the discrete Flowception loss (module docstring; Algorithm 2).

    Args:
        config: the :class:`FlowceptionConfig`.
    """

    def __init__(self, config: FlowceptionConfig | None = None) -> None:
        self.config = config or FlowceptionConfig()
        self.base = MaskFlowObjective(self.config.base_config())
        self.scheduler = self.base.scheduler

    def sample_context_counts(self, lengths: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``m ~ U{0, …, max_context_frames}`` per video, capped at ``length − 1``: int64 ``[B]``."""
        cap = int(self.config.max_context_frames)
        if cap == 0:
            return torch.zeros_like(lengths)
        m = torch.randint(0, cap + 1, lengths.shape, generator=generator, device=lengths.device)
        return torch.minimum(m, lengths - 1)

    def __call__(self, model: nn.Module, x1: torch.Tensor, generator: torch.Generator | None = None) -> FlowceptionLossOutput:
        """Loss of ``model`` on clean (padded) videos ``x1``.

        Args:
            model: a backbone with a rate head (``rate_head != 'none'``), possibly DDP/compile-wrapped;
                called as ``model(x_t, t, frame_mask=…, return_log_rates=True[, return_hidden=True])``.
            x1: int64 ``[B, T, h, w]``: clean codes in ``[0, K − 1]``; trailing padding frames hold ``K``.
            generator: randomness on ``x1``'s device.

        Returns:
            :class:`FlowceptionLossOutput`; ``accuracy``, ``masked_ce`` and ``num_masked`` describe the
            cross-entropy part.

        Raises:
            ValueError: a backbone without a rate head, bad shapes, padding not trailing.
        """
        cfg = self.config
        bare = unwrap_model(model)
        if not getattr(bare, "has_rate_head", False):
            raise ValueError("dynamics=flowception needs a backbone with a rate head (model rate_head='exp' or 'softplus')")
        if x1.ndim != 4:
            raise ValueError(f"x1 must be [B, T, h, w], got shape {tuple(x1.shape)}")
        mask_id = bare.mask_token_id
        real = real_frames(x1, mask_id)
        b = x1.shape[0]
        m = self.sample_context_counts(real.sum(dim=1), generator)
        times = sample_extended_times(real, self.scheduler, n_context=m, global_time=cfg.global_time, generator=generator)
        t = times.t
        if cfg.context_drop_prob > 0 and cfg.max_context_frames > 0:
            drop = torch.rand(b, generator=generator, device=x1.device) < cfg.context_drop_prob
            t = torch.where(drop[:, None] & times.is_context, torch.zeros_like(t), t)
        keep = times.present
        counts = slot_counts(keep, real)  # (B, L)
        clean, frame_mask = f_strip(x1, keep, fill=0)  # (B, L, h, w); padding code 0 (masked below)
        t_p, _ = f_strip(t, keep, fill=1.0)  # (B, L); padding at t = 1: nothing masked there
        masked = mask_tokens(clean, t_p, self.scheduler, mask_id, generator=generator)
        pad = ~frame_mask[:, :, None, None]
        x_t = masked.x_t.masked_fill(pad, mask_id)
        is_masked = masked.is_masked & ~pad
        weights = self.base.frame_weights(t_p)  # (B, L) or None
        if cfg.reduction == "video":  # each video's masked tokens weigh 1 / (its count · videos)
            per_video = is_masked.flatten(1).sum(dim=1).float()
            has = per_video > 0
            scale = torch.where(has, is_masked.sum().float() / (per_video.clamp_min(1) * has.sum().clamp_min(1)), per_video)
            w = weights if weights is not None else torch.ones_like(t_p)
            weights = w * scale[:, None]
        if cfg.head == "masked" and callable(getattr(bare, "head_rows", None)):
            hidden, log_rates = model(x_t, t_p, return_hidden=True, frame_mask=frame_mask, return_log_rates=True)
            index = is_masked.nonzero(as_tuple=True)
            rows, sub = bare.head_rows(hidden, index)
            weight, bias = bare.head_weights()
            row_weights = weights[index[0], index[1]] if weights is not None else None
            ce = fused_masked_cross_entropy(rows, sub, weight, bias, clean[index], row_weights, chunk_rows=cfg.head_chunk_rows)
        else:
            logits, log_rates = model(x_t, t_p, frame_mask=frame_mask, return_log_rates=True)
            ce = masked_cross_entropy(logits, clean, is_masked, weights)
        ins_weights = hazard(self.scheduler, times.t_g) if cfg.insertion_weighting == "hazard" else None
        ins = insertion_loss(log_rates, counts, frame_mask, weights=ins_weights, reduction=cfg.reduction)
        total = ce.loss + cfg.insertion_loss_weight * ins
        with torch.no_grad():
            present = frame_mask.sum(dim=1).float()
            rates = torch.where(frame_mask, log_rates.detach().float().exp(), torch.zeros_like(log_rates.detach().float()))
            extras = {
                "insertion_loss": float(ins.detach()),
                "present_frames": float(present.mean()),
                "pending_frames": float(counts.sum(dim=1).float().mean()),
                "mean_rate": float(rates.sum() / present.sum().clamp_min(1)),
            }
        return FlowceptionLossOutput(
            loss=total, accuracy=ce.accuracy, num_masked=ce.num_masked, masked_ce=ce.masked_ce,
            insertion_loss=ins.detach(), extras=extras,
        )
