"""Moving-sprite videos the demo generates for itself, so it runs on any machine with no dataset.

Each video: a plain background and 1–3 squares/discs moving at constant velocity and bouncing off the
borders — deterministic dynamics, so a continuation has a ground truth, encoded as H.264 MP4 like any
user video. Every video draws its background from :data:`BACKGROUNDS` and its sprite colours from
:data:`PALETTE`: what a tokenizer fitted on the training videos learns (colours, edges of the sprite
kinds over each background) is what a held-out video is made of, so held-out clips can be learned and
evaluated (with per-video colours or gradients each video would get codes of its own).

Run alone: ``python -m experiments.synthetic out_dir=outputs/sprites num_videos=64``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from experiments.video_io import write_mp4

log = logging.getLogger(__name__)

__all__ = ["PALETTE", "BACKGROUNDS", "render_sprite_video", "write_sprite_videos"]

#: sprite colours (RGB) shared by every video
PALETTE = np.array(
    [[235, 70, 60], [70, 205, 90], [75, 120, 245], [245, 215, 70], [225, 95, 225], [80, 225, 235]], dtype=np.float32
)
#: plain backgrounds (RGB) shared by every video
BACKGROUNDS = np.array([[25, 25, 35], [55, 50, 80], [20, 60, 45]], dtype=np.float32)


def render_sprite_video(
    seed: int, num_frames: int = 48, size: int = 128, max_sprites: int = 3
) -> np.ndarray:
    """Render one moving-sprite video.

    Sprites (square or disc, radius 8–14 % of the frame, colour from :data:`PALETTE`) start at random
    positions with constant velocities of 1.5–4 px per frame per axis at 128 px (scaled with ``size``)
    and bounce off the borders; later sprites are drawn over earlier ones.

    Args:
        seed: RNG seed; the same seed gives the same video.
        num_frames: frames ``T``.
        size: frame height and width in pixels.
        max_sprites: 1 to this many sprites.

    Returns:
        ``uint8 [T, size, size, 3]`` RGB frames.
    """
    rng = np.random.default_rng(seed)
    background = np.broadcast_to(BACKGROUNDS[rng.integers(len(BACKGROUNDS))], (size, size, 3))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)

    n = int(rng.integers(1, max_sprites + 1))
    radius = rng.uniform(0.08, 0.14, n) * size
    pos = rng.uniform(radius[:, None], size - radius[:, None], (n, 2))
    vel = rng.uniform(1.5, 4.0, (n, 2)) * rng.choice([-1, 1], (n, 2)) * size / 128
    colour = PALETTE[rng.choice(len(PALETTE), n, replace=False)]
    square = rng.uniform(0, 1, n) < 0.5

    frames = np.empty((num_frames, size, size, 3), np.uint8)
    for f in range(num_frames):
        img = background.copy()
        for i in range(n):
            dx, dy = xx - pos[i, 0], yy - pos[i, 1]
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
    out_dir: str | Path, num_videos: int = 64, num_frames: int = 48, size: int = 128, fps: float = 8.0, seed: int = 0
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
        OmegaConf.create({"out_dir": "outputs/sprites", "num_videos": 64, "num_frames": 48, "size": 128, "seed": 0}),
        sys.argv[1:],
    )
    write_sprite_videos(cfg.out_dir, cfg.num_videos, cfg.num_frames, cfg.size, seed=cfg.seed)
