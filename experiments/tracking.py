"""MLflow tracking shared by every entry point.

Defaults need no server: when neither the config nor ``$MLFLOW_TRACKING_URI`` names a store, runs go
to ``sqlite:///mlflow.db`` in the current working directory (MLflow 3's own default; the ``./mlruns``
file store is refused by MLflow ≥ 3.13). A multi-node cluster needs an HTTP tracking server, passed
to jobs with ``--runtime-env-json '{"env_vars": {"MLFLOW_TRACKING_URI": "http://…"}}'``.

Runs are started with MLflow's public ``mlflow.start_run`` (so MLflow sets its source, user and git
tags) in experiments created for the UI's training view (:data:`EXPERIMENT_KIND`), then addressed by
id through an :class:`mlflow.MlflowClient`, so Ray workers can log to a run the driver started (and a
resumed job keeps logging to the same run). Where the code has no ``.git`` (``ray job submit``
uploads none), the commit comes from ``$MASKFLOW_GIT_COMMIT``, set by the submitting side::

    ray job submit ... --runtime-env-json "{\"env_vars\": {\"MASKFLOW_GIT_COMMIT\": \"$(git rev-parse HEAD)\"}}" ...

Metric names carry the namespace of what they measure: ``train/…`` (the training objective),
``val/…`` (the objective on held-out windows), ``sample/…`` (generated continuations), ``eval/…``
(the evaluation protocol), ``data/…``; MLflow's system metrics are under ``system/<node>/…``. The
x-axis is the metric step (the training step); the epoch is a tag, never a metric.
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
    "EXPERIMENT_KIND",
    "ensure_experiment",
    "git_commit",
    "log_config",
    "log_frame_strip",
    "log_table",
    "log_figure",
    "log_dataset",
    "node_system_metrics",
    "ui_link",
    "set_runs_table_view",
]

#: Value of the experiment tag ``mlflow.experimentKind`` that makes the MLflow UI open an experiment in
#: its model-training view (runs table, charts) instead of the GenAI view (traces).
EXPERIMENT_KIND = "custom_model_development"
_KIND_TAG = "mlflow.experimentKind"
_NOTE_TAG = "mlflow.note.content"  # the description the UI shows for an experiment or a run
_GIT_TAG = "mlflow.source.git.commit"
_STARTED: set[str] = set()  # runs this process started with mlflow.start_run and has not ended

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


def ensure_experiment(client, name: str, description: str | None = None) -> str:
    """The id of experiment ``name``, created if missing, tagged for the UI's training view.

    Sets ``mlflow.experimentKind`` = :data:`EXPERIMENT_KIND` (also on an existing experiment that has
    no kind yet, so stores made before keep working) and, when the experiment has none, the
    description ``description`` (``mlflow.note.content``, shown above the runs table).
    """
    exp = client.get_experiment_by_name(name)
    if exp is None:
        tags = {_KIND_TAG: EXPERIMENT_KIND, **({_NOTE_TAG: description} if description else {})}
        return client.create_experiment(name, artifact_location=default_artifact_location(client.tracking_uri), tags=tags)
    if _KIND_TAG not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, _KIND_TAG, EXPERIMENT_KIND)
    if description and _NOTE_TAG not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, _NOTE_TAG, description)
    return exp.experiment_id


def git_commit() -> str | None:
    """The commit of the code that runs: ``$MASKFLOW_GIT_COMMIT`` (set by whoever submits a Ray job,
    whose uploaded copy has no ``.git``), else ``git rev-parse HEAD`` of this package's checkout,
    else ``None``."""
    import subprocess

    env = os.environ.get("MASKFLOW_GIT_COMMIT", "").strip()
    if env:
        return env
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _end_stale_runs(keep: str | None) -> None:
    """End runs this process started whose ``main`` raised before ending them (status FAILED), so
    the next ``mlflow.start_run`` is not refused as nested; a run the caller started is left alone."""
    import mlflow

    while (active := mlflow.active_run()) is not None and active.info.run_id in _STARTED and active.info.run_id != keep:
        log.warning("MLflow run %s was left open by an earlier error; marking it FAILED", active.info.run_id)
        _STARTED.discard(active.info.run_id)
        mlflow.end_run(status="FAILED")


def get_or_create_run(
    client,
    experiment: str,
    run_name: str,
    *,
    tags: Mapping[str, str] | None = None,
    resume_key: tuple[str, str] | None = None,
    parent_run_id: str | None = None,
    description: str | None = None,
    experiment_description: str | None = None,
) -> tuple[str, bool]:
    """Start (``mlflow.start_run``) the run to resume or a new one; end it with :func:`end_run`.

    Args:
        client: an ``MlflowClient``.
        experiment: experiment name (created if missing, see :func:`ensure_experiment`).
        run_name: display name of a new run.
        tags: tags set on the run.
        resume_key: ``(tag, value)``; an existing run of the experiment with that tag is resumed,
            e.g. ``("ray_run_name", name)`` so a resumed Ray Train job continues the same MLflow run.
        parent_run_id: nest the new run under this one (``mlflow.parentRunId`` tag).
        description: the run's description in the UI (``mlflow.note.content``).
        experiment_description: the experiment's description, set when it has none.

    Returns:
        ``(run_id, resumed)``. The run is this process's active MLflow run until :func:`end_run`.
    """
    import mlflow

    exp_id = ensure_experiment(client, experiment, experiment_description)
    _end_stale_runs(keep=parent_run_id)
    all_tags = {k: str(v) for k, v in (tags or {}).items()}
    if description:
        all_tags[_NOTE_TAG] = description
    found = None
    if resume_key is not None:
        key, value = resume_key
        runs = client.search_runs([exp_id], filter_string=f"tags.{key} = '{value}'", max_results=1)
        found = runs[0].info.run_id if runs else None
        all_tags[key] = value
    nested = mlflow.active_run() is not None  # inside a caller's own run: nest under it
    if found:
        run = mlflow.start_run(run_id=found, tags=all_tags, nested=nested)
    else:
        run = mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=all_tags, nested=nested,
                               parent_run_id=parent_run_id)
    run_id = run.info.run_id
    _STARTED.add(run_id)
    if _GIT_TAG not in run.data.tags and (commit := git_commit()):
        client.set_tag(run_id, _GIT_TAG, commit)
    return run_id, found is not None


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


def log_metrics(
    client,
    run_id: str,
    metrics: Mapping[str, float],
    step: int | None = None,
    *,
    prefix: str = "",
    tags: Mapping[str, Any] | None = None,
) -> None:
    """Log numeric metrics (and tags) in one batch; non-numeric and non-finite values (NaN, ±inf) are
    skipped.

    Args:
        metrics: ``{name: value}``; each name is logged as ``prefix + name`` (e.g. ``prefix="train/"``).
        step: the x-axis value (the training step; 0 when ``None``).
        tags: tags set in the same request, e.g. ``{"epoch": 3}`` (the epoch is a tag, not a metric).
    """
    import math
    import time

    from mlflow.entities import Metric, RunTag

    ts = int(time.time() * 1000)
    batch = []
    for key, value in metrics.items():
        try:
            v = float(value)
        except (TypeError, ValueError):
            continue
        if not math.isfinite(v):
            continue
        batch.append(Metric(prefix + key, v, ts, int(step or 0)))
    run_tags = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
    if batch or run_tags:
        client.log_batch(run_id, metrics=batch, tags=run_tags)


def log_artifact(client, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    """Upload a file (e.g. an MP4/GIF sample, previewed by the MLflow UI) to the run's artifacts."""
    client.log_artifact(run_id, str(path), artifact_path=artifact_path)


