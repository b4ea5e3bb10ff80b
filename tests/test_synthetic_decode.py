"""Sprite videos through the tokenizing job's decoder: what the demo's tokenizer sees.

The demo renders its sprite videos at the tokenizer's resolution. Rendered larger, the decoder's bicubic
resize rings around every sprite edge, and k-means gives each halo (per colour, background and side)
codes of its own: measured on the demo's 256 videos, 253 foreground codes and a foreground share of 24 %
instead of 111 codes and 8.5 %.
"""

from __future__ import annotations

import numpy as np

from experiments.synthetic import BACKGROUNDS, PALETTE, render_sprite_video, write_sprite_videos
from pipeline.decode import DecodeConfig, decode_video

COLOURS = np.concatenate([PALETTE, BACKGROUNDS]).astype(int)  # [9, 3]


def _off_palette_share(frames: np.ndarray) -> float:
    """Share of pixels farther than ±2 per channel from every sprite and background colour."""
    dist = np.abs(frames.reshape(-1, 1, 3).astype(int) - COLOURS[None]).max(-1).min(-1)
    return float((dist > 2).mean())


def test_sprites_rendered_at_the_resolution_decode_exactly_and_resized_ones_ring(tmp_path):
    res, cells, frames = 64, 8, 4
    exact = write_sprite_videos(tmp_path / "exact", num_videos=1, num_frames=frames, size=res, motion="grid", grid_cells=cells)
    resized = write_sprite_videos(tmp_path / "big", num_videos=1, num_frames=frames, size=2 * res, motion="grid", grid_cells=cells)
    cfg = DecodeConfig(resolution=res, min_frames=1)
    decoded = decode_video(str(exact[0]), cfg)
    assert decoded.ok and decoded.frames.shape == (frames, res, res, 3)
    rendered = render_sprite_video(0, frames, res, motion="grid", grid_cells=cells)  # seed 0 * 100003 + 0
    assert np.abs(decoded.frames.astype(int) - rendered).max() <= 1
    assert _off_palette_share(decoded.frames) == 0.0
    # the same video rendered at twice the size and shrunk by the decoder: halo pixels around the sprites
    shrunk = decode_video(str(resized[0]), cfg)
    assert shrunk.ok and shrunk.frames.shape == (frames, res, res, 3)
    assert _off_palette_share(shrunk.frames) > 0.005
