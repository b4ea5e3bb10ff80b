"""Sampling long videos with MaskFlow and its baselines.

Public API (what the entry points use)::

    from maskflow.sampling import SamplerConfig, SampleResult, generate, expected_nfe

- :class:`SamplerConfig`: every setting of a sampling run, with :meth:`SamplerConfig.validate`.
- :func:`generate`: context frames → long videos, with the NFE counted from the backbone calls.
- :func:`expected_nfe`: the appendix A.2 formula for the same settings.

Modules: ``config`` (settings), ``chunkwise`` (Algorithm 2, the one chunk loop), ``mgm``
(Algorithm 4), ``fm`` (Algorithm 3), ``guidance`` (time conditioning, partial context guidance, NFE
counting, the ``K``-way head only at the tokens a sampler draws), ``baselines`` (Diffusion Forcing pyramid, Rolling Diffusion), ``unmasking`` (MGM schedules),
``categorical`` (seeded token sampling), ``nfe`` (A.2 formulas), ``result`` (result dataclasses),
``flowception`` (frame insertion, supplementary Algorithms 1 and 3; ``sampler='flowception'``).
"""

from maskflow.sampling.api import generate
from maskflow.sampling.chunkwise import ChunkSpec, plan_chunks
from maskflow.sampling.config import SAMPLERS, SamplerConfig
from maskflow.sampling.nfe import expected_nfe, num_chunks
from maskflow.sampling.result import ChunkInfo, SampleResult

__all__ = [
    "SamplerConfig",
    "SampleResult",
    "ChunkInfo",
    "ChunkSpec",
    "SAMPLERS",
    "generate",
    "expected_nfe",
    "num_chunks",
    "plan_chunks",
]
