r"""Reconstruction quality of any :class:`~maskflow.tokenizers.base.VQTokenizer`.

PSNR is computed on ``uint8`` pixels with peak 255, from the mean squared error over *all* pixels and
channels of all frames (not the mean of per-frame PSNRs):

.. math:: \mathrm{PSNR} = 10 \log_{10} \frac{255^2}{\mathrm{MSE}} \quad [\mathrm{dB}]
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from maskflow.tokenizers.base import VQTokenizer

__all__ = ["psnr", "reconstruction_psnr"]


def _as_uint8_tensor(x: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.dtype != torch.uint8:
        raise ValueError(f"{name} must be uint8, got {t.dtype}")
    return t


def psnr(reference: np.ndarray | torch.Tensor, reconstruction: np.ndarray | torch.Tensor) -> float:
    """PSNR in dB between two equally shaped ``uint8`` arrays (peak 255).

    Args:
        reference: ``uint8 [...]``, e.g. ``[N, H, W, 3]``.
        reconstruction: ``uint8``, same shape as ``reference``.

    Returns:
        PSNR in dB; ``inf`` when both are identical.

    Raises:
        ValueError: on a dtype other than uint8, different shapes, or empty input.
    """
    a = _as_uint8_tensor(reference, "reference")
    b = _as_uint8_tensor(reconstruction, "reconstruction")
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: reference {tuple(a.shape)} vs reconstruction {tuple(b.shape)}")
    if a.numel() == 0:
        raise ValueError("cannot compute PSNR of empty arrays")
    mse = (a.double() - b.cpu().double()).square().mean().item()
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def reconstruction_psnr(
    tokenizer: VQTokenizer, frames: np.ndarray | torch.Tensor, *, batch_size: int = 64
) -> float:
    """PSNR in dB of ``tokenizer.decode(tokenizer.encode(frames))`` against ``frames``.

    Works for every tokenizer of the project; frames are processed ``batch_size`` at a time so memory
    stays bounded, and the squared error is accumulated in float64 over all pixels.

    Args:
        tokenizer: any :class:`~maskflow.tokenizers.base.VQTokenizer`.
        frames: ``uint8 [N, H, W, 3]`` with ``H = W = tokenizer.resolution``.
        batch_size: frames per encode/decode call, ``>= 1``.

    Returns:
        PSNR in dB (higher is better; ``inf`` for a lossless reconstruction).

    Raises:
        ValueError: if ``frames`` is empty, has the wrong shape or dtype, or ``batch_size < 1``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    x = tokenizer.check_frames(frames)
    if len(x) == 0:
        raise ValueError("reconstruction_psnr needs at least one frame, got 0")
    sse = 0.0
    for i in range(0, len(x), batch_size):
        ref = x[i : i + batch_size]
        rec = tokenizer.decode(tokenizer.encode(ref))
        sse += (ref.double() - rec.cpu().double()).square().sum().item()
    mse = sse / x.numel()
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)
