"""Cost of FVD's I3D features on CPU, and of its max-pools against ``F.max_pool3d`` side by side.

    .venv/bin/python benchmarks/bench_fvd.py [--clips 6] [--frames 100] [--threads 1] [--repeats 3]

FVD dominates a long evaluation trial on CPU (6 generated clips of 100 frames: about 30 s of I3D
against about 3 s of MGM sampling at ``preset=cpu`` of the reproduction). Printed:

- I3D feature extraction (bundled Kinetics-400 weights, the FVD path) on ``clips × frames`` uint8
  frames, with the separable pools and with ``F.max_pool3d`` ones, interleaved: seconds per clip and
  per frame (median of the repeats) and their ratio;
- each of I3D's max-pools on the activations it receives for one such clip (recorded by hooks on the
  network): the separable pool of
  :class:`maskflow.metrics.i3d.MaxPool3dSame` against the reference ``F.max_pool3d`` on the padded
  input, interleaved (median of the repeats), their ratio, and whether the values are identical.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from maskflow.metrics.fvd import _bundled_extractor
from maskflow.metrics.i3d import MaxPool3dSame, _same_padding


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels before I3D's resize to 224")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    videos = rng.integers(0, 256, (args.clips, args.frames, args.size, args.size, 3), dtype=np.uint8)

    extractor = _bundled_extractor("cpu", 256)
    extractor(videos[:1, :16])  # warm-up (weights loaded, allocator primed)
    separable_forward = MaxPool3dSame.forward

    def reference_forward(self, x):
        return F.max_pool3d(F.pad(x, _same_padding(x.shape[2:], self.kernel, self.stride)), self.kernel, self.stride)

    runs: dict[str, list[float]] = {"separable pools": [], "max_pool3d pools": []}
    for _ in range(args.repeats):  # interleaved
        for label, forward in (("separable pools", separable_forward), ("max_pool3d pools", reference_forward)):
            MaxPool3dSame.forward = forward
            try:
                runs[label].append(_median_seconds(lambda: extractor(videos), 1))
            finally:
                MaxPool3dSame.forward = separable_forward
    n = args.clips * args.frames
    for label, times in runs.items():
        sec = statistics.median(times)
        print(f"I3D features ({label}), {args.clips} clips x {args.frames} frames at {args.threads} thread(s): "
              f"{sec:.2f} s ({sec / args.clips:.2f} s per clip, {1000 * sec / n:.1f} ms per frame)")
    ratio = statistics.median(runs["separable pools"]) / statistics.median(runs["max_pool3d pools"])
    print(f"ratio separable / max_pool3d, whole I3D: {ratio:.2f}")

    # the pools at the inputs they see for one clip of this length, recorded from the network itself
    pool_inputs: dict[str, torch.Tensor] = {}
    hooks = [
        module.register_forward_pre_hook(lambda _m, inputs, name=name: pool_inputs.setdefault(name, inputs[0].clone()))
        for name, module in extractor.model.named_modules() if isinstance(module, MaxPool3dSame)
    ]
    try:
        extractor(videos[:1])
    finally:
        for hook in hooks:
            hook.remove()
    print(f"{'pool':<24} {'input':<22} {'separable ms':>13} {'max_pool3d ms':>14} {'ratio':>6}  identical")
    modules = dict(extractor.model.named_modules())
    for name, x in pool_inputs.items():
        pool = modules[name]
        kernel, stride = pool.kernel, pool.stride
        pad = _same_padding(x.shape[2:], kernel, stride)

        def reference():
            return F.max_pool3d(F.pad(x, pad), kernel, stride)

        new_t, ref_t = [], []
        for _ in range(args.repeats):  # interleaved: the machine's noise hits both alike
            new_t.append(_median_seconds(lambda: pool(x), 1))
            ref_t.append(_median_seconds(reference, 1))
        a, b = statistics.median(new_t), statistics.median(ref_t)
        same = torch.equal(pool(x), reference())
        print(f"{name:<24} {str(tuple(x.shape[1:])):<22} {1000 * a:>13.1f} {1000 * b:>14.1f} {a / b:>6.2f}  {same}")


if __name__ == "__main__":
    main()
