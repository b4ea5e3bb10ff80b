"""Checkpoint loading from local paths, URIs and Ray Train run directories (experiments/checkpoint.py)."""

from __future__ import annotations

import dataclasses

import pyarrow.fs as pafs
import pytest
import torch

from experiments.checkpoint import CHECKPOINT_FILE, checkpoint_file, load_backbone, load_checkpoint, save_checkpoint
from maskflow.models import build_backbone
from maskflow.training import EMA


def _state(step: int, seed: int) -> dict:
    torch.manual_seed(seed)
    model = build_backbone("tiny", codebook_size=16, latent_size=4)
    ema = EMA(model, decay=0.5)
    return {
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "backbone_config": dataclasses.asdict(model.config),
        "step": step,
    }


@pytest.fixture
def run_dir(tmp_path):
    """A Ray Train run directory: two complete checkpoints (named by time, as Ray Train does) and a newer
    incomplete one (its checkpoint.pt not written yet), plus Ray's own bookkeeping file."""
    run = tmp_path / "ray_results" / "my-run"
    save_checkpoint(run / "checkpoint_2026-11-22_10-00-00.000001", _state(step=10, seed=0))
    save_checkpoint(run / "checkpoint_2026-11-22_11-00-00.000001", _state(step=20, seed=1))
    (run / "checkpoint_2026-11-22_12-00-00.000001").mkdir()
    (run / "checkpoint_manager_snapshot.json").write_text("{}")
    return run


def test_file_directory_and_file_uri_name_the_same_checkpoint(run_dir):
    ckpt = run_dir / "checkpoint_2026-11-22_10-00-00.000001"
    for name in (ckpt, ckpt / CHECKPOINT_FILE, f"file://{ckpt}", str(ckpt) + "/"):
        assert load_checkpoint(name)["step"] == 10, name


def test_a_run_directory_means_its_latest_complete_checkpoint(run_dir):
    assert checkpoint_file(run_dir).endswith(f"checkpoint_2026-11-22_11-00-00.000001/{CHECKPOINT_FILE}")
    assert load_checkpoint(run_dir)["step"] == 20
    model, state = load_backbone(f"file://{run_dir}")
    assert state["step"] == 20 and not model.training
    shadow = state["ema"]["shadow"]
    assert all(torch.equal(v, shadow[k]) for k, v in model.state_dict().items())


def test_object_store_paths_are_read_as_bytes(run_dir, monkeypatch):
    """A non-local pyarrow filesystem (as s3:// gives) goes through the byte-reading branch."""
    import pipeline.fs as fs

    real, real_read = fs.resolve, fs.read_bytes

    def fake_resolve(p):
        s = str(p).removeprefix("fake://")
        return fs.Location(pafs.SubTreeFileSystem("/", pafs.LocalFileSystem()), real(s).path, "fake")

    monkeypatch.setattr(fs, "resolve", fake_resolve)
    assert not fs.resolve(f"fake://{run_dir}").is_local
    loaded_from = []
    monkeypatch.setattr(fs, "read_bytes", lambda loc: loaded_from.append(loc.uri()) or real_read(loc))

    model, state = load_backbone(f"fake://{run_dir}", use_ema=False)
    assert state["step"] == 20
    assert loaded_from == [f"fake://{run_dir}/checkpoint_2026-11-22_11-00-00.000001/{CHECKPOINT_FILE}"]
    assert all(torch.equal(v, state["model"][k]) for k, v in model.state_dict().items())


def test_missing_checkpoints_are_named(tmp_path, run_dir):
    with pytest.raises(FileNotFoundError, match="nothing exists there"):
        load_checkpoint(tmp_path / "nope")
    empty = tmp_path / "empty-run"
    (empty / "checkpoint_2026-01-01_00-00-00.000000").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"1 checkpoint_\* directories, none complete"):
        load_checkpoint(empty)
    with pytest.raises(ValueError, match="cannot open"):
        load_checkpoint("nosuchscheme://bucket/run")


def test_a_file_that_is_not_a_checkpoint_is_named(run_dir, tmp_path):
    with pytest.raises(ValueError, match="checkpoint_manager_snapshot.json is not a checkpoint of this project"):
        load_checkpoint(run_dir / "checkpoint_manager_snapshot.json")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="no 'backbone_config'"):
        load_checkpoint(other)
