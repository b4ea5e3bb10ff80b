r"""Held-out continuation quality: how well a generated continuation matches the real one, always
next to the copy-last-frame baseline on the same clips.

A generated video and its real counterpart share the first ``m`` (context) frames; everything here is
measured on frames ``m … L−1`` only.

- **Token accuracy** per generated frame: the share of token positions whose generated code equals the
  real code (the VQ tokens of the real clip), averaged over videos. Chance is about ``1/K``; the
  copy-last-frame baseline scores the share of tokens that do not change after the context, so a model
  that learned nothing about motion cannot beat it on moving content.
- **PSNR / SSIM** per generated frame of the decoded videos (:func:`~maskflow.metrics.video_quality_metrics`);
  the means here cap each frame's PSNR at :data:`PSNR_CAP_DB` (the copy of a static scene equals the real
  frame exactly, whose PSNR is infinite and would make every mean infinite).
- **Foreground token accuracy**: token accuracy restricted to the positions whose real code is not the
  clip's background code (the most frequent code of its context frames), with the foreground share of
  the real and of the generated frames. On scenes with a plain background (the demo's sprites) the plain
  token accuracy is mostly background; these show whether the moving content itself is continued, or
  fades (a generated foreground share far below the real one).
- **Copy-last-frame baseline**: the continuation that repeats the last context frame
  (:func:`copy_last_frame`), scored with the same functions.
"""

from __future__ import annotations

from typing import Any

import torch

from .video import psnr_per_frame, video_quality_metrics

__all__ = ["copy_last_frame", "token_accuracy_per_frame", "foreground_scores", "continuation_quality", "PSNR_CAP_DB"]

PSNR_CAP_DB = 100.0  # per-frame PSNR cap for the means (identical frames have infinite PSNR)


def copy_last_frame(context: torch.Tensor, num_frames: int) -> torch.Tensor:
    """The copy-last-frame continuation: the context followed by its last frame repeated.

    Args:
        context: ``[B, m, ...]`` (tokens ``int64 [B, m, h, w]`` or frames ``uint8 [B, m, H, W, 3]``), ``m >= 1``.
        num_frames: ``L >= m``, frames of the result.

    Returns:
        ``[B, L, ...]``, same dtype and device as ``context``.

    Raises:
        ValueError: ``m == 0`` or ``num_frames < m``.
    """
    m = context.shape[1]
    if m < 1 or num_frames < m:
        raise ValueError(f"need at least one context frame and num_frames >= m, got m={m}, num_frames={num_frames}")
    tail = context[:, -1:].expand(-1, num_frames - m, *context.shape[2:])
    return torch.cat([context, tail], dim=1)


def token_accuracy_per_frame(real: torch.Tensor, fake: torch.Tensor, n_context_frames: int) -> torch.Tensor:
    """Share of equal tokens per generated frame, averaged over videos.

    Args:
        real, fake: integer ``[B, L, h, w]`` codes with the same shape.
        n_context_frames: ``m`` in ``[0, L − 1]``; frames before it are not scored.

    Returns:
        float64 ``[L − m]`` in ``[0, 1]``.

    Raises:
        ValueError: shapes differ, not 4-D, or ``m`` out of range.
    """
    if real.shape != fake.shape or real.ndim != 4:
        raise ValueError(f"real and fake must both be [B, L, h, w], got {tuple(real.shape)} and {tuple(fake.shape)}")
    m = int(n_context_frames)
    if not 0 <= m < real.shape[1]:
        raise ValueError(f"n_context_frames must be in [0, {real.shape[1] - 1}], got {n_context_frames}")
    same = real[:, m:].to(fake.device) == fake[:, m:]
    return same.double().mean(dim=(0, 2, 3)).cpu()


