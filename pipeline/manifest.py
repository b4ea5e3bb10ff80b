"""What a shard directory holds, how to repair it after an interruption, and its ``manifest.json``.

A shard directory (``output_dir``) contains::

    part-<run>-<task>.parquet     token shards (pipeline.writer)
    _videos/part-<run>-<task>.jsonl   one record per finished video (ok or failed, with reason)
    _job.json                     the tokenizer id and decode settings the shards were made with
    tokenizer/                    the tokenizer (VQTokenizer.save), so the directory is self-contained
    manifest.json                 summary for people and for the training/sampling code

Resumability rests on :func:`scan_output`: a video is **done** when its record says ``failed``, or
says ``ok`` with ``n`` segments and exactly the segments ``0..n-1`` (once each) are in committed
Parquet files with the recorded number of frames. Everything else a killed run can leave behind —
rows of a half-written video, a record whose segments were not all committed, duplicated rows,
unreadable or temporary files — is removed by :func:`repair_output` (files are rewritten without
those videos, each rewrite atomic) before the next run processes the videos that are not done.
"""

from __future__ import annotations

import collections
import datetime as _dt
import json
import logging
import posixpath
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.fs import TMP_MARK, Location, read_bytes, resolve, write_bytes_atomic
from pipeline.writer import RECORDS_DIR, SHARD_PREFIX, encode_shard

__all__ = [
    "MANIFEST_FILE",
    "JOB_FILE",
    "TOKENIZER_DIR",
    "FORMAT_VERSION",
    "TokenizerMismatchError",
    "OutputState",
    "scan_output",
    "repair_output",
    "check_job_settings",
    "existing_tokenizer_ids",
    "write_job_settings",
    "build_manifest",
    "write_manifest",
    "load_manifest",
]

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
JOB_FILE = "_job.json"
TOKENIZER_DIR = "tokenizer"
FORMAT_VERSION = 1
_SCAN_COLUMNS = ["video_id", "segment", "num_frames", "split", "tokenizer", "source"]


class TokenizerMismatchError(ValueError):
    """The shard directory was made with another tokenizer or other decode settings."""


# ================================================================================ scanning
@dataclass
class OutputState:
    """Contents of a shard directory (see module docstring).

    Attributes:
        location: the directory.
        shard_files: committed Parquet files (paths).
        rows: per video id, its ``(segment, num_frames, file)`` rows.
        records: per video id, its records (normally one).
        record_files: per records file, the video ids it holds.
        tokenizer_ids: distinct ``tokenizer`` values in the shards.
        junk_files: temporary leftovers and unreadable Parquet files.
        split_of: split per video id (from rows or records).
    """

    location: Location
    shard_files: list[str] = field(default_factory=list)
    rows: dict[str, list[tuple[int, int, str]]] = field(default_factory=lambda: collections.defaultdict(list))
    records: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: collections.defaultdict(list))
    record_files: dict[str, list[str]] = field(default_factory=dict)
    tokenizer_ids: set[str] = field(default_factory=set)
    junk_files: list[str] = field(default_factory=list)
    rows_per_file: dict[str, int] = field(default_factory=dict)

    # ------------------------------------------------------------------ verdicts
    def status(self, video_id: str) -> str:
        """``"ok"``, ``"failed"`` (both done), ``"incomplete"`` (must be purged and redone) or ``"absent"``."""
        recs = self.records.get(video_id, [])
        rows = self.rows.get(video_id, [])
        if not recs:
            return "incomplete" if rows else "absent"
        if len(recs) > 1:
            return "incomplete"
        rec = recs[0]
        if rec.get("status") != "ok":
            return "failed" if not rows else "incomplete"
        segs = sorted(r[0] for r in rows)
        if segs != list(range(int(rec.get("segments", -1)))):
            return "incomplete"
        if sum(r[1] for r in rows) != int(rec.get("frames", -1)):
            return "incomplete"
        return "ok"

    def video_ids(self) -> set[str]:
        return set(self.rows) | set(self.records)

    def done(self) -> dict[str, str]:
        """``{video_id: "ok" | "failed"}`` for every finished video."""
        out = {}
        for v in self.video_ids():
            s = self.status(v)
            if s in ("ok", "failed"):
                out[v] = s
        return out

    def incomplete(self) -> list[str]:
        return sorted(v for v in self.video_ids() if self.status(v) == "incomplete")

    def record(self, video_id: str) -> dict[str, Any]:
        return self.records[video_id][0]


def _is_shard(name: str) -> bool:
    base = posixpath.basename(name)
    return base.startswith(SHARD_PREFIX) and base.endswith(".parquet") and TMP_MARK not in base


