"""Stage 2: decode one video into square ``uint8`` frames, cut into segments; every failure gets a reason.

What is decoded, and what is trusted
------------------------------------
Containers lie about their length (a truncated MP4 whose index is at the front declares all its
frames; decord's ``get_batch`` over such a declared range can hang in native code, decord issue 373).
So frames are read **sequentially** (decord ``VideoReader.next()``, PyAV ``container.decode``) until
the decoder reports the end or raises, and only frames that actually decoded are used; the declared
count is only recorded for the manifest. **At the first decode error the video ends there**: the frames
before it are kept (they are intact), nothing after it is used (frames after a broken packet are
concealment garbage until the next keyframe), and the video's record carries a ``warning`` saying
where and why it stopped. Both decoders agreed on every corrupt sample we tried (truncated, front-cut,
bytes overwritten mid-file), so mixing decoders inside one video is never needed.

Isolation and timeouts
----------------------
Decoding runs in a long-lived child process (``python -m pipeline.decode --worker``), one per Ray
worker, fed one video at a time over a pipe. The child reports progress at least once a second; when
no message arrives for ``decode_timeout_s`` seconds (open included) the child is killed (and started
again for the next video) and the video is listed with reason ``timeout``. A child that crashes
(segfault in native code) is handled the same way with reason ``crash``. Frames are resized inside the
child, so only ``resolution``-sized frames cross the pipe.

Decoders
--------
``decoder='decord'`` (default) with ``num_threads=1`` (parallelism comes from decoding many videos at
once), or ``'pyav'``. If the chosen decoder cannot open the file or yields no frame at all (open
error, error or timeout before the first frame), the other one is tried (``fallback=True``).

Sampling, resizing, segments
----------------------------
* ``fps``: keep the first frame of every ``1/fps`` s slot of the presentation timestamps (measured from
  the first frame), so timestamp gaps give fewer frames, never duplicated ones; never upsamples
  (``fps`` above the native rate keeps every frame and records the native rate). ``frame_stride=k``
  keeps every k-th decoded frame instead. The ``fps`` recorded is the rate of the kept frames.
* Every kept frame is centre-cropped to a square (side = the short side, sub-pixel exact for odd
  sizes) and resized to ``resolution`` (PIL bicubic with antialiasing), giving ``uint8 [R, R, 3]``.
* Kept frames are cut into segments of ``max_frames_per_segment`` frames; ``frame_start`` counts kept
  frames from the start of the video. A final segment shorter than ``min_frames`` is dropped (counted
  in ``frames_dropped``); a video with fewer than ``min_frames`` kept frames fails as ``too_short``.

Temporal split (an item with ``split="temporal"``, see :mod:`pipeline.discover`)
-------------------------------------------------------------------------------------
The cut between training frames and held-out continuation is made here, where segments are produced,
so both job layouts (decode tasks that tokenize, or decode tasks feeding tokenizer actors) get the same
rows. Of a video's ``N`` kept frames the last ``E = max(min_frames, ceil(temporal_eval_fraction * N))``
are ``eval`` and the first ``A = N - E`` are ``train`` (:func:`temporal_cut`); when ``A`` would leave a
train tail segment shorter than ``min_frames`` (``A mod max_frames_per_segment < min_frames``) the cut
moves back to the segment boundary, so no train frame is dropped and the eval part grows by that tail.
Train segments come first (``segment = 0..k-1``), eval segments follow (``k, k+1, …``); ``frame_start``
stays the kept-frame index from the start of the video, and no frame is in both splits. A video with
``A < min_frames`` cannot give both parts: it stays wholly ``train`` and its record says why
(``train_only``). ``N`` is only known at the end of the stream, but ``A`` never decreases as more frames
arrive, so full train segments below the current ``A`` are emitted at once; the frames after them are
held back (in memory up to 256 MiB per video, beyond that in an anonymous temporary file) until the
video ends.

Reasons (``category: detail``) of a failed video: ``missing``, ``empty`` (0 bytes), ``unreadable``
(not a video, truncated container, no video stream: with what both decoders said and, for
MP4/MOV, what the box structure shows), ``no_frames``, ``too_short``, ``timeout``, ``crash``.

Classes are plain Python (cosmos-curate style): :class:`DecodeStage` runs and is tested without Ray;
:func:`decode_batch` is the thin Ray Data adapter.
"""

from __future__ import annotations

import collections
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pipeline.discover import TEMPORAL

__all__ = [
    "DecodeConfig",
    "DecodeError",
    "VideoInfo",
    "FrameChunk",
    "DecodeEnd",
    "iter_video",
    "resize_center_crop",
    "FrameSampler",
    "SubprocessDecoder",
    "shared_decoder",
    "InProcessDecoder",
    "DecodeStage",
    "DecodedVideo",
    "decode_video",
    "decode_batch",
    "get_stage",
    "decoded_schema",
    "rows_to_table",
    "sniff_reason",
    "temporal_cut",
    "TEMPORAL",
]

DECODERS = ("decord", "pyav")
_HOLDBACK_MEMORY_BYTES = 256 << 20  # held-back frames of a temporal video beyond this go to a temporary file
_CHUNK_FRAMES = 16  # kept frames per message from the child
_HEARTBEAT_S = 1.0  # the child reports at least this often while decoding


