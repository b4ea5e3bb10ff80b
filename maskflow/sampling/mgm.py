r"""MGM-style sampling of one chunk (Algorithm 4): confidence-based unmasking in ``S`` passes.

Each step: one backbone pass (with the masked head, :meth:`~maskflow.sampling.guidance.Denoiser.lazy`,
the ``K``-way head runs only at the still-masked tokens: ``[B, n_{i-1}, K]`` logits instead of
``[B, n·h·w, K]``); every masked token of the generated frames draws a code
:math:`\hat x^n \sim \mathrm{Softmax}(\lambda^n/\tau)` and gets the confidence
:math:`C_n = \mathrm{Softmax}(\lambda^n/\tau)_{\hat x^n}`; the most confident masked tokens are committed
so that exactly :math:`n_i` tokens stay masked after step ``i`` (the unmasking schedule,
:mod:`maskflow.sampling.unmasking`). Every video of the batch has the same number of masked tokens at
every step, so the work is batched without host syncs (the masked head's projection adds one per step
when the patch size is above 1: the sizes of its sub-position groups): the masked positions are
kept in a ``[B, n_{i-1}]`` index (a stable sort of the previous step's), only their logits are sampled
(the cost shrinks as the chunk fills), and one ``topk`` picks the tokens to commit. Committed tokens
are final. The masked positions and each frame's unmasked count are updated from the committed tokens
alone, so no step does work that grows with the whole chunk outside the backbone (each frame's level is
read from a table of :math:`\kappa^{-1}` over the possible counts). The last step commits every
remaining token (no confidences, no ranking), so the chunk takes exactly ``S`` passes and no mask token
is left (Algorithm 4's early ``break`` can only trigger after the last step here).

The masked head cannot make an MGM pass as cheap as an FM pass: Algorithm 4 ranks every masked token, so
every step projects and normalises all of them (``2·D·K`` FLOPs and ``K`` exponentials per token), where
FM does so once per token per chunk (``benchmarks/bench_sampling.py`` prints the FLOP ratio).

Optional Gumbel noise (``gumbel_temperature`` :math:`g`): the selection score becomes
:math:`\log C_n + g (1 - \frac{i-1}{S-1}) G_n` with :math:`G_n \sim \mathrm{Gumbel}(0, 1)`, annealed
linearly to 0 (the authors' option); :math:`g = 0` is the plain top-:math:`\lceil\alpha|\mathcal M|\rceil` rule.

Time conditioning (``'dependent'``): each generated frame gets :math:`t_f = \kappa^{-1}(u_f)` where
:math:`u_f` is its current fraction of unmasked tokens. Confidence-based selection unmasks frames at
different rates, and in training a frame at level ``t`` has a share :math:`\kappa(t)` of its tokens
unmasked (Algorithm 1), so this is the level that matches what the model sees — better than the step's
nominal level, which would be wrong for every frame that is ahead or behind. Context frames get
``t = 1``. With ``'independent'`` the :class:`~maskflow.sampling.guidance.Denoiser` passes ``t = 0``.
"""

from __future__ import annotations

import torch
from einops import rearrange

from maskflow.sampling.categorical import sample_categorical, uniform
from maskflow.sampling.guidance import Denoiser
from maskflow.sampling.unmasking import masked_counts
from maskflow.schedules import Scheduler

__all__ = ["sample_chunk_mgm"]


