"""Stage 3: frames → VQ codes, in a stateful stage run by a Ray Data actor pool.

:class:`TokenizeStage` loads the tokenizer **once per actor** from its saved directory (local path or
URI; remote directories are downloaded to a temporary directory first) and then turns decoded tables
(:func:`pipeline.decode.decoded_schema`) into stream tables (:func:`pipeline.writer.stream_schema`):
segment rows get ``tokens``/``token_shape``/``tokenizer``/``codebook_size`` and lose their frames;
video records pass through.

Frames of all segment rows of a call are encoded ``batch_size`` frames at a time under
``torch.inference_mode()``; on a GPU (an actor given ``num_gpus``) the tokenizer is moved to CUDA and
runs under ``torch.autocast(dtype=bfloat16)`` unless ``precision="fp32"``. The Ray wiring is only::

    ds.map_batches(TokenizeStage, fn_constructor_kwargs={...}, batch_format="pyarrow", batch_size=4,
                   compute=ray.data.ActorPoolStrategy(size=N), num_gpus=g, num_cpus=c)

With no GPU the job uses :class:`DecodeTokenizeStage` instead: decode tasks that tokenize their own segments.
"""

from __future__ import annotations

import logging
import tempfile
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.writer import SHARD_COLUMNS, stream_schema, tokens_to_arrow

__all__ = ["TokenizeStage", "DecodeTokenizeStage", "decode_tokenize_batch", "load_tokenizer_any", "localize_dir", "tokenizer_kind", "pick_device"]

log = logging.getLogger(__name__)
PRECISIONS = ("auto", "bf16", "fp32")