# ================================================================================ configuration
@dataclass(frozen=True)
class DecodeConfig:
    """How to decode, sample and cut videos.

    Attributes:
        resolution: output side ``R`` in pixels (square frames ``uint8 [R, R, 3]``).
        fps: target frame rate in frames/s; ``None`` keeps the native rate.
        frame_stride: keep every ``k``-th decoded frame (``1`` = all); exclusive with ``fps``.
        max_frames_per_segment: longest segment, in kept frames.
        min_frames: shortest video (and shortest final segment) kept, in kept frames.
        decoder: ``"decord"`` or ``"pyav"``; the other one is the fallback.
        fallback: try the other decoder when the first yields no frame.
        decode_timeout_s: seconds without progress (open included) before a decode is killed.
        max_frames: stop after this many kept frames (``None`` = whole video); for sampling and checks.
        temporal_eval_fraction: share of a ``split="temporal"`` item's kept frames held out as ``eval``
            (its end), in ``(0, 1)``; at least ``min_frames`` frames. Other items are not cut.
    """

    resolution: int = 256
    fps: float | None = None
    frame_stride: int = 1
    max_frames_per_segment: int = 256
    min_frames: int = 8
    decoder: str = "decord"
    fallback: bool = True
    decode_timeout_s: float = 60.0
    max_frames: int | None = None
    temporal_eval_fraction: float = 0.25

    def validate(self) -> "DecodeConfig":
        """Raise ``ValueError`` naming the first setting outside its allowed range; returns ``self``."""
        if int(self.resolution) < 1:
            raise ValueError(f"resolution must be >= 1 pixel, got {self.resolution}")
        if self.fps is not None and not float(self.fps) > 0:
            raise ValueError(f"fps must be > 0 or null (native rate), got {self.fps}")
        if int(self.frame_stride) < 1:
            raise ValueError(f"frame_stride must be >= 1, got {self.frame_stride}")
        if self.fps is not None and int(self.frame_stride) != 1:
            raise ValueError(f"set either fps ({self.fps}) or frame_stride ({self.frame_stride}), not both")
        if int(self.min_frames) < 1:
            raise ValueError(f"min_frames must be >= 1, got {self.min_frames}")
        if int(self.max_frames_per_segment) < int(self.min_frames):
            raise ValueError(
                f"max_frames_per_segment ({self.max_frames_per_segment}) must be >= min_frames ({self.min_frames})"
            )
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        if not float(self.decode_timeout_s) > 0:
            raise ValueError(f"decode_timeout_s must be > 0 seconds, got {self.decode_timeout_s}")
        if self.max_frames is not None and int(self.max_frames) < 1:
            raise ValueError(f"max_frames must be >= 1 or null, got {self.max_frames}")
        if not 0.0 < float(self.temporal_eval_fraction) < 1.0:
            raise ValueError(f"temporal_eval_fraction must lie in (0, 1), got {self.temporal_eval_fraction}")
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DecodeConfig":
        """Build from a dict, ignoring keys that are not fields (e.g. a whole job config)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class DecodeError(RuntimeError):
    """A video that cannot be decoded at all; ``str(e)`` is the reason (``category: detail``)."""

    def __init__(self, reason: str, category: str = "unreadable"):
        super().__init__(reason)
        self.category = category


# ================================================================================ decoder events
@dataclass
class VideoInfo:
    """What the container says (sent after the first frame decodes, or at the end if none did).

    Attributes:
        decoder: ``"decord"`` or ``"pyav"``.
        width, height: size of the decoded frames in pixels (0 when no frame decoded).
        native_fps: the container's average frame rate (frames/s; 0 if unknown).
        declared_frames: the frame count the container declares (not trusted; -1 if unknown).
        output_fps: frame rate of the kept frames.
    """

    decoder: str
    width: int
    height: int
    native_fps: float
    declared_frames: int
    output_fps: float


@dataclass
class FrameChunk:
    """Kept frames ``uint8 [n, R, R, 3]`` (``n`` may be 0: a heartbeat) and ``decoded`` so far."""

    frames: np.ndarray
    decoded: int


@dataclass
class DecodeEnd:
    """End of a video: ``decoded`` source frames, ``kept`` frames; ``error`` is why it stopped early."""

    decoded: int
    kept: int
    error: str | None = None


# ================================================================================ pixels
def resize_center_crop(frame: np.ndarray, resolution: int) -> np.ndarray:
    """Centre-crop to a square and resize.

    Args:
        frame: ``uint8 [H, W, 3]`` RGB, any ``H, W >= 1`` (odd sizes fine).
        resolution: output side ``R``.

    Returns:
        ``uint8 [R, R, 3]``: the central ``min(H, W)`` square resized with PIL bicubic (antialiased when
        shrinking; the crop box is sub-pixel centred). A frame whose short side already is ``R`` (the
        decoders scale while decoding) is only cropped.
    """
    from PIL import Image

    h, w = frame.shape[:2]
    s = min(h, w)
    if s == resolution:
        top, left = (h - s) // 2, (w - s) // 2
        return np.ascontiguousarray(frame[top : top + s, left : left + s])
    left, top = (w - s) / 2.0, (h - s) / 2.0
    img = Image.fromarray(np.ascontiguousarray(frame))
    out = img.resize(
        (resolution, resolution), Image.Resampling.BICUBIC, box=(left, top, left + s, top + s), reducing_gap=2.0
    )
    return np.asarray(out)


class FrameSampler:
    """Decides which decoded frames are kept (see module docstring, "Sampling").

    Args:
        fps: target rate in frames/s or ``None``.
        frame_stride: keep every ``k``-th frame.
        native_fps: the container's rate (``<= 0`` if unknown).
    """

    def __init__(self, fps: float | None, frame_stride: int, native_fps: float):
        self.stride = int(frame_stride)
        self.native = float(native_fps) if native_fps and native_fps > 0 else 0.0
        self.period = None
        if fps is not None and (self.native == 0.0 or float(fps) < self.native * 0.999):
            self.period = 1.0 / float(fps)
        self.output_fps = (
            float(fps) if self.period is not None else (self.native / self.stride if self.native else 0.0)
        )
        self._t0: float | None = None
        self._last_slot = -1

    def keep(self, index: int, t: float | None) -> bool:
        """Whether decoded frame ``index`` (presentation time ``t`` in s, ``None`` if unknown) is kept."""
        if self.period is None:
            return index % self.stride == 0
        if t is None:
            t = index / self.native if self.native else float(index)
        if self._t0 is None:
            self._t0 = t
        slot = math.floor((t - self._t0) / self.period + 1e-6)
        if slot > self._last_slot:
            self._last_slot = slot
            return True
        return False


# ================================================================================ sources
def _short_error(e: BaseException, limit: int = 240) -> str:
    """One-line error text: decord's ``[hh:mm:ss] file.cc:123:`` prefixes and stack traces removed."""
    text = str(e) or type(e).__name__
    text = text.split("Stack trace", 1)[0]
    text = re.sub(r"\[\d\d:\d\d:\d\d\]\s*\S+:\d+:\s*", "", text)
    text = " ".join(text.split())
    if "Check failed:" in text:
        text = text[text.rindex("Check failed:") :]
    return f"{type(e).__name__}: {text}"[:limit]


