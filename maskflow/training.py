r"""The training recipe on the method side: objective (Algorithm 1), optimiser, LR schedule, EMA, one step.

Nothing here knows about Ray or MLflow; ``experiments/train.py`` wires these pieces into a distributed
loop. Defaults follow appendix A.3 and the authors' released configuration: AdamW, lr 1e-4,
betas (0.9, 0.999), no weight decay, constant LR, grad-norm clip 2.0, EMA 0.9999.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from maskflow.losses import (
    DEFAULT_HEAD_CHUNK_ROWS,
    SNR_FORMULAS,
    LossOutput,
    fused_masked_cross_entropy,
    masked_cross_entropy,
    snr_weights,
)
from maskflow.masking import MASKING_MODES, mask_tokens, sample_frame_levels
from maskflow.schedules import SCHEDULERS, get_scheduler

__all__ = [
    "ObjectiveConfig",
    "MaskFlowObjective",
    "OptimConfig",
    "EMA",
    "StepResult",
    "build_optimizer",
    "build_lr_schedule",
    "build_grad_scaler",
    "autocast",
    "train_step",
    "evaluate_objective",
    "unwrap_model",
    "RECIPES",
]

LOSS_WEIGHTINGS = ("fused_snr", "snr", "none")
HEADS = ("masked", "dense")
PRECISIONS = ("bf16", "fp16", "fp32")
LR_DECAYS = ("constant", "cosine")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare backbone inside DDP (``.module``) and/or ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        else:
            return model


# ================================================================================ objective
@dataclass
class ObjectiveConfig:
    """How a clean chunk becomes a loss (Algorithm 1, eq. 7, appendix A.3).

    Attributes:
        scheduler: masking scheduler κ(t): ``'linear'``, ``'cosine'`` or ``'sigmoid'`` (paper default).
        masking: ``'frame'`` — one level per frame (MaskFlow) — or ``'constant'`` — one per video (baseline).
        max_context_frames: each video gets ``m ~ U{0, …, max_context_frames}`` leading clean frames
            (``t = 1``), simulating the clean context of chunkwise sampling (section 3.3); must be
            smaller than the chunk's frame count.
        loss_weighting: ``'fused_snr'`` (paper), ``'snr'`` (clipped SNR per frame) or ``'none'``.
        snr_clip: ``c``, clip of the SNR weights.
        cum_snr_decay: ``d``, decay of the fused running SNR.
        snr_formula: ``'paper'`` (A.3: κ²/(1−κ²)) or ``'reference'`` (authors' code: κ²/(1−κ)²).
        level_eps: lower bound of sampled levels, ``t = (1 − eps)·U + eps``.
        head: ``'masked'`` (default) applies the ``K``-way output head only at the masked positions, fused
            with eq. 7's cross-entropy in chunks of ``head_chunk_rows`` rows
            (:func:`~maskflow.losses.fused_masked_cross_entropy`): no ``[B, T, h, w, K]`` logits. Models
            without ``head_rows``/``head_weights`` (or ``forward(..., return_hidden=True)``) fall back to
            the dense path. ``'dense'`` computes every position's logits and then
            :func:`~maskflow.losses.masked_cross_entropy` — the reference; both give the same loss and
            gradients up to float rounding.
        head_chunk_rows: rows (masked positions) per chunk of the fused head + cross-entropy; the peak
            extra memory is about ``3 · head_chunk_rows · K`` float32 values.

    Raises:
        ValueError: a setting outside its allowed values, naming it.
    """

    scheduler: str = "sigmoid"
    masking: str = "frame"
    max_context_frames: int = 0
    loss_weighting: str = "fused_snr"
    snr_clip: float = 6.0
    cum_snr_decay: float = 0.8
    snr_formula: str = "paper"
    level_eps: float = 1e-3
    head: str = "masked"
    head_chunk_rows: int = DEFAULT_HEAD_CHUNK_ROWS

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {sorted(SCHEDULERS)}, got {self.scheduler!r}")
        if self.masking not in MASKING_MODES:
            raise ValueError(f"masking must be one of {MASKING_MODES}, got {self.masking!r}")
        if int(self.max_context_frames) < 0:
            raise ValueError(f"max_context_frames must be >= 0, got {self.max_context_frames}")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {self.loss_weighting!r}")
        if not self.snr_clip > 0:
            raise ValueError(f"snr_clip must be > 0, got {self.snr_clip}")
        if not 0.0 <= self.cum_snr_decay <= 1.0:
            raise ValueError(f"cum_snr_decay must lie in [0, 1], got {self.cum_snr_decay}")
        if self.snr_formula not in SNR_FORMULAS:
            raise ValueError(f"snr_formula must be one of {SNR_FORMULAS}, got {self.snr_formula!r}")
        if not 0.0 <= self.level_eps < 1.0:
            raise ValueError(f"level_eps must lie in [0, 1), got {self.level_eps}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if int(self.head_chunk_rows) < 1:
            raise ValueError(f"head_chunk_rows must be >= 1, got {self.head_chunk_rows}")


class MaskFlowObjective:
    """One evaluation of Algorithm 1's loss: sample levels, mask, predict, masked cross-entropy.

    Args:
        config: the :class:`ObjectiveConfig`.
    """

    def __init__(self, config: ObjectiveConfig | None = None) -> None:
        self.config = config or ObjectiveConfig()
        self.scheduler = get_scheduler(self.config.scheduler)

    def sample_levels(self, batch_size: int, num_frames: int, *, generator=None, device=None) -> torch.Tensor:
        """Per-frame levels ``t`` float32 ``[B, T]`` with a random clean prefix per video (lines 3–4).

        Raises:
            ValueError: ``max_context_frames >= num_frames``.
        """
        cfg = self.config
        if cfg.max_context_frames >= num_frames:
            raise ValueError(
                f"max_context_frames={cfg.max_context_frames} must be < the chunk's frame count {num_frames} "
                f"(allowed: 0 … {num_frames - 1})"
            )
        dev = device if device is not None else (generator.device if generator is not None else None)
        n_ctx = 0
        if cfg.max_context_frames > 0:
            n_ctx = torch.randint(0, cfg.max_context_frames + 1, (batch_size,), generator=generator, device=dev)
        return sample_frame_levels(
            batch_size, num_frames, mode=cfg.masking, n_context_frames=n_ctx, eps=cfg.level_eps,
            generator=generator, device=dev,
        )

    def frame_weights(self, t: torch.Tensor) -> torch.Tensor | None:
        """Loss weights ``[B, T]`` for ``t`` per ``loss_weighting`` (appendix A.3), or ``None`` for ``'none'``."""
        cfg = self.config
        if cfg.loss_weighting == "none":
            return None
        return snr_weights(
            t, self.scheduler, snr_clip=cfg.snr_clip, cum_snr_decay=cfg.cum_snr_decay,
            fused=cfg.loss_weighting == "fused_snr", snr_formula=cfg.snr_formula,
        )

    def __call__(self, model: nn.Module, x1: torch.Tensor, generator: torch.Generator | None = None) -> LossOutput:
        """Loss of ``model`` on clean chunks ``x1`` (Algorithm 1 lines 2–9, eq. 7).

        With ``head='masked'`` (and a backbone that supports it) the model is called as
        ``model(x_t, t, return_hidden=True)`` — through any DDP/compile wrapper, so gradient
        synchronisation still sees the call — and only the masked positions go through the ``K``-way head,
        fused with the cross-entropy (:func:`~maskflow.losses.fused_masked_cross_entropy`). With
        ``head='dense'``: ``model(x_t, t)`` then :func:`~maskflow.losses.masked_cross_entropy`.

        Args:
            model: a backbone (possibly DDP/compile-wrapped) with ``model(x_t, t) -> [B, T, h, w, K]``
                and a ``mask_token_id`` on the bare module (plus ``head_rows``/``head_weights`` for the
                masked head).
            x1: int64 ``[B, T, h, w]``, clean codes in ``[0, K - 1]``.
            generator: source of randomness on ``x1``'s device (levels, context counts, masks).

        Returns:
            :class:`~maskflow.losses.LossOutput`.

        Raises:
            ValueError: bad shapes or token ids (from masking), ``max_context_frames`` too large.
        """
        if x1.ndim != 4:
            raise ValueError(f"x1 must be [B, T, h, w], got shape {tuple(x1.shape)}")
        b, t_frames = x1.shape[:2]
        mask_id = unwrap_model(model).mask_token_id
        t = self.sample_levels(b, t_frames, generator=generator, device=x1.device)
        masked = mask_tokens(x1, t, self.scheduler, mask_id, generator=generator)
        weights = self.frame_weights(t)  # (B, T) or None
        bare = unwrap_model(model)
        if self.config.head == "masked" and callable(getattr(bare, "head_rows", None)):
            hidden = model(masked.x_t, t, return_hidden=True)  # (B, T, N, D)
            index = masked.is_masked.nonzero(as_tuple=True)  # 4 × (M,), row-major like is_masked's order
            rows, sub = bare.head_rows(hidden, index)  # (M, D), (M,)
            weight, bias = bare.head_weights()  # (p², K, D), (p², K)
            row_weights = weights[index[0], index[1]] if weights is not None else None
            return fused_masked_cross_entropy(
                rows, sub, weight, bias, x1[index], row_weights, chunk_rows=self.config.head_chunk_rows
            )
        logits = model(masked.x_t, t)  # (B, T, h, w, K)
        return masked_cross_entropy(logits, x1, masked.is_masked, weights)


# ================================================================================ optimisation
@dataclass
class OptimConfig:
    """Optimiser and step settings (appendix A.3 / the authors' defaults).

    Attributes:
        lr: AdamW learning rate (> 0).
        betas: AdamW betas, each in [0, 1).
        weight_decay: AdamW decoupled weight decay (>= 0), applied to matrices only.
        grad_clip: max global gradient norm; ``0`` disables clipping (the norm is still reported).
        warmup_steps: linear LR warm-up steps, then constant.
        ema_decay: EMA decay in [0, 1).
        grad_accum_steps: micro-batches per optimiser step (>= 1); the batch is split along dim 0.
        precision: ``'bf16'``, ``'fp16'`` (with a GradScaler) or ``'fp32'``; autocast applies on CUDA only,
            CPU steps run in fp32.
        compile: wrap the model with ``torch.compile`` (done by the caller).

    Raises:
        ValueError: a setting outside its allowed range, naming it.
    """

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 2.0
    warmup_steps: int = 0
    ema_decay: float = 0.9999
    grad_accum_steps: int = 1
    precision: str = "bf16"
    compile: bool = False

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two values in [0, 1), got {self.betas}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 (0 disables clipping), got {self.grad_clip}")
        if int(self.warmup_steps) < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if int(self.grad_accum_steps) < 1:
            raise ValueError(f"grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")


def build_optimizer(
    model: nn.Module,
    lr: float = 1e-4,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters (appendix A.3: lr 1e-4, betas (0.9, 0.999)).

    With ``weight_decay > 0`` only matrices (``ndim >= 2``, embeddings excluded) decay; biases and the
    code embedding do not.

    Raises:
        ValueError: ``lr <= 0``, betas outside [0, 1) or negative ``weight_decay``.
    """
    OptimConfig(lr=lr, betas=betas, weight_decay=weight_decay)  # validation only
    decay, no_decay = [], []
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and id(p) not in embeddings else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=tuple(betas))


def build_lr_schedule(
    optimizer: torch.optim.Optimizer, warmup_steps: int = 0, *, decay: str = "constant", total_steps: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps`` optimiser steps, then the constant base LR (the paper's
    recipe) or a cosine decay to 0 at ``total_steps``.

    The factor at scheduler step ``s`` is ``min(1, (s + 1) / warmup_steps)`` (1 when ``warmup_steps = 0``),
    times ``(1 + cos(π · min(s, total_steps) / total_steps)) / 2`` with ``decay='cosine'``; call ``.step()``
    once after every ``optimizer.step()``. The factor depends on ``s`` only, so a resumed run continues
    the same curve.

    Raises:
        ValueError: ``warmup_steps < 0``, an unknown ``decay``, or ``decay='cosine'`` without
            ``total_steps >= 1``.
    """
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if decay not in LR_DECAYS:
        raise ValueError(f"decay must be one of {LR_DECAYS}, got {decay!r}")
    if decay == "cosine" and int(total_steps) < 1:
        raise ValueError(f"decay='cosine' needs total_steps >= 1, got {total_steps}")
    w, n = int(warmup_steps), int(total_steps)

    def factor(s: int) -> float:
        f = 1.0 if w == 0 else min(1.0, (s + 1) / w)
        if decay == "cosine":
            f *= 0.5 * (1.0 + math.cos(math.pi * min(s, n) / n))
        return f

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_grad_scaler(optim_config: OptimConfig, device: torch.device | str) -> torch.amp.GradScaler:
    """A GradScaler that is enabled only for ``precision='fp16'`` on CUDA (a no-op otherwise)."""
    dev = torch.device(device)
    return torch.amp.GradScaler(dev.type, enabled=dev.type == "cuda" and optim_config.precision == "fp16")


def autocast(optim_config: OptimConfig, device: torch.device | str) -> contextlib.AbstractContextManager:
    """Autocast to bf16/fp16 on CUDA per ``precision``; a plain fp32 context elsewhere."""
    dev = torch.device(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(optim_config.precision)
    if dev.type != "cuda" or dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


# ================================================================================ EMA
class EMA:
    r"""Exponential moving average of a model's weights: :math:`\bar\theta \leftarrow d\,\bar\theta + (1-d)\,\theta`.

    The shadow copy lives on the model's device in float32 (non-float entries are copied as they are).
    ``state_dict()`` is ``{'decay', 'num_updates', 'shadow'}``; ``shadow`` loads directly into the model.

    Args:
        model: the (bare or wrapped) model to track.
        decay: ``d`` in [0, 1) (0.9999 in the paper's runs).
        warmup: use ``min(d, (1 + n) / (10 + n))`` at update ``n`` so that short runs get a useful
            average (off by default, as in the paper).

    Raises:
        ValueError: ``decay`` outside [0, 1).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, *, warmup: bool = False) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            k: (v.detach().float().clone() if v.is_floating_point() else v.detach().clone())
            for k, v in unwrap_model(model).state_dict().items()
        }

    def current_decay(self) -> float:
        """The decay the next :meth:`update` uses."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the shadow weights towards ``model``'s current weights (call after each optimiser step)."""
        d = self.current_decay()
        for k, v in unwrap_model(model).state_dict().items():
            s = self.shadow[k]
            if s.is_floating_point():
                s.lerp_(v.detach().to(s.dtype), 1.0 - d)
            else:
                s.copy_(v)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into ``model`` (cast to its dtypes)."""
        target = unwrap_model(model).state_dict()
        for k, v in target.items():
            v.copy_(self.shadow[k].to(v.dtype))

    @contextlib.contextmanager
    def swapped(self, model: nn.Module) -> Iterator[nn.Module]:
        """Context manager: ``model`` holds the EMA weights inside, its own weights again after."""
        backup = {k: v.detach().clone() for k, v in unwrap_model(model).state_dict().items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for k, v in unwrap_model(model).state_dict().items():
                    v.copy_(backup[k])

    def state_dict(self) -> dict[str, Any]:
        """``{'decay': float, 'num_updates': int, 'shadow': {name: tensor}}`` (``weights_only``-loadable)."""
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; a bare model state dict is accepted as the shadow.

        Raises:
            KeyError: the shadow's keys differ from the tracked model's.
        """
        shadow = state["shadow"] if "shadow" in state else state
        if set(shadow) != set(self.shadow):
            missing, extra = sorted(set(self.shadow) - set(shadow)), sorted(set(shadow) - set(self.shadow))
            raise KeyError(f"EMA state does not match the model: missing {missing[:5]}, unexpected {extra[:5]}")
        for k, v in shadow.items():
            self.shadow[k].copy_(v)
        self.decay = float(state.get("decay", self.decay))
        self.num_updates = int(state.get("num_updates", self.num_updates))


# ================================================================================ one step
@dataclass
class StepResult:
    """What one optimiser step reports.

    Attributes:
        loss: mean loss over the micro-batches.
        accuracy: mean masked-token accuracy over the micro-batches.
        grad_norm: global gradient norm before clipping (``inf``/``nan`` when fp16 overflowed and the
            step was skipped).
        lr: learning rate used for this step.
        num_masked: masked tokens in the loss, summed over micro-batches.
        num_tokens: tokens processed, summed over micro-batches.
        masked_ce: mean unweighted cross-entropy over masked tokens (nats), averaged over micro-batches.
        extras: further figures of the objective's output (its ``extras`` dict, e.g. Flowception's
            ``insertion_loss``), averaged over micro-batches; empty for MaskFlow.
    """

    loss: float
    accuracy: float
    grad_norm: float
    lr: float
    num_masked: int = 0
    num_tokens: int = 0
    masked_ce: float = float("nan")
    extras: dict[str, float] = field(default_factory=dict)


def train_step(
    model: nn.Module,
    objective: MaskFlowObjective,
    batch: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    ema: EMA | None,
    optim_config: OptimConfig,
    step: int,
    *,
    lr_schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
    generator: torch.Generator | None = None,
) -> StepResult:
    """One optimiser step of Algorithm 1: micro-batches, autocast, backward, clip, step, LR, EMA.

    The batch is split into ``optim_config.grad_accum_steps`` equal micro-batches; gradients of all
    but the last skip DDP's all-reduce (``no_sync``) when the model has it.

    Args:
        model: the backbone (bare, DDP- or compile-wrapped), in train mode.
        objective: the :class:`MaskFlowObjective`.
        batch: int64 ``[B, T, h, w]`` clean chunks on the model's device.
        optimizer: e.g. from :func:`build_optimizer`.
        scaler: a GradScaler (:func:`build_grad_scaler`) or ``None``.
        ema: updated after the optimiser step when given.
        optim_config: the :class:`OptimConfig`.
        step: index of this optimiser step (used in error messages).
        lr_schedule: stepped once after the optimiser step when given.
        generator: randomness for the objective, on the batch's device.

    Returns:
        :class:`StepResult`.

    Raises:
        ValueError: ``B`` not divisible by ``grad_accum_steps``.
        FloatingPointError: the loss is not finite (the step is not applied).
    """
    accum = int(optim_config.grad_accum_steps)
    if batch.shape[0] % accum:
        raise ValueError(f"batch size {batch.shape[0]} must be divisible by grad_accum_steps={accum}")
    scaler = scaler if scaler is not None else torch.amp.GradScaler(batch.device.type, enabled=False)
    lr = float(optimizer.param_groups[0]["lr"])
    losses, accs, ces, n_masked = [], [], [], 0
    extras: dict[str, float] = {}
    optimizer.zero_grad(set_to_none=True)
    for i, micro in enumerate(batch.chunk(accum, dim=0)):
        last = i == accum - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast(optim_config, batch.device):
                out = objective(model, micro, generator=generator)
            if not torch.isfinite(out.loss.detach()):
                optimizer.zero_grad(set_to_none=True)
                raise FloatingPointError(f"non-finite loss {float(out.loss.detach())} at step {step} (micro-batch {i})")
            scaler.scale(out.loss / accum).backward()
        losses.append(float(out.loss.detach()))
        accs.append(float(out.accuracy))
        ces.append(float(out.masked_ce) if out.masked_ce is not None else float("nan"))
        n_masked += out.num_masked
        for key, value in (getattr(out, "extras", None) or {}).items():
            extras[key] = extras.get(key, 0.0) + float(value) / accum
    scaler.unscale_(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    clip = optim_config.grad_clip if optim_config.grad_clip > 0 else math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if lr_schedule is not None:
        lr_schedule.step()
    if ema is not None:
        ema.update(model)
    return StepResult(
        loss=sum(losses) / accum, accuracy=sum(accs) / accum, grad_norm=grad_norm, lr=lr,
        num_masked=n_masked, num_tokens=batch.numel(), masked_ce=sum(ces) / accum, extras=extras,
    )


@torch.no_grad()
def evaluate_objective(
    model: nn.Module,
    objective: MaskFlowObjective,
    windows: torch.Tensor,
    *,
    batch_size: int = 16,
    seed: int = 0,
) -> dict[str, float]:
    """Validation masked cross-entropy and accuracy of ``model`` on fixed windows at fixed levels.

    The objective's own corruption (Algorithm 1: per-frame levels, clean prefixes, token masks) is drawn
    from a generator seeded with ``seed`` on the windows' device, so every call with the same windows,
    ``batch_size`` and ``seed`` scores the same corrupted inputs: the curve over training moves only with
    the weights. Runs in eval mode and restores the previous mode.

    Args:
        model: the backbone (bare or wrapped).
        objective: the training :class:`MaskFlowObjective` (same scheduler, masking and context rule).
        windows: int64 ``[N, T, h, w]`` clean held-out windows on the model's device.
        batch_size: windows per forward pass.
        seed: seeds levels and masks.

    Returns:
        ``{"masked_ce": nats per masked token (unweighted, eq. 7 without weights), "masked_accuracy":
        top-1 accuracy over masked tokens, "num_masked": count, "num_windows": N}``; the means are over
        all masked tokens of all windows.

    Raises:
        ValueError: ``windows`` is not 4-D or empty.
    """
    if windows.ndim != 4 or windows.shape[0] == 0:
        raise ValueError(f"windows must be a non-empty [N, T, h, w] tensor, got shape {tuple(windows.shape)}")
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=windows.device).manual_seed(int(seed))
    ce_sum = acc_sum = 0.0
    n_masked = 0
    try:
        for i in range(0, windows.shape[0], max(1, int(batch_size))):
            out = objective(model, windows[i : i + batch_size], generator=gen)
            if out.num_masked:
                ce_sum += float(out.masked_ce) * out.num_masked
                acc_sum += float(out.accuracy) * out.num_masked
                n_masked += out.num_masked
    finally:
        model.train(was_training)
    return {
        "masked_ce": ce_sum / n_masked if n_masked else float("nan"),
        "masked_accuracy": acc_sum / n_masked if n_masked else float("nan"),
        "num_masked": float(n_masked),
        "num_windows": float(windows.shape[0]),
    }


# ================================================================================ recipes
RECIPES: dict[str, dict[str, Any]] = {
    # FaceForensics: section 4.2, appendix A.3/A.5. (A.3 says local batch 4; the released runs used 2.)
    "ffs": {
        "model_size": "XL/2", "codebook_size": 16384, "latent_size": 32,
        "chunk_size": 16, "n_context_frames": 2, "stride": 14,
        "batch_size_per_gpu": 2, "num_gpus": 4, "max_steps": 200_000,
        "scheduler": "sigmoid", "masking": "frame", "loss_weighting": "fused_snr",
        "lr": 1e-4, "betas": (0.9, 0.999), "weight_decay": 0.0, "grad_clip": 2.0, "ema_decay": 0.9999,
    },
    # DeepMind Lab: section 4.2, appendix A.5.
    "dmlab": {
        "model_size": "B/2", "codebook_size": 16384, "latent_size": 32,
        "chunk_size": 36, "n_context_frames": 12, "stride": 24,
        "batch_size_per_gpu": 3, "num_gpus": 4, "max_steps": 200_000,
        "scheduler": "sigmoid", "masking": "frame", "loss_weighting": "fused_snr",
        "lr": 1e-4, "betas": (0.9, 0.999), "weight_decay": 0.0, "grad_clip": 2.0, "ema_decay": 0.9999,
    },
}
