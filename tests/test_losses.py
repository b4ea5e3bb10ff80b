"""maskflow/losses.py: masked cross-entropy (eq. 7) and (fused-)SNR weights (appendix A.3)."""

import math

import pytest
import torch
import torch.nn.functional as F

from maskflow.losses import masked_cross_entropy, snr, snr_weights
from maskflow.schedules import LinearScheduler, SigmoidScheduler

K = 10


def example(seed=0, shape=(2, 3, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, K, generator=g, requires_grad=True)
    targets = torch.randint(0, K, shape, generator=g)
    is_masked = torch.rand(shape, generator=g) < 0.5
    return logits, targets, is_masked


def test_equals_mean_cross_entropy_over_masked_tokens():
    logits, targets, is_masked = example()
    out = masked_cross_entropy(logits, targets, is_masked)
    ce = F.cross_entropy(logits.detach().reshape(-1, K), targets.reshape(-1), reduction="none").reshape(targets.shape)
    expected = ce[is_masked].mean()
    assert float(out.loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    assert out.num_masked == int(is_masked.sum())
    acc = (logits.argmax(-1) == targets)[is_masked].float().mean()
    assert float(out.accuracy) == pytest.approx(float(acc))


def test_loss_ignores_unmasked_logits_but_not_masked_ones():
    logits, targets, is_masked = example(1)
    base = float(masked_cross_entropy(logits, targets, is_masked).loss.detach())
    noise = 5 * torch.randn_like(logits)
    unmasked_changed = torch.where(is_masked[..., None], logits, logits + noise)
    masked_changed = torch.where(is_masked[..., None], logits + noise, logits)
    assert float(masked_cross_entropy(unmasked_changed, targets, is_masked).loss.detach()) == pytest.approx(base, rel=1e-6)
    assert abs(float(masked_cross_entropy(masked_changed, targets, is_masked).loss.detach()) - base) > 1e-2


def test_gradient_reaches_masked_positions_only():
    logits, targets, is_masked = example(2)
    masked_cross_entropy(logits, targets, is_masked).loss.backward()
    g = logits.grad.abs().sum(-1)
    assert torch.all(g[~is_masked] == 0) and torch.all(g[is_masked] > 0)


def test_frame_weights_scale_each_frame_and_keep_the_masked_count_denominator():
    logits, targets, is_masked = example(3)
    w = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.5, 1.0]])
    out = masked_cross_entropy(logits, targets, is_masked, frame_weights=w)
    ce = F.cross_entropy(logits.detach().reshape(-1, K), targets.reshape(-1), reduction="none").reshape(targets.shape)
    expected = (w[:, :, None, None] * ce * is_masked).sum() / is_masked.sum()
    assert float(out.loss.detach()) == pytest.approx(float(expected), rel=1e-5)


def test_no_masked_token_gives_zero_loss_that_still_backpropagates():
    logits, targets, _ = example(4)
    out = masked_cross_entropy(logits, targets, torch.zeros_like(targets, dtype=torch.bool))
    assert float(out.loss.detach()) == 0.0 and out.num_masked == 0 and float(out.accuracy) == 0.0
    out.loss.backward()
    assert torch.all(logits.grad == 0)


def test_bf16_logits_are_promoted_to_float32():
    logits, targets, is_masked = example(5)
    out = masked_cross_entropy(logits.detach().bfloat16(), targets, is_masked)
    ref = masked_cross_entropy(logits.detach().bfloat16().float(), targets, is_masked)
    assert out.loss.dtype == torch.float32
    assert float(out.loss.detach()) == pytest.approx(float(ref.loss), rel=1e-6)


def test_bad_loss_inputs_are_refused():
    logits, targets, is_masked = example(6)
    with pytest.raises(ValueError, match=r"logits must be \[B, T, h, w, K\]"):
        masked_cross_entropy(logits[..., 0], targets, is_masked)
    with pytest.raises(ValueError, match="is_masked must be bool"):
        masked_cross_entropy(logits, targets, is_masked.float())
    with pytest.raises(ValueError, match=r"frame_weights must be \[B, T\]"):
        masked_cross_entropy(logits, targets, is_masked, frame_weights=torch.ones(2))


