"""Flowception in the discrete setting: bookkeeping (f_strip, slots), times, insertion loss, the rate head,
padding, the sampler (oracle rates, Bernoulli/Poisson, block-wise), and MaskFlow left unchanged."""

from __future__ import annotations

import math

import pytest
import torch

from maskflow.flowception import (
    FlowceptionConfig,
    FlowceptionObjective,
    f_strip,
    hazard,
    insertion_loss,
    real_frames,
    sample_extended_times,
    slot_counts,
)
from maskflow.models import BackboneConfig, MaskFlowTransformer, build_backbone
from maskflow.sampling import SamplerConfig, expected_nfe, generate
from maskflow.sampling.flowception import RateCapture, WindowState, flowception_step, sample_window, step_hazard
from maskflow.sampling.guidance import Denoiser
from maskflow.schedules import get_scheduler

K, H = 16, 8


pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def randomize(model, seed=0, std=0.05):
    g = gen(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


# ------------------------------------------------------------------------------ bookkeeping
def _brute_force(keep, real):
    """K_j by walking each video: deleted frames counted into the last kept frame on their left."""
    out = []
    for k_row, r_row in zip(keep.tolist(), real.tolist()):
        counts = []
        for present, is_real in zip(k_row, r_row):
            if present:
                counts.append(0)
            elif is_real:
                counts[-1] += 1
        out.append(counts)
    return out


def test_f_strip_and_slot_counts_match_a_brute_force_count():
    g = gen(3)
    for _ in range(50):
        b, t = 4, int(torch.randint(1, 9, (1,), generator=g))
        lengths = torch.randint(1, t + 1, (b,), generator=g)
        real = torch.arange(t)[None] < lengths[:, None]
        keep = real & (torch.rand(b, t, generator=g) < 0.5)
        keep[:, 0] = True
        x = torch.arange(b * t).reshape(b, t) * 10
        packed, frame_mask = f_strip(x, keep, fill=-1)
        counts = slot_counts(keep, real)
        assert packed.shape == counts.shape == frame_mask.shape
        for v in range(b):
            kept = x[v][keep[v]].tolist()
            assert packed[v, : len(kept)].tolist() == kept and frame_mask[v].sum() == len(kept)
            assert torch.all(packed[v, len(kept):] == -1) and torch.all(counts[v, len(kept):] == 0)
            assert counts[v, : len(kept)].tolist() == _brute_force(keep[v : v + 1], real[v : v + 1])[0]
        assert int(counts.sum()) == int((real & ~keep).sum())  # every deleted frame has exactly one slot


def test_f_strip_keeps_trailing_dimensions_and_slot_counts_refuse_a_deleted_first_frame():
    x = torch.arange(2 * 3 * 2 * 2).reshape(2, 3, 2, 2)
    keep = torch.tensor([[True, False, True], [True, True, False]])
    packed, mask = f_strip(x, keep)
    assert torch.equal(packed[0], x[0, [0, 2]]) and torch.equal(packed[1], x[1, [0, 1]]) and mask.all()
    with pytest.raises(ValueError, match="first frame of a video must be kept"):
        slot_counts(torch.tensor([[False, True]]), torch.tensor([[True, True]]))


def test_real_frames_reads_trailing_padding_and_refuses_holes():
    x = torch.zeros(2, 4, H, H, dtype=torch.long)
    x[0, 3:] = K
    assert real_frames(x, K).tolist() == [[True, True, True, False], [True] * 4]
    x[1, 1] = K
    with pytest.raises(ValueError, match="padding frames .* must come after"):
        real_frames(x, K)


def test_extended_times_context_start_frame_and_an_evolving_frame():
    sched = get_scheduler("sigmoid")
    real = torch.ones(512, 6, dtype=torch.bool)
    real[:, 5:] = torch.rand(512, 1, generator=gen(1)) < 0.5  # some videos of 5 frames
    ctx = torch.randint(0, 3, (512,), generator=gen(2))
    times = sample_extended_times(real, sched, n_context=ctx, generator=gen(0))
    assert torch.all(times.present[times.is_context]) and torch.all(times.t[times.is_context] == 1)
    assert not times.present[~real].any()
    assert torch.all(times.present[:, 0])  # the start frame (offset 0) or the context
    assert torch.all((times.tau_g >= 0) & (times.tau_g <= 2))
    no_ctx = ctx == 0
    evolving = times.present & ~times.is_context & (times.tau < 1)
    assert torch.all(evolving[no_ctx].any(dim=1)), "appendix E: every video without context has an evolving frame"
    torch.testing.assert_close(times.t, times.tau.clamp(0, 1))
    frac_deleted = float((real & ~times.present).sum() / real.sum())
    assert 0.05 < frac_deleted < 0.6  # deletions happen, but not everything is deleted


# ------------------------------------------------------------------------------ insertion loss
def test_insertion_loss_matches_hand_computed_values():
    lam = torch.tensor([[2.0, 0.5, 1.0], [3.0, 1.0, 1.0]])
    counts = torch.tensor([[1, 3, 0], [0, 2, 5]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    terms = [[2 - 1 * math.log(2), 0.5 - 3 * math.log(0.5)], [3 - 0, 1 - 0, 1 - 0]]
    loss = insertion_loss(lam.log(), counts, mask)
    assert float(loss) == pytest.approx(sum(map(sum, terms)) / 5, rel=1e-6)  # mean over present frames
    loss_v = insertion_loss(lam.log(), counts, mask, reduction="video")
    assert float(loss_v) == pytest.approx((sum(terms[0]) / 2 + sum(terms[1]) / 3) / 2, rel=1e-6)
    rho = torch.tensor([2.0, 0.5])
    loss_h = insertion_loss(lam.log(), counts, mask, weights=rho)
    assert float(loss_h) == pytest.approx((2 * sum(terms[0]) + 0.5 * sum(terms[1])) / 5, rel=1e-6)


def test_eq31_with_u_equal_rho_lambda_is_the_hazard_weighted_loss_plus_a_constant():
    """Eq. 31 Σ_j u_j − ρ K_j log u_j with u = ρ λ (eq. 17) = ρ Σ_j (λ_j − K_j log λ_j) − ρ log ρ Σ_j K_j."""
    g = gen(4)
    lam, counts, rho = torch.rand(1, 7, generator=g) * 3 + 0.1, torch.randint(0, 4, (1, 7), generator=g), 1.7
    u = rho * lam
    eq31 = float((u - rho * counts * u.log()).sum())
    ours = float(insertion_loss(lam.log(), counts, torch.ones(1, 7, dtype=torch.bool), weights=torch.tensor([rho]))) * 7
    assert eq31 == pytest.approx(ours - rho * math.log(rho) * float(counts.sum()), rel=1e-5)


def test_insertion_loss_is_minimised_at_the_expected_count():
    """Corollary B.3: the minimiser of E[λ − K log λ] is λ = E[K]."""
    counts = torch.tensor([[0, 1, 1, 4]]).float()
    z = torch.zeros(1, 4, requires_grad=True)
    opt = torch.optim.SGD([z], lr=0.05)
    for _ in range(600):
        opt.zero_grad()
        insertion_loss(z.expand(1, 4).mean(dim=1, keepdim=True).expand(1, 4), counts, torch.ones(1, 4, dtype=torch.bool)).backward()
        opt.step()
    assert float(z.detach().mean().exp()) == pytest.approx(float(counts.mean()), rel=1e-3)


def test_hazard_is_kappa_dot_over_one_minus_kappa_and_zero_outside():
    sched = get_scheduler("linear")
    t = torch.tensor([-0.1, 0.0, 0.25, 0.5, 1.0, 1.2])
    assert hazard(sched, t).tolist() == pytest.approx([0, 0, 1 / 0.75, 2.0, 0, 0])


# ------------------------------------------------------------------------------ backbone
def test_maskflow_backbone_is_unchanged_when_the_rate_head_is_off():
    """Same outputs as before the rate head existed (values recorded from the previous code)."""
    torch.manual_seed(0)
    m = randomize(build_backbone("tiny", codebook_size=K, latent_size=H)).eval()
    g = gen(1)
    x, t = torch.randint(0, K + 1, (2, 3, H, H), generator=g), torch.rand(2, 3, generator=g)
    y = m(x, t)
    y = y.detach()
    assert float(y.sum()) == pytest.approx(-4.508125305175781, abs=1e-4)
    assert float(y.abs().sum()) == pytest.approx(1841.2445068359375, rel=1e-6)
    assert y[0, 1, 2, 3, :4].tolist() == pytest.approx([0.7022928, 0.2312127, -0.0924449, -0.1894856], abs=1e-6)
    sd = m.state_dict()
    assert len(sd) == 31 and not any("rate" in k for k in sd)
    MaskFlowTransformer(BackboneConfig(**{**m.config.__dict__})).load_state_dict(sd)  # strict
    with pytest.raises(RuntimeError, match="Missing key"):
        build_backbone("tiny", codebook_size=K, latent_size=H, rate_head="exp").load_state_dict(sd)
    with pytest.raises(ValueError, match="needs a backbone built with rate_head"):
        m(x, t, return_log_rates=True)
    torch.testing.assert_close(m(x, t, frame_mask=torch.ones(2, 3, dtype=torch.bool)), y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rate_head", ["none", "exp", "softplus"])
def test_padding_frames_do_not_change_real_frames_outputs(rate_head):
    torch.manual_seed(0)
    m = randomize(build_backbone("tiny", codebook_size=K, latent_size=H, rate_head=rate_head), seed=2).eval()
    g = gen(5)
    x, t = torch.randint(0, K + 1, (2, 5, H, H), generator=g), torch.rand(2, 5, generator=g)
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    kw = {"return_log_rates": True} if rate_head != "none" else {}
    padded = m(x, t, frame_mask=mask, **kw)
    alone = m(x[:1, :3], t[:1, :3], **kw)
    other = x.clone()
    other[0, 3:] = torch.randint(0, K + 1, (2, H, H), generator=g)  # different padding content
    repadded = m(other, t, frame_mask=mask, **kw)
    if rate_head == "none":
        padded, alone, repadded = (padded, None), (alone, None), (repadded, None)
    torch.testing.assert_close(padded[0][0, :3], alone[0][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(repadded[0][0, :3], padded[0][0, :3], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(repadded[0][1], padded[0][1])
    if rate_head != "none":
        assert padded[1].shape == (2, 5) and padded[1].dtype == torch.float32
        torch.testing.assert_close(padded[1][0, :3], alone[1][0], rtol=1e-4, atol=1e-5)
        hidden, rates = m(x, t, frame_mask=mask, return_hidden=True, return_log_rates=True)
        assert hidden.shape == (2, 5, (H // 2) ** 2, 64)  # patches only: the rate token is not in the head's input
        torch.testing.assert_close(rates, padded[1])


def test_untrained_rate_head_predicts_rate_one_or_log2():
    x = torch.randint(0, K, (1, 3, H, H))
    _, exp_rates = build_backbone("tiny", codebook_size=K, latent_size=H, rate_head="exp")(x, torch.rand(1, 3), return_log_rates=True)
    _, sp_rates = build_backbone("tiny", codebook_size=K, latent_size=H, rate_head="softplus")(x, torch.rand(1, 3), return_log_rates=True)
    assert torch.all(exp_rates == 0)
    torch.testing.assert_close(sp_rates.exp(), torch.full((1, 3), math.log(2.0)))
    with pytest.raises(ValueError, match="rate_head must be one of"):
        BackboneConfig(codebook_size=K, latent_size=H, rate_head="relu")


# ------------------------------------------------------------------------------ objective
def _videos(b=4, t=6, lengths=(6, 4, 5, 6)):
    g = gen(7)
    x = torch.randint(0, K, (b, t, H, H), generator=g)
    for v, n in enumerate(lengths):
        x[v, n:] = K
    return x


def test_objective_gives_finite_losses_with_gradients_into_the_rate_head():
    torch.manual_seed(0)
    model = randomize(build_backbone("tiny", codebook_size=K, latent_size=H, rate_head="exp"), seed=3)
    for cfg in (FlowceptionConfig(max_context_frames=2), FlowceptionConfig(head="dense", reduction="video",
                insertion_weighting="hazard", global_time="logit_normal", context_drop_prob=0.5, max_context_frames=1)):
        model.zero_grad()
        out = FlowceptionObjective(cfg)(model, _videos(), generator=gen(1))
        assert math.isfinite(float(out.loss.detach())) and out.num_masked > 0
        assert set(out.extras) == {"insertion_loss", "present_frames", "pending_frames", "mean_rate"}
        out.loss.backward()
        assert float(model.rate_out.weight.grad.abs().sum()) > 0 and float(model.rate_token.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="needs a backbone with a rate head"):
        FlowceptionObjective()(build_backbone("tiny", codebook_size=K, latent_size=H), _videos())
    with pytest.raises(ValueError, match="reduction must be one of"):
        FlowceptionConfig(reduction="sum")


def test_training_learns_the_expected_number_of_missing_frames():
    """A few hundred steps on one length: the mean predicted λ approaches the mean pending count."""
    torch.manual_seed(0)
    model = build_backbone("tiny", codebook_size=K, latent_size=H, rate_head="exp")
    obj = FlowceptionObjective(FlowceptionConfig(loss_weighting="none"))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = _videos(lengths=(6, 6, 6, 6))
    first = None
    for step in range(60):
        out = obj(model, x, generator=gen(step))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        first = first if first is not None else float(out.insertion_loss)
    late = [obj(model, x, generator=gen(1000 + i)) for i in range(10)]
    assert sum(float(o.insertion_loss) for o in late) / 10 < first


# ------------------------------------------------------------------------------ sampler
class OracleRates(torch.nn.Module):
    """A 'backbone' whose rate for a frame is the number of frames missing to its right in a known video.

    Frame identity is read from its first token (the original frame index); the video has ``n`` frames.
    Logits are uniform (content is irrelevant here)."""

    has_rate_head = True

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.codebook_size = self.mask_token_id = K

    def forward(self, tokens, t, *, return_hidden=False, frame_mask=None, return_log_rates=False):
        ids = tokens[:, :, 0, 0].clone()
        nxt = torch.full_like(ids, self.n)  # the next present frame's index (n after the last one)
        nxt[:, :-1] = torch.where(frame_mask[:, 1:], ids[:, 1:], nxt[:, :-1])
        missing = (nxt - ids - 1).clamp_min(0).float()
        logits = torch.zeros(*tokens.shape, K)
        return logits, missing.clamp_min(1e-12).log()


@pytest.mark.parametrize("mode", ["poisson", "bernoulli"])
def test_oracle_rates_give_expected_insertions_k_times_reveal_probability_per_slot(mode):
    n, present = 12, [0, 1, 4, 5, 9]  # K_j = [0, 2, 0, 3, 2]; frame 0 is the context
    pending = torch.tensor([0, 2, 0, 3, 2], dtype=torch.float32)
    reps, steps, t_g = 4000, 10, 0.3
    tokens = torch.stack([torch.full((H, H), i) for i in present])[None].repeat(reps, 1, 1, 1)
    age = torch.tensor([steps, 2, 2, 2, 2]).repeat(reps, 1)  # generated frames evolving (age < S), no mask left
    state = WindowState(tokens=tokens, age=age, frame_mask=torch.ones(reps, 5, dtype=torch.bool), n_context=1)
    cfg = SamplerConfig(sampler="flowception", sampling_steps=steps, chunk_size=16, n_context_frames=1, insertion=mode)
    sched = get_scheduler(cfg.scheduler)
    capture = RateCapture(OracleRates(n))
    denoiser = Denoiser(capture, scheduler=sched, head="dense", generator=gen(9))
    new, clock, inserted = flowception_step(denoiser, capture, state, t_g, cfg, sched, capacity=16, generator=gen(9))
    assert clock == pytest.approx(t_g + 1 / steps) and denoiser.nfe == 1
    factor = step_hazard(sched, clock, 1 / steps)
    k0, k1 = (float(sched.kappa(torch.tensor([c], dtype=torch.float64))[0]) for c in (t_g, clock))
    assert factor == pytest.approx((k1 - k0) / (1 - k0))  # P(a frame pending at t_g is revealed by the clock)
    # insertions per slot: new frames are the age-0 frames; each belongs to the last old frame on its left
    old = (new.age > 0) & new.frame_mask
    slot = old.long().cumsum(dim=1) - 1
    per_slot = torch.zeros(reps, 5).scatter_add_(1, slot, (~old & new.frame_mask).float())
    expected = factor * pending if mode == "poisson" else (factor * pending).clamp(max=1)
    std = (expected.clamp_min(1e-3) / reps).sqrt() if mode == "poisson" else (expected * (1 - expected) / reps).sqrt() + 1e-4
    assert torch.all((per_slot.mean(dim=0) - expected).abs() <= 4 * std), (per_slot.mean(dim=0), expected)
    assert torch.equal(inserted, per_slot.sum(dim=1).long())


def _rate_model(bias=0.4, seed=0):
    torch.manual_seed(seed)
    m = randomize(build_backbone("tiny", codebook_size=K, latent_size=H, rate_head="exp"), seed=seed, std=0.05).eval()
    with torch.no_grad():
        m.rate_out.weight.zero_()
        m.rate_out.bias.fill_(bias)  # λ = e^0.4 ≈ 1.5 frames missing right of every frame
    return m


@pytest.mark.parametrize("insertion,unmasking", [("bernoulli", "fm"), ("poisson", "fm"), ("poisson", "mgm")])
def test_runs_leave_no_mask_token_and_every_inserted_frame_denoised(insertion, unmasking):
    model = _rate_model()
    ctx = torch.randint(0, K, (3, 2, H, H), generator=gen(1))
    cfg = SamplerConfig(sampler="flowception", sampling_steps=5, chunk_size=7, n_context_frames=2,
                        insertion=insertion, unmasking=unmasking)
    sched = get_scheduler(cfg.scheduler)
    capture = RateCapture(model)
    denoiser = Denoiser(capture, scheduler=sched, generator=gen(2))
    steps = []
    state = sample_window(denoiser, capture, ctx, cfg, sched, capacity=7, generator=gen(2), frames_per_step=steps)
    real = state.frame_mask
    assert torch.all(state.age[real] == cfg.sampling_steps), "every frame went through all S steps"
    assert not (state.tokens[real] == K).any() and torch.equal(state.tokens[:, :2], ctx)
    assert int(state.lengths.max()) > 2 and int(state.lengths.max()) <= 7
    assert denoiser.nfe == len(steps) and cfg.sampling_steps <= len(steps) <= 2 * cfg.sampling_steps
    res = generate(model, ctx, 7, cfg, generator=gen(2))
    assert res.lengths == state.lengths.tolist() and res.nfe == denoiser.nfe  # same seed, same videos
    for v, n in enumerate(res.lengths):
        assert not (res.tokens[v, :n] == K).any()


def test_no_insertion_means_context_only_after_s_steps_and_nfe_formula():
    model = _rate_model(bias=-30.0)
    ctx = torch.randint(0, K, (2, 2, H, H), generator=gen(1))
    cfg = SamplerConfig(sampler="flowception", sampling_steps=4, chunk_size=6, n_context_frames=2)
    res = generate(model, ctx, 6, cfg, generator=gen(0))
    assert res.lengths == [2, 2] and res.nfe == 4
    # the expectation: S + Σ_i (1 − κ(i/S)^n) steps, between S and 2S
    e = expected_nfe(cfg, 6)
    assert 4 < e <= 8


class ContextRates(OracleRates):
    """Rate 2 where the context (frame 0) is clean, 0.5 where it is masked: λ^w · λ_u^(1−w) = 2^w 0.5^(1−w)."""

    def forward(self, tokens, t, *, return_hidden=False, frame_mask=None, return_log_rates=False):
        clean = (tokens[:, :1] != K).all(dim=(2, 3)).float()  # (B, 1)
        log_rate = (clean * math.log(2.0) + (1 - clean) * math.log(0.5)).expand(tokens.shape[:2])
        return torch.zeros(*tokens.shape, K), log_rate


def test_insertion_guidance_combines_conditional_and_unconditional_rates_and_counts_its_pass():
    ctx = torch.randint(0, K, (400, 1, H, H), generator=gen(1))
    sched = get_scheduler("sigmoid")
    for w, guidance in ((1.0, 0.0), (2.0, 0.0), (2.0, 1.0)):
        cfg = SamplerConfig(sampler="flowception", sampling_steps=4, chunk_size=40, n_context_frames=1,
                            insertion="poisson", insertion_guidance=w, guidance_scale=guidance)
        capture = RateCapture(ContextRates(8))
        denoiser = Denoiser(capture, scheduler=sched, head="dense", guidance_scale=guidance, generator=gen(3))
        state = WindowState(tokens=ctx, age=torch.full((400, 1), 4), frame_mask=torch.ones(400, 1, dtype=torch.bool), n_context=1)
        _, clock, inserted = flowception_step(denoiser, capture, state, 0.25, cfg, sched, capacity=40, generator=gen(3))
        lam = 2.0**w * 0.5 ** (1 - w)  # eq. 36
        expected = lam * step_hazard(sched, clock, 0.25)
        assert float(inserted.float().mean()) == pytest.approx(expected, abs=4 * math.sqrt(expected / 400))
        passes = 3 if guidance else (2 if w != 1 else 1)  # the unconditional pass only when guidance lacks it
        assert denoiser.nfe == passes


def test_block_wise_generation_beyond_the_window_keeps_context_and_respects_max_length():
    model = _rate_model(bias=1.0)
    ctx = torch.randint(0, K, (2, 2, H, H), generator=gen(1))
    cfg = SamplerConfig(sampler="flowception", sampling_steps=3, chunk_size=5, n_context_frames=2, insertion="poisson")
    res = generate(model, ctx, 11, cfg, generator=gen(0))
    assert res.num_chunks > 1 and all(n <= 11 for n in res.lengths) and max(res.lengths) > 5
    assert torch.equal(res.tokens[:, :2], ctx)
    assert max(res.frames_per_step) <= 5  # no window exceeds chunk_size frames


class LastContextInserts(OracleRates):
    """Only the window's last context frame (index 1) inserts, with a huge rate: Bernoulli insertion
    adds exactly one frame per step while the clock runs (``S`` frames per window), nothing else."""

    def forward(self, tokens, t, *, return_hidden=False, frame_mask=None, return_log_rates=False):
        log_rate = torch.full(tokens.shape[:2], -30.0)
        log_rate[:, 1] = 30.0
        return torch.zeros(*tokens.shape, K), log_rate


@pytest.mark.parametrize("stop", ["length", "underfill"])
def test_block_wise_stop_rule_length_runs_windows_to_num_frames_underfill_ends_at_a_short_window(stop):
    ctx = torch.randint(0, K, (3, 2, H, H), generator=gen(1))
    cfg = SamplerConfig(sampler="flowception", sampling_steps=2, chunk_size=5, n_context_frames=2,
                        blockwise_stop=stop)
    res = generate(LastContextInserts(8), ctx, 11, cfg, generator=gen(0))
    # every window adds S = 2 frames (4 < chunk_size = 5: never full)
    if stop == "length":  # appendix F: blocks until num_frames (2 + 2 + 2 + 2 + 2 + 1, the last window cut to fit)
        assert res.lengths == [11, 11, 11] and res.num_chunks == 5
    else:
        assert res.lengths == [4, 4, 4] and res.num_chunks == 1
    assert torch.equal(res.tokens[:, :2], ctx)
    with pytest.raises(ValueError, match="unknown blockwise_stop"):
        SamplerConfig(sampler="flowception", blockwise_stop="never").validate()


def test_block_wise_stop_length_ends_a_video_whose_window_adds_no_frame():
    model = _rate_model(bias=-30.0)
    ctx = torch.randint(0, K, (2, 2, H, H), generator=gen(1))
    cfg = SamplerConfig(sampler="flowception", sampling_steps=3, chunk_size=5, n_context_frames=2)
    res = generate(model, ctx, 20, cfg, generator=gen(0))
    assert res.lengths == [2, 2] and res.num_chunks == 1  # no endless loop of empty windows


@pytest.mark.parametrize("unmasking", ["fm", "mgm"])
def test_frame_time_power_sets_each_frames_level_and_every_frame_is_still_clean_after_s_steps(unmasking):
    """Appendix E's power schedule: a frame of age a is at level (a / S)^γ (FM: the level the backbone
    sees; MGM: the masked share follows the unmasking schedule at (a / S)^γ)."""
    model = _rate_model(bias=0.4)
    seen = []
    model.register_forward_pre_hook(lambda mod, args: seen.append(args[1].clone()))
    ctx = torch.randint(0, K, (3, 2, H, H), generator=gen(1))
    steps, power = 5, 2.0
    cfg = SamplerConfig(sampler="flowception", sampling_steps=steps, chunk_size=7, n_context_frames=2,
                        unmasking=unmasking, frame_time_power=power)
    sched = get_scheduler(cfg.scheduler)
    capture = RateCapture(model)
    denoiser = Denoiser(capture, scheduler=sched, generator=gen(2))
    state = sample_window(denoiser, capture, ctx, cfg, sched, capacity=7, generator=gen(2))
    real = state.frame_mask
    assert torch.all(state.age[real] == steps) and not (state.tokens[real] == K).any()
    if unmasking == "fm":
        allowed = torch.tensor([(a / steps) ** power for a in range(steps + 1)])
        levels = torch.cat([t[:, 2:].flatten() for t in seen])
        assert bool((levels[:, None] - allowed[None]).abs().min(dim=1).values.max() < 1e-6)
        assert bool(((levels > 0) & (levels < 1)).any())  # frames were seen mid-way, at (a/S)^2
    else:  # one step of a new frame: the share left masked is mask_ratio((1/S)^γ), not mask_ratio(1/S)
        from maskflow.sampling.flowception import WindowState, flowception_step
        from maskflow.sampling.unmasking import mask_ratio

        fresh = torch.cat([ctx, torch.full_like(ctx[:, :1], K)], dim=1)
        st = WindowState(tokens=fresh, age=torch.tensor([[steps, steps, 0]] * 3),
                         frame_mask=torch.ones(3, 3, dtype=torch.bool), n_context=2)
        after, _, _ = flowception_step(denoiser, capture, st, 0.0, cfg, sched, capacity=3, generator=gen(3))
        left = (after.tokens[:, 2] == K).float().mean(dim=(1, 2))
        def left_after_one_step(u):  # masked tokens after the step (at least one is committed per step)
            return min(math.floor(H * H * mask_ratio(cfg.unmasking_schedule, u) + 0.5), H * H - 1) / (H * H)

        want = left_after_one_step((1 / steps) ** power)
        assert torch.allclose(left, torch.full_like(left, want)) and want != left_after_one_step(1 / steps)
    with pytest.raises(ValueError, match="frame_time_power"):
        SamplerConfig(sampler="flowception", frame_time_power=0).validate()


def test_impossible_settings_are_refused_up_front():
    model = _rate_model()
    ctx = torch.randint(0, K, (1, 2, H, H))
    with pytest.raises(ValueError, match="must exceed n_context_frames=2"):
        generate(model, ctx, 2, SamplerConfig(sampler="flowception", chunk_size=6, n_context_frames=2))
    with pytest.raises(ValueError, match="unknown insertion"):
        SamplerConfig(sampler="flowception", insertion="geometric").validate()
    with pytest.raises(ValueError, match="insertion_guidance"):
        SamplerConfig(sampler="flowception", insertion_guidance=0).validate()
    with pytest.raises(ValueError, match="dynamics=flowception"):
        generate(build_backbone("tiny", codebook_size=K, latent_size=H), ctx, 4,
                 SamplerConfig(sampler="flowception", chunk_size=6, n_context_frames=2))


@pytest.mark.parametrize("unmasking", ["fm", "mgm"])
def test_masked_and_dense_heads_give_the_same_videos(unmasking):
    """The K-way head only at the tokens a step samples draws the same random numbers as the dense one."""
    model = _rate_model(bias=0.3)
    ctx = torch.randint(0, K, (2, 2, H, H), generator=gen(1))
    cfg = SamplerConfig(sampler="flowception", sampling_steps=4, chunk_size=6, n_context_frames=2, unmasking=unmasking)
    masked = generate(model, ctx, 6, cfg, generator=gen(5), head="masked")
    dense = generate(model, ctx, 6, cfg, generator=gen(5), head="dense")
    assert masked.lengths == dense.lengths and masked.nfe == dense.nfe
    assert torch.equal(masked.tokens, dense.tokens)


def test_insertions_beyond_the_capacity_are_cut_to_fit():
    from maskflow.sampling.flowception import insert_frames

    state = WindowState(tokens=torch.zeros(3, 2, H, H, dtype=torch.long), age=torch.full((3, 2), 4),
                        frame_mask=torch.ones(3, 2, dtype=torch.bool), n_context=1)
    counts = torch.tensor([[3, 2], [0, 1], [0, 0]])
    new, inserted = insert_frames(state, counts, capacity=4, steps=4, mask_id=K, generator=gen(0))
    assert inserted.tolist() == [2, 1, 0] and new.lengths.tolist() == [4, 3, 2]
    assert torch.equal(new.age[1, :3], torch.tensor([4, 4, 0]))  # the frame went right of frame 1
    assert bool((new.tokens[1, 2] == K).all()) and not bool((new.tokens[1, :2] == K).any())
    assert not new.frame_mask[2, 2:].any() and int(new.age[0].eq(0).sum()) == 2


class PendingRates(OracleRates):
    """All ``n − present`` missing frames of a ``n``-frame video attributed to frame 0 (the context), rate 0
    elsewhere: the exact pending count, whatever the identities of the inserted frames."""

    def forward(self, tokens, t, *, return_hidden=False, frame_mask=None, return_log_rates=False):
        missing = (self.n - frame_mask.sum(dim=1, keepdim=True)).clamp_min(0).float()
        rates = torch.zeros(tokens.shape[:2])
        rates[:, :1] = missing
        return torch.zeros(*tokens.shape, K), rates.clamp_min(1e-12).log()


def test_step_factor_is_the_reveal_probability_of_the_step():
    sched = get_scheduler("sigmoid")
    kappa = lambda t: float(sched.kappa(torch.tensor([t], dtype=torch.float64))[0])  # noqa: E731
    for t_g in (0.1, 0.5, 0.9):
        assert step_hazard(sched, t_g, 0.1) == pytest.approx((kappa(t_g) - kappa(t_g - 0.1)) / (1 - kappa(t_g - 0.1)))
    assert step_hazard(sched, 1.0, 0.1) == 1.0
    # first order in h: Algorithm 1's h ρ_κ(t_g)
    assert step_hazard(sched, 0.5, 1e-4) == pytest.approx(1e-4 * float(hazard(sched, torch.tensor([0.5]))[0]), rel=1e-3)
    # the exact factor is a probability; h ρ_κ(t_g) at the updated clock is not (1.28 at t_g = 0.9, h = 0.1)
    assert all(0.0 <= step_hazard(sched, k / 10, 0.1) <= 1.0 for k in range(1, 11))


def test_present_frames_follow_kappa_of_the_clock_with_exact_pending_counts():
    """Every frame of a video is revealed at a time of CDF κ (section A.3): with the exact expected pending
    count as the rate, E[frames present after the step ending at t_g] = 1 + (n − 1) κ(t_g) at any step
    size (Poisson insertion: E[inserted] = rate × the step's reveal probability)."""
    n, reps, steps = 9, 600, 10
    sched = get_scheduler("sigmoid")
    cfg = SamplerConfig(sampler="flowception", sampling_steps=steps, chunk_size=16, n_context_frames=1, insertion="poisson")
    capture = RateCapture(PendingRates(n))
    denoiser = Denoiser(capture, scheduler=sched, head="dense", generator=gen(4))
    state = WindowState(tokens=torch.randint(0, K, (reps, 1, H, H), generator=gen(5)), age=torch.full((reps, 1), steps),
                        frame_mask=torch.ones(reps, 1, dtype=torch.bool), n_context=1)
    clock, g = 0.0, gen(6)
    for _ in range(steps - 1):  # up to t_g = 0.9 (the last step reveals everything left)
        state, clock, _ = flowception_step(denoiser, capture, state, clock, cfg, sched, capacity=n, generator=g)
        expected = 1 + (n - 1) * float(sched.kappa(torch.tensor([clock]))[0])
        mean = float(state.lengths.float().mean())
        assert mean == pytest.approx(expected, abs=0.25), (clock, mean, expected)
