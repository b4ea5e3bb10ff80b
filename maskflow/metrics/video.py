r"""Cheap video metrics that need no pretrained network: PSNR, SSIM and temporal consistency.

All take uint8 RGB videos ``[N, T, H, W, 3]`` (torch tensors or numpy arrays) and compare a
generated continuation with the real one frame by frame; everything is vectorised in torch and
computed in float64.

- **PSNR** (dB) per frame: :math:`10 \log_{10}(255^2 / \mathrm{MSE})`, the MSE over all pixels and
  channels of one frame; ``inf`` for identical frames.
- **SSIM** per frame (Wang et al., IEEE TIP 2004): Gaussian window 11×11, σ = 1.5,
  :math:`K_1 = 0.01, K_2 = 0.03`, data range 255, population (biased) local statistics, computed on
  each RGB channel separately and averaged over the channels and over the "valid" window positions
  (no padding). This equals ``skimage.metrics.structural_similarity(..., channel_axis=-1,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)``. Frames must be
  at least 11×11.
- **Temporal consistency**: the mean absolute difference between consecutive frames
  (``MAD_t = mean |x_t − x_{t−1}|`` in intensity levels 0–255) of the generated and of the real
  video, and their ratio ``MAD_fake / MAD_real``. A ratio near 1 means the generated video changes
  as much from frame to frame as the real one; ``> 1`` flicker or jumps (e.g. at chunk boundaries of
  autoregressive sampling, visible in the per-frame curve), ``< 1`` a frozen or overly static video.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "psnr_per_frame",
    "ssim_per_frame",
    "temporal_mad",
    "video_quality_metrics",
    "SSIM_WINDOW",
    "SSIM_SIGMA",
]

PEAK = 255.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
_FRAMES_PER_CHUNK = 64  # SSIM works on this many frames at a time to bound float64 memory


def _as_video(x: Any, name: str) -> torch.Tensor:
    """Validate a uint8 ``[N, T, H, W, 3]`` video batch; returns it as a CPU-or-device torch tensor."""
    t = torch.as_tensor(x)
    if t.dtype != torch.uint8:
        raise ValueError(f"{name} must be uint8 in [0, 255], got dtype {t.dtype}")
    if t.ndim != 5 or t.shape[-1] != 3:
        raise ValueError(f"{name} must be [N, T, H, W, 3], got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(t.shape)}")
    return t


def _as_pair(real: Any, fake: Any) -> tuple[torch.Tensor, torch.Tensor]:
    r, f = _as_video(real, "real"), _as_video(fake, "fake")
    if r.shape != f.shape:
        raise ValueError(f"real and fake videos differ in shape: {tuple(r.shape)} vs {tuple(f.shape)}")
    return r, f.to(r.device)


def psnr_per_frame(real: Any, fake: Any) -> torch.Tensor:
    """Peak signal-to-noise ratio of each frame, peak 255.

    Args:
        real: uint8 ``[N, T, H, W, 3]``.
        fake: uint8 ``[N, T, H, W, 3]``, same shape.

    Returns:
        float64 ``[N, T]`` in dB; ``inf`` where the two frames are identical.

    Raises:
        ValueError: on a dtype other than uint8, a shape other than ``[N, T, H, W, 3]`` or different shapes.
    """
    r, f = _as_pair(real, fake)
    mse = (r.double() - f.double()).square().mean(dim=(2, 3, 4))  # (N, T)
    return 10.0 * torch.log10(PEAK**2 / mse)  # mse = 0 -> inf


def _gaussian_kernel(device: torch.device) -> torch.Tensor:
    x = torch.arange(SSIM_WINDOW, dtype=torch.float64, device=device) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    return g / g.sum()  # (11,)


def _ssim_images(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of single-channel images ``[B, 1, H, W]`` (float64, 0–255) -> ``[B]``."""
    kh, kw = g.view(1, 1, -1, 1), g.view(1, 1, 1, -1)

    def blur(z: torch.Tensor) -> torch.Tensor:  # separable Gaussian, "valid" positions only
        return F.conv2d(F.conv2d(z, kh), kw)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x.square()
    var_y = blur(y * y) - mu_y.square()
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * PEAK) ** 2, (SSIM_K2 * PEAK) ** 2
    ssim = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    return ssim.mean(dim=(1, 2, 3))


