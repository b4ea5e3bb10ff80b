"""Training checkpoints: one ``checkpoint.pt`` per Ray Train checkpoint directory.

Contents (all plain tensors/containers, so ``torch.load(..., weights_only=True)`` opens it):
``model`` and ``ema`` state dicts (un-wrapped from DDP), ``optimizer``, ``lr_schedule``, ``scaler``,
``step``, ``epoch``, ``rng`` (torch CPU/CUDA generator states), ``config`` (the full resolved training
config), ``backbone_config`` (constructor kwargs of the backbone), ``data`` (codebook size, token grid,
tokenizer id and directory of the shards), ``mlflow_run_id``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FILE = "checkpoint.pt"

__all__ = ["CHECKPOINT_FILE", "save_checkpoint", "load_checkpoint", "checkpoint_file", "load_backbone"]


def checkpoint_file(path: str | Path) -> Path:
    """``path`` if it is a file, else ``path/checkpoint.pt``.

    Raises:
        FileNotFoundError: if neither exists (names the path).
    """
    p = Path(path)
    f = p / CHECKPOINT_FILE if p.is_dir() else p
    if not f.is_file():
        raise FileNotFoundError(f"no checkpoint at {p} (expected a directory holding {CHECKPOINT_FILE} or the file)")
    return f


def save_checkpoint(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``directory/checkpoint.pt`` atomically (temp file + rename)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / (CHECKPOINT_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(d / CHECKPOINT_FILE)
    return d / CHECKPOINT_FILE


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no pickled code runs)."""
    return torch.load(checkpoint_file(path), map_location=map_location, weights_only=True)


def load_backbone(path: str | Path, *, use_ema: bool = True, device: str | torch.device = "cpu"):
    """Rebuild the backbone of a checkpoint with its EMA (default) or raw weights, in eval mode.

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
