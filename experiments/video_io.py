"""Writing sample videos people can look at: MP4 (H.264 through PyAV's bundled FFmpeg) and GIF.

PyAV is already a dependency (the decoder fallback) and ships libx264, so no system FFmpeg is needed.
The MLflow UI previews both formats.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["write_mp4", "write_gif", "upscale", "side_by_side", "mark_context", "frame_strip"]


def _as_uint8(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    x = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {x.dtype} {x.shape}")
    if x.shape[0] == 0:
        raise ValueError("cannot write a video with 0 frames")
    return x


def upscale(frames: np.ndarray | torch.Tensor, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of ``uint8 [T, H, W, 3]`` by an integer ``factor`` (keeps tokens crisp)."""
    x = _as_uint8(frames)
    if factor <= 1:
        return x
    return x.repeat(factor, axis=1).repeat(factor, axis=2)


def mark_context(frames: np.ndarray | torch.Tensor, n_context_frames: int, width: int = 1) -> np.ndarray:
    """Copy of ``uint8 [T, H, W, 3]`` with a red border on the first ``n_context_frames`` (as the paper's figures)."""
    x = _as_uint8(frames).copy()
    red = np.array([255, 0, 0], dtype=np.uint8)
    for f in range(min(n_context_frames, len(x))):
        x[f, :width] = red
        x[f, -width:] = red
        x[f, :, :width] = red
        x[f, :, -width:] = red
    return x


def side_by_side(*videos: np.ndarray | torch.Tensor, gap: int = 2) -> np.ndarray:
    """Concatenate equally long ``uint8 [T, H, W, 3]`` videos horizontally with a white gap."""
    xs = [_as_uint8(v) for v in videos]
    t = min(len(v) for v in xs)
    h = max(v.shape[1] for v in xs)
    parts = []
    for i, v in enumerate(xs):
        v = v[:t]
        if v.shape[1] < h:
            v = np.pad(v, ((0, 0), (0, h - v.shape[1]), (0, 0), (0, 0)))
        parts.append(v)
        if i < len(xs) - 1 and gap:
            parts.append(np.full((t, h, gap, 3), 255, np.uint8))
    return np.concatenate(parts, axis=2)


def frame_strip(real: np.ndarray | torch.Tensor | None, fake: np.ndarray | torch.Tensor, n_context_frames: int,
                *, max_frames: int = 16, height: int = 96, gap: int = 2) -> np.ndarray:
    """One image of a clip: its frames left to right, the real clip's row above the generated one.

    Args:
        real: ``uint8 [T, H, W, 3]`` or ``None`` (generated row only).
        fake: ``uint8 [T, H, W, 3]``.
        n_context_frames: the first ``m`` frames get a red border (:func:`mark_context`).
        max_frames: at most this many frames, evenly spaced from first to last.
        height: frames are upscaled by the integer factor that brings them nearest this height.
        gap: white pixels between frames and rows.

    Returns:
        ``uint8 [rows·H' + gaps, n·W' + gaps, 3]``.
    """
    rows = [mark_context(v, n_context_frames) for v in ((real, fake) if real is not None else (fake,))]
    t = min(len(r) for r in rows)
    idx = np.unique(np.linspace(0, t - 1, min(t, max_frames)).round().astype(int))
    scale = max(1, round(height / rows[0].shape[1]))
    strips = [side_by_side(*[upscale(r[i : i + 1], scale) for i in idx], gap=gap)[0] for r in rows]
    w = max(s.shape[1] for s in strips)
    out = []
    for i, s in enumerate(strips):
        out.append(np.pad(s, ((0, 0), (0, w - s.shape[1]), (0, 0)), constant_values=255))
        if i < len(strips) - 1:
            out.append(np.full((gap, w, 3), 255, np.uint8))
    return np.concatenate(out, axis=0)


def write_mp4(
    frames: np.ndarray | torch.Tensor, path: str | Path, fps: float = 8.0, crf: int = 18, pix_fmt: str = "yuv420p"
) -> Path:
    """Encode ``uint8 [T, H, W, 3]`` RGB as H.264 MP4.

    ``pix_fmt="yuv420p"`` (default; what every player shows; odd sizes are padded by one pixel) or
    ``"yuv444p"`` (no chroma subsampling: with ``crf=0`` the decoded frames equal the input to ±1).

    Raises:
        ValueError: for a wrong dtype/shape, an empty video or another ``pix_fmt``.
    """
    if pix_fmt not in ("yuv420p", "yuv444p"):
        raise ValueError(f"pix_fmt={pix_fmt!r}: expected 'yuv420p' or 'yuv444p'")
    import av

    x = _as_uint8(frames)
    pad_h, pad_w = (x.shape[1] % 2, x.shape[2] % 2) if pix_fmt == "yuv420p" else (0, 0)
    if pad_h or pad_w:
        x = np.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from fractions import Fraction

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = x.shape[2], x.shape[1]
        stream.pix_fmt = pix_fmt
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for frame in x:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_gif(frames: np.ndarray | torch.Tensor, path: str | Path, fps: float = 8.0) -> Path:
    """Write ``uint8 [T, H, W, 3]`` as a looping GIF (imageio + Pillow)."""
    import imageio.v3 as iio

    x = _as_uint8(frames)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, x, extension=".gif", duration=1000.0 / fps, loop=0)
    return path
