"""Readers of token shards: training windows (Ray Data), evaluation clips and segments (plain pyarrow).

* :func:`read_manifest` — the ``manifest.json`` of a shard directory.
* :func:`read_token_dataset` — a Ray Dataset of the segment rows of one split (for Ray Train).
* :func:`iter_training_windows` — random ``chunk_size`` windows per segment, new offsets every epoch,
  batched as ``int64 [B, chunk_size, h, w]``, from rows or a ``ray.train.get_dataset_shard`` iterator.
* :func:`load_eval_clips` — the same seeded set of ``L``-frame windows of held-out segments every
  time (pure pyarrow, no Ray).
* :func:`load_segment_tokens` / :func:`decode_segment` — one segment's codes / reconstructed frames.

Every function takes a local path or a URI (``s3://…``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads

from pipeline.fs import read_bytes, resolve

__all__ = [
    "read_manifest",
    "shard_files",
    "read_token_dataset",
    "row_tokens",
    "iter_training_windows",
    "EvalClip",
    "load_eval_clips",
    "load_segment_tokens",
    "decode_segment",
    "load_shard_tokenizer",
]

_META_COLUMNS = ["video_id", "source", "split", "segment", "frame_start", "num_frames"]


def read_manifest(shard_dir: str) -> dict[str, Any]:
    """The manifest of a shard directory.

    If the directory was moved, ``manifest["tokenizer"]["directory"]`` is pointed at the
    ``tokenizer/`` folder beside the shards.

    Raises:
        FileNotFoundError: if ``shard_dir/manifest.json`` does not exist (the tokenize job did not finish).
    """
    loc = resolve(shard_dir)
    m = loc.join("manifest.json")
    if not m.exists():
        raise FileNotFoundError(f"{m.uri()} not found: run experiments.tokenize first (or let it finish)")
    manifest = json.loads(read_bytes(m))
    tok = manifest.get("tokenizer") or {}
    here = loc.join("tokenizer")
    recorded = tok.get("directory")
    if here.exists() and (not recorded or not resolve(recorded).exists()):
        tok["directory"] = here.uri()
    return manifest


def shard_files(shard_dir: str) -> list[str]:
    """Committed shard files (``part-*.parquet``) of a directory, sorted (paths on its filesystem)."""
    from pipeline.manifest import _is_shard

    loc = resolve(shard_dir)
    return sorted(i.path for i in loc.list(recursive=False) if _is_shard(i.path))


def _dataset(shard_dir: str) -> pads.Dataset:
    loc = resolve(shard_dir)
    files = shard_files(shard_dir)
    if not files:
        raise FileNotFoundError(f"no token shards (part-*.parquet) in {loc.uri()}")
    return pads.dataset(files, format="parquet", filesystem=loc.fs)


def row_tokens(row: dict[str, Any]) -> np.ndarray:
    """The ``[T, h, w]`` codes of a shard row (a Ray Data row, a pyarrow ``to_pylist`` row, a pandas row).

    Returns:
        ``uint16`` (or ``uint32``) NumPy array ``[T, h, w]``.
    """
    shape = tuple(int(s) for s in np.asarray(row["token_shape"]).tolist())
    tokens = row["tokens"]
    arr = tokens if isinstance(tokens, np.ndarray) else np.asarray(tokens)
    if arr.dtype.kind not in "ui":
        arr = arr.astype(np.int64)
    return arr.reshape(shape)


def read_token_dataset(shard_dir: str, split: str | None = "train"):
    """Ray Dataset of the shard rows of one split (all splits with ``split=None``).

    Rows have every shard column, with ``tokens`` already a ``uint16 [T, h, w]`` NumPy array (a ragged
    tensor column); :func:`row_tokens` works on these rows too. Reading is lazy and streams row group
    by row group.

    Raises:
        FileNotFoundError: if the directory holds no shards.
    """
    import ray

    loc = resolve(shard_dir)
    files = shard_files(shard_dir)
    if not files:
        raise FileNotFoundError(f"no token shards (part-*.parquet) in {loc.uri()}")
    if loc.scheme:
        ds = ray.data.read_parquet([loc.uri(p) for p in files])
    else:
        ds = ray.data.read_parquet(files, filesystem=loc.fs)
    if split is not None:
        from ray.data.expressions import col

        ds = ds.filter(expr=col("split") == split)
    return ds.map_batches(_tokens_as_tensors, batch_format="numpy", zero_copy_batch=True)


def _tokens_as_tensors(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Reshape the flat ``tokens`` lists into ``[T, h, w]`` arrays (Ray keeps them as a ragged tensor
    column, so a row's ``tokens`` is a NumPy array, not a Python list)."""
    out = dict(batch)
    arrays = np.empty(len(batch["tokens"]), dtype=object)
    for i, (tok, shape) in enumerate(zip(batch["tokens"], batch["token_shape"])):
        arrays[i] = np.asarray(tok).reshape([int(x) for x in shape])
    out["tokens"] = arrays
    return out


