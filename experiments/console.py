"""Console output of every entry point: one progress bar per stage, concise metrics lines, warnings.

By default the console shows what a person needs to follow a run:

* one progress bar per stage (what it does, done/total, ETA) on a terminal; when the output is not a
  terminal (``make demo > log``, ``ray job submit``) the bar is replaced by a line every 10 %;
* one concise metrics line at intervals (``train  step 200/1000  loss 2.31  acc 0.812 … ETA 3:12``);
* warnings and errors of this project, and errors of the libraries.

Everything else (Ray's and MLflow's own logs, every worker's stdout/stderr, Ray Data's execution
reports, the INFO logs of this project) goes to the log file of the run (e.g. ``OUT/demo.log``).
``-v`` / ``--verbose`` / ``log_level=debug`` on the command line shows everything on the console.

Entry points call :func:`split_verbosity` on their arguments, :func:`setup` once the output directory
is known, and :func:`init_ray` instead of ``ray.init``. Stages report progress with :class:`Progress`
(driver-side loops) or :class:`RemoteProgress` (Ray workers publish through a Ray queue,
:func:`publish`).

Library: tqdm (already a dependency of the project and of Ray Data) for bars and ETAs; Ray's public
``ray.LoggingConfig`` for the workers' log format; Ray Data's ``DataContext.enable_progress_bars``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

__all__ = [
    "LEVELS", "split_verbosity", "setup", "setup_entry_point", "status", "verbose", "init_ray", "configure_ray_output", "Progress",
    "RemoteProgress", "publish", "metrics_line", "format_duration", "log_file",
]

LEVELS = ("info", "debug")
"""``info``: the quiet console described above (default); ``debug``: everything on the console."""

OWN_PACKAGES = ("experiments", "pipeline", "maskflow", "benchmarks", "__main__")
_NOISY = ("alembic", "mlflow.store", "urllib3", "filelock", "matplotlib", "PIL", "numexpr")
_FMT = "%(asctime)s %(name)s %(levelname)s %(message)s"

_state: dict[str, Any] = {"level": "info", "log_file": None, "handlers": [], "routed": False}
log = logging.getLogger("experiments.console")


# ------------------------------------------------------------------------------ command line
def split_verbosity(argv: Sequence[str]) -> tuple[str, list[str]]:
    """Take the verbosity words out of command-line arguments.

    ``-v``, ``--verbose`` and ``log_level=debug`` select ``debug``; ``log_level=info`` (or nothing)
    ``info``. The other words are returned unchanged, in order, for the config loader.

    Raises:
        ValueError: ``log_level=`` with a value other than ``info`` or ``debug``.
    """
    level, rest = "info", []
    for word in argv:
        if word in ("-v", "--verbose"):
            level = "debug"
        elif word.lstrip("+").startswith("log_level="):
            value = word.split("=", 1)[1].strip().lower()
            if value not in LEVELS:
                raise ValueError(f"log_level must be one of {', '.join(LEVELS)}, got {value!r}")
            level = value
        else:
            rest.append(word)
    return level, rest


def verbose() -> bool:
    """True when the console shows everything (``-v`` / ``log_level=debug``)."""
    return _state["level"] == "debug"


def log_file() -> Path | None:
    """The log file of this process (``None`` before :func:`setup`)."""
    return _state["log_file"]


# ----------------------------------------------------------------------------------- logging
_TUNE_FILE_ONLY = ("Trial task failed", "Trials did not complete")


class _ConsoleFilter(logging.Filter):
    """Quiet console: this project's WARNING+, other libraries' ERROR+, and the status lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if verbose():
            return True
        if getattr(record, "console", False):
            return True
        if record.name.startswith("ray.tune") and str(record.msg).startswith(_TUNE_FILE_ONLY):
            return False  # a failed trial: the sweep warns with the error's last line instead
        own = record.name.split(".", 1)[0] in OWN_PACKAGES
        return record.levelno >= (logging.WARNING if own else logging.ERROR)


