r"""The CPU default tokenizer: k-means vector quantisation of non-overlapping pixel patches.

Pretrained VQ weights cannot be downloaded on every machine (``DESIGN.md``, "Runtime defaults"), so
this tokenizer is fitted on the input videos themselves, on a CPU, in about a minute, behind the same
:class:`~maskflow.tokenizers.base.VQTokenizer` interface as the diffusers ``VQModel``.

Model. A frame ``uint8 [H, W, 3]`` is cut into non-overlapping ``f × f`` patches (``f = patch_size``,
the downsampling factor; 8 like SD-VQGAN f8, so 256 px → 32×32 tokens and 64 px → 8×8 tokens). Each
patch is a vector :math:`x \in [0, 1]^{D}`, :math:`D = 3f^2`. A codebook of ``K`` centroids
:math:`c_k` is fitted by k-means (Lloyd, 1982) with greedy k-means++ seeding (Arthur & Vassilvitskii,
2007), so that

.. math:: \mathrm{encode}(x) = \arg\min_k \lVert x - c_k \rVert_2^2, \qquad \mathrm{decode}(k) = c_k ,

which (locally) minimises the pixel MSE, i.e. maximises PSNR, over the fitting patches for a codebook of size
``K``. Encoding is exact nearest-centroid search in pixel space, done in bounded-memory chunks.
Optionally (``pca_dim``) the Lloyd iterations run in a PCA subspace and the codebook is then refined by
full-dimensional Lloyd steps; on a CPU this saves little for ``f = 8`` (the ``[patches, K]`` distance
matrix, not ``D``, dominates the cost), so it is off by default. Empty clusters are re-seeded with the
patches that are worst represented, so every code is used on the fitting data.

Everything is deterministic given ``seed`` (all randomness flows through one ``torch.Generator``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange

from maskflow.tokenizers.base import VQTokenizer

__all__ = [
    "PatchKMeansTokenizer",
    "KMeansResult",
    "kmeans",
    "frames_to_patches",
    "patches_to_frames",
]

log = logging.getLogger(__name__)

TOKENIZER_JSON = "tokenizer.json"
CODEBOOK_FILE = "codebook.pt"
FORMAT_VERSION = 1
_DIST_BUDGET = 1 << 22  # floats in one [rows, K] distance block (16 MiB): bounds memory, stays cache-friendly


# ============================================================================ patches <-> frames
def frames_to_patches(frames: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut frames into non-overlapping patches, flattened in ``(row, column, channel)`` order.

    Args:
        frames: ``[N, H, W, 3]`` (any dtype), ``H`` and ``W`` multiples of ``patch_size``.
        patch_size: ``f``, the patch side in pixels.

    Returns:
        ``[N, H/f, W/f, f*f*3]``, same dtype.
    """
    return rearrange(frames, "n (h p1) (w p2) c -> n h w (p1 p2 c)", p1=patch_size, p2=patch_size)


