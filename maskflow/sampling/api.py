"""``generate``: sample long videos from context frames with any sampler of the paper."""

from __future__ import annotations

import functools
import time
from typing import Callable

import torch

from maskflow.sampling.baselines import generate_rolling, sample_chunk_pyramid
from maskflow.sampling.chunkwise import ChunkSampler, plan_chunks, run_chunkwise
from maskflow.sampling.config import SamplerConfig
from maskflow.sampling.fm import sample_chunk_fm
from maskflow.sampling.guidance import Denoiser
from maskflow.sampling.mgm import sample_chunk_mgm
from maskflow.sampling.result import SampleResult
from maskflow.schedules import Scheduler, get_scheduler

__all__ = ["generate", "chunk_sampler"]


def chunk_sampler(config: SamplerConfig, scheduler: Scheduler, generator: torch.Generator | None) -> ChunkSampler:
    """The per-chunk sampler of ``config.sampler`` (``'mgm'``, ``'fm'`` or ``'diffusion_forcing'``) as a
    ``(denoiser, context, n_new) -> new frames`` callable for :func:`~maskflow.sampling.chunkwise.run_chunkwise`.

    Raises:
        ValueError: for ``'rolling'`` (not chunkwise) or an unknown sampler.
    """
    common = dict(steps=config.sampling_steps, scheduler=scheduler, temperature=config.temperature, generator=generator)
    if config.sampler == "mgm":
        return functools.partial(
            sample_chunk_mgm,
            unmasking_schedule=config.unmasking_schedule,
            gumbel_temperature=config.gumbel_temperature,
            **common,
        )
    if config.sampler == "fm":
        return functools.partial(sample_chunk_fm, **common)
    if config.sampler == "diffusion_forcing":
        return functools.partial(sample_chunk_pyramid, chunk_size=config.chunk_size, **common)
    raise ValueError(f"sampler {config.sampler!r} has no per-chunk sampler; chunkwise ones: mgm, fm, diffusion_forcing")


def _check_inputs(model, context: torch.Tensor, config: SamplerConfig, generator: torch.Generator | None) -> None:
    m = config.n_context_frames
    if context.ndim != 4 or context.shape[1] != m:
        raise ValueError(
            f"context must be int64 [B, n_context_frames={m}, h, w] tokens, got shape {tuple(context.shape)}"
        )
    if context.dtype.is_floating_point or context.dtype.is_complex or context.dtype == torch.bool:
        raise ValueError(f"context must hold integer token ids (int64), got {context.dtype}")
    k = int(model.codebook_size)
    if context.numel():
        lo, hi = int(context.min()), int(context.max())
        if lo < 0 or hi >= k:
            raise ValueError(
                f"context tokens must be codes in [0, codebook_size={k}) with no mask token, got values in [{lo}, {hi}]"
            )
    if generator is not None and generator.device.type != context.device.type:
        raise ValueError(f"generator is on {generator.device}, context on {context.device}; use one device")


