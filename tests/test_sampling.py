"""generate(): every sampler recovers a known video, keeps the context, leaves no mask, is seeded;
MGM (Algorithm 4) and FM (Algorithm 3) follow their schedules and time conditioning."""

from __future__ import annotations

import math

import pytest
import torch

from maskflow.sampling import SamplerConfig, expected_nfe, generate
from maskflow.sampling.categorical import sample_categorical
from maskflow.sampling.fm import fm_jump_probabilities
from maskflow.sampling.testing import MarkovStub, RecordingBackbone, markov_video
from maskflow.sampling.unmasking import mask_ratio, masked_counts
from maskflow.schedules import get_scheduler

K = 16
SAMPLERS = ("mgm", "fm", "diffusion_forcing", "rolling")
STEPS = {"mgm": 6, "fm": 8, "diffusion_forcing": 4, "rolling": 5}


def markov_context(batch: int, m: int, size: int = 3, seed: int = 0) -> torch.Tensor:
    first = torch.randint(0, K, (batch, size, size), generator=torch.Generator().manual_seed(seed))
    return markov_video(first, m, K)


# ------------------------------------------------------------------ generate: end-to-end properties
@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize(
    ("length", "k", "m", "s"),
    [(17, 6, 2, None), (17, 6, 2, 1), (11, 6, 5, 1), (4, 6, 2, None), (6, 6, 1, 3), (2, 6, 2, None)],
)
def test_recovers_the_preferred_video_exactly(sampler, length, k, m, s):
    context = markov_context(3, m)
    config = SamplerConfig(sampler=sampler, sampling_steps=STEPS[sampler], chunk_size=k, n_context_frames=m, stride=s)
    result = generate(MarkovStub(K), context, length, config, generator=torch.Generator().manual_seed(1))
    assert result.tokens.dtype == torch.int64
    assert result.tokens.shape == (3, length, 3, 3)
    assert torch.equal(result.tokens, markov_video(context[:, 0], length, K))
    assert result.nfe == expected_nfe(config, length)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_context_kept_no_mask_left_and_every_window_in_range(sampler):
    length, m = 13, 3
    context = torch.randint(0, K, (2, m, 2, 2), generator=torch.Generator().manual_seed(3))
    model = RecordingBackbone(MarkovStub(K, margin=0.0, strict=False))  # uniform logits: random videos
    config = SamplerConfig(sampler=sampler, sampling_steps=STEPS[sampler], chunk_size=5, n_context_frames=m, stride=1)
    result = generate(model, context, length, config, generator=torch.Generator().manual_seed(0))
    video = result.tokens
    assert torch.equal(video[:, :m], context)
    assert int(video.min()) >= 0 and int(video.max()) < K  # no mask token (id K), only codes
    for call in model.calls:
        t, tokens = call.t, call.tokens
        clean_frames = t == 1.0
        # frames presented as clean context (t = 1) are fully unmasked and are frames of the final video
        assert not bool(((tokens == K) & clean_frames[..., None, None]).any())
        assert tokens.shape[1] <= 5


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_context_frames_in_each_chunk_are_the_final_video_frames(sampler):
    length, m = 12, 2
    context = torch.randint(0, K, (2, m, 2, 2), generator=torch.Generator().manual_seed(4))
    model = RecordingBackbone(MarkovStub(K, margin=0.0, strict=False))
    config = SamplerConfig(sampler=sampler, sampling_steps=3, chunk_size=5, n_context_frames=m)
    video = generate(model, context, length, config, generator=torch.Generator().manual_seed(0)).tokens
    # every clean input token equals the token the final video has at that place: nothing committed is changed
    for call in model.calls:
        window = call.tokens
        matches = [
            start
            for start in range(length - window.shape[1] + 1)
            if bool(((window == K) | (window == video[:, start : start + window.shape[1]])).all())
        ]
        assert matches, "a window holds a clean token that differs from the final video"


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_same_seed_same_video_other_seed_other_video(sampler):
    context = torch.randint(0, K, (2, 2, 3, 3), generator=torch.Generator().manual_seed(5))
    config = SamplerConfig(sampler=sampler, sampling_steps=STEPS[sampler], chunk_size=5, n_context_frames=2)
    model = MarkovStub(K, margin=0.0, strict=False)

    def run(seed: int) -> torch.Tensor:
        return generate(model, context, 11, config, generator=torch.Generator().manual_seed(seed)).tokens

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


