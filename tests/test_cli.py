"""The typed config schemas and the ``maskflow`` command (experiments/schema.py, config.py, cli.py).

Fast: nothing here starts Ray or opens an MLflow run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from omegaconf import OmegaConf

from experiments.cli import cli, command_line_config
from experiments.config import ConfigError, load_config
from experiments.schema import ENTRY_POINTS, SPECS, get_schema

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    # RAY_ADDRESS points nowhere: a command that reached ray.init would fail differently (not with code 2)
    full_env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1", "MLFLOW_TRACKING_URI": "file:///nonexistent/mlruns", **env}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------------------ command line
def test_a_typo_exits_with_code_2_naming_the_nearest_key_before_ray():
    proc = _run("-m", "experiments.train", "shards=/nonexistent", "optim.lrr=1e-3")
    assert proc.returncode == 2, proc.stderr
    assert "unknown config key 'optim.lrr'" in proc.stderr and "did you mean 'optim.lr'?" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1  # one paragraph


def test_the_maskflow_command_refuses_like_python_m():
    proc = _run("-m", "experiments.cli", "sweep", "checkpoint=/x", "eval.fvd.weigths=/w.pt")
    assert proc.returncode == 2 and "did you mean 'eval.fvd.weights'?" in proc.stderr, proc.stderr
    assert proc.stderr.startswith("maskflow sweep: config error:")


def _refusal(name: str, words: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        command_line_config(name, words)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_wrong_types_are_refused_naming_key_and_type(capsys):
    err = _refusal("train", ["optim.lr=fast"], capsys)
    assert "optim.lr=fast" in err and "optim.lr takes a float" in err
    err = _refusal("train", ["loop.max_steps=2.5"], capsys)
    assert "loop.max_steps takes an int" in err
    err = _refusal("sample", ["stride=every"], capsys)
    assert "stride takes an int or null" in err
    err = _refusal("tokenize", ["retry_failed=maybe"], capsys)
    assert "retry_failed" in err and "bool" in err


def test_values_convert_where_a_researcher_means_it():
    cfg = load_config("train", ["loop.max_steps=2e3", "scaling.use_gpu=true", "scaling.gpus_per_worker=0.5", "optim.lr=1"])
    assert cfg.loop.max_steps == 2000 and isinstance(cfg.loop.max_steps, int)
    assert cfg.scaling.use_gpu == "true" and cfg.scaling.gpus_per_worker == 0.5 and cfg.optim.lr == 1.0
    assert load_config("sweep", ["metric=null"]).metric is None  # its comment documents null
    with pytest.raises(ConfigError, match="not Optional"):
        load_config("train", ["optim.precision=null"])


def test_a_scalar_for_a_section_maps_to_its_main_key_or_is_refused():
    assert load_config("train", ["model=B/2"]).model.size == "B/2"  # the Hydra habit
    assert load_config("evaluate", ["fvd=false"]).fvd.enabled is False
    assert load_config("sweep", ["eval.fvd=false"]).eval.fvd.enabled is False
    with pytest.raises(ConfigError, match=r"section optim.*optim\.lr=3"):
        load_config("train", ["optim=3"])
    with pytest.raises(ConfigError, match=r"unknown config key 'model.sise'.*model\.size"):
        load_config("train", ["model={size: B/2, sise: 3}"])


def test_plus_adds_keys_only_to_open_sections():
    cfg = load_config("sweep", ["+axes.n_context_frames=[1, 2]", "+resources_per_trial.memory=1e9", "stride=[1, null]"])
    assert list(cfg.axes.n_context_frames) == [1, 2] and cfg.resources_per_trial.memory == 1e9
    assert list(cfg.axes.stride) == [1, None]  # a bare name finds the axis (eval.* is not searched)
    with pytest.raises(ConfigError, match=r"axes is an open section, add a key to it with \+axes\.temperature"):
        load_config("sweep", ["axes.temperature=[0.5]"])
    with pytest.raises(ConfigError, match="optim has a fixed set of keys"):
        load_config("train", ["+optim.momentum=0.9"])


def test_presets_apply_to_train_only_and_fit_its_schema():
    assert load_config("train", ["preset=ffs"]).model.size == "XL/2"
    with pytest.raises(ConfigError, match="sample takes no preset"):
        load_config("sample", ["preset=ffs"])


def test_the_loaded_config_refuses_unknown_keys_set_by_code():
    cfg = load_config("train", [])
    with pytest.raises(Exception, match="lrr"):
        cfg.optim.lrr = 1.0


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_help_lists_every_key_with_its_default(name):
    result = CliRunner().invoke(cli, [name, "--help"], prog_name="maskflow", terminal_width=200)
    assert result.exit_code == 0, result.output
    assert f"Usage: maskflow {name} [OPTIONS] [KEY=VALUE]..." in result.output and "--cfg" in result.output
    schema = get_schema(name)
    for key in schema.values():
        if key.kind == "value":
            shown = "null" if key.default is None else str(key.default).lower() if isinstance(key.default, bool) else None
            assert f"{key.path}={shown}" in result.output if shown else f"{key.path}=" in result.output, key.path
        else:
            assert key.path in result.output
    undocumented = [k.path for k in schema.values() if not k.doc]
    assert not undocumented, f"document these keys with a comment in experiments/configs/{name}.yaml: {undocumented}"
    assert all(k.doc.split()[0] in result.output for k in schema.values())


def test_every_entry_point_is_a_subcommand_and_the_console_script():
    result = CliRunner().invoke(cli, ["--help"], prog_name="maskflow")
    assert result.exit_code == 0 and all(f"  {n} " in result.output for n in ENTRY_POINTS)
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["maskflow"] == "experiments.cli:main"


def test_python_m_help_and_cfg(capsys):
    with pytest.raises(SystemExit) as exc:
        command_line_config("sample", ["--help"])
    assert exc.value.code == 0 and "python -m experiments.sample" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        command_line_config("train", ["lr=3e-4", "--cfg", "-v", "log_level=debug"])  # verbosity words pass through
    assert exc.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["lr"] == 3e-4 and printed["model"]["size"] == "small"


def test_shell_completion_offers_config_keys():
    env = {"_MASKFLOW_COMPLETE": "bash_complete", "COMP_WORDS": "maskflow train optim.l", "COMP_CWORD": "2"}
    result = CliRunner().invoke(cli, [], prog_name="maskflow", env=env)
    items = [line.split(",", 1)[1] for line in result.output.splitlines() if "," in line]
    assert "optim.lr=" in items and "optim.lr_decay=" in items and "loop.max_steps=" not in items


# ---------------------------------------------------------------------- schemas vs the code
@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_each_yaml_loads_into_its_schema_with_typed_keys(name):
    schema = get_schema(name)
    cfg = schema.create()
    text = yaml.safe_load((REPO / "experiments" / "configs" / f"{name}.yaml").read_text())
    assert set(text) <= set(cfg.keys())
    untyped = [k.path for k in schema.values() if not k.typed]
    assert not untyped, f"give these {name} keys a type in experiments/schema.py TYPES: {untyped}"


@pytest.mark.parametrize("name", [n for n in ENTRY_POINTS if SPECS[n].links and SPECS[n].match_defaults])
def test_yaml_defaults_equal_the_dataclass_defaults(name):
    from experiments.schema import _field_types

    schema = get_schema(name)
    compared = 0
    for prefix, sources in schema.links.items():
        for source in sources:
            defaults = _field_types(source)[1]
            for field, default in defaults.items():
                key = schema.keys.get(f"{prefix}.{field}" if prefix else field)
                if key is None or key.kind != "value" or isinstance(default, dict) or key.path in SPECS[name].own_defaults:
                    continue
                if key.default is None and default is not None:  # null: "derived" (e.g. the size preset's patch)
                    continue
                want = list(default) if isinstance(default, tuple) else default
                if source is not dict and dataclasses.is_dataclass(source) and isinstance(source, type) and \
                        any(f.name == field for f in dataclasses.fields(source)) and name == "tokenize":
                    continue  # tokenize: the job's DEFAULTS, not DecodeConfig's per-call defaults, are the defaults
                assert key.default == want, f"{name}: {key.path}: YAML {key.default!r} != {source!r} {want!r}"
                compared += 1
    assert compared >= 5


def test_tokenize_yaml_has_exactly_the_jobs_settings():
    from pipeline.job import DEFAULTS

    def paths(d, prefix=""):
        return {p for k, v in d.items() for p in (paths(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k})}

    job = {k: v for k, v in OmegaConf.to_container(load_config("tokenize", [])).items() if k != "mlflow"}
    assert paths(job) == paths(DEFAULTS)  # the entry point's own mlflow section is not a job setting


def test_linked_types_come_from_the_dataclasses():
    keys = get_schema("train").keys
    assert keys["optim.lr"].type is float and keys["method.head_chunk_rows"].type is int
    keys = get_schema("sample").keys
    assert keys["stride"].doc.startswith("s; null") and "Optional[int]" in str(keys["stride"].type)


# ----------------------------------------------------------------------------------- resume
def _fake_run(tmp_path: Path, *, size: str = "tiny", chunk_size: int = 8, codebook_size: int = 32) -> tuple[Path, Path]:
    from experiments.checkpoint import save_checkpoint

    shards = tmp_path / "tokens"
    shards.mkdir()
    (shards / "manifest.json").write_text(json.dumps({
        "tokenizer": {"codebook_size": codebook_size, "latent_size": 4, "tokenizer_id": "patch_kmeans-abc"},
        "split": {"mode": "video"},
    }))
    config = OmegaConf.to_container(load_config("train", [f"model.size={size}", f"chunk_size={chunk_size}"]))
    save_checkpoint(tmp_path / "runs" / "r1" / "checkpoint_000002", {
        "model": {}, "step": 2, "config": config,
        "data": {"codebook_size": 32, "latent_size": 4, "tokenizer_id": "patch_kmeans-abc"},
    })
    return shards, tmp_path / "runs"


def test_resuming_with_another_model_is_refused_before_ray_starts(tmp_path, monkeypatch):
    import ray

    from experiments import train

    shards, runs = _fake_run(tmp_path, codebook_size=64)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started"))
    words = [f"shards={shards}", "run_name=r1", f"run.storage_path={runs}", "model.size=small", "chunk_size=16"]
    with pytest.raises(ConfigError) as exc:
        train.main(load_config("train", words))
    msg = str(exc.value)
    assert "model.size=small (checkpoint: tiny)" in msg and "chunk_size=16 (checkpoint: 8)" in msg
    assert "codebook_size=64 (checkpoint: 32)" in msg and "step 2" in msg
    assert "time_conditioning" not in msg and "activation_checkpointing" not in msg


def test_resuming_with_the_same_model_passes_the_check(tmp_path):
    from experiments.checkpoint import check_resume, checkpoint_meta

    shards, runs = _fake_run(tmp_path)
    # other settings may change, activation checkpointing too (same weights)
    cfg = load_config("train", ["model.size=tiny", "chunk_size=8", "optim.lr=1e-3", "model.activation_checkpointing=true"])
    data = {"codebook_size": 32, "latent_size": 4, "tokenizer_id": "patch_kmeans-abc"}
    assert check_resume(str(runs / "r1"), cfg, data)["step"] == 2
    assert check_resume(str(runs / "new-run"), cfg, data) is None  # nothing to resume
    (runs / "r1" / "checkpoint_000002" / "meta.json").unlink()  # an older checkpoint: read memory-mapped
    assert checkpoint_meta(runs / "r1")["config"]["model"]["size"] == "tiny"
