"""Configs for every entry point: YAML files in ``experiments/configs`` plus command-line overrides.

Overrides are ``key=value`` words, OmegaConf style. A key is either a dotted path
(``sampling.stride=14``) or a bare leaf name that occurs once in the config (``stride=14``), which
is what researchers type. ``preset=NAME`` merges ``configs/presets/NAME.yaml`` first (the paper's
``ffs`` and ``dmlab`` recipes). Values are parsed as YAML (``14`` is an int, ``null`` is None,
``[1,14]`` a list).

Library: OmegaConf (already a Hydra building block, typed merges, dotted access) rather than Hydra
itself, whose working-directory and logging takeover does not suit Ray workers and tests.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

__all__ = ["CONFIG_DIR", "ConfigError", "load_config", "apply_overrides", "flatten", "to_container"]


class ConfigError(ValueError):
    """A config key or value that cannot work; the message names the setting and what is allowed."""


def _leaf_paths(cfg: Any, prefix: str = "") -> list[str]:
    out: list[str] = []
    if isinstance(cfg, DictConfig):
        for key in cfg.keys():
            path = f"{prefix}.{key}" if prefix else str(key)
            child = cfg._get_node(key)
            if isinstance(child, DictConfig):
                out.extend(_leaf_paths(child, path))
            else:
                out.append(path)
    return out


def _resolve_key(cfg: DictConfig, key: str) -> str:
    if OmegaConf.select(cfg, key, default="__missing__") != "__missing__" or "." in key:
        return key
    matches = [p for p in _leaf_paths(cfg) if p.rsplit(".", 1)[-1] == key]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ConfigError(f"override {key!r} is ambiguous: use one of {', '.join(sorted(matches))}")
    known = sorted({p.rsplit(".", 1)[-1] for p in _leaf_paths(cfg)})
    raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(known)}")


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def parse_value(raw: str) -> Any:
    """Parse an override value as YAML, but read ``3e-4``/``1E5`` as floats (YAML 1.1 reads them as strings)."""
    if raw == "":
        return None
    value = yaml.safe_load(raw)
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        return float(value)
    return value


def apply_overrides(cfg: DictConfig, overrides: Iterable[str]) -> DictConfig:
    """Apply ``key=value`` overrides in order (see module docstring).

    Raises:
        ConfigError: for a word without ``=``, an unknown key, or an ambiguous bare key.
    """
    for word in overrides:
        if "=" not in word:
            raise ConfigError(f"override {word!r} must look like key=value")
        key, raw = word.split("=", 1)
        key = key.strip().lstrip("+")
        value = parse_value(raw)
        path = _resolve_key(cfg, key)
        OmegaConf.update(cfg, path, value, merge=False, force_add=True)
    return cfg


def load_config(name: str, overrides: Sequence[str] | None = None) -> DictConfig:
    """Load ``configs/<name>.yaml``, merge ``preset=…`` if given, then apply the other overrides.

    Args:
        name: config file stem, e.g. ``"train"``, ``"sample"``, ``"demo"``.
        overrides: ``key=value`` words; ``None`` reads ``sys.argv[1:]``.

    Returns:
        The resolved config (interpolations resolved).

    Raises:
        ConfigError: for a missing config or preset, or a bad override.
    """
    overrides = list(sys.argv[1:] if overrides is None else overrides)
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"no config named {name!r} in {CONFIG_DIR}")
    cfg = OmegaConf.load(path)
    presets = [o.split("=", 1)[1] for o in overrides if o.startswith("preset=")]
    rest = [o for o in overrides if not o.startswith("preset=")]
    for preset in presets:
        ppath = CONFIG_DIR / "presets" / f"{preset}.yaml"
        if not ppath.exists():
            known = sorted(p.stem for p in (CONFIG_DIR / "presets").glob("*.yaml"))
            raise ConfigError(f"unknown preset {preset!r}; known presets: {', '.join(known)}")
        cfg = OmegaConf.merge(cfg, OmegaConf.load(ppath))
        OmegaConf.update(cfg, "preset", preset, force_add=True)
    cfg = apply_overrides(cfg, rest)
    OmegaConf.resolve(cfg)
    return cfg


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """Plain nested ``dict`` of a config (for checkpoints, JSON and Ray)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def flatten(d: dict[str, Any] | DictConfig, prefix: str = "") -> dict[str, Any]:
    """Flatten a nested dict to dotted keys (MLflow params need flat keys)."""
    if isinstance(d, DictConfig):
        d = to_container(d)
    out: dict[str, Any] = {}
    for key, value in d.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out