def test_works_under_inference_mode_and_reports_chunks(capsys):
    context = markov_context(2, 2)
    config = SamplerConfig(sampler="mgm", sampling_steps=4, chunk_size=6, n_context_frames=2)
    with torch.inference_mode():
        result = generate(MarkovStub(K), context, 15, config, progress=True)
    assert torch.equal(result.tokens, markov_video(context[:, 0], 15, K))
    assert result.num_chunks == len(result.chunks) == 4  # ceil((15 - 6) / 4) + 1
    assert [c.n_new for c in result.chunks] == [4, 4, 4, 1]
    assert [c.n_context for c in result.chunks] == [2, 2, 2, 5]  # final chunk: m = k - R
    assert result.wall_time_s > 0
    assert "sampling (mgm)" in capsys.readouterr().err


def test_rejects_bad_context():
    config = SamplerConfig(sampler="mgm", sampling_steps=2, chunk_size=4, n_context_frames=2)
    model = MarkovStub(K)
    with pytest.raises(ValueError, match="n_context_frames=2"):
        generate(model, torch.zeros(1, 3, 2, 2, dtype=torch.long), 8, config)
    with pytest.raises(ValueError, match="mask token"):
        generate(model, torch.full((1, 2, 2, 2), K), 8, config)
    with pytest.raises(ValueError, match="integer"):
        generate(model, torch.zeros(1, 2, 2, 2), 8, config)
    with pytest.raises(ValueError, match="num_frames"):
        generate(model, torch.zeros(1, 2, 2, 2, dtype=torch.long), 1, config)


# ------------------------------------------------------------------ MGM (Algorithm 4)
@pytest.mark.parametrize("schedule", ["arccos", "cosine", "linear"])
def test_mgm_commits_exactly_the_schedule_and_only_masked_tokens(schedule):
    steps, m, n_new, size = 7, 2, 3, 4
    model = RecordingBackbone(MarkovStub(K, margin=2.0, strict=False))  # peaked but random confidences
    geometry = dict(sampling_steps=steps, chunk_size=m + n_new, n_context_frames=m)
    config = SamplerConfig(sampler="mgm", unmasking_schedule=schedule, **geometry)
    context = torch.randint(0, K, (3, m, size, size))
    result = generate(model, context, m + n_new, config, generator=torch.Generator().manual_seed(0))
    n0 = n_new * size * size
    remaining = [n0, *masked_counts(n0, steps, schedule)]
    for i, call in enumerate(model.calls):
        masked = (call.tokens[:, m:] == K).flatten(1).sum(-1)
        assert masked.tolist() == [remaining[i]] * 3  # per video, exactly the schedule
    for prev, nxt in zip(model.calls, model.calls[1:]):  # committed tokens never change
        committed = prev.tokens != K
        assert torch.equal(prev.tokens[committed], nxt.tokens[committed])
    assert not bool((result.tokens == K).any())


def reference_mgm(model, context, n_new, steps, schedule):
    """Algorithm 4 the plain way: every step re-finds the masked positions and re-counts each frame."""
    b, c, h, w = context.shape
    x = torch.cat([context, context.new_full((b, n_new, h, w), K)], dim=1)
    t = torch.ones(b, c + n_new)
    t[:, c:] = 0.0
    gen, sched, prev = torch.Generator().manual_seed(5), get_scheduler("sigmoid"), n_new * h * w
    for n_left in masked_counts(prev, steps, schedule):
        logits = model(x, t)[:, c:].flatten(1, 3)  # [B, N, K]
        if prev - n_left:
            flat = x[:, c:].reshape(b, -1)
            pos = (flat == K).to(torch.int8).sort(dim=1, descending=True, stable=True).indices[:, :prev]
            codes, conf = sample_categorical(logits[torch.arange(b)[:, None], pos], 1.0, gen)
            top = conf.topk(prev - n_left, dim=1, sorted=False).indices
            flat.scatter_(1, pos.gather(1, top), codes.gather(1, top))
            x[:, c:] = flat.view(b, n_new, h, w)
            t[:, c:] = sched.inverse((x[:, c:] != K).float().mean(dim=(2, 3)))
        prev = n_left
    return x[:, c:]