def _scaled_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """``(W', H')`` with the short side ``resolution`` and the aspect ratio kept (rounded)."""
    if width >= height:
        return max(resolution, round(width * resolution / height)), resolution
    return resolution, max(resolution, round(height * resolution / width))


def _probe_size(path: str) -> tuple[int, int] | None:
    """Coded ``(width, height)`` of the first video stream from the container header (PyAV), or ``None``."""
    try:
        import av

        with av.open(path) as c:
            if c.streams.video:
                cc = c.streams.video[0].codec_context
                if cc.width > 0 and cc.height > 0:
                    return int(cc.width), int(cc.height)
    except Exception:
        return None
    return None


def _decord_source(path: str, resolution: int) -> Iterator[Any]:
    """Yield ``(native_fps, declared_frames, width, height)`` once, then ``(frame uint8 [H', W', 3], t or None)``.

    When the container header gives the frame size, decord's scaler (FFmpeg swscale, bicubic, area-aware
    when shrinking) resizes to short side ``resolution`` while decoding, several times cheaper than
    converting full-size frames to RGB and resizing them afterwards. decord 0.6 sometimes returns a
    wrongly laid out array for scaled frames (seen: 4 "channels" for a VP8-alpha clip at 48x32), so the
    first scaled frame is checked and, if it is not ``[H', W', 3]``, the file is decoded at full size.
    """
    import decord

    def open_reader(kwargs):
        try:
            return decord.VideoReader(path, num_threads=1, ctx=decord.cpu(0), **kwargs)
        except Exception as e:  # decord raises RuntimeError / DECORDError
            raise DecodeError(f"decord: {_short_error(e)}") from None

    size = _probe_size(path)
    first = None
    if size is not None:
        w, h = _scaled_size(size[0], size[1], resolution)
        try:
            vr = open_reader({"width": w, "height": h})
            first = vr.next().asnumpy()
        except Exception:  # scaled open or first frame failed: let the plain path report the error
            first = None
        if first is None or first.shape != (h, w, 3):
            first = None
    if first is None:
        vr = open_reader({})
    try:
        width, height = size if size is not None else (0, 0)
        yield float(vr.get_avg_fps() or 0.0), int(len(vr)), width, height
        i = 0
        shape = None if first is None else first.shape
        while True:
            if i == 0 and first is not None:
                frame = first
            else:
                try:
                    frame = vr.next().asnumpy()
                except StopIteration:
                    return
            if shape is None:
                shape = frame.shape
            if frame.ndim != 3 or frame.shape != shape or frame.shape[2] != 3:
                raise ValueError(f"decord returned a frame of shape {frame.shape} after frames of shape {shape}")
            try:
                t = float(vr.get_frame_timestamp(i)[0])
            except Exception:
                t = None
            yield frame, t
            i += 1
    finally:
        del vr


def _pyav_source(path: str, resolution: int) -> Iterator[Any]:
    """Like :func:`_decord_source` with PyAV (single-threaded decoding, swscale bicubic resize)."""
    import av

    try:
        container = av.open(path)
    except Exception as e:
        raise DecodeError(f"pyav: {_short_error(e)}") from None
    try:
        if not container.streams.video:
            raise DecodeError("pyav: the file has no video stream")
        stream = container.streams.video[0]
        stream.thread_count = 1
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        cc = stream.codec_context
        yield float(rate) if rate else 0.0, int(stream.frames or -1), int(cc.width or 0), int(cc.height or 0)
        for frame in container.decode(stream):
            w, h = _scaled_size(frame.width, frame.height, resolution)
            arr = frame.to_ndarray(width=w, height=h, format="rgb24", interpolation="BICUBIC")
            yield arr, (float(frame.time) if frame.time is not None else None)
    finally:
        container.close()


def iter_video(path: str, cfg: DecodeConfig, decoder: str) -> Iterator[VideoInfo | FrameChunk | DecodeEnd]:
    """Decode one local file in this process: the core of every decoder of the pipeline.

    Yields a :class:`VideoInfo` (after the first frame), :class:`FrameChunk` s of kept, resized frames
    (at least one per second, possibly empty), and a final :class:`DecodeEnd`.

    Args:
        path: local file path.
        cfg: sampling/resizing settings (``max_frames`` stops early).
        decoder: ``"decord"`` or ``"pyav"``.

    Raises:
        DecodeError: if the file cannot be opened as a video. Errors after opening end the stream with
            ``DecodeEnd.error`` set instead.
    """
    res = int(cfg.resolution)
    source = _decord_source(path, res) if decoder == "decord" else _pyav_source(path, res)
    try:
        native_fps, declared, width, height = next(source)
    except StopIteration:  # pragma: no cover - sources always yield their header first
        raise DecodeError(f"{decoder}: no stream header") from None
    sampler = FrameSampler(cfg.fps, cfg.frame_stride, native_fps)
    buf: list[np.ndarray] = []
    decoded = kept = 0
    error = None
    last = time.monotonic()
    try:
        for frame, t in source:
            if decoded == 0:
                width, height = (width, height) if width and height else (frame.shape[1], frame.shape[0])
                yield VideoInfo(decoder, int(width), int(height), native_fps, declared, sampler.output_fps)
            if sampler.keep(decoded, t):
                buf.append(resize_center_crop(frame, res))
                kept += 1
            decoded += 1
            now = time.monotonic()
            if len(buf) >= _CHUNK_FRAMES or now - last >= _HEARTBEAT_S:
                yield FrameChunk(np.stack(buf) if buf else np.empty((0, res, res, 3), np.uint8), decoded)
                buf, last = [], now
            if cfg.max_frames is not None and kept >= int(cfg.max_frames):
                break
    except DecodeError:
        raise
    except Exception as e:  # decode error mid-stream: keep what decoded before it
        error = _short_error(e)
    finally:
        source.close()
    if decoded == 0:
        yield VideoInfo(decoder, int(width), int(height), native_fps, declared, sampler.output_fps)
    if buf:
        yield FrameChunk(np.stack(buf), decoded)
    yield DecodeEnd(decoded, kept, error)