def foreground_scores(real: torch.Tensor, fake: torch.Tensor, n_context_frames: int) -> dict[str, float]:
    """Token accuracy on the foreground, and foreground shares (see the module docstring).

    The background code of a clip is the most frequent code of its ``m`` context frames.

    Args:
        real, fake: integer ``[B, L, h, w]`` codes with the same shape.
        n_context_frames: ``m`` in ``[1, L − 1]``.

    Returns:
        ``{"foreground_token_accuracy": share of real foreground tokens generated exactly (nan without
        any), "foreground_share": share of generated tokens that are not the background code,
        "real_foreground_share": the same for the real continuation}``.

    Raises:
        ValueError: shapes differ or ``m`` out of range.
    """
    if real.shape != fake.shape or real.ndim != 4:
        raise ValueError(f"real and fake must both be [B, L, h, w], got {tuple(real.shape)} and {tuple(fake.shape)}")
    m = int(n_context_frames)
    if not 1 <= m < real.shape[1]:
        raise ValueError(f"n_context_frames must be in [1, {real.shape[1] - 1}], got {n_context_frames}")
    fake = fake.to(real.device)
    background = real[:, :m].flatten(1).mode(dim=1).values[:, None, None, None]  # [B, 1, 1, 1]
    fg_real, fg_fake = real[:, m:] != background, fake[:, m:] != background
    n_fg = int(fg_real.sum())
    hits = int(((real[:, m:] == fake[:, m:]) & fg_real).sum())
    return {
        "foreground_token_accuracy": hits / n_fg if n_fg else float("nan"),
        "foreground_share": float(fg_fake.double().mean()),
        "real_foreground_share": float(fg_real.double().mean()),
    }


def continuation_quality(
    real_tokens: torch.Tensor,
    fake_tokens: torch.Tensor,
    n_context_frames: int,
    *,
    real_frames: torch.Tensor | None = None,
    fake_frames: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Quality of generated continuations and of the copy-last-frame baseline on the same clips.

    Args:
        real_tokens, fake_tokens: integer ``[N, L, h, w]``; the first ``m`` frames are the shared context.
        n_context_frames: ``m`` in ``[1, L − 1]`` (the baseline needs a last context frame).
        real_frames, fake_frames: optional decoded videos ``uint8 [N, L, H, W, 3]``; with them PSNR and
            SSIM are added for both.

    Returns:
        A dict of floats and per-generated-frame lists (``L − m`` values):
        ``token_accuracy``, ``copy_last_frame_token_accuracy`` and their ``*_per_frame`` lists,
        :func:`foreground_scores` (``foreground_token_accuracy``, ``foreground_share``,
        ``real_foreground_share``) and ``copy_last_frame_foreground_token_accuracy``; with
        frames also ``psnr`` (dB, mean of per-frame PSNRs capped at :data:`PSNR_CAP_DB`), ``ssim``, ``copy_last_frame_psnr``, ``copy_last_frame_ssim`` and
        ``psnr_per_frame``, ``copy_last_frame_psnr_per_frame``; ``num_videos``.

    Raises:
        ValueError: mismatched shapes or ``m`` out of range.
    """
    m = int(n_context_frames)
    if m < 1:
        raise ValueError(f"the copy-last-frame baseline needs n_context_frames >= 1, got {n_context_frames}")
    num_frames = real_tokens.shape[1]
    copy_tokens = copy_last_frame(real_tokens[:, :m], num_frames)
    acc = token_accuracy_per_frame(real_tokens, fake_tokens, m)
    acc_copy = token_accuracy_per_frame(real_tokens, copy_tokens, m)
    out: dict[str, Any] = {
        "num_videos": int(real_tokens.shape[0]),
        "token_accuracy": float(acc.mean()),
        "copy_last_frame_token_accuracy": float(acc_copy.mean()),
        "token_accuracy_per_frame": acc.tolist(),
        "copy_last_frame_token_accuracy_per_frame": acc_copy.tolist(),
    }
    fg, fg_copy = foreground_scores(real_tokens, fake_tokens, m), foreground_scores(real_tokens, copy_tokens, m)
    out.update(fg)
    out["copy_last_frame_foreground_token_accuracy"] = fg_copy["foreground_token_accuracy"]
    if real_frames is not None and fake_frames is not None:
        copy_frames = copy_last_frame(real_frames[:, :m], num_frames)
        model_q = video_quality_metrics(real_frames, fake_frames, n_context_frames=m)
        copy_q = video_quality_metrics(real_frames, copy_frames, n_context_frames=m)
        psnr = psnr_per_frame(real_frames[:, m:], fake_frames[:, m:]).clamp(max=PSNR_CAP_DB)  # (N, L-m)
        psnr_copy = psnr_per_frame(real_frames[:, m:], copy_frames[:, m:]).clamp(max=PSNR_CAP_DB)
        out.update(
            psnr=float(psnr.mean()),
            ssim=model_q["ssim"],
            psnr_per_frame=psnr.mean(dim=0).tolist(),
            copy_last_frame_psnr=float(psnr_copy.mean()),
            copy_last_frame_ssim=copy_q["ssim"],
            copy_last_frame_psnr_per_frame=psnr_copy.mean(dim=0).tolist(),
        )
    return out