def set_tags(client, run_id: str, tags: Mapping[str, Any]) -> None:
    """Set string tags on a run."""
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


def end_run(client, run_id: str, status: str = "FINISHED") -> None:
    """Mark a run ``FINISHED`` / ``FAILED`` / ``KILLED`` (and end it as this process's active run)."""
    import mlflow

    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        _STARTED.discard(run_id)
        mlflow.end_run(status=status)
    else:
        client.set_terminated(run_id, status=status)


#: Columns of the runs table in the view :func:`ui_link` opens (besides run name, start time and
#: duration; the Dataset and Source columns, wide, are on each run's page).
RUNS_TABLE_COLUMNS = (
    "attributes.`Models`",
    "metrics.`train/masked_ce`", "metrics.`val/masked_ce`", "metrics.`sample/token_accuracy`",
    "metrics.`sample/copy_last_frame_token_accuracy`", "metrics.`sample/nfe`",
    "params.`model.size`", "params.`sampler`", "params.`sampling_steps`", "params.`stride`",
)
_VIEW_KEY = "maskflow-runs"


def set_runs_table_view(client, experiment_id: str, columns: Iterable[str] = RUNS_TABLE_COLUMNS) -> str:
    """Store a runs-table view with the project's key metrics and params as columns on the experiment;
    returns its key (the ``viewStateShareKey`` of :func:`ui_link`).

    MLflow's UI keeps a shared view as the experiment tag ``mlflow.sharedViewState.<key>`` holding the
    table state as JSON; ``selectedColumns`` names columns ``metrics.`name```, ``params.`name``` or
    ``attributes.`Source|Models|Dataset```. The default table shows no metric or param column.
    """
    import json

    client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{_VIEW_KEY}",
                              json.dumps({"selectedColumns": list(columns)}))
    return _VIEW_KEY


