"""Typed schemas of the entry points, derived from their YAML files and the method's dataclasses.

Each entry point (``tokenize``, ``train``, ``sample``, ``evaluate``, ``sweep``, ``report``, ``demo``) has one
schema: an OmegaConf structured config whose keys and defaults are the ones of
``experiments/configs/<name>.yaml`` and whose types come, in this order, from

1. :data:`TYPES` — the few keys whose YAML default (``null``, or an ``int`` that also takes fractions)
   says nothing about their type;
2. the dataclass or defaults dict that describes the section (:data:`SPECS` ``links``):
   :class:`~maskflow.training.OptimConfig` for ``train``'s ``optim``,
   :class:`~maskflow.training.ObjectiveConfig` for ``method``, :class:`~maskflow.models.BackboneConfig`
   for ``model``, :class:`~maskflow.flowception.FlowceptionConfig` for ``flowception``,
   :class:`~maskflow.sampling.SamplerConfig` for the sampler keys of ``sample`` and
   ``evaluate``, :data:`pipeline.job.DEFAULTS` and :class:`~pipeline.decode.DecodeConfig` for ``tokenize``;
3. the YAML value itself (``14`` is an ``int``, ``1.0e-4`` a ``float``, ``true`` a ``bool``).

A key added to a YAML file is therefore a key of its schema at once, and a dataclass field's type
applies to the YAML key of the same name. Sections are closed: an unknown key is refused. The only
open containers are the ones :data:`SPECS` declares ``free`` (the sweep's ``axes``, ``grid`` and
``resources_per_trial``), and ``sweep.eval`` is the whole ``evaluate`` schema.

Help texts come from the YAML comments (``key: value   # doc``, continued on following comment-only
lines), else from the ``Attributes:`` section of the linked dataclass's docstring.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import functools
import importlib
import importlib.util
import re
import typing
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

__all__ = [
    "ENTRY_POINTS",
    "SPECS",
    "TYPES",
    "Key",
    "Schema",
    "get_schema",
    "yaml_docs",
    "attribute_docs",
]

ENTRY_POINTS = ("tokenize", "train", "sample", "evaluate", "sweep", "report", "demo")
"""Every entry point, in pipeline order: ``python -m experiments.<name>`` and ``maskflow <name>``."""

_UNSET = object()


@dataclasses.dataclass(frozen=True)
class Spec:
    """What the YAML file alone cannot say about an entry point's config.

    Attributes:
        links: section path (``""`` = top level) → ``"module:attribute"`` of dataclasses or defaults
            dicts whose field types (and docs) apply to the YAML keys of the same names.
        match_defaults: the YAML defaults must equal the linked defaults (checked by the tests);
            ``False`` where the YAML deliberately differs (the demo's short-run recipe).
        free: dotted path → container type of an open section (keys may be added with ``+key=``).
        embed: dotted path → entry point whose whole schema sits there (``sweep.eval``).
        aliases: dotted section path → the key a scalar given to the section means (``model=B/2`` is
            ``model.size=B/2``).
        presets: the entry point takes ``preset=NAME`` (``configs/presets/NAME.yaml``).
        own_defaults: keys whose YAML default deliberately differs from the linked one.
    """

    links: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    match_defaults: bool = True
    free: dict[str, Any] = dataclasses.field(default_factory=dict)
    embed: dict[str, str] = dataclasses.field(default_factory=dict)
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)
    presets: bool = False
    own_defaults: tuple[str, ...] = ()


_SAMPLER = "maskflow.sampling.config:SamplerConfig"

SPECS: dict[str, Spec] = {
    "tokenize": Spec(links={"": ("pipeline.decode:DecodeConfig", "pipeline.job:DEFAULTS"),
                            "tokenizer": ("pipeline.job:DEFAULTS.tokenizer",)}),
    "train": Spec(
        links={"model": ("maskflow.models.latte:BackboneConfig",), "method": ("maskflow.training:ObjectiveConfig",),
               "optim": ("maskflow.training:OptimConfig",), "flowception": ("maskflow.flowception:FlowceptionConfig",)},
        aliases={"model": "model.size"},
        presets=True,
        # trained with context dropout so that insertion guidance has unconditional rates; the library's default is off
        own_defaults=("flowception.context_drop_prob",),
    ),
    "sample": Spec(links={"": (_SAMPLER,)}),
    "evaluate": Spec(links={"": (_SAMPLER,)}, aliases={"fvd": "fvd.enabled"}),
    "sweep": Spec(
        free={"axes": Dict[str, Any], "grid": List[Any], "resources_per_trial": Dict[str, float]},
        embed={"eval": "evaluate"},
    ),
    "report": Spec(),
    "demo": Spec(links={"": (_SAMPLER, "maskflow.training:OptimConfig")}, match_defaults=False),
}
"""Per entry point: the links, open sections, embedded schemas, aliases and presets (see :class:`Spec`)."""

_COMMON_TYPES: dict[str, Any] = {
    "checkpoint": str, "shards": str, "out_dir": str, "seed": int,
    "mlflow.tracking_uri": str, "mlflow.parent_run_id": str, "mlflow.experiment": str, "mlflow.register_model": str,
}
TYPES: dict[str, dict[str, Any]] = {
    "tokenize": {"inputs": str, "tokenizer.path": str, "tokenizer.codebook_size": int, "num_cpus_per_actor": float},
    "train": {"run_name": str, "init_checkpoint": str, "loop.fail_at_step": int,
              "scaling.cpus_per_worker": float, "scaling.gpus_per_worker": float, "run.storage_path": str},
    "sample": {"num_frames": int, "fps": float},
    "evaluate": {"fps": float, "fvd.weights": str, "fvd.cache_dir": str},
    "sweep": {"name": str, "fail_trial": int, "storage_path": str, "metric": Optional[str]},
    "report": {"parent_run_id": str, "experiment": str},
    "demo": {"videos": str, "patch_size": Optional[int], "synthetic_motion": Optional[str],
             "num_synthetic_videos": Optional[int], "model_size": Optional[str], "chunk_size": Optional[int],
             "max_steps": Optional[int], "lr_decay": Optional[str], "extrapolation": Optional[int]},
}
"""Types of keys whose YAML default does not tell (``null``) or tells too little (``1`` for a count of
CPUs that may be ``0.5``); keys common to several entry points are in ``_COMMON_TYPES``."""


COMMON_DOCS: dict[str, str] = {
    "seed": "random seed (the same seed gives the same result)",
    "out_dir": "directory the outputs are written to",
    "split": "split of the token shards to read (train | eval)",
    "use_ema": "use the EMA weights (the ones the paper samples with) instead of the raw ones",
    "device": "auto | cpu | cuda (auto: CUDA when available)",
    "fps": "frame rate of the written videos (frames/s)",
    "mlflow.experiment": "MLflow experiment the runs are logged to",
    "mlflow.enabled": "record this stage as an MLflow run (false: no MLflow)",
    "mlflow.system_metrics": "log CPU, memory (and GPU) utilisation as MLflow system metrics",
    "mlflow.tracking_uri": "null: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory",
}
"""Help of keys that mean the same in every entry point, where its YAML file has no comment for them."""


# ------------------------------------------------------------------------------------------ docs
_KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][\w]*)\s*:(?P<rest>.*)$")


def _split_comment(rest: str) -> tuple[str, str]:
    """``value  # comment`` → (value, comment), ignoring ``#`` inside quotes."""
    quote = None
    for i, ch in enumerate(rest):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or rest[i - 1].isspace()):
            return rest[:i].strip(), rest[i + 1:].strip()
    return rest.strip(), ""


