"""The K-way head only where a token is masked (issue 16): training loss/gradients and samples equal the dense path."""

from __future__ import annotations

import pytest
import torch

from maskflow.losses import fused_masked_cross_entropy, masked_cross_entropy, snr_weights
from maskflow.models import BackboneConfig, MaskFlowTransformer
from maskflow.schedules import get_scheduler
from maskflow.training import MaskFlowObjective, ObjectiveConfig

K = 48
LATENT = 4


def random_model(patch_size: int, seed: int = 0, codebook_size: int = K) -> MaskFlowTransformer:
    """A tiny backbone with every parameter random (the zero-initialised head would hide errors)."""
    torch.manual_seed(seed)
    model = MaskFlowTransformer(
        BackboneConfig(codebook_size=codebook_size, latent_size=LATENT, patch_size=patch_size, hidden_size=32,
                       depth=2, num_heads=2)
    )
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def grads(model: torch.nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}


def assert_grads_close(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    """Every parameter's gradient equal up to float32 rounding (amplified by the deep random net), relative to that gradient's largest entry."""
    assert got.keys() == ref.keys()
    for name, g in ref.items():
        err = float((got[name] - g).abs().max()) if g.numel() else 0.0
        assert err <= 1e-4 * float(g.abs().max()) + 1e-7, f"{name}: max error {err}"


# ------------------------------------------------------------------------------ the model's projection
@pytest.mark.parametrize("patch_size", [1, 2])
def test_project_positions_equals_the_dense_logits_rows(patch_size):
    model = random_model(patch_size).eval()
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, K + 1, (2, 3, LATENT, LATENT), generator=gen)
    t = torch.rand(2, 3, generator=gen)
    with torch.no_grad():
        dense = model(tokens, t)  # (B, T, h, w, K)
        hidden = model(tokens, t, return_hidden=True)
        assert hidden.shape == (2, 3, (LATENT // patch_size) ** 2, 32)
        sel = torch.rand(2, 3, LATENT, LATENT, generator=gen) < 0.4
        index = sel.nonzero(as_tuple=True)
        rows = model.project_positions(hidden, index)
        torch.testing.assert_close(rows, dense[sel], rtol=1e-5, atol=1e-5)
        # any order (not just row-major), and no positions at all
        perm = torch.randperm(index[0].numel(), generator=gen)
        shuffled = tuple(i[perm] for i in index)
        torch.testing.assert_close(model.project_positions(hidden, shuffled), dense[sel][perm], rtol=1e-5, atol=1e-5)
        empty = tuple(i[:0] for i in index)
        assert model.project_positions(hidden, empty).shape == (0, K)



@pytest.mark.parametrize("patch_size", [1, 2])
def test_project_positions_with_gradients_and_under_bf16_autocast(patch_size):
    """Both paths of the projection: differentiable when gradients are on, the autocast dtype under autocast."""
    model = random_model(patch_size, seed=2)
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, K + 1, (2, 3, LATENT, LATENT), generator=gen)
    t = torch.rand(2, 3, generator=gen)
    sel = torch.rand(2, 3, LATENT, LATENT, generator=gen) < 0.5
    index = sel.nonzero(as_tuple=True)
    rows = model.project_positions(model(tokens, t, return_hidden=True), index)
    torch.testing.assert_close(rows, model(tokens, t)[sel], rtol=1e-5, atol=1e-5)
    rows.square().sum().backward()
    assert model.final_layer.linear.weight.grad is not None and model.final_layer.linear.weight.grad.abs().sum() > 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        rows = model.project_positions(model(tokens, t, return_hidden=True), index)
        dense = model(tokens, t)[sel]
    assert rows.dtype == dense.dtype == torch.bfloat16
    torch.testing.assert_close(rows.float(), dense.float(), rtol=2e-2, atol=2e-2)

# ------------------------------------------------------------------------------ training: loss and gradients
@pytest.mark.parametrize("patch_size", [1, 2])
@pytest.mark.parametrize("weighting", ["fused_snr", "none"])
@pytest.mark.parametrize("chunk_rows", [7, 4096])
def test_masked_head_loss_and_gradients_equal_the_dense_path(patch_size, weighting, chunk_rows):
    model = random_model(patch_size, seed=patch_size)
    x1 = torch.randint(0, K, (3, 4, LATENT, LATENT), generator=torch.Generator().manual_seed(5))
    common = dict(loss_weighting=weighting, max_context_frames=1, head_chunk_rows=chunk_rows)
    dense_obj = MaskFlowObjective(ObjectiveConfig(head="dense", **common))
    masked_obj = MaskFlowObjective(ObjectiveConfig(head="masked", **common))
    for seed in range(3):
        ref = dense_obj(model, x1, generator=torch.Generator().manual_seed(seed))
        g_ref = grads(model, ref.loss)
        out = masked_obj(model, x1, generator=torch.Generator().manual_seed(seed))
        g_out = grads(model, out.loss)
        assert out.num_masked == ref.num_masked > 0
        assert chunk_rows == 4096 or out.num_masked > chunk_rows  # several chunks in the small-chunk case
        torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.masked_ce, ref.masked_ce, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.accuracy, ref.accuracy)
        assert_grads_close(g_out, g_ref)
        assert g_ref["final_layer.linear.weight"].abs().sum() > 0