class _TqdmHandler(logging.StreamHandler):
    """A console handler that prints above any live tqdm bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # pragma: no cover - never lose a log line to the console
            self.handleError(record)


class _StatusFormatter(logging.Formatter):
    """Status lines (``extra={"console": True}``) print bare; everything else with time and level."""

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "console", False) and not verbose():
            return getattr(record, "console_text", None) or record.getMessage()
        return super().format(record)


def setup(log_path: str | os.PathLike | None, level: str | None = "info") -> Path | None:
    """Install the console and the log file for this process (idempotent: a second call replaces them).

    Args:
        log_path: the log file (its directory is created), e.g. ``OUT/demo.log``; a directory name
            ending in ``/`` or an existing directory gets ``run.log``; ``None`` or a URI (``s3://…``)
            logs to ``outputs/logs/run-<time>.log`` under the working directory.
        level: ``info`` (quiet console) or ``debug`` (everything on the console); ``None`` keeps the
            level of an earlier call (``info`` without one).

    Returns:
        the log file's path.

    Raises:
        ValueError: a level other than ``info``/``debug``.
    """
    if level is None:  # keep an earlier choice, else read -v / log_level= from the command line
        level = _state["level"] if _state["handlers"] else split_verbosity(sys.argv[1:])[0]
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    _state["level"] = level
    path = _local_log_path(log_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for h in _state["handlers"]:
        root.removeHandler(h)
        h.close()
    _drop_foreign_console_handlers(root)
    console = _TqdmHandler(sys.stderr)
    console.setFormatter(_StatusFormatter(_FMT, "%H:%M:%S"))
    console.addFilter(_ConsoleFilter())
    fh = logging.FileHandler(path, encoding="utf-8")
    fh.setFormatter(logging.Formatter(_FMT))
    fh.setLevel(logging.DEBUG if level == "debug" else logging.INFO)
    root.addHandler(console)
    root.addHandler(fh)
    root.setLevel(logging.DEBUG if level == "debug" else logging.INFO)
    for name in OWN_PACKAGES:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "debug" else logging.INFO)
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.captureWarnings(True)  # library deprecation warnings: the log file (console with -v)
    if level != "debug":  # MLflow's tqdm bars of artifact transfers ("Downloading artifacts: …")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    _state.update(handlers=[console, fh], log_file=path)
    _route_library_loggers()
    return path


def setup_entry_point(name: str, cfg: Any, argv: Sequence[str] | None = None) -> Path | None:
    """:func:`setup` for ``python -m experiments.<name>`` / ``maskflow <name>``: the level from the
    command line (``-v``, ``--verbose``, ``log_level=…``), the log file ``<out_dir>/<name>.log`` when the
    config has a local ``out_dir``, else ``outputs/logs/<name>-<time>.log``. No-op when the entry point
    already called :func:`setup` (its own log file)."""
    if _state["handlers"]:
        return _state["log_file"]
    level = split_verbosity(sys.argv[1:] if argv is None else argv)[0]
    out_dir = cfg.get("out_dir") if hasattr(cfg, "get") else None
    if out_dir and ("://" not in str(out_dir) or str(out_dir).startswith("file://")):
        path = f"{str(out_dir).rstrip('/')}/{name}.log"
    else:
        path = str(Path("outputs/logs") / time.strftime(f"{name}-%Y%m%d-%H%M%S.log"))
    return setup(path, level)


def _local_log_path(log_path: str | os.PathLike | None) -> Path:
    s = "" if log_path is None else str(log_path)
    if not s or "://" in s and not s.startswith("file://"):
        return Path("outputs/logs").resolve() / time.strftime("run-%Y%m%d-%H%M%S.log")
    if s.startswith("file://"):
        s = s[len("file://"):]
    p = Path(s).expanduser()
    if s.endswith("/") or p.is_dir():
        p = p / "run.log"
    return p.resolve()


def _drop_foreign_console_handlers(logger: logging.Logger) -> None:
    """Remove handlers writing to stdout/stderr that this module did not install (basicConfig, Ray's)."""
    for h in list(logger.handlers):
        if h in _state["handlers"]:
            continue
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) and \
                getattr(h, "stream", None) in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__):
            logger.removeHandler(h)