def scan_output(output_dir: str | Location) -> OutputState:
    """Read the small columns of every shard and every video record of a shard directory.

    Cost: the ``video_id``/``segment``/``num_frames``/``split``/``tokenizer``/``source`` columns only
    (dictionary-encoded, a few bytes per segment), plus the JSONL records.

    Returns:
        an :class:`OutputState` (empty when the directory does not exist yet).
    """
    loc = output_dir if isinstance(output_dir, Location) else resolve(output_dir)
    state = OutputState(loc)
    for info in sorted(loc.list(recursive=False), key=lambda i: i.path):
        base = posixpath.basename(info.path)
        if TMP_MARK in base:
            state.junk_files.append(info.path)
            continue
        if not _is_shard(base):
            continue
        try:
            with loc.fs.open_input_file(info.path) as f:
                table = pq.read_table(f, columns=_SCAN_COLUMNS)
        except Exception as e:  # a torn or foreign file: it will be deleted and its videos redone
            log.warning("shard %s is unreadable (%s); it will be removed", info.path, e)
            state.junk_files.append(info.path)
            continue
        state.shard_files.append(info.path)
        state.rows_per_file[info.path] = table.num_rows
        state.tokenizer_ids.update(pc.unique(table.column("tokenizer")).to_pylist())
        for vid, seg, n in zip(
            table.column("video_id").to_pylist(), table.column("segment").to_pylist(), table.column("num_frames").to_pylist()
        ):
            state.rows[vid].append((int(seg), int(n), info.path))
    for info in sorted(loc.join(RECORDS_DIR).list(recursive=False), key=lambda i: i.path):
        base = posixpath.basename(info.path)
        if TMP_MARK in base:
            state.junk_files.append(info.path)
            continue
        if not base.endswith(".jsonl"):
            continue
        ids = []
        try:
            lines = read_bytes(Location(loc.fs, info.path, loc.scheme)).decode().splitlines()
            recs = [json.loads(line) for line in lines if line.strip()]
        except Exception as e:
            log.warning("record file %s is unreadable (%s); it will be removed", info.path, e)
            state.junk_files.append(info.path)
            continue
        for rec in recs:
            state.records[rec["video_id"]].append(rec)
            ids.append(rec["video_id"])
        state.record_files[info.path] = ids
    state.rows = dict(state.rows)
    state.records = dict(state.records)
    return state


def repair_output(state: OutputState, also_purge: set[str] | None = None) -> dict[str, int]:
    """Remove every trace of incomplete videos (and of ``also_purge``) and all junk files.

    Shard and record files holding such videos are rewritten without them (atomically) or deleted
    when nothing else is left in them.

    Returns:
        ``{"videos_purged", "files_rewritten", "files_deleted"}``; ``state`` is updated in place.
    """
    fs = state.location.fs
    purge = set(state.incomplete()) | set(also_purge or ())
    stats = {"videos_purged": len(purge), "files_rewritten": 0, "files_deleted": 0}
    for path in state.junk_files:
        try:
            fs.delete_file(path)
            stats["files_deleted"] += 1
        except Exception as e:  # pragma: no cover - racing deletes
            log.warning("could not delete %s: %s", path, e)
    state.junk_files = []
    if not purge:
        return stats
    shard_hits = sorted({f for v in purge for (_, _, f) in state.rows.get(v, [])})
    for path in shard_hits:
        with fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            rows_per_group = pf.metadata.row_group(0).num_rows if pf.metadata.num_row_groups else 1
            table = pf.read()
        keep = table.filter(pc.invert(pc.is_in(table.column("video_id"), value_set=pa.array(sorted(purge), pa.string()))))
        if keep.num_rows == 0:
            fs.delete_file(path)
            state.shard_files.remove(path)
            state.rows_per_file.pop(path, None)
            stats["files_deleted"] += 1
        else:
            write_bytes_atomic(Location(fs, path, state.location.scheme), encode_shard(keep, rows_per_group))
            state.rows_per_file[path] = keep.num_rows
            stats["files_rewritten"] += 1
    for path, ids in list(state.record_files.items()):
        if not purge.intersection(ids):
            continue
        lines = read_bytes(Location(fs, path, state.location.scheme)).decode().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line)["video_id"] not in purge]
        if kept:
            write_bytes_atomic(Location(fs, path, state.location.scheme), ("\n".join(kept) + "\n").encode())
            state.record_files[path] = [i for i in ids if i not in purge]
            stats["files_rewritten"] += 1
        else:
            fs.delete_file(path)
            del state.record_files[path]
            stats["files_deleted"] += 1
    for v in purge:
        state.rows.pop(v, None)
        state.records.pop(v, None)
    return stats