def patches_to_frames(patches: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Inverse of :func:`frames_to_patches`: ``[N, h, w, f*f*3]`` → ``[N, h*f, w*f, 3]``."""
    return rearrange(patches, "n h w (p1 p2 c) -> n (h p1) (w p2) c", p1=patch_size, p2=patch_size)


# ============================================================================ k-means
@dataclass
class KMeansResult:
    """Outcome of :func:`kmeans`.

    Attributes:
        centroids: float32 ``[K, D]``.
        inertia: mean squared distance of a point to its centroid (per point, summed over ``D``).
        iterations: Lloyd iterations run (PCA-space plus full-space refinement).
        reseeded: how many times an empty cluster was re-seeded in total.
        empty: clusters still empty at the end (> 0 only with fewer distinct points than ``K``).
        seconds: wall time of the fit.
    """

    centroids: torch.Tensor
    inertia: float
    iterations: int
    reseeded: int
    empty: int
    seconds: float


def _chunk_rows(k: int) -> int:
    return max(256, _DIST_BUDGET // max(k, 1))


def nearest_centroid(
    x: torch.Tensor, centroids: torch.Tensor, c_sq: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Index of and squared distance to the nearest centroid, in bounded-memory chunks.

    Uses :math:`\lVert x - c\rVert^2 = \lVert x\rVert^2 - 2 x^\top c + \lVert c\rVert^2` with one matmul per
    chunk of rows; ties go to the lowest index.

    Args:
        x: float32 ``[M, D]``.
        centroids: float32 ``[K, D]``.
        c_sq: optional precomputed ``[K]`` squared norms of the centroids.

    Returns:
        ``(index int64 [M], squared distance float32 [M])`` (distances clamped at 0).
    """
    if c_sq is None:
        c_sq = centroids.square().sum(1)
    idx = torch.empty(len(x), dtype=torch.long, device=x.device)
    dist = torch.empty(len(x), dtype=torch.float32, device=x.device)
    ct = centroids.t().contiguous()
    step = _chunk_rows(len(centroids))
    with torch.autocast(x.device.type, enabled=False):  # a bf16 search would pick wrong codes
        for s in range(0, len(x), step):
            xb = x[s : s + step]
            d = torch.addmm(c_sq.unsqueeze(0), xb, ct, beta=1.0, alpha=-2.0)  # (rows, K): ||c||² - 2 x·c
            m, i = d.min(dim=1)
            idx[s : s + step] = i
            dist[s : s + step] = (m + xb.square().sum(1)).clamp_min_(0.0)
    return idx, dist


def _kmeanspp(x: torch.Tensor, k: int, g: torch.Generator, n_trials: int | None = None) -> torch.Tensor:
    """Greedy k-means++ seeding: each new centre is the best of ``n_trials`` D²-sampled candidates."""
    n = len(x)
    n_trials = n_trials or 2 + int(math.log(k))
    x_sq = x.square().sum(1)
    centers = torch.empty(k, x.shape[1], dtype=x.dtype)
    first = int(torch.randint(n, (1,), generator=g))
    centers[0] = x[first]
    closest = (x_sq - 2 * x @ x[first] + x_sq[first]).clamp_min_(0)
    for c in range(1, k):
        total = float(closest.sum())
        if total <= 0:  # fewer distinct points than k: pad with random points (stay empty, reported later)
            centers[c:] = x[torch.randint(n, (k - c,), generator=g)]
            break
        cand = torch.multinomial(closest, n_trials, replacement=True, generator=g)
        d_cand = (x_sq.unsqueeze(0) - 2 * x[cand] @ x.t() + x_sq[cand].unsqueeze(1)).clamp_min_(0)  # (trials, n)
        d_cand = torch.minimum(d_cand, closest.unsqueeze(0))
        best = int(d_cand.sum(1).argmin())
        centers[c] = x[cand[best]]
        closest = d_cand[best]
    return centers


def _lloyd(
    x: torch.Tensor, centroids: torch.Tensor, iters: int, tol: float, progress: Any = None
) -> tuple[torch.Tensor, float, int, int]:
    """Lloyd iterations with re-seeding of empty clusters; returns (centroids, inertia, iters, reseeded)."""
    k = len(centroids)
    prev = math.inf
    reseeded = 0
    inertia = math.inf
    it = 0
    for it in range(1, iters + 1):
        idx, dist = nearest_centroid(x, centroids)
        inertia = float(dist.double().mean())
        counts = torch.bincount(idx, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, idx, x)
        centroids = sums / counts.clamp_min(1).unsqueeze(1).to(x.dtype)
        empty = torch.nonzero(counts == 0).flatten()
        if len(empty):
            # the worst-represented points become the new centres of the empty clusters
            far = torch.topk(dist, min(len(empty), len(x))).indices
            centroids[empty[: len(far)]] = x[far]
            reseeded += len(far)
        if progress is not None:
            progress.set_postfix(inertia=f"{inertia:.5f}", empty=len(empty))
            progress.update(1)
        log.debug("k-means iteration %d: inertia %.6f, %d empty clusters", it, inertia, len(empty))
        if not len(empty) and prev - inertia <= tol * inertia:
            break
        prev = inertia
    return centroids, inertia, it, reseeded


def _fix_empty(x: torch.Tensor, centroids: torch.Tensor, rounds: int = 8) -> tuple[torch.Tensor, int, int, float]:
    """Make sure every cluster owns at least one point (when the data allows): re-seed and re-average."""
    k = len(centroids)
    reseeded = 0
    idx, dist = nearest_centroid(x, centroids)
    counts = torch.bincount(idx, minlength=k)
    for _ in range(rounds):
        empty = torch.nonzero(counts == 0).flatten()
        if not len(empty) or float(dist.max()) == 0.0:
            break
        far = torch.topk(dist, min(len(empty), len(x))).indices
        centroids = centroids.clone()
        centroids[empty[: len(far)]] = x[far]
        reseeded += len(far)
        idx, dist = nearest_centroid(x, centroids)
        counts = torch.bincount(idx, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, idx, x)
        keep = counts > 0
        centroids[keep] = sums[keep] / counts[keep].unsqueeze(1).to(x.dtype)
        idx, dist = nearest_centroid(x, centroids)
        counts = torch.bincount(idx, minlength=k)
    return centroids, reseeded, int((counts == 0).sum()), float(dist.double().mean())


def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    iters: int = 12,
    refine_iters: int = 2,
    pca_dim: int | None = None,
    tol: float = 1e-4,
    init_samples: int = 32768,
    seed: int = 0,
    progress: bool = False,
) -> KMeansResult:
    r"""Deterministic k-means of the rows of ``x`` (greedy k-means++ seeding, Lloyd iterations).

    With ``pca_dim`` set, the iterations run in the top-``pca_dim`` PCA subspace (centred, from the
    ``D × D`` covariance); the centroids are then lifted to the full space as cluster means and refined
    by ``refine_iters`` full-dimensional Lloyd steps. Empty clusters are re-seeded with the points
    farthest from their centroid, at every step and once more at the end. The cost per iteration is
    one ``[M, K]`` distance matrix, computed in chunks of bounded memory.

    Args:
        x: float32 ``[M, D]`` data points, ``M >= k``.
        k: number of clusters, ``>= 1``.
        iters: maximum Lloyd iterations (stops earlier when the relative inertia decrease falls below
            ``tol``).
        refine_iters: full-dimensional Lloyd iterations after the PCA-space ones (only with ``pca_dim``).
        pca_dim: subspace dimension; ``None`` or ``>= D`` runs every iteration in the full space.
        tol: relative inertia decrease that counts as converged.
        init_samples: points used for the k-means++ seeding (a seeded random subset when ``M`` is larger).
        seed: seed of the only random generator used.
        progress: show a tqdm progress bar over the iterations.

    Returns:
        a :class:`KMeansResult`.

    Raises:
        ValueError: if ``x`` is not a 2-D float tensor, has fewer than ``k`` rows, or an argument is out of range.
    """
    if x.ndim != 2 or not x.is_floating_point():
        raise ValueError(f"kmeans: x must be a float [M, D] tensor, got {x.dtype} {tuple(x.shape)}")
    if k < 1:
        raise ValueError(f"kmeans: k must be >= 1, got {k}")
    if len(x) < k:
        raise ValueError(f"kmeans: need at least k={k} points, got {len(x)}")
    if iters < 1 or refine_iters < 0:
        raise ValueError(f"kmeans: iters must be >= 1 and refine_iters >= 0, got {iters}, {refine_iters}")
    t0 = time.perf_counter()
    x = x.float().contiguous()
    g = torch.Generator().manual_seed(int(seed))
    d = x.shape[1]

    if pca_dim is not None and pca_dim < d:
        mean = x.mean(0)
        xc = x - mean
        cov = (xc.t() @ xc).double() / len(x)
        _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
        basis = vecs[:, -pca_dim:].flip(1).float().contiguous()  # (D, pca_dim)
        z = xc @ basis
    else:
        z = x

    init_idx = torch.randperm(len(z), generator=g)[:init_samples] if len(z) > init_samples else None
    seeds = _kmeanspp(z if init_idx is None else z[init_idx], k, g)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=iters + refine_iters, desc=f"k-means K={k}", unit="it")
    try:
        cz, _, n_it, reseeded = _lloyd(z, seeds, iters, tol, bar)
        if z is not x:
            idx, _ = nearest_centroid(z, cz)  # lift: full-space means of the PCA-space clusters
            counts = torch.bincount(idx, minlength=k)
            sums = torch.zeros(k, d).index_add_(0, idx, x)
            centroids = sums / counts.clamp_min(1).unsqueeze(1)
            empty = counts == 0
            if empty.any():
                centroids[empty] = mean + cz[empty] @ basis.t()
            if refine_iters:
                centroids, _, n_ref, r2 = _lloyd(x, centroids, refine_iters, 0.0, bar)
                n_it, reseeded = n_it + n_ref, reseeded + r2
        else:
            centroids = cz
    finally:
        if bar is not None:
            bar.close()
    centroids, r3, n_empty, inertia = _fix_empty(x, centroids)
    if n_empty:
        log.warning("k-means: %d of %d codes are unused: the data has fewer distinct patches than K", n_empty, k)
    return KMeansResult(
        centroids=centroids.contiguous(),
        inertia=inertia,
        iterations=n_it,
        reseeded=reseeded + r3,
        empty=n_empty,
        seconds=time.perf_counter() - t0,
    )


