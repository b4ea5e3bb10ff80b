"""Configs for every entry point: a typed schema per entry point, plus command-line overrides.

Overrides are ``key=value`` words, OmegaConf style. A key is either a dotted path
(``sampling_steps=14``, ``optim.lr=3e-4``) or a bare leaf name that occurs once in the config
(``lr=3e-4``), which is what researchers type. ``preset=NAME`` merges ``configs/presets/NAME.yaml``
first (the paper's ``ffs`` and ``dmlab`` training recipes). Values are parsed as YAML (``14`` is an int,
``null`` is None, ``[1,14]`` a list, ``3e-4`` a float).

Every key is checked against the entry point's schema (:mod:`experiments.schema`: the YAML file's keys
with the types of the method's dataclasses) before anything starts: an unknown key is refused with the
nearest valid ones (``difflib``), a value of the wrong type is refused naming the key and its type,
and ``+key=value`` adds a key only inside an open section (the sweep's ``axes``, ``grid``,
``resources_per_trial``). A scalar given to a section means the section's main key where there is one
(``model=B/2`` is ``model.size=B/2``) and is refused otherwise.

Library: OmegaConf structured configs (typed, closed sections, dotted access; a Hydra building block)
rather than Hydra itself, whose working-directory and logging takeover does not suit Ray workers and tests.
"""

from __future__ import annotations

import difflib
import re
import sys
from typing import Any, Iterable, Sequence

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from experiments.schema import CONFIG_DIR, ENTRY_POINTS, SPECS, Schema, get_schema, type_name

__all__ = ["CONFIG_DIR", "ENTRY_POINTS", "ConfigError", "load_config", "apply_overrides", "parse_value", "flatten",
           "to_container", "known_presets"]


class ConfigError(ValueError):
    """A config key or value that cannot work; the message names the setting and what is allowed."""


# ---------------------------------------------------------------------------------------- keys
def _is_open(node: Any) -> bool:
    """An open mapping: keys may be added (``+key=``). Structured-config sections are closed."""
    if not isinstance(node, DictConfig) or OmegaConf.is_struct(node):
        return False
    object_type = OmegaConf.get_type(node)
    return object_type is None or object_type is dict


def _leaf_paths(cfg: Any, prefix: str = "", skip: tuple[str, ...] = (), open_too: bool = False) -> list[str]:
    """Dotted paths of the values (open sections count as values unless ``open_too``), minus ``skip`` prefixes."""
    out: list[str] = []
    if isinstance(cfg, DictConfig):
        for key in cfg.keys():
            path = f"{prefix}.{key}" if prefix else str(key)
            if any(path.startswith(s) or f"{path}." == s for s in skip):
                continue
            child = cfg._get_node(key)
            if isinstance(child, DictConfig) and not child._is_none() and (open_too or not _is_open(child)):
                out.extend(_leaf_paths(child, path, skip, open_too))
            else:
                out.append(path)
    return out


def _section_paths(cfg: Any, prefix: str = "") -> list[str]:
    out: list[str] = []
    if isinstance(cfg, DictConfig):
        for key in cfg.keys():
            child = cfg._get_node(key)
            if isinstance(child, DictConfig) and not child._is_none():
                path = f"{prefix}.{key}" if prefix else str(key)
                out.append(path)
                if not _is_open(child):
                    out.extend(_section_paths(child, path))
    return out


def _exists(cfg: DictConfig, path: str) -> bool:
    return OmegaConf.select(cfg, path, default=_MISSING, throw_on_missing=False) is not _MISSING


_MISSING = object()


def _where(schema: Schema | None) -> str:
    return f" of {schema.name}" if schema is not None else ""


def _help_hint(schema: Schema | None) -> str:
    return f"; `maskflow {schema.name} --help` lists every key" if schema is not None else ""


def _closest(word: str, candidates: list[str]) -> list[str]:
    """The candidates nearest to ``word`` (difflib ratio >= 0.6), only those within 0.05 of the best."""
    scored = sorted(((difflib.SequenceMatcher(None, word, c).ratio(), c) for c in candidates), reverse=True)
    scored = [(r, c) for r, c in scored if r >= 0.6]
    return [c for r, c in scored[:3] if r >= scored[0][0] - 0.05] if scored else []


