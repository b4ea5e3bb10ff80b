"""Tests of maskflow.metrics: Fréchet distance, the I3D network and its loaders, FVD, the stats cache,
and PSNR/SSIM/temporal metrics. CPU only, a few seconds in all (the I3D runs on 9-frame clips)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage
import torch
from torch import nn

from maskflow.metrics import (
    NUM_STATE_DICT_KEYS,
    FeatureExtractor,
    GaussianStats,
    InceptionI3d,
    RealStatsCache,
    StatsKey,
    build_feature_extractor,
    compute_fvd,
    fid_from_features,
    file_sha256,
    frechet_distance,
    gaussian_stats,
    load_i3d,
    load_torchscript_detector,
    preprocess_videos,
    psnr_per_frame,
    ssim_per_frame,
    temporal_mad,
    video_quality_metrics,
)

# the StyleGAN-V detector is a TorchScript file; building a stand-in needs torch.jit.script/save
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:DeprecationWarning")


def _random_spd(rng: np.random.Generator, d: int, rank: int | None = None) -> np.ndarray:
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / (rank or d) + (0.1 * np.eye(d) if rank is None else 0.0)


# ============================================================================
# Fréchet distance
# ============================================================================


def test_frechet_diagonal_closed_form_including_singular():
    rng = np.random.default_rng(0)
    d = 16
    a, b = rng.uniform(0.0, 3.0, d), rng.uniform(0.0, 3.0, d)
    a[:4] = 0.0  # singular covariances are allowed
    b[2:6] = 0.0
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + np.sum((mu1 - mu2) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_frechet_full_covariance_matches_brute_force():
    rng = np.random.default_rng(1)
    d = 24
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    # two independent references: a general matrix square root, and the eigenvalues of the product
    tr_sqrtm = np.real(np.trace(scipy.linalg.sqrtm(s1 @ s2)))
    tr_eig = np.sum(np.sqrt(np.real(np.linalg.eigvals(s1 @ s2))))
    base = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
    got = frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(base - 2 * tr_sqrtm, rel=1e-9)
    assert got == pytest.approx(base - 2 * tr_eig, rel=1e-9)


def test_frechet_symmetry_zero_and_equal_covariance():
    rng = np.random.default_rng(2)
    d = 30
    s1, s2 = _random_spd(rng, d, rank=10), _random_spd(rng, d)  # s1 singular, like N < D features
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    d12, d21 = frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu2, s2, mu1, s1)
    assert d12 > 0 and d12 == pytest.approx(d21, rel=1e-6)  # s1 is singular: the two orders agree to ~1e-9, BLAS-dependent
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(mu2, s2, mu2, s2) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(mu1, s2, mu2, s2) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-9)


def test_frechet_rejects_bad_shapes_and_values():
    mu, s = np.zeros(3), np.eye(3)
    with pytest.raises(ValueError, match="differ"):
        frechet_distance(mu, s, np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match=r"\[D, D\]"):
        frechet_distance(mu, np.eye(4), mu, s)
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.array([0.0, np.nan, 0.0]), s, mu, s)


def test_gaussian_stats_and_fid_from_features():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((500, 5)).astype(np.float32)
    mu, sigma = gaussian_stats(x)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64 and sigma.shape == (5, 5)
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0))
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False))
    shift = np.array([3.0, 0, 0, 0, 0])
    assert fid_from_features(x, x) == pytest.approx(0.0, abs=1e-9)
    assert fid_from_features(x, x + shift) == pytest.approx(9.0, rel=1e-9)  # same covariance
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_stats(x[:1])
    with pytest.raises(ValueError, match="dimensions differ"):
        fid_from_features(x, x[:, :4])
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        gaussian_stats(x[0])


# ============================================================================
# I3D
# ============================================================================


@pytest.fixture(scope="module")
def i3d_weights(tmp_path_factory):
    """A state dict saved from our own randomly initialised I3D (BN statistics perturbed so loading them matters)."""
    torch.manual_seed(0)
    model = InceptionI3d().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("i3d") / "i3d_pretrained_400.pt"
    torch.save(model.state_dict(), path)
    return model, path


def test_i3d_state_dict_layout_matches_pytorch_i3d():
    sd = InceptionI3d().state_dict()
    assert len(sd) == NUM_STATE_DICT_KEYS == 344
    expected_shapes = {
        "Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7),
        "Conv3d_1a_7x7.bn.weight": (64,),
        "Conv3d_1a_7x7.bn.bias": (64,),
        "Conv3d_1a_7x7.bn.running_mean": (64,),
        "Conv3d_1a_7x7.bn.running_var": (64,),
        "Conv3d_2c_3x3.conv3d.weight": (192, 64, 3, 3, 3),
        "Mixed_3b.b0.conv3d.weight": (64, 192, 1, 1, 1),
        "Mixed_3b.b1a.conv3d.weight": (96, 192, 1, 1, 1),
        "Mixed_3b.b1b.conv3d.weight": (128, 96, 3, 3, 3),
        "Mixed_3b.b2a.conv3d.weight": (16, 192, 1, 1, 1),
        "Mixed_3b.b2b.conv3d.weight": (32, 16, 3, 3, 3),
        "Mixed_3b.b3b.conv3d.weight": (32, 192, 1, 1, 1),
        "Mixed_4f.b1b.bn.running_var": (320,),
        "Mixed_5c.b1b.conv3d.weight": (384, 192, 3, 3, 3),
        "logits.conv3d.weight": (400, 1024, 1, 1, 1),
        "logits.conv3d.bias": (400,),
    }
    for key, shape in expected_shapes.items():
        assert tuple(sd[key].shape) == shape, key
    blocks = ["Mixed_3b", "Mixed_3c", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f",
              "Mixed_5b", "Mixed_5c"]
    assert {k.split(".")[0] for k in sd} == {"Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "logits", *blocks}
    assert sum(k.endswith("num_batches_tracked") for k in sd) == 57
    assert not any(".b3a." in k for k in sd)  # the pool branch has no parameters


def test_load_i3d_strict_roundtrip_gives_400_features(i3d_weights):
    model, path = i3d_weights
    loaded = load_i3d(path)
    assert not loaded.training and loaded.num_classes == 400
    x = torch.rand(1, 3, 9, 193, 193) * 2 - 1  # the smallest input the [2, 7, 7] pool accepts
    with torch.inference_mode():
        y_ref, y = model(x), loaded(x)
    assert y.shape == (1, 400)
    torch.testing.assert_close(y, y_ref)
    with pytest.raises(ValueError, match="too small"):
        loaded(torch.zeros(1, 3, 8, 224, 224))


def test_load_i3d_accepts_dataparallel_prefix_and_rejects_wrong_keys(i3d_weights, tmp_path):
    model, _ = i3d_weights
    sd = model.state_dict()
    prefixed = tmp_path / "dp.pt"
    torch.save({f"module.{k}": v for k, v in sd.items()}, prefixed)
    assert isinstance(load_i3d(prefixed), InceptionI3d)
    broken = tmp_path / "broken.pt"
    torch.save({k: v for k, v in sd.items() if not k.startswith("Mixed_5c.b0")}, broken)
    with pytest.raises(ValueError, match="do not match"):
        load_i3d(broken)
    with pytest.raises(ValueError, match="not found"):
        load_i3d(tmp_path / "missing.pt")


def test_i3d_feature_extractor_preprocesses_and_names_weights(i3d_weights):
    _, path = i3d_weights
    extractor = build_feature_extractor("i3d", path, frames_per_batch=9)  # one clip per batch
    assert extractor.name == f"i3d_pt:{file_sha256(path)[:12]}"
    videos = torch.randint(0, 256, (2, 9, 40, 48, 3), dtype=torch.uint8)
    feats = extractor(videos)
    assert feats.shape == (2, 400) and feats.dtype == np.float64 and np.isfinite(feats).all()


def test_preprocess_videos_resize_crop_and_range():
    v = torch.zeros(1, 2, 224, 300, 3, dtype=torch.uint8)
    v[..., 0] = 255
    v[:, :, :, 38:262, 1] = 51  # exactly the centre 224 columns
    x = preprocess_videos(v)
    assert x.shape == (1, 3, 2, 224, 224) and x.dtype == torch.float32
    torch.testing.assert_close(x[:, 0], torch.ones_like(x[:, 0]))
    torch.testing.assert_close(x[:, 1], torch.full_like(x[:, 1], 51 / 255 * 2 - 1))
    torch.testing.assert_close(x[:, 2], -torch.ones_like(x[:, 2]))
    small = preprocess_videos(torch.full((2, 3, 32, 64, 3), 128, dtype=torch.uint8))  # upsampled, short side 32
    assert small.shape == (2, 3, 3, 224, 224)
    torch.testing.assert_close(small, torch.full_like(small, 128 / 255 * 2 - 1))


class _RecordingDetector(nn.Module):
    """Stands in for StyleGAN-V's i3d_torchscript.pt; its output encodes how it was called."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        b = x.shape[0]
        out = torch.zeros(b, 400)
        out[:, :3] = x.float().mean(dim=(2, 3, 4))  # per-channel means: channel axis must be 1
        out[:, 3] = float(x.shape[2])
        out[:, 4] = float(x.shape[3])
        out[:, 5] = float(x.shape[4])
        out[:, 6] = float(int(rescale) + 2 * int(resize) + 4 * int(return_features))
        out[:, 7] = 1.0 if x.dtype == torch.uint8 else 0.0
        return out


