r"""MGM unmasking schedules: how many tokens are still masked after each of the ``S`` steps.

A schedule is a decreasing function :math:`\gamma: [0, 1] \to [0, 1]` with :math:`\gamma(0) = 1` and
:math:`\gamma(1) = 0`: after step ``i`` of ``S`` a share :math:`\gamma(i/S)` of the tokens that were
masked at the start of the chunk is still masked. Step ``i`` therefore commits
:math:`n_{i-1} - n_i` tokens, which is Algorithm 4's :math:`\lceil \alpha |\mathcal{M}| \rceil` with a
step-dependent :math:`\alpha = 1 - n_i / n_{i-1}`; the last step always commits every remaining token,
so a chunk is complete after exactly ``S`` passes (no early exit, NFE exactly ``S`` per chunk).

- ``'cosine'``: :math:`\gamma(r) = \cos(\pi r / 2)` (MaskGIT, Chang et al. 2022).
- ``'linear'``: :math:`\gamma(r) = 1 - r`, the same number of tokens every step.
- ``'arccos'`` (default): :math:`\gamma(r) = 1 - \sqrt{r(2 - r)} + (1 - r)\arccos(1 - r)`, the schedule
  of the authors' code written as a masked share: there, step ``i`` unmasks a share proportional to
  :math:`\arccos(\rho_i)` with :math:`\rho = \mathrm{linspace}(1, 0, S)`; integrating that profile gives
  :math:`\gamma' (r) = -\arccos(1 - r)`, i.e. the formula above. Few tokens early, many late.
  (In the same sense the authors' ``cosine`` profile integrates to MaskGIT's cosine schedule.)

Unlike the authors' code, counts are of the chunk's generated tokens only (never the context), and
every step commits at least one token while any is masked.
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["MASK_SCHEDULES", "mask_ratio", "masked_counts"]


def _arccos(r: float) -> float:
    return 1.0 - math.sqrt(max(r * (2.0 - r), 0.0)) + (1.0 - r) * math.acos(min(max(1.0 - r, -1.0), 1.0))


MASK_SCHEDULES: dict[str, Callable[[float], float]] = {
    "arccos": _arccos,
    "cosine": lambda r: math.cos(0.5 * math.pi * r),
    "linear": lambda r: 1.0 - r,
}


def mask_ratio(schedule: str, r: float) -> float:
    """Share of tokens still masked after a fraction ``r`` in [0, 1] of the steps.

    Raises:
        ValueError: unknown schedule name.
    """
    try:
        fn = MASK_SCHEDULES[schedule]
    except KeyError:
        raise ValueError(f"unknown unmasking_schedule {schedule!r}; choose one of {sorted(MASK_SCHEDULES)}") from None
    return min(max(fn(min(max(r, 0.0), 1.0)), 0.0), 1.0)


def masked_counts(num_masked: int, steps: int, schedule: str = "arccos") -> list[int]:
    """Number of tokens still masked after each step of one MGM chunk.

    Args:
        num_masked: tokens masked at the start (per video), ``n_0 >= 0``.
        steps: ``S >= 1``.
        schedule: ``'arccos'``, ``'cosine'`` or ``'linear'``.

    Returns:
        ``[n_1, …, n_S]``: non-increasing Python ints with ``n_S = 0``; ``n_i = round(n_0 γ(i/S))``,
        lowered where needed so that each step commits at least one token while any remains.

    Raises:
        ValueError: ``steps < 1``, ``num_masked < 0`` or an unknown schedule.
    """
    if steps < 1:
        raise ValueError(f"sampling_steps={steps} must be >= 1")
    if num_masked < 0:
        raise ValueError(f"num_masked={num_masked} must be >= 0")
    counts, prev = [], num_masked
    for i in range(1, steps + 1):
        n = 0 if i == steps else int(math.floor(num_masked * mask_ratio(schedule, i / steps) + 0.5))
        n = max(min(n, prev - 1), 0)  # at least one token per step while any is masked
        counts.append(n)
        prev = n
    return counts
