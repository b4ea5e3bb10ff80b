"""Training-step cost of the MaskFlow backbone: time, tokens/s, peak memory, MFU, and the one-hot it avoids.

Usage::

    python benchmarks/bench_training.py                 # B/2; paper shape on GPU, a reduced shape on CPU
    python benchmarks/bench_training.py --shape-a       # also the notes' "shape A" (S/2, 2×16×32×32, K=16384)
    python benchmarks/bench_training.py --frames 16 --latent 32 --batch 2   # force a shape
    python benchmarks/bench_training.py --threads 1     # on a busy CPU box, one thread is often much faster
    python benchmarks/bench_training.py --cases shape_a --steps 1   # only shape A
    python benchmarks/bench_training.py --head-modes masked,dense --cases main   # the K-way head side by side
    python benchmarks/bench_training.py --cases shape_a --head-modes masked,dense --checkpointing-modes off,on \
        --threads 2 --repeats 2    # the masked-head targets: every combination, interleaved, ratios printed
    python benchmarks/bench_training.py --device cuda --max-batch-gib 80 --sizes B/2,XL/2 --head-modes masked,dense \
        --steps 3                  # GPU: the largest batch per 80 GB at the paper shape, its step time and MFU

What is measured, per configuration (each in a fresh subprocess so that peak memory is its own):

* one full optimiser step of :func:`maskflow.training.train_step` — level sampling, Bernoulli masking,
  forward, masked cross-entropy with fused-SNR weights, backward, grad clipping, AdamW, EMA — median
  over ``--steps`` steps after one warm-up step;
* tokens/s = ``B·T·h·w`` / step time; achieved FLOP/s from an analytic FLOP count (3× forward: matmuls
  and attention), and on CUDA the MFU against the device's dense bf16 peak;
* peak memory: CUDA ``max_memory_allocated``, or on CPU the process's peak RSS (absolute, and its
  growth during the steps over the RSS after building model and optimiser);
* with ``--head-modes masked,dense`` every case runs twice, once with the ``K``-way head only at the masked
  positions, fused with the cross-entropy in chunks (``ObjectiveConfig(head='masked')``, the default)
  and once with the dense head and loss (``head='dense'``, the reference), and a side-by-side table
  (step time, peak memory, loss) closes the report; ``--checkpointing-modes off,on`` adds activation
  checkpointing as a second axis, and for shape A the ratios are printed against the targets of the
  masked-only head (time ≤ 0.6× and memory ≤ 0.4× of the dense reference, ≤ 0.25× the authors' 20 GB);
* corruption alone (levels + masks), to compare with the dense one-hot corruption of the authors' code,
  whose size ``B·T·h·w·(K+1)`` float32 values is computed (not allocated);
* with ``--max-batch-gib G`` (CUDA only) instead: for each of ``--sizes`` and ``--head-modes``, the
  largest batch whose training step fits in ``G`` GiB (the allocator capped to ``G`` on a larger GPU;
  an out-of-memory error counts as not fitting), found from the peak memory of batches 1 and 2 and
  checked around the prediction, in one process per size and head, with its step time, tokens/s and MFU.

The reference numbers in ``../shared/notes/reference-implementation.md`` were taken on a 2-core CPU in
fp32 for "shape A" and "shape B"; this script prints the same shapes so the comparison is direct.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from maskflow.masking import mask_tokens, sample_frame_levels  # noqa: E402
from maskflow.models import BackboneConfig, build_backbone, count_parameters  # noqa: E402
from maskflow.schedules import get_scheduler  # noqa: E402
from maskflow.training import (  # noqa: E402
    EMA,
    MaskFlowObjective,
    ObjectiveConfig,
    OptimConfig,
    build_grad_scaler,
    build_optimizer,
    train_step,
)

# dense bf16 tensor-core peak (no sparsity), FLOP/s, matched by substring of the CUDA device name
BF16_PEAK = {
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "H200": 989e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "RTX 4090": 165e12,
}


@dataclass
class Case:
    """One benchmarked configuration."""

    name: str
    size: str
    batch: int
    frames: int
    latent: int
    codebook: int
    depth: int | None = None  # override of the preset depth
    hidden: int | None = None
    heads: int | None = None
    checkpointing: bool = False
    head: str = "masked"  # ObjectiveConfig.head: 'masked' (fused, masked positions only) or 'dense'
    head_chunk_rows: int | None = None  # ObjectiveConfig.head_chunk_rows (None: its default)


def training_flops(cfg: BackboneConfig, batch: int, frames: int) -> float:
    """Analytic FLOPs of one training step (forward + backward = 3× forward; no recompute counted)."""
    d, p, k = cfg.hidden_size, cfg.patch_size, cfg.codebook_size
    n = cfg.grid_size**2  # patches per frame
    tokens = batch * frames * n
    inner = int(d * cfg.mlp_ratio)
    fwd = 2 * tokens * (p * p * d // 2) * d  # patch embedding
    for i in range(cfg.depth):
        fwd += 2 * tokens * (4 * d * d + 2 * d * inner)  # qkv, proj, mlp
        fwd += 2 * batch * frames * d * 6 * d  # adaLN (per frame)
        if i % 2 == 0:  # spatial: (B·T) sequences of N
            fwd += 4 * batch * frames * n * n * d
        else:  # temporal: (B·N) sequences of T
            fwd += 4 * batch * n * frames * frames * d
    fwd += 2 * tokens * d * p * p * k + 2 * batch * frames * d * 2 * d  # head
    return 3.0 * fwd


def bf16_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in BF16_PEAK.items():
        if key in name:
            return peak
    return None


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


@dataclass
class Trainer:
    """Everything one training step of a case needs, built once."""

    model: torch.nn.Module
    objective: MaskFlowObjective
    optimizer: torch.optim.Optimizer
    scaler: object
    ema: EMA
    optim_cfg: OptimConfig

    def step(self, x1: torch.Tensor, step: int, generator: torch.Generator):
        return train_step(self.model, self.objective, x1, self.optimizer, self.scaler, self.ema, self.optim_cfg, step,
                          generator=generator)


def build_trainer(case: Case, device: torch.device) -> Trainer:
    """The case's backbone (seed 0), AdamW, EMA, grad scaler and objective, as :func:`train_step` uses them."""
    overrides = {}
    if case.depth is not None:
        overrides["depth"] = case.depth
    if case.hidden is not None:
        overrides["hidden_size"] = case.hidden
    if case.heads is not None:
        overrides["num_heads"] = case.heads
    torch.manual_seed(0)
    model = build_backbone(
        case.size, codebook_size=case.codebook, latent_size=case.latent,
        activation_checkpointing=case.checkpointing, **overrides,
    ).to(device)
    model.train()
    optim_cfg = OptimConfig(precision="bf16" if device.type == "cuda" else "fp32")
    chunk = {} if case.head_chunk_rows is None else {"head_chunk_rows": case.head_chunk_rows}
    return Trainer(model, MaskFlowObjective(ObjectiveConfig(head=case.head, **chunk)),
                   build_optimizer(model, lr=optim_cfg.lr), build_grad_scaler(optim_cfg, device),
                   EMA(model, decay=optim_cfg.ema_decay), optim_cfg)


