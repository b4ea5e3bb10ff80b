"""maskflow/schedules.py: κ(t) values, derivatives, inverses and SNR (appendix A.3)."""

import pytest
import torch

from maskflow.schedules import (
    KAPPA_MIN,
    CosineScheduler,
    LinearScheduler,
    SigmoidScheduler,
    get_scheduler,
)

ALL = [LinearScheduler(), CosineScheduler(), SigmoidScheduler()]
IDS = ["linear", "cosine", "sigmoid"]


@pytest.mark.parametrize(
    ("t", "expected"), [(0.1, 0.040), (0.3, 0.203), (0.5, 0.5), (0.7, 0.797), (0.9, 0.960)]
)
def test_sigmoid_matches_published_values(t, expected):
    k = SigmoidScheduler().kappa(torch.tensor([t], dtype=torch.float64))
    assert float(k) == pytest.approx(expected, abs=1e-3)


def test_linear_and_cosine_closed_forms():
    t = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    torch.testing.assert_close(LinearScheduler().kappa(t), t)
    torch.testing.assert_close(CosineScheduler().kappa(t), 1 - torch.cos(torch.pi * t / 2))


@pytest.mark.parametrize("sched", ALL, ids=IDS)
def test_endpoints_and_monotonicity(sched):
    t = torch.linspace(0, 1, 201, dtype=torch.float64)
    k = sched.kappa(t)
    assert float(k[0]) == pytest.approx(KAPPA_MIN, abs=1e-6)  # t = 0: (almost) every token masked
    assert float(k[-1]) == pytest.approx(1.0, abs=1e-9)  # t = 1: clean
    assert torch.all(k.diff() >= 0)
    assert torch.all((k >= 0) & (k <= 1))


@pytest.mark.parametrize("sched", ALL, ids=IDS)
def test_derivative_matches_finite_differences(sched):
    t = torch.linspace(0.05, 0.95, 37, dtype=torch.float64)
    h = 1e-6
    fd = (sched.kappa(t + h) - sched.kappa(t - h)) / (2 * h)
    torch.testing.assert_close(sched.d_kappa(t), fd, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("sched", ALL, ids=IDS)
def test_inverse_recovers_t(sched):
    t = torch.linspace(0.02, 0.98, 49, dtype=torch.float64)
    torch.testing.assert_close(sched.inverse(sched.kappa(t)), t, rtol=0, atol=1e-6)


def test_snr_is_paper_formula_increasing_and_finite_at_clean():
    sched = SigmoidScheduler()
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    k = sched.kappa(t)
    s = sched.snr(t)
    torch.testing.assert_close(s[:-1], k[:-1] ** 2 / (1 - k[:-1] ** 2))
    assert float(sched.snr(torch.tensor(0.5))) == pytest.approx(0.25 / 0.75, rel=1e-5)
    assert torch.isfinite(s).all() and torch.all(s.diff() >= 0)


def test_dtype_and_shape_are_kept():
    t = torch.rand(3, 4, dtype=torch.float32)
    for sched in ALL:
        assert sched.kappa(t).shape == (3, 4) and sched.kappa(t).dtype == torch.float32


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="unknown scheduler 'quadratic'"):
        get_scheduler("quadratic")
    with pytest.raises(ValueError, match="end > start"):
        SigmoidScheduler(start=3.0, end=-3.0)
    with pytest.raises(ValueError, match="tau > 0"):
        SigmoidScheduler(tau=0.0)
    assert isinstance(get_scheduler("sigmoid"), SigmoidScheduler)
