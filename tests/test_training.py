"""maskflow/training.py: the objective (Algorithm 1), optimiser, LR schedule, EMA, train_step, recipes."""

import math

import pytest
import torch

from maskflow.losses import LossOutput
from maskflow.models import build_backbone
from maskflow.training import (
    EMA,
    RECIPES,
    MaskFlowObjective,
    ObjectiveConfig,
    OptimConfig,
    build_lr_schedule,
    build_optimizer,
    train_step,
    unwrap_model,
)

K, H = 16, 8


pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return build_backbone("tiny", codebook_size=K, latent_size=H, **kw)


def toy_batch(b=2, t=4):
    """A fixed, learnable token batch: each frame is a shifted ramp of codes."""
    base = torch.arange(H * H).reshape(H, H) % K
    return torch.stack([torch.stack([(base + 3 * f + 5 * v) % K for f in range(t)]) for v in range(b)])


# ------------------------------------------------------------------------------ objective
def test_objective_gives_a_finite_differentiable_loss():
    model = tiny()
    out = MaskFlowObjective()(model, toy_batch(), generator=gen())
    assert isinstance(out, LossOutput) and out.num_masked > 0
    assert out.loss.requires_grad and math.isfinite(float(out.loss.detach()))
    out.loss.backward()


def test_untrained_unweighted_loss_is_log_k():
    out = MaskFlowObjective(ObjectiveConfig(loss_weighting="none"))(tiny(), toy_batch(), generator=gen())
    assert float(out.loss.detach()) == pytest.approx(math.log(K), rel=1e-5)  # zero-initialised head


def test_random_clean_prefix_per_video():
    obj = MaskFlowObjective(ObjectiveConfig(max_context_frames=3))
    t = obj.sample_levels(256, 5, generator=gen(1))
    prefix = (t == 1.0).int().cumprod(dim=1).sum(dim=1)  # leading clean frames per video
    assert torch.equal(prefix, (t == 1.0).sum(dim=1))  # clean frames only at the start
    assert set(prefix.tolist()) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match=r"max_context_frames=5 must be < the chunk's frame count 5"):
        obj_big = MaskFlowObjective(ObjectiveConfig(max_context_frames=5))
        obj_big.sample_levels(2, 5)


def test_constant_masking_objective_uses_one_level_per_video():
    obj = MaskFlowObjective(ObjectiveConfig(masking="constant", max_context_frames=1))
    t = obj.sample_levels(64, 4, generator=gen(2))
    assert torch.all(t[:, 1:] == t[:, 1:2])


def test_loss_weighting_changes_the_loss():
    model = tiny()
    x = toy_batch()
    losses = {
        w: float(MaskFlowObjective(ObjectiveConfig(loss_weighting=w))(model, x, generator=gen(3)).loss.detach())
        for w in ("none", "snr", "fused_snr")
    }
    assert len({round(v, 6) for v in losses.values()}) == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scheduler": "step"}, "scheduler must be one of"),
        ({"masking": "diagonal"}, "masking must be one of"),
        ({"max_context_frames": -1}, "max_context_frames must be >= 0"),
        ({"loss_weighting": "min_snr"}, "loss_weighting must be one of"),
        ({"snr_clip": 0}, "snr_clip must be > 0"),
        ({"cum_snr_decay": 2.0}, "cum_snr_decay"),
        ({"snr_formula": "x"}, "snr_formula"),
    ],
)
def test_bad_objective_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ObjectiveConfig(**kwargs)


