"""Held-out quality of a backbone, the one implementation used by training, sampling and the demo.

* :func:`validation_windows` — a fixed set of ``chunk_size``-frame windows of the held-out split.
* :func:`generate_videos` — chunkwise sampling from context tokens, decoded to frames.
* :func:`heldout_quality` — continuations of held-out clips scored against the real continuation and
  the copy-last-frame baseline on the same clips (token accuracy, PSNR/SSIM, optionally FVD with N).
* :func:`variable_length_quality` — Flowception's counterpart: scores over the frames a generated and a
  real video both have (its clips: :func:`pipeline.readers.load_whole_video_clips`).
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger("experiments.heldout")

__all__ = ["validation_windows", "generate_videos", "HeldoutResult", "heldout_quality", "UNSEEN_CODE_WARNING",
           "variable_length_quality"]

UNSEEN_CODE_WARNING = 0.05  # share of held-out tokens with codes absent from training above which we warn


def validation_windows(shards: str, chunk_size: int, num_windows: int, *, seed: int = 0, split: str = "eval") -> torch.Tensor | None:
    """The same ``num_windows`` held-out windows every time (seeded :func:`pipeline.readers.load_eval_clips`).

    Returns:
        int64 ``[N, chunk_size, h, w]`` (``N <= num_windows``), or ``None`` when no segment of ``split``
        has ``chunk_size`` frames.
    """
    from pipeline.readers import load_eval_clips

    clips = load_eval_clips(shards, num_frames=chunk_size, num_clips=num_windows, seed=seed, split=split)
    return torch.stack([c.tokens for c in clips]).long() if clips else None


def generate_videos(model, tokenizer, context: torch.Tensor, num_frames: int, sampler_cfg, *, seed: int, progress=False):
    """Sample tokens chunkwise (Algorithm 2) from context tokens and decode them.

    Args:
        model: the backbone (eval mode, on its device).
        tokenizer: a :class:`maskflow.tokenizers.VQTokenizer` matching the model's codebook.
        context: int64 ``[B, m, h, w]`` context tokens.
        num_frames: ``L``, total frames including the context.
        sampler_cfg: a validated :class:`maskflow.sampling.SamplerConfig`.
        seed: seeds the sampler's generator on the model's device.

    Returns:
        ``(result, frames)``: the :class:`maskflow.sampling.SampleResult` (tokens ``int64 [B, L, h, w]``,
        counted ``nfe``) and ``uint8 [B, L, H, W, 3]``.
    """
    from maskflow.sampling import generate

    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.inference_mode():
        result = generate(model, context.to(device), num_frames, sampler_cfg, generator=gen, progress=progress)
        tokens = result.tokens.cpu()
        b, t = tokens.shape[:2]
        frames = tokenizer.decode(tokens.flatten(0, 1))
    return result, frames.reshape(b, t, *frames.shape[1:])


@dataclass
class HeldoutResult:
    """Continuations of held-out clips and their scores.

    Attributes:
        metrics: :func:`maskflow.metrics.continuation.continuation_quality` of the clips (model and
            copy-last-frame baseline), plus ``nfe`` (forward passes per batch of videos, counted),
            ``wall_time_s`` and, when computed, ``fvd`` and ``fvd_n``.
        real_tokens, fake_tokens: int64 ``[N, L, h, w]``.
        real_frames, fake_frames: uint8 ``[N, L, H, W, 3]`` (real = VQ reconstructions).
    """

    metrics: dict[str, Any]
    real_tokens: torch.Tensor
    fake_tokens: torch.Tensor
    real_frames: torch.Tensor
    fake_frames: torch.Tensor


def heldout_quality(
    model, tokenizer, clips, sampler_cfg, *, num_frames: int, seed: int = 0, batch_size: int = 8,
    fvd_extractor=None, progress=False,
) -> HeldoutResult:
    """Generate the continuation of every clip from its first ``m`` frames and score it.

    Args:
        model: the backbone in eval mode (EMA weights for sampling).
        tokenizer: the shards' tokenizer.
        clips: :class:`pipeline.readers.EvalClip` s of at least ``num_frames`` frames.
        sampler_cfg: a :class:`maskflow.sampling.SamplerConfig` (``n_context_frames >= 1``).
        num_frames: ``L``, frames per generated video, context included.
        seed: the sampler's seed (batch ``i`` uses ``seed + i``).
        batch_size: videos sampled at once.
        fvd_extractor: a :class:`maskflow.metrics.FeatureExtractor` for FVD between the real and the
            generated ``L``-frame videos (``None``: no FVD); clips shorter than I3D's minimum are skipped.
        progress: ``True``: a tqdm bar per batch over its chunks; a callable: ``progress(done, total)``
            in chunks over all batches (``total`` = batches × chunks per video).

    Returns:
        :class:`HeldoutResult`.

    Raises:
        ValueError: no clip, or a sampler setting out of range for ``num_frames``.
    """
    from maskflow.metrics.continuation import continuation_quality

    if not clips:
        raise ValueError("heldout_quality needs at least one held-out clip")
    sampler_cfg.validate(num_frames)
    m = sampler_cfg.n_context_frames
    real_tokens = torch.stack([c.tokens[:num_frames] for c in clips]).long()
    fake_tokens, fake_frames, nfe = [], [], 0
    t0 = time.perf_counter()
    bs = max(1, int(batch_size))
    num_batches = -(-len(clips) // bs)
    for i in range(0, len(clips), bs):
        step = progress
        if callable(progress):  # chunks of this batch → chunks of the whole job
            step = functools.partial(_batch_progress, progress, i // bs, num_batches)
        result, frames = generate_videos(model, tokenizer, real_tokens[i : i + bs, :m], num_frames, sampler_cfg,
                                         seed=seed + i, progress=step)
        fake_tokens.append(result.tokens.cpu())
        fake_frames.append(frames)
        nfe = max(nfe, int(result.nfe))
    wall = time.perf_counter() - t0
    fake_tok, fake = torch.cat(fake_tokens), torch.cat(fake_frames)
    with torch.inference_mode():
        real = tokenizer.decode(real_tokens.flatten(0, 1)).reshape(fake.shape)
    metrics = continuation_quality(real_tokens, fake_tok, m, real_frames=real, fake_frames=fake)
    metrics.update(nfe=nfe, wall_time_s=wall)
    if fvd_extractor is not None:
        metrics.update(_fvd(real, fake, fvd_extractor))
    return HeldoutResult(metrics, real_tokens, fake_tok, real, fake)


def _batch_progress(progress, batch: int, num_batches: int, done: int, total: int) -> None:
    progress(batch * total + done, num_batches * total)


def _fvd(real: torch.Tensor, fake: torch.Tensor, extractor) -> dict[str, Any]:
    from maskflow.metrics import fvd_from_videos

    res = fvd_from_videos(real, fake, extractor=extractor)  # logs why when the clips cannot give an FVD
    return {"fvd": float(res.fvd), "fvd_n": int(res.num_fake)}


# ------------------------------------------------------------------ Flowception: videos of the model's length
def variable_length_quality(real_tokens: list, fake_tokens: list, n_context_frames: int, *, real_frames: list | None = None,
                            fake_frames: list | None = None) -> dict[str, Any]:
    """Continuation quality of videos of different lengths, over the frames the generated and the real
    video both have (Flowception: the model chose each generated video's length).

    Video ``i`` is scored on its frames ``m … n_i − 1`` with ``n_i = min(len(real_i), len(fake_i))``
    (a video with ``n_i <= m`` has nothing to score). Videos with the same ``n_i`` are scored together by
    :func:`maskflow.metrics.continuation.continuation_quality` (and, with frames,
    :func:`maskflow.metrics.video_quality_metrics`); the groups' values are then combined:

    - a scalar (``token_accuracy``, ``psnr``, ``ssim``, the copy-last-frame baseline's, …) is the mean
      over every scored frame of every video (group values weighted by videos × scored frames);
    - a per-frame curve (``token_accuracy_per_frame``, …) has ``max_i n_i − m`` values, value ``j``
      the mean over the videos that have frame ``m + j``.

    Args:
        real_tokens, fake_tokens: one int64 ``[T_i, h, w]`` per video, the first ``m`` frames shared.
        n_context_frames: ``m >= 1``.
        real_frames, fake_frames: optional decoded videos, uint8 ``[T_i, H, W, 3]`` each.

    Returns:
        The keys of ``continuation_quality`` (plus ``ssim_per_frame`` and the temporal-consistency keys
        with frames), ``num_videos`` (all) and ``scored_videos`` (``n_i > m``); ``{}`` of scores when no
        video has a frame to score.

    Raises:
        ValueError: lists of different lengths or ``m < 1``.
    """
    import math
    from collections import defaultdict

    import numpy as np

    from maskflow.metrics import video_quality_metrics
    from maskflow.metrics.continuation import continuation_quality

    m = int(n_context_frames)
    if m < 1:
        raise ValueError(f"the copy-last-frame baseline needs n_context_frames >= 1, got {n_context_frames}")
    if len(real_tokens) != len(fake_tokens) or (real_frames is not None and len(real_frames) != len(real_tokens)):
        raise ValueError("one real and one generated video per clip")
    with_frames = real_frames is not None and fake_frames is not None
    groups: dict[int, list[int]] = defaultdict(list)
    for i, (r, f) in enumerate(zip(real_tokens, fake_tokens)):
        n = min(len(r), len(f))
        if n > m:
            groups[n].append(i)
    scalars: dict[str, list[tuple[float, float]]] = defaultdict(list)
    curves: dict[str, list[tuple[np.ndarray, int]]] = defaultdict(list)
    for n, idx in sorted(groups.items()):
        rt = torch.stack([real_tokens[i][:n] for i in idx])
        ft = torch.stack([fake_tokens[i][:n] for i in idx]).to(rt.device)
        out: dict[str, Any] = {}
        if with_frames:
            rf, ff = torch.stack([real_frames[i][:n] for i in idx]), torch.stack([fake_frames[i][:n] for i in idx])
            out.update(video_quality_metrics(rf, ff, n_context_frames=m))
            out.update(continuation_quality(rt, ft, m, real_frames=rf, fake_frames=ff))
        else:
            out.update(continuation_quality(rt, ft, m))
        for key, value in out.items():
            if key == "num_videos":
                continue
            if isinstance(value, list):
                curves[key].append((np.asarray(value, dtype=np.float64), len(idx)))
            elif isinstance(value, (int, float)) and math.isfinite(float(value)):
                scalars[key].append((float(value), len(idx) * (n - m)))
    res: dict[str, Any] = {"num_videos": len(real_tokens), "scored_videos": sum(len(v) for v in groups.values())}
    for key, pairs in scalars.items():
        res[key] = float(sum(v * w for v, w in pairs) / sum(w for _, w in pairs))
    for key, pairs in curves.items():
        length = max(len(c) for c, _ in pairs)
        total, weight = np.zeros(length), np.zeros(length)
        for c, w in pairs:
            total[: len(c)] += c * w
            weight[: len(c)] += w
        res[key] = [float(t / w) if w else float("nan") for t, w in zip(total, weight)]
    if res.get("temporal_mad_real"):
        res["temporal_mad_ratio"] = res["temporal_mad_fake"] / res["temporal_mad_real"]
    return res
