"""Stage 4: Parquet token shards and per-video records, written atomically (plain class + Ray Datasink).

Shard format (one row per contiguous video segment; any Parquet reader understands every column):

=============== ========================= ===========================================================
column          Arrow type                meaning
=============== ========================= ===========================================================
video_id        string                    stable id of the video (:mod:`pipeline.discover`)
source          string                    path or URI of the video file
split           string                    ``train`` or ``eval`` (a temporally split video has both)
segment         int32                     index of the segment in the video (0, 1, …)
frame_start     int32                     first frame of the segment, counted in kept frames
num_frames      int32                     ``T``, frames in the segment
fps             float32                   frame rate of the kept frames (frames/s)
tokens          list<uint16>              the ``[T, h, w]`` codes, flattened row-major (C order);
                                          ``list<uint32>`` when ``codebook_size > 65536``
token_shape     list<int32>               ``[T, h, w]``
tokenizer       string                    ``"<kind>:<config_hash>"`` of the tokenizer
codebook_size   int32                     ``K``
=============== ========================= ===========================================================

Why a flat ``list<uint16>`` plus ``token_shape`` rather than a tensor extension type: ``T`` varies from
row to row, so Arrow's canonical ``fixed_shape_tensor`` cannot hold the column, pyarrow has no Python
``variable_shape_tensor`` yet, and Ray's ``ArrowVariableShapedTensorType`` is an extension only Ray
registers (plain pyarrow, pandas, DuckDB or Polars would see an opaque struct). A list of ``uint16`` is
standard Parquet (``INT32`` with the ``UINT_16`` logical type, zstd-compressed), reads zero-copy with
``pyarrow`` (``tokens.values.to_numpy().reshape(token_shape)``), and Ray Data reads it as a NumPy array
per row (:func:`pipeline.readers.row_tokens` reshapes either).

Files, written by :class:`ShardWriter` (one call per Ray write task):

* ``<output_dir>/part-<run id>-<task>.parquet``: the segment rows of the task, sorted by
  ``(video_id, segment)``, row groups of about ``row_group_mb`` MiB of tokens (so a streaming reader
  holds one row group, not a file), zstd.
* ``<output_dir>/_videos/part-<run id>-<task>.jsonl``: one JSON record per video that finished in the
  task (``status`` ok/failed, ``reason``, ``segments``, ``frames``, ``splits``, decoder, sizes, …; its
  ``split`` is the video's item split: ``train``, ``eval`` or ``temporal``).

Each file is committed atomically (:func:`pipeline.fs.write_bytes_atomic`), Parquet first. A video is
complete when its record exists and exactly its ``segments`` segment rows are in committed Parquet
files (:mod:`pipeline.manifest` checks this when a job starts and repairs anything else).
"""

from __future__ import annotations

import io
import json
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.fs import resolve, write_bytes_atomic

__all__ = [
    "SHARD_COLUMNS",
    "RECORDS_DIR",
    "token_dtype",
    "shard_schema",
    "stream_schema",
    "tokens_to_arrow",
    "ShardWriter",
    "encode_shard",
    "TokenShardDatasink",
]

SHARD_COLUMNS = (
    "video_id",
    "source",
    "split",
    "segment",
    "frame_start",
    "num_frames",
    "fps",
    "tokens",
    "token_shape",
    "tokenizer",
    "codebook_size",
)
RECORDS_DIR = "_videos"
SHARD_PREFIX = "part-"


def token_dtype(codebook_size: int) -> np.dtype:
    """NumPy dtype of stored codes: codes lie in ``[0, K)``, so ``uint16`` when ``K <= 65536``, else ``uint32``."""
    return np.dtype(np.uint16) if int(codebook_size) <= 65536 else np.dtype(np.uint32)


def shard_schema(codebook_size: int) -> pa.Schema:
    """Arrow schema of the Parquet shards (see module docstring)."""
    values = pa.uint16() if token_dtype(codebook_size) == np.uint16 else pa.uint32()
    return pa.schema(
        [
            ("video_id", pa.string()),
            ("source", pa.string()),
            ("split", pa.string()),
            ("segment", pa.int32()),
            ("frame_start", pa.int32()),
            ("num_frames", pa.int32()),
            ("fps", pa.float32()),
            ("tokens", pa.list_(values)),
            ("token_shape", pa.list_(pa.int32())),
            ("tokenizer", pa.string()),
            ("codebook_size", pa.int32()),
        ]
    )


def stream_schema(codebook_size: int) -> pa.Schema:
    """Schema between the tokenizer actors and the writer: the shard columns plus ``kind``
    (``"segment"``/``"video"``) and ``record`` (JSON of a ``kind="video"`` row, else null)."""
    return shard_schema(codebook_size).append(pa.field("kind", pa.string())).append(pa.field("record", pa.string()))


def tokens_to_arrow(arrays: list[np.ndarray], codebook_size: int) -> tuple[pa.Array, pa.Array]:
    """``(tokens, token_shape)`` Arrow columns for a list of ``[T, h, w]`` integer arrays (``T`` may be 0).

    Raises:
        ValueError: if a code lies outside ``[0, codebook_size)``.
    """
    dt = token_dtype(codebook_size)
    lengths = np.array([a.size for a in arrays], dtype=np.int64)
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.empty(0, np.int64)
    if flat.size and (int(flat.min()) < 0 or int(flat.max()) >= int(codebook_size)):
        raise ValueError(f"token codes must lie in [0, {codebook_size}), got [{int(flat.min())}, {int(flat.max())}]")
    values = pa.array(flat.astype(dt, copy=False))
    tokens = pa.ListArray.from_arrays(pa.array(offsets), values)
    shapes = pa.array([list(a.shape) for a in arrays], type=pa.list_(pa.int32()))
    return tokens, shapes


