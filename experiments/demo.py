"""The main job end to end on a local default: videos → tokens → Ray Train → samples → MLflow.

    make demo                       # moving-sprite videos the demo renders itself
    make demo VIDEOS=~/clips OUT=outputs/mine
    python -m experiments.demo videos=DIR out_dir=DIR max_steps=500 sampler=fm sampling_steps=50

Stages (each is also its own command, see README): ``experiments.tokenize`` (Ray Data: decode with
decord, fit the CPU patch-k-means tokenizer on the videos, tokenize, Parquet + manifest),
``experiments.train`` (Ray Train DDP, 2 workers, MLflow from rank 0), ``experiments.sample`` (MGM
chunkwise sampling of ``extrapolation × chunk_size`` frames from held-out context, MP4 + GIF).
Everything lands in ``out_dir``; the summary is printed and written to ``out_dir/summary.json``.
Running it again with the same ``out_dir`` reuses the finished stages (tokens, checkpoint).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from experiments import console
from experiments.config import ConfigError, load_config

log = logging.getLogger("experiments.demo")

__all__ = ["DATA_DEFAULTS", "data_kind", "main", "resolve_defaults"]


#: what each ``null`` setting of the demo becomes, by what it trains on: the rendered sprites (MaskFlow),
#: the rendered variable-length sprites (``dynamics=flowception``) or the user's ``videos``
DATA_DEFAULTS: dict[str, dict[str, Any]] = {
    "sprites": {"synthetic_motion": "kinds", "num_synthetic_videos": 1024, "model_size": "tiny", "patch_size": 1,
                "chunk_size": 3, "max_steps": 5000, "lr_decay": "cosine", "extrapolation": 5},
    "flowception": {"synthetic_motion": "grid", "num_synthetic_videos": 256, "model_size": "small", "patch_size": 2,
                    "chunk_size": 8, "max_steps": 1000, "lr_decay": "constant", "extrapolation": 2},
    "videos": {"model_size": "small", "patch_size": 1, "chunk_size": 8, "max_steps": 1000, "lr_decay": "constant",
               "extrapolation": 2},
}


def data_kind(cfg: DictConfig) -> str:
    """``'videos'`` when ``cfg.videos`` is set, else ``'flowception'`` or ``'sprites'`` by ``cfg.dynamics``."""
    from experiments.flowception import dynamics

    if cfg.videos:
        return "videos"
    return "flowception" if dynamics(cfg) == "flowception" else "sprites"


def resolve_defaults(cfg: DictConfig) -> DictConfig:
    """A copy of the demo config with every ``null`` setting of :data:`DATA_DEFAULTS` filled for its data.

    Why the settings differ by data (measured, docs/training.md):

    - ``patch_size``: 1 for the sprites and real videos, 2 for ``dynamics=flowception`` (whose figures
      were measured with it). With real videos the held-out continuations hold 2×2 code patterns training
      never saw, and the ``small`` backbone (width 128) cannot carry four unseen codes of one transformer
      token through to the head (on the shared sample videos a ``p = 2`` model predicted a static held-out
      frame's next frame with 0.79 token accuracy, copying the last frame 0.97, a ``p = 1`` model 0.97).
      With the sprites, a ``p = 2`` model learns the moves that stay inside a transformer token but not
      the ones that cross into the next (0.94–0.96 against 0.37–0.44 of such sprite tokens right after
      6000 steps on 4-frame windows); at ``p = 1`` every move is one between transformer tokens, and
      these are learnt after 2000–2500 steps.
    - the sprites (``synthetic_motion=kinds``: each colour moves right or down, wrapping around) are
      learnt by the ``tiny`` model (at ``p = 2`` its steps cost about a quarter of the ``small`` model's,
      and ``small`` did no better in the same time) on 3-frame windows: with ``n_context_frames = 2``
      each chunk then makes one new frame, always the next one (a sprite one cell on), and the training
      windows with both context frames clean supervise exactly that; the far frames of longer windows need offsets of two and more cells, which
      are learnt later and hold the rest back. With 256 videos instead of 1024 it memorises them sooner.

    Returns:
        A new config (``cfg`` is not modified) with ``synthetic_motion``, ``num_synthetic_videos``,
        ``model_size``, ``patch_size``, ``chunk_size``, ``max_steps``, ``lr_decay`` and ``extrapolation``
        set (the first two only for rendered videos).
    """
    from omegaconf import OmegaConf

    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for key, value in DATA_DEFAULTS[data_kind(cfg)].items():
        if out.get(key) is None:
            out[key] = value
    return out


def main(cfg: DictConfig) -> dict[str, Any]:
    """Run the demo; returns (and writes to ``out_dir/summary.json``) what it did."""
    from experiments import flowception as flowception_stack
    from experiments import sample as sample_stage
    from experiments import tokenize as tokenize_stage
    from experiments import tracking
    from experiments import train as train_stage
    from experiments.synthetic import write_sprite_videos

    t_start = time.perf_counter()
    cfg = resolve_defaults(cfg)
    out = Path(str(cfg.out_dir)).resolve()
    out.mkdir(parents=True, exist_ok=True)
    console.setup(out / "demo.log", level=None)  # the level (-v) was chosen by the command line
    console.status("MaskFlow demo → %s (full log: %s)", out, console.log_file())
    uri = tracking.resolve_tracking_uri(None, workdir=out)
    tracking.ensure_experiment(tracking.get_client(uri), "maskflow-demo",
                               "The MaskFlow demo: the tokenize run, the training run and, nested under it, its "
                               "sampling run. Compare sample frames in the chart view (image sample/real_vs_generated).")
    console.init_ray()
    timings: dict[str, float] = {}

    # ---------------------------------------------------------------- 1. videos
    t0 = time.perf_counter()
    if cfg.videos:
        videos = Path(str(cfg.videos)).expanduser().resolve()
        if not videos.is_dir():
            raise FileNotFoundError(f"videos={cfg.videos} is not a directory")
    else:
        videos = out / "videos"
        # grid motion moves sprites on the tokenizer's token grid (resolution / patch size cells); rendered at
        # the tokenizer's resolution, so decoding does not resize them: a bicubic resize rings around every
        # sprite edge, and k-means gives each halo (per colour, background and side) codes of its own
        patch = int(load_config("tokenize", []).tokenizer.patch_size)
        try:  # a directory rendered with other settings is refused (its videos would be reused)
            if flowception_stack.dynamics(cfg) == "flowception":  # videos of a few distinct lengths (Figure 11)
                flowception_stack.write_variable_length_sprites(
                    videos, int(cfg.num_synthetic_videos), list(cfg.flowception_lengths), seed=int(cfg.seed),
                    motion=str(cfg.synthetic_motion), grid_cells=int(cfg.resolution) // patch, size=int(cfg.resolution),
                )
            else:
                write_sprite_videos(
                    videos,
                    num_videos=int(cfg.num_synthetic_videos),
                    num_frames=int(cfg.synthetic_frames),
                    seed=int(cfg.seed),
                    motion=str(cfg.synthetic_motion),
                    grid_cells=int(cfg.resolution) // patch,
                    size=int(cfg.resolution),
                )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    timings["videos_s"] = time.perf_counter() - t0

    # -------------------------------------------------------------- 2. tokenize
    t0 = time.perf_counter()
    k = int(cfg.chunk_size)
    tok_cfg = load_config(
        "tokenize",
        [
            f"inputs={videos}",
            f"output_dir={out / 'tokens'}",
            "mlflow.experiment=maskflow-demo",
            f"resolution={int(cfg.resolution)}",
            f"tokenizer.codebook_size={int(cfg.codebook_size)}",
            f"min_frames={k if flowception_stack.dynamics(cfg) != 'flowception' else int(cfg.n_context_frames) + 1}",
            f"split={cfg.split}",
            f"seed={int(cfg.seed)}",
        ],
    )
    manifest = tokenize_stage.main(tok_cfg)
    timings["tokenize_s"] = time.perf_counter() - t0

    # ----------------------------------------------------------------- 3. train
    t0 = time.perf_counter()
    train_cfg = load_config(
        "train",
        [
            f"shards={out / 'tokens'}",
            "run_name=demo",
            f"chunk_size={k}",
            f"dynamics={flowception_stack.dynamics(cfg)}",
            f"seed={int(cfg.seed)}",
            f"model.size={cfg.model_size}",
            f"model.patch_size={int(cfg.patch_size)}",
            f"method.max_context_frames={int(cfg.n_context_frames)}",
            f"optim.lr={float(cfg.lr)}",
            "optim.warmup_steps=20",
            f"optim.lr_decay={cfg.lr_decay}",
            "optim.ema_decay=0.995",  # a few hundred steps: a 0.9999 EMA would still be the initial weights
            "optim.ema_warmup=true",
            f"loop.max_steps={int(cfg.max_steps)}",
            f"loop.batch_size_per_worker={int(cfg.batch_size_per_worker)}",
            "loop.log_every=10",
            f"loop.eval_every={max(1, int(cfg.max_steps) // 5)}",
            f"loop.heldout_clips={int(cfg.num_heldout_clips)}",
            f"loop.sample_sampling_steps={int(cfg.sampling_steps)}",
            f"loop.checkpoint_every={int(cfg.max_steps)}",
            f"scaling.num_workers={int(cfg.num_workers)}",
            f"run.storage_path={out / 'ray_results'}",
            "mlflow.experiment=maskflow-demo",
        ],
    )
    trained = train_stage.main(train_cfg)
    timings["train_s"] = time.perf_counter() - t0

    # ---------------------------------------------------------------- 4. sample
    t0 = time.perf_counter()
    sample_cfg = load_config(
        "sample",
        [
            f"checkpoint={trained['checkpoint']}",
            f"out_dir={out / 'samples'}",
            f"sampler={'flowception' if flowception_stack.dynamics(cfg) == 'flowception' else cfg.sampler}",
            f"sampling_steps={int(cfg.sampling_steps)}",
            f"n_context_frames={int(cfg.n_context_frames)}",
            f"stride={'null' if cfg.stride is None else int(cfg.stride)}",
            f"extrapolation={int(cfg.extrapolation)}",
            *([f"num_frames={k}"] if flowception_stack.dynamics(cfg) == "flowception" else []),  # the longest video
            f"num_videos={int(cfg.num_heldout_clips)}",
            f"fvd={str(bool(cfg.fvd)).lower()}",
            f"seed={int(cfg.seed)}",
            "mlflow.experiment=maskflow-demo",
            f"mlflow.parent_run_id={trained['mlflow_run_id']}",
        ],
    )
    sampled = sample_stage.main(sample_cfg)
    timings["sample_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start

    counts = manifest.get("counts", {})
    video0 = sampled["videos"][0]
    q, final = sampled.get("quality") or {}, trained.get("final_metrics") or {}
    quality = {
        "split": trained["data"].get("split"),
        "heldout_clips": q.get("num_videos"),
        "heldout_frames": sampled["num_frames"],
        "heldout_token_accuracy": q.get("token_accuracy"),
        "copy_last_frame_token_accuracy": q.get("copy_last_frame_token_accuracy"),
        "foreground_token_accuracy": q.get("foreground_token_accuracy"),
        "copy_last_frame_foreground_token_accuracy": q.get("copy_last_frame_foreground_token_accuracy"),
        "foreground_share": q.get("foreground_share"),
        "real_foreground_share": q.get("real_foreground_share"),
        "psnr_db": q.get("psnr"),
        "copy_last_frame_psnr_db": q.get("copy_last_frame_psnr"),
        "ssim": q.get("ssim"),
        "copy_last_frame_ssim": q.get("copy_last_frame_ssim"),
        "fvd": q.get("fvd"),
        "fvd_n": q.get("fvd_n"),
        "unseen_code_share": trained["data"].get("unseen_code_share"),
        "val_masked_accuracy": final.get("val_masked_accuracy"),
        "val_masked_ce": final.get("val_masked_ce"),
    }
    summary = {
        "videos_dir": str(videos),
        "videos_found": counts.get("videos_found"),
        "videos_tokenized": counts.get("videos_ok"),
        "videos_failed": [{"source": f["source"], "reason": f["reason"]} for f in manifest.get("failures", [])],
        "segments": counts.get("segments"),
        "shard_dir": str(out / "tokens"),
        "tokenizer_id": manifest.get("tokenizer", {}).get("tokenizer_id"),
        "tokenizer_psnr_db": manifest.get("reconstruction_psnr_db"),
        "checkpoint": trained["checkpoint"],
        "train_steps": trained["steps"],
        "model": {"size": str(cfg.model_size), "patch_size": int(cfg.patch_size)},
        "settings": {key: cfg[key] for key in DATA_DEFAULTS[data_kind(cfg)]},  # what the null ones became
        "loss_first": trained["first_loss"],
        "loss_last": trained["final_loss"],
        "mlflow_tracking_uri": uri,
        "mlflow_run_ids": {"train": trained["mlflow_run_id"], "sample": sampled["mlflow_run_id"]},
        "mlflow_model_uri": trained.get("model_uri"),
        "mlflow_ui": tracking.ui_link(tracking.get_client(uri), trained["mlflow_run_id"]),
        "sample_video": video0["mp4"],
        "sample_gif": video0["gif"],
        "sample_comparison_gif": video0.get("comparison_gif"),
        "sample_frames": sampled.get("sample_frames", sampled["num_frames"]),
        "length_histogram": sampled.get("length_histogram"),
        "sample_nfe": sampled["nfe"],
        "sample_expected_nfe": sampled["expected_nfe"],
        "sampler": sampled["sampler"],
        "context_frames_exact": sampled["context_frames_exact"],
        "quality": quality,
        "timings_s": {k2: round(v, 1) for k2, v in timings.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    _print_summary(summary, out)
    return summary


def _fmt(value: Any, spec: str = ".3f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) and value == value else "n/a"


def _frames(counts: Any) -> str:
    """``16`` for one length or equal lengths, ``4-8 (mean 6.2)`` for Flowception's generated lengths."""
    if not isinstance(counts, (list, tuple)):
        return str(counts)
    if len(set(counts)) == 1:
        return str(counts[0])
    return f"{min(counts)}-{max(counts)} (mean {sum(counts) / len(counts):.1f})"


def _print_summary(s: dict[str, Any], out: Path) -> None:
    q = s["quality"]
    lines = [
        "",
        "MaskFlow demo finished in {:.0f} s".format(s["timings_s"]["total_s"]),
        f"  videos      {s['videos_tokenized']} tokenized, {len(s['videos_failed'])} skipped  ({s['videos_dir']})",
    ]
    for f in s["videos_failed"]:
        lines.append(f"                skipped {Path(f['source']).name}: {f['reason']}")
    psnr = s["tokenizer_psnr_db"]
    lines += [
        f"  tokens      {s['shard_dir']}  ({s['segments']} segments, tokenizer {s['tokenizer_id']}, "
        f"reconstruction PSNR {psnr:.1f} dB)" if isinstance(psnr, (int, float)) else f"  tokens      {s['shard_dir']}",
        f"  training    {s['train_steps']} steps ({s['model']['size']} backbone, patch {s['model']['patch_size']}), "
        f"masked CE {s['loss_first']:.3f} -> {s['loss_last']:.3f} nats; "
        f"held-out validation: masked accuracy {_fmt(q['val_masked_accuracy'])}, masked CE {_fmt(q['val_masked_ce'])}",
        f"  checkpoint  {s['checkpoint']}",
        f"  held-out    {q['heldout_clips']} clips ({q['split']} split), "
        f"{'up to ' if s.get('length_histogram') else ''}{q['heldout_frames']} frames from "
        f"{s['sampler'].get('n_context_frames')} real ones: generated vs copy-last-frame baseline"
        f"{' (over the frames both videos have)' if s.get('length_histogram') else ''}",
        f"                token accuracy  {_fmt(q['heldout_token_accuracy'])}  vs  {_fmt(q['copy_last_frame_token_accuracy'])}",
        f"                foreground acc  {_fmt(q['foreground_token_accuracy'])}  vs  "
        f"{_fmt(q['copy_last_frame_foreground_token_accuracy'])}  (non-background tokens: "
        f"{_fmt(q['foreground_share'])} generated, {_fmt(q['real_foreground_share'])} real)",
        f"                PSNR            {_fmt(q['psnr_db'], '.2f')}  vs  {_fmt(q['copy_last_frame_psnr_db'], '.2f')} dB",
        f"                FVD             {_fmt(q['fvd'], '.1f')} (N = {q['fvd_n'] or 'n/a'})",
        f"                held-out tokens with codes unseen in training: {_fmt(q['unseen_code_share'], '.3f')}",
        f"  sample      {s['sample_comparison_gif'] or s['sample_gif']}  ({_frames(s['sample_frames'])} frames, NFE {s['sample_nfe']}, "
        f"context frames exact: {s['context_frames_exact']})",
        *([f"  lengths     generated {s['length_histogram']['generated']}  real {s['length_histogram']['real']}"]
          if s.get("length_histogram") else []),
        f"  MLflow      {s['mlflow_tracking_uri']}  runs {s['mlflow_run_ids']}",
        f"              open it:  .venv/bin/mlflow ui --backend-store-uri {s['mlflow_tracking_uri']} --port 5000",
        f"              then {s['mlflow_ui']}  (runs table; the sampling run is nested under the training run)",
        f"  summary     {out / 'summary.json'}",
    ]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":  # pragma: no cover - CLI
    import sys

    from experiments.cli import command_line_config, run

    level, words = console.split_verbosity(sys.argv[1:])
    demo_cfg = command_line_config("demo", words)  # --help, --cfg; exit code 2 on a config error
    console.setup(Path(str(demo_cfg.out_dir)) / "demo.log", level)
    run(main, "demo", demo_cfg)