def ssim_per_frame(real: Any, fake: Any) -> torch.Tensor:
    """Structural similarity of each frame (Gaussian 11×11, σ = 1.5, RGB channels averaged).

    Args:
        real: uint8 ``[N, T, H, W, 3]`` with ``H, W >= 11``.
        fake: uint8 ``[N, T, H, W, 3]``, same shape.

    Returns:
        float64 ``[N, T]``, at most 1 (1 for identical frames).

    Raises:
        ValueError: on bad dtype or shapes, or frames smaller than 11×11.
    """
    r, f = _as_pair(real, fake)
    n, t, h, w, c = r.shape
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW} px, got {h}x{w}")
    g = _gaussian_kernel(r.device)
    # (N*T*3, 1, H, W): each channel of each frame is one image
    r_img = r.reshape(n * t, h, w, c).permute(0, 3, 1, 2).reshape(n * t * c, 1, h, w)
    f_img = f.reshape(n * t, h, w, c).permute(0, 3, 1, 2).reshape(n * t * c, 1, h, w)
    step = _FRAMES_PER_CHUNK * c
    out = torch.cat([
        _ssim_images(r_img[i : i + step].double(), f_img[i : i + step].double(), g)
        for i in range(0, r_img.shape[0], step)
    ])
    return out.view(n, t, c).mean(dim=2)


def temporal_mad(videos: Any) -> torch.Tensor:
    """Mean absolute difference between consecutive frames, in intensity levels (0–255).

    Args:
        videos: uint8 ``[N, T, H, W, 3]`` with ``T >= 2``.

    Returns:
        float64 ``[N, T − 1]``; entry ``t`` is ``mean |x_{t+1} − x_t|`` over pixels and channels.

    Raises:
        ValueError: on bad dtype or shape, or ``T < 2``.
    """
    v = _as_video(videos, "videos")
    if v.shape[1] < 2:
        raise ValueError(f"temporal differences need at least 2 frames, got T={v.shape[1]}")
    return (v[:, 1:].double() - v[:, :-1].double()).abs().mean(dim=(2, 3, 4))


def video_quality_metrics(real: Any, fake: Any, n_context_frames: int = 0) -> dict[str, Any]:
    """PSNR, SSIM and temporal consistency of a generated continuation against the real one.

    Frames ``[0, n_context_frames)`` are the given context (copied from the real video) and are left
    out of PSNR/SSIM; the temporal differences start at the step from the last context frame to the
    first generated frame, so a discontinuity at the context boundary is counted.

    Args:
        real: uint8 ``[N, T, H, W, 3]`` real videos (e.g. VQ reconstructions).
        fake: uint8 ``[N, T, H, W, 3]`` generated videos with the same context.
        n_context_frames: ``m``, in ``[0, T − 1]``.

    Returns:
        A dict of Python floats (loggable as metrics) and lists (per generated frame index, mean over
        videos):

        - ``psnr`` (dB), ``ssim``: mean over videos and generated frames (``psnr`` is ``inf`` if
          any generated frame equals its real frame exactly);
        - ``psnr_per_frame``, ``ssim_per_frame``: ``T − m`` values;
        - ``temporal_mad_real``, ``temporal_mad_fake`` (0–255 levels), ``temporal_mad_ratio``
          (fake / real; ``nan`` when the real videos are static);
        - ``temporal_mad_real_per_frame``, ``temporal_mad_fake_per_frame``: one value per step into a
          generated frame (``T − max(m, 1)`` values).

    Raises:
        ValueError: on bad videos or ``n_context_frames`` out of range.
    """
    r, f = _as_pair(real, fake)
    t = r.shape[1]
    m = int(n_context_frames)
    if not 0 <= m < t:
        raise ValueError(f"n_context_frames must be in [0, T-1] = [0, {t - 1}], got {n_context_frames}")
    r_gen, f_gen = r[:, m:], f[:, m:]
    psnr = psnr_per_frame(r_gen, f_gen)  # (N, T-m)
    ssim = ssim_per_frame(r_gen, f_gen)
    out: dict[str, Any] = {
        "psnr": float(psnr.mean()),
        "ssim": float(ssim.mean()),
        "psnr_per_frame": psnr.mean(dim=0).tolist(),
        "ssim_per_frame": ssim.mean(dim=0).tolist(),
    }
    if t >= 2:
        start = max(m - 1, 0)  # include the step from the last context frame into the first generated one
        mad_r, mad_f = temporal_mad(r[:, start:]), temporal_mad(f[:, start:])  # (N, T-1-start)
        real_mean, fake_mean = float(mad_r.mean()), float(mad_f.mean())
        out.update(
            temporal_mad_real=real_mean,
            temporal_mad_fake=fake_mean,
            temporal_mad_ratio=fake_mean / real_mean if real_mean > 0 else math.nan,
            temporal_mad_real_per_frame=mad_r.mean(dim=0).tolist(),
            temporal_mad_fake_per_frame=mad_f.mean(dim=0).tolist(),
        )
    return out
