"""The tokenize job: discover → decode (Ray tasks) → tokenize (Ray actor pool) → Parquet → manifest.

:func:`run_tokenize_job` is the only entry point (``experiments/tokenize.py`` and the demo call it).
It only wires the plain stages of this package together with Ray Data::

    ray.data.from_items(videos)                                   # one row per video still to do
      .map_batches(decode_batch, batch_size=1, num_cpus=…)        # DecodeStage: segment rows + a record
      .map_batches(TokenizeStage, compute=ActorPoolStrategy(size=N), num_gpus=…, batch_size=4)
      .write_datasink(TokenShardDatasink(output_dir, …))         # ShardWriter: part-*.parquet + _videos/*.jsonl

With no GPU (``tokenize_in_decode_tasks=auto``, the default, and ``num_gpus_per_actor=0``) the two
map steps are one instead: ``map_batches(decode_tokenize_batch, num_cpus=…)``, decode tasks that
tokenize their own segments with a :class:`~pipeline.tokenize.DecodeTokenizeStage` cached in each
worker process (see :func:`tokenize_in_decode_tasks`).

Before that it scans ``output_dir`` (:mod:`pipeline.manifest`): videos already done are skipped,
traces of interrupted videos are removed, and a tokenizer, decode setting or split mode that differs
from the one the existing shards were made with is refused before any work. After it, it rescans,
measures the reconstruction PSNR on a seeded sample of written segments (re-decoding their source
frames) and writes ``manifest.json``. Bad input never stops the job: every video ends as segments or
as a failure record with its reason.

Held-out split: discovery resolves ``split=auto|video|temporal`` (:func:`pipeline.discover.discover`).
``video`` holds whole videos out; ``temporal`` has the decode stage cut every video into a ``train``
head and an ``eval`` continuation (:func:`pipeline.decode.temporal_cut`), the same in both layouts.
``manifest["split"]`` records the mode and why.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import uuid
import warnings
from typing import Any, Callable

import numpy as np

from pipeline.decode import TEMPORAL, DecodeConfig, decode_batch, decode_video, get_stage, temporal_cut
from pipeline.discover import SPLIT_MODES, VideoItem, discover
from pipeline.fs import Location, resolve, upload_dir
from pipeline.manifest import (
    TOKENIZER_DIR,
    TokenizerMismatchError,
    existing_tokenizer_ids,
    build_manifest,
    check_job_settings,
    load_manifest,
    repair_output,
    scan_output,
    write_job_settings,
    write_manifest,
)
from pipeline.tokenize import TokenizeStage, decode_tokenize_batch, load_tokenizer_any, localize_dir
from pipeline.writer import TokenShardDatasink, shard_schema

__all__ = ["DEFAULTS", "normalize_config", "run_tokenize_job", "prepare_tokenizer", "measure_psnr", "tokenize_in_decode_tasks"]

log = logging.getLogger("pipeline.job")

TOKENIZER_KINDS = ("patch_kmeans", "diffusers_vq")
DEFAULT_CODEBOOK = 1024
_WRITE_CONCURRENCY = 4

DEFAULTS: dict[str, Any] = {
    "inputs": None,
    "output_dir": "outputs/tokens",
    "resolution": 256,
    "fps": None,
    "frame_stride": 1,
    "max_frames_per_segment": 256,
    "min_frames": 8,
    "eval_fraction": 0.1,
    "split": "auto",
    "temporal_eval_fraction": 0.25,
    "min_videos_for_video_split": 32,
    "tokenizer": {
        "kind": "patch_kmeans",
        "path": None,
        "codebook_size": None,
        "patch_size": 8,
        "fit_frames": 1024,
        "fit_videos": 64,
        "precision": "auto",
    },
    "batch_size": 64,
    "num_tokenizer_actors": 1,
    "num_gpus_per_actor": 0,
    "num_cpus_per_actor": None,
    "decoder": "decord",
    "decode_timeout_s": 120.0,
    "decode_num_cpus": 1.0,
    "tokenize_in_decode_tasks": "auto",
    "rows_per_shard": 256,
    "row_group_mb": 32.0,
    "psnr_frames": 64,
    "retry_failed": False,
    "seed": 0,
}
"""Every setting of the job with its default (``experiments/configs/tokenize.yaml`` documents them)."""


# ================================================================================ configuration
def _merge(base: dict[str, Any], over: dict[str, Any], path: str = "") -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        name = f"{path}{key}"
        if key not in base:
            raise ValueError(f"unknown tokenize setting {name!r}; known: {', '.join(sorted(path + k for k in base))}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ValueError(f"{name} must be a mapping, got {value!r}")
            out[key] = _merge(base[key], value, f"{name}.")
        else:
            out[key] = value
    return out


def normalize_config(config: Any) -> dict[str, Any]:
    """Defaults + ``config`` (dict or OmegaConf ``DictConfig``), validated.

    Raises:
        ValueError: for an unknown key or a setting outside its allowed range (named in the message).
    """
    if config is None:
        config = {}
    if not isinstance(config, dict):
        from omegaconf import OmegaConf

        config = OmegaConf.to_container(config, resolve=True)
    cfg = _merge(DEFAULTS, dict(config))
    t = cfg["tokenizer"]
    if not cfg["inputs"]:
        raise ValueError("inputs= is required: a directory, glob, CSV/JSONL file list or video (local or URI)")
    if not cfg["output_dir"]:
        raise ValueError("output_dir= is required")
    if t["kind"] not in TOKENIZER_KINDS:
        raise ValueError(f"tokenizer.kind must be one of {', '.join(TOKENIZER_KINDS)}, got {t['kind']!r}")
    if t["kind"] == "diffusers_vq" and not t["path"]:
        raise ValueError("tokenizer.kind=diffusers_vq needs tokenizer.path (a VQModel directory, hub id or saved tokenizer)")
    if t["codebook_size"] is not None and int(t["codebook_size"]) < 2:
        raise ValueError(f"tokenizer.codebook_size must be >= 2 or null, got {t['codebook_size']}")
    if int(t["patch_size"]) < 1 or int(cfg["resolution"]) % int(t["patch_size"]):
        raise ValueError(
            f"resolution ({cfg['resolution']}) must be a positive multiple of tokenizer.patch_size ({t['patch_size']})"
        )
    for key, low in (("fit_frames", 1), ("fit_videos", 1)):
        if int(t[key]) < low:
            raise ValueError(f"tokenizer.{key} must be >= {low}, got {t[key]}")
    if t["precision"] not in ("auto", "bf16", "fp32"):
        raise ValueError(f"tokenizer.precision must be auto, bf16 or fp32, got {t['precision']!r}")
    for key, low in (("batch_size", 1), ("num_tokenizer_actors", 1), ("rows_per_shard", 1), ("psnr_frames", 0)):
        if int(cfg[key]) < low:
            raise ValueError(f"{key} must be >= {low}, got {cfg[key]}")
    for key in ("num_gpus_per_actor", "decode_num_cpus"):
        if float(cfg[key]) < 0:
            raise ValueError(f"{key} must be >= 0, got {cfg[key]}")
    fused = cfg["tokenize_in_decode_tasks"]
    if isinstance(fused, str) and fused.lower() in ("auto", "true", "false"):
        fused = cfg["tokenize_in_decode_tasks"] = {"auto": "auto", "true": True, "false": False}[fused.lower()]
    if fused not in ("auto", True, False):
        raise ValueError(f"tokenize_in_decode_tasks must be auto, true or false, got {fused!r}")
    if fused is True and float(cfg["num_gpus_per_actor"]) > 0:
        raise ValueError(
            "tokenize_in_decode_tasks=true is for CPU-only runs; with num_gpus_per_actor > 0 the tokenizer "
            "runs in the GPU actor pool (set tokenize_in_decode_tasks=false)"
        )
    if cfg["num_cpus_per_actor"] is not None and float(cfg["num_cpus_per_actor"]) < 0:
        raise ValueError(f"num_cpus_per_actor must be >= 0 or null, got {cfg['num_cpus_per_actor']}")
    if not float(cfg["row_group_mb"]) > 0:
        raise ValueError(f"row_group_mb must be > 0, got {cfg['row_group_mb']}")
    if not 0.0 <= float(cfg["eval_fraction"]) <= 1.0:
        raise ValueError(f"eval_fraction must lie in [0, 1], got {cfg['eval_fraction']}")
    if not isinstance(cfg["split"], str) or cfg["split"].strip().lower() not in SPLIT_MODES:
        raise ValueError(
            f"split must be one of {', '.join(SPLIT_MODES)} (auto = video with at least min_videos_for_video_split "
            f"videos, else temporal), got {cfg['split']!r}"
        )
    cfg["split"] = cfg["split"].strip().lower()
    try:
        tef = None if isinstance(cfg["temporal_eval_fraction"], bool) else float(cfg["temporal_eval_fraction"])
    except (TypeError, ValueError):
        tef = None
    if tef is None or not 0.0 < tef < 1.0:
        raise ValueError(
            "temporal_eval_fraction must lie in (0, 1) (share of each video held out as eval), "
            f"got {cfg['temporal_eval_fraction']!r}"
        )
    mv = cfg["min_videos_for_video_split"]
    if isinstance(mv, bool) or not isinstance(mv, int) or mv < 2:
        raise ValueError(f"min_videos_for_video_split must be an integer >= 2 (a video split needs two videos), got {mv!r}")
    decode_config(cfg).validate()
    return cfg


def decode_config(cfg: dict[str, Any], **changes: Any) -> DecodeConfig:
    """The :class:`~pipeline.decode.DecodeConfig` of a normalised job config."""
    d = DecodeConfig(
        resolution=int(cfg["resolution"]),
        fps=None if cfg["fps"] is None else float(cfg["fps"]),
        frame_stride=int(cfg["frame_stride"] or 1),
        max_frames_per_segment=int(cfg["max_frames_per_segment"]),
        min_frames=int(cfg["min_frames"]),
        decoder=str(cfg["decoder"]),
        decode_timeout_s=float(cfg["decode_timeout_s"]),
        temporal_eval_fraction=float(cfg["temporal_eval_fraction"]),
    )
    return dataclasses.replace(d, **changes) if changes else d


# ================================================================================ tokenizer
def _order(items: list[VideoItem], seed: int) -> list[VideoItem]:
    return sorted(items, key=lambda it: hashlib.sha1(f"{seed}:{it.video_id}".encode()).hexdigest())


def _fit_sample(source: str, dcfg: dict[str, Any], per_video: int, split: str = "train") -> np.ndarray:
    """Up to ``per_video`` training frames spread over one video (memory: at most ``2 * per_video`` frames).

    ``split="temporal"``: the video is cut as in the job and only its ``train`` rows are sampled."""
    cfg = DecodeConfig.from_dict(dcfg)
    stage = get_stage(cfg)
    kept: list[np.ndarray] = []
    stride, index = 1, 0
    ok = False
    for row in stage.process({"video_id": "", "source": source, "split": TEMPORAL if split == TEMPORAL else ""}):
        if row["kind"] != "segment":
            ok = row["record"]["status"] == "ok"
            continue
        if split == TEMPORAL and row["split"] != "train":
            continue
        for frame in row["frames"]:
            if index % stride == 0:
                kept.append(frame)
                if len(kept) > 2 * per_video:  # decimate: keep every other frame, double the stride
                    kept = kept[::2]
                    stride *= 2
            index += 1
    if not ok or not kept:
        r = cfg.resolution
        return np.empty((0, r, r, 3), np.uint8)
    pick = np.unique(np.linspace(0, len(kept) - 1, min(per_video, len(kept))).round().astype(int))
    return np.stack([kept[i] for i in pick])


def _temporal_fit_frames(cfg: dict[str, Any], head: int) -> int:
    """Smallest ``L`` whose temporal cut (:func:`~pipeline.decode.temporal_cut`) keeps ``>= head`` train frames."""
    n = max(int(head), 1)
    args = (float(cfg["temporal_eval_fraction"]), int(cfg["min_frames"]), int(cfg["max_frames_per_segment"]))
    while (temporal_cut(n, *args) or 0) < head:
        n += 1
    return n


def _fit_patch_kmeans(cfg: dict[str, Any], items: list[VideoItem]):
    import ray

    from maskflow.tokenizers import PatchKMeansTokenizer

    t = cfg["tokenizer"]
    pool = [it for it in items if it.split in ("train", TEMPORAL)] or list(items)
    chosen = _order(pool, int(cfg["seed"]))[: int(t["fit_videos"])]
    per_video = max(1, math.ceil(int(t["fit_frames"]) / len(chosen)))
    # frames come from the first max(64, 4 x per_video) kept frames of each video: decoding whole videos
    # to fit a codebook costs more than it brings
    head = max(64, 4 * per_video)
    dcfg = dataclasses.asdict(decode_config(cfg, max_frames=head, min_frames=1))
    # a temporally split video: only its train part, cut exactly as the job cuts it (same min_frames and
    # segment length); decoding stops after L frames with cut(L) >= head, and since the cut never moves
    # back as a video gets longer, the first cut(L) frames are train however long the video really is
    dcfg_t = dataclasses.asdict(decode_config(cfg, max_frames=_temporal_fit_frames(cfg, head)))
    log.info("fitting patch_kmeans K=%s on up to %d frames of %d train videos", t["codebook_size"] or DEFAULT_CODEBOOK,
             per_video * len(chosen), len(chosen))  # fmt: skip
    task = ray.remote(num_cpus=float(cfg["decode_num_cpus"]))(_fit_sample)
    refs = [
        task.remote(it.source, dcfg_t, per_video, TEMPORAL) if it.split == TEMPORAL
        else task.remote(it.source, dcfg, per_video)
        for it in chosen
    ]  # fmt: skip
    batches = [np.array(b) for b in ray.get(refs) if len(b)]  # writable copies (ray.get gives read-only views)
    if not batches:
        raise ValueError("no train video could be decoded to fit the patch_kmeans tokenizer (see the failures above)")
    return PatchKMeansTokenizer.fit(
        batches,
        codebook_size=int(t["codebook_size"] or DEFAULT_CODEBOOK),
        patch_size=int(t["patch_size"]),
        resolution=int(cfg["resolution"]),
        seed=int(cfg["seed"]),
    )


def _load_diffusers(cfg: dict[str, Any]):
    """A ``diffusers_vq`` tokenizer on the driver's CPU (only for its id, saving and the PSNR sample):
    a saved tokenizer directory, a diffusers ``VQModel`` directory (local or URI) or a hub id."""
    from maskflow.tokenizers import DiffusersVQTokenizer

    path = str(cfg["tokenizer"]["path"])
    if "://" in path or os.path.exists(os.path.expanduser(path)):
        local = localize_dir(path)
        if os.path.isfile(os.path.join(local, "tokenizer.json")):
            return load_tokenizer_any(local, device="cpu")
        return DiffusersVQTokenizer.from_pretrained(
            local, resolution=int(cfg["resolution"]), device="cpu", batch_size=int(cfg["batch_size"])
        )
    return DiffusersVQTokenizer.from_pretrained(  # a hub id (needs network access)
        path, resolution=int(cfg["resolution"]), device="cpu", batch_size=int(cfg["batch_size"])
    )


def prepare_tokenizer(cfg: dict[str, Any], items: list[VideoItem], out: Location, state=None):
    """The job's tokenizer: loaded from ``tokenizer.path``, reused from ``output_dir/tokenizer``, or fitted.

    ``patch_kmeans`` without a path reuses a tokenizer saved in ``output_dir/tokenizer`` by an earlier
    run when its ``codebook_size``/``patch_size``/``resolution`` match, else fits a new one on frames
    sampled from up to ``tokenizer.fit_videos`` train videos (decoded with :mod:`pipeline.decode`).

    Returns:
        ``(tokenizer, how)`` with ``how`` in ``"loaded"``, ``"reused"``, ``"fitted"``.

    Raises:
        ValueError: a tokenizer whose resolution or codebook size differs from the config.
        TokenizerMismatchError: fitting would be needed although ``output_dir`` already holds shards of
            another tokenizer (refused before fitting).
    """
    t = cfg["tokenizer"]
    saved = out.join(TOKENIZER_DIR)
    tok, how = None, "loaded"
    if t["kind"] == "patch_kmeans" and not t["path"]:
        if saved.join("tokenizer.json").exists():
            try:
                old = load_tokenizer_any(saved.uri())
            except Exception as e:  # a torn save: fit again
                log.warning("cannot reuse %s (%s); fitting a new tokenizer", saved.uri(), e)
                old = None
            want_k = int(t["codebook_size"] or DEFAULT_CODEBOOK)
            if (
                old is not None
                and old.kind == "patch_kmeans"
                and old.codebook_size == want_k
                and getattr(old, "patch_size", None) == int(t["patch_size"])
                and old.resolution == int(cfg["resolution"])
            ):
                tok, how = old, "reused"
        if tok is None:
            existing = existing_tokenizer_ids(out, state) if state is not None else set()
            if existing:
                raise TokenizerMismatchError(
                    f"{out.uri()} already holds shards made with tokenizer {', '.join(sorted(existing))}; this run "
                    f"would fit a new patch_kmeans tokenizer (codebook_size={t['codebook_size'] or DEFAULT_CODEBOOK}, "
                    f"patch_size={t['patch_size']}, resolution={cfg['resolution']}) whose codes would differ. Shards of "
                    "different tokenizers cannot be mixed: write to a new output_dir, or delete the old shards "
                    "(part-*.parquet, _videos/, _job.json, manifest.json) to start over"
                )
            tok, how = _fit_patch_kmeans(cfg, items), "fitted"
    elif t["kind"] == "patch_kmeans":
        tok = load_tokenizer_any(str(t["path"]))
    else:
        tok = _load_diffusers(cfg)
    if tok.kind != t["kind"]:
        raise ValueError(f"tokenizer.path={t['path']} holds a {tok.kind!r} tokenizer, but tokenizer.kind={t['kind']!r}")
    if tok.resolution != int(cfg["resolution"]):
        raise ValueError(
            f"resolution={cfg['resolution']} but the tokenizer {tok.tokenizer_id} expects {tok.resolution}x{tok.resolution} frames"
        )
    if t["codebook_size"] is not None and int(t["codebook_size"]) != tok.codebook_size:
        raise ValueError(
            f"tokenizer.codebook_size={t['codebook_size']} but the tokenizer {tok.tokenizer_id} has {tok.codebook_size} codes"
        )
    return tok, how


def _saved_id(saved: Location) -> str | None:
    """``tokenizer_id`` recorded in a saved tokenizer's ``tokenizer.json`` (without loading weights)."""
    import json

    from pipeline.fs import read_bytes

    meta = saved.join("tokenizer.json")
    return json.loads(read_bytes(meta)).get("tokenizer_id") if meta.exists() else None


