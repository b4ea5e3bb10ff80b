r"""Convert an original latent-diffusion ``VQModel`` checkpoint (e.g. SD-VQGAN ``vq-f8/model.ckpt``) to diffusers.

Usage::

    python -m maskflow.tokenizers.convert_ldm --ckpt vq-f8/model.ckpt --out models/sd-vqgan-f8 [--resolution 256]

The output directory holds ``config.json`` + ``diffusion_pytorch_model.safetensors`` (``save_pretrained``)
and a ``tokenizer.json``, so both ``DiffusersVQTokenizer.from_pretrained(out)`` and
``maskflow.tokenizers.load_tokenizer(out)`` open it.

The architecture is read off the state dict itself (channel widths, resnets per level, which levels
have attention, latent and codebook sizes); LDM always uses ``GroupNorm(32)``. Key mapping (LDM →
diffusers), with ``n`` resolution levels:

==========================================  ==================================================
``encoder.down.{i}.block.{j}.*``            ``encoder.down_blocks.{i}.resnets.{j}.*``
``encoder.down.{i}.attn.{j}.*``             ``encoder.down_blocks.{i}.attentions.{j}.*``
``encoder.down.{i}.downsample.conv.*``      ``encoder.down_blocks.{i}.downsamplers.0.conv.*``
``{en,de}coder.mid.block_{1,2}.*``          ``{en,de}coder.mid_block.resnets.{0,1}.*``
``{en,de}coder.mid.attn_1.*``               ``{en,de}coder.mid_block.attentions.0.*``
``decoder.up.{i}.block.{j}.*``              ``decoder.up_blocks.{n-1-i}.resnets.{j}.*`` (reversed order)
``decoder.up.{i}.attn.{j}.*``               ``decoder.up_blocks.{n-1-i}.attentions.{j}.*``
``decoder.up.{i}.upsample.conv.*``          ``decoder.up_blocks.{n-1-i}.upsamplers.0.conv.*``
``{en,de}coder.norm_out.*``                 ``{en,de}coder.conv_norm_out.*``
resnet ``nin_shortcut``                     ``conv_shortcut``
attention ``norm``/``q``/``k``/``v``/``proj_out`` (1×1 convs)  ``group_norm``/``to_q``/``to_k``/``to_v``/``to_out.0`` (linear)
``conv_in``, ``conv_out``, ``quant_conv``, ``post_quant_conv``, ``quantize.embedding.weight``: unchanged
``loss.*`` (discriminator, LPIPS)           dropped (count logged)
==========================================  ==================================================

Source of the original layout: ``ldm/modules/diffusionmodules/model.py`` (``Encoder``, ``Decoder``,
``ResnetBlock``, ``AttnBlock``) and ``ldm/models/autoencoder.py`` (``VQModel``) of CompVis/latent-diffusion.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "ldm_vq_config",
    "convert_ldm_state_dict",
    "load_ldm_state_dict",
    "convert_ldm_checkpoint",
    "main",
]

log = logging.getLogger(__name__)

_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_TOP = {"conv_in": "conv_in", "conv_out": "conv_out", "norm_out": "conv_norm_out"}


def _strip_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``first_stage_model.`` prefix of a full latent-diffusion checkpoint, if that is how it is stored."""
    prefix = "first_stage_model."
    if "encoder.conv_in.weight" not in state_dict and f"{prefix}encoder.conv_in.weight" in state_dict:
        return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return state_dict


def _levels(sd: dict[str, torch.Tensor], part: str, kind: str) -> dict[int, set[int]]:
    """``{level: {indices}}`` of ``{part}.{down|up}.{level}.{kind}.{index}.*`` keys."""
    pat = re.compile(rf"^{part}\.(?:down|up)\.(\d+)\.{kind}\.(\d+)\.")
    out: dict[int, set[int]] = {}
    for k in sd:
        m = pat.match(k)
        if m:
            out.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    return out


