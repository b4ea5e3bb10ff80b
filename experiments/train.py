"""Train the frame-masked backbone with Ray Train DDP (Algorithm 1 on every worker).

    python -m experiments.train shards=outputs/tokens run_name=ffs-xl preset=ffs
    ray job submit --address http://HEAD:8265 --working-dir . -- python -m experiments.train preset=ffs shards=s3://…

Each worker reads its own shard of the training windows through ``ray.train.get_dataset_shard``
(Ray's ``streaming_split(equal=True)``: disjoint rows, equal counts, so every rank runs the same number
of steps and reaches every ``ray.train.report`` barrier). Checkpoints hold model, EMA, optimizer, LR
schedule, step and the resolved config; running the same command with the same ``run_name`` resumes
from the latest one and keeps logging to the same MLflow run. Metrics go to the console and MLflow
from rank 0 every ``loop.log_every`` steps; ``ray.train.report`` is called (by every rank) only with a
checkpoint, since Ray Train's controller collects one report per worker every 2 s and each report waits
for the previous one to be collected. ``FailureConfig(max_failures)`` restarts
a failed worker group from the latest checkpoint by itself.

Masking randomness is a pure function of ``(seed, rank, step)``, so a resumed job draws the same masks
it would have drawn without the interruption.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from experiments import console
from experiments import flowception as flowception_stack
from experiments.config import ConfigError, to_container

log = logging.getLogger("experiments.train")

__all__ = ["main", "validate_config", "train_loop_per_worker"]

MODEL_SIZES_CPU_HINT = ("tiny", "small")


# --------------------------------------------------------------------------------------- config
def validate_config(cfg: DictConfig) -> None:
    """Refuse a training config that cannot work, before any work starts.

    Raises:
        ConfigError: naming the setting and its allowed range.
    """
    if int(cfg.chunk_size) < 2:
        raise ConfigError(f"chunk_size must be >= 2, got {cfg.chunk_size}")
    flowception_stack.validate(cfg)  # dynamics and the flowception.* settings
    from maskflow.models import MODEL_SIZES

    if str(cfg.model.size) not in MODEL_SIZES:
        raise ConfigError(f"model.size must be one of {', '.join(MODEL_SIZES)}, got {cfg.model.size!r}")
    if not 0 <= int(cfg.method.max_context_frames) < int(cfg.chunk_size):
        raise ConfigError(
            f"method.max_context_frames must be in [0, chunk_size - 1] = [0, {int(cfg.chunk_size) - 1}], "
            f"got {cfg.method.max_context_frames}"
        )
    for key in ("batch_size_per_worker", "max_steps", "log_every", "checkpoint_every"):
        if int(cfg.loop[key]) < 1:
            raise ConfigError(f"loop.{key} must be >= 1, got {cfg.loop[key]}")
    for key in ("eval_every", "sample_every", "val_windows", "heldout_clips", "shuffle_buffer"):
        if int(cfg.loop[key] or 0) < 0:
            raise ConfigError(f"loop.{key} must be >= 0, got {cfg.loop[key]}")
    from pipeline.readers import SHUFFLE_MODES

    if cfg.loop.shuffle not in SHUFFLE_MODES:
        raise ConfigError(f"loop.shuffle must be one of {', '.join(SHUFFLE_MODES)}, got {cfg.loop.shuffle!r}")
    if int(cfg.optim.grad_accum_steps) < 1 or int(cfg.loop.batch_size_per_worker) % int(cfg.optim.grad_accum_steps):
        raise ConfigError(
            f"optim.grad_accum_steps must be >= 1 and divide loop.batch_size_per_worker="
            f"{cfg.loop.batch_size_per_worker}, got {cfg.optim.grad_accum_steps}"
        )
    if int(cfg.scaling.num_workers) < 1:
        raise ConfigError(f"scaling.num_workers must be >= 1, got {cfg.scaling.num_workers}")
    if cfg.optim.get("lr_decay", "constant") not in ("constant", "cosine"):
        raise ConfigError(f"optim.lr_decay must be constant or cosine, got {cfg.optim.lr_decay!r}")
    if cfg.optim.precision not in ("bf16", "fp16", "fp32"):
        raise ConfigError(f"optim.precision must be bf16, fp16 or fp32, got {cfg.optim.precision!r}")
    _checkpoint_upload_kwargs(cfg)
    if str(cfg.scaling.use_gpu).lower() not in ("auto", "true", "false"):
        raise ConfigError(f"scaling.use_gpu must be auto, true or false, got {cfg.scaling.use_gpu!r}")


def _use_gpu(cfg: DictConfig) -> bool:
    value = str(cfg.scaling.use_gpu).lower()
    if value == "auto":
        import ray

        return ray.cluster_resources().get("GPU", 0) >= 1
    return value == "true"


def _cpus_per_worker(cfg: DictConfig, use_gpu: bool) -> float:
    """``scaling.cpus_per_worker``, lowered on small machines so one CPU stays free for Ray Data.

    Training workers hold their CPUs for the whole job; if they took every CPU, the streaming read of
    the shards could never be scheduled and the job would wait forever.
    """
    import ray

    wanted = float(cfg.scaling.cpus_per_worker)
    workers = int(cfg.scaling.num_workers)
    total = float(ray.cluster_resources().get("CPU", 0))
    if use_gpu or workers * wanted + 1 <= total:
        return wanted
    fitted = max(0.25, (total - 1) / workers)
    log.warning(
        "%d workers x %.2g CPU would leave no CPU of %.0f for reading data; using %.2g CPU per worker",
        workers, wanted, total, fitted,
    )
    return fitted


# ------------------------------------------------------------------------------------ data
def data_info(shards: str) -> dict[str, Any]:
    """Codebook size, token grid, tokenizer and split mode (``video`` or ``temporal``) of a shard
    directory (from its manifest)."""
    from pipeline.readers import read_manifest

    manifest = read_manifest(shards)
    tok = manifest["tokenizer"]
    split = manifest.get("split") or {}
    return {
        "codebook_size": int(tok["codebook_size"]),
        "latent_size": int(tok["latent_size"]),
        "tokenizer_id": str(tok["tokenizer_id"]),
        "tokenizer_dir": str(tok.get("directory") or ""),
        "shards": str(shards),
        "split": str(split.get("mode", "video")) if isinstance(split, dict) else str(split),
    }


# ------------------------------------------------------------------------------ worker loop
def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def _memory_bytes(device: torch.device) -> float:
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    import psutil

    return float(psutil.Process().memory_info().rss)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The function every Ray Train worker runs: resume, then Algorithm 1 steps until ``loop.max_steps``.

    ``config`` is the resolved training config plus ``_data`` (see :func:`data_info`),
    ``_mlflow`` (tracking URI and run id) and ``_fail_marker`` (fault-injection bookkeeping).
    """
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    from experiments import tracking
    from experiments.checkpoint import load_checkpoint, save_checkpoint
    from maskflow.models import build_backbone
    from pipeline.readers import iter_window_batches
    from maskflow.training import (
        EMA,
        MaskFlowObjective,
        ObjectiveConfig,
        OptimConfig,
        build_grad_scaler,
        build_lr_schedule,
        build_optimizer,
        train_step,
    )

    cfg = OmegaConf.create({k: v for k, v in config.items() if not k.startswith("_")})
    data, mlf = config["_data"], config["_mlflow"]
    shuffle_buffer = int(cfg.loop.shuffle_buffer) if cfg.loop.shuffle == "local" else 0
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(int(cfg.seed))
    if device.type == "cpu":  # one intra-op thread per CPU Ray gave this worker (oversubscription is 5-30x slower)
        torch.set_num_threads(max(1, int(config.get("_cpus_per_worker", 1))))

    model = build_backbone(
        cfg.model.size,
        codebook_size=data["codebook_size"],
        latent_size=data["latent_size"],
        time_conditioning=cfg.model.time_conditioning,
        activation_checkpointing=bool(cfg.model.activation_checkpointing),
        rate_head=flowception_stack.rate_head(cfg),  # 'none' for MaskFlow
        **({} if cfg.model.get("patch_size") is None else {"patch_size": int(cfg.model.patch_size)}),
    )
    backbone_config = _backbone_kwargs(model)
    optim_cfg = OptimConfig(
        lr=float(cfg.optim.lr), betas=tuple(cfg.optim.betas), weight_decay=float(cfg.optim.weight_decay),
        grad_clip=float(cfg.optim.grad_clip), warmup_steps=int(cfg.optim.warmup_steps),
        ema_decay=float(cfg.optim.ema_decay), grad_accum_steps=int(cfg.optim.grad_accum_steps),
        precision=str(cfg.optim.precision), compile=bool(cfg.optim.compile),
    )
    ema = EMA(model, decay=optim_cfg.ema_decay, warmup=bool(cfg.optim.ema_warmup))
    model = ray.train.torch.prepare_model(model)
    if optim_cfg.compile:
        model = torch.compile(model)
    optimizer = build_optimizer(_unwrap(model), lr=optim_cfg.lr, betas=optim_cfg.betas, weight_decay=optim_cfg.weight_decay)
    lr_schedule = build_lr_schedule(optimizer, warmup_steps=optim_cfg.warmup_steps,
                                    decay=str(cfg.optim.get("lr_decay", "constant")), total_steps=int(cfg.loop.max_steps))
    scaler = build_grad_scaler(optim_cfg, device)
    objective = MaskFlowObjective(
        ObjectiveConfig(
            scheduler=cfg.method.scheduler,
            masking=cfg.method.masking,
            max_context_frames=int(cfg.method.max_context_frames),
            loss_weighting=cfg.method.loss_weighting,
            snr_clip=float(cfg.method.snr_clip),
            cum_snr_decay=float(cfg.method.cum_snr_decay),
            head=str(cfg.method.get("head", "masked")),
            head_chunk_rows=int(cfg.method.get("head_chunk_rows", 4096)),
        )
    )
    objective = flowception_stack.build_objective(cfg, objective)  # dynamics=flowception: Algorithm 2 (discrete)

    step, epoch = 0, 0
    resumed = ray.train.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as d:
            state = load_checkpoint(d)
        _unwrap(model).load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        lr_schedule.load_state_dict(state["lr_schedule"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, epoch = int(state["step"]), int(state["epoch"])
        _set_rng_state(state.get("rng"), device)
        log.info("rank %d resumed from step %d", rank, step)
    elif cfg.init_checkpoint:
        state = load_checkpoint(cfg.init_checkpoint)
        _unwrap(model).load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        log.info("rank %d warm-started from %s", rank, cfg.init_checkpoint)

    client = None
    if rank == 0:
        client = tracking.get_client(mlf["tracking_uri"])
    system_metrics = None
    if cfg.mlflow.system_metrics and ctx.get_local_rank() == 0:  # one monitor per node: system/node<i>/…
        system_metrics = tracking.node_system_metrics(mlf["run_id"], f"node{ctx.get_node_rank()}", mlf["tracking_uri"])
        system_metrics.__enter__()

    max_steps = int(cfg.loop.max_steps)
    bs = int(cfg.loop.batch_size_per_worker)
    shard = ray.train.get_dataset_shard("train")
    t_log, tokens_since, window = time.perf_counter(), 0, []
    smoothed = _Smoothed(SMOOTHING_DECAY)
    heldout = _HeldoutProbe(cfg, data, device, objective) if rank == 0 else None
    extras_window = flowception_stack.ExtrasWindow()  # the objective's further figures (Flowception's insertion loss)

    upload_mode = _checkpoint_upload_kwargs(cfg)

    def report(metrics: dict[str, float], with_checkpoint: bool) -> None:
        if rank == 0:
            console.publish(config.get("_progress"), step, metrics, total=max_steps)
        if not with_checkpoint:
            # metrics alone go to the console and MLflow only: Ray Train's controller takes one report per
            # worker per health-check poll (2 s), so a report every few fast steps would block each rank
            # for up to 2 s (measured: 0.2 s/step instead of 0.04 for the tiny model, docs/training.md)
            return
        # rank 0 writes the checkpoint to a local temporary directory; Ray Train copies it to the run's
        # storage and deletes it (run.checkpoint_upload=async: in a background thread, so no rank waits
        # for the upload at this barrier)
        checkpoint = None
        if rank == 0:
            tmp = tempfile.mkdtemp(prefix="maskflow-ckpt-")
            save_checkpoint(
                tmp,
                {
                    "model": _unwrap(model).state_dict(),
                    "ema": ema.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "lr_schedule": lr_schedule.state_dict(),
                    "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                    "step": step,
                    "epoch": epoch,
                    "rng": _rng_state(device),
                    "config": to_container(cfg),
                    "backbone_config": backbone_config,
                    "data": data,
                    "mlflow_run_id": mlf["run_id"],
                },
            )
            checkpoint = Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint, **upload_mode)

    eval_every, sample_every = int(cfg.loop.eval_every or 0), int(cfg.loop.sample_every or 0)
    model.train()
    while step < max_steps:
        batches = 0
        for batch in iter_window_batches(shard, batch_size=bs, shuffle_buffer=shuffle_buffer):
            batches += 1
            tokens = torch.as_tensor(np.asarray(batch["tokens"]).astype(np.int64)).to(device, non_blocking=True)
            _maybe_fail(config, step, rank)
            gen = torch.Generator(device=device).manual_seed(_step_seed(int(cfg.seed), rank, step))
            res = train_step(
                model, objective, tokens, optimizer, scaler, ema, optim_cfg, step,
                lr_schedule=lr_schedule, generator=gen,
            )
            window.append((res.loss, res.accuracy, res.masked_ce))
            extras_window.add(res.extras)
            smoothed.update(float(res.masked_ce))
            tokens_since += res.num_tokens
            step += 1

            last = step >= max_steps
            do_ckpt = step % int(cfg.loop.checkpoint_every) == 0 or last
            do_val = last or (eval_every and step % eval_every == 0)
            do_sample = last or (sample_every and step % sample_every == 0)
            if step % int(cfg.loop.log_every) == 0 or do_ckpt or do_val or do_sample:
                dt = time.perf_counter() - t_log
                metrics = {
                    "loss": float(np.mean([w[0] for w in window])),
                    "masked_accuracy": float(np.mean([w[1] for w in window])),
                    "masked_ce": float(np.mean([w[2] for w in window])),
                    "masked_ce_smoothed": smoothed.value,
                    "lr": res.lr,
                    "grad_norm": res.grad_norm,
                    "tokens_per_s": tokens_since * world / max(dt, 1e-9),
                    "memory_bytes": _memory_bytes(device),
                    "epoch": epoch,
                    "step": step,
                }
                metrics.update(extras_window.pop_means())
                if heldout is not None:  # rank 0; the other ranks wait at the report barrier
                    if do_val:
                        metrics.update(heldout.validation(_unwrap(model)))
                    if do_sample:
                        metrics.update(heldout.continuations(_unwrap(model), ema, client, mlf, step))
                if client is not None:
                    tracking.log_metrics(client, mlf["run_id"], mlflow_metrics(metrics), step=step, tags={"epoch": epoch})
                report(metrics, with_checkpoint=do_ckpt)
                t_log, tokens_since, window = time.perf_counter(), 0, []
            if last:
                break
        if batches == 0:
            raise RuntimeError(
                f"worker {rank} got no full batch of {bs} windows; the dataset has too few windows for "
                f"{world} workers x batch_size_per_worker={bs} (lower one of them or add videos)"
            )
        epoch += 1
    if system_metrics is not None:
        system_metrics.__exit__(None, None, None)


class _HeldoutProbe:
    """Rank 0's view of held-out quality during training (:mod:`experiments.heldout`).

    * :meth:`validation` — masked CE and accuracy of the training weights on ``loop.val_windows`` fixed
      held-out windows at fixed seeded levels (``val_masked_ce``, ``val_masked_accuracy``).
    * :meth:`continuations` — with the EMA weights, MGM continuations of ``loop.heldout_clips`` held-out
      clips of ``2 × chunk_size`` frames (``chunk_size`` when none is that long) from ``m`` real frames,
      scored against the real continuation next to the copy-last-frame baseline; the first clip is
      logged as a ``[real | generated]`` MP4/GIF under ``samples/``.

    A failure of either is logged as a warning and a tag, never replaced by fake numbers and never
    fatal to training.
    """

    def __init__(self, cfg: DictConfig, data: dict[str, Any], device: torch.device, objective) -> None:
        from experiments.heldout import validation_windows

        self.cfg, self.data, self.device, self.objective = cfg, data, device, objective
        self.k = int(cfg.chunk_size)
        self.m = max(1, min(int(cfg.method.max_context_frames) or 2, self.k - 1))
        self.val = None
        if int(cfg.loop.val_windows):
            try:
                self.val = validation_windows(data["shards"], self.k, int(cfg.loop.val_windows), seed=int(cfg.seed))
            except Exception as exc:  # no held-out data must not stop training
                log.warning("no validation windows: %s", exc)
            if self.val is None:
                log.warning("no held-out segment of %d frames: no validation metrics", self.k)
        self._clips, self._tokenizer = None, None

    def validation(self, model: torch.nn.Module) -> dict[str, float]:
        from maskflow.training import evaluate_objective

        if self.val is None:
            return {}
        out = evaluate_objective(model, self.objective, self.val.to(self.device), batch_size=16, seed=int(self.cfg.seed))
        return {"val_masked_ce": out["masked_ce"], "val_masked_accuracy": out["masked_accuracy"]}

    def _load_clips(self):
        from pipeline.readers import load_eval_clips, load_shard_tokenizer

        if self._clips is None:
            n = int(self.cfg.loop.heldout_clips)
            for length in (2 * self.k, self.k):
                self._clips = load_eval_clips(self.data["shards"], num_frames=length, num_clips=n, seed=0, split="eval") if n else []
                if self._clips:
                    break
            self._tokenizer = load_shard_tokenizer(self.data["shards"])
        return self._clips

    def continuations(self, model: torch.nn.Module, ema, client, mlf: dict[str, Any], step: int) -> dict[str, float]:
        from experiments import tracking
        from experiments.heldout import heldout_quality
        from experiments.video_io import mark_context, side_by_side, upscale, write_gif, write_mp4
        from maskflow.sampling import SamplerConfig

        try:
            clips = self._load_clips()
            if not clips:
                log.info("no held-out segment of %d frames: no held-out continuations at step %d", self.k, step)
                return {}
            length = clips[0].tokens.shape[0]
            scfg = SamplerConfig(sampler="mgm", sampling_steps=int(self.cfg.loop.sample_sampling_steps),
                                 chunk_size=self.k, n_context_frames=self.m, scheduler=str(self.cfg.method.scheduler))
            was_training = model.training
            model.eval()
            with ema.swapped(model):
                res = heldout_quality(model, self._tokenizer, clips, scfg, num_frames=length, seed=step)
            model.train(was_training)
            q = res.metrics
            real, fake = res.real_frames[0].numpy(), res.fake_frames[0].numpy()
            both = upscale(side_by_side(mark_context(real, self.m), mark_context(fake, self.m)), max(1, 128 // fake.shape[1]))
            with tempfile.TemporaryDirectory() as tmp:
                for path in (write_mp4(both, f"{tmp}/step_{step:07d}.mp4"), write_gif(both, f"{tmp}/step_{step:07d}.gif")):
                    tracking.log_artifact(client, mlf["run_id"], path, artifact_path="samples")
            tracking.log_frame_strip(client, mlf["run_id"], real, fake, self.m, step=step)
            return {
                "heldout_token_accuracy": q["token_accuracy"],
                "copy_last_frame_token_accuracy": q["copy_last_frame_token_accuracy"],
                "heldout_foreground_token_accuracy": q["foreground_token_accuracy"],
                "heldout_foreground_share": q["foreground_share"],
                "real_foreground_share": q["real_foreground_share"],
                "heldout_psnr_db": q["psnr"],
                "copy_last_frame_psnr_db": q["copy_last_frame_psnr"],
                "heldout_ssim": q["ssim"],
                "copy_last_frame_ssim": q["copy_last_frame_ssim"],
                "heldout_clips": float(q["num_videos"]),
                "sample_nfe": float(q["nfe"]),
            }
        except Exception as exc:  # a sample is a view on training, not part of it
            log.warning("held-out continuations at step %d failed: %s", step, exc)
            tracking.set_tags(client, mlf["run_id"], {"sample_error": f"step {step}: {type(exc).__name__}: {exc}"[:4000]})
            return {}


def _rng_state(device: torch.device) -> dict[str, Any]:
    """The global torch generator states (CPU, and the device's on CUDA) as uint8 tensors.

    The masking levels and masks of each step come from a generator seeded by ``(seed, rank, step)``
    (:func:`_step_seed`), so a resumed run draws exactly what an uninterrupted one would; these states
    cover anything else that uses the global generators (rank 0's, restored on every rank)."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any] | None, device: torch.device) -> None:
    if not state:  # checkpoints from before RNG states were saved
        return
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


#: MLflow name of each metric the worker reports to Ray (Ray's report and the summary keep the plain
#: names): ``train/`` the objective on training batches (``masked_ce`` is the headline loss: the
#: unweighted masked cross-entropy in nats, mean over the logging interval; ``objective`` is the
#: weighted loss that is minimised), ``val/`` the objective on held-out windows, ``sample/`` held-out
#: continuations of the EMA weights. ``step`` is the x-axis and ``epoch`` a tag.
MLFLOW_METRIC_NAMES = {
    "masked_ce": "train/masked_ce",
    "masked_ce_smoothed": "train/masked_ce_smoothed",
    "loss": "train/objective",
    "masked_accuracy": "train/masked_accuracy",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "tokens_per_s": "train/tokens_per_s",
    "memory_bytes": "train/memory_bytes",
    "val_masked_ce": "val/masked_ce",
    "val_masked_accuracy": "val/masked_accuracy",
    "heldout_token_accuracy": "sample/token_accuracy",
    "copy_last_frame_token_accuracy": "sample/copy_last_frame_token_accuracy",
    "heldout_foreground_token_accuracy": "sample/foreground_token_accuracy",
    "heldout_foreground_share": "sample/foreground_share",
    "real_foreground_share": "sample/real_foreground_share",
    "heldout_psnr_db": "sample/psnr_db",
    "copy_last_frame_psnr_db": "sample/copy_last_frame_psnr_db",
    "heldout_ssim": "sample/ssim",
    "copy_last_frame_ssim": "sample/copy_last_frame_ssim",
    "heldout_clips": "sample/clips",
    "sample_nfe": "sample/nfe",
    **flowception_stack.EXTRA_METRICS,
}

#: Decay of the exponential moving average behind ``train/masked_ce_smoothed`` (per step: about the
#: last 50 steps).
SMOOTHING_DECAY = 0.98


def mlflow_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The worker's report under its MLflow names (:data:`MLFLOW_METRIC_NAMES`); ``step``/``epoch`` dropped.

    Figures the objective adds (``StepResult.extras``, e.g. Flowception's ``insertion_loss``) are
    measured on training batches: ``train/<name>``.
    """
    return {MLFLOW_METRIC_NAMES.get(k, f"train/{k}"): v for k, v in metrics.items() if k not in ("step", "epoch")}


class _Smoothed:
    """Bias-corrected exponential moving average (Adam's correction: exact mean of a constant series)."""

    def __init__(self, decay: float) -> None:
        self.decay, self.avg, self.n = decay, 0.0, 0

    def update(self, x: float) -> None:
        self.avg, self.n = self.decay * self.avg + (1 - self.decay) * x, self.n + 1

    @property
    def value(self) -> float:
        return self.avg / (1 - self.decay**self.n) if self.n else float("nan")


def _checkpoint_upload_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """``ray.train.report`` keywords for ``run.checkpoint_upload``: ``async`` (default) uploads in a
    background thread of each worker (``CheckpointUploadMode.ASYNC``; the ranks go on training), ``sync``
    waits for the upload at the report barrier. The local copy is deleted after the upload either way.

    Raises:
        ConfigError: a value other than ``async`` or ``sync``.
    """
    mode = str(cfg.run.get("checkpoint_upload", "async")).lower()
    if mode not in ("async", "sync"):
        raise ConfigError(f"run.checkpoint_upload must be async or sync, got {mode!r}")
    from ray.train import CheckpointUploadMode

    return {"checkpoint_upload_mode": CheckpointUploadMode.ASYNC if mode == "async" else CheckpointUploadMode.SYNC,
            "delete_local_checkpoint_after_upload": True}


def _step_seed(seed: int, rank: int, step: int) -> int:
    return (seed * 1_000_003 + rank * 7_919 + step * 104_729) % (2**63 - 1)


def _backbone_kwargs(model: torch.nn.Module) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(model.config)


def _maybe_fail(config: dict[str, Any], step: int, rank: int) -> None:
    """Fault injection for tests: the last rank raises once when it reaches ``loop.fail_at_step``."""
    fail_at = config["loop"].get("fail_at_step")
    marker = config.get("_fail_marker")
    if fail_at is None or step != int(fail_at) or marker is None:
        return
    import ray.train

    if rank != ray.train.get_context().get_world_size() - 1 or os.path.exists(marker):
        return
    Path(marker).parent.mkdir(parents=True, exist_ok=True)
    Path(marker).write_text(f"failed at step {step}\n")
    raise RuntimeError(f"injected failure at step {step} on rank {rank} (loop.fail_at_step)")


# ------------------------------------------------------------------------------------ driver
def main(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) one training job; returns a summary dict.

    Returns:
        ``{"run_name", "checkpoint", "storage_path", "mlflow_run_id", "tracking_uri", "steps",
        "final_loss", "first_loss", "resumed", "data", "final_metrics"}``; ``final_metrics`` is rank 0's
        last report, with the held-out figures (``val_masked_ce``, ``val_masked_accuracy``,
        ``heldout_token_accuracy``, ``copy_last_frame_token_accuracy``, ``heldout_psnr_db``, …) of the
        final step.

    Raises:
        ConfigError: a setting that cannot work (before any work starts).
        RuntimeError: training failed more often than ``run.max_failures``.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from experiments import tracking
    from experiments.checkpoint import log_trained_model
    from experiments.heldout import UNSEEN_CODE_WARNING
    from pipeline.readers import training_window_dataset, unseen_code_share

    validate_config(cfg)
    if not cfg.shards or not Path(str(cfg.shards)).exists() and "://" not in str(cfg.shards):
        raise ConfigError(f"shards={cfg.shards!r} does not exist; run experiments.tokenize first")
    if cfg.run_name:  # the same run_name resumes: refuse a changed model or data before Ray starts
        from experiments.checkpoint import check_resume

        root = str(cfg.run.storage_path)
        check_resume(f"{root if '://' in root else Path(root).resolve()}/{cfg.run_name}", cfg, data_info(str(cfg.shards)))
    console.init_ray()

    data = data_info(str(cfg.shards))
    run_name = cfg.run_name or time.strftime("maskflow-%Y%m%d-%H%M%S")
    cfg.run_name = run_name
    storage = str(cfg.run.storage_path)
    if "://" not in storage:
        storage = str(Path(storage).resolve())
    use_gpu = _use_gpu(cfg)

    uri = tracking.resolve_tracking_uri(cfg.mlflow.tracking_uri)
    client = tracking.get_client(uri)
    run_id, resumed = tracking.get_or_create_run(
        client,
        cfg.mlflow.experiment,
        run_name,
        resume_key=("ray_run_name", run_name),
        tags={"stage": "train", "model_size": str(cfg.model.size)},
        description=(
            f"Training of a MaskFlow {cfg.model.size} backbone (chunk_size {cfg.chunk_size}, {cfg.method.masking} "
            f"masking, {cfg.method.scheduler} scheduler) on the token shards {data['shards']} "
            f"({data['tokenizer_id']}, {data['split']} split); {int(cfg.scaling.num_workers)} Ray Train worker(s)."
        ),
        experiment_description="MaskFlow training runs (Ray Train); sampling runs of a checkpoint are nested under its training run.",
    )
    resolved = to_container(cfg)
    resolved["scaling"]["use_gpu"] = use_gpu
    resolved["run"]["storage_path"] = storage
    tracking.log_config(client, run_id, resolved)
    tracking.log_dataset(client, run_id, str(cfg.shards), context="training")
    tracking.set_tags(
        client,
        run_id,
        {
            "checkpoint_location": f"{storage}/{run_name}",
            "tokenizer_id": data["tokenizer_id"],
            "codebook_size": data["codebook_size"],
            "split": data["split"],
            "use_gpu": use_gpu,
        },
    )
    log.info("MLflow run %s (%s) at %s", run_id, "resumed" if resumed else "new", uri)

    resources = {"CPU": _cpus_per_worker(cfg, use_gpu)}
    if use_gpu:
        resources["GPU"] = float(cfg.scaling.gpus_per_worker)
    workers, bs = int(cfg.scaling.num_workers), int(cfg.loop.batch_size_per_worker)
    try:
        if flowception_stack.dynamics(cfg) == "flowception":  # whole videos of <= chunk_size frames, padded
            train_ds, per_epoch = flowception_stack.training_dataset(cfg, data, int(cfg.loop.min_steps_per_epoch) * workers * bs)
        else:
            train_ds, per_epoch = training_window_dataset(
                str(cfg.shards), str(cfg.split), int(cfg.chunk_size),
                min_windows=int(cfg.loop.min_steps_per_epoch) * workers * bs, shuffle=str(cfg.loop.shuffle),
            )
    except ValueError as exc:
        tracking.end_run(client, run_id, status="FAILED")
        raise ConfigError(str(exc)) from None
    if per_epoch < workers * bs:
        tracking.end_run(client, run_id, status="FAILED")
        raise ConfigError(
            f"{per_epoch} training windows cannot fill one batch on each of {workers} workers "
            f"(batch_size_per_worker={bs}); lower them or add videos"
        )
    unseen = unseen_code_share(str(cfg.shards), data["codebook_size"], train_split=str(cfg.split))
    tracking.log_metrics(client, run_id, {"unseen_code_share": unseen}, prefix="data/")
    data["unseen_code_share"] = unseen
    if unseen > UNSEEN_CODE_WARNING:
        log.warning(
            "%.1f%% of the held-out tokens have codes that never occur in the %r split: the model is never "
            "trained to output them, so held-out quality is capped (a codebook fitted on few, very different "
            "videos gives each video codes of its own; use more videos, a shared tokenizer, or split=temporal)",
            100 * unseen, str(cfg.split),
        )
    log.info("%d training windows per epoch (%d steps per worker)", per_epoch, per_epoch // (workers * bs))
    loop_config = to_container(cfg)
    loop_config.update(
        _cpus_per_worker=resources["CPU"],
        _data=data,
        _mlflow={"tracking_uri": uri, "run_id": run_id},
        _fail_marker=(
            f"{storage}/{run_name}/.injected_failure" if cfg.loop.fail_at_step is not None and "://" not in storage else None
        ),
    )
    progress = console.RemoteProgress("train", total=int(cfg.loop.max_steps), unit="step")
    loop_config["_progress"] = progress.handle  # rank 0 publishes every report: the console's bar and lines
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=int(cfg.scaling.num_workers), use_gpu=use_gpu, resources_per_worker=resources
        ),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage,
            checkpoint_config=CheckpointConfig(num_to_keep=int(cfg.run.num_to_keep)),
            failure_config=FailureConfig(max_failures=int(cfg.run.max_failures)),
        ),
        datasets={"train": train_ds},
    )
    try:
        result = trainer.fit()
    except Exception:
        progress.close(ok=False)
        tracking.end_run(client, run_id, status="FAILED")
        raise
    progress.close()
    if result.error is not None:  # pragma: no cover - fit() raises in V2; kept for safety
        tracking.end_run(client, run_id, status="FAILED")
        raise RuntimeError(f"training failed: {result.error}")
    checkpoint = result.checkpoint.path if result.checkpoint is not None else None
    tracking.set_tags(client, run_id, {"checkpoint": checkpoint})
    model_uri = None
    if checkpoint is not None and cfg.mlflow.get("log_model", True):
        try:
            model_uri = log_trained_model(client, run_id, checkpoint, register_as=cfg.mlflow.get("register_model"))
        except Exception as exc:  # the checkpoint is there; a model that could not be logged is a warning
            log.warning("could not log the MLflow model of %s: %s", checkpoint, exc)
            tracking.set_tags(client, run_id, {"log_model_error": f"{type(exc).__name__}: {exc}"[:4000]})
    tracking.end_run(client, run_id)
    losses = tracking.metric_history(client, run_id, MLFLOW_METRIC_NAMES["masked_ce"])
    summary = {
        "run_name": run_name,
        "checkpoint": checkpoint,
        "storage_path": storage,
        "mlflow_run_id": run_id,
        "tracking_uri": uri,
        "steps": int(result.metrics.get("step", 0)) if result.metrics else 0,
        "final_loss": losses[-1] if losses else math.nan,
        "first_loss": losses[0] if losses else math.nan,
        "resumed": resumed,
        "data": data,
        "final_metrics": {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))},
        "model_uri": model_uri,
    }
    log.info(
        "trained %s: %d steps, loss %.3f -> %.3f, checkpoint %s",
        run_name, summary["steps"], summary["first_loss"], summary["final_loss"], checkpoint,
    )
    return summary


if __name__ == "__main__":  # pragma: no cover - CLI
    import sys

    from experiments.cli import command_line_config, run

    level, words = console.split_verbosity(sys.argv[1:])
    train_cfg = command_line_config("train", words)  # --help, --cfg; exit code 2 on a config error
    console.setup(f"{train_cfg.run.storage_path}/{train_cfg.run_name or 'train'}.log", level)
    out = run(main, "train", train_cfg)
    print({k: v for k, v in out.items() if k != "data"})