@torch.no_grad()
def sample_chunk_mgm(
    denoiser: Denoiser,
    context: torch.Tensor,
    n_new: int,
    *,
    steps: int,
    scheduler: Scheduler,
    unmasking_schedule: str = "arccos",
    temperature: float = 1.0,
    gumbel_temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Generate ``n_new`` frames after ``context`` in exactly ``steps`` passes (Algorithm 4).

    Args:
        denoiser: the wrapped backbone (time conditioning, guidance, NFE count).
        context: int64 ``[B, c, h, w]`` clean context frames (never modified).
        n_new: frames to generate.
        steps: ``S``, exactly the number of denoiser calls.
        scheduler: ``κ``, whose inverse maps a frame's unmasked share to its level ``t``.
        unmasking_schedule: ``'arccos'``, ``'cosine'`` or ``'linear'``.
        temperature: softmax temperature.
        gumbel_temperature: initial scale of the annealed Gumbel noise on log-confidences (0 = none).
        generator: randomness.

    Returns:
        int64 ``[B, n_new, h, w]`` in ``[0, K)`` (no mask token).
    """
    b, c, hh, ww = context.shape
    mask_id, device = denoiser.mask_id, context.device
    x = torch.cat([context, context.new_full((b, n_new, hh, ww), mask_id)], dim=1)  # [B, c+n, h, w]
    new = x[:, c:]  # view of the generated frames [B, n, h, w]
    t = torch.ones(b, c + n_new, dtype=torch.float32, device=device)
    t[:, c:] = 0.0
    n_tokens, frame_size = n_new * hh * ww, hh * ww
    remaining = masked_counts(n_tokens, steps, unmasking_schedule)
    prev = n_tokens  # masked tokens per video (the same in every video of the batch)
    flat = new.view(b, n_tokens)  # [B, N]; .view (never a copy): writing it writes x
    video = torch.arange(b, device=device)[:, None]  # [B, 1]
    cells = torch.arange(n_tokens, device=device)
    frame_row_col = torch.stack([cells // frame_size, cells % frame_size // ww, cells % ww])  # [3, N]
    # positions of the `prev` still-masked tokens of each video, in increasing order; kept up to date by
    # removing the committed ones, so no step does work that grows with the whole chunk
    pos = cells.expand(b, prev)  # [B, prev]
    unmasked = torch.zeros(b, n_new, dtype=torch.long, device=device)  # unmasked tokens per frame
    # t_f = κ⁻¹(unmasked share of frame f) for every possible count: one table, one lookup per step
    level = scheduler.inverse(torch.arange(frame_size + 1, dtype=torch.float32, device=device) / frame_size)
    for i, n_left in enumerate(remaining):
        head = denoiser.lazy(x, t, c)  # logits of the generated frames [B, n, h, w, K], on request
        n_commit = prev - n_left
        if n_commit == 0:  # nothing left to unmask (fewer tokens than steps): the pass still counts
            continue
        confident = n_left > 0  # the last step commits every remaining token: no ranking
        if head.is_dense:
            rows = rearrange(head.dense(), "b f h w k -> b (f h w) k")
            if prev < n_tokens:  # (at the first step every token is masked: no gather needed)
                rows = rows[video, pos]  # [B, prev, K], whole rows copied
        else:  # the K-way head only at the still-masked positions, in the same [B, prev] order
            index = (video.expand(b, prev).reshape(-1), *frame_row_col.index_select(1, pos.reshape(-1)).unbind(0))
            rows = head.rows(index).view(b, prev, -1)  # [B, prev, K]
        codes, conf = sample_categorical(rows, temperature, generator, with_confidence=confident)  # [B, prev] each
        if not confident:
            flat.scatter_(1, pos, codes)
            prev = 0
            continue
        if gumbel_temperature > 0:
            anneal = 1.0 - i / (steps - 1) if steps > 1 else 1.0
            gumbel = -torch.log(-torch.log(uniform(conf.shape, generator, device).clamp_(min=1e-20)))
            score = conf.log() + (gumbel_temperature * anneal) * gumbel
        else:
            score = conf
        top = score.topk(n_commit, dim=1, sorted=False).indices  # [B, n_commit]: the most confident
        committed = pos.gather(1, top)  # [B, n_commit] positions in the chunk
        flat.scatter_(1, committed, codes.gather(1, top))
        keep = torch.ones(b, prev, dtype=torch.int8, device=device).scatter_(1, top, 0)  # (a sort, not a boolean
        pos = pos.gather(1, keep.sort(dim=1, descending=True, stable=True).indices[:, :n_left])  # index: no host sync)
        prev = n_left
        # levels for the next pass: t_f = κ⁻¹(unmasked share of frame f)
        unmasked.scatter_add_(1, committed // frame_size, torch.ones_like(committed))
        t[:, c:] = level[unmasked]
    return new.clone()
