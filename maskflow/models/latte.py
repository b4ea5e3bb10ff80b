r"""The frame-masked backbone: a Latte-style video transformer over VQ token grids.

One file, in the order of the forward pass (DiT's layout):

1. embedding layers — code embedding, 2×2 patch embedding, per-frame time embedding;
2. the core block — adaLN-Zero, attention either within a frame (spatial) or across frames (temporal);
3. the final layer — adaLN + linear to ``p²·K`` logits per patch;
4. the model — :class:`MaskFlowTransformer`, whose ``forward(..., return_hidden=True)``,
   :meth:`~MaskFlowTransformer.head_rows` and :meth:`~MaskFlowTransformer.project_positions` apply the
   ``K``-way head only at requested token positions (training: masked tokens, eq. 7; sampling:
   still-masked tokens, Algorithm 4 / the tokens that unmask in FM and the baselines);
5. fixed sin-cos position embeddings;
6. size presets — :data:`MODEL_SIZES` and :func:`build_backbone`.

Shapes: ``B`` batch, ``T`` frames, ``h = w`` token grid (``latent_size``), ``p`` patch size,
``N = (h/p)·(w/p)`` patches per frame, ``D`` hidden size, ``K`` codebook size (mask token id ``K``).

The network is :math:`p(\mathbf{x}_1 \mid \mathbf{x}_t, \mathbf{t}; \theta)` of Algorithm 1: it reads
partially masked tokens and one level ``t_f`` per frame, and returns logits over the ``K`` codes for
every position. Each frame's time embedding modulates only that frame's tokens (adaLN), so frames at
different masking levels — clean context next to fully masked frames — share one forward pass
(section 3.3). Sources: the paper section 3.3, 4.2 and appendix A.3; the Latte (Ma et al. 2024) and
DiT (Peebles & Xie 2023) architectures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "BackboneConfig",
    "MaskFlowTransformer",
    "MODEL_SIZES",
    "build_backbone",
    "count_parameters",
]

TIME_CONDITIONING = ("dependent", "independent")
RATE_HEADS = ("none", "exp", "softplus")
LOG_RATE_CLAMP = 30.0  # |log λ| bound of the exponential rate head (λ in [e⁻³⁰, e³⁰]): keeps exp finite


@dataclass
class BackboneConfig:
    """Everything that defines a backbone; ``BackboneConfig(**dataclasses.asdict(cfg))`` round-trips.

    Attributes:
        codebook_size: ``K``, VQ vocabulary size; input vocabulary ``K + 1`` (mask id ``K``), ``K`` outputs.
        latent_size: ``h = w``, side of the token grid of one frame (32 for SD-VQGAN f8 at 256 px).
        patch_size: ``p``, side of the square token patch turned into one transformer token.
        hidden_size: ``D``, transformer width.
        depth: number of blocks; they alternate spatial, temporal, spatial, … (Latte variant 1).
        num_heads: attention heads; must divide ``hidden_size``.
        mlp_ratio: MLP hidden width as a multiple of ``hidden_size``.
        time_conditioning: ``'dependent'`` uses the per-frame ``t``; ``'independent'`` feeds ``t = 0``
            always, a model that never sees ``t`` (eq. 8).
        activation_checkpointing: recompute each block in the backward pass (less memory, ~30 % slower).
        rate_head: Flowception's insertion-rate head (supplementary C.2): ``'none'`` (default; MaskFlow,
            no extra parameter, so MaskFlow checkpoints load strictly and compute exactly as before),
            ``'exp'`` (the paper's exponential activation, ``λ = exp(z)``, ``z`` clamped to ±30) or
            ``'softplus'`` (``λ = log(1 + e^z)``, gentler for large ``z``). With a head, one learnable
            rate token per frame joins the frame's patches and ``forward(..., return_log_rates=True)``
            also returns ``log λ`` of every frame.

    Raises:
        ValueError: naming the setting and its allowed range, for sizes that cannot build a model.
    """

    codebook_size: int
    latent_size: int
    patch_size: int = 2
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    time_conditioning: str = "dependent"
    activation_checkpointing: bool = False
    rate_head: str = "none"

    def __post_init__(self) -> None:
        positive = ("codebook_size", "latent_size", "patch_size", "hidden_size", "depth", "num_heads")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"BackboneConfig.{name} must be an integer >= 1, got {getattr(self, name)}")
        if self.latent_size % self.patch_size:
            raise ValueError(
                f"BackboneConfig.latent_size={self.latent_size} must be a multiple of patch_size={self.patch_size}"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"BackboneConfig.hidden_size={self.hidden_size} must be a multiple of num_heads={self.num_heads}"
            )
        if self.hidden_size % 4:
            raise ValueError(
                f"BackboneConfig.hidden_size must be a multiple of 4 (2-D sin-cos embedding), got {self.hidden_size}"
            )
        if not self.mlp_ratio > 0:
            raise ValueError(f"BackboneConfig.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.time_conditioning not in TIME_CONDITIONING:
            raise ValueError(
                f"BackboneConfig.time_conditioning must be one of {TIME_CONDITIONING}, got {self.time_conditioning!r}"
            )
        if self.rate_head not in RATE_HEADS:
            raise ValueError(f"BackboneConfig.rate_head must be one of {RATE_HEADS}, got {self.rate_head!r}")

    @property
    def grid_size(self) -> int:
        """Patches per side of a frame, ``h / p``."""
        return self.latent_size // self.patch_size


# ================================================================================ embedding layers
class TokenPatchEmbed(nn.Module):
    """Codes ``[B, T, h, w]`` → patch tokens ``[B, T, N, D]``.

    Each code (mask included) gets a learned ``D/2`` vector; the ``p×p`` vectors of a patch are
    concatenated and projected linearly to ``D`` — the discrete analogue of DiT's conv patch embed.
    """

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.p = cfg.patch_size
        self.codes = nn.Embedding(cfg.codebook_size + 1, cfg.hidden_size // 2)
        self.proj = nn.Linear(cfg.patch_size**2 * (cfg.hidden_size // 2), cfg.hidden_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.codes(tokens)  # (B, T, h, w, D/2)
        x = rearrange(x, "b t (gh p1) (gw p2) c -> b t (gh gw) (p1 p2 c)", p1=self.p, p2=self.p)
        return self.proj(x)  # (B, T, N, D)


class TimestepEmbedder(nn.Module):
    r"""Per-frame level ``t`` ``[B, T]`` in [0, 1] → conditioning vectors ``[B, T, D]``.

    A sinusoidal embedding of ``1000·t`` (DiT's frequency range, so a level step of 1e-3 is resolved)
    followed by a two-layer MLP. Each frame is embedded on its own: nothing mixes frames here.
    """

    def __init__(self, hidden_size: int, frequency_size: int = 256) -> None:
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    @staticmethod
    def sinusoid(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
        """``t`` float ``[...]`` → ``[..., dim]`` (cos half, then sin half)."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = (1000.0 * t.float())[..., None] * freqs  # (..., half)
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = self.sinusoid(t, self.frequency_size).to(self.mlp[0].weight.dtype)
        return self.mlp(emb)  # (B, T, D)


# ================================================================================ core block
def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x [B, T, N, D]`` with per-frame ``shift, scale [B, T, D]``."""
    return x * (1 + scale[:, :, None]) + shift[:, :, None]


class Attention(nn.Module):
    """Multi-head self-attention over the second-to-last axis of ``[S, L, D]`` via SDPA."""

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x [S, L, D]``; ``attn_mask`` bool ``[S, 1, L, L]`` (``True`` = may attend) or ``None`` (all)."""
        q, k, v = rearrange(self.qkv(x), "s l (three h d) -> three s h l d", three=3, h=self.num_heads)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (S, H, L, Dh)
        return self.proj(rearrange(out, "s h l d -> s l (h d)"))


class Mlp(nn.Module):
    """Two-layer MLP with tanh-GELU (DiT)."""

    def __init__(self, hidden_size: int, mlp_ratio: float) -> None:
        super().__init__()
        inner = int(hidden_size * mlp_ratio)
        self.fc1 = nn.Linear(hidden_size, inner)
        self.fc2 = nn.Linear(inner, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class MaskFlowBlock(nn.Module):
    """adaLN-Zero transformer block whose attention runs within a frame or across frames.

    ``axis='spatial'``: each frame's ``N`` patches attend to each other — ``b t n d -> (b t) n d``.
    ``axis='temporal'``: each patch position attends across the ``T`` frames — ``b t n d -> (b n) t d``.
    The six modulation vectors come from the frame's own time embedding ``c [B, T, D]``, so a frame's
    shift/scale/gate depend only on its ``t_f``.
    """

    def __init__(self, cfg: BackboneConfig, axis: str) -> None:
        super().__init__()
        if axis not in ("spatial", "temporal"):
            raise ValueError(f"block axis must be 'spatial' or 'temporal', got {axis!r}")
        self.axis = axis
        d = cfg.hidden_size
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(d, cfg.num_heads)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(d, cfg.mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))

    def _attend(self, x: torch.Tensor, frame_attn: torch.Tensor | None = None) -> torch.Tensor:
        b, t, n = x.shape[:3]
        if self.axis == "spatial":  # within a frame: padding frames only ever see themselves
            out = self.attn(rearrange(x, "b t n d -> (b t) n d"))
            return rearrange(out, "(b t) n d -> b t n d", b=b)
        mask = None
        if frame_attn is not None:  # (B, T, T) -> one copy per patch position: ((B N), 1, T, T)
            mask = rearrange(frame_attn[:, None].expand(b, n, t, t), "b n q k -> (b n) 1 q k")
        out = self.attn(rearrange(x, "b t n d -> (b n) t d"), attn_mask=mask)
        return rearrange(out, "(b n) t d -> b t n d", b=b)

    def forward(self, x: torch.Tensor, c: torch.Tensor, frame_attn: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, T, N, D]``, ``c [B, T, D]``; ``frame_attn`` bool ``[B, T, T]`` (frame ``q`` may attend to
        frame ``k``) restricts temporal attention, ``None`` lets every frame attend to every frame."""
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=-1)  # (B, T, D) each
        x = x + gate_a[:, :, None] * self._attend(modulate(self.norm1(x), shift_a, scale_a), frame_attn)  # (B, T, N, D)
        x = x + gate_m[:, :, None] * self.mlp(modulate(self.norm2(x), shift_m, scale_m))
        return x


# ================================================================================ final layer
class FinalLayer(nn.Module):
    """adaLN + linear: ``[B, T, N, D]`` → per-patch logits ``[B, T, N, p²·K]``."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(d, cfg.patch_size**2 * cfg.codebook_size)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))

    def hidden(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The head's input: ``x [B, T, N, D]`` after the final adaLN modulation, ``[B, T, N, D]``."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)  # (B, T, D) each
        return modulate(self.norm(x), shift, scale)  # (B, T, N, D)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.linear(self.hidden(x, c))  # (B, T, N, p²K)


# ================================================================================ the model
class MaskFlowTransformer(nn.Module):
    r"""Latte-style backbone :math:`p(\mathbf{x}_1 \mid \mathbf{x}_t, \mathbf{t}; \theta)` (Algorithm 1, eq. 7).

    Args:
        config: the :class:`BackboneConfig`; kept whole as ``model.config``.

    Every sample of a batch is processed independently (no batch statistics), and the frame count
    ``T`` may change between calls (the temporal position embedding is computed for any ``T``).
    """

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.patch_embed = TokenPatchEmbed(config)
        self.t_embedder = TimestepEmbedder(d)
        axes = ["spatial" if i % 2 == 0 else "temporal" for i in range(config.depth)]
        self.blocks = nn.ModuleList([MaskFlowBlock(config, axis) for axis in axes])
        self.final_layer = FinalLayer(config)
        # fixed, not learned, and not saved: rebuilt from the config
        self.register_buffer("spatial_pos", spatial_sincos_embedding(d, config.grid_size), persistent=False)
        if config.rate_head != "none":  # Flowception (C.2): a rate token per frame and a light head
            self.rate_token = nn.Parameter(torch.zeros(d))
            self.rate_out = nn.Linear(d, 1)
            # the token sits at the centre of the patch grid (C.2's (W/2, H/2, t_i) coordinates)
            centre = torch.full((1,), (config.grid_size - 1) / 2.0)
            pos = torch.cat([_sincos_1d(d // 2, centre), _sincos_1d(d // 2, centre)], dim=1)  # (1, D)
            self.register_buffer("rate_pos", pos[0], persistent=False)
        self.initialize_weights()

    # ------------------------------------------------------------------ properties
    @property
    def codebook_size(self) -> int:
        """``K``: number of output classes."""
        return self.config.codebook_size

    @property
    def mask_token_id(self) -> int:
        """Id of the mask token in the input vocabulary: ``K``."""
        return self.config.codebook_size

    @property
    def has_rate_head(self) -> bool:
        """Whether the model predicts Flowception insertion rates (``config.rate_head != 'none'``)."""
        return self.config.rate_head != "none"

    def initialize_weights(self) -> None:
        """DiT initialisation (Xavier linears, adaLN-Zero: zero modulation and head), code embeddings N(0, 1).

        The code embeddings keep ``nn.Embedding``'s unit scale (as in the authors' code), the scale of the
        sin-cos position embeddings they are added to. DiT's N(0, 0.02) (meant for its class-label table)
        would make a patch's content 2 % of its input next to its position: a model so initialised cannot
        even learn to copy a code from the same position in another frame within hundreds of steps, and
        its samples fill every generated frame with background. With the zeroed head the untrained model
        predicts the uniform distribution (loss ``log K``).
        """

        def _basic(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(_basic)
        nn.init.normal_(self.patch_embed.codes.weight, std=1.0)
        for layer in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        if self.has_rate_head:  # λ starts at exp(0) = 1 (or softplus(0) = log 2) for every frame
            nn.init.normal_(self.rate_token, std=1.0)
            nn.init.zeros_(self.rate_out.weight)
            nn.init.zeros_(self.rate_out.bias)

    # ------------------------------------------------------------------ forward
    def _check_inputs(self, tokens: torch.Tensor, t: torch.Tensor, frame_mask: torch.Tensor | None = None) -> None:
        cfg = self.config
        if tokens.ndim != 4 or tokens.shape[-2:] != (cfg.latent_size, cfg.latent_size):
            raise ValueError(
                f"tokens must have shape [B, T, {cfg.latent_size}, {cfg.latent_size}] (latent_size), "
                f"got {tuple(tokens.shape)}"
            )
        if tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"tokens must be int64 (or int32) code ids, got {tokens.dtype}")
        if t.shape != tokens.shape[:2]:
            raise ValueError(f"t must have shape [B, T] = {tuple(tokens.shape[:2])}, got {tuple(t.shape)}")
        if frame_mask is not None and (frame_mask.shape != tokens.shape[:2] or frame_mask.dtype != torch.bool):
            raise ValueError(
                f"frame_mask must be bool [B, T] = {tuple(tokens.shape[:2])}, got {frame_mask.dtype} {tuple(frame_mask.shape)}"
            )
        # Values are checked on CPU only, where reading them back costs nothing. On an accelerator the
        # check would stall the host once per forward (every sampler step); there the embedding lookup
        # still bounds-checks (a device-side assert). Skipped while compiling (a graph break).
        if not torch.compiler.is_compiling() and tokens.device.type == "cpu":
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi > self.mask_token_id:
                raise ValueError(
                    f"tokens must lie in [0, codebook_size={cfg.codebook_size}] (mask id included), got [{lo}, {hi}]"
                )

    def forward(
        self,
        tokens: torch.Tensor,
        t: torch.Tensor,
        *,
        return_hidden: bool = False,
        frame_mask: torch.Tensor | None = None,
        return_log_rates: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Predict clean-token logits (or the head's input, to project only some positions).

        Args:
            tokens: int64 ``[B, T, h, w]`` in ``[0, K]``; ``K`` marks a masked token.
            t: float ``[B, T]`` in [0, 1], each frame's unmasking level (1 = clean). Ignored (zeros are
                used) when ``config.time_conditioning == 'independent'`` (eq. 8).
            return_hidden: return the hidden states ``[B, T, N, D]`` after the final adaLN modulation,
                before the ``D → p²K`` linear head, instead of the logits; :meth:`project_positions`
                (or :func:`maskflow.losses.fused_masked_cross_entropy`) then turns only the positions
                that are needed into logits. A keyword of ``forward`` (not another method) so that DDP
                and ``torch.compile`` wrappers see the call.
            frame_mask: optional bool ``[B, T]``, ``True`` for real frames, ``False`` for padding (videos of
                different lengths in one batch, supplementary C.2). Temporal attention then runs between
                real frames only: padding frames neither attend to real frames nor are attended to (each
                padding frame attends to itself alone), so real frames' outputs do not depend on the
                padding. ``None``: every frame is real (the MaskFlow path, unchanged).
            return_log_rates: also return Flowception's log insertion rates (needs ``rate_head``).

        Returns:
            Logits ``[B, T, h, w, K]`` in the parameter (or autocast) dtype; with ``return_hidden`` the
            hidden states ``[B, T, N, D]`` in that dtype. With ``return_log_rates`` a pair
            ``(that, log_rates)``, ``log_rates`` float32 ``[B, T]``: ``log λ_i`` of each frame (padding
            frames' values are meaningless).

        Raises:
            ValueError: wrong shapes or dtype; token ids out of ``[0, K]`` (checked for CPU tensors only,
                to keep accelerators free of host syncs; there the embedding's device assert fires);
                ``return_log_rates`` without a rate head.
        """
        self._check_inputs(tokens, t, frame_mask)
        if return_log_rates and not self.has_rate_head:
            raise ValueError("return_log_rates=True needs a backbone built with rate_head='exp' or 'softplus'")
        cfg = self.config
        if cfg.time_conditioning == "independent":
            t = torch.zeros_like(t)
        num_frames = tokens.shape[1]
        x = self.patch_embed(tokens.long())  # (B, T, N, D)
        temporal_pos = temporal_sincos_embedding(cfg.hidden_size, num_frames, device=x.device)  # (T, D)
        x = x + self.spatial_pos.to(x.dtype)[None, None] + temporal_pos.to(x.dtype)[None, :, None]
        if self.has_rate_head:  # one rate token per frame, after the frame's patches: (B, T, N + 1, D)
            rate = (self.rate_token + self.rate_pos).to(x.dtype)[None, None] + temporal_pos.to(x.dtype)[None]  # (1, T, D)
            x = torch.cat([x, rate.expand(x.shape[0], -1, -1)[:, :, None]], dim=2)
        frame_attn = None
        if frame_mask is not None:  # real frames attend to real frames; a padding frame to itself only
            eye = torch.eye(num_frames, dtype=torch.bool, device=x.device)
            frame_attn = (frame_mask[:, :, None] & frame_mask[:, None, :]) | eye  # (B, T, T)
        c = self.t_embedder(t)  # (B, T, D)
        for block in self.blocks:
            if cfg.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, c, frame_attn, use_reentrant=False)
            else:
                x = block(x, c, frame_attn)  # (B, T, N, D)
        log_rates = None
        if self.has_rate_head:
            x, rate = x[:, :, :-1], x[:, :, -1:]  # patches (B, T, N, D), rate tokens (B, T, 1, D)
            if return_log_rates:
                log_rates = self._log_rates(self.rate_out(self.final_layer.hidden(rate, c))[:, :, 0, 0])
        if return_hidden:
            out = self.final_layer.hidden(x, c)  # (B, T, N, D)
        else:
            out = self.final_layer(x, c)  # (B, T, N, p²K)
            p, g = cfg.patch_size, cfg.grid_size
            out = rearrange(out, "b t (gh gw) (p1 p2 k) -> b t (gh p1) (gw p2) k", gh=g, gw=g, p1=p, p2=p)
        return (out, log_rates) if return_log_rates else out

    def _log_rates(self, z: torch.Tensor) -> torch.Tensor:
        """The rate head's activation in log space: ``z [B, T]`` → ``log λ`` float32 ``[B, T]``."""
        z = z.float()
        if self.config.rate_head == "exp":
            return z.clamp(-LOG_RATE_CLAMP, LOG_RATE_CLAMP)
        return F.softplus(z).clamp_min(1e-30).log()

    # ------------------------------------------------------------------ the head at chosen positions
    def head_index(self, hidden: torch.Tensor, index: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Where each token position's head input lives: its patch's row of ``hidden`` and its sub-position.

        One transformer token carries the ``p × p`` token positions of its patch; the head's output for
        a patch is laid out ``(p1 p2 k)`` (see :meth:`forward`), so token position ``(b, f, y, x)``
        reads patch ``(y // p, x // p)`` and the ``K`` weight rows of sub-position
        ``s = (y % p)·p + (x % p)``, i.e. ``linear.weight.view(p², K, D)[s]``.

        Args:
            hidden: ``[B, T, N, D]`` from ``forward(..., return_hidden=True)`` (only its shape is read).
            index: ``(b, f, y, x)``, four int64 ``[M]`` tensors on ``hidden``'s device: batch row,
                frame, token row and token column of each requested position.

        Returns:
            ``(flat, sub)``: int64 ``[M]`` each; ``flat`` indexes ``hidden.reshape(-1, D)`` (the patch's
            row), ``sub`` is in ``[0, p²)`` (all 0 when ``p = 1``).
        """
        p, g = self.config.patch_size, self.config.grid_size
        b, f, y, x = index
        frames, patches = hidden.shape[1], hidden.shape[2]
        if p == 1:
            return (b * frames + f) * patches + y * g + x, torch.zeros_like(y)
        return (b * frames + f) * patches + (y // p) * g + x // p, (y % p) * p + x % p

    def head_rows(self, hidden: torch.Tensor, index: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """The hidden state of the patch that carries each token position, and its sub-position.

        Args:
            hidden: ``[B, T, N, D]`` from ``forward(..., return_hidden=True)``.
            index: ``(b, f, y, x)``, four int64 ``[M]`` tensors (see :meth:`head_index`).

        Returns:
            ``(rows, sub)``: ``rows [M, D]`` (hidden's dtype; differentiable w.r.t. ``hidden``) and
            ``sub`` int64 ``[M]`` in ``[0, p²)``.
        """
        flat, sub = self.head_index(hidden, index)
        return hidden.reshape(-1, hidden.shape[-1]).index_select(0, flat), sub

    def head_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's parameters by sub-position: weight ``[p², K, D]`` and bias ``[p², K]`` (views)."""
        p2, k = self.config.patch_size**2, self.config.codebook_size
        linear = self.final_layer.linear
        return linear.weight.view(p2, k, -1), linear.bias.view(p2, k)

    def project_positions(self, hidden: torch.Tensor, index: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Logits at the requested token positions only: the ``K``-way head applied to ``M`` rows.

        Row ``n`` of the result equals ``forward(tokens, t)[b[n], f[n], y[n], x[n]]`` (same weights,
        same order), but only ``M·K`` logits are computed instead of ``B·T·h·w·K``: each position is
        projected with the ``K`` weight rows of its sub-position (:meth:`head_index`), never with the
        whole patch's ``p²K``. With ``p > 1`` the rows are gathered once sorted by sub-position (one host
        sync for the group sizes), each group is one matrix product written into its slice of one buffer,
        and one row gather puts the logits back in request order.

        Args:
            hidden: ``[B, T, N, D]`` from ``forward(..., return_hidden=True)``.
            index: ``(b, f, y, x)``, four int64 ``[M]`` tensors (see :meth:`head_index`).

        Returns:
            Logits ``[M, K]`` in ``hidden``'s dtype (the linear's output dtype under autocast).
        """
        flat, sub = self.head_index(hidden, index)
        weight, bias = self.head_weights()
        table = hidden.reshape(-1, hidden.shape[-1])  # (B·T·N, D)
        if weight.shape[0] == 1:
            return F.linear(table.index_select(0, flat), weight[0], bias[0])
        order = torch.argsort(sub, stable=True)
        counts = torch.bincount(sub, minlength=weight.shape[0]).tolist()  # one host sync
        rows = table.index_select(0, flat.index_select(0, order))  # (M, D), grouped by sub-position
        groups, back = _groups(counts), torch.argsort(order)  # back: each request's row in sub-position order
        if torch.is_grad_enabled() and (rows.requires_grad or weight.requires_grad):  # out= has no autograd
            parts = [F.linear(rows[a : a + n], weight[s], bias[s]) for s, a, n in groups]
            return (torch.cat(parts) if parts else F.linear(rows, weight[0], bias[0])).index_select(0, back)
        device = rows.device.type  # inference: each group's product written straight into its slice (no concat)
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else rows.dtype
        rows, weight, bias = rows.to(dtype), weight.to(dtype), bias.to(dtype)  # what F.linear would compute in
        out = rows.new_empty((rows.shape[0], weight.shape[1]))
        for s, a, n in groups:
            torch.addmm(bias[s], rows[a : a + n], weight[s].t(), out=out[a : a + n])
        return out.index_select(0, back)


def _groups(counts: list[int]) -> list[tuple[int, int, int]]:
    """``(sub-position, first row, rows)`` of each non-empty group of rows sorted by sub-position."""
    out, start = [], 0
    for s, n in enumerate(counts):
        if n:
            out.append((s, start, n))
        start += n
    return out


# ================================================================================ sin-cos position embeddings
def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """``positions`` float ``[L]`` → ``[L, dim]`` (sin half, then cos half; MAE/DiT convention)."""
    omega = 1.0 / 10_000 ** (torch.arange(dim // 2, dtype=torch.float32, device=positions.device) / (dim / 2.0))
    out = positions.float()[:, None] * omega[None]  # (L, dim/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def spatial_sincos_embedding(dim: int, grid_size: int) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding of a ``grid_size × grid_size`` patch grid: ``[grid_size², dim]``, row-major."""
    coords = torch.arange(grid_size, dtype=torch.float32)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    emb_rows = _sincos_1d(dim // 2, rearrange(rows, "a b -> (a b)"))
    emb_cols = _sincos_1d(dim // 2, rearrange(cols, "a b -> (a b)"))
    return torch.cat([emb_cols, emb_rows], dim=1)  # (N, D)


def temporal_sincos_embedding(dim: int, num_frames: int, device: torch.device | None = None) -> torch.Tensor:
    """Fixed 1-D sin-cos embedding of frame positions ``0 … T-1``: ``[T, dim]``, for any ``T``."""
    return _sincos_1d(dim, torch.arange(num_frames, device=device))


# ================================================================================ sizes
MODEL_SIZES: dict[str, tuple[int, int, int]] = {
    # name: (depth, hidden_size, num_heads); patch size 2 throughout
    "tiny": (2, 64, 4),  # CPU tests and demos
    "small": (4, 128, 4),  # CPU demos
    "S/2": (12, 384, 6),
    "B/2": (12, 768, 12),  # DMLab in the paper
    "L/2": (24, 1024, 16),
    "XL/2": (28, 1152, 16),  # FaceForensics in the paper
}


def build_backbone(size: str, *, codebook_size: int, latent_size: int, **overrides) -> MaskFlowTransformer:
    """Build a backbone from a size preset of :data:`MODEL_SIZES`.

    Args:
        size: ``'tiny'``, ``'small'``, ``'S/2'``, ``'B/2'``, ``'L/2'`` or ``'XL/2'``.
        codebook_size: ``K`` of the tokenizer.
        latent_size: side ``h = w`` of the token grid.
        **overrides: any other :class:`BackboneConfig` field (e.g. ``time_conditioning='independent'``,
            ``activation_checkpointing=True``, or even ``depth``).

    Returns:
        A freshly initialised :class:`MaskFlowTransformer` on the current default device.

    Raises:
        ValueError: unknown size (the known ones are listed) or an invalid/unknown config field.
    """
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {list(MODEL_SIZES)}")
    depth, hidden, heads = MODEL_SIZES[size]
    fields = {"depth": depth, "hidden_size": hidden, "num_heads": heads}
    fields.update(overrides)
    known = set(BackboneConfig.__dataclass_fields__)
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown backbone setting(s) {unknown}; known: {sorted(known)}")
    return MaskFlowTransformer(BackboneConfig(codebook_size=codebook_size, latent_size=latent_size, **fields))


def count_parameters(model: nn.Module, *, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters; works for models built on the ``meta`` device."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