@pytest.mark.parametrize("patch_size", [1, 2])
@pytest.mark.parametrize("fraction", [0.0, 1.0, 0.3])
@pytest.mark.parametrize("weighted", [True, False])
def test_fused_cross_entropy_at_fixed_masks_incl_all_and_none_masked(patch_size, fraction, weighted):
    model = random_model(patch_size, seed=3)
    gen = torch.Generator().manual_seed(7)
    x1 = torch.randint(0, K, (2, 3, LATENT, LATENT), generator=gen)
    t = torch.rand(2, 3, generator=gen)
    is_masked = torch.rand(x1.shape, generator=gen) < fraction
    x_t = x1.masked_fill(is_masked, K)
    weights = snr_weights(t, get_scheduler("sigmoid")) if weighted else None
    ref = masked_cross_entropy(model(x_t, t), x1, is_masked, weights)
    g_ref = grads(model, ref.loss)

    index = is_masked.nonzero(as_tuple=True)
    rows, sub = model.head_rows(model(x_t, t, return_hidden=True), index)
    weight, bias = model.head_weights()
    row_w = weights[index[0], index[1]] if weighted else None
    out = fused_masked_cross_entropy(rows, sub, weight, bias, x1[index], row_w, chunk_rows=5)
    g_out = grads(model, out.loss)
    assert out.num_masked == ref.num_masked == int(is_masked.sum())
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.masked_ce, ref.masked_ce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.accuracy.float(), ref.accuracy.float())
    assert_grads_close(g_out, g_ref)
    if fraction == 0.0:
        assert float(out.loss.detach()) == 0.0 and float(out.accuracy) == 0.0


def test_fused_cross_entropy_gradients_follow_the_incoming_gradient_and_none_under_no_grad():
    """The gradients are computed in the forward pass and scaled by the incoming gradient in the backward
    pass (3·loss gives 3× the gradients); under no_grad the same values come back with no graph."""
    model = random_model(2, seed=4)
    gen = torch.Generator().manual_seed(1)
    x1 = torch.randint(0, K, (2, 3, LATENT, LATENT), generator=gen)
    t = torch.rand(2, 3, generator=gen)
    is_masked = torch.rand(x1.shape, generator=gen) < 0.5
    x_t, index = x1.masked_fill(is_masked, K), is_masked.nonzero(as_tuple=True)

    def loss(scale: float = 1.0):
        rows, sub = model.head_rows(model(x_t, t, return_hidden=True), index)
        return fused_masked_cross_entropy(rows, sub, *model.head_weights(), x1[index], chunk_rows=7).loss * scale

    g1, g3 = grads(model, loss()), grads(model, loss(3.0))
    assert_grads_close(g3, {name: 3 * g for name, g in g1.items()})
    with torch.no_grad():
        quiet = loss()
    assert quiet.grad_fn is None
    torch.testing.assert_close(quiet, loss().detach())


def test_accuracy_counts_a_tie_as_wrong_in_both_paths():
    """A zero-initialised head (every logit equal) scores accuracy 0 in the dense and the fused path,
    not the share of targets that happen to be class 0 (what an argmax would report)."""
    targets = torch.tensor([0, 0, 3, 5])
    logits = torch.zeros(1, 1, 2, 2, 8)
    is_masked = torch.ones(1, 1, 2, 2, dtype=torch.bool)
    dense = masked_cross_entropy(logits, targets.view(1, 1, 2, 2), is_masked)
    fused = fused_masked_cross_entropy(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), torch.zeros(1, 8, 3),
                                       torch.zeros(1, 8), targets)
    assert float(dense.accuracy) == float(fused.accuracy) == 0.0
    logits[0, 0, 0, 0, 0] = 1.0  # one strict maximum at its target
    assert float(masked_cross_entropy(logits, targets.view(1, 1, 2, 2), is_masked).accuracy) == 0.25


