"""Training checkpoints: one ``checkpoint.pt`` per Ray Train checkpoint directory.

Every loader takes a local path or a URI that pyarrow opens (``s3://``, ``gs://``, ``file://``), and
either a checkpoint directory, the ``checkpoint.pt`` file itself, or a Ray Train run directory
(``<storage_path>/<run_name>``), in which case the latest ``checkpoint_*`` directory is used.

Contents (all plain tensors/containers, so ``torch.load(..., weights_only=True)`` opens it):
``model`` and ``ema`` state dicts (un-wrapped from DDP), ``optimizer``, ``lr_schedule``, ``scaler``,
``step``, ``epoch``, ``rng`` (rank 0's global torch CPU/CUDA generator states), ``config`` (the full resolved training
config), ``backbone_config`` (constructor kwargs of the backbone), ``data`` (codebook size, token grid,
tokenizer id and directory of the shards), ``mlflow_run_id``.
"""

from __future__ import annotations

import io
import logging
import posixpath
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
META_FILE = "meta.json"  # the small entries of checkpoint.pt, beside it (save_checkpoint)
META_KEYS = ("config", "data", "backbone_config", "step", "epoch")
RESUME_KEYS = ("model.*", "chunk_size", "dynamics", "flowception.rate_head")
"""Training settings a run cannot change when it resumes (they define the model or its input; ``model.*``
is every ``model`` key but ``activation_checkpointing``); :func:`check_resume` adds the data's
``codebook_size``, ``latent_size`` and ``tokenizer_id``."""
_RESUME_FREE = ("model.activation_checkpointing",)  # memory only: the weights are the same

__all__ = ["CHECKPOINT_FILE", "save_checkpoint", "load_checkpoint", "checkpoint_file", "load_backbone",
           "checkpoint_meta", "check_resume", "RESUME_KEYS"]


def checkpoint_file(path: str | Path) -> str:
    """The ``checkpoint.pt`` that ``path`` names, as a local path or URI.

    Args:
        path: the file itself, a checkpoint directory holding it, or a Ray Train run directory whose
            ``checkpoint_*`` subdirectories hold it (the last one in name order wins: Ray Train names
            them by creation time, so that is the latest). Local path or pyarrow URI.

    Raises:
        FileNotFoundError: nothing there, or a directory without any checkpoint (names the path).
        ValueError: a URI scheme pyarrow cannot open.
    """
    from pipeline.fs import resolve

    loc = resolve(path)
    if not loc.is_dir():
        if loc.exists():
            return loc.uri()
        raise FileNotFoundError(f"no checkpoint at {path}: nothing exists there")
    if loc.join(CHECKPOINT_FILE).exists():
        return loc.join(CHECKPOINT_FILE).uri()
    from pyarrow import fs as pafs

    infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, allow_not_found=True))
    runs = sorted(i.path for i in infos if i.type == pafs.FileType.Directory and posixpath.basename(i.path).startswith("checkpoint_"))
    for d in reversed(runs):
        candidate = loc.join(posixpath.basename(d), CHECKPOINT_FILE)
        if candidate.exists():
            log.info("latest checkpoint of run directory %s: %s", path, candidate.uri())
            return candidate.uri()
    raise FileNotFoundError(
        f"no checkpoint at {path}: expected {CHECKPOINT_FILE}, a directory holding it, or a Ray Train run "
        f"directory with checkpoint_*/{CHECKPOINT_FILE} ({len(runs)} checkpoint_* directories, none complete)"
    )


