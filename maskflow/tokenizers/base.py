"""The VQ tokenizer interface shared by every tokenizer of the project.

A tokenizer maps RGB frames ``uint8 [N, H, W, 3]`` (``H = W = resolution``) to code indices
``int64 [N, h, w]`` (``h = w = latent_size``) in ``[0, codebook_size)`` and back. The mask token id
``codebook_size`` is never produced by ``encode``; ``decode`` maps it (a leftover mask) to code 0,
as the authors' code does.

Implementations: :class:`maskflow.tokenizers.diffusers_vq.DiffusersVQTokenizer` (SD-VQGAN f8 through
diffusers ``VQModel``) and the CPU default fitted on the videos themselves
(:mod:`maskflow.tokenizers.patch_kmeans`). :func:`maskflow.tokenizers.load_tokenizer` opens either
from a directory written by ``save``.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["VQTokenizer", "config_hash"]


def config_hash(config: dict[str, Any]) -> str:
    """Stable 12-hex-digit hash of a JSON-serialisable config (keys sorted)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


class VQTokenizer(ABC):
    """Frames ``uint8 [N, H, W, 3]`` ↔ code indices ``int64 [N, h, w]``.

    Attributes every implementation sets:
        codebook_size (int): ``K``, the number of codes; the mask token id is ``K``.
        resolution (int): square input size ``H = W`` in pixels.
        latent_size (int): square token grid size ``h = w`` (``resolution // downsample``).
        kind (str): short implementation name, e.g. ``"patch_kmeans"`` or ``"diffusers_vq"``.
    """

    codebook_size: int
    resolution: int
    latent_size: int
    kind: str

    # ----------------------------------------------------------------- identity
    @property
    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-serialisable description (kind, sizes, source); changes whenever the codes would."""

    @property
    def config_hash(self) -> str:
        """12-hex-digit hash of :attr:`config`; two tokenizers with equal hashes give equal codes."""
        return config_hash(self.config)

    @property
    def tokenizer_id(self) -> str:
        """``"<kind>:<config_hash>"``, the value stored in the shards' ``tokenizer`` column."""
        return f"{self.kind}:{self.config_hash}"

    # ------------------------------------------------------------------ codec
    @abstractmethod
    def encode(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Tokenize frames.

        Args:
            frames: ``uint8 [N, H, W, 3]`` RGB with ``H = W = resolution``.

        Returns:
            ``int64 [N, h, w]`` code indices in ``[0, codebook_size)``, on the CPU.

        Raises:
            ValueError: if the shape or dtype is not as above.
        """

    @abstractmethod
    def decode(self, indices: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Reconstruct frames from code indices.

        Args:
            indices: integer ``[N, h, w]`` in ``[0, codebook_size]`` (the mask id ``K`` decodes as code 0).

        Returns:
            ``uint8 [N, H, W, 3]`` RGB frames on the CPU.
        """

    # ------------------------------------------------------------- persistence
    @abstractmethod
    def save(self, directory: str | Path) -> Path:
        """Write everything needed to rebuild this tokenizer into ``directory`` (created if missing),
        including a ``tokenizer.json`` with ``{"kind": ..., ...}``; returns the directory."""

    # ---------------------------------------------------------------- helpers
    def check_frames(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Validate ``uint8 [N, resolution, resolution, 3]`` input and return it as a CPU tensor.

        Raises:
            ValueError: naming the expected and the received shape or dtype.
        """
        x = torch.as_tensor(frames)
        if x.dtype != torch.uint8:
            raise ValueError(f"{self.kind}: frames must be uint8, got {x.dtype}")
        if x.ndim != 4 or x.shape[1:] != (self.resolution, self.resolution, 3):
            raise ValueError(
                f"{self.kind}: frames must have shape [N, {self.resolution}, {self.resolution}, 3], "
                f"got {tuple(x.shape)}"
            )
        return x

    def check_indices(self, indices: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Validate ``[N, latent_size, latent_size]`` integer codes; mask ids (``K``) become 0.

        Raises:
            ValueError: on a wrong shape, a float dtype, or a code outside ``[0, K]``.
        """
        x = torch.as_tensor(np.asarray(indices) if isinstance(indices, np.ndarray) else indices)
        if x.is_floating_point() or x.is_complex():
            raise ValueError(f"{self.kind}: indices must be integers, got {x.dtype}")
        if x.ndim != 3 or x.shape[1:] != (self.latent_size, self.latent_size):
            raise ValueError(
                f"{self.kind}: indices must have shape [N, {self.latent_size}, {self.latent_size}], "
                f"got {tuple(x.shape)}"
            )
        x = x.long()
        if x.numel() and (int(x.min()) < 0 or int(x.max()) > self.codebook_size):
            raise ValueError(
                f"{self.kind}: indices must lie in [0, {self.codebook_size}], "
                f"got [{int(x.min())}, {int(x.max())}]"
            )
        return torch.where(x == self.codebook_size, torch.zeros_like(x), x)