def test_fused_cross_entropy_refuses_bad_inputs():
    rows, sub = torch.zeros(3, 8), torch.zeros(3, dtype=torch.long)
    weight, bias = torch.zeros(1, K, 8), torch.zeros(1, K)
    with pytest.raises(ValueError, match="chunk_rows"):
        fused_masked_cross_entropy(rows, sub, weight, bias, torch.zeros(3, dtype=torch.long), chunk_rows=0)
    with pytest.raises(ValueError, match="rows must be"):
        fused_masked_cross_entropy(rows, sub, weight, bias, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="head must be"):
        ObjectiveConfig(head="sparse")


# ------------------------------------------------------------------------------ sampling: identical samples
from maskflow.sampling.baselines import generate_rolling, sample_chunk_pyramid  # noqa: E402
from maskflow.sampling.fm import sample_chunk_fm  # noqa: E402
from maskflow.sampling.guidance import Denoiser  # noqa: E402
from maskflow.sampling.mgm import sample_chunk_mgm  # noqa: E402


def _sample(sampler: str, model, head: str, *, guidance: float, gumbel: float, independent: bool, seed: int):
    gen = torch.Generator().manual_seed(seed)
    context = torch.randint(0, model.codebook_size, (2, 2, LATENT, LATENT), generator=torch.Generator().manual_seed(99))
    scheduler = get_scheduler("sigmoid")
    denoiser = Denoiser(
        model, scheduler=scheduler, guidance_scale=guidance, partial_context_level=0.4, generator=gen, head=head,
        time_conditioning="independent" if independent else "dependent",
    )
    if sampler == "mgm":
        out = sample_chunk_mgm(denoiser, context, 3, steps=5, scheduler=scheduler, temperature=1.3,
                               gumbel_temperature=gumbel, generator=gen)
    elif sampler == "fm":
        out = sample_chunk_fm(denoiser, context, 3, steps=6, scheduler=scheduler, temperature=1.3, generator=gen)
    elif sampler == "diffusion_forcing":
        out = sample_chunk_pyramid(denoiser, context, 3, steps=4, chunk_size=5, scheduler=scheduler, temperature=1.3,
                                   generator=gen)
    else:  # rolling: init, two one-frame shifts and the final window over a 7-frame video
        video = torch.cat([context, context.new_zeros(2, 5, LATENT, LATENT)], dim=1)
        generate_rolling(denoiser, video, 2, steps=4, chunk_size=5, scheduler=scheduler, temperature=1.3, generator=gen)
        out = video[:, 2:]
    return out, denoiser


@pytest.mark.parametrize("sampler", ["mgm", "fm", "diffusion_forcing", "rolling"])
@pytest.mark.parametrize("patch_size", [1, 2])
@pytest.mark.parametrize("guidance,gumbel,independent", [(0.0, 0.0, False), (1.5, 0.0, False), (0.7, 2.0, True)])
def test_masked_head_samples_are_identical_to_the_dense_path(sampler, patch_size, guidance, gumbel, independent):
    model = random_model(patch_size, seed=11).eval()
    for seed in range(2):
        kw = dict(guidance=guidance, gumbel=gumbel, independent=independent, seed=seed)
        dense, d_dense = _sample(sampler, model, "dense", **kw)
        masked, d_masked = _sample(sampler, model, "masked", **kw)
        assert d_masked.head_model is model and d_dense.head_model is None
        assert torch.equal(masked, dense)
        assert (masked < K).all() and (masked >= 0).all()
        assert (d_masked.nfe, d_masked.calls) == (d_dense.nfe, d_dense.calls)