@pytest.mark.parametrize("schedule", ["arccos", "linear"])
def test_mgm_incremental_bookkeeping_equals_recounting_every_step(schedule):
    """The sampler updates the masked positions and frame counts from the committed tokens only; the
    result equals re-finding them from the whole chunk at every step (same seed, same video)."""
    model = MarkovStub(K, margin=2.0, strict=False)
    m, n_new, steps = 2, 3, 6
    context = torch.randint(0, K, (3, m, 4, 4), generator=torch.Generator().manual_seed(2))
    config = SamplerConfig(sampler="mgm", sampling_steps=steps, chunk_size=m + n_new, n_context_frames=m,
                           unmasking_schedule=schedule)
    got = generate(model, context, m + n_new, config, generator=torch.Generator().manual_seed(5))
    assert torch.equal(got.tokens[:, m:], reference_mgm(model, context, n_new, steps, schedule))


def test_mgm_time_conditioning_dependent_and_independent():
    m, n_new, steps = 2, 3, 5
    scheduler = get_scheduler("sigmoid")
    context = markov_context(2, m, size=4)
    for conditioning in ("dependent", "independent"):
        model = RecordingBackbone(MarkovStub(K))
        geometry = dict(sampling_steps=steps, chunk_size=m + n_new, n_context_frames=m)
        config = SamplerConfig(sampler="mgm", time_conditioning=conditioning, **geometry)
        generate(model, context, m + n_new, config, generator=torch.Generator().manual_seed(0))
        for call in model.calls:
            if conditioning == "independent":
                assert bool((call.t == 0).all())  # eq. 8
                continue
            assert bool((call.t[:, :m] == 1).all())
            unmasked = (call.tokens[:, m:] != K).float().mean(dim=(2, 3))
            torch.testing.assert_close(call.t[:, m:], scheduler.inverse(unmasked))
        if conditioning == "dependent":
            assert bool((model.calls[0].t[:, m:] == 0).all())


def test_mgm_gumbel_noise_keeps_counts_and_changes_order():
    m, n_new, steps = 1, 2, 4
    context = torch.randint(0, K, (2, m, 4, 4))
    base = dict(sampler="mgm", sampling_steps=steps, chunk_size=m + n_new, n_context_frames=m)
    outs = {}
    for g in (0.0, 4.5):
        model = RecordingBackbone(MarkovStub(K, margin=1.0, strict=False))
        config = SamplerConfig(**base, gumbel_temperature=g)
        generate(model, context, m + n_new, config, generator=torch.Generator().manual_seed(0))
        outs[g] = [(c.tokens == K).flatten(1).sum(-1).tolist() for c in model.calls]
    assert outs[0.0] == outs[4.5]


def test_mgm_with_fewer_tokens_than_steps_still_makes_exactly_steps_passes():
    model = RecordingBackbone(MarkovStub(K))
    config = SamplerConfig(sampler="mgm", sampling_steps=9, chunk_size=3, n_context_frames=2)
    result = generate(model, markov_context(1, 2, size=1), 3, config)  # 1 token to generate, 9 steps
    assert result.nfe == len(model.calls) == 9
    assert not bool((result.tokens == K).any())


def test_unmasking_schedules():
    for name in ("arccos", "cosine", "linear"):
        assert mask_ratio(name, 0.0) == pytest.approx(1.0)
        assert mask_ratio(name, 1.0) == pytest.approx(0.0, abs=1e-12)
        values = [mask_ratio(name, i / 50) for i in range(51)]
        assert all(a >= b for a, b in zip(values, values[1:]))
        for n0, steps in ((1, 1), (5, 9), (100, 20), (14336, 20)):
            counts = masked_counts(n0, steps, name)
            assert len(counts) == steps and counts[-1] == 0
            prev = n0
            for n in counts:
                assert n <= max(prev - 1, 0)
                prev = n
    # 'arccos' is the continuum limit of the authors' profile: step i unmasks ∝ arccos(linspace(1, 0, S)[i])
    steps = 2000
    profile = [math.acos(1 - i / (steps - 1)) for i in range(steps)]
    total = sum(profile)
    for r in (0.25, 0.5, 0.9):
        done = sum(profile[: int(r * steps)]) / total
        assert 1 - done == pytest.approx(mask_ratio("arccos", r), abs=2e-3)
    assert mask_ratio("cosine", 0.5) == pytest.approx(math.cos(math.pi / 4))
    assert masked_counts(100, 4, "linear") == [75, 50, 25, 0]