@torch.no_grad()
def generate(
    model,
    context: torch.Tensor,
    num_frames: int,
    config: SamplerConfig,
    *,
    generator: torch.Generator | None = None,
    progress: bool | Callable[[int, int], None] = False,
    head: str = "masked",
) -> SampleResult:
    """Generate videos of ``num_frames`` frames that continue ``context`` (Algorithm 2 and the baselines).

    Args:
        model: backbone ``model(tokens [B, T, h, w] int64, t [B, T] float32) -> logits [B, T, h, w, K]``
            with attributes ``codebook_size`` (``K``) and ``mask_token_id`` (``K``), in eval mode, on
            the device of ``context``.
        context: int64 ``[B, m, h, w]`` clean tokens in ``[0, K)``; ``B`` videos are sampled at once.
        num_frames: ``L >= m``, the total length including the context (``sampler='flowception'``: the
            maximum length; the model chooses each video's length, see ``SampleResult.lengths``).
        config: the sampler settings (validated here).
        generator: randomness (on the device of ``context``); the same seed gives the same videos.
        progress: ``True`` shows a tqdm bar over chunks (Rolling Diffusion: over its phases); a callable
            is called as ``progress(chunks_done, num_chunks)`` instead (after each chunk, and with 0 first).
        head: ``'masked'`` (default): every sampler computes the ``K``-way head only for the tokens it
            samples (MGM: still-masked tokens; the others: the tokens that unmask), when the backbone has
            ``project_positions`` (see :class:`~maskflow.sampling.guidance.Denoiser`); ``'dense'``:
            every position's logits (the reference). Same samples for a fixed seed.

    Returns:
        A :class:`SampleResult`: ``tokens`` int64 ``[B, L, h, w]`` with ``tokens[:, :m] == context``
        and no mask token, ``nfe`` counted from the backbone calls (per video; 3 per guided step),
        ``num_chunks``, ``wall_time_s`` and per-chunk :class:`~maskflow.sampling.result.ChunkInfo`.

    Raises:
        ValueError: an invalid config (named setting and allowed range), a context of the wrong shape,
            dtype or values, a generator on another device, or an unknown ``head``.
        RuntimeError: a mask token survived sampling (a bug; never silently returned).
    """
    config.validate(num_frames)
    _check_inputs(model, context, config, generator)
    if config.sampler == "flowception":  # length chosen by the model, at most num_frames
        from maskflow.sampling.flowception import generate_flowception

        return generate_flowception(model, context, num_frames, config, generator=generator, progress=progress, head=head)
    t0 = time.perf_counter()
    scheduler = get_scheduler(config.scheduler)
    denoiser = Denoiser(
        model,
        scheduler=scheduler,
        guidance_scale=config.guidance_scale,
        partial_context_level=config.resolved_partial_context_level,
        time_conditioning=config.time_conditioning,
        generator=generator,
        head=head,
    )
    b, m, hh, ww = context.shape
    length = int(num_frames)
    video = context.new_full((b, length, hh, ww), denoiser.mask_id, dtype=torch.int64)
    video[:, :m] = context
    if config.sampler == "rolling":
        num_chunks = 1 + max(length - config.chunk_size, 0) if length > m else 0
        total = num_chunks + 1 if length > m else 0
        bar = _progress_bar(progress, total, "rolling")
        chunks = generate_rolling(
            denoiser,
            video,
            m,
            steps=config.sampling_steps,
            chunk_size=config.chunk_size,
            scheduler=scheduler,
            temperature=config.temperature,
            generator=generator,
            on_phase=(lambda info: bar.update(1)) if bar is not None else None,
        )
    else:
        plan = plan_chunks(length, config.chunk_size, m, config.resolved_stride)
        num_chunks = len(plan)
        bar = _progress_bar(progress, num_chunks, config.sampler)
        chunks = run_chunkwise(
            chunk_sampler(config, scheduler, generator),
            denoiser,
            video,
            plan,
            on_chunk=(lambda info: bar.update(1)) if bar is not None else None,
        )
    if bar is not None:
        bar.close()
    if bool((video == denoiser.mask_id).any()):  # also synchronises the device before timing
        raise RuntimeError(f"{config.sampler} sampling left mask tokens in the video (a sampler bug)")
    return SampleResult(
        tokens=video, nfe=denoiser.nfe, num_chunks=num_chunks, wall_time_s=time.perf_counter() - t0, chunks=chunks
    )


class _CallbackProgress:
    """``update``/``close`` of a tqdm bar, reported as ``callback(done, total)``."""

    def __init__(self, callback: Callable[[int, int], None], total: int) -> None:
        self.callback, self.total, self.done = callback, int(total), 0
        callback(0, self.total)

    def update(self, n: int = 1) -> None:
        self.done += int(n)
        self.callback(self.done, self.total)

    def close(self) -> None:
        pass


def _progress_bar(enabled: bool | Callable[[int, int], None], total: int, desc: str):
    if callable(enabled):
        return _CallbackProgress(enabled, total)
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"sampling ({desc})", unit="chunk")
