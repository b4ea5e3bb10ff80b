"""The sampler configuration shared by every sampling mode, and its validation.

One :class:`SamplerConfig` describes a sampling run completely: which sampler, how many forward passes
per chunk, the chunk geometry of Algorithm 2 (``chunk_size`` k, ``n_context_frames`` m, ``stride`` s),
the per-token sampling rule, partial context guidance and the time conditioning. The names are the
project vocabulary (``../../DESIGN.md``) and the keys of ``experiments/configs/sample.yaml``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from maskflow.schedules import SCHEDULERS

__all__ = [
    "SamplerConfig",
    "SAMPLERS",
    "TIME_CONDITIONINGS",
    "UNMASKING_SCHEDULES",
    "DEFAULT_PARTIAL_CONTEXT_LEVEL",
    "FLOWCEPTION_SETTINGS",
]

SAMPLERS = ("mgm", "fm", "diffusion_forcing", "rolling", "flowception")
INSERTIONS = ("bernoulli", "poisson")
UNMASKINGS = ("fm", "mgm")
BLOCKWISE_STOPS = ("length", "underfill")
#: The :class:`SamplerConfig` fields only ``sampler='flowception'`` reads (sweep axes, report columns,
#: reproduction keys).
FLOWCEPTION_SETTINGS = ("insertion", "insertion_guidance", "unmasking", "blockwise_stop", "frame_time_power")
TIME_CONDITIONINGS = ("dependent", "independent")
UNMASKING_SCHEDULES = ("arccos", "cosine", "linear")
# Level t at which the "partial" guidance pass re-masks the context (the authors' defaults): MGM 0.3,
# FM 0.9; the two diffusion-style baselines take FM's value.
DEFAULT_PARTIAL_CONTEXT_LEVEL = {"mgm": 0.3, "fm": 0.9, "diffusion_forcing": 0.9, "rolling": 0.9, "flowception": 0.9}


@dataclass
class SamplerConfig:
    """Settings of one sampling run (all samplers of the paper).

    Attributes:
        sampler: ``'mgm'`` (Algorithm 4, confidence-based), ``'fm'`` (Algorithm 3, discrete Euler),
            ``'diffusion_forcing'`` (pyramid baseline, appendix A.2/A.4) or ``'rolling'`` (Rolling
            Diffusion baseline) or ``'flowception'`` (frame insertion, supplementary Algorithms 1/3;
            :mod:`maskflow.sampling.flowception`; needs a checkpoint trained with ``dynamics=flowception``).
        sampling_steps: forward passes per chunk (``S``; 20 MGM and 250 FM in the paper). For the
            baselines, ``S`` is the number of levels a frame goes through (A.2's "250").
        chunk_size: ``k``, frames the backbone sees at once (its training window).
        n_context_frames: ``m``, clean frames given at the start (the first chunk's context).
        stride: ``s``, how far the window moves per chunk, ``1 <= s <= k - m``; ``None`` means
            ``k - m`` (full-sequence mode); ``1`` with ``m = k - 1`` is fully autoregressive.
            Unused by ``'rolling'``, which always slides one frame at a time.
        temperature: softmax temperature of the token distribution (``> 0``; 1 = the model's own).
        unmasking_schedule: MGM share of tokens still masked after each step: ``'arccos'``,
            ``'cosine'`` or ``'linear'`` (see :mod:`maskflow.sampling.unmasking`).
        gumbel_temperature: scale of the Gumbel noise added to the MGM log-confidences, annealed
            linearly to 0 over the steps; ``0`` is the plain top-``⌈α|M|⌉`` rule of Algorithm 4.
        guidance_scale: ``ω`` of partial context guidance, ``z_cond + ω (z_partial − z_uncond)``;
            ``0`` turns guidance off (one pass per step instead of three).
        partial_context_level: level ``t`` of the re-masked context in the "partial" guidance pass
            (each context token masked with probability ``1 − κ(t)``); ``None`` → 0.3 for MGM, 0.9
            otherwise (the authors' values).
        time_conditioning: ``'dependent'`` passes each frame's level ``t``; ``'independent'`` passes
            ``t = 0`` for every frame (eq. 8).
        scheduler: masking scheduler ``κ`` (``'sigmoid'``, ``'cosine'``, ``'linear'``) used for the
            FM jump rates, the baselines' per-frame unmasking, the partial guidance pass and the
            MGM time conditioning. It should be the scheduler the model was trained with.
        insertion: Flowception: ``'bernoulli'`` (at most one frame per slot and step, Algorithm 1) or
            ``'poisson'`` (several, eq. 33).
        insertion_guidance: Flowception insertion-rate guidance ``w_s`` of eq. 36 (``1`` = off; ``> 1``
            longer videos).
        unmasking: Flowception's per-frame token rule: ``'fm'`` (Euler jumps at the frame's level) or
            ``'mgm'`` (confidence, following ``unmasking_schedule`` over the frame's age).
        frame_time_power: Flowception's framewise time reparameterisation (supplementary appendix E,
            "Local sampling schedules"): a frame of age ``a`` steps has level ``t = (a / S)^γ`` with
            ``γ = frame_time_power`` (``1`` = uniform; ``> 1`` smaller steps right after a frame is
            inserted, larger ones later).
        blockwise_stop: Flowception beyond one window (``num_frames > chunk_size``): ``'length'``
            (appendix F's block-wise generation: windows follow one another until the video has
            ``num_frames`` frames; a video ends earlier only when a window adds no frame) or
            ``'underfill'`` (a video also ends when its window does not fill up).
    """

    sampler: str = "mgm"
    sampling_steps: int = 20
    chunk_size: int = 16
    n_context_frames: int = 2
    stride: int | None = None
    temperature: float = 1.0
    unmasking_schedule: str = "arccos"
    gumbel_temperature: float = 0.0
    guidance_scale: float = 0.0
    partial_context_level: float | None = None
    time_conditioning: str = "dependent"
    scheduler: str = "sigmoid"
    insertion: str = "bernoulli"
    insertion_guidance: float = 1.0
    unmasking: str = "fm"
    frame_time_power: float = 1.0
    blockwise_stop: str = "length"

    # ------------------------------------------------------------------ resolved values
    @property
    def resolved_stride(self) -> int:
        """``stride``, or ``chunk_size − n_context_frames`` when it is ``None``."""
        return self.chunk_size - self.n_context_frames if self.stride is None else int(self.stride)

    @property
    def resolved_partial_context_level(self) -> float:
        """``partial_context_level``, or the sampler's default (MGM 0.3, otherwise 0.9)."""
        if self.partial_context_level is None:
            return DEFAULT_PARTIAL_CONTEXT_LEVEL.get(self.sampler, 0.9)
        return float(self.partial_context_level)

    @property
    def passes_per_step(self) -> int:
        """Backbone passes per sampling step: 3 with partial context guidance, else 1."""
        return 3 if self.guidance_scale != 0 else 1

    # ------------------------------------------------------------------ validation
    def validate(self, num_frames: int | None = None) -> None:
        """Refuse a configuration that cannot work, before any work starts.

        Args:
            num_frames: ``L``, the total video length including the context; checked when given.

        Raises:
            ValueError: naming the first offending setting and its allowed range or values, e.g. an
                unknown sampler, ``sampling_steps < 1``, ``n_context_frames >= chunk_size``,
                ``stride`` outside ``[1, chunk_size − n_context_frames]``, ``num_frames <
                n_context_frames``, a non-positive temperature or an unknown scheduler.
        """
        _one_of("sampler", self.sampler, SAMPLERS)
        _one_of("time_conditioning", self.time_conditioning, TIME_CONDITIONINGS)
        _one_of("unmasking_schedule", self.unmasking_schedule, UNMASKING_SCHEDULES)
        _one_of("scheduler", self.scheduler, tuple(sorted(SCHEDULERS)))
        _one_of("insertion", self.insertion, INSERTIONS)
        _one_of("unmasking", self.unmasking, UNMASKINGS)
        _one_of("blockwise_stop", self.blockwise_stop, BLOCKWISE_STOPS)
        _positive_finite("frame_time_power", self.frame_time_power)
        _positive_finite("insertion_guidance", self.insertion_guidance)
        _int_at_least("sampling_steps", self.sampling_steps, 1)
        _int_at_least("chunk_size", self.chunk_size, 2)
        _int_at_least("n_context_frames", self.n_context_frames, 1)
        k, m = int(self.chunk_size), int(self.n_context_frames)
        if m >= k:
            raise ValueError(
                f"n_context_frames={m} must be smaller than chunk_size={k} (allowed: 1 <= n_context_frames <= {k - 1})"
            )
        if self.stride is not None:
            if not _is_int(self.stride) or not 1 <= int(self.stride) <= k - m:
                raise ValueError(
                    f"stride={self.stride!r} is out of range: 1 <= stride <= chunk_size - n_context_frames = {k - m} "
                    "(or null for chunk_size - n_context_frames)"
                )
        _positive_finite("temperature", self.temperature)
        _finite_at_least("gumbel_temperature", self.gumbel_temperature, 0.0)
        _finite_at_least("guidance_scale", self.guidance_scale, 0.0)
        if self.partial_context_level is not None:
            level = self.partial_context_level
            if not isinstance(level, (int, float)) or not 0.0 <= float(level) <= 1.0:
                raise ValueError(
                    f"partial_context_level={level!r} must lie in [0, 1] (or null for the sampler's default)"
                )
        if num_frames is not None:
            if not _is_int(num_frames) or int(num_frames) < m:
                raise ValueError(
                    f"num_frames={num_frames!r} must be an integer >= n_context_frames={m} "
                    "(the video includes its context frames)"
                )
            if self.sampler == "flowception" and int(num_frames) <= m:
                raise ValueError(
                    f"num_frames={num_frames} (the maximum length) must exceed n_context_frames={m}: "
                    "flowception could not insert a single frame"
                )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _one_of(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of {list(allowed)}")


def _int_at_least(name: str, value: object, low: int) -> None:
    if not _is_int(value) or int(value) < low:
        raise ValueError(f"{name}={value!r} must be an integer >= {low}")


def _positive_finite(name: str, value: object) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a finite number > 0")


def _finite_at_least(name: str, value: object, low: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
        raise ValueError(f"{name}={value!r} must be a finite number >= {low:g}")
