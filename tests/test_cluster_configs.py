"""The files in cluster/ parse, have what Ray / KubeRay need, and only name config keys that exist.

The entrypoint check runs every `python -m experiments.<name> key=value …` found in the manifests,
cluster/README.md and cluster/local.sh through ``experiments.config.load_config(name, words)`` (when
``configs/<name>.yaml`` exists) and also requires dotted keys to exist already, since OmegaConf would
silently add a misspelt one. A renamed config key therefore fails here, not on a cluster.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from experiments.config import CONFIG_DIR, load_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
LAUNCHER = CLUSTER / "aws-h100.yaml"
RAYJOBS = {"train": CLUSTER / "kuberay-rayjob-train.yaml", "sweep": CLUSTER / "kuberay-rayjob-sweep.yaml"}
RUNTIME_ENV = CLUSTER / "runtime_env.yaml"
_MISSING = object()


def _load(path: Path):
    return yaml.safe_load(path.read_text())


def _ray_version_of_image(image: str) -> str:
    m = re.fullmatch(r"rayproject/ray(?:-ml)?:(\d+\.\d+\.\d+)(?:-.+)?", image)
    assert m, f"unexpected image {image!r}: use rayproject/ray:<ray version>-<python>-<platform>"
    return m.group(1)


def _pod_containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


# --------------------------------------------------------------------------------------- parsing
def test_every_yaml_in_cluster_parses():
    files = sorted(CLUSTER.glob("*.yaml"))
    assert {p.name for p in files} >= {"aws-h100.yaml", "kuberay-rayjob-train.yaml", "kuberay-rayjob-sweep.yaml", "runtime_env.yaml"}
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs and all(isinstance(d, dict) for d in docs), path.name
    for path in RAYJOBS.values():  # the embedded runtime env is YAML too
        assert isinstance(yaml.safe_load(_load(path)["spec"]["runtimeEnvYAML"]), dict), path.name


def test_local_sh_is_valid_bash():
    subprocess.run(["bash", "-n", str(CLUSTER / "local.sh")], check=True)
    assert (CLUSTER / "local.sh").stat().st_mode & 0o111, "cluster/local.sh must be executable"


def test_no_credentials_in_cluster_files():
    pattern = re.compile(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|aws_access_key_id|BEGIN [A-Z ]*PRIVATE KEY", re.I)
    for path in CLUSTER.iterdir():
        if path.is_file():
            assert not pattern.search(path.read_text()), f"credential-like text in {path.name}"


# --------------------------------------------------------------------------------------- launcher
def test_launcher_config():
    cfg = _load(LAUNCHER)
    assert cfg["cluster_name"]
    assert cfg["provider"]["type"] == "aws"
    assert isinstance(cfg["max_workers"], int) and cfg["max_workers"] >= 1
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert all(t["node_config"]["InstanceType"] == "p5.48xlarge" for t in types.values())
    workers = [t for name, t in types.items() if name != cfg["head_node_type"]]
    assert workers and all(0 <= t["min_workers"] <= t["max_workers"] <= cfg["max_workers"] for t in workers)
    assert cfg["docker"]["image"].startswith("rayproject/ray")
    head = " ".join(cfg["head_start_ray_commands"])
    worker = " ".join(cfg["worker_start_ray_commands"])
    for cmd in (head, worker):
        assert "--num-gpus=8" in cmd and "RAY_AUTH_MODE=token" in cmd and "MLFLOW_TRACKING_URI=" in cmd
    assert "--head" in head and "--address=$RAY_HEAD_IP:6379" in worker
    assert "mlflow server" in head
    assert any("pip install" in c and "/home/ray/maskflow" in c for c in cfg["setup_commands"])
    assert cfg["file_mounts"]["/home/ray/maskflow"] == "."
    assert {".venv", ".git", "outputs"} <= set(cfg["rsync_exclude"])


def test_launcher_config_passes_rays_own_validation():
    """What `ray up` checks first (schema + defaults), without touching AWS."""
    cfg = _load(LAUNCHER)
    try:
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError:  # private API moved: fall back to the schema file
        import json

        import jsonschema
        import ray.autoscaler

        schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
        jsonschema.validate(cfg, schema)
        return
    validate_config(prepare_config(cfg))


# --------------------------------------------------------------------------------------- KubeRay
@pytest.mark.parametrize("command", sorted(RAYJOBS))
def test_rayjob_manifest(command):
    job = _load(RAYJOBS[command])
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert f"python -m experiments.{command} " in spec["entrypoint"]
    assert spec["submissionMode"] in ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0

    env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert env["working_dir"] and env["pip"]["packages"]
    assert env["env_vars"]["MLFLOW_TRACKING_URI"].startswith("http")

    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    head = cluster["headGroupSpec"]
    head_container = _pod_containers(head)[0]
    assert 8265 in [p["containerPort"] for p in head_container["ports"]]
    assert cluster["workerGroupSpecs"]
    for group in cluster["workerGroupSpecs"]:
        for container in _pod_containers(group):
            for kind in ("requests", "limits"):
                assert int(container["resources"][kind]["nvidia.com/gpu"]) == 8, (group["groupName"], kind)
    for group in [head, *cluster["workerGroupSpecs"]]:  # a memory-backed /dev/shm on every pod
        spec_ = group["template"]["spec"]
        shm_volumes = {v["name"] for v in spec_["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"}
        mounts = {m["name"] for c in spec_["containers"] for m in c.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"}
        assert mounts and mounts <= shm_volumes


def _requirements(specs: list[str]) -> dict[str, str]:
    from packaging.requirements import Requirement

    out = {}
    for s in specs:
        r = Requirement(s)
        out[r.name.lower().replace("_", "-")] = str(r.specifier)
    return out


@pytest.mark.parametrize("command", sorted(RAYJOBS))
def test_rayjob_pip_list_matches_pyproject(command):
    """The KubeRay images get the project's dependencies from this list: keep it equal to pyproject.toml."""
    import tomllib

    deps = _requirements(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    deps.pop("ray")  # the image provides Ray
    listed = _requirements(yaml.safe_load(_load(RAYJOBS[command])["spec"]["runtimeEnvYAML"])["pip"]["packages"])
    assert listed == deps


def test_one_ray_version_everywhere():
    """Image tags, KubeRay rayVersion and the launcher's pip pin agree and satisfy pyproject's range."""
    import tomllib

    from packaging.requirements import Requirement

    launcher = _load(LAUNCHER)
    versions = {_ray_version_of_image(launcher["docker"]["image"])}
    versions |= set(re.findall(r"ray\[[^\]]*\]==(\d+\.\d+\.\d+)", " ".join(launcher["setup_commands"])))
    for path in RAYJOBS.values():
        cluster = _load(path)["spec"]["rayClusterSpec"]
        versions.add(cluster["rayVersion"])
        for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
            versions |= {_ray_version_of_image(c["image"]) for c in _pod_containers(group)}
    assert len(versions) == 1, versions
    ray_req = next(
        Requirement(d) for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
        if d.startswith("ray")
    )
    assert ray_req.specifier.contains(versions.pop())


def test_runtime_env_file():
    env = _load(RUNTIME_ENV)
    assert env["working_dir"] == "."
    assert {".git", ".venv", "outputs", "mlflow.db", "*.mp4"} <= set(env["excludes"])
    assert "MLFLOW_TRACKING_URI" in env["env_vars"]
    assert not {"pip", "conda", "uv"} & set(env), "dependencies come from the nodes, not from each job"


# --------------------------------------------------------------------------------- entrypoints
_COMMAND = re.compile(r"python -m experiments\.(\w+)((?:[^\n])*)")
_STOP = {"&&", "||", ";", "|", "&", ")", "<", ">", "`"}


def _commands(text: str) -> list[tuple[str, list[str]]]:
    """``(name, key=value words)`` of every ``python -m experiments.<name> …`` in ``text``."""
    text = re.sub(r"\\{1,2}\n\s*", " ", text)  # shell line continuations (also the escaped ones of heredocs)
    found = []
    for m in _COMMAND.finditer(text):
        lexer = shlex.shlex(m.group(2), posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = []
        try:
            for token in lexer:
                if token in _STOP or token.startswith("`"):
                    break
                words.append(token.rstrip("`"))
        except ValueError:  # an unterminated quote in prose: not a command
            continue
        found.append((m.group(1), [w for w in words if re.match(r"^\+?[A-Za-z_][\w.]*=", w)]))
    return found


def _all_commands() -> list[tuple[str, str, list[str]]]:
    out = []
    for path in RAYJOBS.values():
        out += [(path.name, n, w) for n, w in _commands(_load(path)["spec"]["entrypoint"])]
    for path in (CLUSTER / "README.md", CLUSTER / "local.sh", LAUNCHER):
        out += [(path.name, n, w) for n, w in _commands(path.read_text())]
    return out


def _check_words(name: str, words: list[str]) -> None:
    load_config(name, words)  # unknown / ambiguous bare keys and bad presets raise ConfigError
    base = load_config(name, [w for w in words if w.startswith("preset=")])
    for word in words:
        key = word.split("=", 1)[0].lstrip("+")
        if key == "preset" or "." not in key:
            continue
        if name == "sweep" and key.startswith("eval."):  # the sweep passes eval.* to experiments.evaluate
            target, path = load_config("evaluate", []), key[len("eval."):]
        else:
            target, path = base, key
        assert OmegaConf.select(target, path, default=_MISSING) is not _MISSING, f"{name}: no config key {key!r}"


def test_entrypoints_name_config_keys_that_exist():
    checked, skipped = set(), set()
    for source, name, words in _all_commands():
        if not (CONFIG_DIR / f"{name}.yaml").exists():
            skipped.add(name)  # e.g. experiments.synthetic (no YAML), or a command still being written
            continue
        try:
            _check_words(name, words)
        except Exception as exc:  # noqa: BLE001 - name the file and the command
            raise AssertionError(f"{source}: python -m experiments.{name} {' '.join(words)}\n{exc}") from exc
        checked.add(name)
    assert {"train", "sweep", "sample"} <= checked, (checked, skipped)


def test_the_entrypoint_check_catches_drift():
    with pytest.raises(Exception, match="num_worker"):
        _check_words("train", ["preset=ffs", "scaling.num_worker=4"])
    with pytest.raises(Exception, match="unknown config key"):
        _check_words("train", ["batch_size=2"])
    assert _commands("ray job submit -- \\\n  python -m experiments.train preset=ffs 'x=[1, 2]' && echo done") == [
        ("train", ["preset=ffs", "x=[1, 2]"])
    ]
