"""Stand-in backbones for testing samplers without a trained model (like ``torch.testing``).

- :class:`MarkovStub`: logits that strongly prefer a known video, ``token[f] = (token[0] + f·step) mod K``
  per token position, inferred from whatever clean tokens the input holds; optionally checks that every
  clean input token agrees with that video (catches corrupted context and wrong commits).
- :class:`RecordingBackbone`: wraps any backbone and records every call (tokens, ``t``, rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from einops import rearrange

__all__ = ["MarkovStub", "RecordingBackbone", "markov_video"]


def markov_video(first: torch.Tensor, num_frames: int, codebook_size: int, step: int = 1) -> torch.Tensor:
    """The video the :class:`MarkovStub` prefers: int64 ``[B, L, h, w]`` from its first frame ``[B, h, w]``."""
    offsets = torch.arange(num_frames, device=first.device).view(1, num_frames, 1, 1) * step
    return (first[:, None] + offsets) % codebook_size


class MarkovStub:
    """Backbone stub whose logits prefer ``token[f] = (anchor + f·step) mod K`` at every token position.

    The anchor of a position is read off the first clean (non-mask) token along the frame axis
    (``anchor = token[f0] − f0·step``); a position with no clean token gets uniform logits.

    Args:
        codebook_size: ``K`` (mask id ``K``).
        step: code increment per frame.
        margin: logit of the preferred code over the others (30: the others have probability ~1e-13).
        strict: raise ``AssertionError`` when a clean input token disagrees with the preferred video.
    """

    def __init__(self, codebook_size: int = 16, *, step: int = 1, margin: float = 30.0, strict: bool = True) -> None:
        self.codebook_size = codebook_size
        self.mask_token_id = codebook_size
        self.step = step
        self.margin = margin
        self.strict = strict

    def __call__(self, tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        k = self.codebook_size
        b, f, hh, ww = tokens.shape
        assert t.shape == (b, f), f"t has shape {tuple(t.shape)}, expected {(b, f)}"
        clean = tokens != self.mask_token_id  # [B, F, h, w]
        f0 = clean.int().argmax(dim=1, keepdim=True)  # first clean frame per position
        anchor = tokens.gather(1, f0) - f0 * self.step  # [B, 1, h, w]
        target = markov_video(anchor[:, 0] % k, f, k, self.step)  # [B, F, h, w]
        if self.strict:
            bad = clean & (tokens != target)
            assert not bool(bad.any()), "a clean input token disagrees with the preferred video"
        logits = torch.zeros(b, f, hh, ww, k, device=tokens.device)
        logits.scatter_(-1, target.unsqueeze(-1), self.margin)
        return logits * clean.any(dim=1, keepdim=True).unsqueeze(-1)  # no clean token: uniform


@dataclass
class Call:
    """One recorded backbone call: inputs (cloned) and the row count."""

    tokens: torch.Tensor
    t: torch.Tensor

    @property
    def rows(self) -> int:
        return self.tokens.shape[0]


@dataclass
class RecordingBackbone:
    """Wraps a backbone and records every call; forwards ``codebook_size`` and ``mask_token_id``.

    Attributes:
        model: the wrapped backbone.
        calls: every :class:`Call` in order.
    """

    model: object
    calls: list[Call] = field(default_factory=list)

    @property
    def codebook_size(self) -> int:
        return self.model.codebook_size

    @property
    def mask_token_id(self) -> int:
        return self.model.mask_token_id

    def __call__(self, tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls.append(Call(tokens.clone(), t.clone()))
        return self.model(tokens, t)

    def passes(self, batch_size: int) -> int:
        """Forward passes per video: rows of all calls divided by the number of videos."""
        return sum(c.rows for c in self.calls) // batch_size

    def masked_per_frame(self, call: int) -> torch.Tensor:
        """int64 ``[rows, F]``: masked tokens per frame in the input of call ``call``."""
        tokens = self.calls[call].tokens
        return rearrange(tokens == self.mask_token_id, "b f h w -> b f (h w)").sum(-1)
