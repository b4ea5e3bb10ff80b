"""Ray Tune sweep over sampler settings of one trained checkpoint, one MLflow child run per trial.

    python -m experiments.sweep checkpoint=DIR name=ffs-table1 \\
        'grid=[{sampler: mgm, sampling_steps: [10, 20, 50]}, {sampler: fm, sampling_steps: [250]}]' \\
        'stride=[1, null]' 'guidance_scale=[0, 1, 1.5, 2]' 'extrapolation=[1, 2, 5, 10]'

The trial list is the product of every ``grid`` group (settings that only make sense together, such
as MGM with 10/20/50 steps and FM with 250) with every ``axes`` list (``stride``, ``guidance_scale``,
``time_conditioning``, ``extrapolation``, ``seed``). ``search=grid`` runs them all; ``search=random``
draws ``num_samples`` of them (seeded). Each trial runs :func:`experiments.evaluate.main` (the section
4.1 protocol: N held-out videos, FVD with its N and feature network (the bundled I3D unless
``eval.fvd.enabled=false``; ``nan`` when ``L < 9`` frames), PSNR/SSIM, NFE, wall time)
with ``resources_per_trial`` (fractions of a GPU allowed) and at most ``max_concurrent_trials`` at once.

MLflow: the sweep is a parent run; every trial is a child run with the swept params, its metrics,
its sample videos and the checkpoint it used. A failing trial is recorded (status FAILED, error tag)
and the sweep goes on. Running the same command with the same ``name`` resumes an interrupted sweep
(finished trials are kept, unfinished ones run). At the end :mod:`experiments.report` renders the
paper-style tables from the child runs and logs them to the parent run.

Flowception (a ``dynamics=flowception`` checkpoint; docs/flowception.md) sweeps like any sampler, with its
own settings as axes: ``insertion`` (``bernoulli``/``poisson``), ``insertion_guidance`` (``w_s``, eq. 36),
``unmasking`` (``fm``/``mgm``), ``blockwise_stop`` (``length``/``underfill``, beyond one window) and
``frame_time_power`` (appendix E's power schedule). Each trial then also reports the generated lengths:
``length_tv`` (total-variation distance between the generated and the real length histograms, 0 = the
same; a scalar for ``metric=length_tv mode=min``), ``mean_frames`` and ``real_mean_frames``; quality is
scored over the frames a generated and its real video both have (:mod:`experiments.evaluate`).

    python -m experiments.sweep checkpoint=DIR name=fc-insertion 'grid=[{sampler: flowception, sampling_steps: [5, 10]}]' \
        '+axes.insertion=[bernoulli, poisson]' '+axes.insertion_guidance=[1.0, 1.5]' extrapolation=[1] \
        metric=length_tv mode=min
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import random
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from experiments.config import ConfigError, load_config, to_container
from maskflow.sampling.config import FLOWCEPTION_SETTINGS

log = logging.getLogger("experiments.sweep")

__all__ = ["main", "expand_trials", "run_trial", "parse_axis", "sampled_axes", "tune_domain", "SEARCHES", "SPACE_KINDS"]

AXES = ("sampler", "sampling_steps", "stride", "guidance_scale", "time_conditioning", "extrapolation", "seed",
        "n_context_frames", "temperature", "unmasking_schedule", "partial_context_level",
        *FLOWCEPTION_SETTINGS)


INTEGER_AXES = ("sampling_steps", "stride", "extrapolation", "seed", "n_context_frames")
SEARCHES = ("grid", "random", "optuna")
SPACE_KINDS = ("grid", "choice", "uniform", "loguniform")
"""Search spaces an ``axes`` entry can name: ``[a, b]`` or ``{grid: [a, b]}`` (every value, crossed with the
other grid axes), ``{choice: [a, b]}`` (one value drawn per trial), ``{uniform: [lo, hi]}``,
``{loguniform: [lo, hi]}`` (``lo > 0``) — the last three only with ``search=random`` or ``search=optuna``."""


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def parse_axis(name: str, value: Any) -> tuple[str, list[Any]]:
    """The search space of one ``axes`` entry as ``(kind, values)``.

    Args:
        name: the swept setting (for messages).
        value: a scalar or list (a grid), or a one-key mapping ``{grid|choice|uniform|loguniform: [...]}``.

    Returns:
        ``("grid", [v, …])``, ``("choice", [v, …])``, ``("uniform", [lo, hi])`` or ``("loguniform", [lo, hi])``.

    Raises:
        ConfigError: an unknown kind, an empty list, bounds that are not two numbers with ``lo < hi``,
            or ``loguniform`` with ``lo <= 0``.
    """
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    if not isinstance(value, dict):
        return "grid", _as_list(value)
    if len(value) != 1:
        raise ConfigError(f"axes.{name} must name one search space ({', '.join(SPACE_KINDS)}), got {sorted(value)}")
    kind, args = next(iter(value.items()))
    if kind not in SPACE_KINDS:
        raise ConfigError(f"axes.{name}: unknown search space {kind!r}; use one of {', '.join(SPACE_KINDS)}")
    args = _as_list(args)
    if kind in ("grid", "choice"):
        if not args:
            raise ConfigError(f"axes.{name}: {kind} needs at least one value")
        return kind, args
    if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args) or args[0] >= args[1]:
        raise ConfigError(f"axes.{name}: {kind} takes [low, high] with low < high, got {args}")
    if kind == "loguniform" and args[0] <= 0:
        raise ConfigError(f"axes.{name}: loguniform needs low > 0, got {args[0]}")
    if name in INTEGER_AXES:
        raise ConfigError(f"axes.{name} takes whole numbers: use a list or {{choice: [...]}}, not {kind}")
    return kind, [float(args[0]), float(args[1])]


def sampled_axes(cfg: DictConfig) -> dict[str, tuple[str, list[Any]]]:
    """The ``axes`` entries drawn per trial (``choice``, ``uniform``, ``loguniform``): ``{name: (kind, args)}``."""
    axes = to_container(cfg).get("axes") or {}
    out = {}
    for name, value in axes.items():
        kind, args = parse_axis(name, value)
        if kind != "grid":
            out[name] = (kind, args)
    return out


def tune_domain(kind: str, args: list[Any]):
    """The Ray Tune search-space object of :func:`parse_axis`'s ``(kind, args)``."""
    from ray import tune

    if kind == "grid":
        return tune.grid_search(list(args))
    if kind == "choice":
        return tune.choice(list(args))
    return (tune.uniform if kind == "uniform" else tune.loguniform)(*args)