# ------------------------------------------------------------------------------ training
def test_a_tiny_model_learns_a_fixed_batch():
    """~100 steps of Algorithm 1 on one toy batch lower the masked cross-entropy a lot.

    Unweighted training: fused-SNR weights ~0 for heavily masked frames, so a probe that scores all
    levels equally would mostly measure what that weighting chooses not to train.
    """
    model = tiny(1)
    x = toy_batch()
    obj = MaskFlowObjective(ObjectiveConfig(max_context_frames=1, loss_weighting="none"))
    probe = MaskFlowObjective(ObjectiveConfig(loss_weighting="none"))

    def held_out_loss():
        with torch.no_grad():
            return sum(float(probe(model, x, generator=gen(100 + i)).loss) for i in range(3)) / 3

    cfg = OptimConfig(lr=5e-3, ema_decay=0.9)
    opt = build_optimizer(model, lr=cfg.lr)
    sched = build_lr_schedule(opt, warmup_steps=5)
    ema = EMA(model, decay=cfg.ema_decay)
    before = held_out_loss()
    g = gen(4)
    for step in range(100):
        res = train_step(model, obj, x, opt, None, ema, cfg, step, lr_schedule=sched, generator=g)
        assert math.isfinite(res.loss) and math.isfinite(res.grad_norm)
    assert res.lr == pytest.approx(5e-3) and ema.num_updates == 100
    after = held_out_loss()
    print(f"held-out masked CE: {before:.3f} -> {after:.3f}")
    assert before == pytest.approx(math.log(K), rel=1e-4)
    assert after < 0.5 * before, (before, after)


class _DeterministicObjective:
    """A loss without randomness, so that gradient accumulation can be compared exactly."""

    def __call__(self, model, x1, generator=None):
        t = torch.linspace(0.1, 0.9, x1.shape[1]).expand(x1.shape[0], -1)
        loss = model(x1, t).square().mean()
        return LossOutput(loss=loss, accuracy=torch.tensor(0.0), num_masked=x1.numel())


def _randomized(seed):
    model = tiny(seed)
    g = gen(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def test_gradient_accumulation_matches_one_big_batch():
    x = torch.randint(0, K, (4, 3, H, H), generator=gen(5))
    results = []
    for accum in (1, 2):
        model = _randomized(6)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        cfg = OptimConfig(grad_accum_steps=accum, grad_clip=0)
        res = train_step(model, _DeterministicObjective(), x, opt, None, None, cfg, 0)
        results.append((res, [p.detach().clone() for p in model.parameters()]))
    (r1, p1), (r2, p2) = results
    assert r1.grad_norm == pytest.approx(r2.grad_norm, rel=1e-4)
    for a, b in zip(p1, p2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="divisible by grad_accum_steps=3"):
        train_step(model, _DeterministicObjective(), x, opt, None, None, OptimConfig(grad_accum_steps=3), 0)


def test_gradient_clipping_bounds_the_update():
    x = torch.randint(0, K, (2, 3, H, H), generator=gen(7))
    model = _randomized(8)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    res = train_step(model, _DeterministicObjective(), x, opt, None, None, OptimConfig(grad_clip=1e-3), 0)
    step = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    assert res.grad_norm > 1e-3  # reported before clipping
    assert float(step) == pytest.approx(1e-3, rel=1e-3)  # SGD step of lr·clipped grad


def test_non_finite_loss_stops_the_step():
    class Nan:
        def __call__(self, model, x1, generator=None):
            return LossOutput(loss=model(x1, torch.ones(x1.shape[:2])).sum() * float("nan"),
                              accuracy=torch.tensor(0.0), num_masked=1)

    model = tiny()
    opt = build_optimizer(model)
    with pytest.raises(FloatingPointError, match="at step 17"):
        train_step(model, Nan(), toy_batch(), opt, None, None, OptimConfig(), 17)


# ------------------------------------------------------------------------------ optimiser and schedule
def test_optimizer_defaults_and_decay_groups():
    model = tiny()
    opt = build_optimizer(model)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["lr"] == 1e-4 and opt.defaults["betas"] == (0.9, 0.999)
    decayed = build_optimizer(model, weight_decay=0.05)
    groups = {g["weight_decay"]: g["params"] for g in decayed.param_groups}
    assert all(p.ndim >= 2 for p in groups[0.05])
    assert any(p is model.patch_embed.codes.weight for p in groups[0.0])
    assert sum(len(v) for v in groups.values()) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="lr must be > 0"):
        build_optimizer(model, lr=0)


