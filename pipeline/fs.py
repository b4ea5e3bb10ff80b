"""Paths and URIs through ``pyarrow.fs``: local paths, ``file://``, ``s3://``, ``gs://``, ``hdfs://`` …

Every place of the pipeline that touches storage goes through :func:`resolve`, so a shard directory or
an input list can live on any filesystem pyarrow opens. Local paths stay plain paths (absolute);
other locations stay URIs (``scheme://…``) in everything the pipeline records (``source`` column,
manifest).

Writes are made atomic with :func:`write_bytes_atomic` (write a temporary name, then move): a job
killed at any moment leaves either the old file, the new file, or a ``*.tmp-*`` leftover that the next
run deletes, never a half-written file under the final name.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

__all__ = ["Location", "resolve", "write_bytes_atomic", "read_bytes", "TMP_MARK", "download_dir", "upload_dir"]

TMP_MARK = ".tmp-"


@dataclass(frozen=True)
class Location:
    """A directory or file on some filesystem.

    Attributes:
        fs: the ``pyarrow.fs.FileSystem``.
        path: the filesystem path (no scheme; absolute for local files).
        scheme: ``""`` for a plain local path, else the URI scheme (``"file"``, ``"s3"``, …).
    """

    fs: pafs.FileSystem
    path: str
    scheme: str = ""

    @property
    def is_local(self) -> bool:
        """True when the bytes are on this machine's filesystem."""
        return isinstance(self.fs, pafs.LocalFileSystem)

    def uri(self, path: str | None = None) -> str:
        """The user-facing name of ``path`` (default: this location): a plain path or ``scheme://path``."""
        p = self.path if path is None else path
        if not self.scheme:
            return p
        if self.scheme == "file":
            return "file://" + p
        return f"{self.scheme}://{p}"

    def join(self, *parts: str) -> "Location":
        """A child location (``/``-joined)."""
        return Location(self.fs, posixpath.join(self.path, *parts), self.scheme)

    def exists(self) -> bool:
        return self.fs.get_file_info(self.path).type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self.fs.get_file_info(self.path).type == pafs.FileType.Directory

    def mkdir(self) -> None:
        self.fs.create_dir(self.path, recursive=True)

    def list(self, recursive: bool = False) -> list[pafs.FileInfo]:
        """Files (not directories) under this directory; ``[]`` if it does not exist."""
        if not self.is_dir():
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=recursive, allow_not_found=True))
        return [i for i in infos if i.type == pafs.FileType.File]


def resolve(path_or_uri: str | os.PathLike) -> Location:
    """Open a local path or a URI.

    Args:
        path_or_uri: ``/data/videos``, ``~/v``, ``relative/dir``, ``file:///data/v``, ``s3://bucket/prefix``.

    Returns:
        a :class:`Location`; local paths are made absolute (``~`` expanded).

    Raises:
        ValueError: for an empty string or a URI scheme pyarrow cannot open.
    """
    s = str(path_or_uri).strip()
    if not s:
        raise ValueError("empty path")
    if "://" not in s:
        return Location(pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(s)), "")
    scheme = s.split("://", 1)[0].lower()
    try:
        fs, path = pafs.FileSystem.from_uri(s)
    except Exception as e:  # pyarrow raises ArrowInvalid / ArrowNotImplementedError
        raise ValueError(f"cannot open {s!r}: {e}") from e
    return Location(fs, path.rstrip("/") or "/", scheme)


def read_bytes(loc: Location) -> bytes:
    """Whole content of a file."""
    with loc.fs.open_input_stream(loc.path) as f:
        return f.read()


def write_bytes_atomic(loc: Location, data: bytes) -> None:
    """Write ``data`` to ``loc`` so that readers see the old content or the new one, never a part.

    Local files: a temporary file in the same directory, ``fsync``, then ``os.replace``. Object stores:
    a single PUT is already atomic, so the object is written directly.
    """
    parent = posixpath.dirname(loc.path)
    loc.fs.create_dir(parent, recursive=True)
    if loc.is_local:
        tmp = f"{loc.path}{TMP_MARK}{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, loc.path)
    else:
        with loc.fs.open_output_stream(loc.path) as f:
            f.write(data)


def download_dir(loc: Location, local_dir: str | os.PathLike) -> Path:
    """Copy a directory tree from any filesystem to a local directory (created); returns it."""
    local = Path(local_dir)
    local.mkdir(parents=True, exist_ok=True)
    for info in loc.list(recursive=True):
        rel = posixpath.relpath(info.path, loc.path)
        dst = local / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        with loc.fs.open_input_stream(info.path) as src, open(dst, "wb") as out:
            shutil.copyfileobj(src, out, length=1 << 22)
    return local


def upload_dir(local_dir: str | os.PathLike, loc: Location) -> None:
    """Copy a local directory tree to ``loc`` (any filesystem), file by file (each write atomic)."""
    root = Path(local_dir)
    for p in sorted(root.rglob("*")):
        if p.is_file():
            write_bytes_atomic(loc.join(p.relative_to(root).as_posix()), p.read_bytes())


def local_copy(loc: Location, suffix: str = "") -> tuple[str, bool]:
    """A local path holding the bytes of ``loc``: the path itself when local, else a downloaded temp file.

    Returns:
        ``(path, is_temporary)``; the caller deletes temporary files.
    """
    if loc.is_local:
        return loc.path, False
    fd, tmp = tempfile.mkstemp(prefix="maskflow-src-", suffix=suffix)
    with os.fdopen(fd, "wb") as out, loc.fs.open_input_stream(loc.path) as src:
        shutil.copyfileobj(src, out, length=1 << 22)
    return tmp, True
