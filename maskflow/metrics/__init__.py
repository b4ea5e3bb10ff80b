"""Evaluation metrics: Fréchet distance, FVD with an I3D feature network, and network-free video metrics.

See ``docs/metrics.md`` for what FVD is computed with, where to put the I3D weights, and the
definitions of PSNR, SSIM and the temporal-consistency ratio.
"""

from .frechet import GaussianStats, fid_from_features, frechet_distance, gaussian_stats
from .fvd import (
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
    preprocess_videos,
)
from .i3d import NUM_STATE_DICT_KEYS, InceptionI3d, load_i3d, load_torchscript_detector
from .video import psnr_per_frame, ssim_per_frame, temporal_mad, video_quality_metrics

__all__ = [
    "FEATURE_NETWORKS",
    "FVDResult",
    "FeatureExtractor",
    "GaussianStats",
    "I3DFeatureExtractor",
    "InceptionI3d",
    "NUM_STATE_DICT_KEYS",
    "RealStatsCache",
    "StatsKey",
    "TorchScriptFeatureExtractor",
    "build_feature_extractor",
    "compute_fvd",
    "fid_from_features",
    "file_sha256",
    "frechet_distance",
    "gaussian_stats",
    "load_i3d",
    "load_torchscript_detector",
    "preprocess_videos",
    "psnr_per_frame",
    "ssim_per_frame",
    "temporal_mad",
    "video_quality_metrics",
]
