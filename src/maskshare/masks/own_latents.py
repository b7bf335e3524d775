"""The subject's own latents: what a fixed circuit cannot keep for an entity it never saw.

A learned circuit is a fixed set of (slot, SAE, latent) triples. An entity's identity sits in
latents that fire for that entity (or a few): a mask trained on other entities has no reason
to keep an unseen one's, and slot-mean ablation replaces them with the training entities'
mean (docs/transfer.md section 6). With `evaluate.own_latents.k` (config
`maskshare.config_selection.OwnLatents`) every circuit the evaluation scores also keeps, at
each prompt's tokens whose role names the entity (its mention), the `k` latents per SAE most
active there in *that prompt's clean pass* (`by: activation`), or those whose clean value is
farthest from what the ablation would set them to (`by: deviation`, |a - ablation value|:
the latents ablation changes most): a recall circuit is a fixed set of task latents
plus the subject's own latents at its mention. The complement ablates them; the reference
passes (M, the empty circuit) do not see them; sizes count the latents they add beyond what
the circuit already keeps there (`added_per_prompt`).

Here: the marks (`marked_tokens`), the indices cached per batch (`top_indices`, in
`PreparedBatch.own`, {hook: [B, P, k]}, -1 where nothing is added), how a per-token mask
takes them (`apply`, by `MaskOptions.own_latents`: keep | ablate | off), whether batches
carry them (`carried`) and the count.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from maskshare.masks.prepared import scatter_rows
from maskshare.model.activations import pad_slots, run_to_deepest

MODES = ("keep", "ablate", "off")


def marked_tokens(roles: Sequence, slots: Sequence[np.ndarray],
                  wanted: Sequence[str]) -> list[np.ndarray]:
    """Per prompt, True at the tokens whose role is in `wanted` (never BOS: slot 0)."""
    out = []
    for r, s in zip(roles, slots, strict=True):
        r, s = np.asarray(r if r is not None else [], dtype=object), np.asarray(s)
        hit = np.zeros(len(s), dtype=bool)
        n = min(len(r), len(s))
        hit[:n] = np.isin(r[:n], list(wanted)) & (s[:n] > 0)
        out.append(hit)
    return out


def ranking(own: tuple) -> str:
    """How an `own` tuple ((k, roles, by) or (marks, k, by)) ranks the own latents; a pair
    (the form before `by` existed) ranks by activation."""
    return own[2] if len(own) > 2 else "activation"


@torch.no_grad()
def top_indices(model, saes: dict, tokens: Tensor, attention_mask: Tensor, marks: Tensor,
                k: int, ablation: dict[str, Tensor | None] | None = None) -> dict[str, Tensor]:
    """{hook: [B, P, k]} indices of the `k` latents most active at each marked token in the
    clean pass of `tokens` (only latents with activation > 0; -1 elsewhere and at unmarked
    tokens). With `ablation` ({hook: [B, P, d_sae]} what the ablation sets each token's
    latents to, None for zero), the `k` whose clean value is farthest from it instead
    (|a - value| > 0: `OwnLatents.by` deviation)."""
    acts = run_to_deepest(model, tokens, list(saes), attention_mask)
    out = {}
    for h, sae in saes.items():
        a = sae.encode(acts[h])
        v = None if ablation is None else ablation.get(h)
        score = a if v is None else (a - v).abs()
        vals, idx = score.topk(min(k, a.shape[-1]), dim=-1)
        out[h] = torch.where((vals > 0) & marks[..., None], idx, -1)
    return out


def ranked_from(mm, batch, own: tuple) -> dict[str, Tensor | None] | None:
    """What `top_indices` ranks against for `own`'s ranking: `mm`'s ablation values at each
    of the batch's tokens (deviation), or None (activation)."""
    if ranking(own) != "deviation":
        return None
    return {h: mm.ablation_at(h, batch) for h in mm.hooks}


def batch_indices(mm, batch, own: tuple) -> dict[str, Tensor]:
    """`top_indices` for a batch `MaskedModel.prepare` builds (`PreparedBatch.own`): `own`
    is (marked tokens per prompt, k[, by])."""
    marks = torch.as_tensor(pad_slots([m.astype(np.int64) for m in own[0]], batch.idx,
                                      batch.tokens.shape[1])) > 0
    return top_indices(mm.model, mm.saes, batch.tokens, batch.attention_mask, marks, own[1],
                       ranked_from(mm, batch, own))


def _extra(m: Tensor, idx: Tensor) -> Tensor:
    """[B, P, d] 1.0 at `idx` ([B, P, k], -1 ignored), 0 elsewhere, in m's dtype."""
    valid = (idx >= 0).to(m.dtype)
    return torch.zeros_like(m).scatter_add_(-1, idx.clamp(min=0), valid).clamp_(max=1.0)


def apply(m: Tensor, idx: Tensor | None, mode: str) -> Tensor:
    """The per-token mask `m` [B, P, d] with the own latents `idx` kept (`keep`: a circuit),
    ablated (`ablate`: a complement) or ignored (`off`: the reference passes)."""
    if idx is None or mode == "off":
        return m
    extra = _extra(m, idx)
    return torch.maximum(m, extra) if mode == "keep" else m * (1.0 - extra)


def carried(batches: list) -> bool:
    """True when the batches carry the subject's own latents (`PreparedBatch.own`)."""
    return any(getattr(b, "own", None) is not None for b in batches)


def added_per_prompt(masks: dict[str, Tensor], batches: list) -> np.ndarray | None:
    """Per prompt (in the caller's order), the own latents a binary circuit `masks` adds:
    those at marked tokens that the token's slot does not already keep, summed over tokens
    and SAEs. None when the batches carry no own latents."""
    if not carried(batches):
        return None
    per_batch = []
    for b in batches:
        n = torch.zeros(len(b))
        if b.own is not None:
            slot = b.slots.clamp(min=0)
            for h, idx in b.own.items():
                kept = masks[h][slot[..., None].expand_as(idx), idx.clamp(min=0)] > 0.5
                n += ((idx >= 0) & ~kept).sum(dim=(1, 2)).float()
        per_batch.append(n)
    return scatter_rows(batches, per_batch)
