"""What a sampling run returns: the tokens, the counted NFE, and per-chunk bookkeeping."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["ChunkInfo", "SampleResult"]


@dataclass(frozen=True)
class ChunkInfo:
    """One chunk of chunkwise sampling, or one phase of Rolling Diffusion.

    Attributes:
        kind: ``'chunk'`` (MGM, FM, Diffusion Forcing), ``'init'`` / ``'shift'`` / ``'final'`` (Rolling) or
            ``'window'`` (Flowception; ``n_new`` is then the mean over the window's videos).
        start: index of the window's first frame in the video.
        n_context: clean context frames at the start of the window.
        n_new: frames this chunk/phase completed.
        nfe: backbone passes per video it took (3 per step with guidance).
        wall_time_s: seconds it took (host clock; on GPU without a sync, an underestimate per chunk).
    """

    kind: str
    start: int
    n_context: int
    n_new: int
    nfe: int
    wall_time_s: float


@dataclass
class SampleResult:
    """Result of :func:`maskflow.sampling.generate`.

    Attributes:
        tokens: int64 ``[B, L, h, w]`` in ``[0, K)``; ``tokens[:, :m]`` is exactly the given context.
        nfe: backbone passes per video, counted from the calls actually made: one NFE is one forward
            pass of the backbone over one chunk (window) for one video, whatever the batch size; a
            guidance step runs 3 passes (batched into one call) and counts 3.
        num_chunks: chunks of Algorithm 2 (``ℓ``); for Rolling Diffusion, window positions
            (``1 + max(L − k, 0)``).
        wall_time_s: total seconds, synchronised with the device at the end.
        chunks: one :class:`ChunkInfo` per chunk (per phase for Rolling Diffusion; per window for Flowception).
        lengths: Flowception: frames of each video (context included), the length the model chose;
            ``tokens`` is padded to the longest with code 0. ``None`` for the fixed-length samplers.
        frames_per_step: Flowception: frames in the window (longest video) at each backbone step —
            the sequence length each pass attended over (appendix D's cost).
    """

    tokens: torch.Tensor
    nfe: int
    num_chunks: int
    wall_time_s: float
    chunks: list[ChunkInfo] = field(default_factory=list)
    lengths: list[int] | None = None
    frames_per_step: list[int] | None = None
