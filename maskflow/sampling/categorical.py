"""Memory-light, seeded sampling from per-token categorical distributions given logits.

``torch.multinomial`` draws ``K`` exponential variates per token (its one-sample fast path) and needs a
second ``[N, K]`` buffer; here one ``[..., K]`` float32 buffer holds the softmax, is turned in place into
the CDF, and one uniform variate per token is inverted with ``torch.searchsorted``. Everything stays on
the logits' device (no host syncs), so it serves GPU sampling loops as well as CPU ones.
"""

from __future__ import annotations

import torch

__all__ = ["sample_categorical", "uniform"]


def uniform(
    shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """float32 uniform variates in ``[0, 1)`` of ``shape`` on ``device``, drawn from ``generator`` if given."""
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float32)


def sample_categorical(
    logits: torch.Tensor,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    *,
    with_confidence: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""Draw one class per position from :math:`\mathrm{Softmax}(\text{logits} / \tau)`.

    Args:
        logits: float ``[..., K]`` (any float dtype; not modified).
        temperature: :math:`\tau > 0`.
        generator: source of randomness (same device as ``logits``); ``None`` uses the global RNG.
        with_confidence: also return the probability of the drawn class (MGM's confidence score).

    Returns:
        ``(tokens, confidence)``: int64 ``[...]`` in ``[0, K)`` and float32 ``[...]`` in ``(0, 1]``
        (``None`` when ``with_confidence`` is false). A class of probability 0 is never drawn.
    """
    k = logits.shape[-1]
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    cdf = z.softmax(dim=-1).contiguous()  # the one [..., K] buffer (new: the logits are not modified)
    del z
    cdf = cdf.cumsum_(dim=-1)  # in place: the CDF
    total = cdf[..., -1:]  # [..., 1], 1 up to rounding
    u = uniform(total.shape, generator, cdf.device).mul_(total)
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))  # keep u < total after rounding
    idx = torch.searchsorted(cdf, u, right=True).clamp_(max=k - 1)  # [..., 1]: first class with cdf > u
    tokens = idx.squeeze(-1)
    if not with_confidence:
        return tokens, None
    hi = cdf.gather(-1, idx)
    lo = cdf.gather(-1, (idx - 1).clamp_(min=0)).masked_fill_(idx == 0, 0.0)
    return tokens, ((hi - lo) / total).squeeze(-1)
