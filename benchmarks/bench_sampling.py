"""Benchmark every sampler on one backbone: NFE, wall time, time per NFE, and sampler overhead.

    .venv/bin/python benchmarks/bench_sampling.py                    # shape B on CPU, the paper's step counts
    .venv/bin/python benchmarks/bench_sampling.py --device cuda --batch 8 --latent 32 --codebook 16384
    .venv/bin/python benchmarks/bench_sampling.py --quick            # FM/DF/Rolling with 25 steps (smoke run)
    .venv/bin/python benchmarks/bench_sampling.py --flops-only --frames 16 --latent 32 --codebook 16384 \
        --depth 12 --width 384 --heads 6                               # FLOPs only, S/2 at the paper's shape

Default shape is the notes' "shape B" (``../shared/notes/reference-implementation.md``): batch 2 × 8 frames
× 8×8 tokens, 512 codes + mask (513 input ids), depth 2, width 128, so the numbers compare directly with
the authors' code measured there (their MGM chunk: 17 passes at 2.0–2.9× the time of 17 bare forwards;
their FM chunk: 250 passes at 2.8–3.6×).

For each sampler (MGM 20 steps, FM 250, Diffusion Forcing 250, Rolling 250) it times one chunk
(``L = k``) and one rollout of ``extrapolation × k`` frames, and prints the counted NFE (== the A.2
formula), the wall time, the time per NFE, and two overheads of the sampler:

- ``vs bare``: wall time over the time of the same number of bare forward passes of the backbone on
  window-shaped inputs, run right after (``--bare-cap`` times at most, then scaled);
- ``vs in-run``: wall time over the time spent inside the backbone during the same run (robust to
  machine load, which shifts the two numbers of ``vs bare`` independently).

It also prints the FLOPs of the run (``GFLOP``: the backbone passes, matmuls and attention counted by
``torch.utils.flop_counter`` on one window, plus ``2·D·K`` per position the masked head projects) and
the share of them in the ``K``-way head (``head``; with the dense head, every position's), and for MGM
against FM the FLOP ratio next to the time ratio: MGM projects every still-masked token at every step
(Algorithm 4 ranks all of them), FM each token once per chunk, so the FLOP ratio is the least time
ratio a sampler can reach whose time follows its FLOPs.

With ``--head-modes masked,dense`` every case runs with both output heads of
:func:`~maskflow.sampling.generate`: ``masked`` computes the ``K``-way head only for the tokens the
sampler draws (MGM: still-masked tokens; FM and the baselines: the tokens that unmask; the time inside
that projection counts as in-run backbone time), ``dense`` every position's logits; the samples are
checked to be identical.

With ``--repeats N`` every number is the best of N runs. On a shared CPU, ``--threads 1`` avoids the
thread-pool stalls that make 2-thread timings swing by 10x under load.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskflow.sampling import SamplerConfig, expected_nfe, generate  # noqa: E402
from maskflow.sampling.unmasking import masked_counts  # noqa: E402


# ================================================================================ backbones
class StandInBackbone(nn.Module):
    """A small Latte-like transformer (spatial/temporal attention, per-frame AdaLN time conditioning),
    used only when ``maskflow.models.build_backbone`` cannot be imported."""

    def __init__(self, codebook_size: int, latent_size: int, width: int, depth: int, heads: int) -> None:
        super().__init__()
        self.codebook_size = self.mask_token_id = codebook_size
        self.embed = nn.Embedding(codebook_size + 1, width)
        self.pos = nn.Parameter(torch.randn(latent_size * latent_size, width) * 0.02)
        self.time = nn.Sequential(nn.Linear(1, width), nn.SiLU(), nn.Linear(width, 2 * width))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(width, heads, 4 * width, batch_first=True) for _ in range(depth)
        )
        self.head = nn.Linear(width, codebook_size)

    def forward(self, tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b, f, h, w = tokens.shape
        x = self.embed(tokens).flatten(2, 3) + self.pos  # (B, F, N, D)
        scale, shift = self.time(t[..., None]).chunk(2, dim=-1)  # (B, F, D)
        x = x * (1 + scale[:, :, None]) + shift[:, :, None]
        for i, block in enumerate(self.blocks):
            if i % 2 == 0:  # spatial
                x = block(x.flatten(0, 1)).view(b, f, h * w, -1)
            else:  # temporal
                x = block(x.transpose(1, 2).flatten(0, 1)).view(b, h * w, f, -1).transpose(1, 2)
        return self.head(x).view(b, f, h, w, -1)


def build_model(args: argparse.Namespace) -> tuple[nn.Module, str]:
    try:
        from maskflow.models import build_backbone

        model = build_backbone(
            "small", codebook_size=args.codebook, latent_size=args.latent,
            depth=args.depth, hidden_size=args.width, num_heads=args.heads,
        )
        # adaLN-Zero leaves a fresh model with all-zero logits; give the head weights so that the
        # token distributions (and MGM confidences) are not all uniform
        for p in model.final_layer.parameters():
            nn.init.normal_(p, std=0.05)
        name = "maskflow.models.build_backbone('small', depth=%d, hidden_size=%d)" % (args.depth, args.width)
    except ImportError:
        model = StandInBackbone(args.codebook, args.latent, args.width, args.depth, args.heads)
        name = "stand-in transformer (maskflow.models not importable)"
    return model.to(args.device).eval(), name


class TimedBackbone:
    """Forwards to the backbone and accumulates the seconds spent inside it (including the masked head's
    ``project_positions``, exposed when the backbone has it, so that the Denoiser can use it), and counts what ran: video-passes up to the head's input
    (``hidden_rows``), video-passes with the dense head (``dense_rows``) and projected positions
    (``head_rows``)."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.model, self.device = model, device
        self.codebook_size, self.mask_token_id = model.codebook_size, model.mask_token_id
        self.seconds = 0.0
        self.hidden_rows = self.dense_rows = self.head_rows = 0
        if callable(getattr(model, "project_positions", None)):
            self.config = model.config
            self.project_positions = self._project_positions

    def _project_positions(self, hidden: torch.Tensor, index: tuple[torch.Tensor, ...]) -> torch.Tensor:
        self._sync()
        t0 = time.perf_counter()
        out = self.model.project_positions(hidden, index)
        self._sync()
        self.seconds += time.perf_counter() - t0
        self.head_rows += int(index[0].numel())
        return out

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, tokens: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        self._sync()
        t0 = time.perf_counter()
        out = self.model(tokens, t, **kwargs)
        self._sync()
        self.seconds += time.perf_counter() - t0
        if kwargs.get("return_hidden"):
            self.hidden_rows += tokens.shape[0]
        else:
            self.dense_rows += tokens.shape[0]
        return out


