"""Sampling cost of Flowception against full-sequence MaskFlow for the same final length (appendix D).

    .venv/bin/python benchmarks/bench_flowception.py [--frames 16] [--steps 20] [--repeats 3] [--size small]

Both samplers run the same backbone (a ``rate_head='exp'`` model, random weights: cost does not depend on
what was learnt) on ``B`` videos of ``L`` frames from ``m = 1`` context frame:

- MaskFlow, full sequence (one chunk of ``L`` frames, FM sampler): ``S`` passes over ``L`` frames;
- Flowception (FM per-frame unmasking, Poisson insertions): the rates are an *oracle for the count*,
  ``λ_i = (L − ℓ)/ℓ`` for a window of ``ℓ`` frames, so the ``L − ℓ`` pending frames are inserted at the
  hazard :math:`\\rho_\\kappa` (their insertion times follow ``κ``, as appendix D assumes) and the video
  ends at ``L`` frames (the window's capacity).

Printed per sampler: passes (NFE), frames attended per pass summed over the passes (cost of the
per-frame work: MLPs, spatial attention), the sum of squared window lengths (temporal attention's
quadratic term, appendix D's :math:`\\sum (nL)^2`), wall time (median of interleaved repeats), and the
ratios. Appendix D predicts a speed-up of ``3/α`` on the quadratic term for a linear κ starting from
the empty video, with ``α = T_flow / T_full`` the step ratio (≤ 2 here). That estimate lets the window
grow as ``τ·L`` over all ``α·S`` passes; in Algorithm 1 the clock reaches 1 after ``S`` passes (mean
squared length ``L²/3``) and the remaining ``(α − 1)·S`` passes finish the last-inserted frames on the
full window, so the quadratic term is ``S·L²·(1/3 + α − 1)``: a ratio of ``1/(α − 2/3)`` (with ``S_f``
steps per frame: ``(S/S_f)/(passes/S_f − 2/3)``), printed too.
A third row runs Flowception with ``S/2`` steps per frame (about MaskFlow's number of passes).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from maskflow.models import build_backbone
from maskflow.sampling import SamplerConfig, generate


class CountOracle(nn.Module):
    """The backbone's full forward cost, with rates ``(L − ℓ)/ℓ`` per frame instead of its own."""

    has_rate_head = True

    def __init__(self, backbone: nn.Module, final_length: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.final_length = final_length
        self.config = backbone.config

    @property
    def codebook_size(self) -> int:
        return self.backbone.codebook_size

    @property
    def mask_token_id(self) -> int:
        return self.backbone.mask_token_id

    def project_positions(self, hidden, index):
        return self.backbone.project_positions(hidden, index)

    def forward(self, tokens, t, *, return_hidden=False, frame_mask=None, return_log_rates=False):
        out, _ = self.backbone(tokens, t, return_hidden=return_hidden, frame_mask=frame_mask, return_log_rates=True)
        length = frame_mask.sum(dim=1, keepdim=True).float()  # (R, 1)
        pending = (self.final_length - length).clamp_min(0) / length
        log_rates = pending.clamp_min(1e-12).log().expand(tokens.shape[:2])
        return (out, log_rates) if return_log_rates else out


def run(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    backbone = build_backbone(args.size, codebook_size=args.codebook, latent_size=args.latent, rate_head="exp").eval()
    oracle = CountOracle(backbone, args.frames).eval()
    L, S, m = args.frames, args.steps, 1
    ctx = torch.randint(0, args.codebook, (args.batch, m, args.latent, args.latent))
    full = SamplerConfig(sampler="fm", sampling_steps=S, chunk_size=L, n_context_frames=m, scheduler=args.scheduler)
    flow = SamplerConfig(sampler="flowception", sampling_steps=S, chunk_size=L, n_context_frames=m,
                         scheduler=args.scheduler, insertion="poisson")
    half = SamplerConfig(**{**flow.__dict__, "sampling_steps": max(1, S // 2)})
    runs = (("maskflow", backbone, full), ("flowception", oracle, flow), ("flowception S/2", oracle, half))
    times = {name: [] for name, _, _ in runs}
    stats = {}
    for r in range(args.repeats):
        for name, model, cfg in runs:
            t0 = time.perf_counter()
            res = generate(model, ctx, L, cfg, generator=torch.Generator().manual_seed(r))
            times[name].append(time.perf_counter() - t0)
            per_pass = res.frames_per_step if res.frames_per_step is not None else [L] * res.nfe
            s = stats.setdefault(name, {"nfe": [], "frames": [], "squares": [], "length": []})
            s["nfe"].append(res.nfe)
            s["frames"].append(sum(per_pass))
            s["squares"].append(sum(f * f for f in per_pass))
            s["length"].append(statistics.mean(res.lengths) if res.lengths else L)
    print(f"backbone {args.size} (latent {args.latent}, K {args.codebook}), B={args.batch}, L={L} frames from m={m}, "
          f"S={S}, scheduler {args.scheduler}, {args.repeats} interleaved repeats, {args.threads} thread(s)")
    row = "{:<16} {:>7} {:>8} {:>14} {:>14} {:>8}"
    print(row.format("sampler", "NFE", "length", "Σ frames/pass", "Σ frames²", "wall s"))
    for name in times:
        s = stats[name]
        print(row.format(name, f"{statistics.mean(s['nfe']):.1f}", f"{statistics.mean(s['length']):.2f}",
                         f"{statistics.mean(s['frames']):.0f}", f"{statistics.mean(s['squares']):.0f}",
                         f"{statistics.median(times[name]):.2f}"))
    f = stats["maskflow"]
    for name in ("flowception", "flowception S/2"):
        g = stats[name]
        alpha = statistics.mean(g["nfe"]) / statistics.mean(f["nfe"])
        steps_ratio = statistics.mean(g["nfe"]) / (S if name == "flowception" else max(1, S // 2))
        own = S if name == "flowception" else max(1, S // 2)
        print(f"{name}: alpha = {alpha:.2f} (passes / MaskFlow's), {steps_ratio:.2f} x its own S; appendix D's 3/alpha = "
              f"{3 / alpha:.2f}x; Algorithm 1 accounting (S/S_f)/(passes/S_f - 2/3) = {S / own / (steps_ratio - 2 / 3):.2f}x")
        print(f"  measured (MaskFlow / {name}): quadratic term "
              f"{statistics.mean(f['squares']) / statistics.mean(g['squares']):.2f}x, per-frame work "
              f"{statistics.mean(f['frames']) / statistics.mean(g['frames']):.2f}x, wall time "
              f"{statistics.median(times['maskflow']) / statistics.median(times[name]):.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--size", default="small")
    p.add_argument("--latent", type=int, default=16)
    p.add_argument("--codebook", type=int, default=256)
    p.add_argument("--scheduler", default="linear")
    p.add_argument("--threads", type=int, default=1)
    run(p.parse_args())


if __name__ == "__main__":
    main()
