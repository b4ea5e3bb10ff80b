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
    # held-out videos from their first frame, scored over the frames both videos have, next to copying
    q = out["quality"]
    assert q["num_videos"] == 2 and q["scored_videos"] == sum(n > 2 for n in lengths)
    if q["scored_videos"]:
        assert 0 <= q["token_accuracy"] <= 1 and 0 <= q["copy_last_frame_token_accuracy"] <= 1
        assert {"psnr", "copy_last_frame_psnr", "ssim", "foreground_token_accuracy"} <= set(q)
    assert all(Path(v["comparison_gif"]).is_file() for v in out["videos"])
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


def test_flowception_evaluate_scores_the_overlap_and_reports_the_length_histogram(trained, tmp_path):
    """evaluate sampler=flowception: whole held-out videos, quality over the frames both videos have, FVD of
    videos at their own lengths with N, the length histogram against the shards' lengths, MLflow."""
    from experiments import evaluate, tracking

    out = evaluate.main(load_config("evaluate", [
        f"checkpoint={trained['checkpoint']}", f"out_dir={tmp_path}", "sampler=flowception", "sampling_steps=2",
        "n_context_frames=2", "extrapolation=2", "num_videos=2", "batch_size=2", "insertion=poisson",
        f"fvd.cache_dir={tmp_path / 'fvd'}"]))
    lengths = out["sample_frames"]
    assert len(lengths) == out["num_videos"] == 2 and all(2 <= n <= 16 for n in lengths)
    assert out["real_clip_frames"] == [16, 16]  # 24-frame held-out videos, their first L = 2 x 8 frames
    assert sum(out["length_histogram"]["generated"].values()) == 2 and set(out["length_histogram"]["real"]) == {"16"}
    assert out["length_tv"] == pytest.approx(1 - lengths.count(16) / 2)  # the real lengths are all 16 (capped at L)
    scored = [n for n in lengths if n > 2]
    assert out["scored_videos"] == len(scored)
    if scored:  # one value per generated frame that some video reached
        assert len(out["token_accuracy_per_frame"]) == max(scored) - 2 and 0 <= out["token_accuracy"] <= 1
        assert {"psnr", "ssim", "copy_last_frame_token_accuracy", "foreground_token_accuracy"} <= set(out)
    long_enough = sum(n >= 9 for n in lengths)  # I3D's minimum
    assert out["fvd_n"] == long_enough and out["fvd_num_real"] == 2 and out["fvd_short_videos"] == 2 - long_enough
    assert (out["fvd"] >= 0) if long_enough >= 2 else ("fvd_skipped" in out and out["fvd"] != out["fvd"])
    assert 2 <= out["nfe"] <= (16 - 2) * 2 * 2  # blockwise_stop=length: each further window adds >= 1 frame, S to 2S passes
    run = tracking.get_client().get_run(out["mlflow_run_id"])
    assert run.data.tags["sample_frames"] == ",".join(map(str, lengths))
    assert run.data.metrics["eval/length_tv"] == pytest.approx(out["length_tv"])
    assert run.data.params["insertion"] == "poisson"


def test_flowception_evaluate_refuses_a_checkpoint_without_rate_head(trained):
    from experiments.evaluate import _check_rate_head
    from maskflow.models.latte import build_backbone
    from maskflow.sampling import SamplerConfig

    maskflow_model = build_backbone("tiny", codebook_size=32, latent_size=4)
    with pytest.raises(ConfigError, match="dynamics=flowception"):
        _check_rate_head(maskflow_model, SamplerConfig(sampler="flowception", chunk_size=8), "ckpt")
    _check_rate_head(maskflow_model, SamplerConfig(sampler="mgm", chunk_size=8), "ckpt")  # MaskFlow samplers: fine