def ldm_vq_config(
    state_dict: dict[str, torch.Tensor], *, resolution: int = 256, norm_num_groups: int = 32
) -> dict[str, Any]:
    """diffusers ``VQModel`` keyword arguments equivalent to an LDM ``VQModel`` state dict.

    Args:
        state_dict: LDM-layout state dict (``encoder.*``, ``decoder.*``, ``quant_conv.*``, ``quantize.*`` …).
        resolution: training resolution (``ddconfig.resolution``; stored as ``sample_size``, not in the weights).
        norm_num_groups: GroupNorm groups (32 in LDM's ``Normalize``).

    Returns:
        the kwargs dict (JSON-serialisable).

    Raises:
        ValueError: when required keys are missing or the encoder and decoder disagree in depth.
    """
    required = ["encoder.conv_in.weight", "encoder.conv_out.weight", "decoder.conv_out.weight",
                "quant_conv.weight", "quantize.embedding.weight"]  # fmt: skip
    missing = [k for k in required if k not in state_dict]
    if missing:
        raise ValueError(f"not an LDM VQModel state dict: missing {missing}")
    enc_blocks = _levels(state_dict, "encoder", "block")
    dec_blocks = _levels(state_dict, "decoder", "block")
    n = len(enc_blocks)
    if n == 0 or sorted(enc_blocks) != list(range(n)) or sorted(dec_blocks) != list(range(n)):
        raise ValueError(
            f"LDM state dict: encoder levels {sorted(enc_blocks)} and decoder levels {sorted(dec_blocks)} "
            "must both be 0..n-1"
        )
    layers = {len(v) for v in enc_blocks.values()}
    dec_layers = {len(v) for v in dec_blocks.values()}
    if len(layers) != 1 or dec_layers != {next(iter(layers)) + 1}:
        raise ValueError(
            f"LDM state dict: resnets per level must be equal (encoder {sorted(layers)}, decoder "
            f"{sorted(dec_layers)} = encoder + 1)"
        )
    enc_attn, dec_attn = _levels(state_dict, "encoder", "attn"), _levels(state_dict, "decoder", "attn")
    block_out = [int(state_dict[f"encoder.down.{i}.block.0.conv2.weight"].shape[0]) for i in range(n)]
    latent = int(state_dict["encoder.conv_out.weight"].shape[0])
    n_embed, embed_dim = (int(s) for s in state_dict["quantize.embedding.weight"].shape)
    return {
        "in_channels": int(state_dict["encoder.conv_in.weight"].shape[1]),
        "out_channels": int(state_dict["decoder.conv_out.weight"].shape[0]),
        "down_block_types": ["AttnDownEncoderBlock2D" if i in enc_attn else "DownEncoderBlock2D" for i in range(n)],
        "up_block_types": ["AttnUpDecoderBlock2D" if i in dec_attn else "UpDecoderBlock2D" for i in reversed(range(n))],
        "block_out_channels": block_out,
        "layers_per_block": next(iter(layers)),
        "act_fn": "silu",
        "latent_channels": latent,
        "sample_size": int(resolution),
        "num_vq_embeddings": n_embed,
        "norm_num_groups": int(norm_num_groups),
        "vq_embed_dim": embed_dim,
        "scaling_factor": 1.0,
        "norm_type": "group",
        "mid_block_add_attention": "encoder.mid.attn_1.q.weight" in state_dict,
        "lookup_from_codebook": False,
        "force_upcast": False,
    }


def _map_key(key: str, n_levels: int) -> str | None:
    """diffusers name of one LDM key; ``None`` for keys to drop (``loss.*``); raises on unknown keys."""
    if key.startswith("loss."):
        return None
    if key.startswith(("quant_conv.", "post_quant_conv.")) or key == "quantize.embedding.weight":
        return key
    m = re.match(r"^(encoder|decoder)\.(.+)$", key)
    if not m:
        raise KeyError(key)
    part, rest = m.groups()
    parts = rest.split(".")
    head = parts[0]
    if head in _TOP and len(parts) == 2:
        return f"{part}.{_TOP[head]}.{parts[1]}"

    def sub(kind: str, name: str, tail: list[str]) -> str:
        table = _RESNET if kind == "resnets" else _ATTN
        if len(tail) != 2 or tail[0] not in table:
            raise KeyError(key)
        return f"{name}.{table[tail[0]]}.{tail[1]}"

    if head == "mid" and len(parts) >= 2:
        mids = {"block_1": ("resnets", 0), "block_2": ("resnets", 1), "attn_1": ("attentions", 0)}
        if parts[1] not in mids:
            raise KeyError(key)
        kind, j = mids[parts[1]]
        return f"{part}." + sub(kind, f"mid_block.{kind}.{j}", parts[2:])
    if (part, head) in {("encoder", "down"), ("decoder", "up")} and len(parts) >= 4:
        level = int(parts[1])
        blocks = "down_blocks" if part == "encoder" else "up_blocks"
        b = level if part == "encoder" else n_levels - 1 - level  # LDM decoder 'up' runs high→low index
        what = parts[2]
        if what in ("block", "attn") and len(parts) == 6:
            kind = "resnets" if what == "block" else "attentions"
            return f"{part}." + sub(kind, f"{blocks}.{b}.{kind}.{parts[3]}", parts[4:])
        if what in ("downsample", "upsample") and parts[3] == "conv" and len(parts) == 5:
            samplers = "downsamplers" if what == "downsample" else "upsamplers"
            return f"{part}.{blocks}.{b}.{samplers}.0.conv.{parts[4]}"
    raise KeyError(key)