def save_checkpoint(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``directory/checkpoint.pt`` atomically (temp file + rename).

    Its small entries (``config``, ``data``, ``backbone_config``, ``step``, ``epoch``) also go to
    ``meta.json`` beside it, so a check of a run's settings (:func:`check_resume`) reads kilobytes, not
    the weights.
    """
    import json

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / (CHECKPOINT_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(d / CHECKPOINT_FILE)
    meta = {k: state[k] for k in META_KEYS if k in state}
    if meta:
        (d / (META_FILE + ".tmp")).write_text(json.dumps(meta, default=str))
        (d / (META_FILE + ".tmp")).replace(d / META_FILE)
    return d / CHECKPOINT_FILE


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no pickled code runs).

    Args:
        path: see :func:`checkpoint_file` (local or URI; file, checkpoint directory or run directory).
        map_location: where tensors go (``"cpu"`` by default).

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
    """
    from pipeline.fs import read_bytes, resolve

    loc = resolve(checkpoint_file(path))
    if loc.is_local:
        return torch.load(loc.path, map_location=map_location, weights_only=True)
    log.info("reading checkpoint %s", loc.uri())
    return torch.load(io.BytesIO(read_bytes(loc)), map_location=map_location, weights_only=True)


def load_backbone(path: str | Path, *, use_ema: bool = True, device: str | torch.device = "cpu"):
    """Rebuild the backbone of a checkpoint with its EMA (default) or raw weights, in eval mode.

    Args:
        path: a checkpoint file, checkpoint directory or Ray Train run directory (latest checkpoint),
            local or a pyarrow URI (``s3://bucket/ray_results/ffs-xl2``); see :func:`checkpoint_file`.
        use_ema: load the EMA weights (the ones the paper samples with) instead of the raw ones.
        device: where the model goes.

    Returns:
        ``(model, state)``: the :class:`maskflow.models.MaskFlowTransformer` on ``device`` and the
        checkpoint dict (for its ``config`` and ``data`` entries).

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        KeyError: ``use_ema`` asked for but the checkpoint holds no EMA weights.
    """
    from maskflow.models import BackboneConfig, MaskFlowTransformer

    state = load_checkpoint(path)
    model = MaskFlowTransformer(BackboneConfig(**state["backbone_config"]))
    key = "ema" if use_ema else "model"
    if key not in state or state[key] is None:
        raise KeyError(f"checkpoint {path} holds no {key!r} weights")
    weights = state[key]
    if use_ema and "shadow" in weights:  # EMA state dict layout of maskflow.training.EMA
        weights = weights["shadow"]
    model.load_state_dict(weights)
    return model.to(device).eval(), state

# ------------------------------------------------------------------------------ resuming
def checkpoint_meta(path: str | Path) -> dict[str, Any] | None:
    """The small entries (``config``, ``data``, ``backbone_config``, ``step``) of a checkpoint.

    Reads ``meta.json`` beside ``checkpoint.pt`` when there is one; otherwise a local checkpoint is
    opened memory-mapped (the weights are not read). Returns ``None`` for a remote checkpoint without
    ``meta.json`` (reading it would download the weights).

    Raises:
        FileNotFoundError: no checkpoint at ``path`` (see :func:`checkpoint_file`).
    """
    import json
    import posixpath

    from pipeline.fs import read_bytes, resolve

    loc = resolve(checkpoint_file(path))
    meta = resolve(posixpath.join(posixpath.dirname(loc.uri()), META_FILE) if not loc.is_local
                   else str(Path(loc.path).parent / META_FILE))
    if meta.exists():
        return json.loads(read_bytes(meta))
    if not loc.is_local:
        return None
    state = torch.load(loc.path, map_location="cpu", weights_only=True, mmap=True)
    return {k: state[k] for k in META_KEYS if k in state}


def check_resume(run_dir: str, config: Any, data: dict[str, Any]) -> dict[str, Any] | None:
    """Refuse to resume a training run with a different model or differently tokenized data.

    Running ``experiments.train`` again with the same ``run_name`` resumes from the run's latest
    checkpoint; a changed :data:`RESUME_KEYS` setting, ``codebook_size``, ``latent_size`` or
    ``tokenizer_id`` would make every worker fail to load it (and Ray Train retry). Called before Ray
    starts.

    Args:
        run_dir: ``<run.storage_path>/<run_name>`` (local path or URI).
        config: the new training config (``DictConfig`` or nested dict).
        data: the new shards' :func:`experiments.train.data_info`.

    Returns:
        The latest checkpoint's meta entries, or ``None`` when the run has no checkpoint (a new run) or
        its settings cannot be read cheaply (a remote checkpoint of an older version).

    Raises:
        ConfigError: naming every differing key with its checkpoint and new values.
    """
    from omegaconf import OmegaConf

    from experiments.config import ConfigError

    try:
        meta = checkpoint_meta(run_dir)
    except (FileNotFoundError, ValueError):
        return None
    if meta is None:
        log.warning("cannot compare the settings of %s with the checkpoint's (no %s); resuming", run_dir, META_FILE)
        return None
    new = OmegaConf.create(config if not OmegaConf.is_config(config) else OmegaConf.to_container(config))
    old = OmegaConf.create(meta.get("config") or {})
    differ = []
    keys = []
    for key in RESUME_KEYS:
        if key.endswith(".*"):
            section = OmegaConf.select(old, key[:-2], default=None) or {}
            keys += [f"{key[:-2]}.{k}" for k in section if f"{key[:-2]}.{k}" not in _RESUME_FREE]
        else:
            keys.append(key)
    for key in keys:
        before, after = OmegaConf.select(old, key, default=None), OmegaConf.select(new, key, default=None)
        if before != after and (before is not None or key.startswith("model.")):
            differ.append(f"{key}={'null' if after is None else after} (checkpoint: {'null' if before is None else before})")
    for key in ("codebook_size", "latent_size", "tokenizer_id"):
        before, after = (meta.get("data") or {}).get(key), data.get(key)
        if before is not None and after is not None and before != after:
            differ.append(f"the shards' {key}={after} (checkpoint: {before})")
    if differ:
        raise ConfigError(
            f"run_name={_basename(run_dir)} resumes from its checkpoint at step {meta.get('step', '?')} in {run_dir}, "
            f"which was trained with other settings: {'; '.join(differ)}. Use a new run_name (init_checkpoint= "
            "warm-starts from it) or keep those settings"
        )
    return meta


def _basename(path: str) -> str:
    """Last component of a local path or URI."""
    return str(path).rstrip("/").rsplit("/", 1)[-1]
