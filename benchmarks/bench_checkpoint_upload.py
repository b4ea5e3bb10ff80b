"""Checkpoint upload: how long every rank waits at ``ray.train.report`` with a large checkpoint, with
Ray Train's synchronous upload and with its asynchronous one (``run.checkpoint_upload``: ``sync`` |
``async``, ``ray.train.CheckpointUploadMode``), side by side.

    .venv/bin/python -m benchmarks.bench_checkpoint_upload                       # 1 GiB, local storage
    .venv/bin/python -m benchmarks.bench_checkpoint_upload --size-mb 2048 --storage s3://bucket/tmp

Each run: a 2-worker ``TorchTrainer`` does ``--steps`` steps of ``--step-s`` seconds of work (a sleep:
the benchmark measures waiting, not compute) and reports a checkpoint every ``--every`` steps; rank 0
writes ``--size-mb`` MiB to a local temporary directory, as :mod:`experiments.train` does, and Ray Train
copies it to ``--storage`` (a local directory by default: an upload to object storage takes longer and
gains more). Every rank times its ``ray.train.report`` calls. The modes alternate over ``--repeats``
rounds so that machine load hits both alike; the table prints the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

_CHUNK = b"\x5a" * (1 << 22)


def _loop(config: dict) -> None:
    import ray.train
    from ray.train import Checkpoint, CheckpointUploadMode

    rank = ray.train.get_context().get_world_rank()
    mode = CheckpointUploadMode.ASYNC if config["mode"] == "async" else CheckpointUploadMode.SYNC
    waits, ckpt_waits, write_s = [], [], 0.0
    t_start = time.perf_counter()
    for step in range(1, config["steps"] + 1):
        time.sleep(config["step_s"])  # the training step
        checkpoint = None
        if step % config["every"] == 0 and rank == 0:
            t0 = time.perf_counter()
            tmp = tempfile.mkdtemp(prefix="bench-ckpt-")
            with open(os.path.join(tmp, "state.bin"), "wb") as f:
                for _ in range(config["size_mb"] // 4):
                    f.write(_CHUNK)
            write_s += time.perf_counter() - t0
            checkpoint = Checkpoint.from_directory(tmp)
        t0 = time.perf_counter()
        if step % config["every"] == 0:
            ray.train.report({"step": step}, checkpoint=checkpoint, checkpoint_upload_mode=mode,
                             delete_local_checkpoint_after_upload=True)
            ckpt_waits.append(time.perf_counter() - t0)
        else:
            ray.train.report({"step": step})
            waits.append(time.perf_counter() - t0)
    wall = time.perf_counter() - t_start
    Path(config["out"], f"{config['mode']}-{config['round']}-rank{rank}.json").write_text(json.dumps(
        {"wall_s": wall, "checkpoint_report_s": ckpt_waits, "plain_report_s": waits, "write_s": write_s}))


def _run(mode: str, rnd: int, args, storage: str, out: str) -> dict:
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        _loop,
        train_loop_config={"mode": mode, "round": rnd, "steps": args.steps, "step_s": args.step_s, "every": args.every,
                           "size_mb": args.size_mb, "out": out},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name=f"bench-{mode}-{rnd}-{time.time_ns()}", storage_path=storage,
                             checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )
    t0 = time.perf_counter()
    trainer.fit()
    fit_s = time.perf_counter() - t0
    ranks = [json.loads(Path(out, f"{mode}-{rnd}-rank{r}.json").read_text()) for r in (0, 1)]
    return {"fit_s": fit_s, "ranks": ranks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="checkpoint size (MiB, multiple of 4)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--every", type=int, default=4, help="a checkpoint every N steps")
    parser.add_argument("--step-s", type=float, default=1.0, help="seconds of (simulated) work per step")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--storage", default=None, help="Ray Train storage path or URI (default: a temp dir)")
    args = parser.parse_args()

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="bench-upload-") as tmp:
        storage = args.storage or os.path.join(tmp, "storage")
        rows: dict[str, list[dict]] = {"sync": [], "async": []}
        for rnd in range(args.repeats):
            for mode in ("sync", "async") if rnd % 2 == 0 else ("async", "sync"):
                rows[mode].append(_run(mode, rnd, args, storage, tmp))
    ray.shutdown()

    def med(values):
        return statistics.median(values) if values else float("nan")

    n_ckpt = args.steps // args.every
    print(f"\ncheckpoint {args.size_mb} MiB every {args.every} steps of {args.step_s:.1f} s, {n_ckpt} checkpoints per run, "
          f"2 workers, storage {args.storage or 'local temp dir'}; medians of {args.repeats} runs per mode")
    print(f"{'':36s}{'sync':>10s}{'async':>10s}")
    lines = [
        ("rank 0 wait at a checkpoint report", lambda r: med([w for x in r for w in x["ranks"][0]["checkpoint_report_s"]])),
        ("rank 1 wait at a checkpoint report", lambda r: med([w for x in r for w in x["ranks"][1]["checkpoint_report_s"]])),
        ("rank 1 wait at the other reports", lambda r: med([sum(x["ranks"][1]["plain_report_s"]) / n_ckpt for x in r])),
        ("rank 0 writing the checkpoint", lambda r: med([x["ranks"][0]["write_s"] / n_ckpt for x in r])),
        ("rank 0 loop wall time", lambda r: med([x["ranks"][0]["wall_s"] for x in r])),
        ("fit() wall time (incl. start-up)", lambda r: med([x["fit_s"] for x in r])),
    ]
    for label, fn in lines:
        print(f"{label:36s}{fn(rows['sync']):>9.2f}s{fn(rows['async']):>9.2f}s")
    ideal = args.steps * args.step_s
    print(f"{'(work alone: steps x step time)':36s}{ideal:>9.2f}s{ideal:>9.2f}s")
    print("waits are per checkpoint; rank 0 writes its checkpoint to local disk before the report in both modes "
          "(the other ranks wait for that at the report barrier), the upload to storage is what async takes off")


if __name__ == "__main__":
    main()
