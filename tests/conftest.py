"""Shared fixtures: the real sample videos, one local Ray instance, one MLflow store per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_VIDEOS = Path(os.environ.get("MASKFLOW_SAMPLE_VIDEOS", REPO.parent / "shared" / "data" / "videos"))


@pytest.fixture(scope="session")
def sample_videos_dir() -> Path:
    """``../shared/data/videos``: real third-party clips (never copied into the repo)."""
    if not any(SAMPLE_VIDEOS.glob("*.mp4")):
        pytest.fail(f"sample videos not found at {SAMPLE_VIDEOS}; set MASKFLOW_SAMPLE_VIDEOS")
    return SAMPLE_VIDEOS


@pytest.fixture(scope="session")
def ray_session():
    """One small local Ray instance shared by every test that needs Ray (cold start ~10-15 s)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    """A sqlite MLflow store shared by the session (creating one runs migrations: seconds)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    return uri
