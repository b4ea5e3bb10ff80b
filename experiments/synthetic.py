"""Moving-sprite videos the demo generates for itself, so it runs on any machine with no dataset.

Each video: a plain background and 1–3 squares/discs moving at constant velocity, bouncing off the
borders or (``motion="kinds"``, the demo's default) wrapping around them with a velocity set by the
sprite's colour — deterministic dynamics, so a continuation has a ground truth, encoded as H.264 MP4
like any user video. Every video draws its background from :data:`BACKGROUNDS` and its sprite colours from
:data:`PALETTE`: what a tokenizer fitted on the training videos learns (colours, edges of the sprite
kinds over each background) is what a held-out video is made of, so held-out clips can be learned and
evaluated (with per-video colours or gradients each video would get codes of its own).

Run alone: ``python -m experiments.synthetic out_dir=outputs/sprites num_videos=64``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from experiments.video_io import write_mp4

log = logging.getLogger(__name__)

__all__ = ["PALETTE", "BACKGROUNDS", "KIND_VELOCITIES", "MOTIONS", "render_sprite_video", "write_sprite_videos"]

#: sprite colours (RGB) shared by every video
PALETTE = np.array(
    [[235, 70, 60], [70, 205, 90], [75, 120, 245], [245, 215, 70], [225, 95, 225], [80, 225, 235]], dtype=np.float32
)
#: plain backgrounds (RGB) shared by every video
BACKGROUNDS = np.array([[25, 25, 35], [55, 50, 80], [20, 60, 45]], dtype=np.float32)


#: ``motion="kinds"``: the velocity (cells per frame, (x, y)) of a sprite of each :data:`PALETTE` colour:
#: right or down. Two directions, so the demo's CPU-sized model learns them in minutes
#: (``benchmarks/bench_motion_learning.py --task kinds``, ``tiny``: ``p(fg)`` 0.886 after 2000 steps with 2
#: directions, 0.412 with 8).
KIND_VELOCITIES = np.array([[1, 0], [0, 1], [1, 0], [0, 1], [1, 0], [0, 1]], dtype=np.int64)

MOTIONS = ("smooth", "grid", "kinds")


def render_sprite_video(
    seed: int,
    num_frames: int = 48,
    size: int = 128,
    max_sprites: int = 3,
    motion: str = "smooth",
    grid_cells: int = 8,
) -> np.ndarray:
    """Render one moving-sprite video.

    ``motion="smooth"``: sprites (square or disc, radius 8–14 % of the frame, colour from
    :data:`PALETTE`) start at random positions with constant velocities of 1.5–4 px per frame per axis
    at 128 px (scaled with ``size``) and bounce off the borders.

    ``motion="grid"``: the frame is a ``grid_cells × grid_cells`` grid (set it to the tokenizer's token
    grid, ``resolution / patch_size``); sprites (square or disc inscribed in 1×1 or 2×2 cells) sit on
    cells and move by −1, 0 or +1 cell per frame per axis (never both 0), bouncing off the borders. A
    sprite then keeps its tokens exactly from frame to frame, shifted by its velocity: the dynamics a
    small model learns in minutes on a CPU, with a ground-truth continuation at token level.

    ``motion="kinds"``: as ``"grid"``, but a sprite's velocity is the one of its colour
    (:data:`KIND_VELOCITIES`: one cell per frame, right or down) and sprites wrap around the borders
    instead of bouncing. Motion is then a property of the sprite kind, the same in every video: what the
    demo's ``tiny`` model learns within its CPU budget, where reading each sprite's own direction off the
    context frames takes many times the steps (docs/training.md).

    In all, later sprites are drawn over earlier ones.

    Args:
        seed: RNG seed; the same seed gives the same video.
        num_frames: frames ``T``.
        size: frame height and width in pixels.
        max_sprites: 1 to this many sprites.
        motion: ``"smooth"``, ``"grid"`` or ``"kinds"``.
        grid_cells: cells per side for ``motion="grid"`` and ``"kinds"``; must divide ``size``.

    Returns:
        ``uint8 [T, size, size, 3]`` RGB frames.

    Raises:
        ValueError: unknown ``motion``, or ``grid_cells`` not dividing ``size`` or below 3.
    """
    if motion not in MOTIONS:
        raise ValueError(f"motion={motion!r}: expected one of {MOTIONS}")
    if motion in ("grid", "kinds"):
        return _render_grid_sprites(seed, num_frames, size, max_sprites, grid_cells, kinds=motion == "kinds")
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


def _render_grid_sprites(
    seed: int, num_frames: int, size: int, max_sprites: int, cells: int, kinds: bool = False
) -> np.ndarray:
    """``motion="grid"`` (``kinds=False``) and ``motion="kinds"`` of :func:`render_sprite_video`."""
    if cells < 3 or size % cells:
        raise ValueError(f"grid_cells={cells} must be at least 3 and divide size={size}")
    cell = size // cells
    rng = np.random.default_rng(seed)
    background = np.broadcast_to(BACKGROUNDS[rng.integers(len(BACKGROUNDS))], (size, size, 3))
    n = int(rng.integers(1, max_sprites + 1))
    side = rng.integers(1, 3, n)  # cells
    pos = np.stack([rng.integers(0, cells - side + 1) for _ in range(2)], axis=1)  # [n, 2] (x, y) cells
    vel = rng.integers(-1, 2, (n, 2))
    still = (vel == 0).all(axis=1)
    vel[still, rng.integers(0, 2, int(still.sum()))] = rng.choice([-1, 1], int(still.sum()))
    kind = rng.choice(len(PALETTE), n, replace=False)
    colour = PALETTE[kind]
    if kinds:  # the random velocities above are still drawn: the same seed places the same sprites
        vel = KIND_VELOCITIES[kind].copy()
    square = rng.uniform(0, 1, n) < 0.5
    shapes = []
    for i in range(n):
        w = int(side[i]) * cell
        yy, xx = np.mgrid[0:w, 0:w].astype(np.float32) + 0.5 - w / 2
        shapes.append(np.ones((w, w), bool) if square[i] else xx**2 + yy**2 <= (w / 2) ** 2)

    frames = np.empty((num_frames, size, size, 3), np.uint8)
    for f in range(num_frames):
        img = background.copy()
        for i in range(n):
            x0, y0 = pos[i] * cell
            w = shapes[i].shape[0]
            rows, cols = np.ix_((y0 + np.arange(w)) % size, (x0 + np.arange(w)) % size)  # wraps (kinds only)
            patch = img[rows, cols]
            patch[shapes[i]] = colour[i]
            img[rows, cols] = patch
        frames[f] = img.astype(np.uint8)
        for i in range(n):
            for d in range(2):
                nxt = pos[i, d] + vel[i, d]
                if kinds:
                    nxt %= cells
                elif nxt < 0 or nxt > cells - side[i]:
                    vel[i, d] *= -1
                    nxt = pos[i, d] + vel[i, d]
                pos[i, d] = nxt
    return frames


def write_sprite_videos(
    out_dir: str | Path,
    num_videos: int = 64,
    num_frames: int = 48,
    size: int = 128,
    fps: float = 8.0,
    seed: int = 0,
    motion: str = "smooth",
    grid_cells: int = 8,
    crf: int = 0,
) -> list[Path]:
    """Write ``num_videos`` sprite videos as ``sprites_XXX.mp4`` into ``out_dir``; existing files are kept.

    The render settings are recorded in ``out_dir/render.json``; a directory rendered with other
    settings, or holding ``sprites_*.mp4`` with no record of how they were rendered, is refused (its
    videos would silently be reused), so a rerun with the same ``out_dir`` reuses only videos that match.

    ``motion`` and ``grid_cells`` as in :func:`render_sprite_video`. The videos are H.264 4:4:4 at
    ``crf`` (0, the default, is lossless: decoded frames equal the rendered ones to ±1). Chroma
    subsampling and compression noise would make the same sprite decode differently next to different
    neighbours and in different frames, giving the same content different codes: noise no model can
    predict, which a small model memorises instead of learning the motion.

    Returns:
        The paths, in order.

    Raises:
        ValueError: ``out_dir`` holds videos rendered with other settings (named) or sprite videos with no
            ``render.json``; nothing is written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"num_frames": int(num_frames), "size": int(size), "fps": float(fps), "seed": int(seed),
                "motion": str(motion), "grid_cells": int(grid_cells), "crf": int(crf)}
    record = out / "render.json"
    if record.exists():
        before = json.loads(record.read_text())
        changed = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
        if changed:
            raise ValueError(
                f"{out} holds sprite videos rendered with other settings ("
                + ", ".join(f"{k}: {a!r} there, {b!r} asked" for k, (a, b) in changed.items())
                + "); render into another directory (the demo: another out_dir)"
            )
    elif any(out.glob("sprites_*.mp4")):
        raise ValueError(
            f"{out} holds sprite videos with no record of their render settings ({record.name}); "
            "render into another directory (the demo: another out_dir)"
        )
    else:
        record.write_text(json.dumps(settings, indent=1))
    paths = []
    for i in range(num_videos):
        path = out / f"sprites_{i:03d}.mp4"
        if not path.exists():
            frames = render_sprite_video(seed * 100003 + i, num_frames, size, motion=motion, grid_cells=grid_cells)
            write_mp4(frames, path, fps=fps, crf=crf, pix_fmt="yuv444p")
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