def test_lazy_logits_rows_and_dense_match_the_dense_call():
    model = random_model(2, seed=4).eval()
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, K + 1, (2, 4, LATENT, LATENT), generator=gen)
    t = torch.rand(2, 4, generator=gen)
    for guidance in (0.0, 2.0):
        make = lambda head: Denoiser(model, scheduler=get_scheduler("linear"), guidance_scale=guidance,  # noqa: E731
                                     generator=torch.Generator().manual_seed(0), head=head)
        with torch.no_grad():
            ref = make("dense")(tokens, t, 1)  # [B, 3, h, w, K]
            lazy = make("masked").lazy(tokens, t, 1)
            assert not lazy.is_dense
            sel = torch.rand(ref.shape[:4], generator=gen) < 0.5
            torch.testing.assert_close(lazy.rows(sel.nonzero(as_tuple=True)), ref[sel], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(lazy.dense(), ref, rtol=1e-5, atol=1e-5)
            part = make("masked").lazy(tokens, t, 1).narrow(1, 2)  # generated frames 1 and 2 only
            torch.testing.assert_close(part.rows(sel[:, 1:3].nonzero(as_tuple=True)), ref[:, 1:3][sel[:, 1:3]],
                                       rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(part.dense(), ref[:, 1:3], rtol=1e-5, atol=1e-5)
            with pytest.raises(ValueError, match="not inside the 3 generated frames"):
                lazy.narrow(2, 2)
    with pytest.raises(ValueError, match="head must be"):
        Denoiser(model, scheduler=get_scheduler("linear"), head="sparse")


# ------------------------------------------------------------------------------ wrappers and autocast
class _Wrapper(torch.nn.Module):
    """Stands in for DDP: the bare model as ``.module``, keyword arguments passed through ``forward``."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module
        self.codebook_size = self.mask_token_id = module.codebook_size
        self.calls = 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.module(*args, **kwargs)


def test_masked_head_goes_through_the_wrapper_and_matches_the_bare_model():
    model = random_model(2, seed=6)
    x1 = torch.randint(0, K, (2, 3, LATENT, LATENT), generator=torch.Generator().manual_seed(1))
    obj = MaskFlowObjective(ObjectiveConfig(head_chunk_rows=16))
    ref = obj(model, x1, generator=torch.Generator().manual_seed(0))
    g_ref = grads(model, ref.loss)
    wrapped = _Wrapper(model)
    out = obj(wrapped, x1, generator=torch.Generator().manual_seed(0))
    g_out = grads(model, out.loss)
    assert wrapped.calls == 1  # the forward ran through the wrapper (DDP's reducer sees it)
    assert float(out.loss.detach()) == float(ref.loss.detach())
    assert_grads_close(g_out, g_ref)
    assert Denoiser(wrapped, scheduler=get_scheduler("linear")).head_model is model


def test_masked_head_under_bf16_autocast_matches_the_dense_path():
    model = random_model(2, seed=8)
    x1 = torch.randint(0, K, (2, 3, LATENT, LATENT), generator=torch.Generator().manual_seed(2))
    out = {}
    for head in ("dense", "masked"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            res = MaskFlowObjective(ObjectiveConfig(head=head, head_chunk_rows=9))(
                model, x1, generator=torch.Generator().manual_seed(0))
        out[head] = (res, grads(model, res.loss))
    (ref, g_ref), (got, g_got) = out["dense"], out["masked"]
    assert got.loss.dtype == torch.float32 and got.num_masked == ref.num_masked
    torch.testing.assert_close(got.loss, ref.loss, rtol=1e-3, atol=1e-3)
    for name, g in g_ref.items():  # bf16 matmuls on both sides: agreement to bf16 rounding only
        assert g_got[name].dtype == g.dtype
        assert float((g_got[name] - g).abs().max()) <= 0.1 * float(g.abs().max()) + 1e-6, name


@pytest.mark.parametrize("guidance", [0.0, 1.0])
def test_samplers_project_only_the_tokens_they_draw(guidance, monkeypatch):
    from maskflow.sampling.unmasking import masked_counts

    model = random_model(2, seed=12).eval()
    sizes: list[int] = []
    original = model.project_positions

    def recording(hidden, index):
        sizes.append(int(index[0].numel()))
        return original(hidden, index)

    monkeypatch.setattr(model, "project_positions", recording)
    passes = 3 if guidance else 1
    n_tokens = 2 * 3 * LATENT * LATENT  # B videos × 3 new frames × h × w
    _sample("mgm", model, "masked", guidance=guidance, gumbel=0.0, independent=False, seed=0)
    before = [3 * LATENT * LATENT] + masked_counts(3 * LATENT * LATENT, 5, "arccos")[:-1]  # masked before each step
    assert sizes == [passes * 2 * n for n in before]  # MGM: the still-masked tokens only
    sizes.clear()
    _sample("fm", model, "masked", guidance=guidance, gumbel=0.0, independent=False, seed=0)
    assert sum(sizes) == passes * n_tokens  # FM: each token's row once, at the step it jumps
    sizes.clear()
    _sample("diffusion_forcing", model, "masked", guidance=guidance, gumbel=0.0, independent=False, seed=0)
    assert sum(sizes) == passes * n_tokens  # the baselines too: each token once, when it unmasks
    sizes.clear()
    _sample("rolling", model, "masked", guidance=guidance, gumbel=0.0, independent=False, seed=0)
    assert sum(sizes) == passes * 2 * 5 * LATENT * LATENT  # 5 generated frames
