"""MLflow helpers: default store, resume by tag, nested runs, params batching."""

from experiments import tracking


def test_default_uri_is_sqlite_in_workdir(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking.resolve_tracking_uri(None, workdir=tmp_path)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert tracking.default_artifact_location(uri) == (tmp_path.resolve() / "mlartifacts").as_uri()


def test_runs_resume_by_tag_and_nest(mlflow_uri, tmp_path):
    client = tracking.get_client(mlflow_uri)
    run_id, resumed = tracking.get_or_create_run(client, "t-exp", "r", resume_key=("ray_run_name", "abc"))
    assert not resumed
    tracking.log_params(client, run_id, {f"p{i}": i for i in range(150)})
    tracking.log_params(client, run_id, {"p1": 1, "p2": "changed"})  # same run logging its config again
    tracking.log_metrics(client, run_id, {"loss": 2.0, "bad": float("nan"), "name": "x"}, step=1)
    tracking.log_metrics(client, run_id, {"loss": 1.0}, step=2)
    tracking.end_run(client, run_id)
    again, resumed = tracking.get_or_create_run(client, "t-exp", "r", resume_key=("ray_run_name", "abc"))
    assert resumed and again == run_id
    run = client.get_run(run_id)
    assert len(run.data.params) == 150 and run.data.tags["param_changed.p2"] == "changed"
    assert tracking.metric_history(client, run_id, "loss") == [2.0, 1.0]
    assert "bad" not in run.data.metrics and "name" not in run.data.metrics
    child, _ = tracking.get_or_create_run(client, "t-exp", "child", parent_run_id=run_id)
    assert client.get_run(child).data.tags["mlflow.parentRunId"] == run_id
    f = tmp_path / "a.txt"
    f.write_text("hi")
    tracking.log_artifact(client, child, f, artifact_path="videos")
    assert [a.path for a in client.list_artifacts(child, "videos")] == ["videos/a.txt"]


def test_runs_open_in_the_training_view_with_source_commit_and_description(mlflow_uri, monkeypatch):
    """Experiments carry the tag that makes the UI open its runs table; runs are started through
    mlflow.start_run (source tags) and record the commit, from $MASKFLOW_GIT_COMMIT where set."""
    import mlflow

    client = tracking.get_client(mlflow_uri)
    monkeypatch.setenv("MASKFLOW_GIT_COMMIT", "0123abc")
    run_id, _ = tracking.get_or_create_run(client, "t-kind", "r", description="what ran",
                                           experiment_description="what the experiment holds")
    assert mlflow.active_run().info.run_id == run_id
    tracking.end_run(client, run_id)
    assert mlflow.active_run() is None
    exp = client.get_experiment_by_name("t-kind")
    assert exp.tags["mlflow.experimentKind"] == tracking.EXPERIMENT_KIND == "custom_model_development"
    assert exp.tags["mlflow.note.content"] == "what the experiment holds"
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.note.content"] == "what ran"
    assert run.data.tags["mlflow.source.git.commit"] == "0123abc"
    assert "mlflow.source.name" in run.data.tags and "mlflow.user" in run.data.tags
    # an experiment made without the kind (an older store) gets it when next used
    bare = client.create_experiment("t-kind-old")
    assert tracking.ensure_experiment(client, "t-kind-old") == bare
    assert client.get_experiment(bare).tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_run_left_open_by_an_error_is_failed_not_nested(mlflow_uri):
    client = tracking.get_client(mlflow_uri)
    stale, _ = tracking.get_or_create_run(client, "t-stale", "crashed")  # its caller raised before end_run
    fresh, _ = tracking.get_or_create_run(client, "t-stale", "next")
    tracking.end_run(client, fresh)
    assert client.get_run(stale).info.status == "FAILED"
    assert "mlflow.parentRunId" not in client.get_run(fresh).data.tags


def test_namespaced_metrics_epoch_tag_config_yaml_images_table_and_dataset(mlflow_uri, tmp_path):
    import json

    import numpy as np

    client = tracking.get_client(mlflow_uri)
    run_id, _ = tracking.get_or_create_run(client, "t-rich", "r")
    tracking.log_metrics(client, run_id, {"masked_ce": 2.5}, step=10, prefix="train/", tags={"epoch": 3})
    tracking.log_config(client, run_id, {"sampler": "mgm", "stride": None, "model": {"size": "tiny"}},
                        params={"stride": 6})
    real = np.zeros((8, 4, 4, 3), np.uint8)
    tracking.log_frame_strip(client, run_id, real, real + 255, 2, step=10)
    tracking.log_table(client, run_id, [{"trial": 0, "fvd": 1.5, "video": "a.gif"}], "trials.json")
    shards = tmp_path / "tokens"
    shards.mkdir()
    manifest = {"shards": [{"path": "part-0.parquet", "rows": 3}], "tokenizer": {"tokenizer_id": "patch_kmeans:ab"},
                "counts": {"segments": 3}, "split": {"mode": "video"}}
    tracking.log_dataset(client, run_id, str(shards), "training", manifest=manifest)
    tracking.end_run(client, run_id)

    run = client.get_run(run_id)
    assert run.data.metrics == {"train/masked_ce": 2.5} and run.data.tags["epoch"] == "3"
    assert run.data.params["stride"] == "6" and run.data.params["model.size"] == "tiny"
    local = tmp_path / "dl"
    cfg = client.download_artifacts(run_id, "config.yaml", str(local))
    assert "sampler: mgm" in open(cfg).read()
    images = [a.path for a in client.list_artifacts(run_id, "images")]
    assert any(p.startswith("images/sample~real_vs_generated+step+10+") and p.endswith(".png") for p in images), images
    table = json.load(open(client.download_artifacts(run_id, "trials.json", str(local))))
    assert table["columns"] == ["trial", "fvd", "video"] and table["data"] == [[0, 1.5, "a.gif"]]
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.digest == tracking.shard_dataset(str(shards), manifest).digest
    assert inp.dataset.name.startswith("tokens") and inp.tags[0].value == "training"
    manifest["counts"] = {"segments": 4}  # other tokens, other digest
    assert tracking.shard_dataset(str(shards), manifest).digest != inp.dataset.digest


def test_node_system_metrics_log_under_the_node_id_and_leave_the_run_to_the_driver(mlflow_uri):
    import mlflow

    client = tracking.get_client(mlflow_uri)
    run_id, _ = tracking.get_or_create_run(client, "t-sys", "driver")
    tracking.end_run(client, run_id)
    client.update_run(run_id, status="RUNNING")  # as the driver holds it while workers run
    with tracking.node_system_metrics(run_id, "node0", mlflow_uri, interval_s=0.2) as monitor:
        assert monitor.started
        import time

        time.sleep(1.5)
    assert mlflow.active_run() is None
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"
    keys = [k for k in run.data.metrics if k.startswith("system/node0/")]
    assert "system/node0/cpu_utilization_percentage" in keys, sorted(run.data.metrics)


def test_ui_link_opens_the_runs_table_in_the_training_view(mlflow_uri):
    import json

    client = tracking.get_client(mlflow_uri)
    run_id, _ = tracking.get_or_create_run(client, "t-link", "r")
    tracking.end_run(client, run_id)
    exp = client.get_run(run_id).info.experiment_id
    link = tracking.ui_link(client, run_id)
    assert link == f"http://127.0.0.1:5000/#/experiments/{exp}/runs?workflowType=machine_learning&viewStateShareKey=maskflow-runs"
    view = json.loads(client.get_experiment(exp).tags["mlflow.sharedViewState.maskflow-runs"])
    assert "metrics.`train/masked_ce`" in view["selectedColumns"] and "params.`stride`" in view["selectedColumns"]


def test_sweep_report_figures_answer_quality_against_nfe_stride_and_guidance(tmp_path):
    import pandas as pd

    from experiments.report import FIGURES, plot_quality

    rows = [{"sampler": s, "nfe": n, "stride": st, "guidance_scale": w, "psnr": 20 + n / 10 - st + w, "fvd": float("nan"),
             "status": "FINISHED", "num_videos": 4, "run_id": f"{s}{n}{st}{w}"}
            for s, n in (("mgm", 20), ("mgm", 40), ("fm", 250)) for st in (1, 6) for w in (0.0, 1.5)]
    df = pd.DataFrame(rows)
    for x, (_, _, name) in FIGURES.items():
        path = plot_quality(df, x, tmp_path / name)
        assert path is not None and path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"
    assert plot_quality(df[df["stride"] == 1], "stride", tmp_path / "one.png") is None  # one value: nothing to compare
