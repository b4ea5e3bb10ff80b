"""Decode + tokenize throughput: the Ray Data pipeline on all cores vs a plain single-process loop.

    .venv/bin/python benchmarks/bench_tokenize.py                       # sample videos x2 (N) and x8 (4N), 64 px
    .venv/bin/python benchmarks/bench_tokenize.py --videos DIR --resolution 256 --codebook 1024 --repeats 2

Every way does the same work on the same files with the same saved tokenizer (patch k-means, fitted
once before timing): decode (decord, sequential, resize + centre crop), cut into segments, tokenize,
write Parquet shards.

* ``1core``: the plain loop (``DecodeStage(isolate=False)`` + ``TokenizeStage`` + ``ShardWriter``, no
  Ray) in its own process, pinned to one CPU with one torch thread: the single-core baseline.
* ``plain``: the same loop unpinned, with torch's default intra-op threads (which put part of the
  tokenizer on the second core: a "single process" that is not quite single-core).
* ``per-core``: one pinned ``1core`` loop per CPU, all at once, each over all the videos (frames/s
  summed): perfectly independent parallel work, the ceiling of any parallel pipeline on this machine
  (its cores share caches and memory bandwidth, and on a VM the host: the 2-core VM here gives 1.8x).
* ``ray``: :func:`pipeline.job.run_tokenize_job` with its defaults on a local Ray with ``--cpus`` CPUs;
  with no GPU that is decode tasks that tokenize their own segments (``tokenize_in_decode_tasks=auto``).
* ``actors``: the same job with decode tasks feeding a tokenizer actor (``tokenize_in_decode_tasks=false``,
  the GPU layout) run on the CPU, for comparison.

Ray runs one small warm-up job per mode first (its idle worker processes started, as on a cluster).
Frames/s count written frames over the time from the first frame decoded to the last one written
(``manifest.run.pipeline_s - startup_s`` for Ray); the start-up before it (imports, tokenizer load; for
Ray also its workers/actors starting) is printed beside, and the end-to-end ratio includes it.
Runs are interleaved (every mode once, then again) so all see the same machine load; the table gives
the best of ``--repeats`` and, in brackets, the median. CPU seconds per 1000 frames (summed over every
process involved) show what Ray's scheduling, serialisation and object store add to the work itself.

Inputs: N = the sample videos ``--copies`` times, 4N = four times that (symlinks under other names in a
temporary directory, never copies in the repo). Memory: the peak of the summed PSS (proportional set
size: shared pages split between the processes that map them, so Ray's object store is counted once)
of the driver and all its descendants (raylet, workers, decoder children), sampled every 0.5 s; for
the plain loops, their peak RSS. Prints a table and writes ``bench_tokenize.json`` into ``--out``.
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
               core: int | None = None) -> dict:
    """Decode, tokenize and write every video of ``inputs`` in this process, one after the other.

    ``core`` pins the process to that CPU first, with one torch thread; ``None`` leaves it unpinned with
    torch's default intra-op threads (so an unpinned "single process" uses part of a second core).
    """
    import resource

    t_setup = time.perf_counter()
    one_core = core is not None
    if one_core:
        os.sched_setaffinity(0, {core})

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
    setup_s = t0 - t_setup  # imports (torch, pyarrow, decord) and loading the tokenizer
    return {"frames": frames, "seconds": seconds, "frames_per_s": frames / seconds, "peak_mb": peak, "videos": len(items),
            "cpu_s": cpu, "startup_s": setup_s, "e2e_frames_per_s": frames / (setup_s + seconds)}  # fmt: skip


def _start_plain(inputs: str, tokenizer_dir: str, out: str, resolution: int, max_seg: int, core: int | None):
    cmd = [sys.executable, __file__, "--plain", inputs, tokenizer_dir, out, str(resolution), str(max_seg), str(-1 if core is None else core)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(REPO))


def _result(proc) -> dict:
    out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"plain loop failed ({proc.returncode}): {err[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


def run_plain(inputs: str, tokenizer_dir: str, resolution: int, max_seg: int, core: int | None = None) -> dict:
    """:func:`plain_loop` in a fresh process (no Ray started there; its own peak RSS)."""
    with tempfile.TemporaryDirectory(prefix="bench-plain-") as out:
        return _result(_start_plain(inputs, tokenizer_dir, out, resolution, max_seg, core))


def run_plain_per_core(inputs: str, tokenizer_dir: str, resolution: int, max_seg: int, cores: list[int]) -> dict:
    """One pinned :func:`plain_loop` per core, all at once, each over the whole input: what perfectly
    independent parallel work reaches on this machine (the ceiling of any parallel pipeline; cores
    share caches, memory bandwidth and, on a VM, the host). Frames/s are summed."""
    with tempfile.TemporaryDirectory(prefix="bench-percore-") as out:
        procs = [_start_plain(inputs, tokenizer_dir, f"{out}/{c}", resolution, max_seg, c) for c in cores]
        rs = [_result(p) for p in procs]
    frames = sum(r["frames"] for r in rs)
    return {"frames": frames, "frames_per_s": sum(r["frames_per_s"] for r in rs), "cpu_s": sum(r["cpu_s"] for r in rs),
            "seconds": max(r["seconds"] for r in rs), "startup_s": max(r["startup_s"] for r in rs),
            "e2e_frames_per_s": sum(r["e2e_frames_per_s"] for r in rs), "peak_mb": sum(r["peak_mb"] for r in rs)}  # fmt: skip


# ------------------------------------------------------------------------------ memory sampling
class ProcessTreeMonitor:
    """Samples, in a thread, the CPU seconds this process and all its descendants spend while the
    monitor runs (per process: last CPU time seen minus the one at the start; processes that appear
    and exit between two samples are missed) and, with ``memory=True``, their summed PSS (peak, MiB).

    Reading PSS walks every process's page tables (27 ms of CPU per sample of 9 Ray processes, i.e.
    5-10 % of a core at two samples a second): timed runs sample CPU times only, and memory is measured in runs of its own.
    """

    def __init__(self, interval: float = 0.5, memory: bool = False):
        import psutil

        self.psutil, self.interval, self.memory = psutil, interval, memory
        self.peak = 0.0
        self._cpu_start: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def cpu_s(self) -> float:
        return sum(v - self._cpu_start.get(pid, 0.0) for pid, v in self._cpu_last.items())

    def sample(self, memory: bool | None = None) -> float:
        """Record CPU times; returns the summed PSS in MiB (0 unless measuring memory)."""
        memory = self.memory if memory is None else memory
        me = self.psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                if memory:
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


MODES = ("plain", "plain_1core", "per_core", "ray", "ray_actors")


def _median(values: list[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else 0.5 * (v[len(v) // 2 - 1] + v[len(v) // 2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", default=str(REPO.parent / "shared" / "data" / "videos"))
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--codebook", type=int, default=256)
    ap.add_argument("--max-frames-per-segment", type=int, default=64)
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=3, help="runs per measurement, interleaved; best and median are reported")
    ap.add_argument("--copies", type=int, default=2, help="N = the sample videos this many times (4N: four times that)")
    ap.add_argument("--out", default=str(REPO / "outputs" / "bench_tokenize"))
    ap.add_argument("--plain", nargs=6, metavar=("INPUTS", "TOKENIZER", "OUT", "RES", "MAXSEG", "CORE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain:
        inputs, tok, out, res, max_seg, core = args.plain
        print(json.dumps(plain_loop(inputs, tok, out, int(res), int(max_seg), core=None if int(core) < 0 else int(core))))
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

        def ray_job(inputs: Path, out: Path, actors: bool = False, memory: bool = False) -> dict:
            shutil.rmtree(out, ignore_errors=True)
            cfg = {
                "inputs": str(inputs), "output_dir": str(out), "resolution": args.resolution,
                "max_frames_per_segment": args.max_frames_per_segment, "psnr_frames": 0,
                "tokenizer": {"kind": "patch_kmeans", "path": tok_dir}, "eval_fraction": 0.0,
                "tokenize_in_decode_tasks": False if actors else "auto",
            }  # fmt: skip
            with ProcessTreeMonitor(memory=memory) as mon:
                m = run_tokenize_job(cfg)
            r = m["run"]
            steady = r["pipeline_s"] - r["startup_s"]
            return {"frames": r["frames"], "seconds": steady, "frames_per_s": r["frames"] / steady,
                    "startup_s": r["startup_s"], "e2e_frames_per_s": r["frames"] / r["pipeline_s"],
                    "peak_mb": mon.peak, "cpu_s": mon.cpu_s,
                    "tokenize_in_decode_tasks": r["settings"]["tokenize_in_decode_tasks"]}  # fmt: skip

        cores = sorted(os.sched_getaffinity(0))[: args.cpus]

        def run(mode: str, label: str) -> dict:
            if mode == "per_core":
                return run_plain_per_core(str(sets[label]), tok_dir, args.resolution, args.max_frames_per_segment, cores)
            if mode.startswith("plain"):
                core = cores[0] if mode == "plain_1core" else None
                return run_plain(str(sets[label]), tok_dir, args.resolution, args.max_frames_per_segment, core=core)
            return ray_job(sets[label], work / f"out-{label}", actors=mode == "ray_actors")

        # warm-up, like the plain loop's set-up before its clock: Ray's worker processes started, torch
        # imported and the tokenizer cached in them (the actor pool starts a fresh actor every job anyway)
        warm = work / "warm"
        warm.mkdir()
        for f in sorted(sets["N"].iterdir())[:4]:
            (warm / f.name).symlink_to(f.resolve())
        ray_job(warm, work / "out-warm", actors=True)
        ray_job(warm, work / "out-warm")
        results["ray_idle_pss_mb"] = ProcessTreeMonitor().sample(memory=True)
        for label in ("N", "4N"):
            runs: dict[str, list] = {m: [] for m in MODES}
            for _ in range(args.repeats):  # interleaved, so all modes see the same machine load
                for mode in MODES:
                    runs[mode].append(run(mode, label))
            summary: dict = {"videos": len(list(sets[label].iterdir())), "all": runs}
            for mode, rs in runs.items():
                best = max(rs, key=lambda r: r["frames_per_s"])
                summary[mode] = dict(best, median_frames_per_s=_median([r["frames_per_s"] for r in rs]),
                                     e2e_frames_per_s=max(r["e2e_frames_per_s"] for r in rs))  # fmt: skip
                if not mode.startswith("ray"):
                    summary[mode]["peak_mb"] = max(r["peak_mb"] for r in rs)  # the loops' own peak RSS
            for mode in ("ray", "ray_actors"):  # memory: one more run each, PSS sampled (not timed)
                summary[mode]["peak_mb"] = ray_job(sets[label], work / f"out-{label}", actors=mode == "ray_actors", memory=True)["peak_mb"]
            for mode in ("ray", "ray_actors", "per_core"):
                for base in ("plain_1core", "plain", "per_core"):
                    key = f"{mode}/{base}"
                    summary[key] = summary[mode]["frames_per_s"] / summary[base]["frames_per_s"]
                    summary[key + " (median)"] = summary[mode]["median_frames_per_s"] / summary[base]["median_frames_per_s"]
                    summary[key + " (end to end)"] = summary[mode]["e2e_frames_per_s"] / summary[base]["e2e_frames_per_s"]
            results["runs"][label] = summary
        try:
            results["load_average"] = os.getloadavg()
        except OSError:
            pass
    finally:
        shutil.rmtree(work, ignore_errors=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_tokenize.json").write_text(json.dumps(results, indent=2))
    print(f"\ndecode + tokenize + write, {args.resolution} px, K={args.codebook}, {args.cpus} CPUs, best of {args.repeats} "
          f"(median in brackets); load average at the end: {results.get('load_average', ['?'])[0]:.2f}")  # fmt: skip
    print("1core = one process pinned to one CPU (the single-core loop); plain = the same unpinned (torch's intra-op")
    print("threads may use the 2nd core); per-core = one pinned loop per CPU at once, each over all the videos (the")
    print("ceiling of any parallel pipeline here); ray = Ray Data, the default (no GPU: decode tasks that also")
    print("tokenize); actors = decode tasks feeding a tokenizer actor (the GPU layout, tokenize_in_decode_tasks=false).")
    print("frames/s: from the first frame to the last write. start-up = imports + tokenizer load (loops), or Ray Data")
    print("starting its tasks on workers (after the warm-up they have torch and the tokenizer); end to end includes it.")
    print(f"{'videos':>8} {'frames':>7} | {'frames/s: 1core':>15} {'plain':>6} {'per-core':>8} {'ray':>6} {'actors':>6} | "
          f"{'ray/1core':>15} {'ray/plain':>15} {'ray/per-core':>12} {'per-core/1core':>14} {'actors/1core':>12} | "
          f"{'start-up s: 1core':>17} {'ray':>5} | {'end to end: ray/1core':>21} | {'CPU s/1k frames: 1core':>22} "
          f"{'ray':>5} {'actors':>6} | {'peak MiB: 1core':>15} {'ray':>5} {'actors':>6}")  # fmt: skip
    for label, r in results["runs"].items():
        p1, p, pc, a, f = r["plain_1core"], r["plain"], r["per_core"], r["ray"], r["ray_actors"]
        k = [1000 * x["cpu_s"] / x["frames"] for x in (p1, a, f)]
        ratio = lambda key: f"{r[key]:.2f}x ({r[key + ' (median)']:.2f}x)"  # noqa: E731
        print(
            f"{label + ' = ' + str(r['videos']):>8} {a['frames']:>7} | {p1['frames_per_s']:>15.0f} {p['frames_per_s']:>6.0f} "
            f"{pc['frames_per_s']:>8.0f} {a['frames_per_s']:>6.0f} {f['frames_per_s']:>6.0f} | {ratio('ray/plain_1core'):>15} "
            f"{ratio('ray/plain'):>15} {r['ray/per_core']:>11.2f}x {r['per_core/plain_1core']:>13.2f}x "
            f"{r['ray_actors/plain_1core']:>11.2f}x | {p1['startup_s']:>17.1f} {a['startup_s']:>5.1f} | "
            f"{r['ray/plain_1core (end to end)']:>20.2f}x | {k[0]:>22.2f} {k[1]:>5.2f} {k[2]:>6.2f} | "
            f"{p1['peak_mb']:>15.0f} {a['peak_mb']:>5.0f} {f['peak_mb']:>6.0f}"
        )
    print(f"Ray processes idle (after warm-up): {results['ray_idle_pss_mb']:.0f} MiB PSS; results in {out / 'bench_tokenize.json'}")


if __name__ == "__main__":
    main()