def expand_trials(cfg: DictConfig) -> list[dict[str, Any]]:
    """The trial settings: product of each ``grid`` group with every grid ``axes`` entry, then the search.

    ``search=grid`` keeps them all and ``search=random`` draws ``num_samples`` of them (seeded) when no
    axis is sampled. With sampled axes (``choice``/``uniform``/``loguniform``, see :func:`parse_axis`) or
    ``search=optuna``, the list is the discrete part of the space: Tune draws one of its entries and the
    sampled values for each of ``num_samples`` trials (:func:`main`).

    Returns:
        A list of flat dicts ``{"sampler": …, "sampling_steps": …, "stride": …, …}`` in a stable order,
        each with a ``trial_index``.

    Raises:
        ConfigError: an unknown axis or search space, an empty grid, a sampled axis with ``search=grid``,
            or ``search`` not ``grid``/``random``/``optuna``.
    """
    if cfg.search not in SEARCHES:
        raise ConfigError(f"search must be one of {', '.join(SEARCHES)}, got {cfg.search!r}")
    container = to_container(cfg)
    groups = container.get("grid") or [{}]
    axes = container.get("axes") or {}
    for name in list(axes) + [k for g in groups for k in g]:
        if name not in AXES:
            raise ConfigError(f"cannot sweep {name!r}; sweepable settings: {', '.join(AXES)}")
    for group in groups:
        for name, value in group.items():
            if isinstance(value, dict):
                raise ConfigError(f"grid groups take lists (grid.{name}={value}); put search spaces under axes.{name}")
    sampled = sampled_axes(cfg)
    if sampled and cfg.search == "grid":
        raise ConfigError(
            f"search=grid runs every listed value, but {', '.join(f'axes.{k} is {v[0]}' for k, v in sampled.items())}; "
            "use search=random or search=optuna (num_samples trials), or list the values"
        )
    grid_axes = {k: parse_axis(k, v)[1] for k, v in axes.items() if k not in sampled}
    trials: list[dict[str, Any]] = []
    seen: set[str] = set()
    for group in groups:
        merged = {**grid_axes, **{k: _as_list(v) for k, v in group.items()}}
        keys = list(merged)
        for values in itertools.product(*(merged[k] for k in keys)):
            trial = dict(zip(keys, values))
            key = json.dumps(trial, sort_keys=True)
            if key not in seen:
                seen.add(key)
                trials.append(trial)
    if not trials:
        raise ConfigError("the sweep has no trial: grid and axes are empty")
    if cfg.search == "random" and not sampled:
        rng = random.Random(int(cfg.search_seed))
        trials = rng.sample(trials, min(int(cfg.num_samples), len(trials)))
    return [{**t, "trial_index": i} for i, t in enumerate(trials)]