def ui_link(client, run_id: str, base: str = "http://127.0.0.1:5000") -> str:
    """The MLflow UI address of the runs table holding ``run_id``, in the model-training view, with the
    key metrics and params as columns (:func:`set_runs_table_view`).

    MLflow 3.17's UI opens every experiment in its GenAI view (traces) unless the address carries
    ``workflowType=machine_learning`` or the user has switched the toggle; the experiment tag
    ``mlflow.experimentKind`` is not consulted by that version, so printed links carry the parameter.
    An ``http(s)://`` tracking URI is its own UI; ``base`` is used for other stores.
    """
    uri = client.tracking_uri
    root = uri.rstrip("/") if uri.startswith(("http://", "https://")) else base.rstrip("/")
    exp = client.get_run(run_id).info.experiment_id
    key = set_runs_table_view(client, exp)
    return f"{root}/#/experiments/{exp}/runs?workflowType=machine_learning&viewStateShareKey={key}"


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


# ------------------------------------------------------------------------------ richer records
def log_config(client, run_id: str, config: Mapping[str, Any], *, params: Mapping[str, Any] | None = None) -> None:
    """Log a resolved config: every leaf as a param (dotted keys, see :func:`log_params`) and the whole
    as ``config.yaml``.

    Args:
        config: the resolved config as plain nested containers (no ``None`` the code resolves later:
            pass the value it resolves to).
        params: extra flat params (resolved values such as ``stride``) that override the config's.
    """
    from experiments.config import flatten

    log_params(client, run_id, {**flatten(dict(config)), **dict(params or {})})
    client.log_dict(run_id, _plain(config), "config.yaml")


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def log_frame_strip(client, run_id: str, real, fake, n_context_frames: int, *, key: str = "sample/real_vs_generated",
                    step: int = 0, max_frames: int = 16, height: int = 96) -> None:
    """Log ``[real ; generated]`` frame strips with MLflow's step-aware image logging.

    The UI shows every step of ``key`` with a slider and puts the same ``key`` of several runs side by
    side (the compare view's image charts).

    Args:
        real, fake: ``uint8 [T, H, W, 3]`` (numpy or torch) of one clip; ``real`` may be ``None``
            (no real continuation: the strip is the generated row only).
        n_context_frames: the first ``m`` frames (real in both rows) get a red border.
        key: the image key (same key in every run that should be compared).
        step: the training step (0 for a sampling or evaluation run).
        max_frames: frames shown, evenly spaced over the clip.
        height: frames are upscaled (nearest) to about this height.
    """
    from experiments.video_io import frame_strip

    client.log_image(run_id, frame_strip(real, fake, n_context_frames, max_frames=max_frames, height=height),
                     key=key, step=int(step), synchronous=True)


