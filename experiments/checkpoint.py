"""Training checkpoints: one ``checkpoint.pt`` per Ray Train checkpoint directory.

Every loader takes a local path or a URI that pyarrow opens (``s3://``, ``gs://``, ``file://``), and
either a checkpoint directory, the ``checkpoint.pt`` file itself, or a Ray Train run directory
(``<storage_path>/<run_name>``), in which case the latest ``checkpoint_*`` directory is used.

Contents (all plain tensors/containers, so ``torch.load(..., weights_only=True)`` opens it):
``model`` and ``ema`` state dicts (un-wrapped from DDP), ``optimizer``, ``lr_schedule``, ``scaler``,
``step``, ``epoch``, ``rng`` (rank 0's global torch CPU/CUDA generator states), ``config`` (the full resolved training
config), ``backbone_config`` (constructor kwargs of the backbone), ``data`` (codebook size, token grid,
tokenizer id and directory of the shards), ``mlflow_run_id``.

A finished training run is also an MLflow logged model (:func:`log_trained_model`): the EMA backbone
in MLflow's PyTorch flavor (``pt2``, with a tensor signature and an input example), plus, as extra
files, a weights-only ``checkpoint.pt`` (no optimizer), the shards' tokenizer and the resolved config.
Every loader here also takes ``runs:/<run_id>/model`` and ``models:/<name>/<version>`` (or
``models:/<model_id>``) URIs: the model's files are downloaded and its ``checkpoint.pt`` is read.
"""

from __future__ import annotations

import io
import pickle
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
           "log_trained_model", "MLFLOW_URI_SCHEMES", "checkpoint_meta", "check_resume", "RESUME_KEYS"]

#: Checkpoint URIs resolved through MLflow (a logged model) rather than a filesystem.
MLFLOW_URI_SCHEMES = ("runs:/", "models:/")
MODEL_NAME = "model"  # the logged model's name in its training run: runs:/<run_id>/model
_TOKENIZER_MAX_BYTES = 64 << 20  # tokenizer files above this (e.g. a VQGAN's weights) are named, not copied


def checkpoint_file(path: str | Path) -> str:
    """The ``checkpoint.pt`` that ``path`` names, as a local path or URI.

    Args:
        path: the file itself, a checkpoint directory holding it, or a Ray Train run directory whose
            ``checkpoint_*`` subdirectories hold it (the last one in name order wins: Ray Train names
            them by creation time, so that is the latest). Local path or pyarrow URI.

            Or an MLflow model URI (``runs:/<run_id>/model``, ``models:/<name>/<version>``,
            ``models:/<model_id>``), downloaded to a temporary directory.

    Raises:
        FileNotFoundError: nothing there, or a directory without any checkpoint (names the path); an
            MLflow model that does not exist or holds no ``checkpoint.pt``.
        ValueError: a URI scheme pyarrow cannot open.
    """
    from pipeline.fs import resolve

    if str(path).startswith(MLFLOW_URI_SCHEMES):
        return _download_model_checkpoint(str(path))
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
        ValueError: the file is not a checkpoint of this project (not a torch file, or no ``backbone_config``).
    """
    from pipeline.fs import read_bytes, resolve

    loc = resolve(checkpoint_file(path))
    if not loc.is_local:
        log.info("reading checkpoint %s", loc.uri())
    try:
        source = loc.path if loc.is_local else io.BytesIO(read_bytes(loc))
        state = torch.load(source, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise ValueError(
            f"{loc.uri()} is not a checkpoint of this project ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "give a checkpoint.pt, a checkpoint_* directory, a run directory, or a runs:/ or models:/ URI"
        ) from exc
    if not isinstance(state, dict) or "backbone_config" not in state:
        raise ValueError(f"{loc.uri()} is not a checkpoint of this project (no 'backbone_config' entry)")
    return state


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


# ------------------------------------------------------------------------------ MLflow models
def _download_model_checkpoint(uri: str) -> str:
    """Download an MLflow model (``runs:/…``, ``models:/…``) and return its ``checkpoint.pt``."""
    import tempfile

    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tempfile.mkdtemp(prefix="maskflow-model-")))
    except MlflowException as exc:
        raise FileNotFoundError(f"no MLflow model at {uri} (tracking URI {mlflow.get_tracking_uri()}): {exc.message}") from None
    for candidate in (local / "extra_files" / CHECKPOINT_FILE, local / CHECKPOINT_FILE):
        if candidate.exists():
            log.info("checkpoint of %s: %s", uri, candidate)
            return str(candidate)
    raise FileNotFoundError(
        f"the MLflow model {uri} holds no extra_files/{CHECKPOINT_FILE}; log it with "
        "experiments.checkpoint.log_trained_model (training does)"
    )


def _model_signature(backbone_config: dict[str, Any], num_frames: int):
    """Tensor signature of ``MaskFlowTransformer.forward(tokens, t)`` → logits."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    h, k = int(backbone_config["latent_size"]), int(backbone_config["codebook_size"])
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype("int64"), (-1, num_frames, h, h), "tokens"),
                       TensorSpec(np.dtype("float32"), (-1, num_frames), "t")]),
        outputs=Schema([TensorSpec(np.dtype("float32"), (-1, num_frames, h, h, k), "logits")]),
    )


