r"""Closed-form number of function evaluations of every sampling mode (appendix A.2).

These formulas are what the paper's tables report; the samplers count their real backbone passes and
the tests assert that both agree for every mode over many ``(L, k, m, s, S)``. One NFE is one forward
pass of the backbone over one chunk for one video; a partial-context-guidance step runs three such
passes (conditional, partial, unconditional), so guidance multiplies every formula by 3.

With :math:`\ell = \lceil (L - k)/s \rceil + 1` chunks (section 3.1):

- MGM and FM: :math:`\ell \cdot S`
- Diffusion Forcing (pyramid): :math:`\ell \cdot (k + S)`
- Rolling Diffusion: :math:`S + (L - k)\lceil S / (k - m) \rceil + S` (init, sliding, final window)
- Flowception (random; its expectation, :func:`flowception_expected_steps`): per window
  :math:`S + \sum_{i=0}^{S-1} (1 - \kappa(i/S)^n)` steps for ``n`` inserted frames, at most ``2S``;
  one extra pass per step for insertion-rate guidance without partial context guidance

Paper values (FFS ``k=16, m=2, s=14``; DMLab ``k=36, m=12, s=24``) are reproduced in
``tests/test_nfe.py``. Table 1's 2× rows for FM (788) and Rolling Diffusion (750) are swapped: FM
gives ``3 × 250 = 750`` and Rolling ``250 + 16 · 18 + 250 = 788`` (Table S6 lists Rolling 2× as 788).
"""

from __future__ import annotations

from maskflow.sampling.config import SamplerConfig

__all__ = ["num_chunks", "expected_nfe", "rolling_passes_per_shift", "flowception_expected_steps"]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def num_chunks(num_frames: int, chunk_size: int, n_context_frames: int, stride: int) -> int:
    r"""Number of chunks :math:`\ell = \lceil (L - k)/s \rceil + 1` of chunkwise autoregression (section 3.1).

    Args:
        num_frames: ``L``, total frames including the context.
        chunk_size: ``k``.
        n_context_frames: ``m``.
        stride: ``s``.

    Returns:
        ``0`` when ``L <= m`` (nothing to generate), ``1`` when ``m < L <= k`` (one chunk of ``L``
        frames), otherwise :math:`\lceil (L - k)/s \rceil + 1`.
    """
    if num_frames <= n_context_frames:
        return 0
    if num_frames <= chunk_size:
        return 1
    return _ceil_div(num_frames - chunk_size, stride) + 1


def rolling_passes_per_shift(sampling_steps: int, chunk_size: int, n_context_frames: int) -> int:
    r"""Passes per one-frame shift of Rolling Diffusion, :math:`\lceil S / (k - m) \rceil` (appendix A.2)."""
    return _ceil_div(sampling_steps, chunk_size - n_context_frames)


def flowception_expected_steps(sampling_steps: int, num_inserted: int, scheduler: str = "sigmoid") -> float:
    r"""Expected backbone steps of one Flowception window (:mod:`maskflow.sampling.flowception`).

    A frame inserted at step ``i`` (clock :math:`t_g \in ((i-1)/S, i/S]`) is clean after step
    ``i + S``; ``n`` frames with i.i.d. insertion times of CDF :math:`\kappa` give
    :math:`\mathbb E[i_{last}] = \sum_{i=0}^{S-1} P(t_{ins}^{max} > i/S) = \sum_{i=0}^{S-1} (1 - \kappa(i/S)^n)`,
    so the window takes :math:`S + \mathbb E[i_{last}] \le 2S` steps (``S`` when nothing is inserted).

    Args:
        sampling_steps: ``S``.
        num_inserted: ``n``, frames the window inserts.
        scheduler: ``κ``'s name.
    """
    import torch

    from maskflow.schedules import get_scheduler

    s, n = int(sampling_steps), int(num_inserted)
    if n <= 0:
        return float(s)
    kappa = get_scheduler(scheduler).kappa(torch.arange(s, dtype=torch.float64) / s)
    kappa[0] = 0.0  # κ(0) = 0 (the clamp at 1e-5 is a numerical floor)
    return float(s + (1.0 - kappa**n).sum())


def expected_nfe(config: SamplerConfig, num_frames: int) -> int:
    """Total backbone passes per video that the appendix A.2 formula predicts for ``config``.

    Args:
        config: the sampler configuration (validated here).
        num_frames: ``L``, total frames including the ``m`` context frames.

    Returns:
        The NFE per video; multiplied by 3 when ``guidance_scale != 0``. ``0`` when ``L == m``. For
        Flowception the expectation (rounded) for videos that reach ``L`` frames.

    Raises:
        ValueError: from :meth:`SamplerConfig.validate` for a configuration that cannot work.
    """
    config.validate(num_frames)
    L, k, m, S = int(num_frames), config.chunk_size, config.n_context_frames, config.sampling_steps
    if L <= m:
        return 0
    if config.sampler == "flowception":  # a window of k frames when the video fills it (the maximum)
        passes = config.passes_per_step + (1 if config.insertion_guidance != 1 and config.guidance_scale == 0 else 0)
        windows, done, total = 0, m, 0.0
        while done < L:
            n = min(k - m, L - done)
            total += flowception_expected_steps(S, n, config.scheduler)
            done, windows = done + n, windows + 1
        return int(round(total * passes))
    if config.sampler == "rolling":
        per_video = S + max(L - k, 0) * rolling_passes_per_shift(S, k, m) + S
    else:
        chunks = num_chunks(L, k, m, config.resolved_stride)
        per_chunk = k + S if config.sampler == "diffusion_forcing" else S
        per_video = chunks * per_chunk
    return per_video * config.passes_per_step