# ============================================================================ patch sampling
class _PatchReservoir:
    """Uniform, seeded subsample of at most ``capacity`` patches from a stream of frame batches.

    Every patch gets a random key; the ``capacity`` smallest keys are kept (compacted lazily), so memory
    stays ``O(capacity)`` and the sample does not depend on how the stream is chunked.
    """

    def __init__(self, capacity: int | None, g: torch.Generator):
        self.capacity, self.g = capacity, g
        self.patches: list[torch.Tensor] = []
        self.keys: list[torch.Tensor] = []
        self.size = 0
        self.seen = 0

    def add(self, patches: torch.Tensor) -> None:
        keys = torch.rand(len(patches), generator=self.g)
        self.patches.append(patches)
        self.keys.append(keys)
        self.size += len(patches)
        self.seen += len(patches)
        if self.capacity is not None and self.size > 2 * self.capacity:
            self._compact()

    def _compact(self) -> None:
        p, k = torch.cat(self.patches), torch.cat(self.keys)
        if self.capacity is not None and len(p) > self.capacity:
            keep = torch.topk(k, self.capacity, largest=False).indices.sort().values
            p, k = p[keep], k[keep]
        self.patches, self.keys, self.size = [p], [k], len(p)

    def result(self) -> torch.Tensor:
        self._compact()
        return self.patches[0] if self.patches else torch.empty(0, 0, dtype=torch.uint8)


