"""maskflow/masking.py: frame levels (Algorithm 1, line 4) and Bernoulli token masking (line 5)."""

import math

import pytest
import torch

from maskflow.masking import mask_tokens, sample_frame_levels
from maskflow.schedules import SigmoidScheduler

K = 64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_frame_levels_are_independent_per_frame_and_in_range():
    t = sample_frame_levels(64, 8, mode="frame", eps=1e-3, generator=gen())
    assert t.shape == (64, 8) and t.dtype == torch.float32
    assert float(t.min()) >= 1e-3 and float(t.max()) <= 1.0
    # every video has distinct levels across its frames, and levels look uniform on [eps, 1]
    assert all(len(set(row.tolist())) == 8 for row in t)
    assert float(t.mean()) == pytest.approx(0.5, abs=0.05)
    assert float((t < 0.25).float().mean()) == pytest.approx(0.25, abs=0.06)


def test_constant_levels_give_one_level_per_video():
    t = sample_frame_levels(16, 6, mode="constant", generator=gen(1))
    assert torch.all(t == t[:, :1])
    assert len(set(t[:, 0].tolist())) == 16  # but videos differ


@pytest.mark.parametrize("mode", ["frame", "constant"])
def test_context_frames_get_level_one(mode):
    t = sample_frame_levels(8, 6, mode=mode, n_context_frames=2, generator=gen(2))
    assert torch.all(t[:, :2] == 1.0)
    assert torch.all(t[:, 2:] < 1.0)


def test_per_video_context_counts():
    counts = torch.tensor([0, 1, 3])
    t = sample_frame_levels(3, 5, n_context_frames=counts, generator=gen(3))
    for b, m in enumerate(counts.tolist()):
        assert torch.all(t[b, :m] == 1.0) and torch.all(t[b, m:] < 1.0)


def test_levels_are_reproducible_with_a_generator():
    a = sample_frame_levels(4, 4, generator=gen(7))
    b = sample_frame_levels(4, 4, generator=gen(7))
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_context_frames": 4}, r"n_context_frames must lie in \[0, num_frames - 1 = 3\]"),
        ({"n_context_frames": -1}, "n_context_frames"),
        ({"n_context_frames": torch.tensor([1, 2, 3])}, r"integer tensor \[B=2\]"),
        ({"mode": "diagonal"}, "masking mode must be one of"),
        ({"eps": 1.0}, r"eps must lie in \[0, 1\)"),
    ],
)
def test_bad_level_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample_frame_levels(2, 4, **kwargs)


def test_masking_ratio_per_frame_matches_one_minus_kappa():
    sched = SigmoidScheduler()
    levels = torch.tensor([[0.0, 0.1, 0.3, 0.5], [0.7, 0.9, 0.95, 1.0]])
    n = 96 * 96  # tokens per frame
    x1 = torch.randint(0, K, (2, 4, 96, 96), generator=gen(4))
    out = mask_tokens(x1, levels, sched, K, generator=gen(5))
    frac = out.masked_fraction()
    p = 1 - sched.kappa(levels)
    tol = 5 * torch.sqrt(p * (1 - p) / n) + 1e-6  # 5 sigma of a binomial proportion
    assert torch.all((frac - p).abs() <= tol), (frac, p)


def test_masked_tokens_hold_the_mask_id_and_others_are_untouched():
    x1 = torch.randint(0, K, (3, 5, 8, 8), generator=gen(6))
    t = sample_frame_levels(3, 5, n_context_frames=1, generator=gen(7))
    out = mask_tokens(x1, t, SigmoidScheduler(), K, generator=gen(8))
    assert out.x_t.dtype == torch.int64 and out.is_masked.dtype == torch.bool
    assert torch.all(out.x_t[out.is_masked] == K)
    assert torch.equal(out.x_t[~out.is_masked], x1[~out.is_masked])
    # context frames (t = 1) stay clean
    assert not out.is_masked[:, 0].any()
    assert torch.equal(out.x_t[:, 0], x1[:, 0])


def test_constant_level_video_masks_every_frame_at_one_rate():
    sched = SigmoidScheduler()
    t = torch.full((1, 4), 0.3)
    x1 = torch.randint(0, K, (1, 4, 64, 64), generator=gen(9))
    frac = mask_tokens(x1, t, sched, K, generator=gen(10)).masked_fraction()[0]
    p = 1 - float(sched.kappa(torch.tensor(0.3)))
    assert torch.all((frac - p).abs() < 5 * math.sqrt(p * (1 - p) / 4096))


def test_masking_is_reproducible_and_varies_with_seed():
    x1 = torch.randint(0, K, (2, 3, 8, 8), generator=gen(11))
    t = torch.full((2, 3), 0.5)
    a = mask_tokens(x1, t, SigmoidScheduler(), K, generator=gen(1)).is_masked
    b = mask_tokens(x1, t, SigmoidScheduler(), K, generator=gen(1)).is_masked
    c = mask_tokens(x1, t, SigmoidScheduler(), K, generator=gen(2)).is_masked
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bad_masking_inputs_are_refused():
    sched = SigmoidScheduler()
    x1 = torch.randint(0, K, (2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"t must have shape \[B, T\]"):
        mask_tokens(x1, torch.rand(2, 4), sched, K)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        mask_tokens(x1, torch.full((2, 3), 1.5), sched, K)
    with pytest.raises(ValueError, match=r"x1 must lie in|clean tokens x1"):
        mask_tokens(torch.full((2, 3, 4, 4), K), torch.rand(2, 3), sched, K)
    with pytest.raises(ValueError, match="integer tensor"):
        mask_tokens(x1.float(), torch.rand(2, 3), sched, K)
