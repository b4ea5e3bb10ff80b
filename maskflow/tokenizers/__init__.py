"""VQ tokenizers: frames ``uint8 [N, H, W, 3]`` ↔ codes ``int64 [N, h, w]`` (see :mod:`.base`).

* :class:`PatchKMeansTokenizer` — the CPU default, fitted on the videos themselves (no download).
* :class:`DiffusersVQTokenizer` — a diffusers ``VQModel`` such as SD-VQGAN f8 (:data:`SD_VQGAN_F8_CONFIG`;
  convert the original checkpoint with ``python -m maskflow.tokenizers.convert_ldm``).
* :func:`load_tokenizer` opens any directory written by a tokenizer's ``save``.
* :func:`reconstruction_psnr` measures any tokenizer on frames.

Importing this package does not import diffusers (that happens when a diffusers model is built or loaded).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from maskflow.tokenizers.base import VQTokenizer, config_hash
from maskflow.tokenizers.diffusers_vq import SD_VQGAN_F8_CONFIG, DiffusersVQTokenizer
from maskflow.tokenizers.patch_kmeans import PatchKMeansTokenizer
from maskflow.tokenizers.quality import psnr, reconstruction_psnr

__all__ = [
    "VQTokenizer",
    "PatchKMeansTokenizer",
    "DiffusersVQTokenizer",
    "SD_VQGAN_F8_CONFIG",
    "TOKENIZER_KINDS",
    "load_tokenizer",
    "reconstruction_psnr",
    "psnr",
    "config_hash",
]

#: ``kind`` (as written in ``tokenizer.json``) → class with a ``load(directory, ...)`` classmethod.
TOKENIZER_KINDS: dict[str, type[VQTokenizer]] = {
    PatchKMeansTokenizer.kind: PatchKMeansTokenizer,
    DiffusersVQTokenizer.kind: DiffusersVQTokenizer,
}


def load_tokenizer(directory: str | Path, **kwargs: Any) -> VQTokenizer:
    """Open a tokenizer directory written by ``save`` (or by ``convert_ldm``), whatever its kind.

    Args:
        directory: holds ``tokenizer.json`` with ``{"kind": ...}`` and the kind's files.
        **kwargs: passed to the kind's ``load`` (e.g. ``device``, ``dtype``, ``batch_size`` for
            ``diffusers_vq``); the patch-k-means tokenizer takes none.

    Returns:
        the tokenizer.

    Raises:
        FileNotFoundError: if ``directory/tokenizer.json`` does not exist.
        ValueError: if it is not valid JSON or names an unknown kind.
    """
    meta_path = Path(directory) / "tokenizer.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: not a tokenizer directory (write one with .save())")
    try:
        kind = json.loads(meta_path.read_text()).get("kind")
    except (json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"{meta_path} is not a valid tokenizer.json: {e}") from e
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"{meta_path}: unknown tokenizer kind {kind!r}; known: {sorted(TOKENIZER_KINDS)}")
    return TOKENIZER_KINDS[kind].load(directory, **kwargs)  # type: ignore[attr-defined]
