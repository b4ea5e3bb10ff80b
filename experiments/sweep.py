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
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from experiments.config import ConfigError, load_config, to_container

log = logging.getLogger("experiments.sweep")

__all__ = ["main", "expand_trials", "run_trial"]

AXES = ("sampler", "sampling_steps", "stride", "guidance_scale", "time_conditioning", "extrapolation", "seed",
        "n_context_frames", "temperature", "unmasking_schedule", "partial_context_level")


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def expand_trials(cfg: DictConfig) -> list[dict[str, Any]]:
    """The trial settings: product of each ``grid`` group with every ``axes`` list, then the search.

    Returns:
        A list of flat dicts ``{"sampler": …, "sampling_steps": …, "stride": …, …}`` in a stable order,
        each with a ``trial_index``.

    Raises:
        ConfigError: an unknown axis, an empty grid, or ``search`` not ``grid``/``random``.
    """
    container = to_container(cfg)
    groups = container.get("grid") or [{}]
    axes = container.get("axes") or {}
    for name in list(axes) + [k for g in groups for k in g]:
        if name not in AXES:
            raise ConfigError(f"cannot sweep {name!r}; sweepable settings: {', '.join(AXES)}")
    trials: list[dict[str, Any]] = []
    seen: set[str] = set()
    for group in groups:
        merged = {**{k: _as_list(v) for k, v in axes.items()}, **{k: _as_list(v) for k, v in group.items()}}
        keys = list(merged)
        for values in itertools.product(*(merged[k] for k in keys)):
            trial = dict(zip(keys, values))
            key = json.dumps(trial, sort_keys=True)
            if key not in seen:
                seen.add(key)
                trials.append(trial)
    if not trials:
        raise ConfigError("the sweep has no trial: grid and axes are empty")
    if cfg.search == "random":
        rng = random.Random(int(cfg.search_seed))
        trials = rng.sample(trials, min(int(cfg.num_samples), len(trials)))
    elif cfg.search != "grid":
        raise ConfigError(f"search must be grid or random, got {cfg.search!r}")
    return [{**t, "trial_index": i} for i, t in enumerate(trials)]


def run_trial(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: evaluate one setting and ``tune.report`` its metrics.

    ``config`` = ``{"trial": {...swept settings...}, "base": {...evaluate config...}, "parent_run_id": …}``.
    Errors are recorded in the trial's MLflow run (status FAILED, tag ``error``) and re-raised so Tune
    marks the trial errored; the other trials go on.
    """
    from ray import tune

    from experiments import evaluate

    trial = dict(config["trial"])
    base = OmegaConf.create(config["base"])
    index = trial.pop("trial_index")
    overrides = {k: v for k, v in trial.items()}
    cfg = OmegaConf.merge(base, overrides)
    cfg.out_dir = str(Path(str(base.out_dir)) / f"trial_{index:03d}")
    fail = config.get("fail_trial")
    metrics = evaluate.main(
        cfg,
        parent_run_id=config["parent_run_id"],
        run_name=_trial_name(index, trial),
        extra_tags={"sweep_trial_index": index},
        fail=fail is not None and int(fail) == index,
    )
    tune.report({k: v for k, v in metrics.items() if isinstance(v, (int, float))})


def _trial_name(index: int, trial: dict[str, Any]) -> str:
    parts = [f"{trial.get('sampler', '')}"]
    for key, short in (("sampling_steps", "n"), ("stride", "s"), ("guidance_scale", "w"), ("extrapolation", "x")):
        if key in trial:
            parts.append(f"{short}{trial[key]}")
    return f"t{index:03d}-" + "-".join(parts)


def main(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) a sweep; returns ``{"name", "parent_run_id", "trials", "errors", "report"}``.

    Raises:
        ConfigError: a missing checkpoint or a setting that cannot be swept.
    """
    import ray
    from ray import tune

    from experiments import report as report_stage
    from experiments import tracking

    if not cfg.checkpoint:
        raise ConfigError("checkpoint= is required")
    trials = expand_trials(cfg)
    name = cfg.name or time.strftime("sweep-%Y%m%d-%H%M%S")
    storage = str(cfg.storage_path)
    if "://" not in storage:
        storage = str(Path(storage).resolve())
    uri = tracking.resolve_tracking_uri(cfg.mlflow.tracking_uri)
    client = tracking.get_client(uri)
    parent_id, resumed = tracking.get_or_create_run(
        client, cfg.mlflow.experiment, name, resume_key=("sweep_name", name), tags={"stage": "sweep"}
    )
    tracking.log_params(
        client, parent_id, {"checkpoint": cfg.checkpoint, "search": cfg.search, "num_trials": len(trials),
                            "grid": json.dumps(to_container(cfg).get("grid")),
                            "axes": json.dumps(to_container(cfg).get("axes"))}
    )
    log.info("sweep %s: %d trials, MLflow parent run %s%s", name, len(trials), parent_id, " (resumed)" if resumed else "")

    base = load_config("evaluate", [])
    base = OmegaConf.merge(base, to_container(cfg.eval))
    base.checkpoint = cfg.checkpoint
    base.out_dir = str(Path(storage) / name / "videos")
    base.mlflow.tracking_uri = uri
    base.mlflow.experiment = cfg.mlflow.experiment
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"))

    resources = {k: float(v) for k, v in to_container(cfg.resources_per_trial).items() if float(v) > 0}
    trainable = tune.with_resources(run_trial, resources)
    param_space = {
        "trial": tune.grid_search(trials),
        "base": to_container(base),
        "parent_run_id": parent_id,
        "fail_trial": cfg.fail_trial,
    }
    path = f"{storage}/{name}"
    if tune.Tuner.can_restore(path):
        log.info("resuming sweep from %s", path)
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False, param_space=param_space)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(max_concurrent_trials=int(cfg.max_concurrent_trials)),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage,
                failure_config=tune.FailureConfig(max_failures=0),
                verbose=1,
            ),
        )
    results = tuner.fit()
    errors = [str(e) for e in results.errors]
    for err in errors:
        log.warning("a trial failed: %s", err.splitlines()[0] if err else err)
    rendered = report_stage.main(
        OmegaConf.create({"parent_run_id": parent_id, "out_dir": str(Path(storage) / name / "report"),
                          "mlflow": {"tracking_uri": uri}})
    )
    tracking.set_tags(client, parent_id, {"num_errors": len(errors)})
    tracking.end_run(client, parent_id, status="FINISHED")
    return {"name": name, "parent_run_id": parent_id, "trials": len(trials), "errors": errors, "report": rendered,
            "tracking_uri": uri}


if __name__ == "__main__":  # pragma: no cover - CLI
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from experiments.cli import run

    out = run(main, "sweep")
    print(json.dumps({k: v for k, v in out.items() if k != "report"}, indent=2, default=str))
    print(f"report: {out['report'].get('markdown')}")
