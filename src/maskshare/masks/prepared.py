"""Prepared batches: what a masked pass reuses across every mask of a prompt set.

`MaskedModel.prepare` groups prompts by length and caches, per batch, everything the masks
cannot change (`PreparedBatch`: padded tokens, slots, answer ids, the clean residual below
the first SAE hook, ...). This module holds that record and what works on it without a
`MaskedModel`: row slices (`sub_batch`), the check of counterfactual prompts for patching,
per-prompt results back in the caller's order (`scatter_rows`) and the clean model's
logit differences (M_clean).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from maskshare.errors import UserError
from maskshare.model.activations import logit_diff
from maskshare.model.forward import batches, dtype_for, final_logit_diffs, final_logits


@dataclass
class PreparedBatch:
    """One length-grouped batch with everything the masks do not change, cached."""

    idx: list[int]                              # positions in the caller's prompt list
    tokens: Int[Tensor, "B P"]
    attention_mask: Int[Tensor, "B P"]
    slots: Int[Tensor, "B P"]                   # -1 on padding
    lengths: Int[Tensor, " B"]
    answer: Int[Tensor, " B"]
    counterfactual: Int[Tensor, " B"]
    resid: Float[Tensor, "B P d_model"]         # clean input to block `start_layer`
    first_latents: Tensor | None = None         # clean enc(x) at the first hook (resid hooks)
    first_error: Tensor | None = None           # clean x - dec(enc(x)) there
    # the ablation's own values per token {hook: [B, P, d_sae]} where it has them (e.g.
    # `counterfactual`: enc(x) of the counterfactual prompts' clean pass); else None
    ablation_tokens: dict[str, Tensor] | None = None
    # the subject's own latents {hook: [B, P, k] indices, -1 where none}
    # (`maskshare.masks.own_latents`); None: nothing is added
    own: dict[str, Tensor] | None = None

    def __len__(self) -> int:
        return len(self.idx)

    @property
    def untouched(self) -> Tensor:
        """[B, P] True at BOS (position 0) and at padding: never spliced."""
        pos0 = torch.zeros_like(self.slots, dtype=torch.bool)
        pos0[:, 0] = True
        return pos0 | (self.slots < 0)


def sub_batch(batch: PreparedBatch, a: int, b: int) -> PreparedBatch:
    """Rows [a, b) of a batch, trimmed to their own longest prompt."""
    P = int(batch.lengths[a:b].max())
    return PreparedBatch(
        idx=batch.idx[a:b], tokens=batch.tokens[a:b, :P],
        attention_mask=batch.attention_mask[a:b, :P], slots=batch.slots[a:b, :P],
        lengths=batch.lengths[a:b], answer=batch.answer[a:b],
        counterfactual=batch.counterfactual[a:b], resid=batch.resid[a:b, :P],
        first_latents=None if batch.first_latents is None else batch.first_latents[a:b, :P],
        first_error=None if batch.first_error is None else batch.first_error[a:b, :P],
        ablation_tokens=None if batch.ablation_tokens is None else
        {h: t[a:b, :P] for h, t in batch.ablation_tokens.items()},
        own=None if batch.own is None else {h: t[a:b, :P] for h, t in batch.own.items()})


def check_counterfactual_tokens(tokens: list[list[int]],
                                cf_tokens: list[list[int]] | None) -> None:
    """Counterfactual patching needs one counterfactual prompt per prompt, of equal length."""
    if cf_tokens is None or len(cf_tokens) != len(tokens):
        raise UserError("ablation 'counterfactual' needs a counterfactual prompt for every "
                        "prompt (a prompt dataset with counterfactual_prompt, e.g. a clean/patch "
                        "file); use slot-mean, global-mean or zero for this dataset")
    bad = [i for i, (t, c) in enumerate(zip(tokens, cf_tokens, strict=True))
           if c is None or len(c) != len(t)]
    if bad:
        raise UserError(f"ablation 'counterfactual' needs counterfactual prompts of the same "
                        f"token length as their prompts; {len(bad)} of {len(tokens)} differ or "
                        f"are missing (first: prompt {bad[0]})")


def scatter_rows(batches: list[PreparedBatch], vals: list[Tensor]) -> np.ndarray:
    """One value per prompt ([B] per batch) back in the caller's prompt order (float64)."""
    n = sum(len(b) for b in batches)
    out = np.full(n, np.nan)
    for b, v in zip(batches, vals, strict=True):
        out[b.idx] = v.detach().double().numpy()
    return out


@torch.no_grad()
def clean_batch_logit_diff(model, batch: PreparedBatch) -> Tensor:
    """ld of the model alone (no SAEs) on one prepared batch [B], computed as every masked
    pass computes it (`final_logit_diff`)."""
    return final_logit_diffs(model, batch, batch.answer, batch.counterfactual,
                             dtype=dtype_for("clean"))


@torch.no_grad()
def clean_logit_diffs(model, tokens: list[list[int]], answer_ids: list[int],
                      counterfactual_ids: list[int], batch_size: int = 32) -> np.ndarray:
    """Per-prompt ld of the model alone (no SAEs), logits only at each final position."""
    out = np.full(len(tokens), np.nan)
    dtype = dtype_for("clean")
    for b in batches(model, tokens, batch_size=batch_size, order="shortest", dtype=dtype, pad=0):
        logits = final_logits(model, b, dtype=dtype)
        ld = logit_diff(logits, [answer_ids[i] for i in b.idx],
                        [counterfactual_ids[i] for i in b.idx])
        out[b.idx] = ld.double().numpy()
    return out