# ================================================================================ diagnosis
def sniff_reason(path: str) -> str | None:
    """A human explanation of why a file that no decoder opens is not a usable video, or ``None``.

    Recognises text files, files without a known container signature (e.g. the start cut off), and
    for MP4/MOV walks the top-level boxes: a box that runs past the end of the file (cut short while
    writing or copying) or a missing ``moov`` index box.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(4096)
            if not head:
                return "empty file (0 bytes)"
            printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head)
            if printable / len(head) > 0.95:
                return "looks like a text file, not a video"
            if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
                f.seek(0)
                pos, types = 0, []
                while pos + 8 <= size:
                    f.seek(pos)
                    hdr = f.read(16)
                    box = int.from_bytes(hdr[:4], "big")
                    typ = hdr[4:8].decode("latin-1")
                    if box == 1 and len(hdr) >= 16:
                        box = int.from_bytes(hdr[8:16], "big")
                    elif box == 0:
                        box = size - pos
                    if box < 8:
                        return f"MP4/MOV box structure is broken at byte {pos} (box '{typ}' of size {box})"
                    types.append(typ)
                    if pos + box > size:
                        have = "" if "moov" in types else "; its 'moov' index box is missing"
                        return (
                            f"truncated MP4/MOV: box '{typ}' at byte {pos} declares {box} bytes but only "
                            f"{size - pos} remain (file cut short){have}"
                        )
                    pos += box
                if "moov" not in types:
                    return "MP4/MOV without a 'moov' index box (incomplete file)"
                return None
            known = (head[:4] == b"RIFF", head[:4] == b"\x1a\x45\xdf\xa3", head[4:8] == b"ftyp", head[:3] == b"FLV")
            if not any(known):
                return "no known container signature at the start of the file (start cut off, or not a video)"
    except OSError as e:
        return f"cannot read the file: {e}"
    return None


# ================================================================================ isolation
class _Timeout(Exception):
    pass


class _Crash(Exception):
    pass


class InProcessDecoder:
    """Runs :func:`iter_video` in this process (no timeout protection): for plain loops and tests."""

    def decode(self, path: str, cfg: DecodeConfig, decoder: str) -> Iterator[VideoInfo | FrameChunk | DecodeEnd]:
        yield from iter_video(path, cfg, decoder)

    def close(self) -> None:
        pass


class SubprocessDecoder:
    """Runs :func:`iter_video` in a long-lived child process with a progress timeout.

    The child is started on first use and restarted after a timeout or crash; it exits by itself when
    this process goes away (its request pipe closes). Not thread-safe: one video at a time.
    :func:`shared_decoder` gives the one instance of a process, used by every :class:`DecodeStage`.

    Args:
        timeout_s: default seconds without any message from the child (open included) before it is
            killed; ``decode`` uses ``cfg.decode_timeout_s`` when given a config.
        recycle_after: start a fresh child after this many videos (bounds any slow leak in native code).
    """

    def __init__(self, timeout_s: float = 60.0, recycle_after: int = 500):
        self.timeout_s = float(timeout_s)
        self.recycle_after = int(recycle_after)
        self._videos = 0
        self._proc: subprocess.Popen | None = None
        self._send: Connection | None = None
        self._recv: Connection | None = None

    # ------------------------------------------------------------------ lifecycle
    def _start(self) -> None:
        parent_r, child_w = os.pipe()
        child_r, parent_w = os.pipe()
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("OMP_NUM_THREADS", "1")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.decode", "--worker", str(child_r), str(child_w)],
            pass_fds=(child_r, child_w),
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=root,
        )
        os.close(child_r)
        os.close(child_w)
        self._send = Connection(parent_w, readable=False)
        self._recv = Connection(parent_r, writable=False)

    def close(self) -> None:
        """Stop the child (kill if it does not exit at once)."""
        proc, self._proc = self._proc, None
        for conn in (self._send, self._recv):
            if conn is not None:
                try:
                    conn.close()
                except OSError:
                    pass
        self._send = self._recv = None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    # ------------------------------------------------------------------ decoding
    def decode(self, path: str, cfg: DecodeConfig, decoder: str) -> Iterator[VideoInfo | FrameChunk | DecodeEnd]:
        """Same events as :func:`iter_video`, from the child.

        Raises:
            DecodeError: open failure (from the child), ``timeout`` or ``crash`` (category set).
        """
        if self._videos >= self.recycle_after:
            self.close()
        if self._proc is None or self._proc.poll() is not None:
            self.close()
            self._start()
            self._videos = 0
        self._videos += 1
        assert self._send is not None and self._recv is not None
        timeout_s = float(cfg.decode_timeout_s) if cfg.decode_timeout_s else self.timeout_s
        finished = False
        decoded = 0
        try:
            self._send.send(("decode", path, asdict(cfg), decoder))
            while True:
                if not self._recv.poll(timeout_s):
                    raise _Timeout()
                try:
                    kind, payload = self._recv.recv()
                except (EOFError, OSError) as e:
                    raise _Crash(str(e)) from None
                if kind == "open_error":
                    finished = True
                    raise DecodeError(payload)
                if kind == "fatal":
                    raise _Crash(payload)
                if isinstance(payload, FrameChunk):
                    decoded = payload.decoded
                yield payload
                if isinstance(payload, DecodeEnd):
                    finished = True
                    return
        except _Timeout:
            self.close()
            raise DecodeError(
                f"{decoder}: no progress for {timeout_s:g} s (decode_timeout_s) after {decoded} decoded "
                "frames; the decoder process was killed",
                category="timeout",
            ) from None
        except _Crash as e:
            code = self._proc.poll() if self._proc is not None else None
            self.close()
            raise DecodeError(
                f"{decoder}: the decoder process died after {decoded} decoded frames (exit code {code}) {e}".strip(),
                category="crash",
            ) from None
        finally:
            if not finished:  # consumer stopped early or an error: the child is mid-video, restart it
                self.close()


_SHARED: SubprocessDecoder | None = None


def shared_decoder() -> SubprocessDecoder:
    """The decoder child process of this (Ray worker) process, shared by every stage and config."""
    global _SHARED
    if _SHARED is None:
        _SHARED = SubprocessDecoder()
    return _SHARED


def _worker_main(fd_in: int, fd_out: int) -> None:
    """The child process: decode requests until the pipe closes."""
    try:
        import decord

        decord.logging.set_level(decord.logging.ERROR)
    except Exception:  # pragma: no cover
        pass
    recv = Connection(fd_in, writable=False)
    send = Connection(fd_out, readable=False)
    while True:
        try:
            _, path, cfg_dict, decoder = recv.recv()
        except (EOFError, OSError):
            return
        try:
            for event in iter_video(path, DecodeConfig(**cfg_dict), decoder):
                send.send(("event", event))
        except DecodeError as e:
            send.send(("open_error", str(e)))
        except BaseException as e:  # noqa: BLE001 - report anything, then go on with the next video
            send.send(("fatal", _short_error(e)))


# ================================================================================ the stage
@dataclass
class DecodedVideo:
    """All kept frames of one video in memory (for tokenizer fitting and checks; the job streams).

    Attributes:
        frames: ``uint8 [N, R, R, 3]`` (``N = 0`` when failed).
        fps: frame rate of the kept frames.
        record: the video record (see :meth:`DecodeStage.process`).
    """

    frames: np.ndarray
    fps: float
    record: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.record["status"] == "ok"


def _eval_len(num_frames: int, fraction: float, min_frames: int) -> int:
    """Frames of the eval part of a temporal video of ``num_frames`` kept frames (before the boundary shift)."""
    return max(int(min_frames), math.ceil(float(fraction) * int(num_frames) - 1e-9))


def temporal_cut(num_frames: int, fraction: float, min_frames: int, max_frames_per_segment: int) -> int | None:
    """Where a temporally split video's eval part starts (see module docstring, "Temporal split").

    Args:
        num_frames: ``N``, kept frames of the video.
        fraction: ``temporal_eval_fraction`` in ``(0, 1)``.
        min_frames: shortest part (and segment), in kept frames.
        max_frames_per_segment: segment length ``S``.

    Returns:
        ``A``: frames ``[0, A)`` are ``train``, ``[A, N)`` ``eval`` (``A >= min_frames``, ``N - A >=
        min_frames``, and ``A mod S`` is 0 or ``>= min_frames``); ``None`` when the video is too short to
        give both parts (it stays wholly ``train``). Non-decreasing in ``num_frames`` (where not ``None``).
    """
    n, m, s = int(num_frames), int(min_frames), int(max_frames_per_segment)
    a = n - _eval_len(n, fraction, m)
    if a < m:
        return None
    tail = a % s
    return a - tail if 0 < tail < m else a


class _FrameBuffer:
    """FIFO of frames ``uint8 [R, R, 3]``; beyond ``memory_bytes`` in memory the oldest frames go to an
    anonymous temporary file (deleted when closed or collected), so holding back the eval part of a long
    video does not grow the decode task's memory without bound."""

    def __init__(self, memory_bytes: int | None = None):
        self.limit = int(_HOLDBACK_MEMORY_BYTES if memory_bytes is None else memory_bytes)
        self.mem: collections.deque[np.ndarray] = collections.deque()
        self.mem_frames = self.mem_bytes = 0
        self.file: Any = None
        self.file_read = self.file_end = 0  # byte offsets of the unread frames in the file
        self.shape: tuple[int, ...] | None = None
        self.spilled = 0  # frames that went through the file

    def __len__(self) -> int:
        fb = int(np.prod(self.shape)) if self.shape else 1
        return self.mem_frames + (self.file_end - self.file_read) // fb

    def push(self, frames: np.ndarray) -> None:
        if not len(frames):
            return
        self.shape = self.shape or tuple(frames.shape[1:])
        frames = np.ascontiguousarray(frames)
        self.mem.append(frames)
        self.mem_frames += len(frames)
        self.mem_bytes += frames.nbytes
        while self.mem_bytes > self.limit and self.mem:
            chunk = self.mem.popleft()
            self.mem_frames -= len(chunk)
            self.mem_bytes -= chunk.nbytes
            if self.file is None:
                self.file = tempfile.TemporaryFile(prefix="maskflow-holdback-")
            self.file.seek(self.file_end)
            self.file.write(chunk.tobytes())
            self.file_end += chunk.nbytes
            self.spilled += len(chunk)

    def pop(self, k: int) -> np.ndarray:
        """The ``k`` oldest frames, ``uint8 [k, R, R, 3]`` (``k <= len(self)``)."""
        shape = self.shape or (0, 0, 3)
        out: list[np.ndarray] = []
        if k > 0 and self.file_end > self.file_read:
            fb = int(np.prod(shape))
            n = min(k, (self.file_end - self.file_read) // fb)
            arr = np.empty((n, *shape), np.uint8)
            self.file.seek(self.file_read)
            got = self.file.readinto(memoryview(arr).cast("B"))
            if got != arr.nbytes:  # pragma: no cover - a full or failing temp disk
                raise OSError(f"holdback file: read {got} of {arr.nbytes} bytes")
            self.file_read += arr.nbytes
            if self.file_read == self.file_end:
                self.file.seek(0)
                self.file.truncate()
                self.file_read = self.file_end = 0
            out.append(arr)
            k -= n
        while k > 0:
            chunk = self.mem[0]
            if len(chunk) <= k:
                self.mem.popleft()
            else:
                self.mem[0], chunk = chunk[k:], chunk[:k]
            self.mem_frames -= len(chunk)
            self.mem_bytes -= chunk.nbytes
            out.append(chunk)
            k -= len(chunk)
        return np.concatenate(out) if len(out) > 1 else (out[0] if out else np.empty((0, *shape), np.uint8))

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


@dataclass
class _Segmenter:
    """Cuts a stream of kept frames into segments of at most ``max_len`` frames, numbered ``0, 1, …``
    across splits; ``frame_start`` is the kept-frame index (dropped frames included)."""

    max_len: int
    parts: list[np.ndarray] = field(default_factory=list)
    n: int = 0  # frames of the open segment
    start: int = 0  # kept-frame index of the open segment's first frame
    emitted_frames: int = 0
    emitted: int = 0
    dropped: int = 0
    per_split: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, frames: np.ndarray, split: str) -> Iterator[tuple[str, int, int, np.ndarray]]:
        """Yield ``(split, segment, frame_start, frames)`` for every segment that became full."""
        i = 0
        while i < len(frames):
            take = min(self.max_len - self.n, len(frames) - i)
            self.parts.append(frames[i : i + take])
            self.n += take
            i += take
            if self.n == self.max_len:
                yield self._pop(split)

    def _pop(self, split: str) -> tuple[str, int, int, np.ndarray]:
        frames = self.parts[0] if len(self.parts) == 1 else np.concatenate(self.parts)
        seg = (split, self.emitted, self.start, frames)
        per = self.per_split.setdefault(split, {"segments": 0, "frames": 0})
        per["segments"] += 1
        per["frames"] += self.n
        self.emitted += 1
        self.emitted_frames += self.n
        self.start += self.n
        self.parts, self.n = [], 0
        return seg

    def close(self, min_len: int, split: str) -> Iterator[tuple[str, int, int, np.ndarray]]:
        """End the open (partial) segment: yield it if it has ``>= min_len`` frames, else drop it (counted)."""
        if self.n == 0:
            return
        if self.n >= min_len:
            yield self._pop(split)
            return
        self.dropped += self.n
        self.start += self.n
        self.parts, self.n = [], 0


