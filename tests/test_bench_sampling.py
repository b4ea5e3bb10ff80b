"""benchmarks/bench_sampling.py at a tiny shape: NFE asserted against A.2, identical samples of both heads,
and FLOP counts that follow what each sampler projects (MGM: every still-masked token at every step)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_sampling  # noqa: E402

from maskflow.sampling.unmasking import masked_counts  # noqa: E402

TINY = ["--threads", "1", "--latent", "4", "--codebook", "48", "--depth", "2", "--width", "32", "--heads", "2",
        "--frames", "4", "--context", "2", "--mgm-steps", "3", "--fm-steps", "6", "--df-steps", "6",
        "--rolling-steps", "6", "--extrapolation", "2"]


def test_flops_count_the_backbone_passes_and_each_projected_row():
    args = argparse.Namespace(device="cpu", batch=2, frames=4, context=2, latent=4, codebook=48, depth=2, width=32,
                              heads=2, guidance=0.0, seed=0, repeats=1, bare_cap=2)
    torch.manual_seed(0)
    model, _ = bench_sampling.build_model(args)
    f_hidden, f_dense = bench_sampling.pass_flops(args, 4)
    head_per_video = 2 * 32 * 48 * 4 * 4 * 4  # 2·D·K for each of the window's 4 × 4×4 positions
    assert f_dense - f_hidden == head_per_video  # the dense head, every position of the window
    n = 2 * 4 * 4  # tokens of the 2 generated frames
    masked = bench_sampling.run_case(model, args, "mgm", 3, 4, "masked")
    before = [n] + masked_counts(n, 3, "arccos")[:-1]  # still masked before each step
    assert masked["flops"] == 2 * 3 * f_hidden + 2 * sum(before) * 2 * 32 * 48  # 2 videos × 3 passes
    dense = bench_sampling.run_case(model, args, "mgm", 3, 4, "dense")
    assert dense["flops"] == 2 * 3 * f_dense and torch.equal(dense["tokens"], masked["tokens"])
    fm = bench_sampling.run_case(model, args, "fm", 6, 4, "masked")
    assert fm["flops"] == 2 * 6 * f_hidden + 2 * n * 2 * 32 * 48  # each token projected once, when it jumps
    # --flops-only counts the same without sampling
    counted = bench_sampling.chunk_flops(argparse.Namespace(**{**vars(args), "mgm_steps": 3, "fm_steps": 6}))
    assert (counted["mgm"], counted["fm"], counted["pass"]) == (masked["flops"], fm["flops"], f_hidden)


def test_bench_sampling_runs_every_sampler_with_both_heads(capsys):
    bench_sampling.main(TINY + ["--head-modes", "masked,dense"])
    out, err = capsys.readouterr()
    assert err.count("identical: True") == 8 and "identical: False" not in err  # 4 samplers × 2 lengths
    assert sum(line.startswith(("mgm ", "fm ", "diffusion_forcing ", "rolling ")) for line in out.splitlines()) == 16
    assert "MGM chunk / FM chunk: time ratio" in out and "FLOP ratio" in out
    bench_sampling.main(TINY + ["--flops-only"])
    assert "FLOP ratio" in capsys.readouterr().out
