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