# ------------------------------------------------------------------------------ training windows
def _iter_rows(rows: Any) -> Iterator[dict[str, Any]]:
    """Rows from a ``ray.data.DataIterator`` / ``Dataset`` (streamed) or any iterable of dicts."""
    if hasattr(rows, "iter_rows") and callable(rows.iter_rows):
        yield from rows.iter_rows()
    else:
        yield from rows


def iter_training_windows(
    rows: Iterable[dict[str, Any]] | Any,
    *,
    chunk_size: int,
    batch_size: int,
    seed: int,
    epoch: int,
    rank: int = 0,
    shuffle_buffer: int = 256,
    drop_last: bool = True,
) -> Iterator["torch.Tensor"]:  # noqa: F821
    """Random training windows, batched.

    Each segment of ``T >= chunk_size`` frames gives ``floor(T / chunk_size)`` non-overlapping windows
    starting at a random offset in ``[0, T mod chunk_size]`` drawn anew each epoch (so every frame is
    seen over epochs); shorter segments give none. Windows pass through a shuffle buffer of
    ``shuffle_buffer`` windows before batching. All randomness comes from
    ``numpy.random.default_rng([seed, epoch, rank])``: the same arguments give the same batches.

    Args:
        rows: shard rows (dicts with ``tokens``, ``token_shape``), a ``ray.data.DataIterator`` from
            ``ray.train.get_dataset_shard(...)``, or a ``ray.data.Dataset``.
        chunk_size: ``k``, frames per window, ``>= 1``.
        batch_size: windows per batch, ``>= 1``.
        seed, epoch, rank: seed the window offsets and the shuffle.
        shuffle_buffer: windows held for shuffling (``1`` = no shuffling).
        drop_last: drop a last batch smaller than ``batch_size``.

    Yields:
        ``torch.LongTensor [B, chunk_size, h, w]``.

    Raises:
        ValueError: on ``chunk_size < 1`` or ``batch_size < 1``.
    """
    import torch

    if chunk_size < 1 or batch_size < 1:
        raise ValueError(f"chunk_size and batch_size must be >= 1, got {chunk_size}, {batch_size}")
    rng = np.random.default_rng([int(seed), int(epoch), int(rank)])
    buffer: list[np.ndarray] = []
    batch: list[np.ndarray] = []

    def emit(window: np.ndarray):
        batch.append(window)
        if len(batch) == batch_size:
            out = torch.from_numpy(np.stack(batch).astype(np.int64))
            batch.clear()
            return out
        return None

    for row in _iter_rows(rows):
        tokens = row_tokens(row)
        t = tokens.shape[0]
        n = t // chunk_size
        if n == 0:
            continue
        offset = int(rng.integers(0, t - n * chunk_size + 1))
        for i in range(n):
            buffer.append(tokens[offset + i * chunk_size : offset + (i + 1) * chunk_size])
        while len(buffer) >= max(1, shuffle_buffer):
            j = int(rng.integers(0, len(buffer)))
            buffer[j], buffer[-1] = buffer[-1], buffer[j]
            out = emit(buffer.pop())
            if out is not None:
                yield out
    order = rng.permutation(len(buffer))
    for j in order:
        out = emit(buffer[j])
        if out is not None:
            yield out
    if batch and not drop_last:
        yield torch.from_numpy(np.stack(batch).astype(np.int64))


# ------------------------------------------------------------------------------ evaluation clips
@dataclass
class EvalClip:
    """An ``L``-frame window of a held-out segment.

    Attributes:
        video_id, source, segment: where it comes from.
        frame_start: first frame of the window, counted in kept frames from the start of the video
            (the segment's ``frame_start`` plus the offset inside the segment).
        tokens: ``torch.LongTensor [L, h, w]``.
    """

    video_id: str
    source: str
    segment: int
    frame_start: int
    tokens: "torch.Tensor"  # noqa: F821


def _read_segments(ds: pads.Dataset, keys: list[tuple[str, int]]) -> dict[tuple[str, int], np.ndarray]:
    """Tokens of the given ``(video_id, segment)`` pairs (reads only the row groups that may hold them)."""
    if not keys:
        return {}
    vids = sorted({k[0] for k in keys})
    table = ds.to_table(
        columns=["video_id", "segment", "tokens", "token_shape"],
        filter=pc.field("video_id").isin(vids),
    )
    want = set(keys)
    out: dict[tuple[str, int], np.ndarray] = {}
    for i in range(table.num_rows):
        key = (table.column("video_id")[i].as_py(), int(table.column("segment")[i].as_py()))
        if key in want:
            shape = tuple(table.column("token_shape")[i].as_py())
            out[key] = table.column("tokens")[i].values.to_numpy(zero_copy_only=False).reshape(shape)
    return out


