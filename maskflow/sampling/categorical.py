"""Memory-light, seeded sampling from per-token categorical distributions given logits.

``torch.multinomial`` draws ``K`` exponential variates per token (its one-sample fast path) and needs a
second ``[N, K]`` buffer. Here one uniform variate per token is inverted through a two-level CDF: one
``[..., K]`` float32 buffer holds the softmax, its sums over blocks of :data:`BLOCK` classes give a short
cumulative sum that locates the block, and only that block's ``BLOCK`` probabilities are summed
cumulatively to locate the class. This replaces a cumulative sum over all ``K`` classes (the slowest
pass on a CPU: about as long as the softmax itself) by one block-sum pass. Everything stays on the logits' device (no host syncs), so it serves GPU sampling
loops as well as CPU ones.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["sample_categorical", "uniform", "BLOCK"]

BLOCK = 64  # classes per block of the two-level CDF


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
    k, lead = logits.shape[-1], logits.shape[:-1]
    r = math.prod(lead)
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    e = z.softmax(dim=-1)  # [..., K] (the one buffer; a new tensor: the logits are not modified)
    del z
    block = BLOCK if k > BLOCK else k
    if k % block:
        e = F.pad(e, (0, block - k % block))  # zero mass in the padding: never drawn
    nb = e.shape[-1] // block
    blocks = e.view(r, nb, block)  # [R, nb, block]
    cum = F.pad(blocks.sum(dim=-1).cumsum_(dim=-1), (1, 0))  # [R, nb + 1]: mass before each block, then the total
    total = cum[:, nb:]  # [R, 1]
    zero = total.new_zeros(())
    u = torch.minimum(uniform((r, 1), generator, e.device) * total, torch.nextafter(total, zero))  # in [0, total)
    bi = torch.searchsorted(cum, u, right=True).sub_(1)  # [R, 1]: the block holding u (cum[bi] <= u < cum[bi + 1])
    below = cum.gather(1, bi)  # mass before that block
    first = torch.arange(0, r * nb, nb, device=e.device)  # [R]: each row's first block
    inner = blocks.view(r * nb, block).index_select(0, first + bi.view(r)).cumsum_(dim=-1)  # [R, block]
    rest = torch.minimum(u - below, torch.nextafter(inner[:, block - 1 :], zero))  # inside the block
    j = torch.searchsorted(inner, rest, right=True).clamp_(max=block - 1)  # the first class whose CDF exceeds u
    idx = j.add_(bi, alpha=block)  # [R, 1]
    tokens = idx.view(lead)
    if not with_confidence:
        return tokens, None
    return tokens, (e.view(r, nb * block).gather(1, idx) / total).view(lead)