class _Cutter:
    """Routes one video's kept frames into segments: all of them to the item's split, or, for a
    ``split="temporal"`` item, the head to ``train`` and the continuation to ``eval`` (module docstring)."""

    def __init__(self, split: str, cfg: DecodeConfig):
        self.split = split
        self.temporal = split == TEMPORAL
        self.min_len = int(cfg.min_frames)
        self.max_len = int(cfg.max_frames_per_segment)
        self.fraction = float(cfg.temporal_eval_fraction)
        self.seg = _Segmenter(self.max_len)
        self.buffer = _FrameBuffer() if self.temporal else None
        self.received = self.released = 0
        self.eval_start: int | None = None
        self.train_only: str | None = None

    @property
    def emitted(self) -> int:
        return self.seg.emitted

    def add(self, frames: np.ndarray) -> Iterator[tuple[str, int, int, np.ndarray]]:
        """Yield the segments that are complete (and, under temporal, certainly ``train``) after ``frames``."""
        if not self.temporal:
            yield from self.seg.add(frames, self.split)
            return
        assert self.buffer is not None
        self.buffer.push(frames)
        self.received += len(frames)
        # the train part only grows with N: full segments below the current train length are train for sure
        a = self.received - _eval_len(self.received, self.fraction, self.min_len)
        certain = max(0, a) // self.max_len * self.max_len
        if certain > self.released:
            head = self.buffer.pop(certain - self.released)
            self.released = certain
            yield from self.seg.add(head, "train")

    def finish(self) -> Iterator[tuple[str, int, int, np.ndarray]]:
        """Yield the remaining segments once the video has ended."""
        if not self.temporal:
            yield from self.seg.close(self.min_len, self.split)
            return
        assert self.buffer is not None
        try:
            n = self.received
            cut = temporal_cut(n, self.fraction, self.min_len, self.max_len)
            if cut is None:
                self.train_only = (
                    f"{n} kept frames cannot give a train part and an eval part (max(min_frames, "
                    f"ceil({self.fraction:g} x frames)) frames) of at least min_frames={self.min_len} frames each"
                )
                yield from self.seg.add(self.buffer.pop(n - self.released), "train")
                yield from self.seg.close(self.min_len, "train")
                return
            self.eval_start = cut
            yield from self.seg.add(self.buffer.pop(cut - self.released), "train")
            yield from self.seg.close(self.min_len, "train")  # 0 or >= min_frames frames: never dropped
            self.released = cut
            yield from self.seg.add(self.buffer.pop(n - cut), "eval")
            yield from self.seg.close(self.min_len, "eval")
            self.released = n
        finally:
            self.buffer.close()

    def close(self) -> None:
        if self.buffer is not None:
            self.buffer.close()

    def record(self) -> dict[str, Any]:
        """``segments``, ``frames``, ``frames_dropped``, ``splits`` (``{split: {segments, frames}}``) and,
        for a temporal item, ``eval_frame_start`` and ``train_only`` (the reason, or ``None``)."""
        out: dict[str, Any] = {
            "segments": self.seg.emitted,
            "frames": self.seg.emitted_frames,
            "frames_dropped": self.seg.dropped,
            "splits": {k: dict(v) for k, v in self.seg.per_split.items()},
        }
        if self.temporal:
            out["eval_frame_start"] = self.eval_start
            out["train_only"] = self.train_only
            if self.buffer is not None and self.buffer.spilled:
                out["holdback_spilled_frames"] = self.buffer.spilled
        return out


