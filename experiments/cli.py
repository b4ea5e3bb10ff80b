"""The ``maskflow`` command: one subcommand per entry point, ``--help`` from the schemas, ``--cfg``.

    maskflow train shards=outputs/tokens model.size=B/2 optim.lr=3e-4
    maskflow train --help                 # every key with its default, type and one-line doc
    maskflow sample checkpoint=DIR --cfg  # the resolved config, then exit
    eval "$(_MASKFLOW_COMPLETE=bash_source maskflow)"   # shell completion of subcommands and keys
                                                        # (zsh_source / fish_source for zsh and fish)

``python -m experiments.<name> …`` is the same command (``ray job submit`` runs it that way): each
entry point's ``__main__`` block calls :func:`run`, and ``maskflow <name> …`` runs that block. A config
error (unknown key, wrong type, a setting out of range, a missing input) ends the command with exit
code 2 and a one-paragraph message on stderr, before Ray starts or an MLflow run opens.

Library: click (already installed with Ray and MLflow) rather than argparse, for subcommands with their
own help pages, exit code 2 on usage errors (its convention) and shell completion of bash, zsh and fish
out of the box, including the config keys (``optim.l<TAB>`` → ``optim.lr=``).
"""

from __future__ import annotations

import runpy
import sys
import typing
from typing import Any, Callable, Sequence

import click

from experiments.config import ConfigError, load_config
from experiments.schema import ENTRY_POINTS, CONFIG_DIR, get_schema, module_summary, type_name, yaml_docs

__all__ = ["main", "cli", "run", "command_line_config", "config_command", "VERBOSITY_WORDS"]

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}
VERBOSITY_WORDS = ("-v", "--verbose")
"""Words of the console's verbosity (``experiments.console``), passed through untouched; so is
``log_level=…``."""


def _is_verbosity(word: str) -> bool:
    return word in VERBOSITY_WORDS or word.lstrip("+").startswith("log_level=")


