"""``dynamics=flowception`` in the entry points: what differs from MaskFlow, in one place.

    python -m experiments.train dynamics=flowception shards=DIR chunk_size=16
    python -m experiments.sample checkpoint=DIR sampler=flowception num_frames=16
    make demo ARGS="dynamics=flowception"

Training uses the same Ray Train loop, checkpoints, resume and MLflow run as MaskFlow; only three things
change, each a function here: the backbone gets a rate head (:func:`rate_head`), the objective is
:class:`maskflow.flowception.FlowceptionObjective` (:func:`build_objective`), and the examples are whole
variable-length videos padded to ``chunk_size`` frames (:func:`training_dataset`,
:mod:`pipeline.whole_videos`) instead of fixed windows. Sampling writes each video at the length the
model chose and reports the lengths (:func:`length_summary`). The method is in docs/flowception.md.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from experiments.config import ConfigError

__all__ = [
    "DYNAMICS",
    "EXTRA_METRICS",
    "dynamics",
    "validate",
    "rate_head",
    "build_objective",
    "training_dataset",
    "ExtrasWindow",
    "length_summary",
    "length_total_variation",
    "write_variable_length_sprites",
]

DYNAMICS = ("maskflow", "flowception")

#: MLflow names of the Flowception training figures (``train_step``'s ``extras``)
EXTRA_METRICS = {
    "insertion_loss": "train/insertion_loss",
    "present_frames": "train/present_frames",
    "pending_frames": "train/pending_frames",
    "mean_rate": "train/mean_insertion_rate",
}


def dynamics(cfg: DictConfig) -> str:
    """``cfg.dynamics`` (``'maskflow'`` when the config predates the key)."""
    return str(cfg.get("dynamics", "maskflow") or "maskflow")


def validate(cfg: DictConfig) -> None:
    """Refuse ``dynamics`` / ``flowception.*`` settings that cannot work, before any work starts.

    Raises:
        ConfigError: naming the setting and the allowed values.
    """
    from maskflow.models.latte import RATE_HEADS

    name = dynamics(cfg)
    if name not in DYNAMICS:
        raise ConfigError(f"dynamics must be one of {', '.join(DYNAMICS)}, got {name!r}")
    if name != "flowception":
        return
    head = str(cfg.flowception.rate_head)
    if head not in RATE_HEADS or head == "none":
        raise ConfigError(f"flowception.rate_head must be exp or softplus, got {head!r}")
    try:
        _flowception_config(cfg)
    except ValueError as exc:
        raise ConfigError(f"flowception: {exc}") from None
    if cfg.method.masking != "frame":
        raise ConfigError(f"dynamics=flowception masks frame by frame: method.masking must be frame, got {cfg.method.masking!r}")


def rate_head(cfg: DictConfig) -> str:
    """The backbone's ``rate_head``: ``'none'`` for MaskFlow, ``flowception.rate_head`` otherwise."""
    return str(cfg.flowception.rate_head) if dynamics(cfg) == "flowception" else "none"


def _flowception_config(cfg: DictConfig):
    from maskflow.flowception import FlowceptionConfig

    f, m = cfg.flowception, cfg.method
    return FlowceptionConfig(
        scheduler=str(m.scheduler), max_context_frames=int(m.max_context_frames), loss_weighting=str(m.loss_weighting),
        snr_clip=float(m.snr_clip), cum_snr_decay=float(m.cum_snr_decay), head=str(m.get("head", "masked")),
        head_chunk_rows=int(m.get("head_chunk_rows", 4096)), global_time=str(f.global_time),
        reduction=str(f.reduction), insertion_weighting=str(f.insertion_weighting),
        insertion_loss_weight=float(f.insertion_loss_weight), context_drop_prob=float(f.context_drop_prob),
    )


def build_objective(cfg: DictConfig, default):
    """The training objective: ``default`` (MaskFlow's) or the Flowception objective of ``cfg``."""
    if dynamics(cfg) != "flowception":
        return default
    from maskflow.flowception import FlowceptionObjective

    return FlowceptionObjective(_flowception_config(cfg))


