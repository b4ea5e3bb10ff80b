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
    k = logits.shape[-1]
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    e = z.softmax(dim=-1)  # [..., K] (the one buffer; a new tensor: the logits are not modified)
    del z
    block = BLOCK if k > BLOCK else k
    if k % block:
        e = F.pad(e, (0, block - k % block))  # zero mass in the padding: never drawn
    blocks = e.view(*e.shape[:-1], e.shape[-1] // block, block)  # [..., nb, block]
    cum = blocks.sum(dim=-1).cumsum_(dim=-1)  # [..., nb]: mass up to the end of each block
    nb = cum.shape[-1]
    total = cum[..., -1:]  # [..., 1]
    u = uniform(total.shape, generator, e.device).mul_(total)
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))  # keep u < total after rounding
    bi = torch.searchsorted(cum, u, right=True).clamp_(max=nb - 1)  # [..., 1]: first block ending above u
    below = cum.gather(-1, (bi - 1).clamp(min=0)).masked_fill_(bi == 0, 0.0)  # mass before that block
    first = torch.arange(0, bi.numel() * nb, nb, device=e.device)  # [R]: each row's first block
    chosen = blocks.reshape(-1, block).index_select(0, first + bi.view(-1))  # [R, block]: the chosen blocks
    inner = chosen.view(*bi.shape[:-1], block).cumsum_(dim=-1)  # [..., block]
    r = torch.minimum(u - below, torch.nextafter(inner[..., -1:], torch.zeros_like(total)))  # inside the block
    j = torch.searchsorted(inner, r, right=True).clamp_(max=block - 1)  # first class whose CDF exceeds r
    idx = bi * block + j  # [..., 1]
    tokens = idx.squeeze(-1)
    if not with_confidence:
        return tokens, None
    return tokens, (e.gather(-1, idx) / total).squeeze(-1)
