"""Partial context guidance: three passes in one call, their inputs, the fused logits, ω = 0 exactly off."""

from __future__ import annotations

import pytest
import torch

from maskflow.sampling import SamplerConfig, generate
from maskflow.sampling.guidance import Denoiser, fuse_guidance
from maskflow.sampling.testing import MarkovStub, RecordingBackbone, markov_video
from maskflow.schedules import get_scheduler

K = 16


def test_three_passes_batched_in_one_call_with_the_right_inputs():
    b, m, n_new, size, level = 2, 2, 2, 8, 0.3
    model = RecordingBackbone(MarkovStub(K))
    config = SamplerConfig(
        sampler="mgm", sampling_steps=4, chunk_size=m + n_new, n_context_frames=m,
        guidance_scale=1.5, partial_context_level=level,
    )
    context = markov_video(torch.randint(0, K, (b, size, size)), m, K)
    result = generate(model, context, m + n_new, config, generator=torch.Generator().manual_seed(0))
    assert result.nfe == 3 * 4 and len(model.calls) == 4
    kept = []
    for call in model.calls:
        assert call.rows == 3 * b
        cond, partial, uncond = call.tokens.chunk(3)
        t_cond, t_partial, t_uncond = call.t.chunk(3)
        assert torch.equal(cond[:, :m], context)  # clean context, t = 1
        assert bool((t_cond[:, :m] == 1).all())
        for other, t_other in ((partial, t_partial), (uncond, t_uncond)):  # generated frames identical
            assert torch.equal(other[:, m:], cond[:, m:])
            assert torch.equal(t_other[:, m:], t_cond[:, m:])
        assert bool(((partial[:, :m] == cond[:, :m]) | (partial[:, :m] == K)).all())  # re-masked context
        assert bool((t_partial[:, :m] == level).all())
        kept.append((partial[:, :m] != K).float().mean())
        assert bool((uncond[:, :m] == K).all()) and bool((t_uncond[:, :m] == 0).all())  # no context
    kappa = float(get_scheduler("sigmoid").kappa(torch.tensor(level)))  # ~0.203 tokens kept
    assert float(torch.stack(kept).mean()) == pytest.approx(kappa, abs=0.06)
    assert torch.equal(result.tokens, markov_video(context[:, 0], m + n_new, K))


def test_fused_logits():
    torch.manual_seed(0)
    z = [torch.randn(2, 3, 2, 2, 5) for _ in range(3)]
    torch.testing.assert_close(fuse_guidance(*z, 2.0), z[0] + 2.0 * (z[1] - z[2]))

    class RowLogits:  # logits depend on the row: the denoiser must fuse cond + w (partial - uncond)
        codebook_size = mask_token_id = 5

        def __call__(self, tokens, t):
            rows = torch.arange(tokens.shape[0], dtype=torch.float32).view(-1, 1, 1, 1, 1)
            return rows * torch.ones(*tokens.shape, 5)

    denoiser = Denoiser(RowLogits(), scheduler=get_scheduler("linear"), guidance_scale=0.5, partial_context_level=0.5)
    out = denoiser(torch.zeros(2, 3, 1, 1, dtype=torch.long), torch.ones(2, 3), 1)
    # rows 0,1 cond; 2,3 partial; 4,5 uncond -> cond + 0.5 * (partial - uncond) = row - 1
    assert out.shape == (2, 2, 1, 1, 5)
    torch.testing.assert_close(out[:, 0, 0, 0, 0], torch.tensor([-1.0, 0.0]))
    assert denoiser.nfe == 3 and denoiser.calls == 1


@pytest.mark.parametrize("sampler", ["mgm", "fm", "diffusion_forcing", "rolling"])
def test_zero_guidance_is_exactly_the_conditional_sampler(sampler):
    context = torch.randint(0, K, (2, 2, 3, 3), generator=torch.Generator().manual_seed(0))
    stub = MarkovStub(K, margin=1.0, strict=False)
    base = dict(sampler=sampler, sampling_steps=4, chunk_size=5, n_context_frames=2)
    plain = RecordingBackbone(stub)
    a = generate(plain, context, 11, SamplerConfig(**base), generator=torch.Generator().manual_seed(3))
    off = RecordingBackbone(stub)
    zero = SamplerConfig(**base, guidance_scale=0.0, partial_context_level=0.6)
    b = generate(off, context, 11, zero, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.tokens, b.tokens) and a.nfe == b.nfe
    assert all(c.rows == 2 for c in off.calls)  # no extra passes
    assert all(torch.equal(x.tokens, y.tokens) and torch.equal(x.t, y.t) for x, y in zip(plain.calls, off.calls))
    guided = SamplerConfig(**base, guidance_scale=1.0)
    on = generate(stub, context, 11, guided, generator=torch.Generator().manual_seed(3))
    assert on.nfe == 3 * a.nfe


@pytest.mark.parametrize("sampler", ["mgm", "fm", "diffusion_forcing", "rolling"])
def test_guided_sampling_recovers_the_preferred_video(sampler):
    context = markov_video(torch.randint(0, K, (2, 3, 3)), 2, K)
    config = SamplerConfig(sampler=sampler, sampling_steps=4, chunk_size=5, n_context_frames=2, guidance_scale=2.0)
    result = generate(MarkovStub(K), context, 12, config, generator=torch.Generator().manual_seed(0))
    assert torch.equal(result.tokens, markov_video(context[:, 0], 12, K))


def test_independent_time_conditioning_with_guidance_passes_zero_everywhere():
    model = RecordingBackbone(MarkovStub(K))
    config = SamplerConfig(
        sampler="fm", sampling_steps=3, chunk_size=4, n_context_frames=2,
        guidance_scale=1.0, time_conditioning="independent",
    )
    generate(model, markov_video(torch.randint(0, K, (1, 2, 2)), 2, K), 6, config)
    assert all(bool((c.t == 0).all()) for c in model.calls)


def test_default_partial_context_levels():
    assert SamplerConfig(sampler="mgm").resolved_partial_context_level == 0.3
    assert SamplerConfig(sampler="fm").resolved_partial_context_level == 0.9
    assert SamplerConfig(sampler="fm", partial_context_level=0.5).resolved_partial_context_level == 0.5


def test_denoiser_checks_the_backbone_contract():
    class Wrong:
        codebook_size, mask_token_id = 8, 0

        def __call__(self, tokens, t):
            return torch.zeros(*tokens.shape, 7)

    with pytest.raises(ValueError, match="mask_token_id=0 must equal model.codebook_size=8"):
        Denoiser(Wrong(), scheduler=get_scheduler("sigmoid"))
    Wrong.mask_token_id = 8
    with pytest.raises(ValueError, match=r"expected \(1, 2, 1, 1\) \+ \(8,\)"):
        Denoiser(Wrong(), scheduler=get_scheduler("sigmoid"))(torch.zeros(1, 2, 1, 1, dtype=torch.long), torch.ones(1, 2), 1)
