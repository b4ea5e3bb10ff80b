"""The console of the entry points: verbosity words, progress lines, and a quiet stage run whose full
output lands in its log file."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import console

REPO = Path(__file__).resolve().parents[1]


def test_verbosity_words_are_taken_out_of_the_overrides():
    assert console.split_verbosity(["a=1", "-v", "b=2"]) == ("debug", ["a=1", "b=2"])
    assert console.split_verbosity(["--verbose"]) == ("debug", [])
    assert console.split_verbosity(["log_level=debug", "x=1"]) == ("debug", ["x=1"])
    assert console.split_verbosity(["log_level=INFO"]) == ("info", [])
    assert console.split_verbosity(["x=1"]) == ("info", ["x=1"])
    with pytest.raises(ValueError, match="log_level must be one of info, debug"):
        console.split_verbosity(["log_level=loud"])


def test_progress_prints_a_line_every_tenth_with_metrics_and_eta(tmp_path, capsys):
    path = console.setup(tmp_path / "p.log")
    try:
        with console.Progress("train", total=50, unit="step") as bar:
            for step in range(1, 51):
                bar.update(step, {"loss": 1.0 / step, "masked_accuracy": 0.5, "unrelated": 3})
        logging.getLogger("experiments.x").info("an info line: log file only")
        logging.getLogger("experiments.x").warning("a warning: console too")
        logging.getLogger("ray.data").warning("a library warning: log file only")
    finally:
        for h in list(logging.getLogger().handlers):
            if h in console._state["handlers"]:
                logging.getLogger().removeHandler(h)
        console._state["handlers"] = []
    err = capsys.readouterr().err.splitlines()
    lines = [ln for ln in err if ln.startswith("train")]
    assert len(lines) == 10  # 10 %, 20 %, … 90 % and the final "done in" line
    assert lines[0].startswith("train  5/50 steps (10%)  loss 0.200  acc 0.500  ETA ")
    assert "done in" in lines[-1] and "50/50" in lines[-1] and "unrelated" not in "".join(lines)
    assert any("a warning: console too" in ln for ln in err)
    assert not any("log file only" in ln for ln in err)
    text = path.read_text()
    assert "an info line: log file only" in text and "a library warning: log file only" in text


def test_worker_output_goes_to_the_log_file_and_only_errors_and_own_warnings_to_the_console(tmp_path, capsys):
    path = console.setup(tmp_path / "w.log")
    try:
        console._worker_lines({"pid": 7, "actor_name": "RayTrainWorker", "lines": [
            "Reporting training result 1: TrainingReport(checkpoint=None, metrics={'loss': 1.0})",
            "Traceback (most recent call last):",
            "2026-12-03 10:00:00,000\tWARNING train.py:9 -- held-out continuations failed name=experiments.train job_id=01",
            "2026-12-03 10:00:00,000\tWARNING context.py:9 -- a Ray warning name=ray.data job_id=01",
            "2026-12-03 10:00:00,000\tERROR worker.py:9 -- something broke name=ray.train job_id=01",
        ]})
        console._worker_lines({"pid": "raylet", "lines": ["WARNING: 8 PYTHON worker processes have been started"]})
        console._worker_lines({"pid": "raylet", "lines": ["A worker died or was killed while executing a task"]})
    finally:
        for h in list(logging.getLogger().handlers):
            if h in console._state["handlers"]:
                logging.getLogger().removeHandler(h)
        console._state["handlers"] = []
    err = capsys.readouterr().err.splitlines()
    assert err == ["(RayTrainWorker pid=7) WARNING held-out continuations failed",
                   "(RayTrainWorker pid=7) ERROR something broke",
                   "(pid=raylet) A worker died or was killed while executing a task"]
    text = path.read_text()
    assert "Reporting training result 1" in text and "8 PYTHON worker processes" in text and "a Ray warning" in text


def test_metrics_line_and_durations():
    assert console.metrics_line({"loss": 2.3104, "tokens_per_s": 1234.5, "val_masked_accuracy": float("nan")}) == \
        "loss 2.310  tok/s 1.23e+03"
    assert console.format_duration(75) == "1:15" and console.format_duration(3725) == "1:02:05"
    assert console.format_duration(None) == "?"


@pytest.mark.slow
def test_a_stage_run_is_quiet_and_its_log_file_holds_the_rest(tmp_path):
    """python -m experiments.tokenize on 4 tiny videos: a few console lines (progress, result), while the
    log file gets Ray's start-up, Ray Data's execution reports and the workers' output."""
    from experiments.synthetic import write_sprite_videos

    write_sprite_videos(tmp_path / "videos", num_videos=4, num_frames=12, size=32)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": "", "MASKFLOW_NO_BARS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.tokenize", f"inputs={tmp_path / 'videos'}", f"output_dir={tmp_path / 'tokens'}",
         "resolution=32", "tokenizer.codebook_size=16", "min_frames=4", "tokenizer.fit_frames=32", "psnr_frames=4"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    console_lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    logs = list((tmp_path / "outputs" / "logs").glob("tokenize-*.log"))
    assert len(logs) == 1
    log_lines = logs[0].read_text().splitlines()
    assert len(console_lines) <= 15, "\n".join(console_lines)
    assert any(ln.startswith("tokenize  4/4 videos") and "done in" in ln for ln in console_lines), console_lines
    assert not any("Running Dataset" in ln or "Started a local Ray instance" in ln for ln in console_lines)
    assert any("Started a local Ray instance" in ln for ln in log_lines)
    assert any("ray.data" in ln or "Dataset" in ln for ln in log_lines)
    assert len(log_lines) > 2 * len(console_lines)
