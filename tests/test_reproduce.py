"""The toy reproduction (``make reproduce``): grid pruning, rollout blocks, verdict rules, and the
``QUICK=1`` run end to end with its resume."""

from __future__ import annotations

import json
import math

import pytest

from experiments.config import ConfigError
from experiments.reproduce import expand_grid, load_reproduce_config, settings_key
from experiments.reproduction_report import aggregate, rollout_blocks, verdicts

VERDICTS = {"reproduced", "partly reproduced", "not reproduced", "not measured"}


# ------------------------------------------------------------------------------------ config and grid
@pytest.mark.parametrize("preset", ["quick", "cpu", "gpu"])
def test_presets_load_and_every_claim_has_trials(preset):
    cfg = load_reproduce_config([f"preset={preset}"])
    assert cfg.preset == preset and "presets" not in cfg
    grid = expand_grid(cfg)
    assert {c for t in grid for c in t["claims"]} == {1, 2, 3, 4, 5, 6}
    assert {t["sampler"] for t in grid} == {"mgm", "fm", "diffusion_forcing", "rolling", "flowception"}
    assert {t["model"] for t in grid} == {"frame", "constant", "independent", "flowception", "flowception_lengths"}
    fc = [t for t in grid if t["sampler"] == "flowception"]  # Flowception rows: its own models, every extrapolation
    assert {t["model"] for t in fc} == {"flowception", "flowception_lengths"}
    assert {t["extrapolation"] for t in fc if t["model"] == "flowception"} == set(cfg.eval.extrapolations)
    assert all(t["num_videos"] == cfg.lengths_data.eval_videos for t in fc if t["model"] == "flowception_lengths")
    assert max(cfg.lengths_data.lengths) <= cfg.chunk_size  # one window holds the longest video
    keys = [settings_key({k: v for k, v in t.items() if k not in ("claims", "tables")}) for t in grid]
    assert len(keys) == len(set(keys)), "a setting appears twice in the grid"


def test_grid_is_pruned_as_documented():
    cfg = load_reproduce_config(["preset=cpu"])
    grid = expand_grid(cfg)
    exts, seeds = list(cfg.eval.extrapolations), list(cfg.eval.seeds)
    # s = 1 never at 1x (one chunk: the same samples as full sequence), only with MGM
    assert not [t for t in grid if t["stride"] == 1 and t["extrapolation"] == 1]
    assert {t["sampler"] for t in grid if t["stride"] == 1} == {"mgm"}
    # guidance only on the frame-level model with MGM, full sequence
    guided = [t for t in grid if t["guidance_scale"] > 0]
    assert guided and all(t["model"] == "frame" and t["sampler"] == "mgm" and t["stride"] == "full" for t in guided)
    assert {t["guidance_scale"] for t in guided} == {1.0, 2.0}
    # the paper's step counts, and every extrapolation x seed for the Table 1 samplers
    assert {t["sampler"]: t["sampling_steps"] for t in grid} == {"mgm": 20, "fm": 250, "diffusion_forcing": 250, "rolling": 250,
                                                                 "flowception": 10}
    for sampler in ("mgm", "fm", "diffusion_forcing", "rolling"):
        t1 = {(t["extrapolation"], t["seed"]) for t in grid if t["model"] == "frame" and t["sampler"] == sampler
              and t["stride"] == "full" and t["guidance_scale"] == 0 and t["time_conditioning"] == "dependent"}
        assert t1 == {(e, s) for e in exts for s in seeds}
    # far smaller than the full product (3 models x 4 samplers x 4 x 2 strides x 3 guidance scales)
    assert len(grid) < 3 * 4 * len(exts) * 2 * 3 * len(seeds) / 3


def test_bad_config_is_refused():
    with pytest.raises(ConfigError, match="unknown preset"):
        load_reproduce_config(["preset=huge"])
    with pytest.raises(ConfigError, match="n_context_frames"):
        load_reproduce_config(["preset=quick", "n_context_frames=6"])
    cfg = load_reproduce_config(["preset=quick"])
    cfg.grid = [{"model": "nonexistent"}]
    with pytest.raises(ConfigError, match="nonexistent"):
        expand_grid(cfg)
    cfg.grid = [{"model": "frame", "sampler": "flowception"}]  # a MaskFlow model has no rate head
    with pytest.raises(ConfigError, match="dynamics: flowception"):
        expand_grid(cfg)
    with pytest.raises(ConfigError, match="lengths_data.lengths"):
        load_reproduce_config(["preset=quick", "lengths_data.lengths=[3,7]"])  # longer than chunk_size = 6


