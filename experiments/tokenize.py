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
import sys
from typing import Any

from omegaconf import DictConfig

from experiments.config import ConfigError, load_config, to_container

__all__ = ["main"]

log = logging.getLogger("experiments.tokenize")


def main(cfg: DictConfig) -> dict[str, Any]:
    """Run the tokenize job for a loaded ``tokenize`` config; returns the manifest (also in ``output_dir``).

    Raises:
        ConfigError: a setting outside its allowed range (e.g. ``split`` not auto/video/temporal), no input
            videos, or an ``output_dir`` holding shards of another tokenizer / other decode settings / another
            split mode (the message names both).
        FileNotFoundError: ``inputs`` does not exist.
    """
    from pipeline.job import run_tokenize_job

    try:
        return run_tokenize_job(to_container(cfg))
    except ValueError as e:  # includes TokenizerMismatchError: refused before any work
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(str(e)) from e


if __name__ == "__main__":  # pragma: no cover - CLI
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from experiments.cli import run

    manifest = run(main, "tokenize")
    c = manifest["counts"]
    print(
        f"{c['videos_ok']} videos ok, {c['videos_failed']} failed, {c['segments']} segments, {c['frames']} frames "
        f"-> {manifest['shard_dir']} (manifest.json); split={manifest['split']['mode']} ({manifest['split']['reason']})"
    )
