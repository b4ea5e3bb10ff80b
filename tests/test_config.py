"""Config loading and command-line overrides (experiments/config.py)."""

import pytest

from experiments.config import ConfigError, apply_overrides, flatten, load_config


def test_bare_leaf_override_resolves_to_its_path():
    cfg = load_config("train", ["lr=3e-4", "size=B/2", "num_workers=4", "max_steps=7"])
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.model.size == "B/2"
    assert cfg.scaling.num_workers == 4
    assert cfg.loop.max_steps == 7


def test_dotted_override_and_yaml_values():
    cfg = load_config("train", ["optim.betas=[0.8,0.9]", "run_name=null", "method.masking=constant"])
    assert list(cfg.optim.betas) == [0.8, 0.9]
    assert cfg.run_name is None
    assert cfg.method.masking == "constant"


def test_sampler_style_overrides():
    cfg = load_config("sample", ["sampler=fm", "stride=1", "sampling_steps=250", "guidance_scale=1.5"])
    assert (cfg.sampler, cfg.stride, cfg.sampling_steps, cfg.guidance_scale) == ("fm", 1, 250, 1.5)


def test_unknown_key_is_refused_with_known_keys_listed():
    with pytest.raises(ConfigError, match="unknown config key 'strid'.*stride"):
        load_config("sample", ["strid=3"])


def test_ambiguous_bare_key_is_refused():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"a": {"x": 1}, "b": {"x": 2}})
    with pytest.raises(ConfigError, match="ambiguous.*a.x.*b.x"):
        apply_overrides(cfg, ["x=3"])


def test_word_without_equals_is_refused():
    with pytest.raises(ConfigError, match="key=value"):
        load_config("train", ["max_steps"])


def test_presets_are_the_papers_recipes():
    ffs = load_config("train", ["preset=ffs"])
    assert (ffs.model.size, ffs.chunk_size, ffs.loop.batch_size_per_worker, ffs.scaling.num_workers) == ("XL/2", 16, 2, 4)
    dmlab = load_config("train", ["preset=dmlab", "max_steps=10"])
    assert (dmlab.model.size, dmlab.chunk_size, dmlab.loop.batch_size_per_worker) == ("B/2", 36, 3)
    assert dmlab.loop.max_steps == 10  # overrides win over the preset
    with pytest.raises(ConfigError, match="unknown preset 'nope'.*dmlab.*ffs"):
        load_config("train", ["preset=nope"])


def test_flatten_gives_dotted_keys():
    flat = flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None})
    assert flat == {"a.b": 1, "a.c.d": [1, 2], "e": None}


@pytest.mark.parametrize("raw,value", [("3e-4", 3e-4), ("1E5", 1e5), ("14", 14), ("null", None), ("B/2", "B/2"), ("[1, 14]", [1, 14]), ("true", True)])
def test_values_parse_like_a_researcher_means(raw, value):
    from experiments.config import parse_value

    assert parse_value(raw) == value and type(parse_value(raw)) is type(value)


def test_demo_null_settings_follow_the_data_unless_set():
    from experiments.demo import resolve_defaults

    def resolved(*words):
        return resolve_defaults(load_config("demo", list(words)))

    cfg = load_config("demo", [])
    sprites = resolve_defaults(cfg)
    assert cfg.model_size is None, "the config passed in is not modified"
    assert (sprites.synthetic_motion, sprites.model_size) == ("kinds", "tiny")
    assert (sprites.patch_size, sprites.chunk_size) == (1, 3)  # p = 2 leaves moves into the next patch unlearnt
    assert sprites.n_context_frames == sprites.chunk_size - 1  # one new frame per chunk: always the next frame
    assert sprites.extrapolation * sprites.chunk_size == 15 and sprites.num_synthetic_videos == 1024
    videos = resolved("videos=/some/videos")  # real video: p = 1 to copy unseen codes; the settings measured there
    assert (videos.model_size, videos.patch_size, videos.chunk_size, videos.max_steps) == ("small", 1, 8, 1000)
    assert (videos.lr_decay, videos.extrapolation) == ("constant", 2) and videos.synthetic_motion is None
    flow = resolved("dynamics=flowception")  # 8 frames hold the longest rendered video (flowception_lengths)
    assert (flow.synthetic_motion, flow.model_size) == ("grid", "small")
    assert (flow.chunk_size, flow.num_synthetic_videos, flow.patch_size) == (8, 256, 2)
    assert max(flow.flowception_lengths) <= flow.chunk_size
    mine = resolved("videos=/some/videos", "patch_size=2", "chunk_size=16", "model_size=tiny")
    assert (mine.patch_size, mine.chunk_size, mine.model_size) == (2, 16, "tiny")
