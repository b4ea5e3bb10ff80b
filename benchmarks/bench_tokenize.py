"""Decode + tokenize throughput: the Ray Data pipeline on all cores vs a plain single-process loop.

    .venv/bin/python benchmarks/bench_tokenize.py                       # sample videos, N and 4N, 64 px
    .venv/bin/python benchmarks/bench_tokenize.py --videos DIR --resolution 256 --codebook 1024 --repeats 2

Both ways do the same work on the same files with the same saved tokenizer (patch k-means, fitted once
before timing): decode (decord, sequential, resize + centre crop), cut into segments, tokenize, write
Parquet shards. The plain loop runs in its own process without Ray (``DecodeStage(isolate=False)`` +
``TokenizeStage`` + ``ShardWriter``); the pipeline is :func:`pipeline.job.run_tokenize_job` on a local
Ray with ``--cpus`` CPUs, after one warm-up job (worker processes started, torch imported). Frames/s
count written frames over the decode→write wall time (the pipeline's ``manifest.run.pipeline_s``).

The plain loop runs twice: as is (decord's decoder pipelines FFmpeg in threads of its own, so one
"single" process already keeps ~1.2-1.5 of the 2 cores busy) and pinned to one CPU (``1core``: the
single-core baseline). CPU seconds per 1000 frames (summed over every process involved) show what
Ray's scheduling, serialisation and object store add on top of the work itself.

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
def plain_loop(inputs: str, tokenizer_dir: str, out_dir: str, resolution: int, max_frames_per_segment: int,
               one_core: bool = False) -> dict:
    """Decode, tokenize and write every video of ``inputs`` in this process, one after the other.

    ``one_core`` pins the process to one CPU first: decord's decoder runs FFmpeg in threads of its own
    (and torch has intra-op threads), so an unpinned "single process" already uses ~1.2-1.5 cores.
    """
    import resource

    if one_core:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    import pyarrow as pa

    from pipeline.decode import DecodeConfig, DecodeStage, rows_to_table
    from pipeline.discover import discover_videos
    from pipeline.tokenize import TokenizeStage
    from pipeline.writer import ShardWriter

    items = discover_videos(inputs)
    decode = DecodeStage(DecodeConfig(resolution=resolution, max_frames_per_segment=max_frames_per_segment), isolate=False)
    tokenize = TokenizeStage(tokenizer_dir, batch_size=64, num_threads=1 if one_core else None)  # set up before the clock starts (imports torch)
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


def run_plain(inputs: str, tokenizer_dir: str, resolution: int, max_seg: int, one_core: bool = False) -> dict:
    """:func:`plain_loop` in a fresh process (no Ray imported there; its own peak RSS)."""
    with tempfile.TemporaryDirectory(prefix="bench-plain-") as out:
        cmd = [sys.executable, __file__, "--plain", inputs, tokenizer_dir, out, str(resolution), str(max_seg), str(int(one_core))]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO), check=True)
        return json.loads(res.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ memory sampling
class ProcessTreeMonitor:
    """Samples, in a thread, the summed PSS of this process and all its descendants (peak, MiB) and
    the CPU seconds they spend while the monitor runs (per process: last CPU time seen minus the one
    at the start; processes that appear and exit between two samples are missed)."""

    def __init__(self, interval: float = 0.5):
        import psutil

        self.psutil, self.interval = psutil, interval
        self.peak = 0.0
        self._cpu_start: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def cpu_s(self) -> float:
        return sum(v - self._cpu_start.get(pid, 0.0) for pid, v in self._cpu_last.items())

    def sample(self) -> float:
        me = self.psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_full_info().pss
                t = p.cpu_times()
                cpu = t.user + t.system
            except (self.psutil.Error, AttributeError):
                continue
            self._cpu_last[p.pid] = cpu
        return total / 2**20

    def start_cpu(self) -> None:
        self.sample()
        self._cpu_start = dict(self._cpu_last)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.sample())
            self._stop.wait(self.interval)

    def __enter__(self):
        self.start_cpu()
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
    ap.add_argument("--plain", nargs=6, metavar=("INPUTS", "TOKENIZER", "OUT", "RES", "MAXSEG", "ONECORE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain:
        inputs, tok, out, res, max_seg, one_core = args.plain
        print(json.dumps(plain_loop(inputs, tok, out, int(res), int(max_seg), one_core=one_core == "1")))
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
            with ProcessTreeMonitor() as mon:
                m = run_tokenize_job(cfg)
            r = m["run"]
            return {"frames": r["frames"], "seconds": r["pipeline_s"], "frames_per_s": r["frames"] / r["pipeline_s"],
                    "job_wall_s": r["wall_s"], "peak_mb": mon.peak, "cpu_s": mon.cpu_s}  # fmt: skip

        warm = work / "warm"
        warm.mkdir()
        for f in sorted(sets["N"].iterdir())[:2]:
            (warm / f.name).symlink_to(f.resolve())
        ray_job(warm, work / "out-warm")
        ray_job(warm, work / "out-warm", fused=True)
        idle = ProcessTreeMonitor().sample()
        results["ray_idle_pss_mb"] = idle
        for label in ("N", "4N"):
            runs = {"plain": [], "plain_1core": [], "ray": [], "ray_fused": []}
            for _ in range(args.repeats):  # interleaved, so all see the same machine load
                runs["plain"].append(run_plain(str(sets[label]), tok_dir, args.resolution, args.max_frames_per_segment))
                runs["plain_1core"].append(
                    run_plain(str(sets[label]), tok_dir, args.resolution, args.max_frames_per_segment, one_core=True)
                )
                runs["ray"].append(ray_job(sets[label], work / f"out-{label}"))
                runs["ray_fused"].append(ray_job(sets[label], work / f"out-{label}", fused=True))
            best = {k: max(v, key=lambda r: r["frames_per_s"]) for k, v in runs.items()}
            best["ratio"] = best["ray"]["frames_per_s"] / best["plain"]["frames_per_s"]
            best["ratio_fused"] = best["ray_fused"]["frames_per_s"] / best["plain"]["frames_per_s"]
            best["ratio_1core"] = best["ray"]["frames_per_s"] / best["plain_1core"]["frames_per_s"]
            best["ratio_fused_1core"] = best["ray_fused"]["frames_per_s"] / best["plain_1core"]["frames_per_s"]
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
    print("plain = one process (decord's decoder threads may use a 2nd core); 1core = the same pinned to one CPU;")
    print("ray = Ray Data with a tokenizer actor pool (default); fused = tokenize_in_decode_tasks=true")
    print(f"{'videos':>8} {'frames':>7} | {'frames/s: plain':>15} {'1core':>6} {'ray':>6} {'fused':>6} | "
          f"{'ray/plain':>9} {'ray/1core':>9} {'fused/1core':>11} | {'CPU s per 1k frames: plain':>26} {'1core':>5} "
          f"{'ray':>5} {'fused':>5} | {'peak MiB: plain':>15} {'ray':>5} {'fused':>5}")  # fmt: skip
    for label, r in results["runs"].items():
        p, p1, a, f = r["plain"], r["plain_1core"], r["ray"], r["ray_fused"]
        k = [1000 * x["cpu_s"] / x["frames"] for x in (p, p1, a, f)]
        print(
            f"{label + ' = ' + str(r['videos']):>8} {a['frames']:>7} | {p['frames_per_s']:>15.0f} {p1['frames_per_s']:>6.0f} "
            f"{a['frames_per_s']:>6.0f} {f['frames_per_s']:>6.0f} | {r['ratio']:>8.2f}x {r['ratio_1core']:>8.2f}x "
            f"{r['ratio_fused_1core']:>10.2f}x | {k[0]:>26.2f} {k[1]:>5.2f} {k[2]:>5.2f} {k[3]:>5.2f} | "
            f"{p['peak_mb']:>15.0f} {a['peak_mb']:>5.0f} {f['peak_mb']:>5.0f}"
        )
    print(f"Ray processes idle (after warm-up): {results['ray_idle_pss_mb']:.0f} MiB PSS; results in {out / 'bench_tokenize.json'}")


if __name__ == "__main__":
    main()