def test_torchscript_detector_is_loaded_and_called_like_stylegan_v(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.save(torch.jit.script(_RecordingDetector()), str(path))
    extractor = build_feature_extractor("stylegan_v", path)
    assert extractor.name == f"stylegan_v_ts:{file_sha256(path)[:12]}"
    videos = torch.zeros(3, 5, 6, 7, 3, dtype=torch.uint8)
    videos[..., 0], videos[..., 1], videos[..., 2] = 10, 20, 30
    feats = extractor(videos)
    assert feats.shape == (3, 400)
    np.testing.assert_array_equal(feats[:, :8], np.tile([10, 20, 30, 5, 6, 7, 7, 1], (3, 1)))
    with pytest.raises(ValueError, match="TorchScript"):
        load_torchscript_detector(tmp_path / "missing.pt")


def test_loaders_refuse_the_other_format(i3d_weights, tmp_path):
    _, state_path = i3d_weights
    ts_path = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.script(_RecordingDetector()), str(ts_path))
    with pytest.raises(ValueError):
        load_i3d(ts_path)
    with pytest.raises(ValueError, match="TorchScript"):
        load_torchscript_detector(state_path)


# ============================================================================
# FVD and the real-stats cache
# ============================================================================


class _ColourStats(FeatureExtractor):
    """A tiny stand-in network: per-channel mean and std of each clip, and the mean of the first frame."""

    def __init__(self, frames_per_batch: int = 256):
        super().__init__("colour_stats:test", "cpu", frames_per_batch)
        self.calls = 0

    def embed(self, videos: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        x = videos.float() / 255
        return torch.cat([x.mean(dim=(1, 2, 3)), x.std(dim=(1, 2, 3)), x[:, 0].mean(dim=(1, 2))], dim=1)


def _videos(seed: int, n: int = 24, t: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 200, (n, t, 8, 8, 3), generator=g, dtype=torch.uint8)


def test_compute_fvd_zero_for_identical_and_positive_for_shifted():
    real = _videos(0)
    extractor = _ColourStats(frames_per_batch=20)  # 5 clips per batch: several batches
    same = compute_fvd(real, real.clone(), extractor)
    assert same.fvd == pytest.approx(0.0, abs=1e-9)
    assert (same.num_real, same.num_fake, same.feature_network) == (24, 24, "colour_stats:test")
    shifted = compute_fvd(real, real + 40, extractor)
    assert shifted.fvd > 0.1
    other = compute_fvd(real, _videos(1), extractor)
    assert 0 < other.fvd < shifted.fvd
    np.testing.assert_array_equal(_ColourStats(frames_per_batch=10_000)(real), extractor(real))  # batching-invariant


def test_compute_fvd_with_precomputed_real_stats_and_bad_input():
    real, fake = _videos(0), _videos(1)
    extractor = _ColourStats()
    full = compute_fvd(real, fake, extractor)
    cached = compute_fvd(None, fake, extractor, real_stats=extractor.stats(real))
    assert cached.fvd == pytest.approx(full.fvd, rel=1e-12) and cached.num_real == 24
    with pytest.raises(ValueError, match="real_videos or real_stats"):
        compute_fvd(None, fake, extractor)
    with pytest.raises(ValueError, match="uint8"):
        compute_fvd(real.float(), fake, extractor)
    with pytest.raises(ValueError, match="at least 2"):
        compute_fvd(real, fake[:1], extractor)
    with pytest.raises(ValueError, match="D="):
        compute_fvd(None, fake, extractor, real_stats=GaussianStats(np.zeros(4), np.eye(4), 10))


def test_real_stats_cache_hits_avoid_recomputation(tmp_path, caplog):
    cache = RealStatsCache(tmp_path / "fvd_cache")
    real, extractor = _videos(0), _ColourStats()
    key = StatsKey("ffs-eval", 64, 16, extractor.name, extra="sdvq-f8")
    calls = []

    def compute():
        calls.append(1)
        return extractor.stats(real)

    first = cache.get_or_compute(key, compute)
    second = cache.get_or_compute(key, compute)
    assert len(calls) == 1 and cache.path_for(key).is_file()
    np.testing.assert_array_equal(first.mu, second.mu)
    np.testing.assert_array_equal(first.sigma, second.sigma)
    assert second.num_samples == 24
    assert "colour_stats" in cache.path_for(key).name and "64px" in cache.path_for(key).name
    # another key (here: another feature network) is another entry
    cache.get_or_compute(StatsKey("ffs-eval", 64, 16, "i3d_pt:abc"), compute)
    assert len(calls) == 2
    # string keys and feature arrays work too
    got = cache.get_or_compute("plain-key", lambda: extractor(real))
    assert got.num_samples == 24 and cache.load("plain-key") is not None
    # a corrupt file is recomputed, with a warning
    cache.path_for(key).write_bytes(b"not an npz")
    with caplog.at_level(logging.WARNING):
        cache.get_or_compute(key, compute)
    assert len(calls) == 3 and "unreadable" in caplog.text
    with pytest.raises(ValueError, match="GaussianStats"):
        cache.get_or_compute("bad", lambda: 3.0)


def test_build_feature_extractor_off_and_refusals(caplog, tmp_path):
    with caplog.at_level(logging.WARNING, logger="maskflow.metrics.fvd"):
        assert build_feature_extractor(None) is None
    assert "FVD disabled" in caplog.text
    # i3d without a path means the bundled weights (tests/test_i3d_weights.py); stylegan_v has none
    with pytest.raises(ValueError, match="no bundled weights"):
        build_feature_extractor("stylegan_v", None)
    with pytest.raises(ValueError, match="unknown FVD feature network"):
        build_feature_extractor("inception", tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not found"):
        build_feature_extractor("i3d", tmp_path / "missing.pt")


# ============================================================================
# PSNR, SSIM, temporal consistency
# ============================================================================


def _ssim_reference(a: np.ndarray, b: np.ndarray) -> float:
    """Independent SSIM of two HxWx3 uint8 images (scipy Gaussian filter, valid region, channel mean)."""
    c1, c2, pad = (0.01 * 255) ** 2, (0.03 * 255) ** 2, 5
    vals = []
    for ch in range(3):
        x, y = a[..., ch].astype(np.float64), b[..., ch].astype(np.float64)

        def filt(z):
            return scipy.ndimage.gaussian_filter(z, sigma=1.5, truncate=3.5)[pad:-pad, pad:-pad]  # 11 taps

        mx, my = filt(x), filt(y)
        vx, vy, cxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        vals.append(s.mean())
    return float(np.mean(vals))


def _texture(seed: int, n: int = 2, t: int = 3, size: int = 32) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    img = scipy.ndimage.gaussian_filter(rng.uniform(0, 255, (n, t, size, size, 3)), sigma=(0, 0, 1.5, 1.5, 0))
    img = (img - img.min()) / (img.max() - img.min()) * 200 + 20
    return torch.from_numpy(img.round().astype(np.uint8))


def test_psnr_identical_and_known_mse():
    real = _texture(0)
    assert torch.isinf(psnr_per_frame(real, real)).all()
    fake = real + 10  # values <= 220: no overflow, MSE = 100 exactly
    expected = 10 * math.log10(255**2 / 100)
    torch.testing.assert_close(psnr_per_frame(real, fake), torch.full((2, 3), expected, dtype=torch.float64))


def test_ssim_identical_reference_and_ordering():
    real = _texture(1)
    torch.testing.assert_close(ssim_per_frame(real, real), torch.ones(2, 3, dtype=torch.float64))
    rng = np.random.default_rng(2)
    noisy = torch.from_numpy(np.clip(real.numpy() + rng.normal(0, 25, real.shape), 0, 255).round().astype(np.uint8))
    blurred = torch.from_numpy(
        scipy.ndimage.uniform_filter(real.numpy().astype(np.float64), size=(1, 1, 3, 3, 1)).round().astype(np.uint8))
    s_noise, s_blur = ssim_per_frame(real, noisy), ssim_per_frame(real, blurred)
    assert (s_blur > s_noise).all() and (s_blur < 1).all()
    for n in range(2):
        for t in range(3):
            assert s_noise[n, t].item() == pytest.approx(_ssim_reference(real[n, t].numpy(), noisy[n, t].numpy()),
                                                         rel=1e-9)
    with pytest.raises(ValueError, match="11x11"):
        ssim_per_frame(real[:, :, :8, :8], real[:, :, :8, :8])


def test_temporal_mad_known_values():
    v = torch.zeros(1, 4, 12, 12, 3, dtype=torch.uint8)
    for t in range(4):
        v[:, t] = 10 * t
    torch.testing.assert_close(temporal_mad(v), torch.full((1, 3), 10.0, dtype=torch.float64))
    static = v[:, :1].expand(-1, 4, -1, -1, -1)
    assert (temporal_mad(static) == 0).all()


def test_video_quality_metrics_continuation_only():
    real = _texture(3, n=2, t=6)
    fake = real.clone()
    fake[:, 2:] = (real[:, 2:].int() + 10).clamp(0, 255).to(torch.uint8)  # context (m = 2) copied exactly
    fake[:, 4] = real[:, 4]  # one generated frame identical: a jump back and forth
    out = video_quality_metrics(real, fake, n_context_frames=2)
    assert len(out["psnr_per_frame"]) == 4 and len(out["ssim_per_frame"]) == 4
    assert math.isinf(out["psnr"])  # frame 4 is identical
    assert out["psnr_per_frame"][0] == pytest.approx(10 * math.log10(255**2 / 100))
    assert 0 < out["ssim"] <= 1
    assert len(out["temporal_mad_fake_per_frame"]) == len(out["temporal_mad_real_per_frame"]) == 4
    assert out["temporal_mad_ratio"] > 1  # the +10 offset jumps in and out
    same = video_quality_metrics(real, real, n_context_frames=2)
    assert same["temporal_mad_ratio"] == pytest.approx(1.0) and same["ssim"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="n_context_frames"):
        video_quality_metrics(real, fake, n_context_frames=6)
    with pytest.raises(ValueError, match="differ in shape"):
        video_quality_metrics(real, fake[:, :5])
    with pytest.raises(ValueError, match="uint8"):
        video_quality_metrics(real.float(), fake.float())


@pytest.mark.parametrize(
    ("kernel", "stride", "size"),
    [((1, 3, 3), (1, 2, 2), (5, 15, 16)), ((3, 3, 3), (2, 2, 2), (7, 9, 8)), ((2, 2, 2), (2, 2, 2), (5, 7, 7)),
     ((3, 3, 3), (1, 1, 1), (4, 6, 5))],
)
def test_separable_same_max_pool_equals_max_pool3d(kernel, stride, size):
    """I3D's pools (every kernel/stride of the network, odd and even sizes) give exactly F.max_pool3d's values."""
    from maskflow.metrics.i3d import MaxPool3dSame, _same_padding

    x = torch.randn(2, 3, *size)
    ref = torch.nn.functional.max_pool3d(torch.nn.functional.pad(x, _same_padding(x.shape[2:], kernel, stride)), kernel, stride)
    out = MaxPool3dSame(kernel, stride)(x)
    assert out.shape == ref.shape
    assert torch.equal(out, ref)
