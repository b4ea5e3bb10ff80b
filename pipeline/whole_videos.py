"""Whole, variable-length videos from token shards: Flowception's training examples (``dynamics=flowception``).

Flowception learns a video's length (the insertion rate of the last frame says how many frames are
still missing at the end), so a training example must end where its video ends, unlike MaskFlow's
fixed windows (:func:`pipeline.readers.training_window_dataset`). A segment of ``T`` frames is cut at
a random offset ``o`` in ``[0, T mod k]`` into pieces ``[o, o + k), [o + k, o + 2k), …`` of
``k = max_frames`` frames and a last, shorter piece ending at the segment's end (``T - o`` not a
multiple of ``k``); a segment of ``T <= k`` frames is one example of ``T`` frames. A full piece teaches
"the video goes on" (the next window of block-wise sampling continues it), a short one where it ends.
Every example is padded to ``k`` frames with the mask token id ``K`` (the padding convention of
:mod:`maskflow.flowception`), so batches keep one shape and the training loop is the MaskFlow one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow.compute as pc

from pipeline.readers import SHUFFLE_MODES, _dataset, read_token_dataset, row_tokens

__all__ = ["video_pieces", "segment_lengths", "video_dataset", "length_histogram"]


def video_pieces(num_frames: int, max_frames: int, offset: int = 0) -> list[tuple[int, int]]:
    """``(start, end)`` frame ranges of the examples cut from a segment of ``num_frames`` frames.

    Args:
        num_frames: ``T >= 1``.
        max_frames: ``k >= 1``.
        offset: first frame ``o`` (only used when ``T > k``), in ``[0, T mod k]``.

    Returns:
        Consecutive ranges: full pieces of ``k`` frames from ``o``, then the remainder up to ``T``.
    """
    if num_frames <= max_frames:
        return [(0, num_frames)]
    pieces, start = [], offset
    while start < num_frames:
        pieces.append((start, min(start + max_frames, num_frames)))
        start += max_frames
    return pieces


def segment_lengths(shard_dir: str, split: str, max_frames: int | None = None) -> list[int]:
    """Lengths of the examples a split gives at offset 0 (the "real" length distribution), from metadata.

    Args:
        shard_dir: shard directory (local or URI).
        split: ``"train"`` or ``"eval"``.
        max_frames: ``k``; ``None`` gives the whole segments' lengths.

    Returns:
        One length per example, sorted.
    """
    table = _dataset(shard_dir).to_table(columns=["num_frames"], filter=pc.field("split") == split)
    frames = [int(n) for n in table.column("num_frames").to_pylist()]
    if max_frames is None:
        return sorted(frames)
    return sorted(e - s for n in frames for s, e in video_pieces(n, int(max_frames)))


def length_histogram(lengths: list[int]) -> dict[str, int]:
    """``{"length": count}`` in increasing length order (JSON-friendly keys)."""
    values, counts = np.unique(np.asarray(lengths, dtype=np.int64), return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, counts)}


def _segment_videos(row: dict[str, Any], max_frames: int, repeats: int, mask_id: int) -> list[dict[str, Any]]:
    tokens = row_tokens(row)  # [T, h, w]
    n = tokens.shape[0]
    out = []
    for _ in range(repeats):
        offset = np.random.randint(0, n % max_frames + 1) if n > max_frames else 0
        for start, end in video_pieces(n, max_frames, offset):
            piece = np.full((max_frames, *tokens.shape[1:]), mask_id, dtype=np.int64)
            piece[: end - start] = tokens[start:end]
            out.append({
                "tokens": piece,
                "video_id": str(row["video_id"]),
                "window": f"{row['video_id']}:{row['segment']}:{start}",
                "num_frames": np.int32(end - start),
            })
    return out


def video_dataset(
    shard_dir: str, split: str, max_frames: int, mask_id: int, *, min_videos: int = 1, shuffle: str = "local"
):
    """Ray Dataset of whole videos (pieces of at most ``max_frames`` frames) padded with ``mask_id``.

    The counterpart of :func:`pipeline.readers.training_window_dataset` (same ``shuffle`` modes, same
    ``repeats`` rule to make an epoch at least ``min_videos`` examples long, same row fields plus
    ``num_frames``), consumed by :func:`pipeline.readers.iter_window_batches`.

    Args:
        shard_dir: shard directory (local or URI).
        split: the split to read (``"train"``).
        max_frames: ``k``: the backbone's window; rows' ``tokens`` are int64 ``[k, h, w]``.
        mask_id: ``K``, written into the padding frames.
        min_videos: the fewest examples an epoch may hold.
        shuffle: ``"local"``, ``"global"`` or ``"none"``.

    Returns:
        ``(dataset, videos_per_epoch)``.

    Raises:
        ValueError: an empty split or an unknown ``shuffle``.
    """
    if shuffle not in SHUFFLE_MODES:
        raise ValueError(f"shuffle must be one of {SHUFFLE_MODES}, got {shuffle!r}")
    per_pass = len(segment_lengths(shard_dir, split, max_frames))
    if per_pass == 0:
        raise ValueError(f"no {split!r} segment in {shard_dir}; tokenize some videos first")
    repeats = max(1, math.ceil(min_videos / per_pass))
    ds = read_token_dataset(shard_dir, split=split, shuffle_files=shuffle != "none")
    if shuffle == "local":
        ds = ds.randomize_block_order()
    ds = ds.flat_map(_segment_videos, fn_kwargs={"max_frames": int(max_frames), "repeats": repeats, "mask_id": int(mask_id)})
    if shuffle == "global":
        ds = ds.random_shuffle()
    return ds, per_pass * repeats