def test_variable_length_scores_match_fixed_length_ones_and_weight_frames(tmp_path):
    """Equal lengths: the same numbers as MaskFlow's continuation_quality; mixed lengths: scalars are means
    over every scored frame, curves means over the videos that reach a frame, short videos left out."""
    import math

    from experiments.flowception import variable_length_fvd
    from experiments.heldout import variable_length_quality
    from maskflow.metrics.continuation import continuation_quality

    g = torch.Generator().manual_seed(0)
    real = torch.randint(0, 4, (3, 6, 2, 2), generator=g)
    fake = torch.randint(0, 4, (3, 6, 2, 2), generator=g)
    fake[:, :2] = real[:, :2]
    same = variable_length_quality(list(real), list(fake), 2)
    ref = continuation_quality(real, fake, 2)
    for key in ("token_accuracy", "copy_last_frame_token_accuracy", "foreground_share"):
        assert same[key] == pytest.approx(ref[key])
    assert same["token_accuracy_per_frame"] == pytest.approx(ref["token_accuracy_per_frame"])

    # video 0 scored on frames 2..5, video 1 on frames 2..3 (its generated video has 4 frames), video 2 not at all
    mixed = variable_length_quality([real[0], real[1], real[2]], [fake[0], fake[1, :4], fake[2, :2]], 2)
    hits0 = (real[0, 2:] == fake[0, 2:]).double().mean(dim=(1, 2))
    hits1 = (real[1, 2:4] == fake[1, 2:4]).double().mean(dim=(1, 2))
    assert mixed["scored_videos"] == 2 and mixed["num_videos"] == 3
    assert mixed["token_accuracy"] == pytest.approx(float(torch.cat([hits0, hits1]).mean()))
    assert mixed["token_accuracy_per_frame"] == pytest.approx(
        [float((hits0[0] + hits1[0]) / 2), float((hits0[1] + hits1[1]) / 2), float(hits0[2]), float(hits0[3])])

    class MeanColour:  # a stand-in feature network: mean colour and its frame-to-frame change, any length
        name = "mean-colour"

        def __call__(self, videos):
            v = videos.double()
            return torch.cat([v.mean(dim=(1, 2, 3)), (v[:, 1:] - v[:, :-1]).abs().mean(dim=(1, 2, 3))], 1).numpy()

    frames = [torch.randint(0, 255, (n, 4, 4, 3), generator=g, dtype=torch.uint8) for n in (9, 12, 10, 5)]
    res = variable_length_fvd(frames[:3], frames[1:], MeanColour(), cache_dir=tmp_path, key="k")
    assert res["fvd_num_real"] == 3 and res["fvd_n"] == 2 and res["fvd_short_videos"] == 1
    assert math.isfinite(res["fvd"]) and res["fvd"] >= 0
    assert variable_length_fvd(frames[:3], frames[1:], MeanColour())["fvd"] == pytest.approx(res["fvd"])  # no cache
    short = variable_length_fvd(frames[:3], frames[3:], MeanColour(), cache_dir=tmp_path, key="k")
    assert math.isnan(short["fvd"]) and "9 frames" in short["fvd_skipped"]


def test_sweep_runs_flowception_trials_with_length_metrics(trained, tmp_path):
    """Two Flowception trials through Ray Tune (the insertion rule swept), each reporting length_tv; the best
    trial chosen by it; unknown sweep axes still refused."""
    import mlflow

    from experiments import sweep, tracking

    words = [
        f"checkpoint={trained['checkpoint']}", "name=t-fc-sweep", f"storage_path={tmp_path}",
        "grid=[{sampler: flowception, sampling_steps: [2]}]", "+axes.insertion=[bernoulli, poisson]",
        "extrapolation=[1]", "metric=length_tv", "mode=min", "max_concurrent_trials=1",
        "eval.num_videos=2", "eval.batch_size=2", "eval.fvd.enabled=false",
    ]
    out = sweep.main(load_config("sweep", words))
    assert out["trials"] == 2 and not out["errors"]
    runs = mlflow.search_runs(experiment_ids=[tracking.get_client().get_run(out["parent_run_id"]).info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{out['parent_run_id']}'")
    assert sorted(runs["params.insertion"]) == ["bernoulli", "poisson"] and set(runs["status"]) == {"FINISHED"}
    assert runs["metrics.eval/length_tv"].between(0, 1).all() and runs["metrics.eval/mean_frames"].between(2, 8).all()
    assert [r["insertion"] for r in out["trials_table"]] == ["bernoulli", "poisson"]
    assert out["best"]["insertion"] in ("bernoulli", "poisson")
    assert out["best"]["length_tv"] == min(r["length_tv"] for r in out["trials_table"])
    # the report: one Flowception row per insertion rule with its lengths, none mixed into MaskFlow's tables
    md = Path(out["report"]["markdown"]).read_text()
    table1, flow = md.split("## Table 2 layout")[0], md.split("## Flowception")[1]
    assert "_no runs for this table_" in table1
    rows = [line for line in flow.splitlines() if line.startswith("| 1 |")]
    assert len(rows) == 2 and "bernoulli" in rows[0] and "poisson" in rows[1]
    tv = {r["insertion"]: r["length_tv"] for r in out["trials_table"]}
    for row, rule in zip(rows, ("bernoulli", "poisson")):
        assert float(row.split("|")[11]) == pytest.approx(tv[rule], abs=0.005)  # the Length TV column