def _suggest(word: str, leaves: Iterable[str], sections: Iterable[str] = ()) -> list[str]:
    """Nearest valid keys to ``word``: full paths first, then by leaf name (``lrr`` → ``optim.lr``), then sections."""
    leaves = sorted(set(leaves))
    close = _closest(word, leaves)
    if not close:
        by_leaf: dict[str, list[str]] = {}
        for c in leaves:
            by_leaf.setdefault(c.rsplit(".", 1)[-1], []).append(c)
        close = [p for m in _closest(word.rsplit(".", 1)[-1], list(by_leaf)) for p in by_leaf[m]][:3]
    return close or _closest(word, sorted(set(sections)))


def _unknown(key: str, cfg: DictConfig, schema: Schema | None, reason: str = "") -> ConfigError:
    close = _suggest(key, _leaf_paths(cfg), _section_paths(cfg))
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(f"unknown config key {key!r}{_where(schema)}{reason}{hint}{_help_hint(schema)}")


def _resolve_key(cfg: DictConfig, key: str, schema: Schema | None = None, adding: bool = False) -> str:
    """The dotted path a (possibly bare) key names.

    Raises:
        ConfigError: an unknown key (with the nearest valid ones), an ambiguous bare key, or ``+key`` into
            a closed section.
    """
    if _exists(cfg, key):
        return key
    if "." in key:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent, default=None)
        if isinstance(node, DictConfig) and _is_open(node):
            if adding:
                return key
            raise _unknown(key, cfg, schema, f": {parent} is an open section, add a key to it with +{key}=…")
        if adding and isinstance(node, DictConfig):
            raise _unknown(key, cfg, schema, f": {parent} has a fixed set of keys, nothing can be added with +")
        raise _unknown(key, cfg, schema)
    skip = schema.embedded_prefixes() if schema is not None else ()
    matches = [p for p in _leaf_paths(cfg, skip=skip, open_too=True) if p.rsplit(".", 1)[-1] == key]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ConfigError(f"override {key!r} is ambiguous: use one of {', '.join(sorted(matches))}")
    if adding and _is_open(cfg):
        return key
    raise _unknown(key, cfg, schema)


# -------------------------------------------------------------------------------------- values
_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def parse_value(raw: str) -> Any:
    """Parse an override value as YAML, but read ``3e-4``/``1E5`` as floats (YAML 1.1 reads them as strings)."""
    if raw == "":
        return None
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw  # e.g. a value with a stray colon: keep the text, the type check decides
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        return float(value)
    return value


def _expected(cfg: DictConfig, path: str, schema: Schema | None) -> str:
    key = schema.keys.get(path) if schema is not None else None
    if key is None and schema is not None:  # inside an embedded schema
        for prefix, other in schema.spec.embed.items():
            if path.startswith(prefix + "."):
                key = get_schema(other).keys.get(path[len(prefix) + 1:])
    if key is None:
        return ""
    doc = f": {key.doc.rstrip('.')}" if key.doc else ""
    return f" ({path} takes {_article(type_name(key.type))}, default {_show(key.default)}{doc})"


def _article(name: str) -> str:
    name = name.rstrip("?") + (" or null" if name.endswith("?") else "")
    return ("an " if name[0] in "aeiou" else "a ") + name


