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

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from experiments.config import ConfigError

log = logging.getLogger("experiments.flowception")

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
    "continuations",
    "pad_videos",
    "variable_length_fvd",
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


# ------------------------------------------------------------------------ held-out continuations
def continuations(model, tokenizer, clips, scfg, num_frames: int, *, seed: int, batch_size: int,
                  progress=None) -> dict[str, Any]:
    """Flowception continuations of whole held-out videos (batch ``i`` seeded ``seed + i``, as
    :func:`experiments.heldout.heldout_quality`); ``experiments.evaluate`` and ``experiments.sample``.

    Args:
        model: a backbone with a rate head, eval mode.
        tokenizer: decodes int64 ``[N, h, w]`` tokens to uint8 ``[N, H, W, 3]`` frames.
        clips: :class:`pipeline.readers.EvalClip` s from a video's first frame
            (:func:`pipeline.readers.load_whole_video_clips`), each with more than
            ``scfg.n_context_frames`` frames.
        scfg: validated sampler settings with ``sampler='flowception'``.
        num_frames: the maximum length ``L``.
        seed, batch_size: randomness and videos per sampler call.
        progress: optional ``callback(done, total)`` in videos.

    Returns:
        ``{"real_tokens", "fake_tokens"}`` (one int64 ``[T_i, h, w]`` per video), ``{"real_frames",
        "fake_frames"}`` (uint8 ``[T_i, H, W, 3]``; real = VQ reconstructions), ``lengths`` (generated
        frames per video, context included), ``nfe`` (the largest batch's count) and ``wall_time_s``.
    """
    import time

    import torch

    from experiments.heldout import generate_videos

    m = scfg.n_context_frames
    real_tokens = [c.tokens.long() for c in clips]
    fake_tokens, fake_frames, lengths, nfe = [], [], [], 0
    bs = max(1, int(batch_size))
    t0 = time.perf_counter()
    for i in range(0, len(clips), bs):
        context = torch.stack([t[:m] for t in real_tokens[i : i + bs]])
        result, frames = generate_videos(model, tokenizer, context, num_frames, scfg, seed=seed + i)
        for row, n in enumerate(result.lengths):
            fake_tokens.append(result.tokens[row, :n].cpu())
            fake_frames.append(frames[row, :n])
            lengths.append(int(n))
        nfe = max(nfe, int(result.nfe))
        if progress is not None:
            progress(min(i + bs, len(clips)), len(clips))
    wall = time.perf_counter() - t0
    with torch.inference_mode():
        decoded = tokenizer.decode(torch.cat(real_tokens))
    real_frames = list(torch.split(decoded, [len(t) for t in real_tokens]))
    return {"real_tokens": real_tokens, "fake_tokens": fake_tokens, "real_frames": real_frames,
            "fake_frames": fake_frames, "lengths": lengths, "nfe": nfe, "wall_time_s": wall}


def pad_videos(videos: list, num_frames: int):
    """uint8 ``[N, num_frames, H, W, 3]``: each video (uint8 ``[T_i, H, W, 3]``) followed by black frames
    after its end (for sample grids, frame strips and side-by-side GIFs of videos of different lengths).

    Raises:
        ValueError: no video.
    """
    import torch

    if not videos:
        raise ValueError("pad_videos needs at least one video")

    out = torch.zeros((len(videos), num_frames, *videos[0].shape[1:]), dtype=torch.uint8)
    for i, v in enumerate(videos):
        out[i, : min(len(v), num_frames)] = v[:num_frames]
    return out


def _features_at_own_length(extractor, videos: list) -> np.ndarray:
    """One feature per video, each embedded at its own length (videos of equal length batched together).

    Returns:
        float64 ``[N, D]`` in the order of ``videos``.
    """
    import torch

    by_length: dict[int, list[int]] = defaultdict(list)
    for i, v in enumerate(videos):
        by_length[len(v)].append(i)
    feats: list[Any] = [None] * len(videos)
    for idx in by_length.values():
        for i, f in zip(idx, extractor(torch.stack([videos[i] for i in idx]))):
            feats[i] = f
    return np.stack(feats)


def variable_length_fvd(real: list, fake: list, extractor, *, cache_dir: str | None = None,
                        key: str | None = None) -> dict[str, Any]:
    """FVD between videos of different lengths (Flowception): every clip of at least I3D's minimum length
    embedded at its own length; shorter clips are left out and counted.

    Args:
        real, fake: uint8 ``[T_i, H, W, 3]`` videos.
        extractor: the FVD feature network (:func:`maskflow.metrics.build_feature_extractor`).
        cache_dir, key: where and under which key the real clips' statistics are cached; ``None``
            computes them without a cache.

    Returns:
        ``fvd``, ``fvd_n`` (= ``fvd_num_videos``, generated clips used), ``fvd_num_real`` (real clips used),
        ``fvd_short_videos`` (generated clips left out) and, when fewer than 2 clips of either side are
        long enough, ``fvd = nan`` with ``fvd_skipped`` saying why.
    """
    from maskflow.metrics import MIN_FRAMES, GaussianStats, RealStatsCache
    from maskflow.metrics.frechet import frechet_distance

    real_ok, fake_ok = [v for v in real if len(v) >= MIN_FRAMES], [v for v in fake if len(v) >= MIN_FRAMES]
    out: dict[str, Any] = {"fvd_n": len(fake_ok), "fvd_num_videos": len(fake_ok), "fvd_num_real": len(real_ok),
                           "fvd_short_videos": len(fake) - len(fake_ok)}
    if len(real_ok) < 2 or len(fake_ok) < 2:
        out.update(fvd=float("nan"), fvd_skipped=(
            f"FVD needs at least 2 real and 2 generated videos of >= {MIN_FRAMES} frames (I3D's minimum), got "
            f"{len(real_ok)} real and {len(fake_ok)} generated"))
        log.warning("no FVD: %s; fvd = nan", out["fvd_skipped"])
        return out

    def real_stats_now() -> GaussianStats:
        return GaussianStats.from_features(_features_at_own_length(extractor, real_ok))

    if cache_dir is not None and key is not None:
        real_stats = RealStatsCache(cache_dir).get_or_compute(f"{key}-min{MIN_FRAMES}", real_stats_now)
    else:
        real_stats = real_stats_now()
    fake_stats = GaussianStats.from_features(_features_at_own_length(extractor, fake_ok))
    out["fvd"] = frechet_distance(real_stats.mu, real_stats.sigma, fake_stats.mu, fake_stats.sigma)
    return out