# ================================================================================ job settings
def check_job_settings(
    output_dir: str | Location, settings: dict[str, Any], state: OutputState | None = None, *, split_reason: str | None = None
) -> None:
    """Refuse to append to shards made with another tokenizer, other decode settings or another split.

    Args:
        output_dir: shard directory.
        settings: ``{"tokenizer_id": ..., "resolution": ..., "fps": ..., "frame_stride": ...,
            "max_frames_per_segment": ..., "min_frames": ..., "split": "video" | "temporal",
            "temporal_eval_fraction": float | None}`` of this run (``tokenizer_id`` ``None``: check the
            other settings only). Shards whose ``_job.json`` predates ``split`` were made with ``video``.
        state: a scan of the directory (read when ``None``).
        split_reason: why this run has its split mode (e.g. how ``split=auto`` resolved), for the message.

    Raises:
        TokenizerMismatchError: naming the directory's tokenizer id (or setting) and this run's.
    """
    loc = output_dir if isinstance(output_dir, Location) else resolve(output_dir)
    job = loc.join(JOB_FILE)
    previous = json.loads(read_bytes(job)) if job.exists() else None
    state = state if state is not None else scan_output(loc)
    have_data = bool(state.shard_files or state.record_files)
    theirs = set(state.tokenizer_ids)
    if previous and have_data:
        theirs.add(previous["tokenizer_id"])
    mine = settings.get("tokenizer_id")
    if mine is not None and theirs - {mine}:
        other = ", ".join(sorted(theirs - {mine}))
        raise TokenizerMismatchError(
            f"{loc.uri()} already holds shards made with tokenizer {other}; this run's tokenizer is {mine}. "
            "Shards of different tokenizers cannot be mixed: write to a new output_dir, or delete the old "
            "shards (part-*.parquet, _videos/, _job.json, manifest.json) to start over"
        )
    if previous and have_data and "split" in settings:
        theirs_split = previous.get("split", "video")  # written before split modes existed: whole videos
        if theirs_split != settings["split"]:
            why = f" ({split_reason})" if split_reason else ""
            raise TokenizerMismatchError(
                f"{loc.uri()} holds shards made with split={theirs_split}; this run has split={settings['split']}{why}. "
                "Resuming would mix held-out videos with held-out continuations. Set split="
                f"{theirs_split} to resume this output_dir, or write to a new output_dir"
            )
        theirs_fraction = previous.get("temporal_eval_fraction")
        if settings["split"] == "temporal" and theirs_fraction not in (None, settings.get("temporal_eval_fraction")):
            raise TokenizerMismatchError(
                f"{loc.uri()} holds shards made with temporal_eval_fraction={theirs_fraction!r}; this run "
                f"has temporal_eval_fraction={settings.get('temporal_eval_fraction')!r}. Use the same setting to resume, "
                "or a new output_dir"
            )
    if previous and have_data:
        for key in ("resolution", "fps", "frame_stride", "max_frames_per_segment", "min_frames"):
            if key in previous and previous[key] != settings.get(key):
                raise TokenizerMismatchError(
                    f"{loc.uri()} holds shards made with {key}={previous[key]!r}; this run has {key}={settings.get(key)!r}. "
                    "Use the same setting to resume, or a new output_dir"
                )


def existing_tokenizer_ids(output_dir: str | Location, state: OutputState) -> set[str]:
    """Tokenizer ids the shards of a directory were made with (shard column and ``_job.json``)."""
    loc = output_dir if isinstance(output_dir, Location) else resolve(output_dir)
    ids = set(state.tokenizer_ids)
    job = loc.join(JOB_FILE)
    if job.exists() and (state.shard_files or state.record_files):
        ids.add(json.loads(read_bytes(job))["tokenizer_id"])
    return ids


def write_job_settings(output_dir: str | Location, settings: dict[str, Any]) -> None:
    """Record the settings the shards are made with (``_job.json``), before any shard is written."""
    loc = output_dir if isinstance(output_dir, Location) else resolve(output_dir)
    blob = json.dumps(settings, indent=2, sort_keys=True, default=str).encode()
    job = loc.join(JOB_FILE)
    if job.exists() and read_bytes(job) == blob:
        return  # unchanged: a rerun over finished output touches nothing
    write_bytes_atomic(job, blob)