# ------------------------------------------------------------------------------ SNR weights
def test_fused_snr_matches_the_recursion_by_hand():
    # linear scheduler: kappa = t, so SNR = t^2 / (1 - t^2) (paper, A.3)
    t = torch.tensor([[0.5, 0.9, 0.3, 1.0, 0.2]])
    c, d = 6.0, 0.8
    s = [0.25 / 0.75, 0.81 / 0.19, 0.09 / 0.91, math.inf, 0.04 / 0.96]
    n = [min(x, c) / c for x in s]
    c0 = n[0]
    c1 = d * c0 + (1 - d) * n[1]
    c2 = d * c1 + (1 - d) * n[2]
    c3 = d * c2 + (1 - d) * n[3]
    w = [
        c * n[0],  # C_{-1} = 0
        c * (1 - (1 - d * c0) * (1 - n[1])),
        c * (1 - (1 - d * c1) * (1 - n[2])),
        c * (1 - (1 - d * c2) * (1 - n[3])),
        c * (1 - (1 - d * c3) * (1 - n[4])),
    ]
    got = snr_weights(t, LinearScheduler(), snr_clip=c, cum_snr_decay=d, fused=True)
    torch.testing.assert_close(got, torch.tensor([w]), rtol=1e-5, atol=1e-5)
    # the same numbers, written out
    torch.testing.assert_close(got, torch.tensor([[0.33333, 4.34035, 0.97958, 6.0, 1.57667]]), rtol=0, atol=1e-4)


def test_fusion_raises_the_weight_of_frames_after_clean_frames():
    t = torch.tensor([[1.0, 1.0, 0.4], [0.01, 0.01, 0.4]])
    w = snr_weights(t, SigmoidScheduler())
    assert float(w[0, 2]) > float(w[1, 2])
    plain = snr_weights(t, SigmoidScheduler(), fused=False)
    assert float(plain[0, 2]) == pytest.approx(float(plain[1, 2]))


def test_unfused_weights_are_clipped_snr():
    sched = SigmoidScheduler()
    t = torch.linspace(0.0, 1.0, 11)[None]
    w = snr_weights(t, sched, snr_clip=2.0, fused=False)
    torch.testing.assert_close(w, sched.snr(t).clamp_max(2.0))
    assert float(w.max()) == 2.0 and float(w[0, 0]) < 1e-6


def test_weights_are_bounded_by_the_clip_and_detached():
    t = torch.rand(4, 16, requires_grad=True)
    w = snr_weights(t, SigmoidScheduler(), snr_clip=6.0)
    assert not w.requires_grad
    assert float(w.min()) >= 0.0 and float(w.max()) <= 6.0 + 1e-6


def test_reference_snr_formula():
    sched = LinearScheduler()
    half = torch.tensor([0.5])
    assert float(snr(half, sched, snr_formula="paper")) == pytest.approx(1 / 3, rel=1e-6)
    assert float(snr(half, sched, snr_formula="reference")) == pytest.approx(1.0, rel=1e-6)  # 0.25 / 0.25
    w = snr_weights(torch.tensor([[0.5]]), sched, fused=False, snr_formula="reference")
    assert float(w) == pytest.approx(1.0, rel=1e-6)


def test_bad_snr_settings_are_refused():
    t = torch.rand(2, 3)
    with pytest.raises(ValueError, match="snr_clip must be > 0"):
        snr_weights(t, SigmoidScheduler(), snr_clip=0.0)
    with pytest.raises(ValueError, match=r"cum_snr_decay must lie in \[0, 1\]"):
        snr_weights(t, SigmoidScheduler(), cum_snr_decay=1.5)
    with pytest.raises(ValueError, match="snr_formula must be one of"):
        snr_weights(t, SigmoidScheduler(), snr_formula="gaussian")
    with pytest.raises(ValueError, match=r"t must be \[B, T\]"):
        snr_weights(torch.rand(3), SigmoidScheduler())


def test_masked_ce_is_the_unweighted_mean_over_masked_tokens():
    import torch

    from maskflow.losses import masked_cross_entropy

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 2, 2, 5, generator=g)
    targets = torch.randint(0, 5, (2, 3, 2, 2), generator=g)
    mask = torch.rand(2, 3, 2, 2, generator=g) < 0.5
    weights = torch.rand(2, 3, generator=g) * 6
    out = masked_cross_entropy(logits, targets, mask, frame_weights=weights)
    expect = torch.nn.functional.cross_entropy(logits[mask], targets[mask])
    assert torch.allclose(out.masked_ce, expect, atol=1e-6)
    assert not torch.allclose(out.loss, expect)  # the weighted objective differs
