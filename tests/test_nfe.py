"""Appendix A.2 NFE formulas: the paper's table values, and counted NFE == formula for every mode."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from maskflow.sampling import SamplerConfig, expected_nfe, generate, num_chunks, plan_chunks
from maskflow.sampling.testing import MarkovStub, RecordingBackbone, markov_video

FFS = dict(chunk_size=16, n_context_frames=2)  # s = 14
DMLAB = dict(chunk_size=36, n_context_frames=12)  # s = 24


def nfe(sampler: str, steps: int, num_frames: int, **geometry) -> int:
    return expected_nfe(SamplerConfig(sampler=sampler, sampling_steps=steps, **geometry), num_frames)


# ------------------------------------------------------------------ paper tables
@pytest.mark.parametrize(
    ("factor", "mgm", "fm", "df", "rolling"),
    [
        (1, 20, 250, 266, 500),  # Table S6 (FFS)
        (2, 60, 750, 798, 788),  # Table 1 prints FM 788 and Rolling 750: swapped (see below)
        (5, 120, 1500, 1596, 1652),
        (10, 240, 3000, 3192, 3092),
    ],
)
def test_table1_faceforensics(factor, mgm, fm, df, rolling):
    length = 16 * factor
    assert nfe("mgm", 20, length, **FFS) == mgm
    assert nfe("fm", 250, length, **FFS) == fm
    assert nfe("diffusion_forcing", 250, length, **FFS) == df
    assert nfe("rolling", 250, length, **FFS) == rolling


def test_table1_two_x_rows_for_fm_and_rolling_are_swapped():
    # Table 1 lists 2x Rolling Diffusion = 750 and FM = 788. The A.2 formulas give the opposite:
    # FM = 3 chunks x 250 = 750, Rolling = 250 + (32 - 16) * ceil(250 / 14) + 250 = 250 + 16 * 18 + 250 = 788
    # (and Table S6 lists Rolling Diffusion 2x on FFS as 788).
    assert nfe("fm", 250, 32, **FFS) == 3 * 250 == 750
    assert nfe("rolling", 250, 32, **FFS) == 250 + 16 * 18 + 250 == 788


@pytest.mark.parametrize(("factor", "full", "autoregressive"), [(2, 60, 340), (5, 120, 1300), (10, 240, 2900)])
def test_table2_faceforensics_strides(factor, full, autoregressive):
    length = 16 * factor
    assert nfe("mgm", 20, length, **FFS, stride=14) == full
    assert nfe("mgm", 20, length, chunk_size=16, n_context_frames=15, stride=1) == autoregressive


@pytest.mark.parametrize(("factor", "full", "autoregressive"), [(2, 60, 740), (5, 140, 2900)])
def test_table2_dmlab_strides(factor, full, autoregressive):
    length = 36 * factor
    assert nfe("mgm", 20, length, **DMLAB, stride=24) == full
    assert nfe("mgm", 20, length, chunk_size=36, n_context_frames=35, stride=1) == autoregressive


@pytest.mark.parametrize(("factor", "df", "rolling"), [(1, 286, 500), (2, 858, 896), (5, 2002, 2084)])
def test_table_s6_dmlab_baselines(factor, df, rolling):
    length = 36 * factor
    assert nfe("diffusion_forcing", 250, length, **DMLAB) == df
    assert nfe("rolling", 250, length, **DMLAB) == rolling


def test_guidance_triples_every_formula():
    for sampler in ("mgm", "fm", "diffusion_forcing", "rolling"):
        plain = SamplerConfig(sampler=sampler, sampling_steps=7, chunk_size=6, n_context_frames=2)
        guided = SamplerConfig(sampler=sampler, sampling_steps=7, chunk_size=6, n_context_frames=2, guidance_scale=1.5)
        assert expected_nfe(guided, 23) == 3 * expected_nfe(plain, 23)


def test_num_chunks_edge_cases():
    assert num_chunks(2, 16, 2, 14) == 0  # nothing to generate
    assert num_chunks(9, 16, 2, 14) == 1  # shorter than one chunk
    assert num_chunks(16, 16, 2, 14) == 1
    assert num_chunks(17, 16, 2, 14) == 2
    assert expected_nfe(SamplerConfig(), 2) == 0


def test_plan_matches_chunk_count_and_paper_final_chunk_rule():
    for length, k, m in itertools.product(range(1, 40), (2, 3, 5, 8), (1, 2, 4)):
        if m >= k or length < m:
            continue
        for s in range(1, k - m + 1):
            plan = plan_chunks(length, k, m, s)
            assert len(plan) == num_chunks(length, k, m, s)
            done = m
            for i, c in enumerate(plan):
                assert c.start + c.n_context == done and c.n_context >= m
                assert c.n_context + c.n_new == min(k, length)  # every window has k frames (or all of L)
                assert c.n_new == (min(k - m, length - m) if i == 0 else min(s, length - done))
                done += c.n_new
            assert done == max(length, m)
            if plan and len(plan) > 1 and plan[-1].n_new < s:  # final chunk rule: m = k - R
                assert plan[-1].n_context == k - plan[-1].n_new


# ------------------------------------------------------------------ counted == formula
def _geometries(seed: int, count: int):
    rng = random.Random(seed)
    combos = set()
    while len(combos) < count:
        k = rng.choice([2, 3, 4, 5, 7, 9])
        m = rng.randint(1, k - 1)
        s = rng.randint(1, k - m)
        length = rng.choice([m, m + 1, k - 1, k, k + 1, 2 * k + 3, 3 * k - 1, 4 * k])
        steps = rng.choice([1, 2, 3, 5, 8])
        if length >= m:
            combos.add((length, k, m, s, steps))
    return sorted(combos)


@pytest.mark.parametrize("sampler", ["mgm", "fm", "diffusion_forcing", "rolling"])
@pytest.mark.parametrize("guidance_scale", [0.0, 2.0])
def test_counted_nfe_equals_formula(sampler, guidance_scale):
    batch = 2
    seed = 10 * ["mgm", "fm", "diffusion_forcing", "rolling"].index(sampler) + int(guidance_scale)
    for length, k, m, s, steps in _geometries(seed=seed, count=30):
        config = SamplerConfig(
            sampler=sampler, sampling_steps=steps, chunk_size=k, n_context_frames=m, stride=s,
            guidance_scale=guidance_scale,
        )
        model = RecordingBackbone(MarkovStub(5))
        context = markov_video(torch.randint(0, 5, (batch, 1, 2)), m, 5)
        result = generate(model, context, length, config, generator=torch.Generator().manual_seed(0))
        expected = expected_nfe(config, length)
        where = f"{sampler} L={length} k={k} m={m} s={s} S={steps} w={guidance_scale}"
        assert result.nfe == expected, where
        assert model.passes(batch) == expected, where  # counted from the calls the backbone really got
        assert sum(c.nfe for c in result.chunks) == expected, where
        assert all(c.rows == (3 if guidance_scale else 1) * batch for c in model.calls), where
        assert all(c.tokens.shape[1] == min(k, length) for c in model.calls), where  # the window is k frames
        assert result.tokens.shape == (batch, length, 1, 2), where


@pytest.mark.parametrize(
    ("sampler", "steps", "expected"),
    [("mgm", 20, 120), ("fm", 250, 1500), ("diffusion_forcing", 250, 1596), ("rolling", 250, 1652)],
)
def test_table1_five_x_counts_by_running(sampler, steps, expected):
    """FFS geometry at 5x (80 frames), one token per frame: the samplers make exactly the paper's NFE."""
    config = SamplerConfig(sampler=sampler, sampling_steps=steps, **FFS)
    result = generate(MarkovStub(4), markov_video(torch.zeros(1, 1, 1, dtype=torch.long), 2, 4), 80, config)
    assert result.nfe == expected == expected_nfe(config, 80)
