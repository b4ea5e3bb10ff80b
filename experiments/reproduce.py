"""The toy reproduction of the MaskFlow paper's claims, one command from videos to verdicts.

    make reproduce                         # preset=cpu: the full study, <= 60 min on 2 CPU cores
    make reproduce QUICK=1                 # preset=quick: every stage at smoke size (CI)
    python -m experiments.reproduce preset=gpu out_dir=outputs/repro-gpu eval.num_videos=128

Stages (configuration: ``experiments/configs/reproduce.yaml``; everything lands in ``out_dir``):

1. **Data with a ground truth** — moving sprites with deterministic dynamics and a shared palette
   (:func:`experiments.synthetic.write_sprite_videos`), every video ``max(extrapolations) × k`` frames
   long, tokenized by the real Ray Data pipeline (:mod:`experiments.tokenize`, CPU patch-k-means
   tokenizer, ``split=video``: held-out videos are never trained on).
2. **Trainings** through the real Ray Train path (:func:`experiments.train.main`), the same budget each:
   frame-level masking (MaskFlow), constant masking (the baseline of Table 4) and a timestep-independent
   model (Table 5).
3. **Evaluation grid** through Ray Tune: one MLflow parent run, one child run per trial, each trial
   :func:`experiments.evaluate.main` (the section 4.1 protocol: N held-out clips, FVD with its N from the
   bundled I3D, per-frame PSNR/SSIM and token accuracy against the ground truth, the copy-last-frame
   baseline on the same clips, NFE counted beside the A.2 formula, wall time). The grid is the pruned
   product of ``reproduce.yaml``'s ``grid`` groups (one group per table / claim) over ``eval.seeds``.
   **Flowception** (docs/flowception.md): a ``dynamics=flowception`` model trained on the same videos
   (``models.flowception``) is evaluated with ``sampler=flowception`` next to MaskFlow at about the same
   NFE (``eval.sampling_steps.flowception`` steps per frame); a second one (``models.flowception_lengths``)
   is trained on sprite videos of several lengths (``lengths_data``, the supplementary's Figure 11) and
   its generated length histogram is compared with the real one.
4. **Report** (:mod:`experiments.reproduction_report`): ``reproduction.json`` (every trial's settings and
   metrics), ``reproduction.md`` in the layout of Tables 1–5 and S6 with a verdict per claim computed
   from the numbers, and PNG plots.

Resuming: every training and every evaluation trial is keyed by a hash of the settings that determine
its result (the data's, the training's, the trial's); its result is written under ``out_dir`` when it
finishes (``trainings/<name>.json``, ``trials/<key>.json``). Running the command again with the same
``out_dir`` skips everything already finished and runs only the rest (an interrupted training resumes
from its last Ray Train checkpoint); changing a setting changes the keys that depend on it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from experiments.config import CONFIG_DIR, ConfigError, apply_overrides, load_config, to_container

log = logging.getLogger("experiments.reproduce")

__all__ = ["load_reproduce_config", "settings_key", "expand_grid", "run_evaluation_trial", "main"]

SAMPLERS = ("mgm", "fm", "diffusion_forcing", "rolling", "flowception")
FULL = "full"  # stride s = k - m (full-sequence mode)


# ------------------------------------------------------------------------------------ configuration
def load_reproduce_config(overrides: Sequence[str] | None = None) -> DictConfig:
    """``configs/reproduce.yaml`` with ``preset=NAME`` (its ``presets`` section) merged, then the overrides.

    Args:
        overrides: ``key=value`` words (``None`` reads ``sys.argv[1:]``); ``preset=quick|cpu|gpu``.

    Returns:
        The resolved config, ``presets`` removed and ``preset`` set.

    Raises:
        ConfigError: an unknown preset or a bad override (from :func:`experiments.config.apply_overrides`).
    """
    words = list(sys.argv[1:] if overrides is None else overrides)
    # a plain (untyped) config: the grid groups mix strings and lists on purpose
    base = OmegaConf.load(CONFIG_DIR / "reproduce.yaml")
    presets = [w.split("=", 1)[1] for w in words if w.startswith("preset=")]
    preset = presets[-1] if presets else str(base.preset)
    if preset not in base.presets:
        raise ConfigError(f"unknown preset {preset!r}; reproduce presets: {', '.join(base.presets)}")
    cfg = OmegaConf.merge(base, base.presets[preset] or {})
    del cfg["presets"]
    cfg.preset = preset
    cfg = apply_overrides(cfg, [w for w in words if not w.startswith("preset=")])
    OmegaConf.resolve(cfg)
    _validate(cfg)
    return cfg


def _validate(cfg: DictConfig) -> None:
    k, m = int(cfg.chunk_size), int(cfg.n_context_frames)
    if not 1 <= m < k:
        raise ConfigError(f"n_context_frames must be in [1, chunk_size - 1] = [1, {k - 1}], got {m}")
    exts = [int(x) for x in cfg.eval.extrapolations]
    if not exts or min(exts) < 1:
        raise ConfigError(f"eval.extrapolations must be a non-empty list of integers >= 1, got {exts}")
    if not list(cfg.eval.seeds):
        raise ConfigError("eval.seeds must list at least one seed")
    for sampler in SAMPLERS:
        if sampler == "flowception" and not _flowception_models(cfg):
            continue
        if int(cfg.eval.sampling_steps.get(sampler, 0) or 0) < 1:
            raise ConfigError(f"eval.sampling_steps.{sampler} must be an integer >= 1")
    if any(_model_data(cfg, n) == "lengths" for n in cfg.models):
        lengths = [int(x) for x in cfg.lengths_data.lengths]
        if not lengths or min(lengths) <= m or max(lengths) > k:
            raise ConfigError(f"lengths_data.lengths must lie in [n_context_frames + 1, chunk_size] = [{m + 1}, {k}] "
                              f"(a Flowception window holds chunk_size frames), got {lengths}")
    if int(cfg.data.resolution) % int(cfg.data.patch_size):
        raise ConfigError(f"data.resolution={cfg.data.resolution} must be a multiple of data.patch_size={cfg.data.patch_size}")


def _model_dynamics(cfg: DictConfig, name: str) -> str:
    """``maskflow`` or ``flowception``: how model ``name`` of ``cfg.models`` is trained."""
    return str(cfg.models[name].get("dynamics", "maskflow"))


def _model_data(cfg: DictConfig, name: str) -> str:
    """``main`` (the sprite videos every model trains on) or ``lengths`` (``lengths_data``)."""
    return str(cfg.models[name].get("data", "main"))


def _flowception_models(cfg: DictConfig) -> list[str]:
    return [n for n in cfg.models if _model_dynamics(cfg, n) == "flowception"]


def settings_key(settings: Any) -> str:
    """A 12-hex-digit SHA-1 of a JSON-serialisable value (keys sorted): the identity of a result."""
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_json(path: Path, value: Any) -> None:
    """Write atomically (a finished-marker must never be half written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=1, default=_json_default, allow_nan=True))
    tmp.replace(path)


