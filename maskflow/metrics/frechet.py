r"""Fréchet distance between Gaussians fitted to features (FID/FVD), in float64.

.. math::

    d^2\big(\mathcal N(\mu_1, \Sigma_1), \mathcal N(\mu_2, \Sigma_2)\big)
        = \lVert \mu_1 - \mu_2 \rVert_2^2 + \operatorname{tr}\Sigma_1 + \operatorname{tr}\Sigma_2
          - 2 \operatorname{tr}\big(\Sigma_1 \Sigma_2\big)^{1/2}

(Dowson & Landau 1982; Heusel et al. 2017 for FID; Unterthiner et al. 2018 for FVD.)

How the trace term is computed, and why. ``Σ1 Σ2`` is not symmetric, so the common
``scipy.linalg.sqrtm(Σ1 @ Σ2)`` (pytorch-fid, StyleGAN-V) works on a general matrix with a Schur
decomposition: round-off gives complex results that must be discarded, and when the covariances are
singular (fewer clips than feature dimensions, e.g. 256 clips with 400 I3D logits) it needs an ``εI``
offset hack; its ``disp=False`` error flag is also deprecated since SciPy 1.16. We use the equivalent
symmetric form (TF-GAN's ``trace_sqrt_product``, which VideoGPT ports):

.. math::

    \operatorname{tr}(\Sigma_1 \Sigma_2)^{1/2} = \sum_i \sqrt{\lambda_i\big(\Sigma_1^{1/2} \Sigma_2 \Sigma_1^{1/2}\big)}

since ``Σ1 Σ2`` is similar to the symmetric PSD matrix ``M = Σ1^½ Σ2 Σ1^½``. Both ``Σ1^½`` and the
eigenvalues of ``M`` come from ``scipy.linalg.eigh`` (a maintained LAPACK symmetric eigensolver):
real by construction, backward stable, no complex parts, no offset; eigenvalues that round-off
makes slightly negative are clamped at 0, and so is the final distance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

__all__ = ["GaussianStats", "frechet_distance", "gaussian_stats", "fid_from_features"]


@dataclass(frozen=True)
class GaussianStats:
    """Mean and covariance of a feature set, with the number of samples they came from.

    Attributes:
        mu: float64 ``[D]``.
        sigma: float64 ``[D, D]``, the unbiased (``N − 1``) sample covariance.
        num_samples: ``N``, the number of feature vectors (clips).
    """

    mu: np.ndarray
    sigma: np.ndarray
    num_samples: int

    @classmethod
    def from_features(cls, features: np.ndarray) -> GaussianStats:
        """Fit to features float ``[N, D]`` (``N >= 2``); see :func:`gaussian_stats`."""
        mu, sigma = gaussian_stats(features)
        return cls(mu, sigma, int(np.shape(features)[0]))

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])


def _as_matrix_stats(mu: np.ndarray, sigma: np.ndarray, which: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1:
        raise ValueError(f"mu{which} must be a vector [D], got shape {mu.shape}")
    if sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"sigma{which} must be [D, D] = {(mu.shape[0],) * 2} to match mu{which}, got {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"mu{which}/sigma{which} contain NaN or inf")
    return mu, 0.5 * (sigma + sigma.T)  # exact symmetry for eigh


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix via ``eigh`` (negative round-off clamped)."""
    w, v = scipy.linalg.eigh(sigma)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    r"""Squared Fréchet (2-Wasserstein) distance between two Gaussians, in float64.

    Args:
        mu1: mean ``[D]`` of the first Gaussian (any float dtype; computed in float64).
        sigma1: covariance ``[D, D]`` of the first Gaussian, symmetric positive semi-definite
            (it is symmetrised; singular matrices are fine).
        mu2: mean ``[D]`` of the second Gaussian.
        sigma2: covariance ``[D, D]`` of the second Gaussian.

    Returns:
        :math:`\lVert\mu_1-\mu_2\rVert^2 + \operatorname{tr}(\Sigma_1 + \Sigma_2 - 2(\Sigma_1\Sigma_2)^{1/2})`,
        a Python float in the squared units of the features, ``>= 0`` (clamped). Symmetric in its
        two arguments up to round-off; 0 for identical statistics up to round-off.

    Raises:
        ValueError: on shapes that are not ``[D]`` / ``[D, D]``, different ``D`` of the two Gaussians,
            or non-finite values.
    """
    mu1, sigma1 = _as_matrix_stats(mu1, sigma1, "1")
    mu2, sigma2 = _as_matrix_stats(mu2, sigma2, "2")
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature dimensions differ: {mu1.shape[0]} vs {mu2.shape[0]}")
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    eig = scipy.linalg.eigh(0.5 * (middle + middle.T), eigvals_only=True)
    trace_sqrt = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu1 - mu2
    dist = float(diff @ diff) + float(np.trace(sigma1)) + float(np.trace(sigma2)) - 2.0 * trace_sqrt
    return max(dist, 0.0)


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of a feature set, in float64.

    Args:
        features: ``[N, D]`` (numpy array or anything ``np.asarray`` accepts, e.g. a CPU tensor),
            one row per clip, ``N >= 2``.

    Returns:
        ``(mu, sigma)``: float64 ``[D]`` and float64 ``[D, D]`` (divides by ``N − 1``, like
        ``np.cov``, pytorch-fid and VideoGPT; StyleGAN-V divides by ``N``).

    Raises:
        ValueError: if ``features`` is not 2-D, has fewer than 2 rows, or has NaN/inf values.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got N={x.shape[0]}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or inf (is the feature network's input valid?)")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets.

    Args:
        real: ``[N, D]`` features of real clips, ``N >= 2``.
        fake: ``[M, D]`` features of generated clips, ``M >= 2``.

    Returns:
        The squared Fréchet distance (float, ``>= 0``); see :func:`frechet_distance`.

    Raises:
        ValueError: if either set has fewer than 2 rows or the feature dimensions differ.
    """
    real, fake = np.asarray(real), np.asarray(fake)
    if real.ndim == 2 and fake.ndim == 2 and real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: real has D={real.shape[1]}, fake has D={fake.shape[1]}")
    return frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))
