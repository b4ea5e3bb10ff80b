r"""SD-VQGAN (and any other diffusers ``VQModel``) behind the :class:`VQTokenizer` interface.

The paper tokenizes every frame with the image tokenizer SD-VQGAN f8 of latent diffusion (Rombach et
al., 2022; ``models/first_stage_models/vq-f8``: 16384 codes of dimension 4, 256 px → 32×32 tokens).
diffusers implements the same network as ``diffusers.VQModel``; :data:`SD_VQGAN_F8_CONFIG` is its
configuration and :mod:`maskflow.tokenizers.convert_ldm` turns the original checkpoint into a
diffusers directory that :meth:`DiffusersVQTokenizer.from_pretrained` opens.

Codec (diffusers 0.42 ``VQModel``):

* encode: ``uint8 [N, H, W, 3]`` → float ``[N, 3, H, W]`` in ``[-1, 1]`` → ``model.encode(x).latents``
  (encoder + ``quant_conv``) → ``model.quantize(latents)`` whose third output's last element is the
  nearest-codebook index of every latent vector → ``int64 [N, h, w]``.
* decode: indices → ``model.quantize.get_codebook_entry(indices, (N, h, w, C))`` → ``model.decode(...,
  force_not_quantize=True)`` (``post_quant_conv`` + decoder) → clamp to ``[-1, 1]`` → ``uint8``.

``diffusers`` is imported lazily (only when a model is built or loaded): importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskflow.tokenizers.base import VQTokenizer

__all__ = ["DiffusersVQTokenizer", "SD_VQGAN_F8_CONFIG", "TOKENIZER_JSON"]

log = logging.getLogger(__name__)

TOKENIZER_JSON = "tokenizer.json"
FORMAT_VERSION = 1
_DIST_BUDGET = 1 << 26  # latent vectors × codes per quantize call (the diffusers quantizer builds a full cdist)

#: diffusers ``VQModel`` keyword arguments of latent diffusion's ``vq-f8`` first stage (SD-VQGAN f8).
#:
#: LDM ``ddconfig`` → diffusers: ``ch 128, ch_mult [1, 2, 2, 4]`` → ``block_out_channels [128, 256, 256,
#: 512]``; ``num_res_blocks 2`` → ``layers_per_block 2`` (the decoder gets ``2 + 1`` resnets per level in
#: both); ``attn_resolutions [32]`` at ``resolution 256`` puts self-attention after every resnet of the
#: lowest-resolution level (32×32) of the encoder and decoder → ``AttnDownEncoderBlock2D`` last and
#: ``AttnUpDecoderBlock2D`` first (diffusers ``up_blocks`` run from low to high resolution, LDM ``up``
#: indices the other way round); LDM's mid block (resnet, attention, resnet) → ``mid_block_add_attention``;
#: ``z_channels 4, double_z false`` → ``latent_channels 4``; ``embed_dim 4, n_embed 16384`` →
#: ``vq_embed_dim 4, num_vq_embeddings 16384``; LDM's ``Normalize`` is ``GroupNorm(32, eps=1e-6)`` →
#: ``norm_num_groups 32`` (diffusers uses eps 1e-6 in these blocks too); downsampling is a stride-2 3×3 conv
#: after right/bottom zero padding in both; upsampling is nearest ×2 + 3×3 conv in both.
#: ``dropout 0.0`` has no parameters. ``scaling_factor`` only matters for latent diffusion, not for codes.
SD_VQGAN_F8_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3 + ["AttnDownEncoderBlock2D"],
    "up_block_types": ["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [128, 256, 256, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "sample_size": 256,
    "num_vq_embeddings": 16384,
    "norm_num_groups": 32,
    "vq_embed_dim": 4,
    "scaling_factor": 1.0,
    "norm_type": "group",
    "mid_block_add_attention": True,
    "lookup_from_codebook": False,
    "force_upcast": False,
}


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _move(model: Any, device: torch.device | None, dtype: torch.dtype | None) -> None:
    """``model.to(...)`` with only the arguments given (diffusers warns about ``dtype=None``)."""
    kwargs = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
    if kwargs:
        model.to(**kwargs)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def model_config_dict(model: Any) -> dict[str, Any]:
    """The model's diffusers config as plain JSON (private ``_``-keys dropped, tuples as lists)."""
    return _jsonable({k: v for k, v in dict(model.config).items() if not k.startswith("_")})