def _show(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _coerce(cfg: DictConfig, path: str, value: Any) -> Any:
    """``2e3`` for an int key is 2000 (YAML reads it as a float); anything else is left to OmegaConf."""
    from omegaconf.nodes import IntegerNode, StringNode

    parent, _, leaf = path.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    child = node._get_node(leaf) if isinstance(node, DictConfig) and leaf in node else None
    if isinstance(child, IntegerNode) and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(child, StringNode) and isinstance(value, bool):  # use_gpu=true stays "true", not "True"
        return str(value).lower()
    return value


def _set(cfg: DictConfig, path: str, value: Any, raw: str, schema: Schema | None) -> None:
    node = OmegaConf.select(cfg, path, default=None)
    is_section = isinstance(node, DictConfig) and not _is_open(node)
    try:
        if is_section and isinstance(value, dict):
            OmegaConf.update(cfg, path, value, merge=True)
        elif is_section:
            keys = ", ".join(str(k) for k in node.keys())
            raise ConfigError(
                f"{path}={raw} gives a single value to the section {path}, which holds {keys}; set one of its "
                f"keys instead, e.g. {path}.{next(iter(node.keys()))}={raw}{_help_hint(schema)}"
            )
        else:
            OmegaConf.update(cfg, path, _coerce(cfg, path, value), merge=False, force_add=True)
    except ConfigError:
        raise
    except OmegaConfBaseException as exc:
        msg = str(exc).splitlines()[0].rstrip(".")
        if "not in" in msg or "Key '" in msg and "not" in msg:  # a dict given to a section with an unknown key
            inner = getattr(exc, "full_key", None) or path
            raise _unknown(str(inner), cfg, schema) from None
        raise ConfigError(f"{path}={raw} has the wrong type: {msg}{_expected(cfg, path, schema)}") from None


def apply_overrides(cfg: DictConfig, overrides: Iterable[str], schema: Schema | None = None) -> DictConfig:
    """Apply ``key=value`` overrides in order (see module docstring).

    Args:
        cfg: the config to change in place (a structured config from the schema, or a plain one).
        overrides: ``key=value`` words; ``+key=value`` adds a key to an open section.
        schema: the entry point's schema, for aliases, docs in messages and bare-key rules.

    Raises:
        ConfigError: for a word without ``=``, an unknown key (naming the nearest valid ones), an
            ambiguous bare key, a value of the wrong type, or a scalar given to a section.
    """
    aliases = schema.aliases() if schema is not None else {}
    for word in overrides:
        if "=" not in word:
            hint = f" (a config of {schema.name} takes key=value words; `maskflow {schema.name} --help` lists them)" if schema else ""
            raise ConfigError(f"override {word!r} must look like key=value{hint}")
        key, raw = word.split("=", 1)
        key = key.strip()
        adding = key.startswith("+")
        key = key.lstrip("+")
        if not key:
            raise ConfigError(f"override {word!r} has no key before '='")
        value = parse_value(raw)
        path = _resolve_key(cfg, key, schema, adding=adding)
        if path in aliases and not isinstance(value, dict):
            path = aliases[path]
        _set(cfg, path, value, raw, schema)
    return cfg


# -------------------------------------------------------------------------------------- loading
def known_presets() -> list[str]:
    """Names of ``configs/presets/*.yaml``."""
    return sorted(p.stem for p in (CONFIG_DIR / "presets").glob("*.yaml"))


def load_config(name: str, overrides: Sequence[str] | None = None) -> DictConfig:
    """The typed config of entry point ``name``: its schema's defaults, ``preset=…`` if given, then overrides.

    Args:
        name: entry point, e.g. ``"train"``, ``"sample"``, ``"demo"`` (``configs/<name>.yaml``).
        overrides: ``key=value`` words; ``None`` reads ``sys.argv[1:]``.

    Returns:
        The resolved config (interpolations resolved), a structured ``DictConfig``: assigning an unknown
        key or a value of the wrong type to it raises too. Entry points without a
        :data:`~experiments.schema.SPECS` entry get a plain ``DictConfig`` (checked the same way).

    Raises:
        ConfigError: a missing config or preset, or a bad override (see :func:`apply_overrides`).
    """
    overrides = list(sys.argv[1:] if overrides is None else overrides)
    try:
        schema = get_schema(name)
    except KeyError:
        raise ConfigError(f"no config named {name!r} in {CONFIG_DIR}; entry points: {', '.join(ENTRY_POINTS)}") from None
    cfg = schema.create()
    presets = [o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("preset=")]
    rest = [o for o in overrides if not o.lstrip("+").startswith("preset=")]
    if presets and not schema.spec.presets:
        raise ConfigError(f"preset= is a training recipe ({', '.join(known_presets())}); {name} takes no preset")
    for preset in presets:
        ppath = CONFIG_DIR / "presets" / f"{preset}.yaml"
        if not ppath.exists():
            raise ConfigError(f"unknown preset {preset!r}; known presets: {', '.join(known_presets())}")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.load(ppath))
        except OmegaConfBaseException as exc:
            raise ConfigError(f"preset {preset!r} ({ppath}) does not fit the {name} config: {str(exc).splitlines()[0]}") from None
        cfg.preset = preset
    cfg = apply_overrides(cfg, rest, schema)
    OmegaConf.resolve(cfg)
    if name not in SPECS:  # an entry point that merges and deletes sections itself (reproduce): a plain config
        cfg = OmegaConf.create(to_container(cfg))
    return cfg


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """Plain nested ``dict`` of a config (for checkpoints, JSON and Ray); tuples become lists."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def flatten(d: dict[str, Any] | DictConfig, prefix: str = "") -> dict[str, Any]:
    """Flatten a nested dict to dotted keys (MLflow params need flat keys)."""
    if isinstance(d, (DictConfig, ListConfig)):
        d = to_container(d)
    out: dict[str, Any] = {}
    for key, value in d.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out
