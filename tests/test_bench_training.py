"""benchmarks/bench_training.py: the largest-batch search, and the GPU-only mode refusing a CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_training  # noqa: E402


@pytest.mark.parametrize("answer", [0, 1, 2, 5, 37, 100, 4096])
def test_find_max_batch_from_any_guess_and_in_two_trials_from_a_right_one(answer):
    calls: list[int] = []

    def fits(batch: int) -> bool:
        calls.append(batch)
        return batch <= answer

    for guess in (1, 2, answer, answer + 1, max(1, answer - 1), 3 * answer + 7, max(1, answer // 3), 5000):
        calls.clear()
        assert bench_training.find_max_batch(fits, guess) == answer, guess
        assert len(set(calls)) == len(calls)  # no batch tried twice
    calls.clear()
    bench_training.find_max_batch(fits, answer)
    if 0 < answer < 4096:
        assert calls == [answer, answer + 1]


def test_max_batch_mode_needs_a_gpu_and_timed_steps():
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        bench_training.main(["--device", "cpu", "--max-batch-gib", "80"])
    with pytest.raises(SystemExit):  # argparse's error: at least one timed step
        bench_training.main(["--device", "cpu", "--steps", "0"])
    assert bench_training._out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert bench_training._out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert not bench_training._out_of_memory(RuntimeError("shape mismatch"))
    case = bench_training.Case(name="x", size="small", batch=1, frames=2, latent=4, codebook=16, depth=2)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        bench_training.run_max_batch(case, 1, torch.device("cpu"), 80)


def test_max_batch_report_prints_one_row_per_size_and_head(monkeypatch, capsys):
    """The table at the end of a GPU run (each size × head is a subprocess; here they return made-up results)."""
    import argparse
    import json

    made_up = iter([
        {"case": {"size": "B/2", "head": "masked"}, "parameters": 130e6, "max_batch": 12, "peak_bytes": 78 * 2**30,
         "step_s": 0.5, "tokens_per_s": 12345.0, "mfu": 0.41},
        {"case": {"size": "B/2", "head": "dense"}, "parameters": 130e6, "max_batch": 5, "peak_bytes": 77 * 2**30,
         "step_s": 0.4, "tokens_per_s": 6000.0, "mfu": None},
        {"case": {"size": "XL/2", "head": "masked"}, "parameters": 675e6, "max_batch": 0},
        None,  # a failed subprocess
    ])
    commands = []

    class Done:
        def __init__(self, result):
            self.returncode = 1 if result is None else 0
            self.stdout = "" if result is None else json.dumps(result)

    def run(cmd, **kw):
        commands.append(cmd)
        return Done(next(made_up))

    monkeypatch.setattr(bench_training.subprocess, "run", run)
    args = argparse.Namespace(frames=None, latent=None, codebook=16384, sizes="B/2,XL/2", size="B/2",
                              head_modes="masked,dense", max_batch_gib=80.0, checkpointing=False)
    bench_training.max_batch_report(args, torch.device("cuda"), 3)
    assert len(commands) == 4 and all("--_max_batch" in c for c in commands)
    spec = json.loads(commands[0][commands[0].index("--_max_batch") + 1])
    assert spec["budget_gib"] == 80.0 and (spec["case"]["frames"], spec["case"]["latent"]) == (16, 32)
    out = capsys.readouterr().out
    table = out[out.index("max batch"):].splitlines()[1:]
    assert table[0].split()[:4] == ["B/2", "masked", "130M", "12"] and table[0].endswith("41.0%")
    assert table[1].split()[:4] == ["B/2", "dense", "130M", "5"] and table[1].endswith("n/a")
    assert "batch 1 does not fit" in table[2] and len(table) == 3
    assert "XL/2 dense" in out and "failed (exit 1)" in out
