"""``dynamics=flowception`` through the real entry points: Ray Train (checkpoint, MLflow) → sample
(videos of the generated length, lengths logged); the whole-video reader and the config checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from experiments.config import ConfigError, load_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _train_cfg(shards: Path, name: str, **kw) -> list[str]:
    words = {
        "shards": shards, "run_name": name, "chunk_size": 8, "model.size": "tiny", "loop.max_steps": 4,
        "loop.batch_size_per_worker": 2, "loop.log_every": 1, "loop.checkpoint_every": 2,
        "loop.min_steps_per_epoch": 3, "run.storage_path": shards.parent / "ray_results",
        "mlflow.system_metrics": False, "optim.lr": 1e-3, "mlflow.experiment": "test-flowception",
        "loop.sample_sampling_steps": 2, "dynamics": "flowception", "method.max_context_frames": 2,
        "scaling.num_workers": 1, "loop.heldout_clips": 1, "loop.val_windows": 4,
    }
    words.update(kw)
    return [f"{k}={v}" for k, v in words.items()]


@pytest.fixture(scope="module")
def trained(token_shards) -> dict:
    from experiments import train

    return train.main(load_config("train", _train_cfg(token_shards, "flowception")))


def test_flowception_trains_and_checkpoints_through_ray_train(trained):
    """The MaskFlow loop (checkpoints, resume and MLflow are shared code, tested in test_experiments.py)."""
    from experiments import tracking
    from experiments.checkpoint import load_checkpoint

    state = load_checkpoint(trained["checkpoint"])
    assert trained["steps"] == 4 and state["step"] == 4
    assert state["backbone_config"]["rate_head"] == "exp" and "rate_token" in state["model"]
    assert state["config"]["dynamics"] == "flowception"
    client = tracking.get_client()
    names = set(client.get_run(trained["mlflow_run_id"]).data.metrics)
    insertion = [n for n in names if n.endswith("insertion_loss")]
    assert insertion, sorted(names)
    steps = sorted(m.step for m in client.get_metric_history(trained["mlflow_run_id"], insertion[0]))
    assert steps == [1, 2, 3, 4]


def test_flowception_sample_writes_videos_of_the_generated_length(trained, tmp_path):
    import av

    from experiments import sample, tracking

    out = sample.main(load_config("sample", [f"checkpoint={trained['checkpoint']}", f"out_dir={tmp_path}",
                                             "sampler=flowception", "sampling_steps=3", "n_context_frames=2",
                                             "num_frames=8", "num_videos=2", "insertion=poisson"]))
    lengths = out["sample_frames"]
    assert len(lengths) == 2 and all(2 <= n <= 8 for n in lengths) and out["context_frames_exact"]
    hist = out["length_histogram"]
    assert sum(hist["generated"].values()) == 2 and set(hist["real"]) == {"8"}  # 24-frame videos, 8 at most
    for n, video in zip(lengths, out["videos"]):  # (a GIF merges identical consecutive frames: count the MP4's)
        with av.open(video["mp4"]) as container:
            assert sum(1 for _ in container.decode(video=0)) == n
    assert 3 <= out["nfe"] <= 2 * 3 * 1  # one window: S to 2S passes
    run = tracking.get_client().get_run(out["mlflow_run_id"])
    assert run.data.metrics["sample/max_frames"] == max(lengths)
    assert run.data.tags["sample_frames"] == ",".join(map(str, lengths))


def test_maskflow_sampler_reads_a_flowception_checkpoint_and_bad_settings_are_refused(trained, token_shards, tmp_path):
    from experiments import sample, train

    out = sample.main(load_config("sample", [f"checkpoint={trained['checkpoint']}", f"out_dir={tmp_path}",
                                             "sampling_steps=2", "n_context_frames=2", "num_frames=8", "num_videos=1"]))
    assert out["sample_frames"] == [8] and "length_histogram" not in out
    with pytest.raises(ConfigError, match="dynamics must be one of"):
        train.main(load_config("train", _train_cfg(token_shards, "bad-dyn", dynamics="edit")))
    with pytest.raises(ConfigError, match="flowception.rate_head"):
        train.main(load_config("train", _train_cfg(token_shards, "bad-head", **{"flowception.rate_head": "none"})))
    with pytest.raises(ConfigError, match="reduction"):
        train.main(load_config("train", _train_cfg(token_shards, "bad-red", **{"flowception.reduction": "sum"})))


def test_whole_video_pieces_and_padded_rows(token_shards):
    import numpy as np

    from pipeline.whole_videos import _segment_videos, length_histogram, segment_lengths, video_pieces

    assert video_pieces(5, 8) == [(0, 5)]
    assert video_pieces(20, 8, offset=3) == [(3, 11), (11, 19), (19, 20)]
    assert video_pieces(16, 8) == [(0, 8), (8, 16)]
    assert set(segment_lengths(token_shards, "train", 10)) == {10, 4}  # 24 = 10 + 10 + 4
    assert length_histogram([3, 5, 3]) == {"3": 2, "5": 1}
    tokens = np.arange(24 * 4).reshape(24, 2, 2).astype(np.uint16) % 32
    row = {"tokens": tokens.reshape(-1), "token_shape": np.array([24, 2, 2]), "video_id": "v", "segment": 0}
    rows = _segment_videos(row, 10, repeats=4, mask_id=32)
    assert 8 <= len(rows) <= 12  # 2 or 3 pieces per repeat, depending on the random offset
    for r in rows:
        k, start = int(r["num_frames"]), int(r["window"].rsplit(":", 1)[1])
        assert r["tokens"].shape == (10, 2, 2) and bool((r["tokens"][k:] == 32).all())
        assert np.array_equal(r["tokens"][:k], tokens[start : start + k])
        assert k == 10 or start + k == 24  # a short piece ends where the video ends