def pass_flops(args: argparse.Namespace, frames: int) -> tuple[int, int]:
    """Matmul and attention FLOPs (``torch.utils.flop_counter``) of one video's backbone pass over a
    ``frames``-frame window at the shape of ``args``: ``(hidden, dense)``, up to the head's input and with
    the dense head (the same figure for a backbone that cannot stop at the head's input).

    Counted on a copy of the backbone on the meta device: no memory or time at any shape, and the
    attention is counted whatever kernel the real device would pick (the counter does not see inside
    PyTorch's CPU flash-attention kernel).
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model, _ = build_model(argparse.Namespace(**{**vars(args), "device": "meta"}))
    tokens = torch.zeros(1, frames, args.latent, args.latent, dtype=torch.long, device="meta")
    t = torch.zeros(1, frames, device="meta")
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(tokens, t)
    dense = hidden = counter.get_total_flops()
    if callable(getattr(model, "project_positions", None)):
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(tokens, t, return_hidden=True)
        hidden = counter.get_total_flops()
    return hidden, dense


def bare_forwards(model: nn.Module, shape: tuple[int, ...], passes: int, cap: int, device: torch.device) -> float:
    """Seconds for ``passes`` bare forward passes on random window-shaped inputs (``cap`` run, then scaled)."""
    gen = torch.Generator(device=device).manual_seed(0)
    tokens = torch.randint(0, model.codebook_size + 1, shape, generator=gen, device=device)
    t = torch.rand(shape[:2], generator=gen, device=device)
    run = min(passes, cap)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(run):
        model(tokens, t)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) * passes / max(run, 1)


def chunk_flops(args: argparse.Namespace) -> dict[str, float]:
    """Matmul FLOPs of one MGM and one FM chunk at the shape of ``args``, counted without sampling.

    The backbone pass is counted on the meta device (:func:`pass_flops`: any shape, the paper's
    included); the masked head adds ``2·D·K`` per projected position: MGM every still-masked token at
    each of its ``S`` steps (the default unmasking schedule), FM each generated token once. Guidance
    triples both. The figures equal what :func:`run_case` counts while sampling.

    Returns:
        ``{"pass": one video's backbone pass up to the head's input, "mgm": ..., "fm": ...,
        "mgm_head": the MGM chunk's FLOPs in the head}``.
    """
    f_hidden, _ = pass_flops(args, args.frames)
    n = (args.frames - args.context) * args.latent**2  # generated tokens per video
    before = [n] + masked_counts(n, args.mgm_steps, SamplerConfig().unmasking_schedule)[:-1]  # masked before each step
    row, copies = 2 * args.width * args.codebook, args.batch * (3 if args.guidance else 1)
    return {"pass": f_hidden, "mgm": copies * (args.mgm_steps * f_hidden + sum(before) * row),
            "fm": copies * (args.fm_steps * f_hidden + n * row), "mgm_head": copies * sum(before) * row}


# ================================================================================ benchmark
def run_case(model, args, sampler: str, steps: int, num_frames: int, head: str = "masked") -> dict:
    device = torch.device(args.device)
    config = SamplerConfig(
        sampler=sampler, sampling_steps=steps, chunk_size=args.frames, n_context_frames=args.context,
        guidance_scale=args.guidance,
    )
    gen = torch.Generator(device=device).manual_seed(args.seed)
    shape = (args.batch, args.context, args.latent, args.latent)
    context = torch.randint(0, args.codebook, shape, generator=gen, device=device)
    rows = []
    for _ in range(args.repeats):
        timed = TimedBackbone(model, device)
        with torch.inference_mode():
            gen.manual_seed(args.seed + 1)  # every head and repeat samples the same videos
            result = generate(timed, context, num_frames, config, generator=gen, head=head)
            window = (args.batch * config.passes_per_step, min(args.frames, num_frames), args.latent, args.latent)
            bare = bare_forwards(model, window, result.nfe // config.passes_per_step, args.bare_cap, device)
        rows.append((result.wall_time_s, timed.seconds, bare, result.nfe))
    wall, inside, bare, nfe = (min(col) for col in zip(*rows))  # best of the repeats: robust to load spikes
    assert nfe == expected_nfe(config, num_frames), (sampler, nfe, expected_nfe(config, num_frames))
    # every pass is over a window of min(k, L) frames; the masked head costs 2·D·K FLOPs per projected row
    f_hidden, f_dense = pass_flops(args, min(args.frames, num_frames))
    row_flops = 2 * model.config.hidden_size * args.codebook if timed.head_rows else 0
    flops = timed.hidden_rows * f_hidden + timed.dense_rows * f_dense + timed.head_rows * row_flops
    return dict(sampler=sampler, steps=steps, frames=num_frames, nfe=int(nfe), wall=wall, inside=inside, bare=bare,
                head=head, tokens=result.tokens.cpu(), flops=flops,
                head_share=(timed.head_rows * row_flops + timed.dense_rows * (f_dense - f_hidden)) / flops)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--frames", type=int, default=8, help="chunk_size k")
    p.add_argument("--context", type=int, default=2, help="n_context_frames m")
    p.add_argument("--latent", type=int, default=8)
    p.add_argument("--codebook", type=int, default=512)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--mgm-steps", type=int, default=20)
    p.add_argument("--fm-steps", type=int, default=250)
    p.add_argument("--df-steps", type=int, default=250)
    p.add_argument("--rolling-steps", type=int, default=250)
    p.add_argument("--extrapolation", type=int, default=5)
    p.add_argument("--guidance", type=float, default=0.0, help="guidance_scale (3 passes per step when != 0)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--bare-cap", type=int, default=10**9, help="run at most this many bare passes, then scale")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="25 steps for FM, DF and Rolling")
    p.add_argument("--samplers", default="mgm,fm,diffusion_forcing,rolling", help="comma-separated subset")
    p.add_argument("--flops-only", action="store_true",
                   help="print the FLOPs of one MGM and one FM chunk at this shape without sampling (any shape)")
    p.add_argument("--head-modes", default="masked",
                   help="output heads to run each case with: masked (default), dense, or masked,dense side by side")
    args = p.parse_args(argv)
    heads = [h.strip() for h in args.head_modes.split(",") if h.strip()]
    if not heads or any(h not in ("masked", "dense") for h in heads):
        p.error(f"--head-modes must list masked and/or dense, got {args.head_modes!r}")
    if args.quick:
        args.fm_steps = args.df_steps = args.rolling_steps = 25
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.flops_only:
        f = chunk_flops(args)
        print(
            f"shape: batch {args.batch} x {args.frames} frames x {args.latent}x{args.latent} tokens, K={args.codebook}, "
            f"depth {args.depth}, width {args.width}, m={args.context}; one video's backbone pass "
            f"{f['pass'] / 1e9:.3f} GFLOP (meta device, no sampling)"
        )
        print(
            f"MGM chunk ({args.mgm_steps} steps) {f['mgm'] / 1e9:.2f} GFLOP, {100 * f['mgm_head'] / f['mgm']:.1f}% of it in "
            f"the masked head; FM chunk ({args.fm_steps} steps) {f['fm'] / 1e9:.2f} GFLOP; FLOP ratio "
            f"{f['mgm'] / f['fm']:.3f}, NFE ratio {args.mgm_steps / args.fm_steps:.3f}"
        )
        return
    torch.manual_seed(args.seed)
    model, name = build_model(args)
    with torch.inference_mode():  # warm-up
        model(torch.zeros(args.batch, args.frames, args.latent, args.latent, dtype=torch.long, device=args.device),
              torch.zeros(args.batch, args.frames, device=args.device))
    print(f"backbone: {name}; device {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(
        f"shape: batch {args.batch} x {args.frames} frames x {args.latent}x{args.latent} tokens, K={args.codebook} "
        f"(+ mask = {args.codebook + 1} input ids), m={args.context}, s=k-m={args.frames - args.context}, "
        f"guidance_scale={args.guidance:g}"
    )
    steps = {
        "mgm": args.mgm_steps, "fm": args.fm_steps, "diffusion_forcing": args.df_steps, "rolling": args.rolling_steps
    }
    length = args.extrapolation * args.frames
    results = []
    for sampler, s in steps.items():
        if sampler not in args.samplers.split(","):
            continue
        for frames in dict.fromkeys((args.frames, length)):  # --extrapolation 1: the chunk alone
            for head in heads:
                results.append(run_case(model, args, sampler, s, frames, head))
                r = results[-1]
                line = f"  done {sampler:<17} L={frames:<4} head={head:<6} NFE={r['nfe']:<5} {r['wall']:.2f} s"
                print(line, file=sys.stderr, flush=True)
            if len(heads) > 1:
                same = all(torch.equal(results[-1]["tokens"], r["tokens"]) for r in results[-len(heads):])
                print(f"  {sampler} L={frames}: samples of the {' and '.join(heads)} heads identical: {same}",
                      file=sys.stderr, flush=True)

    header = (
        f"{'sampler':<17} {'head':<6} {'steps':>5} {'L':>4} {'NFE':>6} {'wall s':>8} {'ms/NFE':>8} {'bare s':>8} "
        f"{'vs bare':>8} {'in-run s':>8} {'vs in-run':>9} {'GFLOP':>8} {'head':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['sampler']:<17} {r['head']:<6} {r['steps']:>5} {r['frames']:>4} {r['nfe']:>6} {r['wall']:>8.2f} "
            f"{1e3 * r['wall'] / r['nfe']:>8.2f} {r['bare']:>8.2f} {100 * (r['wall'] / r['bare'] - 1):>+7.1f}% "
            f"{r['inside']:>8.2f} {100 * (r['wall'] / r['inside'] - 1):>+8.1f}% {r['flops'] / 1e9:>8.2f} "
            f"{100 * r['head_share']:>5.1f}%"
        )
    by = {(r["sampler"], r["frames"]): r for r in results if r["head"] == heads[0]}
    if ("mgm", args.frames) not in by or ("fm", args.frames) not in by:
        return
    mgm, fm = by[("mgm", args.frames)], by[("fm", args.frames)]
    print(
        f"MGM chunk / FM chunk: time ratio {mgm['wall'] / fm['wall']:.3f}, NFE ratio {mgm['nfe'] / fm['nfe']:.3f} "
        f"({mgm['nfe']}/{fm['nfe']}), FLOP ratio {mgm['flops'] / fm['flops']:.3f}; "
        f"MGM chunk is {fm['wall'] / mgm['wall']:.1f}x faster"
    )


if __name__ == "__main__":
    main()
