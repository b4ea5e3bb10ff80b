"""Tokenize a video dataset into Parquet token shards (Ray Data; resumable).

    python -m experiments.tokenize inputs=../shared/data/videos output_dir=outputs/tokens resolution=64
    ray job submit --address http://HEAD:8265 --working-dir . -- python -m experiments.tokenize \\
        inputs=s3://bucket/ffs output_dir=s3://bucket/ffs-tokens tokenizer.kind=diffusers_vq \\
        tokenizer.path=/mnt/models/sd-vqgan-f8 num_tokenizer_actors=8 num_gpus_per_actor=1

Settings: ``experiments/configs/tokenize.yaml``; the job itself is :func:`pipeline.job.run_tokenize_job`
(see ``docs/pipeline.md`` for the shard format, the manifest, the held-out splits and resuming).
``split=auto`` (the default) holds out whole videos with at least ``min_videos_for_video_split`` (32)
input videos and each video's continuation (``temporal_eval_fraction`` of its frames) below that;
``split=video`` / ``split=temporal`` force one.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

from experiments.config import ConfigError, to_container

__all__ = ["main"]

log = logging.getLogger("experiments.tokenize")


def main(cfg: DictConfig) -> dict[str, Any]:
    """Run the tokenize job for a loaded ``tokenize`` config; returns the manifest (also in ``output_dir``).

    The job is recorded as an MLflow run of its own (:func:`log_tokenize_run`; ``mlflow.enabled=false``
    turns it off).

    Raises:
        ConfigError: a setting outside its allowed range (e.g. ``split`` not auto/video/temporal), no input
            videos, or an ``output_dir`` holding shards of another tokenizer / other decode settings / another
            split mode (the message names both).
        FileNotFoundError: ``inputs`` does not exist.
    """
    from experiments import console
    from pipeline.job import run_tokenize_job

    console.init_ray()
    try:
        with console.Progress("tokenize", unit="video") as progress:
            manifest = run_tokenize_job({k: v for k, v in to_container(cfg).items() if k != "mlflow"},
                                        progress=progress.callback())
    except ValueError as e:  # includes TokenizerMismatchError: refused before any work
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(str(e)) from e
    if "mlflow" in cfg and cfg.mlflow.get("enabled", True):
        log_tokenize_run(manifest, experiment=str(cfg.mlflow.experiment), tracking_uri=cfg.mlflow.get("tracking_uri"))
    return manifest


def log_tokenize_run(manifest: dict[str, Any], *, experiment: str, tracking_uri: str | None = None) -> str:
    """Record a tokenize job as an MLflow run of its own; returns the run id.

    One run per shard directory (a resumed job continues it): the resolved settings as params (the
    fitted tokenizer's id and codebook size, the split mode chosen by ``split=auto``), the counts and
    the reconstruction PSNR as ``data/…`` metrics, the failed and train-only videos and the per-segment
    PSNR as tables (``failures.json``, ``psnr_segments.json``), ``manifest.json``, and the shards as
    the run's dataset (context ``tokenize``).
    """
    import json
    import tempfile
    from pathlib import Path

    from experiments import tracking

    shard_dir = str(manifest["shard_dir"])
    tok, split, counts = manifest.get("tokenizer") or {}, manifest.get("split") or {}, manifest.get("counts") or {}
    client = tracking.get_client(tracking_uri)
    run_id, _ = tracking.get_or_create_run(
        client, experiment, f"tokenize-{Path(shard_dir.rstrip('/')).name}",
        resume_key=("tokenize_shard_dir", shard_dir), tags={"stage": "tokenize"},
        description=(f"Tokenization of {counts.get('videos_found', '?')} videos into {shard_dir} with "
                     f"{tok.get('tokenizer_id')} ({split.get('mode')} split: {split.get('reason')})."),
    )
    try:
        tracking.log_params(client, run_id, {
            "tokenizer_id": tok.get("tokenizer_id"), "tokenizer.kind": tok.get("kind"),
            "codebook_size": tok.get("codebook_size"), "latent_size": tok.get("latent_size"),
            "resolution": tok.get("resolution"), "split": split.get("mode"), "split_requested": split.get("requested"),
            **{f"decode.{k}": v for k, v in (manifest.get("decode") or {}).items()},
        })
        splits = {f"{name}_{k}": v for name, c in (manifest.get("splits") or {}).items() for k, v in c.items()}
        tracking.log_metrics(client, run_id, {**counts, **splits, "reconstruction_psnr_db": manifest.get("reconstruction_psnr_db")},
                             prefix="data/")
        failures = [{"kind": "failed", **f} for f in manifest.get("failures", [])]
        failures += [{"kind": "train_only", **f} for f in split.get("train_only", [])]
        if failures:
            tracking.log_table(client, run_id, failures, "failures.json")
        segments = (manifest.get("psnr") or {}).get("segments") or []
        if segments:
            tracking.log_table(client, run_id, segments, "psnr_segments.json")
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
            tracking.log_artifact(client, run_id, Path(tmp) / "manifest.json")
        tracking.log_dataset(client, run_id, shard_dir, context="tokenize", manifest=manifest)
    except BaseException:
        tracking.end_run(client, run_id, status="FAILED")
        raise
    tracking.end_run(client, run_id)
    return run_id


if __name__ == "__main__":  # pragma: no cover - CLI
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from experiments.cli import run

    manifest = run(main, "tokenize")
    c = manifest["counts"]
    print(
        f"{c['videos_ok']} videos ok, {c['videos_failed']} failed, {c['segments']} segments, {c['frames']} frames "
        f"-> {manifest['shard_dir']} (manifest.json); split={manifest['split']['mode']} ({manifest['split']['reason']})"
    )