def training_dataset(cfg: DictConfig, data: dict[str, Any], min_examples: int):
    """Whole videos of at most ``chunk_size`` frames, padded with the mask id (:func:`pipeline.whole_videos.video_dataset`).

    Returns:
        ``(dataset, examples_per_epoch)``.
    """
    from pipeline.whole_videos import video_dataset

    return video_dataset(str(cfg.shards), str(cfg.split), int(cfg.chunk_size), int(data["codebook_size"]),
                         min_videos=min_examples, shuffle=str(cfg.loop.shuffle))


class ExtrasWindow:
    """Means of ``StepResult.extras`` over a logging interval (empty for MaskFlow)."""

    def __init__(self) -> None:
        self._values: dict[str, list[float]] = defaultdict(list)

    def add(self, extras: dict[str, float] | None) -> None:
        for key, value in (extras or {}).items():
            self._values[key].append(float(value))

    def pop_means(self) -> dict[str, float]:
        """The means since the last call, then start over."""
        out = {k: float(np.mean(v)) for k, v in self._values.items() if v}
        self._values.clear()
        return out


def length_summary(lengths: list[int] | None, shards: str, max_frames: int, num_videos: int) -> dict[str, Any]:
    """``sample_frames`` (per video) and, for Flowception, ``length_histogram`` (generated vs real) and
    ``length_tv`` (their total-variation distance, :func:`length_total_variation`).

    Args:
        lengths: frames of each generated video (``SampleResult.lengths``), or ``None`` (fixed length).
        shards: the token shards; the lengths of their segments (all splits, capped at ``max_frames``)
            form the real histogram.
        max_frames: the longest a video could be.
        num_videos: videos generated (for the fixed-length case).
    """
    if lengths is None:
        return {"sample_frames": [int(max_frames)] * int(num_videos)}
    from pipeline.whole_videos import length_histogram, segment_lengths

    real = [min(n, int(max_frames)) for split in ("train", "eval") for n in segment_lengths(shards, split)]
    hist = {"generated": length_histogram(lengths), "real": length_histogram(real)}
    return {
        "sample_frames": [int(n) for n in lengths],
        "length_histogram": hist,
        "length_tv": length_total_variation(hist["generated"], hist["real"]),
        "mean_frames": float(np.mean(lengths)),
        "real_mean_frames": float(np.mean(real)) if real else float("nan"),
    }


def length_total_variation(generated: dict[str, int], real: dict[str, int]) -> float:
    """Total-variation distance between two length histograms (``{"length": count}``, as
    :func:`pipeline.whole_videos.length_histogram`): ``½ Σ_n |p(n) − q(n)|`` of the normalised counts,
    0 for the same distribution, 1 for disjoint supports; ``nan`` when either is empty."""
    p_total, q_total = sum(generated.values()), sum(real.values())
    if not p_total or not q_total:
        return float("nan")
    return 0.5 * sum(abs(generated.get(n, 0) / p_total - real.get(n, 0) / q_total) for n in set(generated) | set(real))


def write_variable_length_sprites(
    out_dir: str | Path, num_videos: int, lengths: list[int], *, seed: int = 0, **sprite_kwargs: Any
) -> list[int]:
    """Moving-sprite videos of a few distinct lengths (the supplementary's Figure 11 setting: the model
    should reproduce the histogram of lengths).

    Videos are shared out over ``lengths`` in turn and written by
    :func:`experiments.synthetic.write_sprite_videos` into ``out_dir/frames_NNN/`` (one folder per
    length; discovery is recursive). ``sprite_kwargs`` go to it (``motion``, ``grid_cells``, ``size``, …).

    Returns:
        The length of every video written (sorted).
    """
    from experiments.synthetic import write_sprite_videos

    out = Path(out_dir)
    written = []
    for j, n in enumerate(int(x) for x in lengths):
        count = num_videos // len(lengths) + (1 if j < num_videos % len(lengths) else 0)
        if count:
            write_sprite_videos(out / f"frames_{n:03d}", num_videos=count, num_frames=n, seed=seed * 1009 + n, **sprite_kwargs)
            written += [n] * count
    return sorted(written)