def _drawn(cfg: DictConfig) -> bool:
    """Whether Tune draws the trials (sampled axes or Optuna) instead of running a fixed list."""
    return cfg.search == "optuna" or (cfg.search == "random" and bool(sampled_axes(cfg)))


def _search_alg(cfg: DictConfig):
    """The Tune searcher: ``None`` (Tune's grid/random variant generator) or Optuna's TPE sampler (seeded)."""
    if cfg.search != "optuna":
        return None
    try:
        from ray.tune.search.optuna import OptunaSearch
    except ImportError as exc:  # pragma: no cover - optuna is a dependency
        raise ConfigError(f"search=optuna needs the optuna package: {exc}") from exc
    import optuna

    optuna.logging.disable_default_handler()  # Optuna's own stderr handler: its messages go to the log file
    optuna.logging.enable_propagation()
    return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=int(cfg.search_seed)))


def _trial_dirname(trial) -> str:
    """Tune's ``trial_dirname_creator``: ``trial_<n>`` with ``n`` the trial's sequence number (the start of
    its experiment tag, kept across a restore by the search algorithm's state)."""
    return "trial_" + str(trial.experiment_tag).split("_", 1)[0]


def _trial_number(first: int = 0) -> int:
    """The running Tune trial's number from 0: its directory's (:func:`_trial_dirname`) minus ``first``
    (Optuna's searcher counts from 1, Tune's variant generator from 0)."""
    from ray import tune

    tail = Path(str(tune.get_context().get_trial_dir())).name.rsplit("_", 1)[-1]
    if not tail.isdigit():  # pragma: no cover - a Tune that ignores trial_dirname_creator
        raise RuntimeError(f"cannot number the trial from its directory {tune.get_context().get_trial_dir()!r}")
    return int(tail) - first


@contextlib.contextmanager
def _local_dir(location: str):
    """A local directory for ``location`` (a path or URI): the directory itself when it is on this
    machine's filesystem, else a temporary one whose files are uploaded there at the end."""
    from pipeline.fs import resolve, upload_dir

    loc = resolve(location)
    if loc.is_local:
        Path(loc.path).mkdir(parents=True, exist_ok=True)
        yield Path(loc.path)
        return
    with tempfile.TemporaryDirectory(prefix="maskflow-sweep-") as tmp:
        yield Path(tmp)
        upload_dir(tmp, loc)