class DecodeStage:
    """Decode stage: one :class:`~pipeline.discover.VideoItem` dict in, segment rows and a record out.

    Args:
        cfg: a :class:`DecodeConfig` (validated).
        isolate: decode in a child process with a timeout (:class:`SubprocessDecoder`, the default)
            or in this process (:class:`InProcessDecoder`, no hang protection).

    Usage (no Ray needed)::

        stage = DecodeStage(DecodeConfig(resolution=64)); stage.setup()
        for row in stage.process({"video_id": "v", "source": "/data/v.mp4", "split": "train"}): ...
        stage.teardown()
    """

    def __init__(self, cfg: DecodeConfig, *, isolate: bool = True):
        self.cfg = cfg.validate()
        self.isolate = isolate
        self._decoder: SubprocessDecoder | InProcessDecoder | None = None

    def setup(self) -> None:
        """Pick the decoder: the process's shared child (:func:`shared_decoder`, started on the first
        video) or in-process decoding."""
        if self._decoder is None:
            self._decoder = shared_decoder() if self.isolate else InProcessDecoder()

    def teardown(self) -> None:
        """Forget the decoder (the shared child stays up for the next stage of this process)."""
        self._decoder = None

    # ------------------------------------------------------------------ one video
    def process(self, item: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Decode one video.

        Args:
            item: ``{"video_id", "source", "split"}`` (a :class:`~pipeline.discover.VideoItem` dict). With
                ``split="temporal"`` the video is cut in time (module docstring, "Temporal split"); any
                other value is copied to every segment row.

        Yields:
            segment rows ``{"kind": "segment", video_id, source, split, segment (int), frame_start (int),
            num_frames (int), fps (float), frames: uint8 [T, R, R, 3]}`` as soon as each is complete
            (``split`` is ``"train"``/``"eval"`` for a temporal item), then exactly one record
            ``{"kind": "video", video_id, source, split (the item's), "record": {...}}`` whose ``record`` has
            ``status`` (``"ok"``/``"failed"``), ``reason``, ``category``, ``warning``, ``segments``,
            ``frames`` (written), ``splits`` (``{split: {"segments", "frames"}}`` of the written segments),
            ``frames_decoded``, ``frames_kept``, ``frames_dropped``, ``decoder``, ``width``, ``height``,
            ``native_fps``, ``declared_frames``, ``fps``, ``decode_s``; for a temporal item also
            ``eval_frame_start`` (``None`` when not cut) and ``train_only`` (why the video stayed wholly
            ``train``, else ``None``). Never raises for a bad file.
        """
        from pipeline.fs import local_copy, resolve
        import pyarrow.fs as pafs

        self.setup()
        t0 = time.perf_counter()
        base = {k: item[k] for k in ("video_id", "source", "split")}
        record: dict[str, Any] = {"status": "failed", "segments": 0, "frames": 0, "frames_decoded": 0, "frames_dropped": 0}
        local, is_tmp = None, False
        try:
            loc = resolve(item["source"])
            info = loc.fs.get_file_info(loc.path)
            if info.type == pafs.FileType.NotFound:
                raise DecodeError(f"missing: {item['source']} does not exist", "missing")
            if info.type != pafs.FileType.File:
                raise DecodeError(f"unreadable: {item['source']} is not a file", "unreadable")
            record["bytes"] = int(info.size or 0)
            if not info.size:
                raise DecodeError("empty: the file has 0 bytes", "empty")
            local, is_tmp = local_copy(loc, suffix=Path(loc.path).suffix)
            yield from self._decode_file(local, base, record)
        except DecodeError as e:
            record.update(status="failed", reason=str(e), category=e.category)
        except Exception as e:  # storage errors and the like: the job goes on
            record.update(status="failed", reason=f"unreadable: {_short_error(e)}", category="unreadable")
        finally:
            if is_tmp and local:
                try:
                    os.remove(local)
                except OSError:
                    pass
        record["decode_s"] = round(time.perf_counter() - t0, 3)
        record["decode_end"] = round(time.time(), 3)
        record.setdefault("reason", None)
        record.setdefault("category", None)
        record.setdefault("warning", None)
        yield {"kind": "video", **base, "record": record}

    def _decode_file(self, path: str, base: dict[str, Any], record: dict[str, Any]) -> Iterator[dict[str, Any]]:
        cfg = self.cfg
        order = [cfg.decoder] + ([d for d in DECODERS if d != cfg.decoder] if cfg.fallback else [])
        problems: list[str] = []
        categories: list[str] = []
        assert self._decoder is not None
        for decoder in order:
            seg = _Cutter(str(base["split"]), cfg)
            vinfo: VideoInfo | None = None
            end: DecodeEnd | None = None
            stopped: str | None = None
            kept = decoded = 0
            try:
                for ev in self._decoder.decode(path, cfg, decoder):
                    if isinstance(ev, VideoInfo):
                        vinfo = ev
                    elif isinstance(ev, FrameChunk):
                        decoded = ev.decoded
                        kept += len(ev.frames)
                        if len(ev.frames):
                            for split, s, start, frames in seg.add(ev.frames):
                                yield self._segment_row(base, split, s, start, frames, vinfo)
                    else:
                        end = ev
            except DecodeError as e:
                if kept == 0 and seg.emitted == 0:
                    seg.close()
                    problems.append(str(e))
                    categories.append(e.category)
                    continue  # nothing produced: try the other decoder
                stopped = f"{e.category}: {e}"
            if kept == 0 and stopped is None:
                detail = f"decode error before the first frame: {end.error}" if end and end.error else (
                    "the video stream holds no decodable frame"
                )
                seg.close()
                problems.append(f"{decoder}: {detail}")
                categories.append("no_frames")
                continue
            # ---- this decoder produced frames: finish with it
            if end is not None and end.error:
                stopped = f"decode error after {end.decoded} frames: {end.error}"
            for split, s, start, frames in seg.finish():
                yield self._segment_row(base, split, s, start, frames, vinfo)
            record.update(
                decoder=decoder,
                width=vinfo.width if vinfo else 0,
                height=vinfo.height if vinfo else 0,
                native_fps=round(vinfo.native_fps, 4) if vinfo else 0.0,
                declared_frames=vinfo.declared_frames if vinfo else -1,
                fps=round(vinfo.output_fps, 4) if vinfo else 0.0,
                frames_decoded=end.decoded if end is not None else decoded,
                frames_kept=kept,
                **seg.record(),
            )
            if stopped:
                declared = record["declared_frames"]
                record["warning"] = f"partial: {stopped}; kept the {kept} frames before it" + (
                    f" (the container declares {declared})" if declared and declared > 0 else ""
                )
            if seg.emitted == 0:
                record.update(
                    status="failed",
                    category="too_short",
                    reason=f"too_short: {kept} frames decoded, fewer than min_frames={cfg.min_frames}",
                )
            else:
                record.update(status="ok", reason=None, category=None)
            return
        # ---- no decoder produced a frame
        for category in ("no_frames", "timeout", "crash", "unreadable"):
            if category in categories:
                break
        sniff = sniff_reason(path) if category in ("unreadable", "no_frames") else None
        raise DecodeError(f"{category}: " + (f"{sniff}; " if sniff else "") + "; ".join(problems), category)

    @staticmethod
    def _segment_row(
        base: dict[str, Any], split: str, segment: int, start: int, frames: np.ndarray, vinfo: VideoInfo | None
    ) -> dict[str, Any]:
        return {
            "kind": "segment",
            **base,
            "split": split,
            "segment": int(segment),
            "frame_start": int(start),
            "num_frames": int(len(frames)),
            "fps": float(vinfo.output_fps) if vinfo else 0.0,
            "frames": frames,
        }


def decode_video(source: str, cfg: DecodeConfig, *, stage: DecodeStage | None = None) -> DecodedVideo:
    """Decode a whole video (or its first ``cfg.max_frames`` kept frames) into memory.

    Args:
        source: local path or URI.
        cfg: decode settings; ``min_frames``/``max_frames_per_segment`` only affect the record.
        stage: a set-up :class:`DecodeStage` to reuse (its child process), else a temporary one.

    Returns:
        :class:`DecodedVideo` (``frames`` is ``uint8 [0, R, R, 3]`` when the video failed).
    """
    own = stage is None
    stage = stage or DecodeStage(cfg)
    try:
        parts, fps, record = [], 0.0, {}
        for row in stage.process({"video_id": "", "source": str(source), "split": ""}):
            if row["kind"] == "segment":
                parts.append(row["frames"])
                fps = row["fps"]
            else:
                record = row["record"]
        r = int(cfg.resolution)
        frames = np.concatenate(parts) if parts else np.empty((0, r, r, 3), np.uint8)
        return DecodedVideo(frames, float(fps or record.get("fps") or 0.0), record)
    finally:
        if own:
            stage.teardown()


# ================================================================================ Ray Data adapter
def decoded_schema():
    """Arrow schema of the decode stage's output: segment rows carry ``frames`` as raw ``uint8`` bytes
    (``large_binary``) with ``frame_shape = [T, R, R, 3]``; ``kind="video"`` rows carry the JSON ``record``."""
    import pyarrow as pa

    return pa.schema(
        [
            ("video_id", pa.string()),
            ("source", pa.string()),
            ("split", pa.string()),
            ("kind", pa.string()),
            ("segment", pa.int32()),
            ("frame_start", pa.int32()),
            ("num_frames", pa.int32()),
            ("fps", pa.float32()),
            ("frames", pa.large_binary()),
            ("frame_shape", pa.list_(pa.int32())),
            ("record", pa.string()),
        ]
    )


def rows_to_table(rows: list[dict[str, Any]]):
    """Decode-stage rows → one ``pyarrow.Table`` with :func:`decoded_schema`."""
    import pyarrow as pa

    cols: dict[str, list] = {name: [] for name in decoded_schema().names}
    for r in rows:
        seg = r["kind"] == "segment"
        cols["video_id"].append(r["video_id"])
        cols["source"].append(r["source"])
        cols["split"].append(r["split"])
        cols["kind"].append(r["kind"])
        cols["segment"].append(r["segment"] if seg else -1)
        cols["frame_start"].append(r["frame_start"] if seg else -1)
        cols["num_frames"].append(r["num_frames"] if seg else 0)
        cols["fps"].append(r["fps"] if seg else float(r["record"].get("fps") or 0.0))
        cols["frames"].append(np.ascontiguousarray(r["frames"]).tobytes() if seg else b"")
        cols["frame_shape"].append(list(r["frames"].shape) if seg else [])
        cols["record"].append(json.dumps(r["record"], default=str) if not seg else None)
    return pa.Table.from_pydict(cols, schema=decoded_schema())


_STAGES: dict[DecodeConfig, DecodeStage] = {}


def get_stage(cfg: DecodeConfig) -> DecodeStage:
    """The :class:`DecodeStage` for ``cfg`` of this process (created and set up once, then reused, so a
    Ray worker keeps one decoder child process across all the tasks it runs)."""
    stage = _STAGES.get(cfg)
    if stage is None:
        stage = _STAGES[cfg] = DecodeStage(cfg)
        stage.setup()
    return stage


def decode_batch(batch, config: dict[str, Any]):
    """Ray Data ``map_batches`` UDF (``batch_format="pyarrow"``): video items in, decoded tables out.

    A generator: yields one table per segment (and one per video record) so frames stream downstream
    without holding whole videos. The :class:`DecodeStage` (and its decoder child process) is cached per
    Ray worker process and reused by every task that lands there. (With no GPU the job decodes and
    tokenizes in one step instead: :func:`pipeline.tokenize.decode_tokenize_batch`.)

    Args:
        batch: ``pyarrow.Table`` of :class:`~pipeline.discover.VideoItem` rows.
        config: :class:`DecodeConfig` fields.
    """
    stage = get_stage(DecodeConfig.from_dict(config))
    for item in batch.to_pylist():
        for row in stage.process(item):
            yield rows_to_table([row])


if __name__ == "__main__":  # the decoder child process
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        # run the *importable* module's loop so that pickled events name ``pipeline.decode`` classes
        from pipeline.decode import _worker_main as _main

        _main(int(sys.argv[2]), int(sys.argv[3]))
    else:  # pragma: no cover - manual use
        print("usage: python -m pipeline.decode --worker FD_IN FD_OUT", file=sys.stderr)
        sys.exit(2)
