"""Decode + tokenize throughput: the Ray Data pipeline on all cores vs a plain single-process loop.

    .venv/bin/python benchmarks/bench_tokenize.py                       # sample videos, N and 4N, 64 px
    .venv/bin/python benchmarks/bench_tokenize.py --videos DIR --resolution 256 --codebook 1024 --repeats 2

Both ways do the same work on the same files with the same saved tokenizer (patch k-means, fitted once
before timing): decode (decord, sequential, resize + centre crop), cut into segments, tokenize, write
Parquet shards. The plain loop runs in its own process without Ray (``DecodeStage(isolate=False)`` +
``TokenizeStage`` + ``ShardWriter``); the pipeline is :func:`pipeline.job.run_tokenize_job` on a local
Ray with ``--cpus`` CPUs, after one warm-up job (worker processes started, torch imported). Frames/s
count written frames over the decode→write wall time (the pipeline's ``manifest.run.pipeline_s``).

Inputs: the N sample videos, and 4N = every video four times under different names (symlinks in a
temporary directory, never copies in the repo). Memory: the peak of the summed PSS (proportional set
size: shared pages split between the processes that map them, so Ray's object store is counted once)
of the driver and all its descendants (raylet, workers, decoder children), sampled every 0.5 s;
for the plain loop, its peak RSS. Prints a table and writes ``bench_tokenize.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VIDEO_EXT = (".mp4", ".avi", ".mkv", ".webm", ".mov")


# ------------------------------------------------------------------------------ the plain loop
def plain_loop(inputs: str, tokenizer_dir: str, out_dir: str, resolution: int, max_frames_per_segment: int) -> dict:
    """Decode, tokenize and write every video of ``inputs`` in this process, one after the other."""
    import resource

    import pyarrow as pa

    from pipeline.decode import DecodeConfig, DecodeStage, rows_to_table
    from pipeline.discover import discover_videos
    from pipeline.tokenize import TokenizeStage
    from pipeline.writer import ShardWriter

    items = discover_videos(inputs)
    decode = DecodeStage(DecodeConfig(resolution=resolution, max_frames_per_segment=max_frames_per_segment), isolate=False)
    tokenize = TokenizeStage(tokenizer_dir, batch_size=64)  # set up before the clock starts (imports torch)
    writer = ShardWriter(out_dir, codebook_size=tokenize.tokenizer.codebook_size)
    u0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = u0.ru_utime + u0.ru_stime
    t0 = time.perf_counter()
    frames, pending, part = 0, [], 0
    for item in items:
        for row in decode.process(item.to_dict()):
            pending.append(tokenize.process(rows_to_table([row])))
            frames += row.get("num_frames", 0)
        if sum(t.num_rows for t in pending) >= 256:
            writer.write(pa.concat_tables(pending), f"plain-{part:06d}")
            pending, part = [], part + 1
    if pending:
        writer.write(pa.concat_tables(pending), f"plain-{part:06d}")
    seconds = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak = usage.ru_maxrss / 1024.0  # KiB -> MiB on Linux
    cpu = usage.ru_utime + usage.ru_stime - cpu0
    return {"frames": frames, "seconds": seconds, "frames_per_s": frames / seconds, "peak_mb": peak, "videos": len(items),
            "cpu_s": cpu}  # fmt: skip  (CPU seconds of the loop: decode + tokenize + write)


def run_plain(inputs: str, tokenizer_dir: str, resolution: int, max_seg: int) -> dict:
    """:func:`plain_loop` in a fresh process (no Ray imported there; its own peak RSS)."""
    with tempfile.TemporaryDirectory(prefix="bench-plain-") as out:
        cmd = [sys.executable, __file__, "--plain", inputs, tokenizer_dir, out, str(resolution), str(max_seg)]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO), check=True)
        return json.loads(res.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ memory sampling
class PeakPSS:
    """Samples the summed PSS of this process and all its descendants in a thread."""

    def __init__(self, interval: float = 0.5):
        import psutil

        self.psutil, self.interval = psutil, interval
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> float:
        me = self.psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_full_info().pss
            except (self.psutil.Error, AttributeError):
                pass
        return total / 2**20

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.sample())
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.sample())


# ------------------------------------------------------------------------------ the benchmark
def make_sets(videos: Path, root: Path, copies_n: int = 1) -> dict[str, Path]:
    files = sorted(p for p in videos.iterdir() if p.suffix.lower() in VIDEO_EXT)
    sets = {}
    for label, copies in (("N", copies_n), ("4N", 4 * copies_n)):
        d = root / label
        d.mkdir(parents=True)
        for c in range(copies):
            for f in files:
                (d / f"c{c}_{f.name}").symlink_to(f)
        sets[label] = d
    return sets


def fit_tokenizer(videos: Path, out: Path, resolution: int, codebook: int) -> str:
    import numpy as np

    from maskflow.tokenizers import PatchKMeansTokenizer
    from pipeline.decode import DecodeConfig, DecodeStage, decode_video

    cfg = DecodeConfig(resolution=resolution, max_frames=64, min_frames=1)
    stage = DecodeStage(cfg, isolate=False)
    frames = [decode_video(str(p), cfg, stage=stage).frames for p in sorted(videos.iterdir()) if p.suffix.lower() in VIDEO_EXT]
    frames = [np.array(f[::4]) for f in frames if len(f)]
    tok = PatchKMeansTokenizer.fit(frames, codebook_size=codebook, patch_size=8, resolution=resolution, seed=0)
    tok.save(out)
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", default=str(REPO.parent / "shared" / "data" / "videos"))
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--codebook", type=int, default=256)
    ap.add_argument("--max-frames-per-segment", type=int, default=64)
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=2, help="runs per measurement; the best is reported")
    ap.add_argument("--copies", type=int, default=1, help="N = the sample videos this many times")
    ap.add_argument("--out", default=str(REPO / "outputs" / "bench_tokenize"))
    ap.add_argument("--plain", nargs=5, metavar=("INPUTS", "TOKENIZER", "OUT", "RES", "MAXSEG"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain:
        inputs, tok, out, res, max_seg = args.plain
        print(json.dumps(plain_loop(inputs, tok, out, int(res), int(max_seg))))
        return

    logging.basicConfig(level=logging.WARNING)
    import ray

    from pipeline.job import run_tokenize_job

    work = Path(tempfile.mkdtemp(prefix="bench-tokenize-"))
    results: dict = {"settings": {k: v for k, v in vars(args).items() if k != "plain"}, "runs": {}}
    try:
        sets = make_sets(Path(args.videos), work / "inputs", args.copies)
        tok_dir = fit_tokenizer(Path(args.videos), work / "tokenizer", args.resolution, args.codebook)
        # a shared, busy 2-core box can stall the raylet for seconds: be patient before declaring it dead
        ray.init(
            num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
            _system_config={"health_check_failure_threshold": 30, "health_check_timeout_ms": 30000},
        )  # fmt: skip
        ray.data.DataContext.get_current().enable_progress_bars = False

        def ray_job(inputs: Path, out: Path, fused: bool = False) -> dict:
            shutil.rmtree(out, ignore_errors=True)
            cfg = {
                "inputs": str(inputs), "output_dir": str(out), "resolution": args.resolution,
                "max_frames_per_segment": args.max_frames_per_segment, "psnr_frames": 0,
                "tokenizer": {"kind": "patch_kmeans", "path": tok_dir}, "eval_fraction": 0.0,
                "tokenize_in_decode_tasks": fused,
            }  # fmt: skip
            with PeakPSS() as mem:
                m = run_tokenize_job(cfg)
            r = m["run"]
            return {"frames": r["frames"], "seconds": r["pipeline_s"], "frames_per_s": r["frames"] / r["pipeline_s"],
                    "job_wall_s": r["wall_s"], "peak_mb": mem.peak}  # fmt: skip

        warm = work / "warm"
        warm.mkdir()
        for f in sorted(sets["N"].iterdir())[:2]:
            (warm / f.name).symlink_to(f.resolve())
        ray_job(warm, work / "out-warm")
        ray_job(warm, work / "out-warm", fused=True)
        idle = PeakPSS().sample()
        results["ray_idle_pss_mb"] = idle
        for label in ("N", "4N"):
            runs = {"plain": [], "ray": [], "ray_fused": []}
            for _ in range(args.repeats):  # interleaved, so all see the same machine load
                runs["plain"].append(run_plain(str(sets[label]), tok_dir, args.resolution, args.max_frames_per_segment))
                runs["ray"].append(ray_job(sets[label], work / f"out-{label}"))
                runs["ray_fused"].append(ray_job(sets[label], work / f"out-{label}", fused=True))
            best = {k: max(v, key=lambda r: r["frames_per_s"]) for k, v in runs.items()}
            best["ratio"] = best["ray"]["frames_per_s"] / best["plain"]["frames_per_s"]
            best["ratio_fused"] = best["ray_fused"]["frames_per_s"] / best["plain"]["frames_per_s"]
            best["videos"] = len(list(sets[label].iterdir()))
            best["all"] = runs
            results["runs"][label] = best
        try:
            results["load_average"] = os.getloadavg()
        except OSError:
            pass
    finally:
        shutil.rmtree(work, ignore_errors=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_tokenize.json").write_text(json.dumps(results, indent=2))
    print(f"\ndecode + tokenize + write, {args.resolution} px, K={args.codebook}, {args.cpus} CPUs "
          f"(load average at the end: {results.get('load_average', ['?'])[0]})")  # fmt: skip
    print("ray = Ray Data, tokenizer actor pool (default); fused = tokenize_in_decode_tasks=true")
    print(f"{'videos':>8} {'frames':>7} | {'frames/s: plain':>15} {'ray':>7} {'fused':>7} | {'ratio ray':>9} {'fused':>6} | "
          f"{'peak MiB: plain RSS':>19} {'ray PSS':>8} {'fused':>6}")  # fmt: skip
    for label, r in results["runs"].items():
        p, a, f = r["plain"], r["ray"], r["ray_fused"]
        print(
            f"{label + ' = ' + str(r['videos']):>8} {a['frames']:>7} | {p['frames_per_s']:>15.1f} {a['frames_per_s']:>7.1f} "
            f"{f['frames_per_s']:>7.1f} | {r['ratio']:>8.2f}x {r['ratio_fused']:>5.2f}x | {p['peak_mb']:>19.0f} "
            f"{a['peak_mb']:>8.0f} {f['peak_mb']:>6.0f}"
        )
    print(f"Ray processes idle (after warm-up): {results['ray_idle_pss_mb']:.0f} MiB PSS; results in {out / 'bench_tokenize.json'}")


if __name__ == "__main__":
    main()