def run_trial(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: evaluate one setting and ``tune.report`` its metrics.

    ``config`` = ``{"trial": {...}, "base": {...evaluate config...}, "parent_run_id": …, "metric": …}``;
    ``trial`` is one entry of :func:`expand_trials` (with its ``trial_index``) or, for drawn searches,
    ``{"setting": i, "sampled": {name: value}}`` with ``i`` an index into ``config["settings"]``.
    Errors are recorded in the trial's MLflow run (status FAILED, tag ``error``) and re-raised so Tune
    marks the trial errored; the other trials go on.

    Raises:
        ValueError: the sweep's ``metric`` is not among the trial's metrics (naming those there are).
    """
    from ray import tune

    from experiments import evaluate

    trial = dict(config["trial"])
    if "trial_index" in trial:
        index = trial.pop("trial_index")
    else:
        index = _trial_number(int(config.get("first_trial_number", 0)))
        trial = {**config["settings"][int(trial.get("setting", 0))], **trial.get("sampled", {})}
    base = OmegaConf.create(config["base"])
    cfg = OmegaConf.merge(base, trial)
    fail = config.get("fail_trial")
    with _local_dir(f"{str(base.out_dir).rstrip('/')}/trial_{index:03d}") as out:
        cfg.out_dir = str(out)
        metrics = evaluate.main(
            cfg,
            parent_run_id=config["parent_run_id"],
            run_name=_trial_name(index, trial),
            extra_tags={"sweep_trial_index": index},
            resume_key=("sweep_trial", f"{config['parent_run_id']}/{index}"),
            fail=fail is not None and int(fail) == index,
        )
    reported = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    metric = config.get("metric")
    if metric and metric not in reported:
        raise ValueError(f"metric={metric!r} is not among the trial's metrics: {', '.join(sorted(reported))}")
    tune.report({**reported, **{k: v for k, v in trial.items() if isinstance(v, (int, float, str))}})


def _trial_name(index: int, trial: dict[str, Any]) -> str:
    parts = [f"{trial.get('sampler', '')}"]
    for key, short in (("sampling_steps", "n"), ("stride", "s"), ("guidance_scale", "w"), ("extrapolation", "x"),
                       ("temperature", "T"), ("insertion", ""), ("insertion_guidance", "g"), ("unmasking", "u"),
                       ("blockwise_stop", ""), ("frame_time_power", "pow")):
        if key in trial:
            value = trial[key]
            parts.append(f"{short}{value:.3g}" if isinstance(value, float) else f"{short}{value}")
    return f"t{index:03d}-" + "-".join(parts)


TABLE_PARAMS = ("sampler", "sampling_steps", "stride", "guidance_scale", "extrapolation", "n_context_frames",
                "time_conditioning", "seed", *FLOWCEPTION_SETTINGS)
TABLE_METRICS = ("nfe", "expected_nfe", "fvd", "fvd_n", "psnr", "ssim", "token_accuracy",
                 "copy_last_frame_token_accuracy", "wall_time_s", "length_tv", "mean_frames", "real_mean_frames")


def _log_trials_table(client, parent_id: str) -> list[dict[str, Any]]:
    """Log ``trials.json`` (``mlflow.log_table``) on the parent run: one row per child run with its
    resolved settings, ``eval/`` metrics, status and the URI of its sample grid video; returns the rows."""
    from experiments import tracking

    parent = client.get_run(parent_id)
    children = client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
                                  max_results=10000)
    rows = []
    for run in sorted(children, key=lambda r: int(r.data.tags.get("sweep_trial_index", 0))):
        videos = [a.path for a in client.list_artifacts(run.info.run_id, "videos") if a.path.endswith(".gif")]
        rows.append({
            "trial": int(run.data.tags.get("sweep_trial_index", -1)),
            "run_name": run.info.run_name,
            "status": run.info.status,
            **{k: run.data.params.get(k) for k in TABLE_PARAMS},
            **{k: run.data.metrics.get(f"eval/{k}") for k in TABLE_METRICS},
            "sample_video": f"{run.info.artifact_uri}/{videos[0]}" if videos else None,
            "run_id": run.info.run_id,
            "error": run.data.tags.get("error"),
        })
    if rows:
        tracking.log_table(client, parent_id, rows, "trials.json")
    return rows


def _check_objective(cfg: DictConfig) -> None:
    """``metric``/``mode`` before any work: ``mode`` min or max, a metric for Optuna, no FVD objective
    with FVD turned off.

    Raises:
        ConfigError: naming the setting.
    """
    if cfg.mode not in ("min", "max"):
        raise ConfigError(f"mode must be min or max, got {cfg.mode!r}")
    if cfg.search == "optuna" and not cfg.metric:
        raise ConfigError("search=optuna needs metric= (e.g. metric=fvd mode=min, metric=psnr mode=max)")
    fvd = (to_container(cfg.eval).get("fvd") or {}) if cfg.get("eval") else {}
    if str(cfg.metric or "").startswith("fvd") and str(fvd.get("enabled", True)).lower() in ("false", "0", "no", "off"):
        raise ConfigError(f"metric={cfg.metric} but eval.fvd.enabled=false; choose another metric (psnr, ssim, …)")


def _best_trial(results, cfg: DictConfig) -> dict[str, Any] | None:
    """The best finished trial's settings and metric (``None`` without a metric or a finished trial)."""
    if not cfg.metric:
        return None
    try:
        best = results.get_best_result(metric=cfg.metric, mode=cfg.mode, filter_nan_and_inf=True)
    except Exception:  # no trial reported a finite value
        return None
    return {k: v for k, v in (best.metrics or {}).items() if k in AXES or k == cfg.metric}


def _error_summary(text: str) -> str:
    """The last line of a trial's error (``ValueError: …``), without terminal colour codes."""
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown error"


def _trial_progress_callback(total: int):
    """A Tune callback that draws the sweep's progress (trials done, ETA, the last trial's metrics) and
    warns about failed trials. Its console state is not pickled with the experiment (Tune saves callbacks
    to resume)."""
    from ray.tune import Callback

    from experiments import console

    class TrialProgress(Callback):
        def __init__(self, total: int) -> None:
            self.total, self._bar, self._done = total, None, 0

        def __getstate__(self) -> dict[str, Any]:
            return {"total": self.total}

        def __setstate__(self, state: dict[str, Any]) -> None:
            self.total, self._bar, self._done = state["total"], None, 0

        def _bump(self, trial) -> None:
            if self._bar is None:
                self._bar = console.Progress("sweep", total=self.total, unit="trial")
            self._done += 1
            self._bar.update(self._done, trial.last_result or {})
            if self._done >= self.total:
                self._bar.close()

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self._bump(trial)

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            log.warning("trial %s failed (its MLflow child run holds the error)", trial.trial_id)
            self._bump(trial)

    return TrialProgress(total)


def main(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) a sweep; returns ``{"name", "parent_run_id", "trials", "errors", "report", "storage",
    "best", …}`` (``best``: the best trial's settings and ``metric``, ``None`` without one).

    Raises:
        ConfigError: a missing checkpoint or a setting that cannot be swept.
    """
    from ray import tune

    from experiments import report as report_stage
    from experiments import tracking

    from experiments import console
    from pipeline.fs import resolve

    if not cfg.checkpoint:
        raise ConfigError("checkpoint= is required")
    trials = expand_trials(cfg)
    _check_objective(cfg)
    drawn = _drawn(cfg)
    sampled = sampled_axes(cfg)
    num_trials = int(cfg.num_samples) if drawn else len(trials)
    name = cfg.name or time.strftime("sweep-%Y%m%d-%H%M%S")
    try:  # a local path (made absolute), file://… or an object store URI, kept as a URI (pyarrow.fs)
        storage = resolve(str(cfg.storage_path)).uri()
    except ValueError as exc:
        raise ConfigError(f"storage_path={cfg.storage_path!r}: {exc}") from None
    uri = tracking.resolve_tracking_uri(cfg.mlflow.tracking_uri)
    client = tracking.get_client(uri)
    parent_id, resumed = tracking.get_or_create_run(
        client, cfg.mlflow.experiment, name, resume_key=("sweep_name", name), tags={"stage": "sweep"},
        description=(
            f"Sampler sweep of checkpoint {cfg.checkpoint}: {num_trials} settings ({cfg.search} search over "
            f"{', '.join(sorted({k for t in trials for k in t if k != 'trial_index'} | set(sampled)))}), one child run each. "
            "Artifacts: trials table (trials.json), quality against NFE / stride / guidance figures, report.md."
        ),
        experiment_description="MaskFlow evaluations and sampler sweeps: one parent run per sweep, one child run per setting.",
    )
    tracking.log_config(
        client, parent_id, {k: v for k, v in to_container(cfg).items() if k not in ("grid", "axes")},
        params={"num_trials": num_trials, "grid": json.dumps(to_container(cfg).get("grid")),
                "axes": json.dumps(to_container(cfg).get("axes"))},
    )
    log.info("sweep %s: %d trials (%s search), MLflow parent run %s%s", name, num_trials, cfg.search, parent_id,
             " (resumed)" if resumed else "")

    base = load_config("evaluate", [])
    base = OmegaConf.merge(base, to_container(cfg.eval))
    base.checkpoint = cfg.checkpoint
    base.out_dir = f"{storage}/{name}/videos"
    base.mlflow.tracking_uri = uri
    base.mlflow.experiment = cfg.mlflow.experiment
    console.init_ray()
    if not console.verbose():  # Tune's console output (experiment box, trial tables): the callback's lines instead
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

    resources = {k: float(v) for k, v in to_container(cfg.resources_per_trial).items() if float(v) > 0}
    trainable = tune.with_resources(run_trial, resources)
    param_space = {
        "trial": tune.grid_search(trials),
        "base": to_container(base),
        "parent_run_id": parent_id,
        "fail_trial": cfg.fail_trial,
        "metric": cfg.metric,
    }
    if drawn:  # Tune (random) or Optuna draws a discrete setting and the sampled axes for every trial
        settings = [{k: v for k, v in t.items() if k != "trial_index"} for t in trials]
        param_space["settings"] = settings
        param_space["first_trial_number"] = 1 if cfg.search == "optuna" else 0
        param_space["trial"] = {
            "setting": tune.choice(list(range(len(settings)))) if len(settings) > 1 else 0,
            "sampled": {k: tune_domain(*v) for k, v in sampled.items()},
        }
    path = f"{storage}/{name}"
    if tune.Tuner.can_restore(path):
        log.info("resuming sweep from %s", path)
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False, param_space=param_space)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                max_concurrent_trials=int(cfg.max_concurrent_trials),
                num_samples=num_trials if drawn else 1,
                search_alg=_search_alg(cfg),
                metric=cfg.metric or None,
                mode=cfg.mode if cfg.metric else None,
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage,
                failure_config=tune.FailureConfig(max_failures=0),
                verbose=2 if console.verbose() else 0,  # the console shows the callback's bar and lines
                callbacks=[_trial_progress_callback(num_trials)],
            ),
        )
    results = tuner.fit()
    errors = [str(e) for e in results.errors]
    for err in errors:
        log.warning("a trial failed: %s", _error_summary(err))
    with _local_dir(f"{storage}/{name}/report") as report_dir:
        rendered = report_stage.main(
            OmegaConf.create({"parent_run_id": parent_id, "out_dir": str(report_dir), "mlflow": {"tracking_uri": uri}})
        )
    if not resolve(storage).is_local:  # the report's files were uploaded next to the trials
        rendered = {k: f"{storage}/{name}/report/{Path(v).name}" if isinstance(v, str) and v.startswith(str(report_dir)) else v
                    for k, v in rendered.items()}
    best = _best_trial(results, cfg)
    trials_table = _log_trials_table(client, parent_id)
    tracking.set_tags(client, parent_id, {"num_errors": len(errors)})
    tracking.end_run(client, parent_id, status="FINISHED")
    return {"name": name, "parent_run_id": parent_id, "trials": num_trials, "errors": errors, "report": rendered,
            "tracking_uri": uri, "trials_table": trials_table, "storage": f"{storage}/{name}", "best": best}


if __name__ == "__main__":  # pragma: no cover - CLI
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from experiments.cli import run

    out = run(main, "sweep")
    print(json.dumps({k: v for k, v in out.items() if k != "report"}, indent=2, default=str))
    print(f"report: {out['report'].get('markdown')}")
