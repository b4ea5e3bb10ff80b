"""Generate long videos from a trained checkpoint with any sampler of the paper, and log them.

    python -m experiments.sample checkpoint=DIR sampler=mgm sampling_steps=20 stride=14 extrapolation=5
    python -m experiments.sample checkpoint=DIR sampler=fm sampling_steps=250 guidance_scale=1.5

The context is ``n_context_frames`` real frames from held-out videos of the token shards (the ``eval``
split, never trained on); the rest is generated chunkwise (Algorithm 2). Writes, per video, the
generated MP4 and GIF and a side-by-side ``[real | generated]`` comparison with the context frames
framed in red, and logs NFE (counted), the A.2 formula's NFE, wall time and the videos to MLflow.
When the held-out clips are long enough to hold the real continuation, the summary's ``quality`` scores
it against the generated one next to the copy-last-frame baseline (token accuracy, PSNR/SSIM, and FVD
with its N when ``fvd=true``; :func:`experiments.heldout.heldout_quality`). ``sampler=flowception``
continues whole held-out videos from their first frame, writes each at the length the model chose and
scores it over the frames it and the real video both have (:func:`experiments.heldout.variable_length_quality`;
FVD on the clips of at least I3D's 9 frames), as ``experiments.evaluate`` does.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from experiments.config import ConfigError, to_container
from experiments.heldout import generate_videos

log = logging.getLogger("experiments.sample")

__all__ = ["main", "sampler_config", "resolved_sampler_settings", "pick_device", "generate_videos", "load_for_sampling"]

SAMPLER_KEYS = (
    "sampler",
    "sampling_steps",
    "n_context_frames",
    "stride",
    "guidance_scale",
    "partial_context_level",
    "time_conditioning",
    "temperature",
    "unmasking_schedule",
    "gumbel_temperature",
    "insertion",
    "insertion_guidance",
    "unmasking",
    "blockwise_stop",
    "frame_time_power",
)


def pick_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def sampler_config(cfg: DictConfig, chunk_size: int, scheduler: str):
    """The :class:`maskflow.sampling.SamplerConfig` of a sample/sweep config for a model of ``chunk_size``."""
    from maskflow.sampling import SamplerConfig

    kwargs = {k: cfg[k] for k in SAMPLER_KEYS if k in cfg}
    return SamplerConfig(chunk_size=int(chunk_size), scheduler=scheduler, **kwargs)


def resolved_sampler_settings(scfg) -> dict[str, Any]:
    """The settings a sampler ran with, every ``None`` replaced by the value the code uses (``stride``
    → ``k − m``, ``partial_context_level`` → its default): what runs log as params and summaries report."""
    out = {k: getattr(scfg, k) for k in SAMPLER_KEYS if hasattr(scfg, k)}
    out.update(stride=scfg.resolved_stride, partial_context_level=scfg.resolved_partial_context_level,
               chunk_size=scfg.chunk_size, scheduler=scfg.scheduler)
    return out


def load_for_sampling(cfg: DictConfig):
    """Load what sampling needs: the checkpoint's backbone (EMA weights unless ``use_ema=false``) on
    ``cfg.device``, the token shards (``cfg.shards`` or the ones it trained on) and their tokenizer.

    Returns:
        ``(model, state, shards, tokenizer, device)``; ``state`` is the checkpoint dict.

    Raises:
        ConfigError: no ``checkpoint=``, or the checkpoint's ``codebook_size`` differs from the shards'.
        FileNotFoundError: no checkpoint or no manifest at the given paths.
    """
    from experiments.checkpoint import load_backbone
    from pipeline.readers import load_shard_tokenizer, read_manifest

    if not cfg.checkpoint:
        raise ConfigError("checkpoint= is required (a training checkpoint directory or checkpoint.pt)")
    device = pick_device(str(cfg.device))
    model, state = load_backbone(cfg.checkpoint, use_ema=bool(cfg.use_ema), device=device)
    shards = str(cfg.shards or state["data"]["shards"])
    shard_k = int(read_manifest(shards)["tokenizer"]["codebook_size"])
    if shard_k != model.codebook_size:
        raise ConfigError(
            f"checkpoint codebook_size={model.codebook_size} differs from the shards' codebook_size={shard_k} "
            f"({shards}); sample with the shards the model was trained on"
        )
    return model, state, shards, load_shard_tokenizer(shards), device


def _context_clips(shards: str, split: str, num_frames: int, n_context: int, num_videos: int, seed: int):
    """Held-out clips of ``num_frames`` frames (real continuation available) or, if no held-out segment
    is that long, of ``n_context`` frames (context only)."""
    from pipeline.readers import load_eval_clips

    for length in (num_frames, n_context):
        try:
            clips = load_eval_clips(shards, num_frames=length, num_clips=num_videos, seed=seed, split=split)
        except ValueError:
            clips = []
        if clips:
            return clips, length == num_frames
    raise ConfigError(
        f"no {split!r} segment in {shards} has n_context_frames={n_context} frames; "
        "tokenize more videos or lower n_context_frames"
    )


def _fvd_extractor(cfg: DictConfig, device: torch.device):
    """The FVD feature network of ``cfg.fvd`` (``None`` when off)."""
    if not bool(cfg.get("fvd", False)):
        return None
    from maskflow.metrics import build_feature_extractor

    return build_feature_extractor("i3d", None, device=device)


def main(cfg: DictConfig) -> dict[str, Any]:
    """Sample ``num_videos`` videos of ``extrapolation × chunk_size`` frames; returns a summary dict.

    Raises:
        ConfigError: missing checkpoint, codebook mismatch between checkpoint and shards, or a sampler
            setting outside its range (named, with the allowed range).
    """
    from experiments import console, tracking
    from experiments.video_io import mark_context, side_by_side, upscale, write_gif, write_mp4
    from experiments import flowception as flowception_stack
    from maskflow.sampling import expected_nfe

    model, state, shards, tokenizer, device = load_for_sampling(cfg)
    train_cfg = state["config"]
    chunk_size = int(train_cfg["chunk_size"])

    num_frames = int(cfg.num_frames or int(cfg.extrapolation) * chunk_size)
    scfg = sampler_config(cfg, chunk_size, train_cfg["method"]["scheduler"])
    scfg.validate(num_frames)
    m = scfg.n_context_frames
    flowception = scfg.sampler == "flowception"
    clips = []
    if flowception:  # whole held-out videos from their first frame (the model learnt where videos start and end)
        from pipeline.readers import load_whole_video_clips

        clips = load_whole_video_clips(shards, max_frames=num_frames, num_clips=int(cfg.num_videos),
                                       seed=int(cfg.seed), split=str(cfg.split), min_frames=m + 1)
        have_real = bool(clips)
    if not clips:  # flowception without such videos: contexts of any video, nothing to score
        clips, have_real = _context_clips(shards, str(cfg.split), num_frames if not flowception else m, m,
                                          int(cfg.num_videos), int(cfg.seed))
        have_real = have_real and not flowception
    lengths = None  # Flowception: frames of each generated video
    context = torch.stack([c.tokens[:m] for c in clips]).long()

    t0 = time.perf_counter()
    quality: dict[str, Any] = {}
    bar = console.Progress(f"sample: {len(clips)} videos of {num_frames} frames ({scfg.sampler})",
                           unit="video" if flowception else "chunk")
    if flowception and have_real:  # the model chose each length: scored over the frames both videos have
        from experiments.heldout import variable_length_quality

        fc = flowception_stack.continuations(model, tokenizer, clips, scfg, num_frames, seed=int(cfg.seed),
                                             batch_size=len(clips), progress=bar.callback())
        lengths, nfe = fc["lengths"], int(fc["nfe"])
        frames = flowception_stack.pad_videos(fc["fake_frames"], num_frames)
        tokens = torch.stack([t[:m] for t in fc["fake_tokens"]])
        scores = variable_length_quality(fc["real_tokens"], fc["fake_tokens"], m, real_frames=fc["real_frames"],
                                         fake_frames=fc["fake_frames"])
        quality = {k: v for k, v in scores.items() if not isinstance(v, list)}
        extractor = _fvd_extractor(cfg, device)
        if extractor is not None:
            quality.update(flowception_stack.variable_length_fvd(fc["real_frames"], fc["fake_frames"], extractor))
    elif have_real and m >= 1:  # real continuations: score them next to the copy-last-frame baseline
        from experiments.heldout import heldout_quality

        held = heldout_quality(model, tokenizer, clips, scfg, num_frames=num_frames, seed=int(cfg.seed),
                               batch_size=len(clips), fvd_extractor=_fvd_extractor(cfg, device), progress=bar.callback())
        tokens, frames, nfe = held.fake_tokens, held.fake_frames, int(held.metrics["nfe"])
        quality = {k: v for k, v in held.metrics.items() if not isinstance(v, list)}
    else:
        result, frames = generate_videos(model, tokenizer, context, num_frames, scfg, seed=int(cfg.seed),
                                         progress=bar.callback())
        tokens, nfe = result.tokens.cpu(), int(result.nfe)
        lengths = result.lengths
    bar.close()
    wall = time.perf_counter() - t0
    context_frames = tokenizer.decode(context.flatten(0, 1)).reshape(len(clips), m, *frames.shape[2:])
    context_exact = bool(torch.equal(frames[:, :m], context_frames)) and bool(torch.equal(tokens[:, :m], context))

    out = Path(str(cfg.out_dir))
    out.mkdir(parents=True, exist_ok=True)
    fps = float(cfg.fps)
    scale = max(1, 256 // frames.shape[2])
    videos = []
    for i, clip in enumerate(clips):
        gen = frames[i, : lengths[i]].numpy() if lengths else frames[i].numpy()  # the generated length
        stem = f"sample_{i:02d}_{scfg.sampler}"
        entry = {
            "video_id": clip.video_id,
            "source": clip.source,
            "mp4": str(write_mp4(upscale(gen, scale), out / f"{stem}.mp4", fps=fps)),
            "gif": str(write_gif(upscale(mark_context(gen, m), scale), out / f"{stem}.gif", fps=fps)),
        }
        if have_real:
            real = tokenizer.decode(clip.tokens).numpy()
            if lengths:  # videos of different lengths: black frames after the shorter one's end
                real, gen = flowception_stack.pad_videos([torch.from_numpy(real), torch.from_numpy(gen)],
                                                         max(len(real), len(gen))).numpy()
            both = side_by_side(mark_context(real, m), mark_context(gen, m))
            entry["comparison_gif"] = str(write_gif(upscale(both, scale), out / f"{stem}_real_vs_generated.gif", fps=fps))
        videos.append(entry)

    summary = {
        "checkpoint": str(cfg.checkpoint),
        "sampler": resolved_sampler_settings(scfg),
        "chunk_size": chunk_size,
        "num_frames": num_frames,
        "extrapolation": num_frames / chunk_size,
        "num_videos": len(clips),
        "nfe": nfe,
        "expected_nfe": int(expected_nfe(scfg, num_frames)),
        "wall_time_s": wall,
        "frames_per_s": len(clips) * (num_frames - m) / max(wall, 1e-9),
        "context_frames_exact": context_exact,
        **flowception_stack.length_summary(lengths, shards, num_frames, len(clips)),
        "quality": quality,
        "split": str(state.get("data", {}).get("split", "video")),
        "videos": videos,
        "device": str(device),
    }
    uri = tracking.resolve_tracking_uri(cfg.mlflow.tracking_uri)
    client = tracking.get_client(uri)
    run_id, _ = tracking.get_or_create_run(
        client,
        cfg.mlflow.experiment,
        f"{scfg.sampler}-s{scfg.resolved_stride}-x{summary['extrapolation']:g}",
        tags={"stage": "sample", "checkpoint": str(cfg.checkpoint)},
        parent_run_id=cfg.mlflow.parent_run_id,
        description=(
            f"{scfg.sampler.upper()} sampling ({scfg.sampling_steps} steps, stride {scfg.resolved_stride}, guidance "
            f"{scfg.guidance_scale:g}) of {len(clips)} video(s) x {num_frames} frames from {m} real context frames "
            f"of the {cfg.split!r} split of {shards}; checkpoint {cfg.checkpoint}."
        ),
        experiment_description="MaskFlow sampling runs: generated videos, NFE and continuation quality.",
    )
    try:
        resolved = {**to_container(cfg), **summary["sampler"], "shards": shards, "num_frames": num_frames,
                    "extrapolation": summary["extrapolation"]}
        tracking.log_config(client, run_id, resolved)
        tracking.log_dataset(client, run_id, shards, context="sampling")
        tracking.log_metrics(
            client,
            run_id,
            {
                **{k: summary[k] for k in ("nfe", "expected_nfe", "wall_time_s", "frames_per_s")},
                **{k: v for k, v in quality.items() if isinstance(v, (int, float)) and k not in ("nfe", "wall_time_s")},
            },
            prefix="sample/",
        )
        real0 = tokenizer.decode(clips[0].tokens) if have_real else None
        if real0 is not None and lengths:  # the same number of frames as the generated row (black after the end)
            real0 = flowception_stack.pad_videos([real0], num_frames)[0]
        real0 = real0.numpy() if real0 is not None else None
        tracking.log_frame_strip(client, run_id, real0, frames[0].numpy(), m)
        for entry in videos:
            for key in ("mp4", "gif", "comparison_gif"):
                if key in entry:
                    tracking.log_artifact(client, run_id, entry[key], artifact_path="videos")
        (out / "sample_summary.json").write_text(json.dumps(summary, indent=2, default=str))
        tracking.log_artifact(client, run_id, out / "sample_summary.json")
    except BaseException:
        tracking.end_run(client, run_id, status="FAILED")
        raise
    if lengths:  # the lengths Flowception generated
        tracking.log_metrics(client, run_id, {"sample/mean_frames": summary["mean_frames"],
                                              "sample/min_frames": min(lengths), "sample/max_frames": max(lengths)})
        tracking.set_tags(client, run_id, {"sample_frames": ",".join(map(str, lengths))})
    tracking.end_run(client, run_id)
    summary.update(mlflow_run_id=run_id, tracking_uri=uri)
    log.info(
        "%s: %d video(s) x %d frames, NFE %d (A.2: %d), %.1f s -> %s",
        scfg.sampler, len(clips), num_frames, summary["nfe"], summary["expected_nfe"], wall, out,
    )
    return summary


if __name__ == "__main__":  # pragma: no cover - CLI
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from experiments.cli import run

    s = run(main, "sample")
    print(json.dumps({k: s[k] for k in ("nfe", "expected_nfe", "wall_time_s", "num_frames", "videos")}, indent=2))