def tokenizer_kind(directory: str) -> str | None:
    """``kind`` recorded in ``<directory>/tokenizer.json`` (local directory), or ``None``."""
    import json
    import os

    path = os.path.join(directory, "tokenizer.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f).get("kind")


def _load_local(directory: str, **kwargs: Any):
    """Open a saved tokenizer directory with :func:`maskflow.tokenizers.load_tokenizer`.

    ``tokenizer.json`` may also name a class (``"class": "package.module:Class"``, loaded with
    ``Class.load(directory)``): the hook for tokenizers outside ``maskflow.tokenizers`` (the tests use
    it for a tiny stub). ``kwargs`` go to the kind's ``load`` (``device``, ``autocast``, ``batch_size``
    for ``diffusers_vq``) and are ignored by class-hook tokenizers.
    """
    import importlib
    import json
    import os

    meta_path = os.path.join(directory, "tokenizer.json")
    meta = {}
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
    if meta.get("class"):
        module, _, name = str(meta["class"]).partition(":")
        return getattr(importlib.import_module(module), name).load(directory)
    from maskflow.tokenizers import load_tokenizer

    return load_tokenizer(directory, **kwargs)


def localize_dir(directory: str) -> str:
    """A local directory with the content of ``directory`` (downloaded to a temp dir when it is a URI)."""
    from pipeline.fs import download_dir, resolve

    loc = resolve(directory)
    if loc.is_local:
        return loc.path
    return str(download_dir(loc, tempfile.mkdtemp(prefix="maskflow-tokenizer-")))


def load_tokenizer_any(directory: str, **kwargs: Any):
    """Load a saved tokenizer from a local path or a URI (downloaded to a temporary directory first).

    Args:
        directory: directory written by ``VQTokenizer.save``.
        **kwargs: passed to the kind's ``load`` (e.g. ``device="cpu"`` for ``diffusers_vq``).

    Raises:
        FileNotFoundError / ValueError: missing or foreign directory (from the tokenizer's loader).
    """
    return _load_local(localize_dir(directory), **kwargs)


def pick_device(device: str = "auto"):
    """``torch.device``: ``"auto"`` = CUDA when this process sees a GPU (a Ray actor with ``num_gpus``), else CPU."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class TokenizeStage:
    """Stateful tokenizer stage (one instance per Ray actor, or used directly in a plain loop).

    Args:
        tokenizer_dir: directory written by ``VQTokenizer.save`` (local path or URI).
        batch_size: frames per ``encode`` call.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, …
        precision: ``"auto"`` (bf16 on CUDA, fp32 on CPU), ``"bf16"`` or ``"fp32"``.
        num_threads: torch CPU threads of this process (``None`` leaves the default).

    Raises:
        ValueError: on ``batch_size < 1`` or an unknown precision.
    """

    def __init__(
        self,
        tokenizer_dir: str,
        *,
        batch_size: int = 64,
        device: str = "auto",
        precision: str = "auto",
        num_threads: int | None = None,
    ):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1 frame, got {batch_size}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.tokenizer_dir = str(tokenizer_dir)
        self.batch_size = int(batch_size)
        self.device_name = device
        self.precision = precision
        self.num_threads = num_threads
        self.tokenizer = None
        self.frames_done = 0
        self.setup()

    # ------------------------------------------------------------------ lifecycle
    def setup(self) -> None:
        """Load the tokenizer (once) and move it to the device."""
        if self.tokenizer is not None:
            return
        import torch

        if self.num_threads:
            torch.set_num_threads(int(self.num_threads))
        self.device = pick_device(self.device_name)
        self.use_bf16 = self.device.type == "cuda" and self.precision in ("auto", "bf16")
        local = localize_dir(self.tokenizer_dir)
        if tokenizer_kind(local) == "diffusers_vq":  # it moves itself and runs its own bf16 autocast
            tok = _load_local(local, device=str(self.device), autocast=self.use_bf16, batch_size=self.batch_size)
        else:
            tok = _load_local(local)
            if self.device.type != "cpu":
                mover = getattr(tok, "to", None)
                if callable(mover):
                    tok = mover(self.device) or tok
        self.tokenizer = tok
        log.info("tokenizer %s on %s (%s)", tok.tokenizer_id, self.device, "bf16" if self.use_bf16 else "fp32")

    # ------------------------------------------------------------------ codec
    def encode(self, frames: np.ndarray) -> np.ndarray:
        """Codes of frames.

        Args:
            frames: ``uint8 [N, R, R, 3]``, ``R = tokenizer.resolution``.

        Returns:
            ``int64 [N, h, w]`` (NumPy, CPU).
        """
        import torch

        tok = self.tokenizer
        out = np.empty((len(frames), tok.latent_size, tok.latent_size), dtype=np.int64)
        with torch.inference_mode():
            for s in range(0, len(frames), self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(frames[s : s + self.batch_size]))
                if self.device.type != "cpu":
                    x = x.to(self.device, non_blocking=True)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
                    codes = tok.encode(x)
                out[s : s + len(x)] = codes.cpu().numpy()
        self.frames_done += len(frames)
        return out

    def process(self, batch: pa.Table) -> pa.Table:
        """Decoded table → stream table (see module docstring).

        Args:
            batch: ``pyarrow.Table`` with :func:`pipeline.decode.decoded_schema`.

        Returns:
            ``pyarrow.Table`` with :func:`pipeline.writer.stream_schema` (same rows, same order).

        Raises:
            ValueError: if a segment's frames do not have the tokenizer's resolution.
        """
        tok = self.tokenizer
        k = int(tok.codebook_size)
        kinds = batch.column("kind").to_pylist()
        shapes = batch.column("frame_shape").to_pylist()
        frames_col = batch.column("frames")
        seg_frames = []
        for i, kind in enumerate(kinds):
            if kind != "segment":
                continue
            shape = tuple(shapes[i])
            if len(shape) != 4 or shape[1:] != (tok.resolution, tok.resolution, 3):
                raise ValueError(
                    f"frames of {batch.column('video_id')[i]} have shape {shape}, the tokenizer expects "
                    f"[T, {tok.resolution}, {tok.resolution}, 3] (resolution mismatch)"
                )
            buf = frames_col[i].as_buffer()
            seg_frames.append(np.frombuffer(buf, dtype=np.uint8).reshape(shape))
        all_codes = self.encode(np.concatenate(seg_frames)) if seg_frames else np.empty((0, tok.latent_size, tok.latent_size))
        codes, pos, j = [], 0, 0
        for kind in kinds:
            if kind == "segment":
                t = len(seg_frames[j])
                codes.append(all_codes[pos : pos + t])
                pos, j = pos + t, j + 1
            else:
                codes.append(np.empty((0, tok.latent_size, tok.latent_size), dtype=np.int64))
        tokens, token_shape = tokens_to_arrow(codes, k)
        n = batch.num_rows
        cols = {
            "video_id": batch.column("video_id"),
            "source": batch.column("source"),
            "split": batch.column("split"),
            "segment": batch.column("segment"),
            "frame_start": batch.column("frame_start"),
            "num_frames": batch.column("num_frames"),
            "fps": batch.column("fps"),
            "tokens": tokens,
            "token_shape": token_shape,
            "tokenizer": pa.array([tok.tokenizer_id] * n, pa.string()),
            "codebook_size": pa.array([k] * n, pa.int32()),
            "kind": batch.column("kind"),
            "record": batch.column("record"),
        }
        schema = stream_schema(k)
        assert tuple(schema.names[: len(SHARD_COLUMNS)]) == SHARD_COLUMNS
        return pa.Table.from_arrays([cols[name] for name in schema.names], schema=schema)

    __call__ = process


class DecodeTokenizeStage:
    """Decode and tokenize in one stage: the job's layout when no GPU is used.

    One :class:`~pipeline.decode.DecodeStage` (with its decoder child process) and one
    :class:`TokenizeStage` (the tokenizer loaded once). Frames never leave the process: only the codes
    go downstream. Runs without Ray (``stage(table)``); in the job :func:`decode_tokenize_batch` keeps
    one per Ray worker process, so every decode task that lands there reuses it.

    Args:
        decode_config: :class:`~pipeline.decode.DecodeConfig` fields (a dict, as Ray ships it).
        tokenizer_dir, batch_size, precision, num_threads: as for :class:`TokenizeStage` (device: auto).

    Raises:
        ValueError: an invalid decode setting or tokenizer option.
    """

    def __init__(self, decode_config: dict[str, Any], tokenizer_dir: str, *, batch_size: int = 64,
                 precision: str = "auto", num_threads: int | None = None):  # fmt: skip
        from pipeline.decode import DecodeConfig, get_stage

        self.decode = get_stage(DecodeConfig.from_dict(decode_config))
        self.tokenize = TokenizeStage(tokenizer_dir, batch_size=batch_size, precision=precision, num_threads=num_threads)

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        """Decode and tokenize every video of ``batch``.

        Args:
            batch: ``pyarrow.Table`` of :class:`~pipeline.discover.VideoItem` rows
                (``video_id``, ``source``, ``split``).

        Yields:
            one-row ``pyarrow.Table`` s with :func:`pipeline.writer.stream_schema`, as each is ready: a
            segment row per segment (``tokens`` uint16 ``[T, h, w]`` codes of ``T`` frames, ``h = w =
            resolution / patch factor``), then the video's record row. A bad video gives only its
            record (``status="failed"`` and the reason), never an exception.

        Raises:
            ValueError: decoded frames whose size differs from the tokenizer's resolution (a config error).
        """
        from pipeline.decode import rows_to_table

        for item in batch.to_pylist():
            for row in self.decode.process(item):
                yield self.tokenize.process(rows_to_table([row]))


_DECODE_TOKENIZE: dict[tuple, DecodeTokenizeStage] = {}


def decode_tokenize_batch(batch: pa.Table, decode_config: dict[str, Any], tokenize: dict[str, Any]) -> Iterator[pa.Table]:
    """Ray Data ``map_batches`` UDF (``batch_format="pyarrow"``): :class:`DecodeTokenizeStage` on
    ``batch``, with the stage built once per worker process (per decode and tokenizer settings) and
    reused by every task that lands there.

    Args:
        batch: ``pyarrow.Table`` of video items (see :meth:`DecodeTokenizeStage.__call__`).
        decode_config: :class:`~pipeline.decode.DecodeConfig` fields.
        tokenize: keyword arguments of :class:`DecodeTokenizeStage` (``tokenizer_dir`` required).

    Yields:
        what :meth:`DecodeTokenizeStage.__call__` yields.
    """
    key = (tuple(sorted(decode_config.items())), tuple(sorted(tokenize.items())))
    stage = _DECODE_TOKENIZE.get(key)
    if stage is None:
        stage = _DECODE_TOKENIZE[key] = DecodeTokenizeStage(decode_config, **tokenize)
    yield from stage(batch)


def count_segments(table: pa.Table) -> int:
    """Segment rows in a decoded or stream table."""
    return int(pc.sum(pc.equal(table.column("kind"), "segment")).as_py() or 0)