def _route_library_loggers() -> None:
    """Ray's loggers print to the console through handlers of their own: send them through ours."""
    for name in ("ray", "ray.data", "ray.train", "ray.tune", "ray.air"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                lg.removeHandler(h)
        lg.propagate = True


def status(message: str, *args: Any) -> None:
    """A line the quiet console shows (and the log file keeps): stage headers, summaries."""
    log.info(message, *args, extra={"console": True})


# --------------------------------------------------------------------------------------- Ray
_LEVEL_RE = re.compile(r"\b(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b")
_RAY_LINE_RE = re.compile(r"^\S+ \S+\s+(DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+ -- (.*?)(?: name=\S+.*)?$")
_OWN_NAME_RE = re.compile(r"name=(%s)\b" % "|".join(OWN_PACKAGES[:-1]))


def init_ray(**kwargs: Any) -> None:
    """``ray.init`` for the entry points: connect to ``RAY_ADDRESS`` (``ray job submit`` sets it) or
    start a local instance, with every worker's root logger in Ray's TEXT format (``ray.LoggingConfig``)
    and the workers' output routed as :func:`configure_ray_output` says. No-op when Ray is running."""
    import ray

    if not ray.is_initialized():
        kwargs.setdefault("address", os.environ.get("RAY_ADDRESS") or None)
        kwargs.setdefault("log_to_driver", True)
        if _state["handlers"]:  # workers log with level and logger name: the console can pick their warnings
            kwargs.setdefault("logging_config", ray.LoggingConfig(
                encoding="TEXT", log_level="INFO", additional_log_standard_attrs=["name"]))
        if verbose() or not _state["handlers"]:
            ray.init(**kwargs)
        else:  # what ray.init prints while it starts (token auth, "Started a local Ray instance") → log file
            captured = io.StringIO()
            try:
                with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
                    ray.init(**kwargs)
            finally:
                configure_ray_output()
                for line in captured.getvalue().splitlines():
                    if line.strip():
                        logging.getLogger("ray.init").info(line)
    configure_ray_output()


def configure_ray_output() -> None:
    """Quiet console: Ray Data progress bars off (the stages draw their own), Ray's loggers through the
    console filter, and every worker's output (``log_to_driver``) into the log file, with only its
    ERROR lines and this project's WARNING lines on the console. ``-v``: Ray's own behaviour."""
    import ray.data

    if not _state["handlers"]:  # setup() was not called (a library use, the tests): leave Ray as it is
        return
    root = logging.getLogger()  # re-install ours over what ray.init's LoggingConfig added
    for h in list(root.handlers):
        if h not in _state["handlers"] and not isinstance(h, logging.FileHandler):
            root.removeHandler(h)
    for h in _state["handlers"]:
        if h not in root.handlers:
            root.addHandler(h)
    _route_library_loggers()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = verbose()
    ctx.print_on_execution_start = verbose()
    if verbose() or _state["routed"]:
        return
    try:  # the driver's worker-log printer; its public switch is only ray.init(log_to_driver=…)
        from ray._private.worker import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:  # pragma: no cover - a Ray without it prints worker output itself
        return
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("maskflow_worker_logs", _worker_lines)
    # the raylet's messages to the driver (worker-pool warnings, workers that died) take another path
    import ray._private.worker as ray_worker

    ray_worker.print_to_stdstream = lambda data, ignore_prefix=False: _worker_lines(data)
    _state["routed"] = True


_workers_log = logging.getLogger("workers")  # not under "ray": Ray re-adds handlers of its own there


def _worker_lines(data: dict[str, Any]) -> None:
    """One batch of worker output lines (Ray's log monitor) → the log file; errors → the console."""
    from ray.experimental.tqdm_ray import RAY_TQDM_MAGIC

    who = data.get("actor_name") or data.get("task_name") or ""
    prefix = f"({who + ' ' if who else ''}pid={data.get('pid')}) "
    for line in data.get("lines", []):
        if RAY_TQDM_MAGIC in line or not line.strip():
            continue
        m = _LEVEL_RE.search(line[:64])
        if data.get("pid") == "raylet":  # worker deaths, out-of-memory kills: errors unless marked WARNING
            level = m.group(1) if m else "ERROR"
        else:  # a traceback's lines carry no level: the driver raises the error a worker's failure causes
            level = m.group(1) if m else "INFO"
        show = level in ("ERROR", "CRITICAL") or (level == "WARNING" and _OWN_NAME_RE.search(line))
        short = _RAY_LINE_RE.match(line)  # "<time>\tWARNING file.py:9 -- message name=… job_id=…"
        text = f"{prefix}{short.group(1)} {short.group(2)}" if short else prefix + line
        _workers_log.log(logging.INFO, prefix + line, extra={"console": bool(show), "console_text": text})


# ------------------------------------------------------------------------------------ progress
def format_duration(seconds: float | None) -> str:
    """``75`` → ``1:15``; ``3725`` → ``1:02:05``; ``None``/nan → ``?``."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    s = int(round(max(0.0, seconds)))
    h, rem = divmod(s, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


# label, keys (the first present wins), format
_METRIC_LABELS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("loss", ("loss", "train/loss"), ".3f"),
    ("acc", ("masked_accuracy", "train/masked_accuracy"), ".3f"),
    ("token acc", ("token_accuracy",), ".3f"),
    ("val acc", ("val_masked_accuracy", "val/masked_accuracy"), ".3f"),
    ("held-out acc", ("heldout_token_accuracy", "heldout/token_accuracy"), ".3f"),
    ("copy-last", ("copy_last_frame_token_accuracy", "heldout/copy_last_frame_token_accuracy"), ".3f"),
    ("PSNR", ("psnr", "heldout_psnr_db"), ".2f"),
    ("FVD", ("fvd",), ".1f"),
    ("tok/s", ("tokens_per_s", "train/tokens_per_s"), ".3g"),
)


def metrics_line(metrics: dict[str, Any], keys: Iterable[tuple[str, tuple[str, ...], str]] = _METRIC_LABELS) -> str:
    """The concise metrics of a report: ``loss 2.310  acc 0.812  val acc 0.800  tok/s 1.2e+03``."""
    parts = []
    for label, names, spec in keys:
        for name in names:
            value = metrics.get(name)
            if isinstance(value, (int, float)) and value == value:
                parts.append(f"{label} {format(value, spec)}")
                break
    return "  ".join(parts)


class Progress:
    """One stage's progress: a tqdm bar on a terminal, a line every ``every`` of the work otherwise.

    Args:
        desc: what the stage does (``"tokenize"``, ``"train"``, ``"evaluate: FVD features"``).
        total: units of work (``None``: set later by :meth:`update`).
        unit: the unit's name (``"video"``, ``"step"``).
        every: the fraction of ``total`` between two metrics lines (both console kinds).

    ``update(done, metrics)`` sets the absolute position; a metrics line (``desc done/total  metrics
    ETA``) is printed when ``done`` crosses the next ``every`` boundary and at the end. Use as a context
    manager or call :meth:`close`.
    """

    def __init__(self, desc: str, total: int | None = None, unit: str = "it", every: float = 0.1) -> None:
        self.desc, self.total, self.unit, self.every = desc, total, unit, float(every)
        self.done, self.metrics, self._k = 0, {}, 1  # the next line is due at self._k * every * total
        self._t0 = time.perf_counter()
        self._start_done = None
        self._bar = None
        self._lock = threading.Lock()
        self._closed = False
        if sys.stderr.isatty() and not os.environ.get("MASKFLOW_NO_BARS"):
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                             leave=True, mininterval=0.5)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close(ok=exc[0] is None)

    def _threshold(self) -> float:
        return round(self._k * self.every, 9) * self.total - 1e-9

    def eta_s(self) -> float | None:
        """Seconds left at the mean rate since the first update (``None`` when unknown)."""
        if not self.total or self._start_done is None or self.done <= self._start_done:
            return None
        rate = (self.done - self._start_done) / max(time.perf_counter() - self._t_first, 1e-9)
        return (self.total - self.done) / rate

    def update(self, done: int, metrics: dict[str, Any] | None = None, total: int | None = None) -> None:
        """Set the position to ``done`` units (and ``total`` when it becomes known)."""
        with self._lock:
            if self._closed:
                return
            if total is not None and total != self.total:
                self.total = int(total)
                if self._bar is not None:
                    self._bar.total = self.total
            if self._start_done is None:
                self._start_done, self._t_first = int(done), time.perf_counter()
            self.done = int(done)
            if metrics:
                self.metrics = dict(metrics)
            if self._bar is not None:
                self._bar.n = self.done
                text = metrics_line(self.metrics)
                if text:
                    self._bar.set_postfix_str(text, refresh=False)
                self._bar.refresh()
            if self.total and self.done >= self._threshold() and self.done < self.total:
                while self._threshold() <= self.done:
                    self._k += 1
                self._line()

    def _line(self, final: bool = False) -> None:
        total = f"/{self.total}" if self.total else ""
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        text = metrics_line(self.metrics)
        tail = f"done in {format_duration(time.perf_counter() - self._t0)}" if final else f"ETA {format_duration(self.eta_s())}"
        status("%s  %d%s %s%s  %s%s", self.desc, self.done, total, self.unit + ("s" if self.total != 1 else ""),
               pct, (text + "  ") if text else "", tail)

    def close(self, ok: bool = True) -> None:
        """End the bar; prints the final line (``done in …``) when the work finished."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._bar is not None:
                self._bar.close()
            if ok:
                self._line(final=True)

    def callback(self) -> Callable[[int, int], None]:
        """``f(done, total)`` for code that reports progress through a callback (e.g. FVD features)."""
        return lambda done, total: self.update(done, total=total)


class RemoteProgress(Progress):
    """A :class:`Progress` fed from Ray workers: pass :attr:`handle` to them and call
    :func:`publish(handle, done, metrics) <publish>` there; the driver drains the queue in a thread.

    The queue is a ``ray.util.queue.Queue`` whose actor reserves no CPU, so it never competes with the
    training workers or Ray Data for a slot.
    """

    def __init__(self, desc: str, total: int | None = None, unit: str = "it", every: float = 0.1) -> None:
        super().__init__(desc, total, unit, every)
        from ray.util.queue import Queue

        self.handle = Queue(actor_options={"num_cpus": 0})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="maskflow-progress", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        from ray.util.queue import Empty

        while not self._stop.is_set():
            try:
                item = self.handle.get(timeout=0.5)
            except Empty:
                continue
            except Exception:  # the queue actor is gone (shutdown): stop quietly
                return
            self.update(int(item.get("done", self.done)), item.get("metrics"), item.get("total"))

    def close(self, ok: bool = True) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        try:  # whatever arrived after the last poll
            while not self.handle.empty():
                item = self.handle.get_nowait()
                self.update(int(item.get("done", self.done)), item.get("metrics"), item.get("total"))
        except Exception:
            pass
        super().close(ok)
        try:
            self.handle.shutdown()
        except Exception:  # pragma: no cover
            pass


def publish(handle: Any, done: int, metrics: dict[str, Any] | None = None, total: int | None = None) -> None:
    """From a Ray worker: send progress to the driver's :class:`RemoteProgress` (``handle=None``: no-op).
    Never raises: progress display must not stop the work."""
    if handle is None:
        return
    try:
        handle.put_nowait({"done": int(done), "total": total,
                           "metrics": {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float))}})
    except Exception:  # full queue or driver gone
        pass
