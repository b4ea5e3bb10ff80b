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
- computes the ``K``-way output head only where it is needed (``head='masked'``, the default, for a
  backbone with ``forward(..., return_hidden=True)`` and ``project_positions``): :meth:`Denoiser.lazy`
  runs the backbone up to the head's input and returns :class:`HeadLogits`, whose :meth:`HeadLogits.rows`
  projects only the requested token positions (MGM: the still-masked tokens; FM, Diffusion Forcing and
  Rolling Diffusion: the tokens that unmask).
  With guidance the three passes' rows are projected and fused row by row, the same elementwise
  :func:`fuse_guidance` as the dense path. The random numbers drawn and their order are those of the
  dense call, so a seeded sampler gives the same samples with either head (up to the matmul's rounding,
  which on CPU float32 has not changed a sample in the tests);
- counts NFE: one NFE is one forward pass of the backbone over the chunk for one video, so a call on
  ``B`` videos counts 1 and a guidance call on ``3B`` rows counts 3. The count comes from the calls
  actually made, never from a formula.
"""

from __future__ import annotations

import torch

from maskflow.training import unwrap_model

from maskflow.sampling.categorical import uniform
from maskflow.schedules import Scheduler

__all__ = ["Denoiser", "HeadLogits", "fuse_guidance", "HEADS"]

HEADS = ("masked", "dense")


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
        head: ``'masked'`` (default): :meth:`lazy` projects only requested positions when the backbone
            supports it (``project_positions`` on the bare module); ``'dense'``: :meth:`lazy` computes
            every logit (the reference). :meth:`__call__` is always dense.

    Attributes:
        nfe: backbone passes per video so far (see the module docstring).
        calls: backbone calls so far (a guidance call counts 1 here and 3 in ``nfe``).

    Raises:
        ValueError: the model's ``mask_token_id`` is not its ``codebook_size``; an unknown ``head``.
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
        head: str = "masked",
    ) -> None:
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
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
        bare = unwrap_model(model)
        self.head_model = bare if head == "masked" and callable(getattr(bare, "project_positions", None)) else None
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

    def _inputs(self, tokens: torch.Tensor, t: torch.Tensor, n_context: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Rows and levels of the one backbone call (``3B`` rows when guided); draws the partial-pass mask."""
        if self.independent:
            t = torch.zeros_like(t)
        if self.guidance_scale == 0 or n_context == 0:
            return tokens, t, False
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
        return rows_in, torch.cat([t, t_partial, t_uncond], dim=0), True

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
        rows_in, t_in, guided = self._inputs(tokens, t, n_context)
        logits = self._forward(rows_in, t_in)
        self.calls += 1
        self.nfe += rows_in.shape[0] // b
        if not guided:
            return logits[:, n_context:]
        z_cond, z_partial, z_uncond = logits[:, n_context:].chunk(3, dim=0)
        return fuse_guidance(z_cond, z_partial, z_uncond, self.guidance_scale)

    def lazy(self, tokens: torch.Tensor, t: torch.Tensor, n_context: int) -> HeadLogits:
        """Like :meth:`__call__`, but the logits are computed when (and where) they are asked for.

        The backbone runs now (NFE and calls are counted, guidance's random numbers drawn, exactly as
        in :meth:`__call__`); with the masked head it stops at the head's input (``[R, T, N, D]``,
        ``R = B`` or ``3B``), and :meth:`HeadLogits.rows` projects only the requested positions.

        Args:
            tokens, t, n_context: as for :meth:`__call__`.

        Returns:
            :class:`HeadLogits` of the ``T - n_context`` generated frames.
        """
        if self.head_model is None:
            return HeadLogits(self, dense=self(tokens, t, n_context))
        b = tokens.shape[0]
        rows_in, t_in, guided = self._inputs(tokens, t, n_context)
        hidden = self.model(rows_in, t_in, return_hidden=True)  # [R, T, N, D]
        self.calls += 1
        self.nfe += rows_in.shape[0] // b
        return HeadLogits(self, hidden=hidden, n_context=n_context, batch_size=b, guided=guided)


class HeadLogits:
    """The logits of one denoiser call's generated frames, computed on request (see :meth:`Denoiser.lazy`).

    Either wraps dense logits ``[B, F, h, w, K]`` or the head's input ``[R, T, N, D]`` of the backbone
    call (``R = 3B`` when guided), from which only requested rows are projected.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        *,
        dense: torch.Tensor | None = None,
        hidden: torch.Tensor | None = None,
        n_context: int = 0,
        batch_size: int = 0,
        guided: bool = False,
        num_frames: int | None = None,
    ) -> None:
        self.denoiser = denoiser
        self._dense = dense
        self.hidden = hidden
        self.n_context = n_context  # frames of the backbone call before the first of these frames
        self.batch_size = batch_size
        self.guided = guided
        if num_frames is None:
            num_frames = dense.shape[1] if dense is not None else hidden.shape[1] - n_context
        self.num_frames = num_frames

    @property
    def is_dense(self) -> bool:
        """True when every logit was computed (dense head, or a backbone without ``project_positions``)."""
        return self._dense is not None

    def dense(self) -> torch.Tensor:
        """All logits ``[B, F, h, w, K]`` of the generated frames (projects every position if needed)."""
        if self._dense is None:
            size = self.denoiser.head_model.config.latent_size
            shape = (self.batch_size, self.num_frames, size, size)
            rows = self.rows(torch.ones(shape, dtype=torch.bool, device=self.hidden.device).nonzero(as_tuple=True))
            self._dense = rows.view(*shape, rows.shape[-1])
        return self._dense

    def narrow(self, start: int, length: int) -> HeadLogits:
        """The logits of the generated frames ``[start, start + length)`` only (frame 0 of the result is
        frame ``start``), still computed on request; like ``Tensor.narrow`` on the frame dimension.

        Returns:
            :class:`HeadLogits` of ``[B, length, h, w, K]`` logits (the same hidden states or dense logits).

        Raises:
            ValueError: the range is not inside these frames.
        """
        if start < 0 or length < 0 or start + length > self.num_frames:
            raise ValueError(
                f"frames [{start}, {start + length}) are not inside the {self.num_frames} generated frames"
            )
        if self._dense is not None:
            return HeadLogits(self.denoiser, dense=self._dense[:, start : start + length])
        return HeadLogits(self.denoiser, hidden=self.hidden, n_context=self.n_context + start,
                          batch_size=self.batch_size, guided=self.guided, num_frames=length)

    def rows(self, index: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Logits at the positions ``index`` of the generated frames, in the order given.

        Args:
            index: ``(b, f, y, x)``, four int64 ``[M]`` tensors: video, generated frame (0 = the first
                frame after the context), token row and column.

        Returns:
            ``[M, K]``: row ``n`` equals ``denoiser(tokens, t, n_context)[b[n], f[n], y[n], x[n]]``
            (float32 when guided, else the model's dtype).
        """
        b, f, y, x = index
        if self._dense is not None:
            return self._dense[b, f, y, x]
        f = f + self.n_context
        project = self.denoiser.head_model.project_positions
        if not self.guided:
            return project(self.hidden, (b, f, y, x))
        m, bs = b.shape[0], self.batch_size
        z = project(self.hidden, (torch.cat([b, b + bs, b + 2 * bs]), f.repeat(3), y.repeat(3), x.repeat(3)))
        return fuse_guidance(z[:m], z[m : 2 * m], z[2 * m :], self.denoiser.guidance_scale)