# ============================================================================ tokenizer
class PatchKMeansTokenizer(VQTokenizer):
    """Patch k-means VQ tokenizer (``kind = "patch_kmeans"``), fitted with :meth:`fit`.

    Args:
        centroids: float ``[K, f*f*3]`` codebook in ``[0, 1]`` (patch pixels in ``(row, column, RGB)`` order).
        patch_size: ``f``, the downsampling factor.
        resolution: square frame size ``H = W`` in pixels, a multiple of ``patch_size``.
        fit_info: JSON-serialisable description of how the codebook was fitted (part of :attr:`config`).

    Raises:
        ValueError: if the codebook shape does not match ``patch_size`` or ``resolution`` is not a multiple
            of ``patch_size``.
    """

    kind = "patch_kmeans"

    def __init__(
        self,
        centroids: torch.Tensor,
        *,
        patch_size: int,
        resolution: int,
        fit_info: dict[str, Any] | None = None,
    ):
        c = torch.as_tensor(centroids)
        if patch_size < 1 or resolution < patch_size or resolution % patch_size:
            raise ValueError(
                f"patch_kmeans: resolution ({resolution}) must be a positive multiple of patch_size ({patch_size})"
            )
        if c.ndim != 2 or c.shape[1] != patch_size * patch_size * 3 or len(c) < 1 or not c.is_floating_point():
            raise ValueError(
                f"patch_kmeans: centroids must be float [K, {patch_size * patch_size * 3}] for patch_size "
                f"{patch_size}, got {c.dtype} {tuple(c.shape)}"
            )
        self.centroids = c.detach().float().cpu().contiguous()
        self.patch_size = int(patch_size)
        self.resolution = int(resolution)
        self.latent_size = self.resolution // self.patch_size
        self.codebook_size = len(self.centroids)
        self.fit_info = dict(fit_info or {})
        self.fit_stats: dict[str, Any] | None = None  # set by fit(): iterations, inertia, seconds, ...
        self._device = torch.device("cpu")
        self._search = (self.centroids, self.centroids.square().sum(1))  # codebook (and norms) on _device
        self._table = (self.centroids * 255.0).round_().clamp_(0, 255).to(torch.uint8)  # decode lookup
        self._digest = hashlib.sha256(self.centroids.numpy().tobytes()).hexdigest()[:16]

    def to(self, device: str | torch.device) -> PatchKMeansTokenizer:
        """Run the nearest-centroid search of :meth:`encode` on ``device`` (e.g. CUDA); returns ``self``.

        Codes are the same up to float rounding at exact near-ties; the tokenizer id does not change.
        """
        self._device = torch.device(device)
        c = self.centroids.to(self._device)
        self._search = (c, c.square().sum(1))
        return self

    # ----------------------------------------------------------------- identity
    @property
    def config(self) -> dict[str, Any]:
        """``kind``, ``codebook_size``, ``patch_size``, ``resolution``, ``latent_size``, the fit settings and
        a digest of the codebook (so two tokenizers with equal configs give equal codes)."""
        return {
            "kind": self.kind,
            "codebook_size": self.codebook_size,
            "patch_size": self.patch_size,
            "resolution": self.resolution,
            "latent_size": self.latent_size,
            "codebook_sha256": self._digest,
            "fit": self.fit_info,
        }

    def __repr__(self) -> str:
        return (
            f"PatchKMeansTokenizer(K={self.codebook_size}, patch_size={self.patch_size}, "
            f"resolution={self.resolution}, latent_size={self.latent_size}, id={self.tokenizer_id})"
        )

    # ------------------------------------------------------------------ codec
    def encode(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Nearest-centroid codes of every ``f × f`` patch (exact search in pixel space).

        Args:
            frames: ``uint8 [N, H, W, 3]`` RGB, ``H = W = resolution``.

        Returns:
            ``int64 [N, h, w]`` in ``[0, codebook_size)``, ``h = w = resolution // patch_size``, on the CPU.

        Raises:
            ValueError: if the shape or dtype is wrong.
        """
        x = self.check_frames(frames)
        n = len(x)
        out = torch.empty(n, self.latent_size, self.latent_size, dtype=torch.long)
        per_frame = self.latent_size**2
        step = max(1, _chunk_rows(self.codebook_size) // per_frame)
        centroids, c_sq = self._search
        for s in range(0, n, step):
            p = frames_to_patches(x[s : s + step].to(self._device), self.patch_size).float().div_(255.0)
            idx, _ = nearest_centroid(p.reshape(-1, p.shape[-1]), centroids, c_sq)
            out[s : s + step] = idx.view(p.shape[:3]).cpu()
        return out

    def decode(self, indices: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Frames made of the codebook patches.

        Args:
            indices: integer ``[N, h, w]`` in ``[0, codebook_size]`` (the mask id ``K`` decodes as code 0).

        Returns:
            ``uint8 [N, H, W, 3]`` on the CPU.

        Raises:
            ValueError: on a wrong shape, a float dtype, or an index outside ``[0, K]``.
        """
        idx = self.check_indices(indices).cpu()
        return patches_to_frames(self._table[idx], self.patch_size).contiguous()

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        frames: np.ndarray | torch.Tensor | Iterable[np.ndarray | torch.Tensor],
        *,
        codebook_size: int = 1024,
        patch_size: int = 8,
        resolution: int | None = None,
        iters: int = 12,
        refine_iters: int = 2,
        pca_dim: int | None = None,
        max_patches: int | None = 262_144,
        seed: int = 0,
        progress: bool = False,
    ) -> PatchKMeansTokenizer:
        """Fit the codebook on frames (the videos to be tokenized themselves).

        Patches from all frames are pooled; when there are more than ``max_patches`` a seeded uniform
        subsample is kept (memory stays ``O(max_patches)`` for an iterable of any length).

        Args:
            frames: ``uint8 [N, H, W, 3]`` (numpy or torch), or an iterable of such batches (e.g. one per
                video); ``H = W = resolution`` in every batch.
            codebook_size: ``K``, the number of codes, ``>= 1``.
            patch_size: ``f``, the downsampling factor; ``resolution`` must be a multiple of it.
            resolution: expected frame size; ``None`` takes it from the first batch.
            iters: maximum Lloyd iterations (see :func:`kmeans`).
            refine_iters: full-dimensional Lloyd iterations after the PCA-space ones.
            pca_dim: PCA dimension for the Lloyd iterations; ``None`` = full ``f*f*3``.
            max_patches: cap on the patches used for fitting; ``None`` = all.
            seed: seed of every random choice (subsampling, seeding).
            progress: show a progress bar.

        Returns:
            the fitted tokenizer; ``fit_info`` records the settings, the number of frames and patches,
            the final inertia and the fit time in seconds.

        Raises:
            ValueError: on frames that are not ``uint8 [N, R, R, 3]`` with a common ``R`` (multiple of
                ``patch_size``), no frames, fewer patches than ``codebook_size``, or invalid settings.
        """
        if codebook_size < 1:
            raise ValueError(f"patch_kmeans: codebook_size must be >= 1, got {codebook_size}")
        if patch_size < 1:
            raise ValueError(f"patch_kmeans: patch_size must be >= 1, got {patch_size}")
        if max_patches is not None and max_patches < codebook_size:
            raise ValueError(
                f"patch_kmeans: max_patches ({max_patches}) must be >= codebook_size ({codebook_size})"
            )
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(int(seed))
        reservoir = _PatchReservoir(max_patches, g)
        batches: Iterable[Any] = [frames] if isinstance(frames, (np.ndarray, torch.Tensor)) else frames
        n_frames = 0
        for i, batch in enumerate(batches):
            x = torch.as_tensor(np.ascontiguousarray(batch) if isinstance(batch, np.ndarray) else batch)
            if x.dtype != torch.uint8:
                raise ValueError(f"patch_kmeans: frames must be uint8, got {x.dtype} (batch {i})")
            if x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] != x.shape[2]:
                raise ValueError(
                    f"patch_kmeans: frames must have shape [N, R, R, 3] (square RGB), got {tuple(x.shape)} (batch {i})"
                )
            if resolution is None:
                resolution = int(x.shape[1])
            if x.shape[1] != resolution:
                raise ValueError(
                    f"patch_kmeans: every frame must be {resolution}x{resolution}, got {tuple(x.shape)} (batch {i})"
                )
            if resolution % patch_size:
                raise ValueError(
                    f"patch_kmeans: resolution {resolution} is not a multiple of patch_size {patch_size}"
                )
            if len(x):
                reservoir.add(frames_to_patches(x, patch_size).reshape(-1, patch_size * patch_size * 3))
                n_frames += len(x)
        if n_frames == 0 or resolution is None:
            raise ValueError("patch_kmeans: fit needs at least one frame, got none")
        patches = reservoir.result()
        if len(patches) < codebook_size:
            raise ValueError(
                f"patch_kmeans: {n_frames} frames give {len(patches)} patches, fewer than codebook_size="
                f"{codebook_size}; give more frames or lower codebook_size"
            )
        x = patches.float().div_(255.0)
        res = kmeans(
            x, codebook_size, iters=iters, refine_iters=refine_iters, pca_dim=pca_dim, seed=seed, progress=progress
        )
        seconds = time.perf_counter() - t0
        fit_info = {
            "seed": int(seed),
            "iters": int(iters),
            "refine_iters": int(refine_iters),
            "pca_dim": pca_dim,
            "max_patches": max_patches,
            "num_frames": n_frames,
            "num_patches_seen": reservoir.seen,
            "num_patches_used": len(x),
        }
        tok = cls(res.centroids.clamp(0.0, 1.0), patch_size=patch_size, resolution=resolution, fit_info=fit_info)
        tok.fit_stats = {**{k: v for k, v in asdict(res).items() if k != "centroids"}, "seconds": seconds}
        log.info(
            "patch_kmeans fitted K=%d f=%d on %d frames (%d of %d patches) in %.1f s: %d iterations, "
            "inertia %.5f, %d re-seeded, %d unused codes",
            codebook_size, patch_size, n_frames, len(x), reservoir.seen, seconds,
            res.iterations, res.inertia, res.reseeded, res.empty,
        )  # fmt: skip
        return tok

    # ------------------------------------------------------------- persistence
    def save(self, directory: str | Path) -> Path:
        """Write ``codebook.pt`` (``torch.save({"centroids": float32 [K, D]})``, loadable with
        ``weights_only=True``) and ``tokenizer.json`` (kind, config, id) into ``directory``.

        Returns:
            the directory.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        torch.save({"centroids": self.centroids}, d / CODEBOOK_FILE)
        meta = {
            "kind": self.kind,
            "format_version": FORMAT_VERSION,
            "tokenizer_id": self.tokenizer_id,
            "config": self.config,
            "fit_stats": self.fit_stats,
        }
        (d / TOKENIZER_JSON).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        return d

    @classmethod
    def load(cls, directory: str | Path) -> PatchKMeansTokenizer:
        """Open a tokenizer written by :meth:`save`.

        Raises:
            FileNotFoundError: if ``tokenizer.json`` or ``codebook.pt`` is missing.
            ValueError: if the directory holds another kind of tokenizer, or the codebook does not match
                the recorded config (a corrupted or mixed-up directory).
        """
        d = Path(directory)
        meta_path, cb_path = d / TOKENIZER_JSON, d / CODEBOOK_FILE
        for p in (meta_path, cb_path):
            if not p.is_file():
                raise FileNotFoundError(f"patch_kmeans: {p} not found (not a saved PatchKMeansTokenizer)")
        meta = json.loads(meta_path.read_text())
        if meta.get("kind") != cls.kind:
            raise ValueError(f"{meta_path} holds a {meta.get('kind')!r} tokenizer, not {cls.kind!r}")
        cfg = meta["config"]
        state = torch.load(cb_path, map_location="cpu", weights_only=True)
        tok = cls(
            state["centroids"], patch_size=int(cfg["patch_size"]), resolution=int(cfg["resolution"]),
            fit_info=cfg.get("fit"),
        )  # fmt: skip
        if meta.get("tokenizer_id") and tok.tokenizer_id != meta["tokenizer_id"]:
            raise ValueError(
                f"{d}: codebook.pt gives tokenizer id {tok.tokenizer_id}, but tokenizer.json records "
                f"{meta['tokenizer_id']} (corrupted or mixed-up files)"
            )
        if meta.get("fit_stats"):
            tok.fit_stats = meta["fit_stats"]
        return tok