def log_table(client, run_id: str, rows: list[Mapping[str, Any]], artifact_file: str) -> None:
    """Log rows as an MLflow table artifact (``mlflow.log_table``; the UI's artifact view shows it as
    a table and the evaluation view can compare it across runs)."""
    import pandas as pd

    client.log_table(run_id, pd.DataFrame([_plain(r) for r in rows]), artifact_file)


def log_figure(client, run_id: str, figure, artifact_file: str) -> None:
    """Log a matplotlib figure as a PNG artifact and close it."""
    import matplotlib.pyplot as plt

    client.log_figure(run_id, figure, artifact_file)
    plt.close(figure)


def shard_dataset(shards: str, manifest: Mapping[str, Any] | None = None):
    """The token shards as an MLflow dataset (metadata only): name, source URI, digest and schema.

    The digest hashes the manifest's shard list, tokenizer id, counts and split, so two runs on the
    same tokens show the same dataset and a retokenized directory shows a different one.
    """
    import hashlib
    import json
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    if manifest is None:
        from pipeline.readers import read_manifest

        manifest = read_manifest(shards)
    content = {k: manifest.get(k) for k in ("shards", "tokenizer", "counts", "split", "splits", "decode")}
    content["tokenizer"] = {k: (content["tokenizer"] or {}).get(k) for k in ("tokenizer_id", "codebook_size", "latent_size")}
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]
    source_uri = shards if "://" in shards else Path(shards).resolve().as_uri()
    name = f"{Path(shards.rstrip('/')).name} ({(manifest.get('tokenizer') or {}).get('tokenizer_id', '?')})"
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": two local sources, the same class
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(source_uri)
    return MetaDataset(source, name=name, digest=digest)


def log_dataset(client, run_id: str, shards: str, context: str, manifest: Mapping[str, Any] | None = None) -> None:
    """Record the token shards as the run's dataset input (``mlflow.log_input``'s client form), shown in
    the runs table's Dataset column; ``context`` is ``training``, ``evaluation``, ``tokenize`` …"""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    dataset = shard_dataset(shards, manifest)._to_mlflow_entity()
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])])


class node_system_metrics:
    """Log this node's CPU, memory, disk, network (and GPU with the ``gpu`` extra, nvidia-ml-py) to a run
    while the ``with`` block runs, under ``system/<node_id>/…``.

    Uses MLflow's public API: ``mlflow.system_metrics.set_system_metrics_node_id`` and
    ``mlflow.start_run(run_id=…, log_system_metrics=True)`` in this process (a Ray worker). Leaving
    the block stops the monitor and leaves the run ``RUNNING`` for the driver, which ends it. A failure
    to start is a warning, never an error (system metrics are a view on the job, not part of it).
    """

    def __init__(self, run_id: str, node_id: str, tracking_uri: str | None = None, interval_s: float = 10.0) -> None:
        self.run_id, self.node_id, self.uri, self.interval_s = run_id, node_id, tracking_uri, interval_s
        self.started = False

    def __enter__(self) -> "node_system_metrics":
        import mlflow
        import mlflow.system_metrics as sm

        try:
            if self.uri:
                mlflow.set_tracking_uri(self.uri)
            sm.set_system_metrics_node_id(self.node_id)
            sm.set_system_metrics_sampling_interval(self.interval_s)
            mlflow.start_run(run_id=self.run_id, log_system_metrics=True, nested=mlflow.active_run() is not None)
            self.started = True
        except Exception as exc:  # never fail a job for its system metrics
            log.warning("system metrics of %s disabled: %s", self.node_id, exc)
        return self

    def __exit__(self, *exc_info) -> None:
        import mlflow

        if self.started:
            try:
                mlflow.end_run(status="RUNNING")  # stops the monitor; the driver ends the run
            except Exception as exc:  # pragma: no cover
                log.warning("stopping system metrics of %s: %s", self.node_id, exc)
