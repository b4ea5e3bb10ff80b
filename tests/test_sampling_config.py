"""SamplerConfig.validate refuses settings that cannot work, naming the setting and its allowed range."""

from __future__ import annotations

import pytest

from maskflow.sampling import SamplerConfig, expected_nfe


def test_defaults_are_valid_and_resolve():
    config = SamplerConfig()
    config.validate(32)
    assert (config.sampler, config.sampling_steps, config.chunk_size, config.n_context_frames) == ("mgm", 20, 16, 2)
    assert config.stride is None and config.resolved_stride == 14
    assert config.passes_per_step == 1 and SamplerConfig(guidance_scale=1.5).passes_per_step == 3


@pytest.mark.parametrize(
    ("settings", "num_frames", "message"),
    [
        (dict(sampler="ddpm"), 32, r"unknown sampler 'ddpm'.*mgm"),
        (dict(sampling_steps=0), 32, r"sampling_steps=0 must be an integer >= 1"),
        (dict(sampling_steps=2.5), 32, r"sampling_steps=2.5"),
        (dict(n_context_frames=16), 32, r"n_context_frames=16 must be smaller than chunk_size=16.*<= 15"),
        (dict(n_context_frames=0), 32, r"n_context_frames=0 must be an integer >= 1"),
        (dict(chunk_size=1, n_context_frames=1), 32, r"chunk_size=1"),
        (dict(stride=15), 32, r"stride=15 is out of range: 1 <= stride <= chunk_size - n_context_frames = 14"),
        (dict(stride=0), 32, r"stride=0 is out of range"),
        (dict(n_context_frames=4), 3, r"num_frames=3 must be an integer >= n_context_frames=4"),
        (dict(temperature=0.0), 32, r"temperature=0.0 must be a finite number > 0"),
        (dict(unmasking_schedule="square"), 32, r"unknown unmasking_schedule 'square'"),
        (dict(gumbel_temperature=-1.0), 32, r"gumbel_temperature=-1.0 must be a finite number >= 0"),
        (dict(guidance_scale=float("nan")), 32, r"guidance_scale=nan"),
        (dict(guidance_scale=-0.5), 32, r"guidance_scale=-0.5"),
        (dict(partial_context_level=1.5), 32, r"partial_context_level=1.5 must lie in \[0, 1\]"),
        (dict(time_conditioning="none"), 32, r"unknown time_conditioning 'none'.*dependent"),
        (dict(scheduler="exp"), 32, r"unknown scheduler 'exp'.*sigmoid"),
    ],
)
def test_validate_rejects(settings, num_frames, message):
    config = SamplerConfig(**settings)
    with pytest.raises(ValueError, match=message):
        config.validate(num_frames)
    with pytest.raises(ValueError):
        expected_nfe(config, num_frames)


def test_boundaries_are_accepted():
    SamplerConfig(chunk_size=16, n_context_frames=15, stride=1).validate(16)  # fully autoregressive
    SamplerConfig(stride=14).validate(2)  # L = m: nothing to generate
    SamplerConfig(sampler="rolling", sampling_steps=1, chunk_size=2, n_context_frames=1).validate(7)
    SamplerConfig(partial_context_level=0.0, guidance_scale=0.0).validate()