def log_trained_model(client, run_id: str, checkpoint: str | Path, *, register_as: str | None = None) -> str:
    """Log a training checkpoint as the MLflow logged model ``model`` of run ``run_id``.

    The model holds the EMA backbone in MLflow's PyTorch flavor (``pt2``: ``torch.export`` with a
    tensor signature ``tokens int64 [B, k, h, w], t float32 [B, k] → logits float32 [B, k, h, w, K]``
    and an input example of two all-mask windows; ``pickle`` if the export fails) and, in
    ``extra_files/``, a weights-only ``checkpoint.pt`` (model and EMA weights, backbone config, data
    info, resolved config: what :func:`load_backbone` reads), the shards' tokenizer files (when under
    64 MiB; else only named in the data info) and ``config.yaml``. The model's params are the
    backbone config.

    Args:
        client: an ``MlflowClient`` on the run's store.
        run_id: the training run (the model is logged into it as ``runs:/<run_id>/model``).
        checkpoint: a training checkpoint (see :func:`checkpoint_file`).
        register_as: also register the model under this name (a new version each time).

    Returns:
        The model URI: ``models:/<name>/<version>`` when registered, else ``runs:/<run_id>/model``.
    """
    import tempfile

    import mlflow
    import yaml

    from maskflow.models import BackboneConfig, MaskFlowTransformer

    state = load_checkpoint(checkpoint)
    model = MaskFlowTransformer(BackboneConfig(**state["backbone_config"]))
    ema = state["ema"].get("shadow", state["ema"]) if state.get("ema") else state["model"]
    model.load_state_dict(ema)
    model.eval()
    k = int(state["config"]["chunk_size"])
    h = int(state["backbone_config"]["latent_size"])
    mask_id = int(state["backbone_config"]["codebook_size"])
    example = (torch.full((2, k, h, h), mask_id, dtype=torch.int64), torch.ones(2, k))
    with tempfile.TemporaryDirectory() as tmp:
        slim = {key: state[key] for key in ("model", "ema", "step", "epoch", "config", "backbone_config", "data", "mlflow_run_id")
                if key in state}
        extra = [save_checkpoint(tmp, slim)]
        (Path(tmp) / "config.yaml").write_text(yaml.safe_dump(state["config"], sort_keys=False))
        extra.append(Path(tmp) / "config.yaml")
        tok_dir = Path(str((state.get("data") or {}).get("tokenizer_dir") or ""))
        if tok_dir.is_dir():
            files = [f for f in sorted(tok_dir.iterdir()) if f.is_file()]
            if sum(f.stat().st_size for f in files) <= _TOKENIZER_MAX_BYTES:
                extra += files
            else:
                log.info("tokenizer %s is over %d MiB: named in the model's data info, not copied", tok_dir, _TOKENIZER_MAX_BYTES >> 20)
        common = dict(
            name=MODEL_NAME, signature=_model_signature(state["backbone_config"], k), input_example=example,
            extra_files=[str(f) for f in extra], registered_model_name=register_as or None,
            params={key: str(v) for key, v in state["backbone_config"].items()},
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "einops"],
        )
        active = mlflow.active_run()
        if active is None or active.info.run_id != run_id:
            raise RuntimeError(f"log_trained_model needs run {run_id} to be the active MLflow run")
        try:
            info = mlflow.pytorch.log_model(model, serialization_format="pt2", **common)
        except Exception as exc:  # torch.export cannot trace every backbone variant: keep the pickle format
            log.warning("torch.export of the backbone failed (%s); logging the model in the pickle format", exc)
            info = mlflow.pytorch.log_model(model, serialization_format="pickle", **common)
    if register_as and info.registered_model_version is not None:
        uri = f"models:/{register_as}/{info.registered_model_version}"
    else:
        uri = f"runs:/{run_id}/{MODEL_NAME}"
    client.set_tag(run_id, "model_uri", uri)
    log.info("logged the trained model as %s (%s)", uri, info.model_uri)
    return uri


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