def run_case(case: Case, steps: int, device: torch.device) -> dict:
    """Build, warm up, time ``steps`` training steps; return the measurements as a dict."""
    trainer = build_trainer(case, device)
    model = trainer.model
    gen = torch.Generator(device=device).manual_seed(0)
    x1 = torch.randint(0, case.codebook, (case.batch, case.frames, case.latent, case.latent), generator=gen, device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # corruption alone (what the reference code does with dense one-hot tensors)
    sched = get_scheduler("sigmoid")
    sync()
    t0 = time.perf_counter()
    for _ in range(5):
        t = sample_frame_levels(case.batch, case.frames, generator=gen, device=device)
        masked = mask_tokens(x1, t, sched, case.codebook, generator=gen)
    sync()
    corrupt_s = (time.perf_counter() - t0) / 5
    masked_fraction = float(masked.is_masked.float().mean())

    rss_before = rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, result = [], None
    for step in range(steps + 1):  # step 0 is the warm-up (allocates optimiser state)
        sync()
        t0 = time.perf_counter()
        result = trainer.step(x1, step, gen)
        sync()
        if step > 0:
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    flops = training_flops(model.config, case.batch, case.frames)
    tokens = case.batch * case.frames * case.latent**2
    out = {
        "case": asdict(case),
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "parameters": count_parameters(model),
        "step_s": step_s,
        "step_s_all": times,
        "tokens_per_s": tokens / step_s,
        "flops_per_step": flops,
        "achieved_flops": flops / step_s,
        "corrupt_s": corrupt_s,
        "masked_fraction": masked_fraction,
        "onehot_bytes": case.batch * case.frames * case.latent**2 * (case.codebook + 1) * 4,
        "loss": result.loss,
    }
    if device.type == "cuda":
        out["peak_bytes"] = torch.cuda.max_memory_allocated(device)
        peak = bf16_peak(device)
        out["mfu"] = flops / step_s / peak if peak else None
    else:
        out["peak_rss_bytes"] = peak_rss_bytes()
        out["rss_before_bytes"] = rss_before
        out["step_rss_growth_bytes"] = max(0, peak_rss_bytes() - rss_before)
    return out


def find_max_batch(fits: Callable[[int], bool], guess: int, limit: int = 4096) -> int:
    """The largest batch in ``[0, limit]`` for which ``fits(batch)`` holds (``fits`` is monotone: True up to
    the answer, False above), searched from ``guess``: gallop up (or down) from it, then bisect. With a
    guess that is right, two calls (``guess`` fits, ``guess + 1`` does not)."""
    lo, hi = 0, limit + 1  # fits(lo), not fits(hi)
    b, step = max(1, min(guess, limit)), 1
    if fits(b):
        lo = b
        while lo + step < hi and fits(lo + step):
            lo += step
            step *= 2
        hi = min(hi, lo + step)
    else:
        hi = b
        while hi - step > lo and not fits(hi - step):
            hi -= step
            step *= 2
        lo = max(lo, hi - step)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def run_max_batch(case: Case, steps: int, device: torch.device, budget_gib: float) -> dict:
    """The largest batch of ``case`` whose training step fits in ``budget_gib`` GiB of this GPU, and its speed.

    The model, optimiser state and EMA are built once; each trial runs a warm-up and ``steps`` timed
    steps at one batch size under ``torch.cuda.set_per_process_memory_fraction`` (so a GPU larger than
    the budget behaves like one of the budget's size) and counts an out-of-memory error as not fitting.
    Peak memory is affine in the batch (weights, gradients and optimiser state fixed, activations per
    sample), so batches 1 and 2 predict the answer and :func:`find_max_batch` checks it.

    The budget is the PyTorch allocator's (the CUDA context and libraries come on top); a budget above
    the device's memory uses the whole device, with a warning.

    Raises:
        ValueError: not a CUDA device.
    """
    if device.type != "cuda":
        raise ValueError("--max-batch-gib needs a CUDA device (it caps and reads the CUDA allocator)")
    total = torch.cuda.get_device_properties(device).total_memory
    budget = budget_gib * 2**30
    if budget > total:
        print(f"   warning: --max-batch-gib {budget_gib:g} is more than this GPU's {total / 2**30:.1f} GiB; "
              "using all of it", file=sys.stderr, flush=True)
        budget = total
    torch.cuda.set_per_process_memory_fraction(budget / total, device)
    trainer = build_trainer(case, device)
    gen = torch.Generator(device=device).manual_seed(0)
    trials: dict[int, dict | None] = {}
    step_no = 0

    def trial(batch: int) -> bool:
        nonlocal step_no
        if batch in trials:
            return trials[batch] is not None
        torch.cuda.empty_cache()
        x1, times = None, []
        try:
            x1 = torch.randint(0, case.codebook, (batch, case.frames, case.latent, case.latent), generator=gen,
                               device=device)
            for i in range(steps + 1):  # the first is a warm-up (and creates AdamW's state at the first trial)
                if i == 1:  # the peak of the timed steps: every trial with the optimiser state, so affine in the batch
                    torch.cuda.reset_peak_memory_stats(device)
                torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                trainer.step(x1, step_no, gen)
                torch.cuda.synchronize(device)
                step_no += 1
                if i:
                    times.append(time.perf_counter() - t0)
            trials[batch] = {"peak_bytes": torch.cuda.max_memory_allocated(device), "step_s": statistics.median(times)}
        except RuntimeError as exc:  # torch.cuda.OutOfMemoryError, or a library's failed allocation
            if not _out_of_memory(exc):
                raise
            trials[batch] = None
            trainer.optimizer.zero_grad(set_to_none=True)
        del x1  # (after the except clause: its traceback no longer holds the step's tensors)
        gc.collect()
        torch.cuda.empty_cache()
        r = trials[batch]
        said = "out of memory" if r is None else f"{gib(r['peak_bytes'])}, {r['step_s']:.3f} s/step"
        print(f"   batch {batch}: {said}", file=sys.stderr, flush=True)
        return r is not None

    guess = 1
    if trial(1) and trial(2):
        per_sample = trials[2]["peak_bytes"] - trials[1]["peak_bytes"]
        fixed = trials[1]["peak_bytes"] - per_sample
        guess = int((budget - fixed) // per_sample) if per_sample > 0 else 2
    best = find_max_batch(trial, guess) if trials[1] is not None else 0
    flops_per_sample = training_flops(trainer.model.config, 1, case.frames)
    out = {"case": asdict(case), "device": torch.cuda.get_device_name(device), "budget_gib": budget_gib,
           "parameters": count_parameters(trainer.model), "max_batch": best, "trials": len(trials)}
    if best:
        r = trials[best]
        peak = bf16_peak(device)
        out.update(peak_bytes=r["peak_bytes"], step_s=r["step_s"],
                   tokens_per_s=best * case.frames * case.latent**2 / r["step_s"],
                   mfu=best * flops_per_sample / r["step_s"] / peak if peak else None)
    return out


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says the GPU ran out of memory (PyTorch's allocator, or cuBLAS/cuDNN failing to allocate)."""
    text = str(exc)
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in text.lower() or "ALLOC_FAILED" in text


def run_in_subprocess(case: Case, steps: int, device: str, threads: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--_single", json.dumps(asdict(case)),
           "--steps", str(steps), "--device", device, "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"case {case.name} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def merge_repeats(runs: list[dict]) -> dict:
    """One result from interleaved repeats: all step times, their median, the largest peak memory."""
    out = dict(runs[0])
    out["step_s_all"] = [t for r in runs for t in r["step_s_all"]]
    out["step_s"] = statistics.median(out["step_s_all"])
    out["tokens_per_s"] = runs[0]["tokens_per_s"] * runs[0]["step_s"] / out["step_s"]
    out["achieved_flops"] = out["flops_per_step"] / out["step_s"]
    for key in ("peak_bytes", "peak_rss_bytes", "step_rss_growth_bytes"):
        if key in out:
            out[key] = max(r[key] for r in runs)
    return out


# targets of the masked-only head, against the dense reference at the same shape (shape A, fp32 CPU)
TIME_TARGET, MEMORY_TARGET, AUTHORS_PEAK_GB, AUTHORS_TARGET = 0.6, 0.4, 20.0, 0.25


def side_by_side(pairs: list[tuple[str, list[str]]], results: dict, on_gpu: bool) -> None:
    """Print every variant's time and memory against the dense head without checkpointing (the reference)."""
    mem_key = "peak_bytes" if on_gpu else "peak_rss_bytes"
    print(f"\n== side by side (memory = {'CUDA peak allocated' if on_gpu else 'process peak RSS'}; "
          "ratios against the dense head without activation checkpointing, the reference)")
    for base, names in pairs:
        ref = next((results[n] for n in names if results[n]["case"]["head"] == "dense"
                    and not results[n]["case"]["checkpointing"]), None)
        print(f"   {base}:")
        for n in names:
            r = results[n]
            c = r["case"]
            ratio = (f"   time {r['step_s'] / ref['step_s']:.2f}×, memory {r[mem_key] / ref[mem_key]:.2f}×"
                     if ref is not None else "")
            print(f"      {c['head']:>6} head, checkpointing {'on ' if c['checkpointing'] else 'off'}: "
                  f"{r['step_s']:.3f} s/step, {gib(r[mem_key])}, loss {r['loss']:.4f}{ratio}")
        if base == "shape A" and ref is not None and not on_gpu:
            print(f"      targets (shape A): time <= {TIME_TARGET}× and memory <= {MEMORY_TARGET}× of the reference, "
                  f"memory <= {AUTHORS_TARGET}× of the authors' {AUTHORS_PEAK_GB:.0f} GB")
            for n in names:
                r, c = results[n], results[n]["case"]
                if c["head"] != "masked":
                    continue
                t, m = r["step_s"] / ref["step_s"], r[mem_key] / ref[mem_key]
                a = r[mem_key] / 1e9 / AUTHORS_PEAK_GB
                ok = lambda v: "met" if v else "NOT met"  # noqa: E731
                print(f"      masked, checkpointing {'on ' if c['checkpointing'] else 'off'}: time {t:.2f}× "
                      f"({ok(t <= TIME_TARGET)}), memory {m:.2f}× ({ok(m <= MEMORY_TARGET)}), "
                      f"{a:.2f}× of 20 GB ({ok(a <= AUTHORS_TARGET)})")


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def report(r: dict) -> None:
    c = r["case"]
    shape = f"batch {c['batch']} × {c['frames']} frames × {c['latent']}×{c['latent']} tokens, K={c['codebook']}"
    print(f"\n== {c['name']}: {c['size']}, head {c.get('head', 'masked')}"
          + (f" (depth {c['depth']})" if c.get("depth") else "")
          + f", {r['parameters'] / 1e6:.1f}M parameters; {shape}")
    print(f"   device {r['device']} ({r['threads']} threads)")
    times = ", ".join(f"{t:.3f}" for t in r["step_s_all"])
    print(f"   training step (median of {len(r['step_s_all'])}): {r['step_s']:.3f} s   [{times}]")
    print(f"   tokens/s: {r['tokens_per_s']:,.0f}   model FLOPs/step: {r['flops_per_step'] / 1e12:.3f} T"
          f"   achieved: {r['achieved_flops'] / 1e9:,.1f} GFLOP/s")
    if "mfu" in r:
        mfu = f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None else "n/a (unknown device peak)"
        print(f"   peak memory (CUDA allocated): {gib(r['peak_bytes'])}   MFU vs dense bf16 peak: {mfu}")
    else:
        print(f"   peak RSS: {gib(r['peak_rss_bytes'])} (process), growth during steps: "
              f"{gib(r['step_rss_growth_bytes'])} over {gib(r['rss_before_bytes'])} after building model+optimiser")
    print(f"   corruption alone (levels + Bernoulli masks): {1e3 * r['corrupt_s']:.2f} ms, "
          f"masked fraction {r['masked_fraction']:.3f}; a dense one-hot of this batch would be "
          f"{gib(r['onehot_bytes'])} (B·T·h·w·(K+1) float32), per tensor")


def max_batch_report(args: argparse.Namespace, device: torch.device, steps: int) -> None:
    """``--max-batch-gib``: one subprocess per size and head (:func:`run_max_batch`), then a table."""
    if device.type != "cuda":
        raise SystemExit("--max-batch-gib needs a CUDA device (it caps and reads the CUDA allocator)")
    shape = {"frames": args.frames or 16, "latent": args.latent or 32, "codebook": args.codebook}
    sizes = [x.strip() for x in (args.sizes or args.size).split(",") if x.strip()]
    heads = [h.strip() for h in args.head_modes.split(",") if h.strip()]
    grid = f"{shape['frames']} frames × {shape['latent']}×{shape['latent']} tokens, K={shape['codebook']}"
    print(f"Largest training batch per {args.max_batch_gib:g} GiB — {', '.join(sizes)}, heads {', '.join(heads)}; "
          f"{grid}, bf16 autocast, {steps} timed steps per trial; MFU counts the model's FLOPs (dense head) "
          "for both heads")
    rows = []
    for size in sizes:
        for head in heads:
            case = Case(name=f"{size} {head}", size=size, batch=1, head=head, checkpointing=args.checkpointing, **shape)
            cmd = [sys.executable, os.path.abspath(__file__), "--_max_batch",
                   json.dumps({"case": asdict(case), "budget_gib": args.max_batch_gib}),
                   "--steps", str(steps), "--device", str(device)]
            print(f"== {case.name}", flush=True)
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)  # trials go to stderr
            if proc.returncode != 0:
                print(f"   failed (exit {proc.returncode})")
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"\n{'size':<6} {'head':<7} {'params':>8} {'max batch':>9} {'peak':>10} {'s/step':>8} {'tokens/s':>10} "
          f"{'MFU':>6}")
    for r in rows:
        c = r["case"]
        if not r["max_batch"]:
            print(f"{c['size']:<6} {c['head']:<7} {r['parameters'] / 1e6:>7.0f}M {0:>9}  (batch 1 does not fit)")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
        print(f"{c['size']:<6} {c['head']:<7} {r['parameters'] / 1e6:>7.0f}M {r['max_batch']:>9} "
              f"{gib(r['peak_bytes']):>10} {r['step_s']:>8.3f} {r['tokens_per_s']:>10,.0f} {mfu:>6}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="B/2")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--steps", type=int, default=None, help="timed steps after one warm-up (default 10 GPU, 2 CPU)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--latent", type=int, default=None)
    ap.add_argument("--codebook", type=int, default=16384)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's); 1 is often faster on a busy machine")
    ap.add_argument("--checkpointing", action="store_true", help="activation checkpointing")
    ap.add_argument("--shape-a", action="store_true", help="also run the notes' shape A (slow on CPU: ~minutes)")
    ap.add_argument("--cases", default=None,
                    help="comma list of main,batch2,shape_b,shape_a (default: all but shape_a on CPU)")
    ap.add_argument("--head-modes", default="masked",
                    help="comma list of K-way head modes to run each case with: masked (default), dense, or "
                         "masked,dense for a side-by-side comparison")
    ap.add_argument("--checkpointing-modes", default="off",
                    help="comma list of off/on: run each case without and/or with activation checkpointing "
                         "(off,on for a side-by-side comparison; --checkpointing alone sets 'main' cases only)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="run every variant this many times, interleaved, and report the median step time")
    ap.add_argument("--max-batch-gib", type=float, default=None,
                    help="CUDA only: for each of --sizes and --head-modes, the largest batch whose training step "
                         "fits in this many GiB of the PyTorch allocator, with its step time and MFU")
    ap.add_argument("--sizes", default=None, help="comma list of backbone sizes for --max-batch-gib (default --size)")
    ap.add_argument("--_single", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_max_batch", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    on_gpu = device.type == "cuda"
    steps = args.steps if args.steps is not None else (10 if on_gpu else 2)
    if steps < 1:
        ap.error(f"--steps must be >= 1 (timed steps after the warm-up), got {steps}")

    if args._single is not None:
        print(json.dumps(run_case(Case(**json.loads(args._single)), steps, device)))
        return
    if args._max_batch is not None:
        spec = json.loads(args._max_batch)
        print(json.dumps(run_max_batch(Case(**spec["case"]), steps, device, spec["budget_gib"])))
        return
    if args.max_batch_gib is not None:
        max_batch_report(args, device, steps)
        return

    paper = dict(frames=16, latent=32, codebook=16384)
    if on_gpu:
        main_shape = {"batch": 2, **paper}
        note = "the paper shape (16 frames × 32×32 tokens, K=16384)"
    else:
        main_shape = {"batch": 1, "frames": 4, "latent": 16, "codebook": args.codebook}
        note = ("a REDUCED shape (CPU): 4 frames × 16×16 tokens instead of the paper's 16 × 32×32; "
                "pass --frames 16 --latent 32 to force it")
    for key in ("batch", "frames", "latent"):
        if getattr(args, key) is not None:
            main_shape[key] = getattr(args, key)
            note = "a user-chosen shape"
    print(f"MaskFlow training benchmark — {args.size} on {device}; main case uses {note}.")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} of {os.cpu_count()} CPU threads (load average {load}), "
          f"precision {'bf16 autocast' if on_gpu else 'fp32'}; each case runs in its own process.")

    wanted = set(args.cases.split(",")) if args.cases else {"main", "batch2", "shape_b"} | (
        {"shape_a"} if args.shape_a or on_gpu else set())
    cases = []
    if "main" in wanted:
        cases.append(Case(name="main", size=args.size, checkpointing=args.checkpointing, **main_shape))
    if "batch2" in wanted and main_shape["batch"] != 2:
        cases.append(Case(name="main @ batch 2", size=args.size, checkpointing=args.checkpointing,
                          **dict(main_shape, batch=2)))
    if "shape_b" in wanted:
        cases.append(Case(name="shape B", size="small", depth=2, batch=2, frames=8, latent=8, codebook=512))
    if "shape_a" in wanted:
        cases.append(Case(name="shape A", size="S/2", batch=2, **paper))

    heads = [h.strip() for h in args.head_modes.split(",") if h.strip()]
    if not heads or any(h not in ("masked", "dense") for h in heads):
        ap.error(f"--head-modes must list masked and/or dense, got {args.head_modes!r}")
    ckpts = [c.strip() for c in args.checkpointing_modes.split(",") if c.strip()]
    if not ckpts or any(c not in ("off", "on") for c in ckpts):
        ap.error(f"--checkpointing-modes must list off and/or on, got {args.checkpointing_modes!r}")
    results, pairs = {}, []
    for case in cases:
        variants = []  # (name, case) of every head x checkpointing combination of this case
        for head in heads:
            for ck in ckpts:
                on = case.checkpointing if ck == "off" and len(ckpts) == 1 else ck == "on"
                tags = ([f"{head} head"] if head != heads[0] else []) + (["checkpointing"] if on and len(ckpts) > 1 else [])
                name = case.name + (f" [{', '.join(tags)}]" if tags else "")
                variants.append((name, Case(**dict(asdict(case), name=name, head=head, checkpointing=on))))
        runs: dict[str, list[dict]] = {name: [] for name, _ in variants}
        for _ in range(args.repeats):  # interleaved: every variant sees the same machine load
            for name, variant in variants:
                runs[name].append(run_in_subprocess(variant, steps, str(device), torch.get_num_threads()))
        for name, _ in variants:
            results[name] = merge_repeats(runs[name])
            report(results[name])
        pairs.append((case.name, [name for name, _ in variants]))
    if len(heads) * len(ckpts) > 1:
        side_by_side(pairs, results, on_gpu)

    b2 = results.get("main @ batch 2", results.get("main"))
    if b2 is None:
        b2 = results[cases[-1].name]
    c = b2["case"]
    paper_onehot = 2 * 16 * 32 * 32 * (16384 + 1) * 4
    mem = b2.get("peak_bytes", b2.get("peak_rss_bytes"))
    what = "CUDA peak allocated" if "peak_bytes" in b2 else "process peak RSS"
    print("\n== memory of one training step at batch 2 vs dense one-hot corruption")
    print(f"   ours ({c['size']}, {c['frames']}×{c['latent']}×{c['latent']}, K={c['codebook']}): {what} {gib(mem)}; "
          f"a single one-hot B·T·h·w·(K+1) float32 tensor of that batch: {gib(b2['onehot_bytes'])} — never built here.")
    print(f"   at the paper shape (B=2, T=16, 32×32, K=16384) that one-hot is {gib(paper_onehot)} per tensor; the "
          "reference code's corruption added +14.3 GB RSS and took 24.8 s on 2 CPU cores (notes).")
    if "shape A" in results:
        a = results["shape A"]
        print(f"   shape A (S/2): ours {a['step_s']:.1f} s/step, corruption {1e3 * a['corrupt_s']:.1f} ms; "
              "reference code 68.5 s/step, 20.0 GB peak RSS, corruption 24.8 s (2-core CPU, fp32).")


if __name__ == "__main__":
    main()
