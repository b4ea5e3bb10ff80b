"""Sweep search spaces from the YAML and the command line (no Ray run; the sweeps themselves run in
tests/test_experiments.py with the shared checkpoint)."""

from __future__ import annotations

import pytest

from experiments.config import ConfigError, load_config
from experiments.sweep import expand_trials, parse_axis, sampled_axes, tune_domain


def _cfg(*words: str):
    return load_config("sweep", ["checkpoint=ckpt", *words])


def test_each_search_space_kind_parses_from_yaml_words():
    cfg = _cfg("search=optuna", "axes.stride={grid: [1, null]}", "axes.guidance_scale={uniform: [0, 3]}",
               "+axes.temperature={loguniform: [0.1, 10]}", "axes.seed={choice: [0, 1, 2]}",
               "axes.extrapolation=[1, 2]")
    assert parse_axis("stride", cfg.axes.stride) == ("grid", [1, None])
    assert parse_axis("extrapolation", cfg.axes.extrapolation) == ("grid", [1, 2])
    assert parse_axis("x", 5) == ("grid", [5])
    assert sampled_axes(cfg) == {"guidance_scale": ("uniform", [0.0, 3.0]), "temperature": ("loguniform", [0.1, 10.0]),
                                 "seed": ("choice", [0, 1, 2])}
    # the discrete part: 2 groups' settings (mgm 10/20/50, fm 250) x stride (2) x extrapolation (2) x time_conditioning
    trials = expand_trials(cfg)
    assert len(trials) == 4 * 2 * 2 and {t["stride"] for t in trials} == {1, None}
    assert all("guidance_scale" not in t and "seed" not in t for t in trials)


def test_search_spaces_become_tune_domains():
    from ray.tune.search.sample import Categorical, Float, LogUniform

    choice = tune_domain("choice", [0, 1])
    assert isinstance(choice, Categorical) and choice.categories == [0, 1]
    uniform = tune_domain("uniform", [0.0, 3.0])
    assert isinstance(uniform, Float) and (uniform.lower, uniform.upper) == (0.0, 3.0)
    log = tune_domain("loguniform", [0.1, 10.0])
    assert isinstance(log.get_sampler(), LogUniform)
    values = [log.sample() for _ in range(200)]
    assert min(values) >= 0.1 and max(values) <= 10.0
    assert tune_domain("grid", [1, 2]) == {"grid_search": [1, 2]}


@pytest.mark.parametrize("value, message", [
    ({"normal": [0, 1]}, "unknown search space 'normal'"),
    ({"uniform": [2, 1]}, r"low < high"),
    ({"uniform": [0]}, r"low < high"),
    ({"loguniform": [0, 1]}, "low > 0"),
    ({"choice": []}, "at least one value"),
    ({"choice": [1], "grid": [2]}, "one search space"),
])
def test_bad_search_spaces_are_refused_naming_the_axis(value, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_axis("guidance_scale", value)
    assert "axes.guidance_scale" in str(err.value)


def test_whole_number_settings_are_not_drawn_from_intervals():
    with pytest.raises(ConfigError, match="axes.sampling_steps takes whole numbers"):
        parse_axis("sampling_steps", {"uniform": [4, 32]})
    assert parse_axis("sampling_steps", {"choice": [4, 8]}) == ("choice", [4, 8])


def test_sampled_axes_need_a_drawing_search():
    with pytest.raises(ConfigError, match="search=grid runs every listed value.*axes.guidance_scale is uniform"):
        expand_trials(_cfg("axes.guidance_scale={uniform: [0, 3]}"))
    with pytest.raises(ConfigError, match="search must be one of grid, random, optuna"):
        expand_trials(_cfg("search=bayes"))
    with pytest.raises(ConfigError, match="grid groups take lists"):
        expand_trials(_cfg("grid=[{sampler: mgm, sampling_steps: {choice: [2, 4]}}]"))
    # random over lists only keeps drawing distinct settings of the list, seeded
    a = expand_trials(_cfg("search=random", "num_samples=3", "search_seed=1"))
    b = expand_trials(_cfg("search=random", "num_samples=3", "search_seed=1"))
    assert a == b and len({str(sorted(t.items())) for t in a}) == 3


def test_objective_is_checked_before_any_work():
    from experiments import sweep

    with pytest.raises(ConfigError, match="mode must be min or max"):
        sweep.main(_cfg("mode=lowest"))
    with pytest.raises(ConfigError, match="search=optuna needs metric="):
        sweep.main(_cfg("search=optuna", "metric=null"))
    with pytest.raises(ConfigError, match="eval.fvd.enabled=false"):
        sweep.main(_cfg("metric=fvd", "eval.fvd.enabled=false"))