def _json_default(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


# ------------------------------------------------------------------------------------------- 1. data
def _data_settings(cfg: DictConfig) -> dict[str, Any]:
    d = to_container(cfg.data)
    d["num_frames"] = max(int(x) for x in cfg.eval.extrapolations) * int(cfg.chunk_size)
    d["min_frames"] = int(cfg.chunk_size)
    return d


def _lengths_data_settings(cfg: DictConfig) -> dict[str, Any]:
    d = {k: v for k, v in to_container(cfg.data).items() if k not in ("videos", "num_videos", "eval_fraction")}
    lengths = [int(x) for x in cfg.lengths_data.lengths]
    d.update(lengths=lengths, num_videos=int(cfg.lengths_data.num_videos), eval_fraction=float(cfg.lengths_data.eval_fraction),
             min_frames=min(lengths), num_frames=max(lengths), videos=None, kind="lengths")
    return d


def prepare_data(cfg: DictConfig, out: Path, which: str = "main") -> dict[str, Any]:
    """Render the sprite videos and tokenize them with Ray Data (skipped when already done).

    Args:
        which: ``"main"`` (``data``: every video ``max(extrapolations) × k`` frames) or ``"lengths"``
            (``lengths_data``: rendered sprite videos shared out over ``lengths_data.lengths`` frames, with
            ``data``'s renderer and tokenizer settings, for Flowception's length modelling).

    Returns:
        ``{"key", "videos", "shards", "manifest_counts", "splits", "seconds", "skipped"}`` (``lengths``: the
        rendered lengths).
    """
    from experiments import tokenize as tokenize_stage
    from experiments.synthetic import write_sprite_videos

    settings = _data_settings(cfg) if which == "main" else _lengths_data_settings(cfg)
    key = settings_key(settings)
    marker = out / "data" / f"{key}.json"
    done = _read_json(marker)
    if done is not None and Path(done["shards"]).exists():
        log.info("data %s: already tokenized (%s)", key, done["shards"])
        return {**done, "skipped": True}
    t0 = time.perf_counter()
    root = out / "data" / key
    d = OmegaConf.create(settings)
    if which == "lengths":
        from experiments.flowception import write_variable_length_sprites

        videos_dir = root / "videos"
        num_videos = len(write_variable_length_sprites(
            videos_dir, int(d.num_videos), list(d.lengths), seed=int(d.seed), size=int(d.resolution),
            motion=str(d.motion), grid_cells=int(d.resolution) // int(d.patch_size)))
    elif d.videos:
        videos_dir = Path(str(d.videos)).expanduser().resolve()
        if not videos_dir.is_dir():
            raise ConfigError(f"data.videos={d.videos} is not a directory")
        num_videos = None
    else:
        videos_dir = root / "videos"
        num_videos = len(write_sprite_videos(
            videos_dir, num_videos=int(d.num_videos), num_frames=settings["num_frames"], size=int(d.resolution),
            seed=int(d.seed), motion=str(d.motion), grid_cells=int(d.resolution) // int(d.patch_size),
        ))
    tok_cfg = load_config("tokenize", [
        f"inputs={videos_dir}", f"output_dir={root / 'tokens'}", f"resolution={int(d.resolution)}",
        f"tokenizer.kind={d.tokenizer_kind}", f"tokenizer.path={d.tokenizer_path or 'null'}",
        *([f"tokenizer.patch_size={int(d.patch_size)}", f"tokenizer.codebook_size={int(d.codebook_size)}"]
          if d.tokenizer_kind == "patch_kmeans" else []),
        f"min_frames={settings['min_frames']}", f"max_frames_per_segment={max(256, settings['num_frames'])}",
        "split=video", f"eval_fraction={float(d.eval_fraction)}", f"seed={int(d.seed)}",
    ])
    manifest = tokenize_stage.main(tok_cfg)
    result = {
        "key": key, "which": which, "settings": settings, "videos": str(videos_dir), "num_videos": num_videos or manifest.get("counts", {}).get("videos_found"),
        "shards": str(root / "tokens"), "manifest_counts": manifest.get("counts", {}),
        "splits": manifest.get("splits", {}), "tokenizer_psnr_db": manifest.get("reconstruction_psnr_db"),
        "seconds": time.perf_counter() - t0,
    }
    _write_json(marker, result)
    return {**result, "skipped": False}


# -------------------------------------------------------------------------------------- 2. trainings
def _train_overrides(cfg: DictConfig, name: str, shards: str, out: Path, run_name: str) -> list[str]:
    t, variant = cfg.train, cfg.models[name]
    steps = int(variant.get("max_steps") or t.max_steps)  # a model's own max_steps (the quick preset's Flowception ones)
    return [
        f"shards={shards}", f"run_name={run_name}", f"chunk_size={int(cfg.chunk_size)}", f"seed={int(cfg.data.seed)}",
        f"model.size={t.model_size}", f"model.time_conditioning={variant.time_conditioning}",
        f"method.masking={variant.masking}", f"method.scheduler={t.scheduler}",
        *([f"dynamics={_model_dynamics(cfg, name)}"] if _model_dynamics(cfg, name) != "maskflow" else []),
        f"method.max_context_frames={int(t.max_context_frames)}",
        f"optim.lr={float(t.lr)}", f"optim.lr_decay={t.lr_decay}", f"optim.warmup_steps={int(t.warmup_steps)}",
        f"optim.ema_decay={float(t.ema_decay)}", "optim.ema_warmup=true",
        f"loop.max_steps={steps}", f"loop.batch_size_per_worker={int(t.batch_size_per_worker)}",
        f"loop.log_every={max(1, min(50, steps // 10))}", f"loop.eval_every={max(1, steps // 4)}",
        f"loop.checkpoint_every={max(1, steps // 4)}", "loop.val_windows=16", "loop.heldout_clips=2",
        f"loop.sample_sampling_steps={int(cfg.eval.sampling_steps.mgm)}",
        f"scaling.num_workers={int(t.num_workers)}", f"scaling.use_gpu={t.use_gpu}",
        f"run.storage_path={out / 'ray_results'}", "run.num_to_keep=1",
        f"mlflow.experiment={cfg.mlflow.experiment}", "mlflow.system_metrics=false",
    ]


def train_models(cfg: DictConfig, out: Path, data: dict[str, Any],
                 lengths_data: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Train every model of ``cfg.models`` with the same budget; finished trainings are skipped.

    Args:
        data: :func:`prepare_data`'s main data; ``lengths_data``: its ``"lengths"`` data, for the models
            with ``data: lengths``.

    Returns:
        ``{name: {"key", "checkpoint", "steps", "final_loss", "first_loss", "final_metrics", "seconds",
        "mlflow_run_id", "masking", "time_conditioning", "dynamics", "data", "skipped"}}``.
    """
    from experiments import train as train_stage

    results = {}
    main_data = data
    for name in cfg.models:
        data = lengths_data if _model_data(cfg, name) == "lengths" else main_data
        if data is None:
            raise ConfigError(f"model {name} trains on data: lengths, but no lengths data was prepared")
        probe = _train_overrides(cfg, name, data["shards"], out, "x")
        key = settings_key({"data": data["key"], "train": [w for w in probe if not w.startswith(("run_name=", "run.", "mlflow."))]})
        marker = out / "trainings" / f"{name}.json"
        done = _read_json(marker)
        if done is not None and done.get("key") == key and done.get("checkpoint") and Path(done["checkpoint"]).exists():
            log.info("training %s (%s): finished before, skipped", name, key)
            results[name] = {**done, "skipped": True}
            continue
        run_name = f"reproduce-{name}-{key}"
        log.info("training %s (%s) through Ray Train", name, key)
        t0 = time.perf_counter()
        summary = train_stage.main(load_config("train", _train_overrides(cfg, name, data["shards"], out, run_name)))
        res = {
            "key": key, "name": name, "run_name": run_name, "checkpoint": summary["checkpoint"], "steps": summary["steps"],
            "first_loss": summary["first_loss"], "final_loss": summary["final_loss"],
            "final_metrics": summary["final_metrics"], "mlflow_run_id": summary["mlflow_run_id"],
            "masking": str(cfg.models[name].masking), "time_conditioning": str(cfg.models[name].time_conditioning),
            "dynamics": _model_dynamics(cfg, name), "data": _model_data(cfg, name),
            "seconds": time.perf_counter() - t0,
        }
        _write_json(marker, res)
        results[name] = {**res, "skipped": False}
    return results


# ------------------------------------------------------------------------------------ 3. evaluation
def expand_grid(cfg: DictConfig) -> list[dict[str, Any]]:
    """The pruned evaluation grid: every ``grid`` group's lists crossed, over ``eval.seeds``.

    Each trial: ``{"model", "sampler", "sampling_steps", "extrapolation", "stride" ("full" or an int),
    "guidance_scale", "time_conditioning", "seed", "claims", "tables"}``; settings that several groups
    share are run once (their ``claims``/``tables`` merged). ``extrapolation: all`` means
    ``eval.extrapolations``; explicit values outside it are dropped; ``stride=1`` at 1× is dropped (one
    chunk, the same samples as full sequence). ``sampler: flowception`` needs a ``dynamics: flowception``
    model; the trials of a model with ``data: lengths`` evaluate ``lengths_data.eval_videos`` videos
    (their ``num_videos``).

    Raises:
        ConfigError: an unknown model, sampler or key in a group, or Flowception sampling of a MaskFlow model.
    """
    exts = [int(x) for x in cfg.eval.extrapolations]
    allowed = {"claims", "tables", "model", "sampler", "extrapolation", "stride", "guidance_scale", "time_conditioning"}
    trials: dict[str, dict[str, Any]] = {}
    for group in to_container(cfg.grid):
        unknown = set(group) - allowed
        if unknown:
            raise ConfigError(f"grid group {group}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
        lists = {
            "model": group.get("model", "frame"),
            "sampler": group.get("sampler", "mgm"),
            "extrapolation": exts if group.get("extrapolation", "all") == "all" else group["extrapolation"],
            "stride": group.get("stride", FULL),
            "guidance_scale": group.get("guidance_scale", 0.0),
            "time_conditioning": group.get("time_conditioning", "dependent"),
            "seed": list(cfg.eval.seeds),
        }
        lists = {k: v if isinstance(v, list) else [v] for k, v in lists.items()}
        for values in itertools.product(*lists.values()):
            t = dict(zip(lists, values))
            if t["model"] not in cfg.models:
                raise ConfigError(f"grid model {t['model']!r} is not one of models: {', '.join(cfg.models)}")
            if t["sampler"] not in SAMPLERS:
                raise ConfigError(f"grid sampler {t['sampler']!r}; choose from {', '.join(SAMPLERS)}")
            if t["sampler"] == "flowception" and _model_dynamics(cfg, t["model"]) != "flowception":
                raise ConfigError(f"grid: sampler flowception needs a model with dynamics: flowception, "
                                  f"{t['model']!r} is {_model_dynamics(cfg, t['model'])}")
            if _model_data(cfg, t["model"]) == "lengths":
                t["num_videos"] = int(cfg.lengths_data.eval_videos)
            t["extrapolation"] = int(t["extrapolation"])
            if t["extrapolation"] not in exts or (t["stride"] != FULL and t["extrapolation"] == 1):
                continue
            t["guidance_scale"] = float(t["guidance_scale"])
            t["sampling_steps"] = int(cfg.eval.sampling_steps[t["sampler"]])
            t["seed"] = int(t["seed"])
            ident = settings_key({k: t[k] for k in sorted(t)})
            entry = trials.setdefault(ident, {**t, "claims": [], "tables": []})
            entry["claims"] = sorted(set(entry["claims"]) | set(group.get("claims", [])))
            entry["tables"] = sorted(set(entry["tables"]) | set(group.get("tables", [])))
    return list(trials.values())


def _trial_settings(trial: dict[str, Any]) -> dict[str, Any]:
    keys = ("model", "sampler", "sampling_steps", "extrapolation", "stride", "guidance_scale", "time_conditioning", "seed")
    return {k: trial[k] for k in keys + (("num_videos",) if "num_videos" in trial else ())}


def _trial_name(trial: dict[str, Any]) -> str:
    return (f"{trial['model']}-{trial['sampler']}{trial['sampling_steps']}-s{trial['stride']}-w{trial['guidance_scale']:g}"
            f"-{'ti' if trial['time_conditioning'] == 'independent' else 'td'}-x{trial['extrapolation']}-seed{trial['seed']}")


def run_evaluation_trial(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: one setting through :func:`experiments.evaluate.main`.

    ``config`` = ``{"trial": {settings, "key", "checkpoint"}, "base": evaluate config, "parent_run_id",
    "trials_dir"}``. Writes ``trials_dir/<key>.json`` (settings and every metric, the per-frame curves
    included) when it finishes, then ``tune.report`` s the scalar metrics. A failure is recorded in the
    trial's MLflow run by ``evaluate.main`` and re-raised (no file: a rerun tries it again).
    """
    from ray import tune

    from experiments import evaluate

    trial = config["trial"]
    cfg = OmegaConf.merge(OmegaConf.create(config["base"]), {
        "checkpoint": trial["checkpoint"], "sampler": trial["sampler"], "sampling_steps": trial["sampling_steps"],
        "extrapolation": trial["extrapolation"], "stride": None if trial["stride"] == FULL else int(trial["stride"]),
        "guidance_scale": trial["guidance_scale"], "time_conditioning": trial["time_conditioning"],
        "seed": trial["seed"], "out_dir": str(Path(config["trials_dir"]) / "videos" / trial["key"]),
        **({"num_videos": trial["num_videos"]} if "num_videos" in trial else {}),
    })
    name = _trial_name(trial)
    t0 = time.perf_counter()
    metrics = evaluate.main(cfg, parent_run_id=config["parent_run_id"], run_name=name,
                            extra_tags={"reproduce_key": trial["key"], "model": trial["model"],
                                        "claims": ",".join(map(str, trial["claims"]))})
    record = {"key": trial["key"], "name": name, "settings": _trial_settings(trial), "claims": trial["claims"],
              "tables": trial["tables"], "metrics": metrics, "trial_seconds": time.perf_counter() - t0}
    _write_json(Path(config["trials_dir"]) / f"{trial['key']}.json", record)
    tune.report({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})


def evaluate_grid(cfg: DictConfig, out: Path, models: dict[str, dict[str, Any]], uri: str) -> dict[str, Any]:
    """Run the pending trials of :func:`expand_grid` through Ray Tune; finished ones are read back.

    Returns:
        ``{"trials": [record, ...] (finished, grid order), "ran": int, "skipped": int, "errors": [str],
        "parent_run_id": str, "seconds": float}``.
    """
    import ray
    from ray import tune

    from experiments import tracking

    trials_dir = out / "trials"
    grid = expand_grid(cfg)
    base = load_config("evaluate", [])
    base.num_videos = int(cfg.eval.num_videos)
    base.batch_size = int(cfg.eval.batch_size)
    base.n_context_frames = int(cfg.n_context_frames)
    base.num_logged_videos = min(2, int(cfg.eval.num_videos))
    base.fvd.enabled = bool(cfg.eval.fvd)
    base.fvd.cache_dir = str(out / "fvd_cache")
    base.mlflow.tracking_uri = uri
    base.mlflow.experiment = str(cfg.mlflow.experiment)
    eval_settings = {k: to_container(base)[k] for k in ("num_videos", "batch_size", "n_context_frames", "split",
                                                        "use_ema", "temperature", "unmasking_schedule",
                                                        "gumbel_temperature", "partial_context_level", "fvd")}
    eval_settings["fvd"] = {k: v for k, v in eval_settings["fvd"].items() if k != "cache_dir"}
    from maskflow.sampling.config import FLOWCEPTION_SETTINGS

    flowception_settings = {k: to_container(base)[k] for k in FLOWCEPTION_SETTINGS}
    for t in grid:
        t["checkpoint"] = models[t["model"]]["checkpoint"]
        t["key"] = settings_key({"trial": _trial_settings(t), "model": models[t["model"]]["key"], "eval": eval_settings,
                                 **({"flowception": flowception_settings} if t["sampler"] == "flowception" else {})})
    finished = {t["key"]: rec for t in grid if (rec := _read_json(trials_dir / f"{t['key']}.json")) is not None}
    pending = [t for t in grid if t["key"] not in finished]
    log.info("evaluation grid: %d trials, %d finished before, %d to run", len(grid), len(finished), len(pending))

    client = tracking.get_client(uri)
    grid_key = settings_key(sorted(t["key"] for t in grid))
    parent_id, _ = tracking.get_or_create_run(
        client, str(cfg.mlflow.experiment), f"reproduce-{cfg.preset}-{grid_key}",
        resume_key=("reproduce_grid", grid_key), tags={"stage": "reproduce", "preset": str(cfg.preset)},
    )
    tracking.log_params(client, parent_id, {"preset": cfg.preset, "num_trials": len(grid),
                                            "seeds": json.dumps(list(cfg.eval.seeds)),
                                            "num_videos": int(cfg.eval.num_videos)})
    errors: list[str] = []
    t0 = time.perf_counter()
    if pending:
        resources = {"cpu": float(cfg.eval.cpus_per_trial)}
        if float(cfg.eval.gpus_per_trial) > 0 and ray.cluster_resources().get("GPU", 0) >= 1:
            resources["gpu"] = float(cfg.eval.gpus_per_trial)
        base.device = "auto" if "gpu" in resources else "cpu"
        tuner = tune.Tuner(
            tune.with_resources(run_evaluation_trial, resources),
            param_space={"trial": tune.grid_search(pending), "base": to_container(base), "parent_run_id": parent_id,
                         "trials_dir": str(trials_dir)},
            # reuse_actors: a trial process keeps torch, MLflow and the I3D code imported for the next trial
            tune_config=tune.TuneConfig(max_concurrent_trials=int(cfg.eval.max_concurrent_trials), reuse_actors=True),
            run_config=tune.RunConfig(name=time.strftime("eval-%Y%m%d-%H%M%S"), storage_path=str(out / "ray_results"),
                                      failure_config=tune.FailureConfig(max_failures=0), verbose=0),
        )
        results = tuner.fit()
        errors = [str(e).splitlines()[0] if str(e) else repr(e) for e in results.errors]
        for err in errors:
            log.warning("an evaluation trial failed: %s", err)
    records = [rec for t in grid if (rec := _read_json(trials_dir / f"{t['key']}.json")) is not None]
    tracking.set_tags(client, parent_id, {"num_errors": len(errors), "num_finished": len(records)})
    return {"trials": records, "ran": len(pending), "skipped": len(finished), "errors": errors,
            "missing": [_trial_name(t) for t in grid if not (trials_dir / f"{t['key']}.json").exists()],
            "parent_run_id": parent_id, "seconds": time.perf_counter() - t0, "num_grid": len(grid)}


# ------------------------------------------------------------------------------------- 4. the strip
def rollout_strip(cfg: DictConfig, out: Path, model_info: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """Generated frames against the ground truth at the smallest and the largest extrapolation.

    The frame-level model, MGM, full sequence, no guidance, seed ``eval.seeds[0]``: the same clips, seed
    and batching as that grid trial, so the first video is the trial's first video.

    Returns:
        ``{extrapolation: {"real": uint8 [L, H, W, 3], "fake": …}}`` for the smallest and largest factor.
    """
    import torch

    from experiments.heldout import heldout_quality
    from experiments.sample import load_for_sampling
    from maskflow.sampling import SamplerConfig
    from pipeline.readers import load_eval_clips

    k, m, seed = int(cfg.chunk_size), int(cfg.n_context_frames), int(cfg.eval.seeds[0])
    ev = load_config("evaluate", [f"checkpoint={model_info['checkpoint']}", "device=cpu"])
    model, state, shards, tokenizer, _ = load_for_sampling(ev)
    scfg = SamplerConfig(sampler="mgm", sampling_steps=int(cfg.eval.sampling_steps.mgm), chunk_size=k, n_context_frames=m,
                         scheduler=str(state["config"]["method"]["scheduler"]))
    strips = {}
    exts = sorted({min(int(x) for x in cfg.eval.extrapolations), max(int(x) for x in cfg.eval.extrapolations)})
    for ext in exts:
        clips = load_eval_clips(shards, num_frames=ext * k, num_clips=int(cfg.eval.num_videos), seed=seed)
        if not clips:
            continue
        with torch.inference_mode():
            res = heldout_quality(model, tokenizer, clips, scfg, num_frames=ext * k, seed=seed,
                                  batch_size=int(cfg.eval.batch_size))
        strips[ext] = {"real": res.real_frames[0].numpy(), "fake": res.fake_frames[0].numpy()}
    return strips


# ------------------------------------------------------------------------------------------ driver
def _setup_logging(out: Path) -> None:
    fmt = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    if not any(type(h) is logging.StreamHandler for h in root.handlers):
        sh = logging.StreamHandler()
        sh.setFormatter(fmt)
        root.addHandler(sh)
    fh = logging.FileHandler(out / "reproduce.log")
    fh.setFormatter(fmt)
    root.addHandler(fh)
    for noisy in ("alembic", "mlflow.store", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _machine() -> dict[str, Any]:
    import platform

    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main(cfg: DictConfig, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run (or resume) the whole study; returns the content of ``out_dir/reproduction.json``.

    Args:
        cfg: a config from :func:`load_reproduce_config`.
        argv: the command-line words, recorded in the report as the exact command.

    Raises:
        ConfigError: a setting that cannot work (before any work starts).
    """
    import ray

    from experiments import reproduction_report, tracking

    t_start = time.perf_counter()
    out = Path(str(cfg.out_dir)).resolve()
    out.mkdir(parents=True, exist_ok=True)
    _setup_logging(out)
    expand_grid(cfg)  # refuse a bad grid before any work
    uri = tracking.resolve_tracking_uri(cfg.mlflow.tracking_uri, workdir=out)
    os.environ["MLFLOW_TRACKING_URI"] = uri  # the trainings' and trials' processes log to the same store
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=True, include_dashboard=False)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    data = prepare_data(cfg, out)
    lengths_data = prepare_data(cfg, out, "lengths") if any(_model_data(cfg, n) == "lengths" for n in cfg.models) else None
    timings["data_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    models = train_models(cfg, out, data, lengths_data)
    timings["train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    grid = evaluate_grid(cfg, out, models, uri)
    timings["evaluate_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    strips = rollout_strip(cfg, out, models["frame"], data) if "frame" in models else {}
    timings["strip_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start

    command = "python -m experiments.reproduce " + shlex.join(argv if argv is not None else sys.argv[1:])
    result = reproduction_report.build(
        cfg=to_container(cfg), data=data, models=models, grid=grid, timings=timings, machine=_machine(),
        command=command.strip(), tracking_uri=uri, lengths_data=lengths_data,
    )
    written = reproduction_report.write(result, out, strips)
    if cfg.get("docs_dir"):
        written.update(reproduction_report.copy_to_docs(out, Path(str(cfg.docs_dir))))
    client = tracking.get_client(uri)
    for path in written.values():
        tracking.log_artifact(client, grid["parent_run_id"], path, artifact_path="reproduction")
    tracking.end_run(client, grid["parent_run_id"])
    reproduction_report.print_summary(result, written)
    return result


if __name__ == "__main__":  # pragma: no cover - CLI
    try:
        config = load_reproduce_config()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    main(config)