def _save_tokenizer(tok, out: Location) -> Location:
    """Save ``tok`` into ``output_dir/tokenizer`` unless the same tokenizer is already there."""
    saved = out.join(TOKENIZER_DIR)
    if saved.join("tokenizer.json").exists():
        try:
            if _saved_id(saved) == tok.tokenizer_id:
                return saved
        except Exception:
            pass
    if saved.is_local:
        tmp = f"{saved.path}.tmp-{uuid.uuid4().hex[:8]}"
        tok.save(tmp)
        if os.path.isdir(saved.path):
            shutil.rmtree(saved.path)
        os.replace(tmp, saved.path)
    else:
        with tempfile.TemporaryDirectory(prefix="maskflow-tokenizer-") as d:
            tok.save(d)
            upload_dir(d, saved)
    return saved


def _tokenizer_info(tok, directory: Location, how: str, cfg: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": tok.kind,
        "tokenizer_id": tok.tokenizer_id,
        "config_hash": tok.config_hash,
        "config": tok.config,
        "codebook_size": int(tok.codebook_size),
        "latent_size": int(tok.latent_size),
        "resolution": int(tok.resolution),
        "directory": directory.uri(),
        "relative_directory": TOKENIZER_DIR,
        "source": cfg["tokenizer"]["path"],
        "how": how,
    }