def convert_ldm_state_dict(
    state_dict: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Rename (and reshape) an LDM ``VQModel`` state dict to the diffusers ``VQModel`` layout.

    Attention projections are 1×1 convolutions ``[C, C, 1, 1]`` in LDM and linear layers ``[C, C]`` in
    diffusers; everything else keeps its shape.

    Args:
        state_dict: LDM-layout state dict; a ``first_stage_model.`` prefix (a full LDM checkpoint) is stripped.

    Returns:
        ``(diffusers state dict, counts)`` with counts ``converted`` and ``dropped`` (``loss.*`` keys).

    Raises:
        ValueError: listing keys that are neither known LDM VQModel parameters nor ``loss.*``.
    """
    state_dict = _strip_prefix(state_dict)
    n_levels = len(_levels(state_dict, "encoder", "block"))
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    dropped = 0
    for key, value in state_dict.items():
        try:
            new = _map_key(key, n_levels)
        except (KeyError, ValueError):
            unknown.append(key)
            continue
        if new is None:
            dropped += 1
            continue
        if ".attentions." in new and new.rsplit(".", 1)[-1] == "weight" and value.ndim == 4:
            value = value[:, :, 0, 0]  # 1×1 conv → linear
        out[new] = value
    if unknown:
        shown = ", ".join(unknown[:10]) + (f" … ({len(unknown)} in all)" if len(unknown) > 10 else "")
        raise ValueError(f"unknown keys in the LDM VQModel state dict: {shown}")
    if dropped:
        log.info("dropped %d loss.* keys (discriminator/LPIPS, not needed for tokenizing)", dropped)
    return out, {"converted": len(out), "dropped": dropped}


def load_ldm_state_dict(path: str | Path, *, trust_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """Read the state dict of an LDM checkpoint (``.ckpt``/``.pt`` Lightning file or ``.safetensors``).

    Args:
        path: the checkpoint file.
        trust_checkpoint: allow full unpickling (``weights_only=False``) when the safe loader refuses the
            file; only for checkpoints from a source you trust (unpickling can run code).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file cannot be read safely (and ``trust_checkpoint`` is false) or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the safe unpickler names the offending global
        if not trust_checkpoint:
            raise ValueError(
                f"{path} cannot be read with torch.load(weights_only=True) ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else e}); if you trust its source, pass --trust-checkpoint"
            ) from e
        obj = torch.load(path, map_location="cpu", weights_only=False)
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not any(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path} holds no state dict of tensors")
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def convert_ldm_checkpoint(
    ckpt: str | Path,
    out: str | Path,
    *,
    resolution: int = 256,
    trust_checkpoint: bool = False,
) -> Path:
    """Convert an LDM ``VQModel`` checkpoint into a diffusers ``VQModel`` directory (plus ``tokenizer.json``).

    The converted weights are loaded into ``VQModel(**ldm_vq_config(...))`` with ``strict=True``, so
    any missing, unexpected or mis-shaped key is an error, then written with ``save_pretrained``.

    Args:
        ckpt: the LDM checkpoint (e.g. ``vq-f8/model.ckpt``).
        out: output directory (created).
        resolution: the model's input resolution (256 for vq-f8), recorded as ``sample_size`` and as the
            tokenizer's resolution.
        trust_checkpoint: see :func:`load_ldm_state_dict`.

    Returns:
        the output directory.
    """
    from diffusers import VQModel

    from maskflow.tokenizers.diffusers_vq import DiffusersVQTokenizer

    sd = load_ldm_state_dict(ckpt, trust_checkpoint=trust_checkpoint)
    converted, counts = convert_ldm_state_dict(sd)
    config = ldm_vq_config(_strip_prefix(sd), resolution=resolution)
    model = VQModel(**config)
    model.load_state_dict({k: v.float() for k, v in converted.items()}, strict=True)
    tok = DiffusersVQTokenizer.from_model(model.eval(), resolution, source=f"ldm:{Path(ckpt).name}")
    tok.save(out)
    log.info(
        "converted %s: %d tensors (%d loss.* dropped), K=%d, %d levels → %s (tokenizer %s)",
        ckpt, counts["converted"], counts["dropped"], config["num_vq_embeddings"],
        len(config["block_out_channels"]), out, tok.tokenizer_id,
    )  # fmt: skip
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    p = argparse.ArgumentParser(
        prog="python -m maskflow.tokenizers.convert_ldm",
        description="Convert a latent-diffusion VQModel checkpoint (e.g. vq-f8/model.ckpt) to a diffusers "
        "VQModel directory usable as a maskflow tokenizer.",
    )
    p.add_argument("--ckpt", required=True, help="LDM checkpoint (.ckpt/.pt with a state_dict, or .safetensors)")
    p.add_argument("--out", required=True, help="output directory (diffusers save_pretrained + tokenizer.json)")
    p.add_argument("--resolution", type=int, default=256, help="input resolution in pixels (default 256)")
    p.add_argument(
        "--trust-checkpoint", action="store_true",
        help="allow full unpickling if the safe loader refuses the file (only for trusted files)",
    )  # fmt: skip
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        out = convert_ldm_checkpoint(
            args.ckpt, args.out, resolution=args.resolution, trust_checkpoint=args.trust_checkpoint
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
