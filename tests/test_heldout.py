"""Held-out quality: the copy-last-frame baseline, continuation scores, the fixed-window validation
objective, unseen-code share, and a backbone that can copy a code across frames (no Ray)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from maskflow.metrics.continuation import PSNR_CAP_DB, continuation_quality, copy_last_frame, token_accuracy_per_frame
from maskflow.models import build_backbone
from maskflow.training import (
    MaskFlowObjective, ObjectiveConfig, OptimConfig, build_optimizer, evaluate_objective, train_step,
)


def test_copy_last_frame_repeats_the_last_context_frame():
    ctx = torch.arange(2 * 3 * 2 * 2).reshape(2, 3, 2, 2)
    out = copy_last_frame(ctx, 7)
    assert out.shape == (2, 7, 2, 2) and torch.equal(out[:, :3], ctx)
    assert all(torch.equal(out[:, f], ctx[:, 2]) for f in range(3, 7))
    with pytest.raises(ValueError):
        copy_last_frame(ctx[:, :0], 4)
    with pytest.raises(ValueError):
        copy_last_frame(ctx, 2)


def test_continuation_quality_scores_model_and_baseline_on_generated_frames_only():
    g = torch.Generator().manual_seed(0)
    real = torch.randint(0, 50, (3, 6, 4, 4), generator=g)
    fake = real.clone()
    fake[:, 4:] = (fake[:, 4:] + 1) % 50  # frames 2-3 right, 4-5 all wrong
    acc = token_accuracy_per_frame(real, fake, 2)
    assert acc.tolist() == [1.0, 1.0, 0.0, 0.0]
    fake_ctx_wrong = fake.clone()
    fake_ctx_wrong[:, :2] = 0  # the context is never scored
    q = continuation_quality(real, fake_ctx_wrong, 2)
    assert q["token_accuracy"] == pytest.approx(0.5) and q["num_videos"] == 3
    copy = (real[:, 2:] == real[:, 1:2]).double().mean().item()
    assert q["copy_last_frame_token_accuracy"] == pytest.approx(copy)

    # a static scene: the copy equals the real frames; its PSNR is capped, not infinite
    frames = torch.randint(0, 256, (2, 1, 16, 16, 3), dtype=torch.uint8).expand(2, 5, 16, 16, 3).contiguous()
    tokens = torch.zeros(2, 5, 2, 2, dtype=torch.long)
    noisy = frames.clone()
    noisy[:, 2:] = 255 - noisy[:, 2:]
    q = continuation_quality(tokens, tokens, 2, real_frames=frames, fake_frames=noisy)
    assert q["copy_last_frame_psnr"] == PSNR_CAP_DB and q["copy_last_frame_token_accuracy"] == 1.0
    assert q["psnr"] < 20 and q["ssim"] < q["copy_last_frame_ssim"] == pytest.approx(1.0)
    assert len(q["psnr_per_frame"]) == 3
    with pytest.raises(ValueError, match="n_context_frames"):
        continuation_quality(tokens, tokens, 0)


def test_validation_objective_is_fixed_and_restores_the_mode():
    model = build_backbone("tiny", codebook_size=16, latent_size=4)
    obj = MaskFlowObjective(ObjectiveConfig(max_context_frames=1))
    windows = torch.randint(0, 16, (5, 4, 4, 4), generator=torch.Generator().manual_seed(1))
    model.train()
    a = evaluate_objective(model, obj, windows, batch_size=2, seed=3)
    b = evaluate_objective(model, obj, windows, batch_size=2, seed=3)
    assert a == b and model.training  # the same corrupted inputs every call
    assert a["masked_ce"] == pytest.approx(math.log(16), rel=1e-4)  # the untrained head is uniform
    assert 0 < a["num_masked"] <= windows.numel() and a["num_windows"] == 5
    assert evaluate_objective(model, obj, windows, batch_size=2, seed=4)["num_masked"] != a["num_masked"]
    with pytest.raises(ValueError):
        evaluate_objective(model, obj, windows[0])


def test_backbone_learns_to_copy_a_code_from_another_frame():
    """Static videos of random codes: a masked token is the code at the same position in any frame
    where it is visible. The backbone must learn this in a few dozen steps (with DiT's N(0, 0.02) code
    embeddings, drowned by the unit-scale position embeddings, the CE stayed at chance, ln K)."""
    torch.manual_seed(0)
    k, t, h = 16, 4, 4
    model = build_backbone("tiny", codebook_size=k, latent_size=h)
    obj = MaskFlowObjective(ObjectiveConfig(loss_weighting="none", masking="constant"))
    cfg = OptimConfig(lr=2e-3)
    opt = build_optimizer(model, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    for step in range(120):
        x = torch.randint(0, k, (32, 1, h, h), generator=g).expand(-1, t, -1, -1).contiguous()
        train_step(model, obj, x, opt, None, None, cfg, step, generator=torch.Generator().manual_seed(step))
    val = torch.randint(0, k, (64, 1, h, h), generator=torch.Generator().manual_seed(99)).expand(-1, t, -1, -1)
    out = evaluate_objective(model, obj, val.contiguous(), batch_size=64, seed=0)
    assert out["masked_ce"] < 0.7 * math.log(k), out


def test_unseen_code_share_counts_heldout_tokens_with_codes_absent_from_training(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.readers import code_counts, unseen_code_share

    def row(vid, split, codes):
        arr = np.asarray(codes, dtype=np.uint16).reshape(len(codes), 1, 1)
        return {"video_id": vid, "split": split, "segment": 0, "tokens": arr.reshape(-1).tolist(),
                "token_shape": list(arr.shape)}

    rows = [row("a", "train", [0, 1, 1, 2]), row("b", "eval", [1, 2, 3, 3]), row("c", "eval", [4, 0, 0, 0])]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "part-00000.parquet")
    counts = code_counts(str(tmp_path), ("train", "eval"), 8)
    assert counts["train"].tolist() == [1, 2, 1, 0, 0, 0, 0, 0] and counts["eval"].tolist() == [3, 1, 1, 2, 1, 0, 0, 0]
    assert unseen_code_share(str(tmp_path), 8) == pytest.approx(3 / 8)  # codes 3, 3 and 4 of 8 held-out tokens
    with pytest.raises(ValueError, match="codebook_size"):
        code_counts(str(tmp_path), ("eval",), 4)


def test_foreground_scores_expose_content_that_fades_into_the_background():
    from maskflow.metrics.continuation import foreground_scores

    real = torch.zeros(1, 4, 4, 4, dtype=torch.long)  # background code 0
    for f in range(4):
        real[0, f, 1, f] = 7  # a one-token sprite moving right
    blank = real.clone()
    blank[:, 2:] = 0  # the generated frames lose the sprite
    q = foreground_scores(real, blank, 2)
    assert q["foreground_token_accuracy"] == 0.0 and q["foreground_share"] == 0.0
    assert q["real_foreground_share"] == pytest.approx(2 / 32)
    assert foreground_scores(real, real, 2)["foreground_token_accuracy"] == 1.0
    full = continuation_quality(real, blank, 2)
    assert full["token_accuracy"] == pytest.approx(30 / 32)  # the background alone looks excellent
    assert full["copy_last_frame_foreground_token_accuracy"] == 0.0  # the sprite moved on
    with pytest.raises(ValueError):
        foreground_scores(real, real, 0)
