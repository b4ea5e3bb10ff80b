"""Readers of token shards: training windows (Ray Data), evaluation clips and segments (plain pyarrow).

* :func:`read_manifest` — the ``manifest.json`` of a shard directory.
* :func:`read_token_dataset` — a Ray Dataset of the segment rows of one split (for Ray Train).
* :func:`training_window_dataset` / :func:`iter_window_batches` — random ``chunk_size`` windows of the
  segments, new offsets every epoch, shuffled across videos (Ray Data), batched for a training worker.
* :func:`load_eval_clips` — the same seeded set of ``L``-frame windows of held-out segments every
  time (pure pyarrow, no Ray).
* :func:`load_segment_tokens` / :func:`decode_segment` — one segment's codes / reconstructed frames.

Every function takes a local path or a URI (``s3://…``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads

from pipeline.fs import read_bytes, resolve

__all__ = [
    "read_manifest",
    "shard_files",
    "read_token_dataset",
    "row_tokens",
    "SHUFFLE_MODES",
    "training_window_dataset",
    "iter_window_batches",
    "EvalClip",
    "load_whole_video_clips",
    "load_eval_clips",
    "load_segment_tokens",
    "decode_segment",
    "load_shard_tokenizer",
    "code_counts",
    "unseen_code_share",
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


def read_token_dataset(shard_dir: str, split: str | None = "train", *, shuffle_files: bool = False):
    """Ray Dataset of the shard rows of one split (all splits with ``split=None``).

    Rows have every shard column, with ``tokens`` already a ``uint16 [T, h, w]`` NumPy array (a ragged
    tensor column); :func:`row_tokens` works on these rows too. Reading is lazy and streams row group
    by row group; ``shuffle_files=True`` reads the files in a new random order at every execution.

    Raises:
        FileNotFoundError: if the directory holds no shards.
    """
    import ray

    loc = resolve(shard_dir)
    files = shard_files(shard_dir)
    if not files:
        raise FileNotFoundError(f"no token shards (part-*.parquet) in {loc.uri()}")
    shuffle = "files" if shuffle_files else None
    if loc.scheme:
        ds = ray.data.read_parquet([loc.uri(p) for p in files], shuffle=shuffle)
    else:
        ds = ray.data.read_parquet(files, filesystem=loc.fs, shuffle=shuffle)
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
SHUFFLE_MODES = ("local", "global", "none")


def _segment_windows(row: dict[str, Any], chunk_size: int, repeats: int) -> list[dict[str, Any]]:
    """Cut one segment into ``repeats × floor(T / k)`` windows of ``k`` frames.

    Each repeat tiles the segment at its own random offset in ``[0, T mod k]`` (drawn anew every
    epoch, since Ray Data re-executes the dataset), so every frame is covered once per repeat and
    windows start anywhere. Segments shorter than ``k`` give none.
    """
    tokens = row_tokens(row)  # [T, h, w]
    n = tokens.shape[0] // chunk_size
    out = []
    for _ in range(repeats if n else 0):
        offset = np.random.randint(0, tokens.shape[0] - n * chunk_size + 1)
        out.extend(
            {
                "tokens": np.ascontiguousarray(tokens[offset + i * chunk_size : offset + (i + 1) * chunk_size]),
                "video_id": str(row["video_id"]),
                "window": f"{row['video_id']}:{row['segment']}:{offset + i * chunk_size}",
            }
            for i in range(n)
        )
    return out


def training_window_dataset(
    shard_dir: str, split: str, chunk_size: int, *, min_windows: int = 1, shuffle: str = "local"
):
    """Ray Dataset of training windows, the one implementation used by training.

    Every segment of ``T`` frames gives ``repeats × floor(T / chunk_size)`` windows at random offsets
    drawn again each epoch, with ``repeats`` the smallest count that makes an epoch at least
    ``min_windows`` windows long (small datasets would otherwise pay Ray Data's per-epoch start-up every
    few steps). The row count is fixed, so Ray Train's equal split gives every worker the same number of
    batches.

    A segment's windows come out of ``flat_map`` back to back, so without shuffling a batch would hold
    windows of one or two videos. ``shuffle`` decides how they are mixed (each is redone every epoch):

    * ``"local"`` (default): the Parquet files are read in a random order and the segment blocks are
      put in a random order (``randomize_block_order``); the consumer then draws batches from a shuffle
      buffer of windows (:func:`iter_window_batches` with ``shuffle_buffer``). Streaming, memory bounded
      by the buffer; a full shuffle when the buffer holds an epoch.
    * ``"global"``: ``random_shuffle()`` of all windows (an all-to-all exchange that materialises the
      epoch's windows in the object store).
    * ``"none"``: file order, windows of a segment back to back (only for measurements).

    Rows: ``tokens`` (the shards' integer dtype, ``[chunk_size, h, w]``), ``video_id``, ``window``
    (``"video_id:segment:first_frame"``).

    Args:
        shard_dir: shard directory (local path or URI).
        split: the split whose segments are tiled (``"train"``).
        chunk_size: ``k``, frames per window.
        min_windows: the fewest windows an epoch may hold (a count; segments are tiled again, at new
            offsets, until the epoch is at least this long).
        shuffle: ``"local"``, ``"global"`` or ``"none"`` (above).

    Returns:
        ``(dataset, windows_per_epoch)``.

    Raises:
        ValueError: if the split holds no segment of at least ``chunk_size`` frames, or on an unknown
            ``shuffle``.
    """
    if shuffle not in SHUFFLE_MODES:
        raise ValueError(f"shuffle must be one of {SHUFFLE_MODES}, got {shuffle!r}")
    frames = _dataset(shard_dir).to_table(columns=["num_frames"], filter=pc.field("split") == split)
    frames = frames.column("num_frames").to_numpy()  # metadata only: no token is read to count windows
    ds = read_token_dataset(shard_dir, split=split, shuffle_files=shuffle != "none")
    windows = int((frames // chunk_size).sum())
    if windows == 0:
        raise ValueError(
            f"no {split!r} segment in {shard_dir} has chunk_size={chunk_size} frames or more; "
            "lower chunk_size or tokenize longer videos"
        )
    repeats = max(1, math.ceil(min_windows / windows))
    if shuffle == "local":
        ds = ds.randomize_block_order()
    ds = ds.flat_map(_segment_windows, fn_kwargs={"chunk_size": chunk_size, "repeats": repeats})
    if shuffle == "global":
        ds = ds.random_shuffle()
    return ds, windows * repeats


def iter_window_batches(
    data: Any, *, batch_size: int, shuffle_buffer: int = 0, seed: int | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of training windows from a :func:`training_window_dataset` or a worker's shard of it.

    Args:
        data: a ``ray.data.Dataset`` or ``ray.data.DataIterator`` (``ray.train.get_dataset_shard``).
        batch_size: windows per batch, ``>= 1``; a last smaller batch is dropped.
        shuffle_buffer: windows held in Ray Data's local shuffle buffer (``0`` = none); a batch is
            drawn at random from at least this many windows.
        seed: seed of the local shuffle (``None``: a new order every call).

    Yields:
        ``{"tokens": [B, chunk_size, h, w] integer array, "video_id": [B] str, "window": [B] str}``.

    Raises:
        ValueError: on ``batch_size < 1`` or ``shuffle_buffer < 0``.
    """
    if batch_size < 1 or shuffle_buffer < 0:
        raise ValueError(f"batch_size must be >= 1 and shuffle_buffer >= 0, got {batch_size}, {shuffle_buffer}")
    yield from data.iter_batches(
        batch_size=batch_size,
        drop_last=True,
        batch_format="numpy",
        local_shuffle_buffer_size=shuffle_buffer or None,
        local_shuffle_seed=seed if shuffle_buffer else None,
    )


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
    if num_frames < 1 or num_clips < 1:
        raise ValueError(f"num_frames and num_clips must be >= 1, got {num_frames}, {num_clips}")
    ds = _dataset(shard_dir)
    rows = _segment_rows(ds, split, num_frames)
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
    return _clips(ds, picks, num_frames)


def load_whole_video_clips(
    shard_dir: str, *, max_frames: int, num_clips: int, seed: int, split: str = "eval", min_frames: int = 1
) -> list[EvalClip]:
    """Held-out videos from their first frame, at most ``max_frames`` frames each (Flowception's ground
    truth: the model generates a video's length, so a clip starts where its video starts, as the
    whole-video training examples of :mod:`pipeline.whole_videos` do).

    Segments of ``split`` with at least ``min_frames`` frames, sorted by ``(video_id, segment)``, are
    visited in a seeded random order, one clip per segment; a longer segment gives its first
    ``max_frames`` frames.

    Returns:
        up to ``num_clips`` :class:`EvalClip` s whose ``tokens`` are int64 ``[T_i, h, w]`` with
        ``T_i = min(segment length, max_frames)``; ``[]`` when no segment qualifies.

    Raises:
        ValueError: ``max_frames``, ``num_clips`` or ``min_frames`` below 1.
        FileNotFoundError: if the directory holds no shards.
    """
    if min(int(max_frames), int(num_clips), int(min_frames)) < 1:
        raise ValueError(f"max_frames, num_clips and min_frames must be >= 1, got {max_frames}, {num_clips}, {min_frames}")
    ds = _dataset(shard_dir)
    rows = _segment_rows(ds, split, int(min_frames))
    order = np.random.default_rng(int(seed)).permutation(len(rows))[: int(num_clips)]
    return _clips(ds, [(rows[int(i)], 0) for i in order], int(max_frames))


def _segment_rows(ds, split: str, min_frames: int) -> list[dict[str, Any]]:
    """Metadata rows of the segments of ``split`` with at least ``min_frames`` frames, sorted by (video, segment)."""
    meta = ds.to_table(columns=_META_COLUMNS, filter=(pc.field("split") == split) & (pc.field("num_frames") >= min_frames))
    return sorted(meta.to_pylist(), key=lambda r: (r["video_id"], r["segment"]))


def _clips(ds, picks: list[tuple[dict[str, Any], int]], num_frames: int) -> list[EvalClip]:
    """One :class:`EvalClip` per ``(row, offset)``: at most ``num_frames`` frames from ``offset``."""
    import torch

    tokens = _read_segments(ds, [(r["video_id"], r["segment"]) for r, _ in picks])
    return [
        EvalClip(
            video_id=r["video_id"],
            source=r["source"],
            segment=int(r["segment"]),
            frame_start=int(r["frame_start"]) + off,
            tokens=torch.from_numpy(tokens[(r["video_id"], r["segment"])][off : off + num_frames].astype(np.int64)),
        )
        for r, off in picks
    ]


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


# ------------------------------------------------------------------------------ code statistics
def code_counts(shard_dir: str, splits: tuple[str, ...], codebook_size: int) -> dict[str, np.ndarray]:
    """How often each code occurs in the tokens of each split, in one streamed pass (plain pyarrow).

    Args:
        shard_dir: shard directory (local path or URI).
        splits: the splits to count (e.g. ``("train", "eval")``).
        codebook_size: ``K``; codes are ``0 … K − 1``.

    Returns:
        ``{split: int64 [K]}`` counts, one array per requested split.

    Raises:
        FileNotFoundError: if the directory holds no shards.
        ValueError: a token id ``>= codebook_size``.
    """
    counts = {sp: np.zeros(int(codebook_size), dtype=np.int64) for sp in splits}
    scanner = _dataset(shard_dir).scanner(columns=["split", "tokens"], filter=pc.field("split").isin(list(splits)))
    for batch in scanner.to_batches():
        split_col = batch.column("split").to_pylist()
        tokens = batch.column("tokens")
        for i, sp in enumerate(split_col):
            values = tokens[i].values.to_numpy(zero_copy_only=False)
            if values.size:
                if int(values.max()) >= codebook_size:
                    raise ValueError(f"token id {int(values.max())} >= codebook_size={codebook_size} in {shard_dir}")
                counts[sp] += np.bincount(values.astype(np.int64), minlength=codebook_size)
    return counts


def unseen_code_share(shard_dir: str, codebook_size: int, *, train_split: str = "train", eval_split: str = "eval") -> float:
    """Share of the held-out tokens whose code never occurs in the training split.

    A model is never trained to output such a code, so every one of them is a token it gets wrong;
    a high share (separate codes per video, e.g. a codebook fitted on few very different videos) means
    held-out quality cannot be learned, whatever the model.

    Returns:
        a float in ``[0, 1]``; ``nan`` when the held-out split has no tokens.

    Raises:
        FileNotFoundError, ValueError: from :func:`code_counts`.
    """
    counts = code_counts(shard_dir, (train_split, eval_split), codebook_size)
    train, held = counts[train_split], counts[eval_split]
    total = int(held.sum())
    return float(held[train == 0].sum() / total) if total else float("nan")
