"""Shared fixtures: the real sample videos, one local Ray instance, one MLflow store per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_VIDEOS = Path(os.environ.get("MASKFLOW_SAMPLE_VIDEOS", REPO.parent / "shared" / "data" / "videos"))


@pytest.fixture(scope="session")
def sample_videos_dir() -> Path:
    """``../shared/data/videos``: real third-party clips (never copied into the repo).

    Tests that need them are skipped, with the reason, when the directory holds no ``*.mp4``; set
    ``MASKFLOW_SAMPLE_VIDEOS`` to a directory of clips to run them.
    """
    if not any(SAMPLE_VIDEOS.glob("*.mp4")):
        pytest.skip(f"needs the sample videos: no *.mp4 in {SAMPLE_VIDEOS} "
                    "(set MASKFLOW_SAMPLE_VIDEOS to a directory of mp4 clips)")
    return SAMPLE_VIDEOS


@pytest.fixture(scope="session")
def ray_session():
    """One small local Ray instance shared by every test that needs Ray (cold start ~10-15 s)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
            # a 2-core CI box running Ray Train, Ray Data and a second Ray head at once can stall the raylet
            # for seconds: be patient before declaring the node dead (the default gives up after ~15 s)
            _system_config={"health_check_failure_threshold": 30, "health_check_timeout_ms": 30000},
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    """A sqlite MLflow store shared by the session (creating one runs migrations: seconds)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    return uri


@pytest.fixture(scope="session")
def token_shards(tmp_path_factory, ray_session, mlflow_uri) -> Path:
    """A tiny tokenized dataset made by ``experiments.tokenize``: 6 sprite videos of 24 frames at 32 px,
    patch-k-means K=32 (4x4 tokens), about a third of the videos held out as the eval split (``split=video``
    explicitly: with 6 videos ``split=auto`` would pick the temporal split)."""
    from experiments import tokenize
    from experiments.config import load_config
    from experiments.synthetic import write_sprite_videos

    root = tmp_path_factory.mktemp("tokens")
    write_sprite_videos(root / "videos", num_videos=6, num_frames=24, size=32)
    cfg = load_config(
        "tokenize",
        [f"inputs={root / 'videos'}", f"output_dir={root / 'tokens'}", "resolution=32", "tokenizer.codebook_size=32",
         "min_frames=8", "split=video", "eval_fraction=0.34", "tokenizer.fit_frames=64", "psnr_frames=8"],
    )
    manifest = tokenize.main(cfg)
    assert manifest["counts"]["videos_ok"] == 6 and manifest["splits"]["eval"]["videos"] >= 1
    return root / "tokens"


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny ops: on a shared 2-core machine far faster than two contending
    ones. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