# ------------------------------------------------------------------ FM (Algorithm 3)
def test_fm_jump_probabilities():
    linear = get_scheduler("linear")
    probs = fm_jump_probabilities(4, linear)  # h / (1 - t) for kappa = t
    assert probs[:3] == pytest.approx([0.25, 0.25 / 0.75, 0.25 / 0.5], rel=1e-4)  # kappa is clamped at 1e-5
    assert probs[-1] == 1.0
    for name in ("sigmoid", "cosine", "linear"):
        for steps in (1, 2, 250):
            p = fm_jump_probabilities(steps, get_scheduler(name))
            assert p[-1] == 1.0 and all(0.0 <= v <= 1.0 for v in p)


def test_fm_levels_and_only_masked_tokens_move():
    m, n_new, steps = 2, 2, 6
    model = RecordingBackbone(MarkovStub(K, margin=1.0, strict=False))
    config = SamplerConfig(sampler="fm", sampling_steps=steps, chunk_size=m + n_new, n_context_frames=m)
    context = torch.randint(0, K, (2, m, 3, 3))
    result = generate(model, context, m + n_new, config, generator=torch.Generator().manual_seed(0))
    for i, call in enumerate(model.calls):
        assert bool((call.t[:, :m] == 1).all())
        torch.testing.assert_close(call.t[:, m:], torch.full((2, n_new), i / steps))
    for prev, nxt in zip(model.calls, model.calls[1:]):
        committed = prev.tokens != K
        assert torch.equal(prev.tokens[committed], nxt.tokens[committed])
        assert int((nxt.tokens == K).sum()) <= int((prev.tokens == K).sum())
    assert not bool((result.tokens == K).any())


def test_fm_single_step_unmasks_everything():
    config = SamplerConfig(sampler="fm", sampling_steps=1, chunk_size=4, n_context_frames=1)
    context = markov_context(2, 1)
    result = generate(MarkovStub(K), context, 9, config)
    assert torch.equal(result.tokens, markov_video(context[:, 0], 9, K))


# ------------------------------------------------------------------ categorical sampling
def test_sample_categorical_matches_softmax_and_reports_confidence():
    logits = torch.tensor([[0.0, 1.0, 2.0, -1e9]]).expand(40000, 4)
    gen = torch.Generator().manual_seed(0)
    tokens, conf = sample_categorical(logits, 1.0, gen)
    probs = torch.softmax(logits[0], -1)
    freq = torch.bincount(tokens, minlength=4).float() / tokens.numel()
    torch.testing.assert_close(freq, probs, atol=0.01, rtol=0)
    assert int((tokens == 3).sum()) == 0  # probability 0 is never drawn
    torch.testing.assert_close(conf, probs[tokens])
    hot, conf_hot = sample_categorical(logits, 0.05, gen)  # low temperature: the argmax
    assert bool((hot == 2).all()) and bool((conf_hot > 0.99).all())
    tokens2, _ = sample_categorical(logits, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(tokens, tokens2)


@pytest.mark.parametrize("k", [200, 64, 130])
def test_sample_categorical_two_level_cdf_over_many_blocks(k):
    """K above the block size (with a partial last block for 200 and 130): frequencies follow the softmax,
    zero-probability classes (a whole block, block edges, the last class) are never drawn."""
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(k, generator=gen) * 1.5
    zero = torch.zeros(k, dtype=torch.bool)
    zero[0] = zero[63] = zero[k - 1] = True
    if k >= 128:
        zero[64:128] = True  # a whole block without mass
    logits[zero] = -float("inf")
    tokens, conf = sample_categorical(logits.expand(60000, k), 1.0, gen)
    probs = torch.softmax(logits, -1)
    freq = torch.bincount(tokens, minlength=k).float() / tokens.numel()
    assert int(zero[tokens].sum()) == 0
    assert float((freq - probs).abs().max()) < 0.006
    torch.testing.assert_close(conf, probs[tokens])