def test_settings_key_depends_on_every_value():
    a = {"sampler": "mgm", "extrapolation": 2, "seed": 0}
    assert settings_key(a) == settings_key(dict(reversed(list(a.items()))))
    assert settings_key(a) != settings_key({**a, "seed": 1})


# ------------------------------------------------------------------------------------ report pieces
def test_rollout_blocks_follow_video_frames():
    # k = 4, m = 2: generated frames 2..9 -> blocks {2,3}, {4..7}, {8,9}
    assert rollout_blocks([1, 1, 0, 0, 0, 0, 0.5, 0.5], chunk_size=4, n_context_frames=2) == [1.0, 0.0, 0.5]
    assert rollout_blocks([], 4, 2) == []


def _setting(model="frame", sampler="mgm", ext=1, stride="full", w=0.0, tc="dependent", fvd=100.0, acc=0.5, nfe=20.0):
    row = {"model": model, "sampler": sampler, "sampling_steps": 20, "extrapolation": ext, "stride": stride,
           "guidance_scale": w, "time_conditioning": tc, "seed": 0, "claims": [], "nfe_matches_formula": True,
           "blocks": {"token_accuracy": [acc]}}
    for name in ("fvd_n", "copy_last_frame_token_accuracy", "foreground_token_accuracy",
                 "copy_last_frame_foreground_token_accuracy", "psnr", "copy_last_frame_psnr", "ssim",
                 "copy_last_frame_ssim", "expected_nfe", "wall_time_s", "wall_time_per_video_s", "num_videos"):
        row[name] = 1.0
    row.update(fvd=fvd, token_accuracy=acc, nfe=nfe)
    return row


TOL = {"fvd_rel_tol": 0.05, "acc_abs_tol": 0.01, "close_fvd_rel": 0.25, "close_acc_abs": 0.03, "nfe_ratio_max": 0.15}


def test_claim_1_verdict_follows_the_numbers():
    def run(frame_fvd, frame_acc):
        rows = [_setting(ext=1), _setting("constant", ext=1),
                _setting(ext=10, fvd=frame_fvd, acc=frame_acc), _setting("constant", ext=10, fvd=300.0, acc=0.4),
                _setting(ext=10, stride=1, fvd=frame_fvd, acc=frame_acc), _setting("constant", ext=10, stride=1, fvd=300.0, acc=0.4)]
        return verdicts(aggregate(rows), [1, 10], TOL)[1]["verdict"]

    assert run(150.0, 0.6) == "reproduced"
    assert run(150.0, 0.3) == "partly reproduced"  # FVD supports it, token accuracy does not
    assert run(400.0, 0.3) == "not reproduced"
    assert run(305.0, 0.405) == "not reproduced"  # within the tolerances: a tie does not support "better"


def test_claim_2_needs_closeness_and_a_tenth_of_the_nfe():
    def run(mgm_fvd, mgm_nfe):
        rows = [_setting(ext=2, fvd=mgm_fvd, nfe=mgm_nfe), _setting(sampler="fm", ext=2, fvd=100.0, nfe=750.0)]
        return verdicts(aggregate(rows), [2], TOL)[2]["verdict"]

    assert run(110.0, 60.0) == "reproduced"
    assert run(140.0, 60.0) == "partly reproduced"
    assert run(110.0, 500.0) == "partly reproduced"


def test_missing_numbers_are_not_measured():
    v = verdicts(aggregate([_setting(ext=1, fvd=math.nan)]), [1], TOL)
    assert all(x["verdict"] in VERDICTS for x in v.values())
    assert v[3]["verdict"] == "not measured" and v[5]["verdict"] == "not measured"


