"""How many steps the backbone needs to learn to move sprites: a learning-speed probe on token grids.

    .venv/bin/python benchmarks/bench_motion_learning.py [--task shift] [--size small] [--patch-size 2]
        [--steps 1500] [--sprites 4] [--lr 1e-3] [--every 100] [--threads 1] [--frames 4]
        [--kind-directions 8] [--depth D] [--width W]

No tokenizer, no Ray: clips of ``--frames`` frames on an ``--grid`` × ``--grid`` token grid, a background
code (one of 3) and ``--sprites`` one-token sprites (codes 3–14), with

- ``--task static``: sprites stand still (the continuation is a copy of the last context frame);
- ``--task shift``: every sprite moves one cell to the right per frame (wrapping around): one known
  direction;
- ``--task kinds``: each sprite moves by the velocity of its code (one of the 8 neighbour directions,
  fixed per code; ``--kind-directions 2`` or ``4``: right/down or right/down/left/up only): the direction
  is a property of the sprite kind, learnt once for every video;
- ``--task directions``: each sprite moves by its own velocity in {−1, 0, 1}² ∖ {0} (wrapping around),
  which the model must read off the two context frames.

The model sees frames 0–1 clean (``t = 1``) and the rest fully masked (``t = 0``), and is trained with
cross-entropy on the masked frames only: the most direct supervision of extrapolation there is (the
frame-level objective of Algorithm 1 spreads its loss over many other corruptions). Printed every
``--every`` steps: loss, and on a fixed batch of fresh clips the mean probability of the true code at
foreground (sprite) tokens and at background tokens of the masked frames. A model that learnt the task has
``p(fg)`` near 1; one that predicts background everywhere ("sprites fade") has ``p(fg)`` near 0.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from maskflow.models import build_backbone

TASKS = ("static", "shift", "kinds", "directions")
DIRECTIONS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]  # (row, column) per frame
#: ``--task kinds --kind-directions N``: the velocities the sprite codes cycle through (2: right or down,
#: as the demo's ``synthetic_motion=kinds``; 4: also left and up; 8: every neighbour)
KIND_DIRECTIONS = {2: [(0, 1), (1, 0)], 4: [(0, 1), (1, 0), (0, -1), (-1, 0)], 8: DIRECTIONS}
NUM_CODES = 16  # 3 backgrounds, 12 sprite codes, one spare


def make_clips(
    rng: np.random.Generator, n: int, frames: int, grid: int, sprites: int, task: str, kind_directions: int = 8
) -> torch.Tensor:
    """int64 ``[n, frames, grid, grid]`` clips of ``task`` (see the module docstring)."""
    x = np.repeat(rng.integers(0, 3, (n, 1, 1, 1)), frames, axis=1).repeat(grid, 2).repeat(grid, 3)
    for b in range(n):
        for _ in range(sprites):
            r, c = rng.integers(0, grid, 2)
            code = rng.integers(3, 15)
            if task == "static":
                v = (0, 0)
            elif task == "shift":
                v = (0, 1)
            elif task == "kinds":
                velocities = KIND_DIRECTIONS[kind_directions]
                v = velocities[int(code - 3) % len(velocities)]
            else:
                v = (0, 0)
                while v == (0, 0):
                    v = tuple(int(a) for a in rng.integers(-1, 2, 2))
            for f in range(frames):
                x[b, f, (r + v[0] * f) % grid, (c + v[1] * f) % grid] = code
    return torch.from_numpy(x).long()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=TASKS, default="shift")
    parser.add_argument("--size", default="small", help="backbone size (maskflow.models.MODEL_SIZES)")
    parser.add_argument("--patch-size", type=int, default=2)
    parser.add_argument("--kind-directions", type=int, choices=sorted(KIND_DIRECTIONS), default=8,
                        help="--task kinds: how many distinct velocities the sprite codes have")
    parser.add_argument("--depth", type=int, default=None, help="override the size's depth (blocks)")
    parser.add_argument("--width", type=int, default=None, help="override the size's hidden size")
    parser.add_argument("--grid", type=int, default=8)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--sprites", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    overrides = {k: v for k, v in (("depth", args.depth), ("hidden_size", args.width)) if v is not None}
    model = build_backbone(
        args.size, codebook_size=NUM_CODES, latent_size=args.grid, patch_size=args.patch_size, **overrides
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    probe = make_clips(
        np.random.default_rng(args.seed + 1), 64, args.frames, args.grid, args.sprites, args.task, args.kind_directions
    )
    levels = torch.zeros(args.batch_size, args.frames)
    levels[:, :2] = 1.0

    def masked(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[:, 2:] = model.mask_token_id
        return x

    kinds = f" ({args.kind_directions} directions)" if args.task == "kinds" else ""
    print(f"task={args.task}{kinds} size={args.size} {overrides or ''} p={args.patch_size} grid={args.grid} "
          f"frames={args.frames} sprites={args.sprites} batch={args.batch_size} lr={args.lr}")
    t0 = time.perf_counter()
    for step in range(args.steps + 1):
        if step % args.every == 0:
            model.eval()
            with torch.no_grad():
                t = torch.zeros(len(probe), args.frames)
                t[:, :2] = 1.0
                p = model(masked(probe), t)[:, 2:].softmax(-1).gather(-1, probe[:, 2:, ..., None])[..., 0]
            fg = probe[:, 2:] >= 3
            model.train()
            print(f"step {step:>5}  {time.perf_counter() - t0:7.1f} s  p(fg) {float(p[fg].mean()):.3f}  "
                  f"p(bg) {float(p[~fg].mean()):.3f}", flush=True)
        if step == args.steps:
            break
        x = make_clips(rng, args.batch_size, args.frames, args.grid, args.sprites, args.task, args.kind_directions)
        logits = model(masked(x), levels)[:, 2:]
        loss = F.cross_entropy(logits.reshape(-1, NUM_CODES), x[:, 2:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    main()
