"""MLflow tracking shared by every entry point.

Defaults need no server: when neither the config nor ``$MLFLOW_TRACKING_URI`` names a store, runs go
to ``sqlite:///mlflow.db`` in the current working directory (MLflow 3's own default; the ``./mlruns``
file store is refused by MLflow ≥ 3.13). A multi-node cluster needs an HTTP tracking server, passed
to jobs with ``--runtime-env-json '{"env_vars": {"MLFLOW_TRACKING_URI": "http://…"}}'``.

Runs are created with :class:`mlflow.MlflowClient` and addressed by id, so Ray workers can log to a
run the driver created (and a resumed job keeps logging to the same run) without global state.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

log = logging.getLogger(__name__)

__all__ = [
    "resolve_tracking_uri",
    "get_client",
    "default_artifact_location",
    "get_or_create_run",
    "log_params",
    "log_metrics",
    "log_artifact",
    "set_tags",
    "end_run",
]

_MAX_PARAM_LEN = 6000  # MLflow's limit on a param value


def resolve_tracking_uri(uri: str | None = None, workdir: str | Path | None = None) -> str:
    """The tracking URI to use: ``uri``, else ``$MLFLOW_TRACKING_URI``, else a sqlite file.

    Args:
        uri: explicit URI from the config, or ``None``.
        workdir: where the default ``mlflow.db`` lives (default: the current directory).

    Returns:
        A URI string; also exported as ``$MLFLOW_TRACKING_URI`` so Ray workers started later inherit it.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        db = Path(workdir or os.getcwd()).resolve() / "mlflow.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{db}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    return uri


def default_artifact_location(uri: str) -> str | None:
    """For a ``sqlite:///…/mlflow.db`` store, artifacts go to ``…/mlartifacts`` beside the database
    (not to ``./mlruns`` of whatever directory the job ran in); other stores keep their default."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
    return None


def get_client(uri: str | None = None):
    """An :class:`mlflow.MlflowClient` on :func:`resolve_tracking_uri`'s store."""
    import mlflow

    uri = resolve_tracking_uri(uri)
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri)


def get_or_create_run(
    client,
    experiment: str,
    run_name: str,
    *,
    tags: Mapping[str, str] | None = None,
    resume_key: tuple[str, str] | None = None,
    parent_run_id: str | None = None,
) -> tuple[str, bool]:
    """Find the run to resume or create a new one.

    Args:
        client: an ``MlflowClient``.
        experiment: experiment name (created if missing).
        run_name: display name of a new run.
        tags: tags set on a new run.
        resume_key: ``(tag, value)``; an existing run of the experiment with that tag is reused,
            e.g. ``("ray_run_name", name)`` so a resumed Ray Train job continues the same MLflow run.
        parent_run_id: nest the new run under this one (``mlflow.parentRunId`` tag).

    Returns:
        ``(run_id, resumed)``.
    """
    exp = client.get_experiment_by_name(experiment)
    exp_id = (
        exp.experiment_id
        if exp is not None
        else client.create_experiment(experiment, artifact_location=default_artifact_location(client.tracking_uri))
    )
    if resume_key is not None:
        key, value = resume_key
        found = client.search_runs([exp_id], filter_string=f"tags.{key} = '{value}'", max_results=1)
        if found:
            run = found[0]
            if run.info.status != "RUNNING":
                client.update_run(run.info.run_id, status="RUNNING")
            return run.info.run_id, True
    all_tags = dict(tags or {})
    if resume_key is not None:
        all_tags[resume_key[0]] = resume_key[1]
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
    return run.info.run_id, False


def log_params(client, run_id: str, params: Mapping[str, Any]) -> None:
    """Log flat params (values stringified and cut to MLflow's limit) in batches of 100.

    A param that already exists with the same value is fine (resumed runs log their config again);
    a changed value is logged as a tag ``param_changed.<key>`` instead of failing the job.
    """
    from mlflow.entities import Param

    existing = client.get_run(run_id).data.params
    fresh = []
    for key, value in params.items():
        text = str(value)[:_MAX_PARAM_LEN]
        if key in existing:
            if existing[key] != text:
                client.set_tag(run_id, f"param_changed.{key}", text[:5000])
            continue
        fresh.append(Param(key, text))
    for i in range(0, len(fresh), 100):
        client.log_batch(run_id, params=fresh[i : i + 100])


def log_metrics(client, run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log numeric metrics in one batch; non-numeric and non-finite values (NaN, ±inf) are skipped."""
    import math
    import time

    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    batch = []
    for key, value in metrics.items():
        try:
            v = float(value)
        except (TypeError, ValueError):
            continue
        if not math.isfinite(v):
            continue
        batch.append(Metric(key, v, ts, int(step or 0)))
    if batch:
        client.log_batch(run_id, metrics=batch)


def log_artifact(client, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    """Upload a file (e.g. an MP4/GIF sample, previewed by the MLflow UI) to the run's artifacts."""
    client.log_artifact(run_id, str(path), artifact_path=artifact_path)


def set_tags(client, run_id: str, tags: Mapping[str, Any]) -> None:
    """Set string tags on a run."""
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


def end_run(client, run_id: str, status: str = "FINISHED") -> None:
    """Mark a run ``FINISHED`` / ``FAILED`` / ``KILLED``."""
    client.set_terminated(run_id, status=status)


def metric_history(client, run_id: str, key: str) -> list[float]:
    """Values of a metric in step order (used by the demo summary and tests)."""
    hist = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
    return [m.value for m in hist]


def iter_runs(client, experiment: str, filter_string: str = "") -> Iterable[Any]:
    """All runs of an experiment matching ``filter_string``."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], filter_string=filter_string, max_results=10000)