def weights_digest(model: torch.nn.Module) -> str:
    """16-hex-digit sha256 of every parameter and buffer (name, dtype, shape, bytes), in state-dict order."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


class DiffusersVQTokenizer(VQTokenizer):
    """A diffusers ``VQModel`` as a frame tokenizer (``kind = "diffusers_vq"``).

    Build it with :meth:`from_pretrained` (a diffusers directory or hub id), :meth:`from_model` (a model
    in memory) or :meth:`load` (a directory written by :meth:`save`).

    Args:
        model: a diffusers ``VQModel`` (anything with ``encode``, ``quantize``, ``decode`` and a ``config``
            holding ``block_out_channels``, ``num_vq_embeddings``, ``vq_embed_dim``/``latent_channels``).
        resolution: square input size ``H = W`` in pixels, a multiple of the downsampling factor
            ``2 ** (len(block_out_channels) - 1)``.
        source: where the weights came from (path or hub id); part of :attr:`config`.
        subfolder: the subfolder of ``source`` the model was read from, if any.
        weights_sha256: digest of the weights as loaded (computed from ``model`` when ``None``).
        batch_size: frames per forward pass in :meth:`encode` and :meth:`decode`.
        autocast: run encoder and decoder under bf16 autocast when the model is on CUDA (the codebook
            search always runs in float32).

    Raises:
        ValueError: if ``model`` does not look like a ``VQModel`` or ``resolution`` does not fit it.
    """

    kind = "diffusers_vq"

    def __init__(
        self,
        model: Any,
        *,
        resolution: int = 256,
        source: str = "in-memory",
        subfolder: str | None = None,
        weights_sha256: str | None = None,
        batch_size: int = 16,
        autocast: bool = False,
    ):
        cfg = getattr(model, "config", None)
        missing = [a for a in ("encode", "decode", "quantize") if not hasattr(model, a)]
        if cfg is None or missing or "block_out_channels" not in cfg or "num_vq_embeddings" not in cfg:
            raise ValueError(
                f"diffusers_vq: expected a diffusers VQModel, got {type(model).__name__}"
                + (f" (missing {missing})" if missing else "")
            )
        if batch_size < 1:
            raise ValueError(f"diffusers_vq: batch_size must be >= 1, got {batch_size}")
        self.downsample = 2 ** (len(cfg["block_out_channels"]) - 1)
        if resolution < self.downsample or resolution % self.downsample:
            raise ValueError(
                f"diffusers_vq: resolution must be a positive multiple of the model's downsampling factor "
                f"{self.downsample}, got {resolution}"
            )
        self.model = model.eval().requires_grad_(False)
        self.model.quantize.float()  # the nearest-code search must not run in reduced precision
        self.resolution = int(resolution)
        self.latent_size = self.resolution // self.downsample
        self.codebook_size = int(cfg["num_vq_embeddings"])
        self.embed_dim = int(cfg.get("vq_embed_dim") or cfg["latent_channels"])
        self.source = str(source)
        self.subfolder = subfolder
        self.batch_size = int(batch_size)
        self.autocast = bool(autocast)
        self._weights_sha256 = weights_sha256

    # ------------------------------------------------------------ constructors
    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | Path,
        *,
        subfolder: str | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        resolution: int = 256,
        batch_size: int = 16,
        autocast: bool = False,
    ) -> DiffusersVQTokenizer:
        """Load a ``VQModel`` with ``diffusers.VQModel.from_pretrained``.

        Args:
            path_or_id: a local diffusers directory (``config.json`` + weights, e.g. written by
                :mod:`maskflow.tokenizers.convert_ldm`) or a hub id (needs network access).
            subfolder: subfolder of ``path_or_id`` holding the model (e.g. ``"vqvae"``).
            device: where to run; ``None`` = CUDA when available, else CPU.
            dtype: weight dtype for encoder/decoder (e.g. ``torch.bfloat16``); ``None`` keeps float32.
                The codebook stays float32.
            resolution: input frame size in pixels.
            batch_size: frames per forward pass.
            autocast: bf16 autocast on CUDA.

        Returns:
            the tokenizer; its :attr:`config` records ``path_or_id``, ``subfolder``, the model config and a
            digest of the weights as loaded (before any ``dtype`` cast).

        Raises:
            ValueError: on a resolution that does not fit the model.
            OSError: from diffusers when the directory/hub id cannot be read.
        """
        from diffusers import VQModel

        kwargs: dict[str, Any] = {"subfolder": subfolder} if subfolder else {}
        # low_cpu_mem_usage needs `accelerate`, which is not a dependency
        model = VQModel.from_pretrained(str(path_or_id), low_cpu_mem_usage=False, **kwargs)
        digest = weights_digest(model)
        _move(model, torch.device(device) if device is not None else _default_device(), dtype)
        return cls(
            model, resolution=resolution, source=str(path_or_id), subfolder=subfolder, weights_sha256=digest,
            batch_size=batch_size, autocast=autocast,
        )  # fmt: skip

    @classmethod
    def from_model(
        cls,
        vq_model: Any,
        resolution: int,
        *,
        source: str = "in-memory",
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int = 16,
        autocast: bool = False,
    ) -> DiffusersVQTokenizer:
        """Wrap a ``VQModel`` already in memory (moved to ``device``/``dtype`` when given).

        Args:
            vq_model: the model.
            resolution: input frame size in pixels.
            source: a description of where the weights came from (recorded in :attr:`config`).
            device: target device; ``None`` leaves the model where it is.
            dtype: target weight dtype; ``None`` leaves it.
            batch_size: frames per forward pass.
            autocast: bf16 autocast on CUDA.
        """
        digest = weights_digest(vq_model) if hasattr(vq_model, "state_dict") else None
        _move(vq_model, torch.device(device) if device is not None else None, dtype)
        return cls(
            vq_model, resolution=resolution, source=source, weights_sha256=digest, batch_size=batch_size,
            autocast=autocast,
        )  # fmt: skip

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> DiffusersVQTokenizer:
        """Move the model to ``device`` and/or cast encoder/decoder to ``dtype`` (the codebook stays float32).

        Returns:
            ``self``. The tokenizer id does not change (it describes the weights as loaded).
        """
        self.weights_sha256  # noqa: B018 - fix the digest of the weights before a cast
        _move(self.model, torch.device(device) if device is not None else None, dtype)
        self.model.quantize.float()
        return self

    # ----------------------------------------------------------------- identity
    @property
    def device(self) -> torch.device:
        """Device of the model's weights."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the encoder's weights (the compute dtype outside autocast)."""
        return next(self.model.encoder.parameters()).dtype

    @property
    def weights_sha256(self) -> str:
        """Digest of the weights as loaded (see :func:`weights_digest`)."""
        if self._weights_sha256 is None:
            self._weights_sha256 = weights_digest(self.model)
        return self._weights_sha256

    @property
    def config(self) -> dict[str, Any]:
        """``kind``, ``source``, ``subfolder``, sizes, the diffusers model config and the weights digest.

        Runtime settings (device, dtype cast, autocast, batch size) are not part of it; they can change
        codes only at numerical near-ties.
        """
        return {
            "kind": self.kind,
            "source": self.source,
            "subfolder": self.subfolder,
            "resolution": self.resolution,
            "latent_size": self.latent_size,
            "codebook_size": self.codebook_size,
            "model_config": model_config_dict(self.model),
            "weights_sha256": self.weights_sha256,
        }

    def __repr__(self) -> str:
        return (
            f"DiffusersVQTokenizer(source={self.source!r}, K={self.codebook_size}, resolution={self.resolution}, "
            f"latent_size={self.latent_size}, device={self.device}, dtype={self.dtype})"
        )

    # ------------------------------------------------------------------ codec
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _quantize_indices(self, latents: torch.Tensor) -> torch.Tensor:
        """``model.quantize`` on float32 latents ``[B, C, h, w]`` in bounded chunks → ``int64 [B, h, w]``."""
        b, _, hs, ws = latents.shape
        step = max(1, _DIST_BUDGET // (self.codebook_size * hs * ws))
        out = []
        with torch.autocast(latents.device.type, enabled=False):
            for s in range(0, b, step):
                z = latents[s : s + step].float()
                _, _, info = self.model.quantize(z)
                out.append(info[-1].reshape(len(z), hs, ws))
        return torch.cat(out).long()

    def encode(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Tokenize frames with the VQ encoder and the codebook.

        Args:
            frames: ``uint8 [N, H, W, 3]`` RGB, ``H = W = resolution``.

        Returns:
            ``int64 [N, h, w]`` in ``[0, codebook_size)``, ``h = w = latent_size``, on the CPU.

        Raises:
            ValueError: if the shape or dtype is wrong.
        """
        x = self.check_frames(frames)
        out = []
        dev, dt = self.device, self.dtype
        with torch.inference_mode(), self._autocast():
            for s in range(0, len(x), self.batch_size):
                xb = x[s : s + self.batch_size].to(dev, non_blocking=True).permute(0, 3, 1, 2)
                xb = xb.to(dt).div_(127.5).sub_(1.0)  # [-1, 1], as the VQGAN was trained
                latents = self.model.encode(xb).latents  # (B, C, h, w)
                out.append(self._quantize_indices(latents).cpu())
        if not out:
            return torch.empty(0, self.latent_size, self.latent_size, dtype=torch.long)
        return torch.cat(out)

    def decode(self, indices: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Reconstruct frames from code indices with the codebook and the VQ decoder.

        Args:
            indices: integer ``[N, h, w]`` in ``[0, codebook_size]`` (the mask id ``K`` decodes as code 0).

        Returns:
            ``uint8 [N, H, W, 3]`` on the CPU.

        Raises:
            ValueError: on a wrong shape, a float dtype, or an index outside ``[0, K]``.
        """
        idx = self.check_indices(indices)
        out = []
        dev, dt = self.device, self.dtype
        with torch.inference_mode(), self._autocast():
            for s in range(0, len(idx), self.batch_size):
                ib = idx[s : s + self.batch_size].to(dev)
                shape = (len(ib), self.latent_size, self.latent_size, self.embed_dim)
                quant = self.model.quantize.get_codebook_entry(ib.reshape(-1), shape).to(dt)  # (B, C, h, w)
                if getattr(self.model.config, "lookup_from_codebook", False):
                    # VQModel.decode would treat its input as indices here: run its non-lookup branch by hand
                    q2 = self.model.post_quant_conv(quant)
                    spatial = quant if self.model.config.norm_type == "spatial" else None
                    img = self.model.decoder(q2, spatial)
                else:
                    img = self.model.decode(quant, force_not_quantize=True).sample
                img = ((img.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
                out.append(img.permute(0, 2, 3, 1).cpu())
        if not out:
            return torch.empty(0, self.resolution, self.resolution, 3, dtype=torch.uint8)
        return torch.cat(out).contiguous()

    # ------------------------------------------------------------- persistence
    def save(self, directory: str | Path) -> Path:
        """``model.save_pretrained(directory)`` plus ``tokenizer.json`` (kind, resolution, source, config, id).

        Returns:
            the directory, which :meth:`load` and :func:`maskflow.tokenizers.load_tokenizer` open.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(d))
        meta = {
            "kind": self.kind,
            "format_version": FORMAT_VERSION,
            "resolution": self.resolution,
            "source": self.source,
            "subfolder": self.subfolder,
            "batch_size": self.batch_size,
            "tokenizer_id": self.tokenizer_id,
            "config": self.config,
        }
        (d / TOKENIZER_JSON).write_text(json.dumps(meta, indent=2) + "\n")
        return d

    @classmethod
    def load(
        cls,
        directory: str | Path,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int | None = None,
        autocast: bool = False,
    ) -> DiffusersVQTokenizer:
        """Open a directory written by :meth:`save` (or by ``convert_ldm``), keeping the recorded ``source``.

        Args:
            directory: the directory.
            device, dtype, batch_size, autocast: as in :meth:`from_pretrained` (``batch_size`` defaults to
                the saved one).

        Raises:
            FileNotFoundError: without ``tokenizer.json``.
            ValueError: if it records another kind of tokenizer.
        """
        d = Path(directory)
        meta_path = d / TOKENIZER_JSON
        if not meta_path.is_file():
            raise FileNotFoundError(f"diffusers_vq: {meta_path} not found (not a saved DiffusersVQTokenizer)")
        meta = json.loads(meta_path.read_text())
        if meta.get("kind") != cls.kind:
            raise ValueError(f"{meta_path} holds a {meta.get('kind')!r} tokenizer, not {cls.kind!r}")
        tok = cls.from_pretrained(
            d, device=device, dtype=dtype, resolution=int(meta["resolution"]),
            batch_size=int(batch_size or meta.get("batch_size") or 16), autocast=autocast,
        )  # fmt: skip
        tok.source, tok.subfolder = str(meta.get("source", d)), meta.get("subfolder")
        recorded = meta.get("tokenizer_id")
        if recorded and recorded != tok.tokenizer_id:
            log.warning(
                "%s: weights give tokenizer id %s, tokenizer.json records %s (weights changed or saved in "
                "another dtype)", d, tok.tokenizer_id, recorded,
            )  # fmt: skip
        return tok