# ================================================================================ checks
def _psnr_picks(out: Location, state, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Seeded sample of up to 8 written segments and how many frames of each to check."""
    import pyarrow.compute as pc

    from pipeline.readers import _dataset

    n_frames = int(cfg["psnr_frames"])
    ok = sorted(v for v, s in state.done().items() if s == "ok")
    if n_frames <= 0 or not ok:
        return []
    candidates = sorted((v, seg, n) for v in ok for (seg, n, _) in state.rows[v])
    rng = np.random.default_rng(int(cfg["seed"]))
    size = min(8, len(candidates), n_frames)
    chosen = [candidates[i] for i in sorted(rng.choice(len(candidates), size=size, replace=False))]
    # psnr_frames shared out exactly (a segment shorter than its share gives what it has)
    shares = [n_frames // len(chosen) + (i < n_frames % len(chosen)) for i in range(len(chosen))]
    meta = _dataset(out.uri()).to_table(
        columns=["video_id", "segment", "frame_start"], filter=pc.field("video_id").isin(sorted({c[0] for c in chosen}))
    ).to_pylist()
    starts = {(r["video_id"], r["segment"]): r["frame_start"] for r in meta}
    return [
        {
            "video_id": v,
            "segment": seg,
            "frames": min(share, n),
            "frame_start": int(starts[(v, seg)]),
            "source": state.record(v)["source"],
            "decoder": state.record(v).get("decoder") or cfg["decoder"],
        }
        for (v, seg, n), share in zip(chosen, shares)
    ]


def _psnr_of(shard_dir: str, tok, tok_dir: str | None, picks: list[dict[str, Any]], cfg: dict[str, Any]) -> dict[str, Any]:
    """Round trip of ``picks``: source frames decoded again vs ``tokenizer.decode`` of the stored codes."""
    from pipeline.readers import decode_segment

    if tok is None:  # on a GPU worker: load it the way the tokenizer actors do
        tok = TokenizeStage(tok_dir, batch_size=int(cfg["batch_size"]), precision=cfg["tokenizer"]["precision"]).tokenizer
    sse, count, rows, skipped = 0.0, 0, [], []
    for p in picks:
        k, start = p["frames"], p["frame_start"]
        recon = decode_segment(shard_dir, p["video_id"], p["segment"], tokenizer=tok)[:k].numpy()
        dcfg = decode_config(cfg, decoder=p["decoder"], fallback=False, max_frames=start + k, min_frames=1)
        src = decode_video(p["source"], dcfg, stage=get_stage(dcfg)).frames[start : start + k]
        if len(src) != k:
            skipped.append({"video_id": p["video_id"], "segment": p["segment"], "why": f"source re-decoded to {len(src)} of {k} frames"})
            continue
        err = float(np.square(src.astype(np.float64) - recon.astype(np.float64)).sum())
        sse, count = sse + err, count + src.size
        rows.append({"video_id": p["video_id"], "segment": p["segment"], "frames": k, "db": _db(err / src.size)})
    return {
        "db": _db(sse / count) if count else None,
        "frames": sum(r["frames"] for r in rows),
        "segments": rows,
        "skipped": skipped,
    }


def measure_psnr(out: Location, state, tok, cfg: dict[str, Any], tok_dir: Location | None = None) -> dict[str, Any] | None:
    """Reconstruction PSNR on a seeded sample of written segments: frames re-decoded from the source
    (same decoder and settings as when they were written) vs ``tokenizer.decode`` of the stored codes.
    This checks the whole round trip (including that ``frame_start`` points at the right frames).

    Up to 8 segments and ``psnr_frames`` frames in total (shared out evenly; fewer where segments are
    shorter). With ``num_gpus_per_actor > 0`` it runs as a Ray task on a GPU (decoding 64 frames with
    SD-VQGAN on a CPU driver takes minutes), else on the driver.
    A segment whose source no longer decodes to the same frames is skipped (listed under ``"skipped"``).

    Returns:
        ``{"db", "frames", "segments": [{video_id, segment, frames, db}], "skipped": [...]}``, or ``None``
        when ``psnr_frames == 0`` or nothing is written.
    """
    picks = _psnr_picks(out, state, cfg)
    if not picks:
        return None
    if float(cfg["num_gpus_per_actor"]) > 0 and tok_dir is not None:
        import ray

        task = ray.remote(num_gpus=float(cfg["num_gpus_per_actor"]), num_cpus=1)(_psnr_of)
        return ray.get(task.remote(out.uri(), None, tok_dir.uri(), picks, cfg))
    return _psnr_of(out.uri(), tok, None, picks, cfg)


def _db(mse: float) -> float:
    return float("inf") if mse == 0 else round(10.0 * math.log10(255.0**2 / mse), 3)


# ================================================================================ the job
def _ensure_ray() -> None:
    import ray

    if not ray.is_initialized():
        # ray.init() connects to RAY_ADDRESS when it is set (ray job submit sets it), else starts a local instance
        ray.init(address=os.environ.get("RAY_ADDRESS") or None)


def _actor_cpus(cfg: dict[str, Any]) -> float:
    if cfg["num_cpus_per_actor"] is not None:
        return float(cfg["num_cpus_per_actor"])
    # on GPU nodes an actor holds one CPU to feed its GPU; CPU-only, tokenizer actors share the cores with
    # decoding rather than reserving one each (reserving would halve decode parallelism on small machines)
    return 1.0 if float(cfg["num_gpus_per_actor"]) > 0 else 0.0


def tokenize_in_decode_tasks(cfg: dict[str, Any]) -> bool:
    """Whether a normalised job config tokenizes inside the decode tasks (``True``: one map step of
    :func:`~pipeline.tokenize.decode_tokenize_batch`) or in a tokenizer actor pool fed by decode tasks
    (``False``). ``auto`` picks the first when no GPU is asked for (``num_gpus_per_actor == 0``): on
    CPUs a separate tokenizer actor only adds a trip of every frame through the object store, a process
    that competes with the decoders for the same cores, and a fresh actor per job that imports torch
    and loads the tokenizer (``benchmarks/bench_tokenize.py`` measures both; a pool of actors that
    decode and tokenize was tried too and cost 50-100 % more CPU per frame on jobs of 14k-27k frames,
    for the same reasons). With GPUs the actor pool puts one tokenizer on each GPU while decoding
    spreads over every CPU of the cluster.

    Args:
        cfg: a config from :func:`normalize_config` (``tokenize_in_decode_tasks`` is ``"auto"``,
            ``True`` or ``False`` there).
    """
    value = cfg["tokenize_in_decode_tasks"]
    return float(cfg["num_gpus_per_actor"]) == 0 if value == "auto" else bool(value)


def _decode_slots(cfg: dict[str, Any]) -> int:
    """Decoders that run at once: the cluster's CPUs over ``decode_num_cpus`` (at least 1)."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1) / max(float(cfg["decode_num_cpus"]), 0.1)))


def _num_blocks(n_videos: int, slots: int) -> int:
    """Videos are grouped into blocks (one decode task each). Ray Data takes 0.1-0.2 s to get each task
    running on a worker, so tasks should last seconds: 4 blocks per decode slot (balanced by the
    round-robin order, so the slots finish together), more only on big jobs (at most ~64 videos per
    task, so progress and retries stay fine-grained), and at most 20,000 blocks. Measured on 88 videos
    and 2 CPUs: 8 blocks 1,745 frames/s (median of 3) against 1,325 with the former ~8 videos per task."""
    return max(1, min(n_videos, max(4 * slots, math.ceil(n_videos / 64)), 20_000))


def _run_pipeline(cfg: dict[str, Any], todo: list[VideoItem], out: Location, tok_dir: Location, codebook_size: int, run_id: str,
                  progress: Callable[[int, int], None] | None = None) -> None:
    import ray

    dcfg = decode_config(cfg)
    fused = tokenize_in_decode_tasks(cfg)
    slots = _decode_slots(cfg)
    n_blocks = _num_blocks(len(todo), slots)
    actor_cpus = _actor_cpus(cfg)
    stage_kwargs = {
        "tokenizer_dir": tok_dir.uri(),
        "batch_size": int(cfg["batch_size"]),
        "precision": cfg["tokenizer"]["precision"],
        "num_threads": max(1, int(actor_cpus)),
    }
    # from_items cuts the list into n_blocks contiguous runs (the first len % n_blocks one longer); ordering
    # the (largest-first) videos round-robin makes block j = videos j, j + B, j + 2B, …: balanced blocks,
    # and the blocks with the largest videos are scheduled first
    ordered = [todo[i] for j in range(n_blocks) for i in range(j, len(todo), n_blocks)]
    ds = ray.data.from_items([it.to_dict() for it in ordered], override_num_blocks=n_blocks)
    if fused:  # no GPU: every decode task tokenizes its own segments (DecodeTokenizeStage cached per worker)
        ds = ds.map_batches(
            decode_tokenize_batch,
            fn_kwargs={
                "decode_config": dataclasses.asdict(dcfg),
                "tokenize": dict(stage_kwargs, num_threads=max(1, int(float(cfg["decode_num_cpus"])))),
            },
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=float(cfg["decode_num_cpus"]),
        )
    else:  # decode tasks on every CPU feed the tokenizer actors (one per GPU on a cluster)
        ds = ds.map_batches(
            decode_batch,
            fn_kwargs={"config": dataclasses.asdict(dcfg)},
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=float(cfg["decode_num_cpus"]),
        )
        ds = ds.map_batches(
            TokenizeStage,
            fn_constructor_kwargs=stage_kwargs,
            batch_size=4,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=int(cfg["num_tokenizer_actors"])),
            num_cpus=actor_cpus,
            num_gpus=float(cfg["num_gpus_per_actor"]),
        )
    sink = TokenShardDatasink(
        out.uri(),
        codebook_size=codebook_size,
        run_id=run_id,
        rows_per_shard=int(cfg["rows_per_shard"]),
        row_group_mb=float(cfg["row_group_mb"]),
    )
    # Write tasks only compress and commit small token tables: they take no CPU slot and at most
    # _WRITE_CONCURRENCY run at once. A capped, CPU-free write operator leaves Ray Data's per-operator
    # CPU reservation to the decoders (with a 1-CPU write task reserved, a 2-core machine decodes
    # one video at a time).
    with warnings.catch_warnings():  # "concurrency 4 but only N inputs" on small runs: expected, not a problem
        warnings.filterwarnings("ignore", message="The maximum number of concurrent tasks for 'Write'")
        with _ProgressPoller(out, run_id, len(todo), progress):
            ds.write_datasink(sink, ray_remote_args={"num_cpus": 0}, concurrency=_WRITE_CONCURRENCY)


