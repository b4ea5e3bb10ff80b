r"""The backbone as the samplers see it: time conditioning, partial context guidance, NFE counting.

Every sampler calls a :class:`Denoiser` instead of the model. It

- passes each frame's level ``t`` (``time_conditioning='dependent'``) or ``t = 0`` for every frame
  (``'independent'``, eq. 8);
- with ``guidance_scale`` :math:`\omega \ne 0`, runs partial context guidance (section 4.3): three
  inputs that differ only in their context frames,

  - *cond*: the clean context (``t = 1``),
  - *partial*: the context re-masked at ``partial_context_level`` :math:`t_p` — each context token
    masked independently with probability :math:`1 - \kappa(t_p)`, fresh every step; context ``t = t_p``,
  - *uncond*: the context fully masked, context ``t = 0``,

  concatenated on the batch dimension into **one** backbone call, and fuses the logits as
  :math:`z_{cond} + \omega (z_{partial} - z_{uncond})`. With :math:`\omega = 0` the two extra passes
  are skipped and no random numbers are drawn for them, so the result is exactly the conditional sampler;
- counts NFE: one NFE is one forward pass of the backbone over the chunk for one video, so a call on
  ``B`` videos counts 1 and a guidance call on ``3B`` rows counts 3. The count comes from the calls
  actually made, never from a formula.
"""

from __future__ import annotations

import torch

from maskflow.sampling.categorical import uniform
from maskflow.schedules import Scheduler

__all__ = ["Denoiser", "fuse_guidance"]


def fuse_guidance(z_cond: torch.Tensor, z_partial: torch.Tensor, z_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    r"""Partial context guidance logits :math:`z_{cond} + \omega (z_{partial} - z_{uncond})`, float32.

    Args:
        z_cond, z_partial, z_uncond: logits of one shape ``[..., K]``.
        scale: :math:`\omega`.
    """
    return torch.add(z_cond.float(), z_partial.float() - z_uncond.float(), alpha=scale)


class Denoiser:
    """Wraps a backbone ``model(tokens [B,T,h,w] int64, t [B,T] float32) -> logits [B,T,h,w,K]``.

    Args:
        model: the backbone; needs ``codebook_size`` (``K``) and ``mask_token_id`` (must equal ``K``).
        scheduler: the masking scheduler ``κ`` (for the partial guidance pass).
        guidance_scale: :math:`\\omega`; ``0`` disables guidance.
        partial_context_level: :math:`t_p` of the partial pass, in [0, 1].
        time_conditioning: ``'dependent'`` or ``'independent'``.
        generator: randomness of the partial pass.

    Attributes:
        nfe: backbone passes per video so far (see the module docstring).
        calls: backbone calls so far (a guidance call counts 1 here and 3 in ``nfe``).

    Raises:
        ValueError: the model's ``mask_token_id`` is not its ``codebook_size``.
    """

    def __init__(
        self,
        model,
        *,
        scheduler: Scheduler,
        guidance_scale: float = 0.0,
        partial_context_level: float = 0.3,
        time_conditioning: str = "dependent",
        generator: torch.Generator | None = None,
    ) -> None:
        self.model = model
        self.codebook_size = int(model.codebook_size)
        self.mask_id = int(model.mask_token_id)
        if self.mask_id != self.codebook_size:
            raise ValueError(
                f"model.mask_token_id={self.mask_id} must equal model.codebook_size={self.codebook_size} (mask id = K)"
            )
        self.guidance_scale = float(guidance_scale)
        self.partial_level = float(partial_context_level)
        self.partial_keep = float(scheduler.kappa(torch.tensor(self.partial_level, dtype=torch.float64)))
        self.independent = time_conditioning == "independent"
        self.generator = generator
        self.nfe = 0
        self.calls = 0

    def _forward(self, tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = self.model(tokens, t)
        k = self.codebook_size
        if logits.shape[:-1] != tokens.shape or logits.shape[-1] not in (k, k + 1):
            raise ValueError(
                f"backbone returned logits of shape {tuple(logits.shape)}; expected {tuple(tokens.shape)} + ({k},)"
            )
        return logits[..., :k]  # a head with a mask class: never sample the mask

    def __call__(self, tokens: torch.Tensor, t: torch.Tensor, n_context: int) -> torch.Tensor:
        """Logits of the frames after the context.

        Args:
            tokens: int64 ``[B, T, h, w]`` in ``[0, K]``; frames ``< n_context`` are clean context.
            t: float32 ``[B, T]``, each frame's level (context frames 1).
            n_context: number of leading context frames (the ones guidance re-masks).

        Returns:
            Logits ``[B, T - n_context, h, w, K]`` (float32 when guided, else the model's dtype).
        """
        b = tokens.shape[0]
        if self.independent:
            t = torch.zeros_like(t)
        if self.guidance_scale == 0 or n_context == 0:
            logits = self._forward(tokens, t)
            self.calls += 1
            self.nfe += 1
            return logits[:, n_context:]
        ctx = tokens[:, :n_context]
        masked = uniform(ctx.shape, self.generator, ctx.device) >= self.partial_keep
        partial = tokens.clone()
        partial[:, :n_context] = ctx.masked_fill(masked, self.mask_id)
        uncond = tokens.clone()
        uncond[:, :n_context] = self.mask_id
        t_partial, t_uncond = t.clone(), t.clone()
        if not self.independent:
            t_partial[:, :n_context] = self.partial_level
            t_uncond[:, :n_context] = 0.0
        rows_in = torch.cat([tokens, partial, uncond], dim=0)  # [3B, T, h, w]
        logits = self._forward(rows_in, torch.cat([t, t_partial, t_uncond], dim=0))
        self.calls += 1
        self.nfe += rows_in.shape[0] // b
        z_cond, z_partial, z_uncond = logits[:, n_context:].chunk(3, dim=0)
        return fuse_guidance(z_cond, z_partial, z_uncond, self.guidance_scale)
