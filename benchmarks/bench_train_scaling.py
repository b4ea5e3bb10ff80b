"""Ray Train data-parallel scaling: training tokens/s with 1 and with 2 workers, side by side in one run.

    .venv/bin/python benchmarks/bench_train_scaling.py shards=outputs/demo/tokens [max_steps=40 model.size=small]

Runs ``experiments.train`` twice on the same shards (same model, per-worker batch, steps) and prints
the steady-state ``tokens_per_s`` each run logged (mean over log windows after the first), and their
ratio (target on CPU: ≥ 1.7×; on GPUs the same command with ``scaling.use_gpu=true``).
Any ``key=value`` is passed to the training config.

On CPU every worker trains with one torch thread per CPU Ray gives it: 1 CPU for the single worker; on
a 2-CPU machine the 2 workers get 0.5 CPU each (one CPU stays free for Ray Data, see
``experiments.train._cpus_per_worker``), i.e. one thread each, so both runs compute with one thread
per worker and the ratio is the data-parallel efficiency.

Measured on the 2-core VM (2026-11-22, nothing else running): 1.63x (batch 8, 40 steps) and 1.60x
(batch 16, 50 steps). With 2 workers both cores train, and Ray Data's reads, the split coordinator,
the Train controller and the driver (~10-15 % of a core together) take time from them.
"""

from __future__ import annotations

import sys
import tempfile

import numpy as np


def main(argv: list[str]) -> None:
    import ray

    from experiments import tracking, train
    from experiments.config import load_config

    tmp = tempfile.mkdtemp(prefix="bench_scaling_")
    ray.init()
    results = {}
    for workers in (1, 2):
        cfg = load_config("train", [
            "model.size=small", "chunk_size=8", "loop.max_steps=40", "loop.log_every=5", "loop.checkpoint_every=1000",
            "loop.batch_size_per_worker=8", "mlflow.system_metrics=false", f"run.storage_path={tmp}",
            f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db", "mlflow.experiment=bench-scaling",
            f"run_name=w{workers}", f"scaling.num_workers={workers}", *argv,
        ])
        out = train.main(cfg)
        client = tracking.get_client(out["tracking_uri"])
        rates = tracking.metric_history(client, out["mlflow_run_id"], "tokens_per_s")
        results[workers] = (float(np.mean(rates[1:] or rates)), float(ray.cluster_resources().get("CPU", 0)))
    one, two = results[1][0], results[2][0]
    print(f"\n{'workers':>8} {'tokens/s':>12}")
    for w, (rate, _) in results.items():
        print(f"{w:>8} {rate:>12,.0f}")
    print(f"scaling 2 vs 1 workers: {two / one:.2f}x (target >= 1.7x) on {results[1][1]:.0f} CPUs")


if __name__ == "__main__":
    main(sys.argv[1:])