def encode_shard(table: pa.Table, rows_per_group: int, compression: str = "zstd") -> bytes:
    """Parquet bytes of a shard table: ``rows_per_group`` rows per row group, dictionary-encoded strings,
    statistics on the columns readers filter on."""
    buf = io.BytesIO()
    pq.write_table(
        table,
        buf,
        row_group_size=max(1, int(rows_per_group)),
        compression=compression,
        use_dictionary=["video_id", "source", "split", "tokenizer"],
        write_statistics=["video_id", "segment", "split", "num_frames"],
    )
    return buf.getvalue()


class ShardWriter:
    """Writes one shard file and its video records (no Ray needed).

    Args:
        output_dir: shard directory (local path or URI).
        codebook_size: ``K`` (decides ``uint16``/``uint32`` and the schema).
        row_group_mb: target uncompressed token bytes per Parquet row group, in MiB.
        compression: Parquet codec.
    """

    def __init__(self, output_dir: str, *, codebook_size: int, row_group_mb: float = 32.0, compression: str = "zstd"):
        self.output_dir = str(output_dir)
        self.codebook_size = int(codebook_size)
        self.row_group_bytes = max(1, int(float(row_group_mb) * (1 << 20)))
        self.compression = compression

    def write(self, table: pa.Table, name: str) -> dict[str, Any]:
        """Commit the rows of ``table`` (:func:`stream_schema`) under ``part-<name>``.

        Segment rows go to ``part-<name>.parquet`` (skipped when there are none), video records to
        ``_videos/part-<name>.jsonl`` afterwards. Writing the same ``name`` again replaces both files
        (a retried Ray task does not duplicate rows).

        Returns:
            ``{"file": shard file name or None, "rows": segment rows, "frames": frames, "videos": n records,
            "ok": [video ids], "failed": [video ids]}``.
        """
        out = resolve(self.output_dir)
        kind = table.column("kind")
        seg = table.filter(pc.equal(kind, "segment"))
        vids = table.filter(pc.equal(kind, "video"))
        result: dict[str, Any] = {"file": None, "rows": seg.num_rows, "frames": 0, "videos": vids.num_rows}
        if seg.num_rows:
            seg = seg.select(list(SHARD_COLUMNS)).cast(shard_schema(self.codebook_size))
            seg = seg.sort_by([("video_id", "ascending"), ("segment", "ascending")])
            result["frames"] = int(pc.sum(seg.column("num_frames")).as_py() or 0)
            token_bytes = seg.column("tokens").nbytes
            rows_per_group = max(1, int(self.row_group_bytes * seg.num_rows / max(token_bytes, 1)))
            fname = f"{SHARD_PREFIX}{name}.parquet"
            write_bytes_atomic(out.join(fname), encode_shard(seg, rows_per_group, self.compression))
            result["file"] = fname
        records = []
        for row in vids.select(["video_id", "source", "split", "record"]).to_pylist():
            rec = json.loads(row.pop("record") or "{}")
            records.append({**row, **rec})
        if records:
            lines = "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in records)
            write_bytes_atomic(out.join(RECORDS_DIR, f"{SHARD_PREFIX}{name}.jsonl"), lines.encode())
        result["ok"] = [r["video_id"] for r in records if r.get("status") == "ok"]
        result["failed"] = [r["video_id"] for r in records if r.get("status") != "ok"]
        return result


from ray.data import Datasink  # noqa: E402  (after the plain-pyarrow part on purpose)


class TokenShardDatasink(Datasink):
    """Ray Data sink: each write task bundles at least ``rows_per_shard`` rows and commits them with
    :class:`ShardWriter` as ``part-<run_id>-<task index>``.

    Args:
        output_dir: shard directory (local path or URI; on a multi-node cluster it must be shared storage).
        codebook_size: ``K``.
        run_id: unique id of this job run (part of every file name).
        rows_per_shard: minimum rows per write task (the file size knob).
        row_group_mb: see :class:`ShardWriter`.
    """

    def __init__(self, output_dir: str, *, codebook_size: int, run_id: str, rows_per_shard: int = 256, row_group_mb: float = 32.0):
        self.writer = ShardWriter(output_dir, codebook_size=codebook_size, row_group_mb=row_group_mb)
        self.run_id = run_id
        self.rows_per_shard = max(1, int(rows_per_shard))
        self.results: list[dict[str, Any]] = []

    def get_name(self) -> str:
        return "WriteTokenShards"

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_shard

    def write(self, blocks: Iterable[Any], ctx: Any) -> dict[str, Any]:
        from ray.data.block import BlockAccessor

        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return {"file": None, "rows": 0, "frames": 0, "videos": 0, "ok": [], "failed": []}
        table = pa.concat_tables(tables, promote_options="default")
        return self.writer.write(table, f"{self.run_id}-{ctx.task_idx:06d}")

    def on_write_complete(self, write_result: Any) -> None:
        self.results = [r for r in write_result.write_returns if r]