def _show(value: Any, limit: int = 48) -> str:
    import yaml

    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, (list, tuple, dict)):
        text = yaml.safe_dump(list(value) if isinstance(value, tuple) else value, default_flow_style=True, width=10**6).strip()
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _key_rows(name: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """Help sections ``[(title, [(key=default, [type] doc), …]), …]`` of an entry point's schema."""
    schema = get_schema(name)
    sections: dict[str, list[tuple[str, str]]] = {}
    for key in schema.keys.values():
        if key.kind == "section":
            continue
        top = key.path.split(".", 1)[0] if "." in key.path else ""
        if key.kind == "embedded":
            other = schema.spec.embed[key.path]
            text = (f"{key.doc + ' — ' if key.doc else ''}every key of `maskflow {other} --help`, e.g. "
                    f"{key.path}.num_videos=32")
            sections.setdefault(key.path, []).append((f"{key.path}.KEY=VALUE", text))
            continue
        if key.kind == "free":
            how = (f"+{key.path}.NAME=VALUE adds an entry" if typing.get_origin(key.type) is dict
                   else f"{key.path}=[…] replaces the list")
            doc = f"{key.doc + ' ' if key.doc else ''}(open: {how})"
            sections.setdefault(top, []).append((f"{key.path}={_show(key.default)}", doc))
            continue
        doc = f"[{type_name(key.type)}] {key.doc}".strip()
        sections.setdefault(top, []).append((f"{key.path}={_show(key.default)}", doc))
    order = [""] + [s for s in sections if s]
    return [(s or "settings", sections[s]) for s in order if s in sections]


class ConfigCommand(click.Command):
    """A click command whose help lists the entry point's config keys after the options."""

    def __init__(self, *args: Any, entry_point: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.entry_point = entry_point

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        schema = get_schema(self.entry_point)
        for title, rows in _key_rows(self.entry_point):
            with formatter.section(f"Keys ({title})" if title != "settings" else "Keys"):
                formatter.write_dl(rows, col_max=44)
        notes = [
            "Set a key with key=VALUE (values are YAML: 14, 3e-4, null, [1, 2], '{a: 1}'); a bare leaf name "
            "works when it is unique (lr=3e-4).",
        ]
        if schema.spec.presets:
            notes.append(f"preset=NAME merges experiments/configs/presets/NAME.yaml first "
                         f"({', '.join(sorted(p.stem for p in (CONFIG_DIR / 'presets').glob('*.yaml')))}).")
        for section, key in schema.aliases().items():
            notes.append(f"{section}=VALUE is short for {key}=VALUE.")
        notes.append(f"Defaults: experiments/configs/{self.entry_point}.yaml. Exit code 2 on a config error.")
        with formatter.section("Notes"):
            for note in notes:
                formatter.write_text(note)


def _complete_keys(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    from click.shell_completion import CompletionItem

    name = getattr(ctx.command, "entry_point", None) or ctx.info_name
    try:
        schema = get_schema(str(name))
    except Exception:  # noqa: BLE001 - completion must never fail loudly
        return []
    if "=" in incomplete:
        return []
    words = [f"{k.path}=" for k in schema.values() if k.kind != "embedded"]
    words += [f"{p}." for p in schema.spec.embed]
    return [CompletionItem(w) for w in sorted(words) if w.startswith(incomplete)]


def config_command(name: str, callback: Callable[..., Any], prog: str | None = None) -> ConfigCommand:
    """The click command of entry point ``name``: ``[--cfg] [-v] [KEY=VALUE]...``, keys in its ``--help``.

    ``callback(overrides: tuple[str, ...], show_cfg: bool, verbose: bool)`` runs it.
    """
    summary = module_summary(name)
    header = yaml_docs((CONFIG_DIR / f"{name}.yaml").read_text()).get("", "")  # no import: the schema is built on use
    help_text = summary + (f"\n\n\b\n{header}" if header else "")
    return ConfigCommand(
        name,
        entry_point=name,
        callback=callback,
        help=help_text,
        short_help=summary.split(". ")[0].rstrip("."),
        context_settings={**CONTEXT, "ignore_unknown_options": False},
        params=[
            click.Option(["--cfg", "show_cfg"], is_flag=True, help="Print the resolved config (YAML) and exit."),
            click.Option(["-v", "--verbose"], is_flag=True, help="Show every log line on the console (also log_level=debug)."),
            click.Argument(["overrides"], nargs=-1, metavar="[KEY=VALUE]...", shell_complete=_complete_keys),
        ],
    )


def _config_error(prog: str, exc: BaseException) -> "click.exceptions.Exit":
    message = " ".join(str(exc).split())
    click.echo(f"{prog}: config error: {message}", err=True)
    return click.exceptions.Exit(2)


def _words(overrides: Sequence[str]) -> list[str]:
    return [w for w in overrides if not _is_verbosity(w)]


def command_line_config(name: str, argv: Sequence[str] | None = None, prog: str | None = None):
    """Parse ``argv`` (default ``sys.argv[1:]``) for entry point ``name`` and return its config.

    ``--help`` prints the keys and exits 0; ``--cfg`` prints the resolved config and exits 0; a config
    error prints one paragraph and exits 2 (``SystemExit``). ``-v``/``--verbose``/``log_level=…`` are
    left to :mod:`experiments.console` (read them from ``sys.argv``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or _prog(name)
    result: dict[str, Any] = {}

    def callback(overrides: tuple[str, ...], show_cfg: bool, verbose: bool) -> None:
        from omegaconf import OmegaConf

        try:
            cfg = load_config(name, _words(overrides))
        except ConfigError as exc:
            raise _config_error(prog, exc) from None
        if show_cfg:
            click.echo(OmegaConf.to_yaml(cfg), nl=False)
            raise click.exceptions.Exit(0)
        result["cfg"] = cfg

    command = config_command(name, callback)
    try:
        code = command.main(args=argv, prog_name=prog, standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:  # usage errors: an unknown option such as --lr
        exc.show()
        sys.exit(exc.exit_code)
    if "cfg" not in result:  # --help, --cfg (0) or a config error (2): click returns the exit code
        sys.exit(code if isinstance(code, int) else 0)
    return result["cfg"]


_RUNNING: dict[str, str] = {}  # entry point -> program name, while `maskflow <name>` runs its module


def _prog(name: str) -> str:
    return _RUNNING.get(name, f"python -m experiments.{name}")


def run(main: Callable[..., Any], name: str, cfg: Any = None) -> Any:
    """What ``python -m experiments.<name>`` does: ``main(cfg)`` with ``cfg`` from the command line
    (:func:`command_line_config`) unless given.

    A :class:`~experiments.config.ConfigError` or ``FileNotFoundError`` from ``main`` (a setting out of
    range, a missing input, raised before any work starts) ends the process with exit code 2 and a
    one-paragraph message, like a config error of the command line.
    """
    cfg = command_line_config(name) if cfg is None else cfg
    from experiments import console

    console.setup_entry_point(name, cfg)  # quiet console, full log file; -v / log_level=debug: everything
    try:
        return main(cfg)
    except (ConfigError, FileNotFoundError) as exc:
        _config_error(_prog(name), exc)
        sys.exit(2)


# ---------------------------------------------------------------------------------- maskflow
def _extra_entry_points() -> list[str]:
    """Entry points with a YAML config and a module but no schema spec (e.g. ``reproduce``)."""
    from importlib.util import find_spec

    extra = []
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        if path.stem not in ENTRY_POINTS and find_spec(f"experiments.{path.stem}") is not None:
            extra.append(path.stem)
    return extra


def _run_module(name: str, args: Sequence[str]) -> None:
    """Run ``experiments/<name>.py`` as ``__main__`` (what ``python -m`` does) with ``args``."""
    saved = sys.argv
    sys.argv = [f"maskflow {name}", *args]  # runpy puts the module's path in sys.argv[0]
    _RUNNING[name] = f"maskflow {name}"
    try:
        runpy.run_module(f"experiments.{name}", run_name="__main__", alter_sys=True)
    finally:
        sys.argv = saved
        _RUNNING.pop(name, None)


def _subcommand(name: str) -> click.Command:
    def callback(overrides: tuple[str, ...], show_cfg: bool, verbose: bool) -> None:
        _run_module(name, [*overrides, *(["--cfg"] if show_cfg else []), *(["--verbose"] if verbose else [])])

    return config_command(name, callback)


def _passthrough(name: str) -> click.Command:
    """An entry point without a schema spec: ``--help`` lists its YAML keys, the rest goes to its module."""

    def callback(args: tuple[str, ...]) -> None:
        if any(a in ("-h", "--help") for a in args):
            config_command(name, lambda **_: None).main(["--help"], prog_name=f"maskflow {name}", standalone_mode=False)
            return
        _run_module(name, args)

    summary = module_summary(name)
    return click.Command(
        name, callback=callback, help=summary, short_help=summary.split(". ")[0].rstrip("."),
        context_settings={"ignore_unknown_options": True, "help_option_names": []},
        params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED, shell_complete=_complete_keys)],
    )


class _Commands(click.Group):
    """The entry points as subcommands, each built when used (``maskflow train …`` imports nothing of
    the other stages)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*ENTRY_POINTS, *_extra_entry_points()]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in ENTRY_POINTS:
            return _subcommand(cmd_name)
        if cmd_name in _extra_entry_points():
            return _passthrough(cmd_name)
        return None


@click.group(cls=_Commands, context_settings=CONTEXT, epilog=(
    "\b\nEach subcommand is also `python -m experiments.<name> KEY=VALUE...`.\n"
    "Shell completion (bash; zsh_source / fish_source likewise):\n"
    "  eval \"$(_MASKFLOW_COMPLETE=bash_source maskflow)\""
))
def cli() -> None:
    """MaskFlow on Ray: tokenize videos, train, sample, evaluate and sweep, tracked in MLflow.

    `maskflow COMMAND --help` lists the command's keys with defaults and docs.
    """


def main(argv: Sequence[str] | None = None) -> None:
    """The ``maskflow`` console script (``[project.scripts]`` in ``pyproject.toml``)."""
    cli.main(args=list(sys.argv[1:] if argv is None else argv), prog_name="maskflow")


if __name__ == "__main__":  # pragma: no cover - python -m experiments.cli (state lives in the imported module)
    from experiments.cli import main as _main

    _main()