def test_lr_schedule_warms_up_linearly_then_stays_constant():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_lr_schedule(opt, warmup_steps=4)
    lrs = []
    for _ in range(7):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0])
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert build_lr_schedule(opt2, 0).get_last_lr() == [1.0]
    with pytest.raises(ValueError, match="warmup_steps must be >= 0"):
        build_lr_schedule(opt2, -1)


def test_cosine_lr_schedule_decays_to_zero_at_total_steps_after_warmup():
    import math

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = build_lr_schedule(opt, warmup_steps=2, decay="cosine", total_steps=8)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [2.0 * min(1.0, (s + 1) / 2) * 0.5 * (1 + math.cos(math.pi * min(s, 8) / 8)) for s in range(10)]
    assert lrs == pytest.approx(expected) and lrs[8] == lrs[9] == 0.0
    assert lrs[1] > lrs[4] > lrs[7] > 0  # monotone after the warm-up
    with pytest.raises(ValueError, match="total_steps"):
        build_lr_schedule(opt, 0, decay="cosine")
    with pytest.raises(ValueError, match="decay"):
        build_lr_schedule(opt, 0, decay="step")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"precision": "fp8"}, "precision must be one of"),
        ({"grad_accum_steps": 0}, "grad_accum_steps must be >= 1"),
        ({"ema_decay": 1.0}, r"ema_decay must lie in \[0, 1\)"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"grad_clip": -1}, "grad_clip"),
    ],
)
def test_bad_optim_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OptimConfig(**kwargs)


# ------------------------------------------------------------------------------ EMA
def test_ema_update_swap_and_state_dict():
    model = _randomized(9)
    ema = EMA(model, decay=0.75)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for k, v in ema.shadow.items():
        torch.testing.assert_close(v, 0.75 * start[k] + 0.25 * (start[k] + 1.0))
    assert ema.num_updates == 1

    current = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.swapped(model):
        for k, v in model.state_dict().items():
            torch.testing.assert_close(v, ema.shadow[k])
    for k, v in model.state_dict().items():
        assert torch.equal(v, current[k])  # own weights are back

    # state dict: restores into a fresh EMA, and its 'shadow' loads straight into a model (checkpoint layout)
    state = ema.state_dict()
    fresh = EMA(tiny(), decay=0.5)
    fresh.load_state_dict(state)
    assert fresh.decay == 0.75 and fresh.num_updates == 1
    other = tiny(3)
    other.load_state_dict(state["shadow"])
    fresh.copy_to(model)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, ema.shadow[k])
    with pytest.raises(ValueError, match=r"EMA decay must lie in \[0, 1\)"):
        EMA(model, decay=1.0)


def test_ema_warmup_and_unwrapping():
    model = tiny()
    ema = EMA(model, decay=0.999, warmup=True)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)

    class Wrapper(torch.nn.Module):  # stands in for DDP's .module
        def __init__(self, m):
            super().__init__()
            self.module = m

    assert unwrap_model(Wrapper(model)) is model
    ema.update(Wrapper(model))
    assert ema.num_updates == 1


# ------------------------------------------------------------------------------ recipes
def test_recipes_match_the_paper():
    ffs, dmlab = RECIPES["ffs"], RECIPES["dmlab"]
    assert (ffs["model_size"], ffs["chunk_size"], ffs["batch_size_per_gpu"], ffs["n_context_frames"], ffs["stride"]) == (
        "XL/2", 16, 2, 2, 14)
    assert (dmlab["model_size"], dmlab["chunk_size"], dmlab["batch_size_per_gpu"], dmlab["n_context_frames"],
            dmlab["stride"]) == ("B/2", 36, 3, 12, 24)
    for r in RECIPES.values():
        assert r["stride"] <= r["chunk_size"] - r["n_context_frames"]
        ObjectiveConfig(scheduler=r["scheduler"], masking=r["masking"], loss_weighting=r["loss_weighting"])
        OptimConfig(lr=r["lr"], betas=r["betas"], grad_clip=r["grad_clip"], ema_decay=r["ema_decay"])