def load_eval_clips(shard_dir: str, *, num_frames: int, num_clips: int, seed: int, split: str = "eval") -> list[EvalClip]:
    """A deterministic set of ``num_frames``-frame clips from the segments of ``split``.

    Segments with at least ``num_frames`` frames are sorted by ``(video_id, segment)`` and visited in
    a seeded random order; each visit takes one window at a seeded random offset (a segment is visited
    again only after every eligible segment was, so clips come from as many different videos as
    possible). The same arguments always give the same clips, on any machine.

    Args:
        shard_dir: shard directory (local or URI).
        num_frames: ``L``, frames per clip, ``>= 1``.
        num_clips: clips wanted, ``>= 1``; fewer are returned only when there are fewer distinct windows.
        seed: selects the segments and offsets.
        split: ``"eval"`` (held-out) or ``"train"``.

    Returns:
        up to ``num_clips`` :class:`EvalClip` s; ``[]`` when no segment of the split has ``num_frames``
        frames.

    Raises:
        ValueError: on ``num_frames < 1`` or ``num_clips < 1``.
        FileNotFoundError: if the directory holds no shards.
    """
    import torch

    if num_frames < 1 or num_clips < 1:
        raise ValueError(f"num_frames and num_clips must be >= 1, got {num_frames}, {num_clips}")
    ds = _dataset(shard_dir)
    meta = ds.to_table(columns=_META_COLUMNS, filter=(pc.field("split") == split) & (pc.field("num_frames") >= num_frames))
    rows = sorted(meta.to_pylist(), key=lambda r: (r["video_id"], r["segment"]))
    if not rows:
        return []
    rng = np.random.default_rng(int(seed))
    picks: list[tuple[dict[str, Any], int]] = []
    used: set[tuple[str, int, int]] = set()
    capacity = sum(r["num_frames"] - num_frames + 1 for r in rows)
    while len(picks) < min(num_clips, capacity):
        for idx in rng.permutation(len(rows)):
            r = rows[int(idx)]
            span = r["num_frames"] - num_frames + 1
            free = [o for o in range(span) if (r["video_id"], r["segment"], o) not in used]
            if not free:
                continue
            off = int(free[int(rng.integers(0, len(free)))])
            used.add((r["video_id"], r["segment"], off))
            picks.append((r, off))
            if len(picks) == min(num_clips, capacity):
                break
    tokens = _read_segments(ds, [(r["video_id"], r["segment"]) for r, _ in picks])
    clips = []
    for r, off in picks:
        t = tokens[(r["video_id"], r["segment"])]
        clips.append(
            EvalClip(
                video_id=r["video_id"],
                source=r["source"],
                segment=int(r["segment"]),
                frame_start=int(r["frame_start"]) + off,
                tokens=torch.from_numpy(t[off : off + num_frames].astype(np.int64)),
            )
        )
    return clips


def load_segment_tokens(shard_dir: str, video_id: str, segment: int) -> "torch.Tensor":  # noqa: F821
    """Codes of one segment.

    Returns:
        ``torch.LongTensor [T, h, w]``.

    Raises:
        KeyError: if the shards hold no such segment.
    """
    import torch

    found = _read_segments(_dataset(shard_dir), [(video_id, int(segment))])
    if not found:
        raise KeyError(f"no segment {segment} of video {video_id!r} in {resolve(shard_dir).uri()}")
    return torch.from_numpy(found[(video_id, int(segment))].astype(np.int64))


def load_shard_tokenizer(shard_dir: str):
    """The tokenizer the shards were made with (from the manifest; remote directories are downloaded)."""
    from pipeline.tokenize import load_tokenizer_any

    return load_tokenizer_any(read_manifest(shard_dir)["tokenizer"]["directory"])


def decode_segment(shard_dir: str, video_id: str, segment: int, *, tokenizer: Any = None, batch_size: int = 64) -> "torch.Tensor":  # noqa: F821
    """Frames reconstructed from one segment's codes (the tokens → frames half of the round trip).

    Args:
        shard_dir: shard directory.
        video_id, segment: which segment.
        tokenizer: the shards' tokenizer (loaded from the manifest when ``None``).
        batch_size: frames per ``decode`` call.

    Returns:
        ``torch.uint8 [T, R, R, 3]``.

    Raises:
        KeyError: if there is no such segment.
    """
    import torch

    tok = tokenizer if tokenizer is not None else load_shard_tokenizer(shard_dir)
    codes = load_segment_tokens(shard_dir, video_id, segment)
    with torch.inference_mode():
        parts = [tok.decode(codes[i : i + batch_size]) for i in range(0, len(codes), batch_size)]
    return torch.cat(parts) if parts else torch.empty(0, tok.resolution, tok.resolution, 3, dtype=torch.uint8)
