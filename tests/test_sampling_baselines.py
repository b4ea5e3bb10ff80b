"""Diffusion Forcing (pyramid) and Rolling Diffusion baselines in the discrete masking setting."""

from __future__ import annotations

import pytest
import torch

from maskflow.sampling import SamplerConfig, expected_nfe, generate
from maskflow.sampling.baselines import LevelSchedule, pyramid_matrix, pyramid_schedule, rolling_schedule
from maskflow.sampling.testing import MarkovStub, RecordingBackbone, markov_video
from maskflow.schedules import get_scheduler

K = 16
SIGMOID = get_scheduler("sigmoid")


# ------------------------------------------------------------------ Diffusion Forcing
def test_pyramid_matrix_is_the_papers():
    steps, k = 5, 4
    e = pyramid_matrix(steps, k)
    assert e.shape == (steps + k, k)
    for i in range(steps + k):
        for j in range(k):
            assert int(e[i, j]) == min(max(steps + j - i, 0), steps - 1)
    assert bool((e[0] == steps - 1).all()) and bool((e[-1] == 0).all())


@pytest.mark.parametrize(("steps", "k", "n_ctx", "n_new"), [(5, 4, 2, 2), (3, 6, 1, 5), (1, 3, 1, 2), (4, 5, 2, 1)])
def test_pyramid_levels_wait_rise_and_end_clean(steps, k, n_ctx, n_new):
    sched = pyramid_schedule(steps, k, n_ctx, n_new, SIGMOID)
    assert sched.num_passes == steps + k
    assert bool((sched.before[0] == 0).all()) and bool((sched.after[-1] == 1).all())
    assert torch.equal(sched.before[1:], sched.after[:-1])
    assert bool((sched.after >= sched.before).all())
    for col in range(n_new):
        j = k - n_new + col  # window column (right-aligned)
        if steps > 1:
            torch.testing.assert_close(sched.after[:, col], 1 - pyramid_matrix(steps, k)[:, j].double() / (steps - 1))
            first_move = int((sched.after[:, col] > 0).nonzero()[0])
            assert first_move == j + 2  # waits fully masked until its turn
        assert float(sched.p_unmask[:, col].max()) <= 1.0
    moving = sched.after > sched.before
    assert bool((sched.p_unmask[~moving] == 0).all())
    assert bool((sched.p_unmask[sched.after == 1][moving[sched.after == 1]] == 1).all())


def test_level_schedule_unmask_probability_follows_kappa():
    before = torch.tensor([[0.0, 0.2, 0.5]], dtype=torch.float64)
    after = torch.tensor([[0.3, 0.2, 1.0]], dtype=torch.float64)
    sched = LevelSchedule(before, after, SIGMOID)
    ka, kb = SIGMOID.kappa(before[0, 0]), SIGMOID.kappa(after[0, 0])
    assert float(sched.p_unmask[0, 0]) == pytest.approx(float((kb - ka) / (1 - ka)))
    assert float(sched.p_unmask[0, 1]) == 0.0 and float(sched.p_unmask[0, 2]) == 1.0
    assert sched.active == [(0, 3)]  # frames 0 and 2 move: the range covers both


def test_diffusion_forcing_run_waits_and_follows_levels():
    steps, k, m = 4, 5, 2
    model = RecordingBackbone(MarkovStub(K, margin=1.0, strict=False))
    config = SamplerConfig(sampler="diffusion_forcing", sampling_steps=steps, chunk_size=k, n_context_frames=m)
    context = torch.randint(0, K, (2, m, 3, 3))
    result = generate(model, context, 11, config, generator=torch.Generator().manual_seed(0))
    assert len(model.calls) == expected_nfe(config, 11) == 3 * (k + steps)
    for i, call in enumerate(model.calls):
        masked = model.masked_per_frame(i)
        assert bool((masked[call.t == 0] == 9).all())  # a frame at level 0 is fully masked (waiting)
        assert bool((masked[call.t == 1] == 0).all())  # a frame at level 1 (context or done) is clean
    first = 0
    for chunk in result.chunks:  # within a chunk, committed tokens never change
        calls = model.calls[first : first + chunk.nfe]
        first += chunk.nfe
        for prev, nxt in zip(calls, calls[1:]):
            committed = prev.tokens != K
            assert torch.equal(prev.tokens[committed], nxt.tokens[committed])
    assert torch.equal(result.tokens[:, :m], context) and not bool((result.tokens == K).any())


def test_diffusion_forcing_masked_share_follows_kappa():
    """One generated frame of 32x32 tokens: after each pass its masked share is close to 1 - kappa(level)."""
    steps, k = 6, 2
    model = RecordingBackbone(MarkovStub(K, margin=0.0, strict=False))
    config = SamplerConfig(sampler="diffusion_forcing", sampling_steps=steps, chunk_size=k, n_context_frames=1)
    generate(model, torch.randint(0, K, (4, 1, 32, 32)), 2, config, generator=torch.Generator().manual_seed(0))
    for call in model.calls:
        level = call.t[:, 1]
        share = (call.tokens[:, 1] == K).float().mean(dim=(1, 2))
        torch.testing.assert_close(share, 1 - SIGMOID.kappa(level), atol=0.05, rtol=0)


# ------------------------------------------------------------------ Rolling Diffusion
def test_rolling_schedules():
    steps, w, m = 5, 6, 2
    r = w - m
    state = torch.tensor([(r - 1 - q) / r for q in range(r)], dtype=torch.float64)
    before, after = rolling_schedule(steps, w, m, "init")
    assert before.shape == (steps, r) and bool((before[0] == 0).all())
    torch.testing.assert_close(after[-1], state)
    assert bool((after[:, -1] == 0).all())  # the newest frame waits fully masked during init
    before, after = rolling_schedule(steps, w, m, "shift", passes=2)
    torch.testing.assert_close(before[0], state)
    assert float(after[-1, 0]) == 1.0  # frame next to the context is clean after the shift's passes
    torch.testing.assert_close(after[-1, 1:], state[:-1])  # ... and the others moved one slot up
    before, after = rolling_schedule(steps, w, m, "final")
    torch.testing.assert_close(before[0], state)
    assert bool((after[-1] == 1).all())


@pytest.mark.parametrize(("length", "k", "m", "steps"), [(12, 5, 2, 4), (9, 4, 3, 3), (4, 6, 2, 3), (10, 5, 1, 1)])
def test_rolling_run(length, k, m, steps):
    model = RecordingBackbone(MarkovStub(K))
    config = SamplerConfig(sampler="rolling", sampling_steps=steps, chunk_size=k, n_context_frames=m)
    context = markov_video(torch.randint(0, K, (2, 2, 2)), m, K)
    result = generate(model, context, length, config, generator=torch.Generator().manual_seed(0))
    assert result.nfe == len(model.calls) == expected_nfe(config, length)
    assert torch.equal(result.tokens, markov_video(context[:, 0], length, K))
    kinds = [c.kind for c in result.chunks]
    assert kinds == ["init"] + ["shift"] * max(length - k, 0) + ["final"]
    assert result.num_chunks == 1 + max(length - k, 0)
    for i, call in enumerate(model.calls):
        assert call.tokens.shape[1] == min(k, length)
        assert bool((call.t[:, :m] == 1).all())
        masked = model.masked_per_frame(i)
        assert bool((masked[:, :m] == 0).all())
        assert bool((masked[call.t == 0] == 4).all())  # level 0: fully masked (waiting)