# ================================================================================ manifest
def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def build_manifest(
    state: OutputState,
    *,
    found: list[Any],
    tokenizer: dict[str, Any],
    decode: dict[str, Any],
    run: dict[str, Any],
    psnr: dict[str, Any] | None,
    schema: pa.Schema,
    split: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest of a repaired, finished shard directory.

    Args:
        state: scan of the directory after the run.
        found: the :class:`~pipeline.discover.VideoItem` s of this run's inputs.
        tokenizer: ``{kind, tokenizer_id, config_hash, config, codebook_size, latent_size, resolution,
            directory, source}``.
        decode: the decode settings.
        run: statistics of this run (``wall_s``, ``frames_per_s``, …).
        psnr: ``{"db": float, "frames": int, "segments": [...]}`` or ``None``.
        schema: the shard Arrow schema.
        split: the job's split plan (``mode``, ``requested``, ``reason``, ``eval_fraction``,
            ``temporal_eval_fraction``, ``min_videos_for_video_split``, …); becomes ``manifest["split"]`` with
            ``videos_cut`` (temporally split videos with both parts), ``videos_train_only`` (temporally split
            videos too short for an eval part, wholly ``train``) and ``train_only`` (``[{video_id, frames,
            reason}]`` of those) added. ``None``: ``manifest["split"]`` is ``None``.

    Returns:
        the manifest dict (JSON-serialisable). Counts: ``videos_found`` (this run's inputs),
        ``videos_ok + videos_failed + videos_pending == videos_found`` where pending counts inputs not
        finished (non-zero only when a run stopped early); ``videos_outside_inputs`` counts finished videos
        of earlier runs that are not among this run's inputs (they stay in the shards and the counts).
        ``splits`` gives ``{videos, segments, frames}`` per row split (``train``/``eval``); a temporally split
        video counts in both.
    """
    done = state.done()
    found_ids = {it.video_id for it in found}
    ok_ids = sorted(v for v, s in done.items() if s == "ok")
    failed_ids = sorted(v for v, s in done.items() if s == "failed")
    splits: dict[str, dict[str, int]] = {}
    segments = frames = dropped = 0
    partial = []
    train_only = []
    videos_cut = 0
    for v in ok_ids:
        rec = state.record(v)
        # records written before split modes have no "splits": the whole video is in its item split
        per = rec.get("splits") or {rec.get("split", "?"): {"segments": rec["segments"], "frames": rec["frames"]}}
        for name, n in sorted(per.items()):
            sp = splits.setdefault(name, {"videos": 0, "segments": 0, "frames": 0})
            sp["videos"] += 1
            sp["segments"] += int(n["segments"])
            sp["frames"] += int(n["frames"])
        if rec.get("split") == "temporal":
            if rec.get("eval_frame_start") is not None:
                videos_cut += 1
            else:
                train_only.append({"video_id": v, "frames": int(rec["frames"]), "reason": rec.get("train_only")})
        segments += int(rec["segments"])
        frames += int(rec["frames"])
        dropped += int(rec.get("frames_dropped") or 0)
        if rec.get("warning"):
            partial.append({"video_id": v, "source": rec["source"], "frames": int(rec["frames"]), "warning": rec["warning"]})
    failures = [
        {
            "video_id": v,
            "source": state.record(v)["source"],
            "reason": state.record(v).get("reason"),
            "category": state.record(v).get("category"),
        }
        for v in failed_ids
    ]
    failures.sort(key=lambda f: f["source"])
    counts = {
        "videos_found": len(found),
        "videos_ok": sum(v in found_ids for v in ok_ids),
        "videos_failed": sum(v in found_ids for v in failed_ids),
        "videos_pending": len(found_ids - set(done)),
        "videos_outside_inputs": len(set(done) - found_ids),
        "videos_partial": len(partial),
        "segments": segments,
        "frames": frames,
        "frames_dropped": dropped,
        "shard_files": len(state.shard_files),
    }
    return {
        "format": "maskflow-token-shards",
        "format_version": FORMAT_VERSION,
        "updated_at": _utc_now(),
        "shard_dir": state.location.uri(),
        "tokenizer": tokenizer,
        "decode": decode,
        "tokens": {
            "column": "tokens",
            "layout": "list<uint> flattened row-major, reshape with token_shape [T, h, w]",
            "dtype": str(schema.field("tokens").type.value_type),
        },
        "schema": {f.name: str(f.type) for f in schema},
        "counts": counts,
        "splits": dict(sorted(splits.items())),
        "split": None if split is None else {
            **split, "videos_cut": videos_cut, "videos_train_only": len(train_only), "train_only": train_only
        },
        "failures": failures,
        "partial": sorted(partial, key=lambda p: p["source"]),
        "reconstruction_psnr_db": None if psnr is None else psnr.get("db"),
        "psnr": psnr,
        "run": run,
        "shards": [
            {"file": posixpath.basename(p), "rows": state.rows_per_file.get(p, 0)} for p in sorted(state.shard_files)
        ],
    }


def write_manifest(output_dir: str | Location, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` atomically."""
    loc = output_dir if isinstance(output_dir, Location) else resolve(output_dir)
    write_bytes_atomic(loc.join(MANIFEST_FILE), (json.dumps(manifest, indent=2, default=str) + "\n").encode())


def load_manifest(output_dir: str | Location) -> dict[str, Any] | None:
    """``manifest.json`` of a shard directory, or ``None`` if there is none."""
    loc = output_dir if isinstance(output_dir, Location) else resolve(output_dir)
    m = loc.join(MANIFEST_FILE)
    return json.loads(read_bytes(m)) if m.exists() else None
