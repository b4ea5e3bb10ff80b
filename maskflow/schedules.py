r"""Masking schedulers :math:`\kappa(t)` and the signal-to-noise ratio :math:`\mathrm{SNR}(t)`.

Convention (the paper's, section 3.2): ``t = 0`` is fully masked, ``t = 1`` is clean, and
:math:`\kappa(t)` is the probability that a token of a frame at level ``t`` is *unmasked*.
Every function is vectorised over tensors of any shape and keeps their dtype and device.

Sources: paper section 3.3 and appendix A.3 (sigmoid scheduler, SNR); the scheduler constants follow
the authors' released defaults (``../shared/notes/reference-implementation.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "Scheduler",
    "LinearScheduler",
    "CosineScheduler",
    "SigmoidScheduler",
    "SCHEDULERS",
    "get_scheduler",
]

KAPPA_MIN = 1e-5  # lower clamp of kappa, as in the reference implementation


class Scheduler:
    r"""Base class of a masking scheduler :math:`\kappa: [0, 1] \to [0, 1]`, increasing, ``κ(1) = 1``.

    Subclasses implement :meth:`kappa`, :meth:`d_kappa` (the derivative in ``t``) and :meth:`inverse`.
    All take and return float tensors of any shape ``[...]`` on any device.
    """

    name: str = "base"

    def kappa(self, t: torch.Tensor) -> torch.Tensor:
        """Probability that a token at level ``t`` is unmasked. ``t``: float ``[...]`` in [0, 1]."""
        raise NotImplementedError

    def d_kappa(self, t: torch.Tensor) -> torch.Tensor:
        r""":math:`\mathrm{d}\kappa/\mathrm{d}t` at ``t``: float ``[...]``."""
        raise NotImplementedError

    def inverse(self, kappa: torch.Tensor) -> torch.Tensor:
        r"""The level ``t`` with :math:`\kappa(t) = ` ``kappa``: float ``[...]`` in [0, 1]."""
        raise NotImplementedError

    def snr(self, t: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        r"""Signal-to-noise ratio of appendix A.3: :math:`\mathrm{SNR}(t) = \kappa^2 / (1 - \kappa^2)`.

        Args:
            t: float ``[...]`` in [0, 1].
            eps: floor of the denominator, so that ``t = 1`` (clean) gives a large finite value.

        Returns:
            float ``[...]``, non-negative, increasing in ``t``.
        """
        k = self.kappa(t)
        return k.square() / (1.0 - k.square()).clamp_min(eps)

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return f"{type(self).__name__}()"


class LinearScheduler(Scheduler):
    r""":math:`\kappa(t) = t` (eq. 5 as written)."""

    name = "linear"

    def kappa(self, t: torch.Tensor) -> torch.Tensor:
        return t.clamp(KAPPA_MIN, 1.0)

    def d_kappa(self, t: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(t)

    def inverse(self, kappa: torch.Tensor) -> torch.Tensor:
        return kappa.clamp(0.0, 1.0)


class CosineScheduler(Scheduler):
    r""":math:`\kappa(t) = 1 - \cos(\pi t / 2)`."""

    name = "cosine"

    def kappa(self, t: torch.Tensor) -> torch.Tensor:
        return (1.0 - torch.cos(0.5 * math.pi * t)).clamp(KAPPA_MIN, 1.0)

    def d_kappa(self, t: torch.Tensor) -> torch.Tensor:
        return 0.5 * math.pi * torch.sin(0.5 * math.pi * t)

    def inverse(self, kappa: torch.Tensor) -> torch.Tensor:
        return (2.0 / math.pi) * torch.arccos((1.0 - kappa).clamp(0.0, 1.0))


@dataclass(frozen=True)
class SigmoidScheduler(Scheduler):
    r"""Sigmoid scheduler, the paper's default (appendix A.3):

    .. math::
        \kappa(t) = \frac{\sigma((t (e - s) + s)/\tau) - \sigma(s/\tau)}{\sigma(e/\tau) - \sigma(s/\tau)},

    clamped to ``[1e-5, 1]``, with start ``s = -3``, end ``e = 3``, ``τ = 1`` by default
    (κ(0.1) ≈ 0.040, κ(0.3) ≈ 0.203, κ(0.5) = 0.5, κ(0.9) ≈ 0.960).

    Raises:
        ValueError: if ``end <= start`` or ``tau <= 0``.
    """

    start: float = -3.0
    end: float = 3.0
    tau: float = 1.0
    name: str = "sigmoid"

    def __post_init__(self) -> None:
        if not self.end > self.start:
            raise ValueError(f"sigmoid scheduler needs end > start, got start={self.start}, end={self.end}")
        if not self.tau > 0:
            raise ValueError(f"sigmoid scheduler needs tau > 0, got tau={self.tau}")

    def _bounds(self) -> tuple[float, float]:
        lo = 1.0 / (1.0 + math.exp(-self.start / self.tau))
        hi = 1.0 / (1.0 + math.exp(-self.end / self.tau))
        return lo, hi

    def _arg(self, t: torch.Tensor) -> torch.Tensor:
        return (t * (self.end - self.start) + self.start) / self.tau

    def kappa(self, t: torch.Tensor) -> torch.Tensor:
        lo, hi = self._bounds()
        return ((torch.sigmoid(self._arg(t)) - lo) / (hi - lo)).clamp(KAPPA_MIN, 1.0)

    def d_kappa(self, t: torch.Tensor) -> torch.Tensor:
        lo, hi = self._bounds()
        s = torch.sigmoid(self._arg(t))
        return s * (1.0 - s) * (self.end - self.start) / self.tau / (hi - lo)

    def inverse(self, kappa: torch.Tensor) -> torch.Tensor:
        lo, hi = self._bounds()
        p = (kappa.clamp(0.0, 1.0) * (hi - lo) + lo).clamp(1e-12, 1 - 1e-12)
        x = torch.log(p) - torch.log1p(-p)  # logit
        return ((x * self.tau - self.start) / (self.end - self.start)).clamp(0.0, 1.0)


SCHEDULERS: dict[str, type[Scheduler]] = {
    "linear": LinearScheduler,
    "cosine": CosineScheduler,
    "sigmoid": SigmoidScheduler,
}


def get_scheduler(name: str = "sigmoid", **kwargs: float) -> Scheduler:
    """Build a scheduler by name (``linear``, ``cosine``, ``sigmoid``); ``kwargs`` go to its constructor.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    try:
        cls = SCHEDULERS[name]
    except KeyError:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)}") from None
    return cls(**kwargs)
