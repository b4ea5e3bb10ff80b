r"""The Inception-v1 I3D network (Kinetics-400) used as the FVD feature network, and its loaders.

Architecture: Carreira & Zisserman, "Quo Vadis, Action Recognition? A New Model and the Kinetics
Dataset" (CVPR 2017, arXiv:1705.07750), with TensorFlow-style ``SAME`` padding. The module and
parameter names follow the PyTorch port ``piergiaj/pytorch-i3d`` (``pytorch_i3d.py``) so that the
checkpoint ``i3d_pretrained_400.pt`` distributed with VideoGPT (``wilson1yan/VideoGPT``,
``videogpt/fvd``) and reused by DIGAN, TATS and ``common_metrics_on_video_quality`` loads with
``strict=True``::

    Conv3d_1a_7x7.conv3d.weight, Conv3d_1a_7x7.bn.{weight,bias,running_mean,running_var,num_batches_tracked}
    Conv3d_2b_1x1.*, Conv3d_2c_3x3.*
    Mixed_3b.{b0,b1a,b1b,b2a,b2b,b3b}.conv3d.weight / .bn.*      (b3a is a parameter-free max-pool)
    Mixed_3c, Mixed_4b … Mixed_4f, Mixed_5b, Mixed_5c             (same layout)
    logits.conv3d.weight [400, 1024, 1, 1, 1], logits.conv3d.bias [400]

That is 3 stem units + 9 inception blocks × 6 units = 57 conv+BN units (6 state-dict entries each,
``num_batches_tracked`` included) plus the 2 logits entries: :data:`NUM_STATE_DICT_KEYS` = 344.

Feature definition (VideoGPT's ``InceptionI3d.forward``): the 400 pre-softmax logits, computed on
the ``[2, 7, 7]`` (stride 1) average-pooled ``Mixed_5c`` map and averaged over the remaining time
positions. For the standard input of 16 frames at 224×224 exactly one position remains, so the
features are the logits of the clip; longer clips (StyleGAN-V's FVD\ :sub:`128` convention) average
the logits of the overlapping temporal windows. Inputs smaller than 9 frames or 193×193 px leave too
little for the ``[2, 7, 7]`` pool and are refused.

Two deliberate compatibility details, both from VideoGPT's copy of the network:

- BatchNorm ``eps = 1e-5`` (piergiaj's original uses ``1e-3``, the TF value). Published FVDs that
  use ``i3d_pretrained_400.pt`` were computed with ``1e-5``; pass ``bn_eps=1e-3`` for the other.
- The ``SAME`` padding of the max-pools pads with zeros (not ``-inf``), as both ports do.
"""

from __future__ import annotations

import logging
import os
import warnings
import zipfile
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "InceptionI3d",
    "Unit3D",
    "InceptionBlock",
    "MaxPool3dSame",
    "NUM_STATE_DICT_KEYS",
    "MIN_FRAMES",
    "MIN_SIZE",
    "load_i3d",
    "load_torchscript_detector",
]

log = logging.getLogger(__name__)

NUM_STATE_DICT_KEYS = 344  # 57 conv+BN units x 6 entries + logits weight + bias
MIN_FRAMES = 9  # ceil(T / 8) >= 2 for the [2, 7, 7] average pool
MIN_SIZE = 193  # ceil(H / 32) >= 7

Triple = tuple[int, int, int]


def _same_padding(size: Sequence[int], kernel: Triple, stride: Triple) -> tuple[int, ...]:
    """TensorFlow ``SAME`` padding for a ``[T, H, W]`` input, in ``F.pad`` order (W, H, T; front, back)."""
    pad: list[int] = []
    for s, k, st in zip(reversed(size), reversed(kernel), reversed(stride)):
        total = max(k - st, 0) if s % st == 0 else max(k - s % st, 0)
        pad += [total // 2, total - total // 2]
    return tuple(pad)


# ============================================================================
# Building blocks
# ============================================================================


class MaxPool3dSame(nn.Module):
    """3-D max-pool with TensorFlow ``SAME`` padding (zero padded). No parameters."""

    def __init__(self, kernel: Triple, stride: Triple):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W)
        x = F.pad(x, _same_padding(x.shape[2:], self.kernel, self.stride))
        return F.max_pool3d(x, self.kernel, self.stride)


