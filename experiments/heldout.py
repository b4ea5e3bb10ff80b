"""Held-out quality of a backbone, the one implementation used by training, sampling and the demo.

* :func:`validation_windows` — a fixed set of ``chunk_size``-frame windows of the held-out split.
* :func:`generate_videos` — chunkwise sampling from context tokens, decoded to frames.
* :func:`heldout_quality` — continuations of held-out clips scored against the real continuation and
  the copy-last-frame baseline on the same clips (token accuracy, PSNR/SSIM, optionally FVD with N).
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger("experiments.heldout")

__all__ = ["validation_windows", "generate_videos", "HeldoutResult", "heldout_quality", "UNSEEN_CODE_WARNING"]

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