class _ProgressPoller:
    """Calls ``progress(videos_done, videos_total)`` about every ``interval_s`` while a run writes: it
    counts the per-video records (``_videos/part-<run_id>-*.jsonl``) committed so far. No-op without
    ``progress``."""

    def __init__(self, out: Location, run_id: str, total: int, progress: Callable[[int, int], None] | None,
                 interval_s: float = 1.0) -> None:
        self.out, self.run_id, self.total, self.progress, self.interval_s = out, run_id, total, progress, interval_s
        self._stop = threading.Event()
        self._seen: dict[str, int] = {}

    def _count(self) -> int:
        from pipeline.writer import RECORDS_DIR, SHARD_PREFIX

        for info in self.out.join(RECORDS_DIR).list():
            name = info.path.rsplit("/", 1)[-1]
            if name.startswith(f"{SHARD_PREFIX}{self.run_id}-") and name not in self._seen:
                with self.out.fs.open_input_stream(info.path) as f:
                    self._seen[name] = sum(1 for line in f.read().decode().splitlines() if line.strip())
        return sum(self._seen.values())

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.progress(self._count(), self.total)
            except Exception:  # progress display never stops the job
                pass

    def __enter__(self) -> "_ProgressPoller":
        if self.progress is not None:
            self.progress(0, self.total)
            self._thread = threading.Thread(target=self._loop, name="tokenize-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.progress(self._count(), self.total)
        except Exception:
            pass


def _startup_s(state, videos: list[str], t0_epoch: float, pipe_s: float) -> float:
    """Seconds from the start of the pipeline to the first video starting to decode: Ray Data planning,
    worker processes starting, torch imported and the tokenizer loaded (a one-time cost per job)."""
    starts = []
    for v in videos:
        rec = state.record(v)
        if rec.get("decode_end") is not None and rec.get("decode_s") is not None:
            starts.append(float(rec["decode_end"]) - float(rec["decode_s"]))
    return min(max(0.0, min(starts) - t0_epoch), pipe_s) if starts else 0.0


def _split_info(cfg: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    """``manifest["split"]`` before the run (:func:`~pipeline.manifest.build_manifest` adds the video counts)."""
    return {
        "mode": plan["mode"],
        "requested": plan["requested"],
        "reason": plan["reason"],
        "eval_fraction": float(cfg["eval_fraction"]),
        "temporal_eval_fraction": float(cfg["temporal_eval_fraction"]),
        "min_videos_for_video_split": int(cfg["min_videos_for_video_split"]),
        "videos_fixed_by_file_list": int(plan["videos_fixed"]),
    }


def run_tokenize_job(config: Any, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Tokenize every input video into Parquet shards plus ``manifest.json`` (resumable).

    Args:
        config: dict or ``DictConfig`` with the keys of :data:`DEFAULTS` (``inputs`` required).
        progress: called with ``(videos_done, videos_to_do)`` of this run about once a second while the
            videos are tokenized (a console bar; ``None``: nothing).

    Returns:
        the manifest (also written to ``output_dir/manifest.json``); ``manifest["run"]`` describes this
        run (``videos_processed``, ``frames``, ``frames_per_s``, ``wall_s``, ``nothing_to_do``).

    Raises:
        ValueError: a setting outside its range, or no input video.
        TokenizerMismatchError: ``output_dir`` holds shards of another tokenizer / other decode settings /
            another split mode (or ``temporal_eval_fraction``).
        FileNotFoundError: an input that does not exist.
    """
    cfg = normalize_config(config)
    t_start = time.perf_counter()
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    items, plan = discover(
        cfg["inputs"],
        eval_fraction=float(cfg["eval_fraction"]),
        split=cfg["split"],
        min_videos_for_video_split=int(cfg["min_videos_for_video_split"]),
    )
    if not items:
        raise ValueError(f"no videos (.mp4 .avi .mkv .webm .mov) found in inputs={cfg['inputs']!r}")
    split_info = _split_info(cfg, plan)
    log.info("tokenize: split=%s (%s)", split_info["mode"], split_info["reason"])
    out = resolve(str(cfg["output_dir"]))
    out.mkdir()
    _ensure_ray()
    state = scan_output(out)
    settings = {
        "tokenizer_id": None,
        "resolution": int(cfg["resolution"]),
        "fps": cfg["fps"],
        "frame_stride": int(cfg["frame_stride"] or 1),
        "max_frames_per_segment": int(cfg["max_frames_per_segment"]),
        "min_frames": int(cfg["min_frames"]),
        "split": split_info["mode"],
        "temporal_eval_fraction": split_info["temporal_eval_fraction"] if split_info["mode"] == TEMPORAL else None,
    }
    check_job_settings(out, settings, state, split_reason=split_info["reason"])  # decode settings: before any work

    tok, how = prepare_tokenizer(cfg, items, out, state)
    settings["tokenizer_id"] = tok.tokenizer_id
    check_job_settings(out, settings, state, split_reason=split_info["reason"])  # the tokenizer: before anything is written
    tok_dir = _save_tokenizer(tok, out)
    write_job_settings(out, settings)
    tok_info = _tokenizer_info(tok, tok_dir, how, cfg)

    retry = set()
    if cfg["retry_failed"]:
        retry = {it.video_id for it in items if state.status(it.video_id) == "failed"}
    repaired = repair_output(state, also_purge=retry)
    if repaired["videos_purged"] or repaired["files_deleted"]:
        log.info("resume: removed %d interrupted videos' rows (%d files rewritten, %d deleted)",
                 repaired["videos_purged"], repaired["files_rewritten"], repaired["files_deleted"])  # fmt: skip
    done_before = state.done()
    # largest files first (longest-processing-time-first): the last tasks are short ones, so no core
    # idles at the end waiting for one big video; sizes unknown (file lists) keep their order at the end
    todo = sorted((it for it in items if it.video_id not in done_before), key=lambda it: -it.size_bytes)
    skipped = len(items) - len(todo)
    schema = shard_schema(tok.codebook_size)
    decode_info = {k: settings[k] for k in settings if k not in ("tokenizer_id", "split", "temporal_eval_fraction")} | {
        "decoder": cfg["decoder"]
    }

    if not todo:
        fresh = build_manifest(state, found=items, tokenizer=tok_info, decode=decode_info, run={}, psnr=None, schema=schema,
                               split=split_info)  # fmt: skip
        old = load_manifest(out)
        same = old is not None and all(old.get(k) == fresh.get(k) for k in ("counts", "failures", "splits", "split")) and (
            old.get("tokenizer", {}).get("tokenizer_id") == tok.tokenizer_id
        )
        message = f"nothing to do: all {len(items)} input videos are already in {out.uri()}"
        log.info("tokenize: %s (%d ok, %d failed)", message, fresh["counts"]["videos_ok"], fresh["counts"]["videos_failed"])
        if same:
            old["run"] = {**(old.get("run") or {}), "nothing_to_do": True, "message": message, "videos_processed": 0}
            return old
        fresh["psnr"] = (old or {}).get("psnr") or measure_psnr(out, state, tok, cfg, tok_dir)
        fresh["reconstruction_psnr_db"] = (fresh["psnr"] or {}).get("db")
        fresh["run"] = {"nothing_to_do": True, "message": message, "videos_processed": 0, "started_at": started_at}
        write_manifest(out, fresh)
        return fresh

    run_id = time.strftime("%Y%m%d%H%M%S") + "-" + uuid.uuid4().hex[:6]
    log.info("tokenize: %d videos to do (%d already done) → %s with %s", len(todo), skipped, out.uri(), tok.tokenizer_id)
    t_pipe, t_pipe_epoch = time.perf_counter(), time.time()
    _run_pipeline(cfg, todo, out, tok_dir, tok.codebook_size, run_id, progress)
    state = scan_output(out)
    # A worker killed mid-video (e.g. out of memory) and retried by Ray can leave a video half-written or
    # doubled; such videos (and any the run missed) get one more pass right away.
    again = [it for it in todo if state.status(it.video_id) not in ("ok", "failed")]
    if again:
        log.warning("tokenize: %d videos incomplete after the run (%s); repairing and running them again",
                    len(again), ", ".join(it.video_id for it in again[:5]))  # fmt: skip
        repair_output(state)
        _run_pipeline(cfg, again, out, tok_dir, tok.codebook_size, run_id + "-r")
        state = scan_output(out)
    pipe_s = time.perf_counter() - t_pipe
    leftovers = state.incomplete()
    if leftovers:  # the next run repairs them
        log.warning("tokenize: %d videos are still incomplete: %s", len(leftovers), ", ".join(leftovers[:5]))
    done_after = state.done()
    new = [v for v in done_after if v not in done_before]
    new_ok = [v for v in new if done_after[v] == "ok"]
    frames = sum(int(state.record(v)["frames"]) for v in new_ok)
    startup_s = _startup_s(state, new, t_pipe_epoch, pipe_s)
    psnr = measure_psnr(out, state, tok, cfg, tok_dir)
    run = {
        "run_id": run_id,
        "started_at": started_at,
        "wall_s": round(time.perf_counter() - t_start, 2),
        "pipeline_s": round(pipe_s, 2),
        "videos_processed": len(new),
        "videos_ok": len(new_ok),
        "videos_failed": len(new) - len(new_ok),
        "videos_skipped_done": skipped,
        "segments": sum(int(state.record(v)["segments"]) for v in new_ok),
        "frames": frames,
        "frames_per_s": round(frames / max(pipe_s, 1e-9), 2),
        "startup_s": round(startup_s, 2),
        "steady_frames_per_s": round(frames / max(pipe_s - startup_s, 1e-9), 2),
        "resumed": bool(skipped or repaired["videos_purged"]),
        "repaired": repaired,
        "tokenizer": how,
        "nothing_to_do": False,
        "settings": {
            **{k: cfg[k] for k in ("batch_size", "num_tokenizer_actors", "num_gpus_per_actor", "decode_num_cpus", "rows_per_shard")},
            "tokenize_in_decode_tasks": tokenize_in_decode_tasks(cfg),
        },
    }
    manifest = build_manifest(state, found=items, tokenizer=tok_info, decode=decode_info, run=run, psnr=psnr, schema=schema,
                              split=split_info)  # fmt: skip
    write_manifest(out, manifest)
    c = manifest["counts"]
    psnr_txt = f", PSNR {manifest['reconstruction_psnr_db']:.2f} dB" if isinstance(manifest["reconstruction_psnr_db"], float) else ""
    log.info(
        "tokenize: %d/%d videos ok, %d failed, %d segments, %d frames; this run %d videos, %d frames in %.1f s "
        "(%.1f frames/s; %.1f frames/s after %.1f s of start-up) → %s [%s%s]",
        c["videos_ok"], c["videos_found"], c["videos_failed"], c["segments"], c["frames"], len(new), frames,
        pipe_s, run["frames_per_s"], run["steady_frames_per_s"], startup_s, out.uri(), tok.tokenizer_id, psnr_txt,
    )  # fmt: skip
    for f in manifest["failures"]:
        log.info("  skipped %s: %s", f["source"], f["reason"])
    return manifest
