"""The experiment entry points end to end on a tiny dataset: tokenize → Ray Train (2 workers, resume,
injected failure) → sample → sweep (one failing trial) → report. Shares one local Ray and one MLflow store."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from experiments.config import ConfigError, load_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def shards(token_shards) -> Path:
    return token_shards


def _train_cfg(shards: Path, name: str, **kw) -> list[str]:
    words = {
        "shards": shards, "run_name": name, "chunk_size": 8, "model.size": "tiny", "loop.max_steps": 4,
        "loop.batch_size_per_worker": 2, "loop.log_every": 1, "loop.checkpoint_every": 2,
        "loop.min_steps_per_epoch": 3, "run.storage_path": shards.parent / "ray_results",
        "mlflow.system_metrics": False, "optim.lr": 1e-3, "mlflow.experiment": "test-train",
        "loop.sample_sampling_steps": 2,
    }
    words.update(kw)
    return [f"{k}={v}" for k, v in words.items()]


def _state(checkpoint: str) -> dict:
    from experiments.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint)


def test_train_checkpoints_and_resumes_exactly(shards):
    from experiments import train, tracking

    first = train.main(load_config("train", _train_cfg(shards, "resume")))
    s1 = _state(first["checkpoint"])
    assert first["steps"] == 4 and s1["step"] == 4 and not first["resumed"]
    adam_steps = {int(v["step"]) for v in s1["optimizer"]["state"].values()}
    assert adam_steps == {4}
    assert s1["ema"]["num_updates"] == 4 and s1["config"]["run_name"] == "resume"
    assert s1["rng"]["torch"].dtype == torch.uint8 and s1["rng"]["torch"].numel() > 0  # global generator state
    # the same command with the same run name continues: same MLflow run, step count and optimizer state go on
    second = train.main(load_config("train", _train_cfg(shards, "resume", **{"loop.max_steps": 6})))
    s2 = _state(second["checkpoint"])
    assert second["resumed"] and second["mlflow_run_id"] == first["mlflow_run_id"]
    assert s2["step"] == 6 and {int(v["step"]) for v in s2["optimizer"]["state"].values()} == {6}
    client = tracking.get_client()
    steps = [m.step for m in client.get_metric_history(first["mlflow_run_id"], "train/masked_ce")]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6], "a resumed job logs the steps it has not logged yet"
    videos = sorted(a.path for a in client.list_artifacts(first["mlflow_run_id"], "samples"))
    assert videos == ["samples/step_0000004.gif", "samples/step_0000004.mp4", "samples/step_0000006.gif",
                      "samples/step_0000006.mp4"], videos


def test_injected_worker_failure_recovers_from_checkpoint(shards):
    from experiments import train

    out = train.main(load_config("train", _train_cfg(shards, "faulty", **{"loop.fail_at_step": 3, "run.max_failures": 1})))
    assert out["steps"] == 4 and _state(out["checkpoint"])["step"] == 4
    assert (shards.parent / "ray_results" / "faulty" / ".injected_failure").exists()


def test_training_windows_are_split_disjointly(shards, ray_session):
    from pipeline.readers import training_window_dataset

    ds, per_epoch = training_window_dataset(str(shards), "train", 8, min_windows=1)
    splits = ds.streaming_split(2, equal=True)
    seen: list[list[str]] = [[], []]

    def consume(i):
        for batch in splits[i].iter_batches(batch_size=None, batch_format="numpy"):
            seen[i].extend(batch["window"].tolist())
            assert batch["tokens"].shape[1:] == (8, 4, 4)

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(2)]
    [t.start() for t in threads]
    [t.join(timeout=120) for t in threads]
    assert len(seen[0]) == len(seen[1]) > 0
    assert not set(seen[0]) & set(seen[1]), "two ranks must never get the same window in an epoch"
    assert len(seen[0]) + len(seen[1]) == per_epoch


def test_bad_training_configs_are_refused_before_work(shards):
    from experiments import train

    with pytest.raises(ConfigError, match="max_context_frames"):
        train.main(load_config("train", _train_cfg(shards, "bad", **{"method.max_context_frames": 8})))
    with pytest.raises(ConfigError, match="chunk_size=64"):
        train.main(load_config("train", _train_cfg(shards, "bad2", chunk_size=64)))


@pytest.fixture(scope="module")
def trained(shards) -> dict:
    from experiments import train

    return train.main(load_config("train", _train_cfg(shards, "for-sampling", **{"mlflow.register_model": "t-maskflow"})))


@pytest.fixture(scope="module")
def checkpoint(trained) -> str:
    return trained["checkpoint"]


def test_training_run_is_a_logged_model_with_namespaced_metrics_and_lineage(trained):
    from experiments import tracking

    client = tracking.get_client()
    run = client.get_run(trained["mlflow_run_id"])
    assert trained["model_uri"] == "models:/t-maskflow/1" and run.data.tags["model_uri"] == trained["model_uri"]
    assert {"train/masked_ce", "train/masked_ce_smoothed", "train/objective", "val/masked_ce", "sample/token_accuracy",
            "data/unseen_code_share"} <= set(run.data.metrics), sorted(run.data.metrics)
    assert not {"loss", "step", "epoch", "masked_ce"} & set(run.data.metrics) and run.data.tags["epoch"].isdigit()
    assert run.data.params["scaling.use_gpu"] == "False"  # resolved from "auto"
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.tags[0].value == "training" and dataset.dataset.digest
    assert [a.path for a in client.list_artifacts(run.info.run_id) if a.path == "config.yaml"] == ["config.yaml"]
    steps = sorted(int(a.path.split("+step+")[1].split("+")[0]) for a in client.list_artifacts(run.info.run_id, "images")
                   if a.path.endswith(".png"))
    assert steps == [4], "one [real ; generated] strip per held-out sample step"
    (model,) = [m for m in client.search_logged_models([run.info.experiment_id]) if m.source_run_id == run.info.run_id]
    assert model.name == "model" and model.params["latent_size"] == "4"


@pytest.mark.parametrize("which", ["runs", "models"])
def test_sample_from_mlflow_model_uris_logs_resolved_params_and_frames(trained, tmp_path, which):
    from experiments import sample, tracking

    uri = f"runs:/{trained['mlflow_run_id']}/model" if which == "runs" else "models:/t-maskflow/1"
    out = sample.main(load_config("sample", [f"checkpoint={uri}", f"out_dir={tmp_path}", "sampling_steps=2",
                                             "n_context_frames=2", "extrapolation=2", "num_videos=1",
                                             f"mlflow.parent_run_id={trained['mlflow_run_id']}"]))
    assert out["nfe"] == out["expected_nfe"] and out["sampler"]["stride"] == 6
    run = tracking.get_client().get_run(out["mlflow_run_id"])
    assert run.data.params["stride"] == "6" and run.data.params["partial_context_level"] != "None"
    assert run.data.tags["mlflow.parentRunId"] == trained["mlflow_run_id"]
    assert {"sample/nfe", "sample/token_accuracy", "sample/psnr"} <= set(run.data.metrics), sorted(run.data.metrics)
    assert any(a.path.endswith(".png") for a in tracking.get_client().list_artifacts(run.info.run_id, "images"))


def test_a_missing_mlflow_model_is_named():
    from experiments.checkpoint import load_checkpoint

    with pytest.raises(FileNotFoundError, match="models:/no-such-model/1"):
        load_checkpoint("models:/no-such-model/1")


def test_sample_keeps_context_and_counts_nfe(checkpoint, tmp_path):
    from experiments import sample

    out = sample.main(load_config("sample", [f"checkpoint={checkpoint}", f"out_dir={tmp_path}", "sampling_steps=3",
                                             "n_context_frames=2", "extrapolation=2", "num_videos=2"]))
    assert out["num_frames"] == 16 and out["context_frames_exact"]
    assert out["nfe"] == out["expected_nfe"] == 3 * 3  # ceil((16 - 8) / 6) + 1 = 3 chunks x 3 steps
    assert Path(out["videos"][0]["mp4"]).stat().st_size > 0 and Path(out["videos"][0]["gif"]).exists()
    with pytest.raises(ValueError, match="stride"):
        sample.main(load_config("sample", [f"checkpoint={checkpoint}", f"out_dir={tmp_path}", "stride=7"]))


def test_sweep_records_a_failing_trial_reports_and_resumes(checkpoint, tmp_path):
    import mlflow

    from experiments import sweep, tracking

    words = [
        f"checkpoint={checkpoint}", "name=t-sweep", f"storage_path={tmp_path}",
        "grid=[{sampler: mgm, sampling_steps: [2]}]", "extrapolation=[1]", "seed=[0, 1]",
        "fail_trial=1", "max_concurrent_trials=1", "eval.num_videos=2", "eval.batch_size=2",
    ]
    out = sweep.main(load_config("sweep", words))
    assert out["trials"] == 2 and len(out["errors"]) == 1
    client = tracking.get_client()
    parent = client.get_run(out["parent_run_id"])
    runs = mlflow.search_runs(experiment_ids=[parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{out['parent_run_id']}'")
    assert sorted(runs["status"]) == ["FAILED", "FINISHED"]
    ok = runs[runs["status"] == "FINISHED"].iloc[0]
    assert ok["params.sampler"] == "mgm" and ok["params.sampling_steps"] == "2"
    assert ok["metrics.eval/nfe"] == ok["metrics.eval/expected_nfe"] == 2 and ok["metrics.eval/psnr"] > 0
    text = Path(out["report"]["markdown"]).read_text()
    assert "Table 1 layout" in text and "| mgm | 1 | 2 |" in text
    assert [a.path for a in client.list_artifacts(out["parent_run_id"], "report")] == [
        "report/quality_vs_nfe.png", "report/report.md"]
    assert [row["status"] for row in out["trials_table"]] == ["FINISHED", "FAILED"]
    assert out["trials_table"][0]["nfe"] == 2 and out["trials_table"][0]["sample_video"].endswith(".gif")
    assert "trials.json" in {a.path for a in client.list_artifacts(out["parent_run_id"])}

    # the same command again restores the Tune experiment: finished (and failed) trials are not rerun,
    # the MLflow parent run is reused and no child run is added
    again = sweep.main(load_config("sweep", words))
    assert again["parent_run_id"] == out["parent_run_id"] and len(again["errors"]) == 1
    children = mlflow.search_runs(experiment_ids=[parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{out['parent_run_id']}'")
    assert len(children) == 2


def test_tokenize_job_has_its_own_run(shards):
    from experiments import tracking

    client = tracking.get_client()
    (run,) = tracking.iter_runs(client, "maskflow-tokenize", f"tags.tokenize_shard_dir = '{shards}'")
    assert run.info.status == "FINISHED" and run.data.params["codebook_size"] == "32"
    assert run.data.metrics["data/videos_ok"] == 6 and run.data.metrics["data/reconstruction_psnr_db"] > 10
    assert run.data.metrics["data/eval_videos"] >= 1 and run.inputs.dataset_inputs[0].tags[0].value == "tokenize"
    assert {"manifest.json", "psnr_segments.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


def test_a_rerun_sweep_trial_continues_its_child_run(checkpoint, tmp_path):
    """A trial that Tune runs again after an interruption finishes the child run the interrupted attempt
    left RUNNING instead of adding a second one."""
    from experiments import evaluate, tracking

    client = tracking.get_client()
    parent, _ = tracking.get_or_create_run(client, "t-eval-resume", "sweep")
    orphan, _ = tracking.get_or_create_run(client, "t-eval-resume", "t000", parent_run_id=parent,
                                           resume_key=("sweep_trial", f"{parent}/0"))
    import mlflow

    mlflow.end_run(status="RUNNING")  # the process of the attempt died: the run is left RUNNING
    tracking._STARTED.discard(orphan)
    cfg = load_config("evaluate", [f"checkpoint={checkpoint}", f"out_dir={tmp_path}", "sampling_steps=2",
                                   "extrapolation=1", "num_videos=2", "batch_size=2", "fvd.enabled=false",
                                   "mlflow.experiment=t-eval-resume"])
    out = evaluate.main(cfg, parent_run_id=parent, run_name="t000", resume_key=("sweep_trial", f"{parent}/0"))
    tracking.end_run(client, parent)
    assert out["mlflow_run_id"] == orphan
    runs = tracking.iter_runs(client, "t-eval-resume", f"tags.mlflow.parentRunId = '{parent}'")
    assert [(r.info.run_id, r.info.status) for r in runs] == [(orphan, "FINISHED")]
    assert runs[0].data.params["stride"] == "6" and runs[0].data.metrics["eval/nfe"] == 2


def test_optuna_sweep_on_a_file_uri_storage_path(checkpoint, tmp_path, monkeypatch):
    """search=optuna draws 2 trials (guidance scale from uniform [0, 2], the objective PSNR) and keeps Tune's
    state, the trial videos and the report under a file:// URI (not in a local folder named 'file:')."""
    import mlflow

    from experiments import sweep, tracking

    monkeypatch.chdir(tmp_path)
    words = [
        f"checkpoint={checkpoint}", "name=t-optuna", f"storage_path=file://{tmp_path / 'store'}", "search=optuna",
        "num_samples=2", "metric=psnr", "mode=max", "grid=[{sampler: mgm, sampling_steps: [2]}]", "extrapolation=[1]",
        "seed=[0]", "axes.guidance_scale={uniform: [0.0, 2.0]}", "max_concurrent_trials=1", "eval.num_videos=2",
        "eval.batch_size=2", "eval.fvd.enabled=false",
    ]
    out = sweep.main(load_config("sweep", words))
    assert out["trials"] == 2 and not out["errors"] and out["storage"] == f"file://{tmp_path / 'store'}/t-optuna"
    root = tmp_path / "store" / "t-optuna"
    assert sorted(p.name for p in (root / "videos").iterdir()) == ["trial_000", "trial_001"]
    assert all(any((root / "videos" / t).glob("*_grid.gif")) for t in ("trial_000", "trial_001"))
    assert (root / "report" / "report.md").is_file() and Path(out["report"]["markdown"]).parent == root / "report"
    assert any(root.glob("experiment_state*.json")) and not any(tmp_path.glob("file*"))
    parent = tracking.get_client().get_run(out["parent_run_id"])
    runs = mlflow.search_runs(experiment_ids=[parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{out['parent_run_id']}'")
    scales = sorted(float(v) for v in runs["params.guidance_scale"])
    assert list(runs["status"]) == ["FINISHED"] * 2 and 0.0 <= scales[0] < scales[1] <= 2.0
    assert out["best"]["psnr"] == max(runs["metrics.eval/psnr"]) and 0.0 <= out["best"]["guidance_scale"] <= 2.0


def test_readme_python_example_runs(checkpoint, tmp_path):
    """The README's "From Python" block, run as written on a trained checkpoint."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## From Python") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert '"outputs/demo/ray_results/demo"' in code and '"continuation.mp4"' in code
    code = code.replace('"outputs/demo/ray_results/demo"', repr(str(checkpoint)))
    code = code.replace('"continuation.mp4"', repr(str(tmp_path / "continuation.mp4")))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert result.tokens.shape[1] == 16 and (tmp_path / "continuation.mp4").stat().st_size > 0
    assert torch.equal(result.tokens[0, :2], namespace["context"][0])
