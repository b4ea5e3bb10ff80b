"""maskflow/models: the Latte-style backbone's contract, per-frame conditioning and size presets."""

import dataclasses
import math

import pytest
import torch

from maskflow.models import MODEL_SIZES, BackboneConfig, MaskFlowTransformer, build_backbone, count_parameters

K, H = 16, 8  # small codebook and token grid for CPU tests


pytestmark = pytest.mark.usefixtures("one_thread")


def randomize(model, seed=0, std=0.05):
    """Replace the adaLN-Zero/zero-head initialisation (under which t has no effect) by random weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def inputs(b=2, t=4, seed=0, h=H):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, K + 1, (b, t, h, h), generator=g), torch.rand(b, t, generator=g)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return randomize(build_backbone("tiny", codebook_size=K, latent_size=H)).eval()


# ------------------------------------------------------------------------------ contract
def test_output_shape_properties_and_config_round_trip(tiny):
    x, t = inputs()
    y = tiny(x, t)
    assert y.shape == (2, 4, H, H, K) and y.dtype == torch.float32
    assert tiny.codebook_size == K and tiny.mask_token_id == K
    assert tiny.patch_embed.codes.num_embeddings == K + 1
    cfg = BackboneConfig(**dataclasses.asdict(tiny.config))
    assert cfg == tiny.config
    clone = MaskFlowTransformer(cfg)
    clone.load_state_dict(tiny.state_dict())  # strict: nothing but learned weights is saved
    torch.testing.assert_close(clone.eval()(x, t), y)


def test_untrained_model_predicts_uniform_distribution():
    model = build_backbone("tiny", codebook_size=K, latent_size=H)
    y = model(*inputs())
    assert torch.all(y == 0)  # zero-initialised head (adaLN-Zero): loss starts at log K


def test_frame_count_may_change_between_calls(tiny):
    for frames in (1, 3, 7):
        x, t = inputs(b=1, t=frames)
        assert tiny(x, t).shape == (1, frames, H, H, K)


def test_samples_of_a_batch_do_not_influence_each_other(tiny):
    x, t = inputs(b=3, seed=1)
    together = tiny(x, t)
    for i in range(3):
        alone = tiny(x[i : i + 1], t[i : i + 1])
        torch.testing.assert_close(alone[0], together[i], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------ per-frame conditioning
def _modulations(model, x, t):
    """Outputs of every adaLN modulation layer, each [B, T, n·D]."""
    mods = [blk.adaLN_modulation for blk in model.blocks] + [model.final_layer.adaLN_modulation]
    seen = []
    handles = [m.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone())) for m in mods]
    try:
        model(x, t)
    finally:
        for h in handles:
            h.remove()
    return seen


def test_changing_one_frames_level_changes_only_that_frames_modulation(tiny):
    x, t = inputs(seed=2)
    t2 = t.clone()
    t2[:, 2] = 1.0 - t2[:, 2]
    for before, after in zip(_modulations(tiny, x, t), _modulations(tiny, x, t2)):
        assert before.shape[:2] == (2, 4)
        assert not torch.allclose(before[:, 2], after[:, 2])
        others = [0, 1, 3]
        torch.testing.assert_close(before[:, others], after[:, others], rtol=0, atol=0)


def _without_temporal_attention(model):
    """Forward hooks that zero the temporal attention output: frames then interact through nothing."""
    return [
        blk.attn.register_forward_hook(lambda _m, _i, out: torch.zeros_like(out))
        for blk in model.blocks
        if blk.axis == "temporal"
    ]


def test_without_temporal_attention_a_level_change_affects_only_its_frame(tiny):
    x, t = inputs(seed=3)
    t2 = t.clone()
    t2[:, 1] = 1.0 - t2[:, 1]
    handles = _without_temporal_attention(tiny)
    try:
        a, b = tiny(x, t), tiny(x, t2)
    finally:
        for h in handles:
            h.remove()
    assert (a[:, 1] - b[:, 1]).abs().max() > 1e-4
    torch.testing.assert_close(a[:, [0, 2, 3]], b[:, [0, 2, 3]], rtol=0, atol=0)


def test_temporal_attention_carries_information_across_frames(tiny):
    x, t = inputs(seed=4)
    x2 = x.clone()
    x2[:, 0] = (x2[:, 0] + 1) % K  # change frame 0's tokens only
    a, b = tiny(x, t), tiny(x2, t)
    assert (a[:, 3] - b[:, 3]).abs().max() > 1e-4  # frame 3 sees frame 0 through temporal attention
    handles = _without_temporal_attention(tiny)
    try:
        a, b = tiny(x, t), tiny(x2, t)
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(a[:, 1:], b[:, 1:], rtol=0, atol=0)


def test_time_independent_model_ignores_t():
    model = randomize(build_backbone("tiny", codebook_size=K, latent_size=H, time_conditioning="independent"))
    x, t = inputs(seed=5)
    torch.testing.assert_close(model(x, t), model(x, torch.zeros_like(t)), rtol=0, atol=0)
    dependent = randomize(build_backbone("tiny", codebook_size=K, latent_size=H))
    assert not torch.allclose(dependent(x, t), dependent(x, torch.zeros_like(t)))


# ------------------------------------------------------------------------------ training-side behaviour
@pytest.mark.parametrize("size", ["tiny", "small"])
def test_forward_backward(size):
    model = randomize(build_backbone(size, codebook_size=K, latent_size=H), seed=1).train()
    x, t = inputs(seed=6)
    model(x, t).logsumexp(-1).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = randomize(build_backbone("tiny", codebook_size=K, latent_size=H), seed=2).train()
    ckpt = build_backbone("tiny", codebook_size=K, latent_size=H, activation_checkpointing=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x, t = inputs(seed=7)
    for m in (plain, ckpt):
        m(x, t).square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


# ------------------------------------------------------------------------------ sizes
def expected_parameters(depth, d, k, p=2, mlp_ratio=4.0, freq=256):
    """Independent count of the architecture described in the module docstring."""
    inner = int(d * mlp_ratio)
    embed = (k + 1) * (d // 2) + (p * p * d // 2) * d + d
    time = freq * d + d + d * d + d
    block = (3 * d * d + 3 * d) + (d * d + d) + (d * inner + inner) + (inner * d + d) + (6 * d * d + 6 * d)
    final = (d * p * p * k + p * p * k) + (2 * d * d + 2 * d)
    return embed + time + depth * block + final


@pytest.mark.parametrize("size", ["S/2", "B/2", "L/2", "XL/2"])
def test_paper_sizes_at_the_paper_shape(size):
    """Built on 'meta' (no memory, no init): K = 16384, 32×32 tokens, 16 frames."""
    depth, d, heads = MODEL_SIZES[size]
    with torch.device("meta"):
        model = build_backbone(size, codebook_size=16384, latent_size=32)
        y = model(torch.zeros(1, 16, 32, 32, dtype=torch.long), torch.rand(1, 16))
    n = count_parameters(model)
    print(f"{size}: {n / 1e6:.1f}M parameters at K=16384, latent 32")
    assert y.shape == (1, 16, 32, 32, 16384)
    assert n == expected_parameters(depth, d, 16384)
    assert len(model.blocks) == depth and model.blocks[0].attn.num_heads == heads
    paper_scale = {"S/2": 61e6, "B/2": 187e6, "L/2": 534e6, "XL/2": 761e6}[size]  # XL/2 ~760M (section 4.2)
    assert n == pytest.approx(paper_scale, rel=0.01)


@pytest.mark.parametrize("size", ["S/2", "B/2"])
def test_base_sizes_build_and_run_with_a_small_codebook(size):
    model = build_backbone(size, codebook_size=8, latent_size=4)
    depth, d, _ = MODEL_SIZES[size]
    assert count_parameters(model) == expected_parameters(depth, d, 8)
    x = torch.randint(0, 9, (1, 2, 4, 4))
    model(x, torch.rand(1, 2)).sum().backward()
    assert model.final_layer.linear.weight.grad is not None


# ------------------------------------------------------------------------------ bad input
def test_bad_inputs_and_settings_are_refused(tiny):
    x, t = inputs()
    with pytest.raises(ValueError, match=r"tokens must have shape \[B, T, 8, 8\]"):
        tiny(x[..., :4, :4], t)
    with pytest.raises(ValueError, match=r"t must have shape \[B, T\]"):
        tiny(x, t[:, :2])
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, codebook_size=16\]"):
        tiny(torch.full_like(x, K + 1), t)
    with pytest.raises(ValueError, match="unknown model size 'M/2'"):
        build_backbone("M/2", codebook_size=K, latent_size=H)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        build_backbone("tiny", codebook_size=K, latent_size=7)
    with pytest.raises(ValueError, match="time_conditioning must be one of"):
        build_backbone("tiny", codebook_size=K, latent_size=H, time_conditioning="sometimes")
    with pytest.raises(ValueError, match="unknown backbone setting"):
        build_backbone("tiny", codebook_size=K, latent_size=H, widht=3)
    with pytest.raises(ValueError, match="multiple of num_heads"):
        BackboneConfig(codebook_size=K, latent_size=H, hidden_size=64, num_heads=3)
    with torch.no_grad():
        assert math.isfinite(float(tiny(x, t).sum()))