def yaml_docs(text: str) -> dict[str, str]:
    """Comments of a YAML config file by dotted key.

    ``key: value  # doc`` documents ``key``; comment-only lines right below it, indented at least as far
    as its comment, continue the doc. Block mappings nest by indentation (flow mappings such as
    ``{cpu: 1}`` are one key). The file's leading comment block is stored under ``""``.

    Returns:
        ``{"": header, "optim.lr": "…", …}``.
    """
    docs: dict[str, str] = {}
    header: list[str] = []
    stack: list[tuple[int, str]] = []  # (indent, key)
    last: str | None = None
    last_comment_col = 0
    seen_key = False
    above: list[str] = []  # a comment block right above a key documents it when it has no comment of its own
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            last = None
            above = []
            continue
        if stripped.startswith("#"):
            comment = stripped[1:].strip()
            if not seen_key:
                header.append(comment)
            elif last is not None and line.index("#") >= last_comment_col - 2:
                docs[last] = f"{docs[last]} {comment}".strip()
            else:
                last = None
                above.append(comment)
            continue
        if stripped.startswith("-"):  # items of a block list belong to the key above
            continue
        m = _KEY_LINE.match(line)
        if not m:
            last = None
            continue
        seen_key = True
        indent = len(m.group("indent"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [m.group("key")])
        value, comment = _split_comment(m.group("rest"))
        if not value:  # a block mapping (or list) follows
            stack.append((indent, m.group("key")))
        docs[path] = comment or " ".join(above)
        above = []
        last = path
        last_comment_col = line.find("#", len(line) - len(m.group("rest")) + len(value)) if comment else 10**6
    docs[""] = " ".join(header)
    return docs


def attribute_docs(obj: Any) -> dict[str, str]:
    """The ``Attributes:`` section of a Google-style class docstring: ``{field: first sentence}``."""
    doc = (getattr(obj, "__doc__", None) or "") if not isinstance(obj, dict) else ""
    out: dict[str, str] = {}
    lines = doc.expandtabs().splitlines()
    inside, base, current = False, 0, None
    for line in lines:
        if line.strip() == "Attributes:":
            inside, base = True, len(line) - len(line.lstrip())
            continue
        if not inside:
            continue
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent <= base:
            break
        m = re.match(r"^\s*([A-Za-z_]\w*)\s*(\([^)]*\))?\s*:\s*(.*)$", line)
        if m and (current is None or indent <= out.get("_indent", indent)):
            current = m.group(1)
            out[current] = m.group(3).strip()
            out["_indent"] = indent  # type: ignore[assignment]
        elif current is not None:
            out[current] = f"{out[current]} {line.strip()}"
    out.pop("_indent", None)
    return {k: _first_sentence(v) for k, v in out.items()}


def _first_sentence(text: str) -> str:
    text = " ".join(text.split())
    m = re.search(r"(?<=\.)\s+(?=[A-Z`(])", text)
    return text[: m.start()] if m else text


# ------------------------------------------------------------------------------------------ types
def _resolve_source(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(module)
    parts = attr.split(".")
    obj = getattr(obj, parts[0])
    for part in parts[1:]:
        obj = obj[part]
    return obj


def _field_types(source: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``({field: type}, {field: default})`` of a dataclass or a defaults dict."""
    if isinstance(source, dict):
        types = {k: type(v) for k, v in source.items() if isinstance(v, (bool, int, float, str))}
        return types, {k: v for k, v in source.items() if not isinstance(v, dict)}
    hints = typing.get_type_hints(source)
    defaults = {}
    for f in dataclasses.fields(source):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            defaults[f.name] = f.default_factory()  # type: ignore[misc]
    return {f.name: hints[f.name] for f in dataclasses.fields(source)}, defaults


def _omegaconf_type(tp: Any) -> Any:
    """A type OmegaConf accepts: ``X | None`` → ``Optional[X]``, ``tuple[...]`` → ``Tuple[...]``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", typing.Union)):
        rest = [a for a in args if a is not type(None)]
        inner = _omegaconf_type(rest[0]) if len(rest) == 1 else Any
        return Optional[inner] if type(None) in args else inner
    if origin in (tuple, Tuple):
        return Tuple[tuple(_omegaconf_type(a) for a in args)] if args and Ellipsis not in args else List[Any]
    if origin in (list, List):
        return List[_omegaconf_type(args[0])] if args else List[Any]
    if origin in (dict, Dict):
        return Dict[str, _omegaconf_type(args[1])] if args else Dict[str, Any]
    if tp in (bool, int, float, str) or tp is Any:
        return tp
    return Any


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) is typing.Union and type(None) in typing.get_args(tp)


def type_name(tp: Any) -> str:
    """Short human name of a schema type: ``int``, ``float?`` (may be null), ``list``, ``any``."""
    if _is_optional(tp):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return f"{type_name(inner[0])}?" if inner else "any"
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        return "list"
    if origin is dict:
        return "dict"
    return getattr(tp, "__name__", "any") if tp is not Any else "any"


# ------------------------------------------------------------------------------------------ schema
@dataclasses.dataclass(frozen=True)
class Key:
    """One settable key of a schema.

    Attributes:
        path: dotted path, e.g. ``"optim.lr"``.
        type: its (OmegaConf-compatible) type; ``Any`` when nothing tells.
        default: the YAML default.
        doc: one-paragraph help text (may be empty).
        kind: ``"value"``, ``"free"`` (an open container), ``"embedded"`` (another entry point's schema)
            or ``"section"``.
        typed: whether the type came from somewhere (``False`` for an untyped ``null`` default).
    """

    path: str
    type: Any
    default: Any
    doc: str
    kind: str = "value"
    typed: bool = True


@dataclasses.dataclass
class Schema:
    """The schema of one entry point: a structured-config dataclass plus its keys, docs and options."""

    name: str
    dataclass: type
    keys: dict[str, Key]
    spec: Spec
    header: str
    links: dict[str, list[Any]]

    def create(self):
        """A fresh structured config holding the defaults (OmegaConf ``DictConfig``, closed sections)."""
        from omegaconf import OmegaConf

        return OmegaConf.structured(self.dataclass)

    def values(self) -> list[Key]:
        """The value keys (not sections), in file order."""
        return [k for k in self.keys.values() if k.kind != "section"]

    def embedded_prefixes(self) -> tuple[str, ...]:
        return tuple(f"{p}." for p in self.spec.embed)

    def aliases(self) -> dict[str, str]:
        """Section → key of a scalar given to it, including those of embedded schemas."""
        out = dict(self.spec.aliases)
        for prefix, other in self.spec.embed.items():
            out.update({f"{prefix}.{s}": f"{prefix}.{k}" for s, k in get_schema(other).aliases().items()})
        return out


def _mutable_default(value: Any) -> dataclasses.Field:
    return dataclasses.field(default_factory=lambda v=value: copy.deepcopy(v))


def _build(name: str, prefix: str, data: dict[str, Any], docs: dict[str, str], spec: Spec, keys: dict[str, Key],
           linked: dict[str, list[Any]]) -> type:
    sources = [_resolve_source(ref) for ref in spec.links.get(prefix, ())]
    linked[prefix] = sources
    src_types: dict[str, Any] = {}
    src_docs: dict[str, str] = {}
    for source in reversed(sources):  # the first source wins
        src_types.update(_field_types(source)[0])
        src_docs.update(attribute_docs(source))
    types = {**_COMMON_TYPES, **TYPES.get(name, {})}
    fields: list[tuple[str, Any, dataclasses.Field]] = []
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        doc = docs.get(path) or src_docs.get(key, "") or COMMON_DOCS.get(path, "")
        if path in spec.embed:
            other = get_schema(spec.embed[path])
            keys[path] = Key(path, other.dataclass, None, doc, kind="embedded")
            fields.append((key, other.dataclass, dataclasses.field(default_factory=other.dataclass)))
            continue
        if path in spec.free:
            tp = spec.free[path]
            keys[path] = Key(path, tp, value, doc, kind="free")
            fields.append((key, Optional[tp], _mutable_default(value)))
            continue
        if isinstance(value, dict) and path not in types and key not in src_types:
            sub = _build(name, path, value, docs, spec, keys, linked)
            keys[path] = Key(path, sub, None, doc, kind="section")
            fields.append((key, sub, dataclasses.field(default_factory=sub)))
            continue
        typed = True
        if path in types:
            tp = types[path]
        elif key in src_types:
            tp = _omegaconf_type(src_types[key])
        elif isinstance(value, (bool, int, float, str)):
            tp = type(value)
        elif isinstance(value, list):
            tp = List[Any]
        elif isinstance(value, dict):
            tp = Dict[str, Any]
        else:
            tp, typed = Any, False
        if (value is None or re.search(r"\bnull\b", doc)) and tp is not Any and not _is_optional(tp):
            tp = Optional[tp]  # a null default, or a comment that documents null ("null: none")
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        keys[path] = Key(path, tp, value, doc, typed=typed)
        default = _mutable_default(value) if isinstance(value, (list, dict)) else dataclasses.field(default=value)
        fields.append((key, tp, default))
    if prefix == "" and spec.presets:
        keys["preset"] = Key("preset", Optional[str], None, "merge configs/presets/NAME.yaml first (the paper's recipes)")
        fields.append(("preset", Optional[str], dataclasses.field(default=None)))
    cls_name = "".join(p.capitalize() for p in re.split(r"[._]", f"{name}.{prefix}" if prefix else name)) + "Config"
    return dataclasses.make_dataclass(cls_name, fields)


@functools.lru_cache(maxsize=None)
def get_schema(name: str) -> Schema:
    """The schema of entry point ``name`` (cached).

    Raises:
        KeyError: no ``configs/<name>.yaml``.
        omegaconf.errors.ValidationError: a YAML default that does not fit the linked type (drift
            between a YAML file and a dataclass).
    """
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.exists():
        raise KeyError(f"no config named {name!r} in {CONFIG_DIR}")
    text = path.read_text()
    data = yaml.safe_load(text) or {}
    docs = yaml_docs(text)
    spec = SPECS.get(name, Spec())
    keys: dict[str, Key] = {}
    linked: dict[str, list[Any]] = {}
    cls = _build(name, "", data, docs, spec, keys, linked)
    schema = Schema(name, cls, keys, spec, docs.get("", ""), linked)
    schema.create()  # fail here, naming the key, if a YAML default does not fit its type
    return schema


def module_summary(name: str) -> str:
    """First paragraph of ``experiments/<name>.py``'s docstring, read without importing it."""
    spec = importlib.util.find_spec(f"experiments.{name}")
    if spec is None or not spec.origin:
        return ""
    doc = ast.get_docstring(ast.parse(Path(spec.origin).read_text())) or ""
    return " ".join(doc.split("\n\n", 1)[0].split())