# ------------------------------------------------------------------------------------ QUICK end to end
@pytest.mark.ray
@pytest.mark.slow
def test_quick_reproduction_runs_reports_and_resumes(tmp_path, ray_session, mlflow_uri, capsys):
    from experiments import reproduce

    out = tmp_path / "repro"
    cfg = load_reproduce_config(["preset=quick", f"out_dir={out}"])
    first = reproduce.main(cfg, argv=["preset=quick"])
    grid = expand_grid(cfg)

    saved = json.loads((out / "reproduction.json").read_text())
    assert saved["evaluation"]["num_grid"] == len(grid) and not saved["evaluation"]["errors"]
    assert len(saved["trials"]) == len(grid)
    assert {str(c) for c in range(1, 7)} == set(saved["verdicts"])
    assert all(v["verdict"] in VERDICTS and v["checks"] for v in saved["verdicts"].values())
    k, m = saved["chunk_size"], saved["n_context_frames"]
    for t in saved["trials"]:
        if t["sampler"] == "flowception":  # the model chooses the length: checked below
            continue
        assert t["nfe"] == t["expected_nfe"] > 0  # counted NFE equals the A.2 formula for every sampler
        assert 0.0 <= t["token_accuracy"] <= 1 and 0.0 <= t["copy_last_frame_token_accuracy"] <= 1
        assert len(t["blocks"]["token_accuracy"]) == t["extrapolation"]  # one value per k-frame block
        assert t["num_videos"] == (cfg.lengths_data.eval_videos if t["model"] == "flowception_lengths" else cfg.eval.num_videos)
        if t["extrapolation"] * k >= 9:  # I3D's minimum clip length
            assert math.isfinite(t["fvd"]) and t["fvd_n"] == cfg.eval.num_videos
        else:
            assert math.isnan(t["fvd"])
    mgm = next(t for t in saved["trials"] if t["sampler"] == "mgm" and t["extrapolation"] == 2 and t["stride"] == "full"
               and t["guidance_scale"] == 0 and t["model"] == "frame" and t["time_conditioning"] == "dependent")
    fm = next(t for t in saved["trials"] if t["sampler"] == "fm" and t["extrapolation"] == 2 and t["model"] == "frame")
    assert mgm["nfe"] < fm["nfe"]

    # Flowception: the length histogram of the model trained on videos of several lengths, and the model trained
    # on the same videos as MaskFlow next to MGM
    fc = [t for t in saved["trials"] if t["sampler"] == "flowception"]
    lengths = next(t for t in fc if t["model"] == "flowception_lengths")
    hist = lengths["length_histogram"]
    assert set(hist["real"]) == {str(n) for n in cfg.lengths_data.lengths}
    assert sum(hist["generated"].values()) == lengths["num_videos"] == len(lengths["sample_frames"])
    assert all(m < n <= k for n in lengths["sample_frames"]) or min(lengths["sample_frames"]) == m
    assert 0 <= lengths["length_tv"] <= 1 and lengths["nfe_matches_formula"] is None
    for t in (t for t in fc if t["model"] == "flowception"):
        assert set(t["length_histogram"]["real"]) == {str(t["extrapolation"] * k)}  # every video is long enough
        assert all(m <= n <= t["extrapolation"] * k for n in t["sample_frames"])
        assert 1 <= len(t["blocks"]["token_accuracy"]) <= t["extrapolation"] or t["scored_videos"] == 0
        # blockwise_stop=length: each window after the first adds at least one frame; S to 2S passes per window
        assert cfg.eval.sampling_steps.flowception <= t["nfe"] <= 2 * cfg.eval.sampling_steps.flowception * (t["extrapolation"] * k - m)

    md = (out / "reproduction.md").read_text()
    for heading in ("Table 1 layout", "Table 2 layout", "Table 3 layout", "Table 4 layout", "Table 5 layout",
                    "Table S6 layout", "Rollout decay", "## Verdicts", "## Flowception", "Figure 11",
                    "Continuation quality against MaskFlow at about the same NFE"):
        assert heading in md
    assert "| Flowception, `flowception` model | 2× |" in md and f"**{lengths['length_tv']:.3f}**" in md
    assert "Flowception (flowception_lengths, 1x)" in capsys.readouterr().out  # the printed summary
    for c in range(1, 7):
        assert f"**({c}) " in md
    for png in ("quality_vs_extrapolation", "quality_vs_nfe", "rollout_decay", "rollout_strip", "length_histogram"):
        path = out / "reproduction" / f"{png}.png"
        assert path.stat().st_size > 1000 and f"reproduction/{png}.png" in md
    assert first["models"].keys() == {"frame", "constant", "independent", "flowception", "flowception_lengths"}
    steps = {name: m_["steps"] for name, m_ in first["models"].items()}
    assert {steps[n] for n in ("frame", "constant", "independent")} == {cfg.train.max_steps}  # the same budget for every MaskFlow model
    assert steps["flowception"] == steps["flowception_lengths"] == cfg.models.flowception.max_steps

    again = reproduce.main(cfg, argv=["preset=quick"])
    assert again["evaluation"]["ran"] == 0 and again["evaluation"]["skipped"] == len(grid)
    assert all(x["skipped"] for x in again["models"].values()) and again["data"]["skipped"]
    assert [t["key"] for t in again["trials"]] == [t["key"] for t in saved["trials"]]
    assert [t["token_accuracy"] for t in again["trials"]] == [t["token_accuracy"] for t in saved["trials"]]