class Unit3D(nn.Module):
    """``SAME``-padded 3-D convolution, then BatchNorm (``bn``) and ReLU unless disabled.

    State-dict entries: ``conv3d.weight`` [C_out, C_in, *kernel] (``conv3d.bias`` when ``use_bias``),
    and ``bn.{weight, bias, running_mean, running_var, num_batches_tracked}`` when ``use_batch_norm``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: Triple = (1, 1, 1),
        stride: Triple = (1, 1, 1),
        *,
        activation: bool = True,
        use_batch_norm: bool = True,
        use_bias: bool = False,
        bn_eps: float = 1e-5,
    ):
        super().__init__()
        self.kernel, self.stride, self.activation = tuple(kernel), tuple(stride), activation
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride, padding=0, bias=use_bias)
        self.bn = nn.BatchNorm3d(out_channels, eps=bn_eps, momentum=0.01) if use_batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, T, H, W)
        x = self.conv3d(F.pad(x, _same_padding(x.shape[2:], self.kernel, self.stride)))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.activation else x  # (B, C_out, T', H', W')


class InceptionBlock(nn.Module):
    """Four parallel branches concatenated on channels: 1×1 | 1×1→3×3 | 1×1→3×3 | max-pool→1×1.

    Args:
        in_channels: input channels.
        widths: ``(b0, b1a, b1b, b2a, b2b, b3b)`` output channels; the block outputs
            ``b0 + b1b + b2b + b3b`` channels.
        bn_eps: BatchNorm epsilon.
    """

    def __init__(self, in_channels: int, widths: Sequence[int], bn_eps: float = 1e-5):
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3b = widths
        self.out_channels = w0 + w1b + w2b + w3b
        self.b0 = Unit3D(in_channels, w0, bn_eps=bn_eps)
        self.b1a = Unit3D(in_channels, w1a, bn_eps=bn_eps)
        self.b1b = Unit3D(w1a, w1b, (3, 3, 3), bn_eps=bn_eps)
        self.b2a = Unit3D(in_channels, w2a, bn_eps=bn_eps)
        self.b2b = Unit3D(w2a, w2b, (3, 3, 3), bn_eps=bn_eps)
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, w3b, bn_eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


# ============================================================================
# The network
# ============================================================================

# (name, kind, args): the layer order of the reference network; the names are the state-dict prefixes.
_LAYERS: tuple[tuple[str, str, tuple], ...] = (
    ("Conv3d_1a_7x7", "unit", (3, 64, (7, 7, 7), (2, 2, 2))),
    ("MaxPool3d_2a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Conv3d_2b_1x1", "unit", (64, 64, (1, 1, 1), (1, 1, 1))),
    ("Conv3d_2c_3x3", "unit", (64, 192, (3, 3, 3), (1, 1, 1))),
    ("MaxPool3d_3a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Mixed_3b", "mixed", (192, (64, 96, 128, 16, 32, 32))),
    ("Mixed_3c", "mixed", (256, (128, 128, 192, 32, 96, 64))),
    ("MaxPool3d_4a_3x3", "pool", ((3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", "mixed", (480, (192, 96, 208, 16, 48, 64))),
    ("Mixed_4c", "mixed", (512, (160, 112, 224, 24, 64, 64))),
    ("Mixed_4d", "mixed", (512, (128, 128, 256, 24, 64, 64))),
    ("Mixed_4e", "mixed", (512, (112, 144, 288, 32, 64, 64))),
    ("Mixed_4f", "mixed", (528, (256, 160, 320, 32, 128, 128))),
    ("MaxPool3d_5a_2x2", "pool", ((2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", "mixed", (832, (256, 160, 320, 32, 128, 128))),
    ("Mixed_5c", "mixed", (832, (384, 192, 384, 48, 128, 128))),
)
_FEATURE_CHANNELS = 1024  # channels of Mixed_5c


class InceptionI3d(nn.Module):
    r"""Inception-v1 I3D returning per-clip logits averaged over time (VideoGPT's FVD features).

    Args:
        num_classes: logits (400 for Kinetics-400).
        in_channels: input channels (3 for RGB).
        bn_eps: BatchNorm epsilon (1e-5 as in VideoGPT's copy, see the module docstring).

    Call with ``x``: float ``[B, 3, T, H, W]`` in ``[-1, 1]`` (RGB), ``T >= 9`` and ``H, W >= 193``
    (224×224 and 16 frames is the standard FVD input). Returns float ``[B, num_classes]``: the
    pre-softmax logits averaged over time (and over space when the input is larger than 224 px).
    The module is meant for inference (``eval()``); dropout before the logits is the identity then.

    Raises:
        ValueError: if ``x`` is not 5-D with ``in_channels`` channels or is smaller than the minimum.
    """

    def __init__(self, num_classes: int = 400, in_channels: int = 3, bn_eps: float = 1e-5):
        super().__init__()
        self.num_classes, self.in_channels = num_classes, in_channels
        for name, kind, args in _LAYERS:
            if kind == "unit":
                c_in, c_out, kernel, stride = args
                layer: nn.Module = Unit3D(in_channels if name == "Conv3d_1a_7x7" else c_in, c_out, kernel, stride,
                                          bn_eps=bn_eps)
            elif kind == "pool":
                layer = MaxPool3dSame(*args)
            else:
                layer = InceptionBlock(*args, bn_eps=bn_eps)
            self.add_module(name, layer)
        self.avg_pool = nn.AvgPool3d(kernel_size=(2, 7, 7), stride=(1, 1, 1))
        self.dropout = nn.Dropout(0.5)
        self.logits = Unit3D(_FEATURE_CHANNELS, num_classes, activation=False, use_batch_norm=False, use_bias=True)

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        """``Mixed_5c`` after the ``[2, 7, 7]`` average pool: float ``[B, 1024, T', H', W']``."""
        self._check_input(x)
        for name, _, _ in _LAYERS:
            x = getattr(self, name)(x)
        return self.avg_pool(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.logits(self.dropout(self.extract_features(x)))  # (B, classes, T', H', W')
        return logits.mean(dim=(2, 3, 4))  # (B, classes)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"I3D expects videos [B, {self.in_channels}, T, H, W], got shape {tuple(x.shape)}")
        t, h, w = x.shape[2:]
        if t < MIN_FRAMES or h < MIN_SIZE or w < MIN_SIZE:
            raise ValueError(
                f"I3D input of {t} frames at {h}x{w} is too small: need at least {MIN_FRAMES} frames and "
                f"{MIN_SIZE}x{MIN_SIZE} px (the FVD standard is 16 frames at 224x224)"
            )


# ============================================================================
# Loaders
# ============================================================================


def _is_torchscript_archive(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a TorchScript zip (it has a ``code/`` folder), which ``torch.load`` would hand to
    ``torch.jit.load`` instead of refusing."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in name or name.startswith("code/") for name in z.namelist())


def load_i3d(path: str | os.PathLike, device: str | torch.device = "cpu", *, bn_eps: float = 1e-5) -> InceptionI3d:
    """Build :class:`InceptionI3d` and load a ``piergiaj/pytorch-i3d``-layout state dict (``strict=True``).

    Args:
        path: a ``torch.save``-d state dict, e.g. ``i3d_pretrained_400.pt`` (VideoGPT's Kinetics-400 I3D).
            A ``module.`` prefix (saved from ``DataParallel``) is stripped.
        device: where the network is placed.
        bn_eps: BatchNorm epsilon (see the module docstring).

    Returns:
        The network in ``eval()`` mode with gradients disabled; ``num_classes`` is read from the weights.

    Raises:
        ValueError: if the file is missing, is not a state dict of tensors loadable with
            ``weights_only=True``, or its keys or shapes differ from the architecture.
    """
    if not os.path.isfile(path):
        raise ValueError(f"I3D weights not found at {os.fspath(path)!r}")
    if _is_torchscript_archive(path):
        raise ValueError(
            f"{os.fspath(path)!r} is a TorchScript archive, not a state dict; "
            f"use feature_network=stylegan_v (load_torchscript_detector) for it"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the path and a hint
        raise ValueError(
            f"cannot read I3D weights {os.fspath(path)!r} as a state dict with weights_only=True "
            f"({type(exc).__name__}: {exc}); is it a TorchScript file? use feature_network=stylegan_v for that"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{os.fspath(path)!r} does not hold a state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if "logits.conv3d.weight" not in state:
        raise ValueError(
            f"{os.fspath(path)!r} has no 'logits.conv3d.weight': not a pytorch-i3d InceptionI3d state dict"
        )
    model = InceptionI3d(num_classes=int(state["logits.conv3d.weight"].shape[0]), bn_eps=bn_eps)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"I3D weights {os.fspath(path)!r} do not match the InceptionI3d architecture: {exc}") from exc
    log.info("loaded I3D (%d classes) from %s", model.num_classes, os.fspath(path))
    return model.eval().requires_grad_(False).to(device)


def load_torchscript_detector(path: str | os.PathLike, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """Load StyleGAN-V's TorchScript I3D detector (``i3d_torchscript.pt``).

    The file is the Kinetics-400 I3D of the original TF-Hub FVD, exported to TorchScript by the
    StyleGAN-V authors (``universome/stylegan-v``, ``src/metrics/frechet_video_distance.py``). They
    call it as ``detector(videos, rescale=True, resize=True, return_features=True)`` with ``videos``
    uint8 ``[B, 3, T, H, W]`` in ``[0, 255]``: the detector rescales to ``[-1, 1]`` and resizes to
    224×224 itself, and returns the 400 pre-softmax logits ``[B, 400]``.
    (:class:`~maskflow.metrics.fvd.TorchScriptFeatureExtractor` calls it exactly so.)

    Args:
        path: the TorchScript archive.
        device: where the module is placed.

    Returns:
        The scripted module in ``eval()`` mode.

    Raises:
        ValueError: if the file is missing or is not a TorchScript archive.
    """
    if not os.path.isfile(path):
        raise ValueError(f"TorchScript detector not found at {os.fspath(path)!r}")
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated in torch >= 2.10, but it is the file's format
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*is deprecated", category=DeprecationWarning)
            detector = torch.jit.load(os.fspath(path), map_location=device)
    except Exception as exc:  # noqa: BLE001 - re-raised with the path and a hint
        raise ValueError(
            f"cannot load {os.fspath(path)!r} as TorchScript ({type(exc).__name__}: {exc}); "
            f"is it a state dict? use feature_network=i3d for that"
        ) from exc
    log.info("loaded TorchScript FVD detector from %s", os.fspath(path))
    return detector.eval()
