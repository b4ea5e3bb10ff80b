"""Moving-sprite videos the demo generates for itself, so it runs on any machine with no dataset.

Each video: a smooth two-colour gradient background and 1–3 coloured squares/discs moving at constant
velocity and bouncing off the borders — simple, deterministic dynamics a small model can learn in
minutes, encoded as H.264 MP4 like any user video.

Run alone: ``python -m experiments.synthetic out_dir=outputs/sprites num_videos=16``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from experiments.video_io import write_mp4

log = logging.getLogger(__name__)

__all__ = ["render_sprite_video", "write_sprite_videos"]


def render_sprite_video(
    seed: int, num_frames: int = 48, size: int = 128, max_sprites: int = 3
) -> np.ndarray:
    """Render one moving-sprite video.

    Args:
        seed: RNG seed; the same seed gives the same video.
        num_frames: frames ``T``.
        size: frame height and width in pixels.
        max_sprites: 1 to this many sprites.

    Returns:
        ``uint8 [T, size, size, 3]`` RGB frames.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    c0, c1 = rng.uniform(0, 160, 3), rng.uniform(0, 160, 3)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy + 1.5) / 3.0
    background = c0[None, None] * (1 - ramp[..., None]) + c1[None, None] * ramp[..., None]

    n = int(rng.integers(1, max_sprites + 1))
    radius = rng.uniform(0.08, 0.16, n) * size
    pos = rng.uniform(radius[:, None], size - radius[:, None], (n, 2))
    vel = rng.uniform(1.5, 4.0, (n, 2)) * rng.choice([-1, 1], (n, 2)) * size / 128
    colour = rng.uniform(150, 255, (n, 3)) * (rng.uniform(0, 1, (n, 3)) > 0.3) + 30
    square = rng.uniform(0, 1, n) < 0.5

    frames = np.empty((num_frames, size, size, 3), np.uint8)
    px, py = xx * (size - 1), yy * (size - 1)
    for f in range(num_frames):
        img = background.copy()
        for i in range(n):
            dx, dy = px - pos[i, 0], py - pos[i, 1]
            inside = (np.maximum(abs(dx), abs(dy)) <= radius[i]) if square[i] else (dx**2 + dy**2 <= radius[i] ** 2)
            img[inside] = colour[i]
        frames[f] = np.clip(img, 0, 255).astype(np.uint8)
        pos += vel
        for i in range(n):
            for d in range(2):
                if pos[i, d] < radius[i] or pos[i, d] > size - radius[i]:
                    vel[i, d] *= -1
                    pos[i, d] = np.clip(pos[i, d], radius[i], size - radius[i])
    return frames


def write_sprite_videos(
    out_dir: str | Path, num_videos: int = 16, num_frames: int = 48, size: int = 128, fps: float = 8.0, seed: int = 0
) -> list[Path]:
    """Write ``num_videos`` sprite videos as ``sprites_XXX.mp4`` into ``out_dir``; existing files are kept.

    Returns:
        The paths, in order.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(num_videos):
        path = out / f"sprites_{i:03d}.mp4"
        if not path.exists():
            write_mp4(render_sprite_video(seed * 100003 + i, num_frames, size), path, fps=fps)
        paths.append(path)
    log.info("%d moving-sprite videos in %s", len(paths), out)
    return paths


if __name__ == "__main__":  # pragma: no cover - thin CLI
    import sys

    from experiments.config import apply_overrides
    from omegaconf import OmegaConf

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = apply_overrides(
        OmegaConf.create({"out_dir": "outputs/sprites", "num_videos": 16, "num_frames": 48, "size": 128, "seed": 0}),
        sys.argv[1:],
    )
    write_sprite_videos(cfg.out_dir, cfg.num_videos, cfg.num_frames, cfg.size, seed=cfg.seed)
