"""Several masks in one masked pass: what evaluation runs many of on the same prompts.

Evaluating a sweep runs every lambda's circuit and complement, the empty circuit (and M) over
the same prepared batches. One pass per mask pays each pass's fixed cost (Python per layer,
matmuls of few rows) every time. Here a batch's rows are repeated once per mask (row
j * k + i is prompt j under mask i, so rows stay sorted by length for the length split),
mask i owns slots [i * n_slots, (i + 1) * n_slots) of a model whose ablation values and
error means are tiled k times, and the k masks run as one mask over k * n_slots slots. Rows
never interact (causal attention within a row, padding untouched), so each prompt's ld
equals its separate pass within float rounding.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import torch

from maskshare.masks.prepared import PreparedBatch, scatter_rows

MAX_TOKENS = 4096  # padded tokens of one stacked pass (masks x rows x longest row)


def stack_rows(batch: PreparedBatch, k: int, n_slots: int) -> PreparedBatch:
    """`batch` with each row repeated k times in a row, copy i's slots moved to
    [i * n_slots, (i + 1) * n_slots) (padding stays -1)."""

    def rep(t):
        return None if t is None else t.repeat_interleave(k, dim=0)

    offset = (torch.arange(len(batch) * k) % k * n_slots)[:, None]
    slots = rep(batch.slots)
    return PreparedBatch(
        idx=list(range(len(batch) * k)), tokens=rep(batch.tokens),
        attention_mask=rep(batch.attention_mask),
        slots=torch.where(slots >= 0, slots + offset, slots), lengths=rep(batch.lengths),
        answer=rep(batch.answer), counterfactual=rep(batch.counterfactual),
        resid=rep(batch.resid), first_latents=rep(batch.first_latents),
        first_error=rep(batch.first_error),
        ablation_tokens=None if batch.ablation_tokens is None else
        {h: rep(t) for h, t in batch.ablation_tokens.items()},
        own=None if batch.own is None else {h: rep(t) for h, t in batch.own.items()})


def stacked_model(mm, k: int):
    """`mm` over k * n_slots slots: ablation values and error means tiled k times; masks
    expanded per token by a gather (no gradients here, and a one-hot over k * n_slots slots
    would cost k times more)."""
    out = copy.copy(mm)
    out.options = replace(mm.options, expand="gather")
    out.n_slots = mm.n_slots * k
    out.abl = {h: None if v is None else v.repeat(k, 1) for h, v in mm.abl.items()}
    out.err_mean = {h: None if v is None else v.repeat(k, 1) for h, v in mm.err_mean.items()}
    return out


@torch.no_grad()
def stacked_logit_diffs(mm, batches: list[PreparedBatch], masks: list[dict],
                        max_tokens: int = MAX_TOKENS) -> list[np.ndarray]:
    """Per-prompt ld under each of `masks` (in the callers' prompt order, one array per
    mask), as many masks per pass as fit in `max_tokens` padded tokens."""
    if not masks:
        return []
    per_mask: list[list[torch.Tensor]] = [[] for _ in masks]
    for b in batches:
        k_max = max(1, max_tokens // max(1, b.tokens.numel()))
        for start in range(0, len(masks), k_max):
            chunk = masks[start:start + k_max]
            k = len(chunk)
            if k == 1:
                lds = mm.logit_diff(b, chunk[0])[:, None]
            else:
                joint = {h: torch.cat([m[h] for m in chunk]) for h in mm.hooks}
                lds = stacked_model(mm, k).logit_diff(stack_rows(b, k, mm.n_slots), joint)
                lds = lds.view(len(b), k)
            for i in range(k):
                per_mask[start + i].append(lds[:, i])
    return [scatter_rows(batches, vals) for vals in per_mask]
