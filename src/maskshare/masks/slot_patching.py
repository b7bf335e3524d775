"""Counterfactual patching for pairs of any length, aligned by slot instead of position.

Position-wise patching (ablation `counterfactual`) gives token t of the clean prompt the
latents of token t of the counterfactual prompt, so both must have the same length. Here a
clean token takes the latents of the counterfactual token that holds the same place among
its slot's tokens, counted from the end:

    clean token at position p, slot s, rank r = #(clean tokens of slot s after p)
    cf tokens of slot s: q_0 < q_1 < ... < q_{n-1}
    n > r   -> enc(x_cf)[q_{n-1-r}]                     ("same": the token of equal rank)
    0 < n <= r -> mean of enc(x_cf)[q_j] over all j     ("fewer": the slot's tokens it has)
    n = 0   -> abl[s], the slot mean                    ("none")

A pair whose two slot sequences are equal maps every token to its own position, so it gets
exactly the position-wise result (same padded batch, same bits). BOS (slot 0, position 0)
is never patched: it passes untouched in every masked pass. `alignment_counts` reports how
many clean tokens fell in each case.

The `counterfactual` ablation (`maskshare.masks.ablations.Counterfactual`) uses it when
the counterfactual prompts' slots are known, as a run gives them:

    cf_slots = grouping.assign_tokens(model, cf_tokens)
    batches = mm.prepare(tokens, slots, answers, cfs,
                         ablation_data=PatchPrompts(cf_tokens, cf_slots))
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from maskshare.errors import UserError
from maskshare.model.activations import pad_batch
from maskshare.model.forward import dtype_for, hook_values

CASES = ("same", "fewer", "none")


def align(clean_slots: Sequence[int], cf_slots: Sequence[int]) -> list[tuple[str, object]]:
    """Per clean position: ("same", cf position) | ("fewer", slot) | ("none", slot);
    position 0 (BOS) is ("same", 0)."""
    cf_by_slot: dict[int, list[int]] = {}
    for q, s in enumerate(cf_slots):
        if q > 0:
            cf_by_slot.setdefault(int(s), []).append(q)
    seen: Counter = Counter()
    out: list[tuple[str, object]] = [("same", 0)] * len(clean_slots)
    for p in range(len(clean_slots) - 1, 0, -1):  # from the end: rank = tokens after p
        s = int(clean_slots[p])
        r, qs = seen[s], cf_by_slot.get(s, [])
        seen[s] += 1
        if len(qs) > r:
            out[p] = ("same", qs[len(qs) - 1 - r])
        elif qs:
            out[p] = ("fewer", s)
        else:
            out[p] = ("none", s)
    return out


def alignment_counts(clean_slots: Sequence[Sequence[int]],
                     cf_slots: Sequence[Sequence[int]]) -> dict[str, int]:
    """How many clean non-BOS tokens of all pairs fall in each case (module doc)."""
    c: Counter = Counter()
    for a, b in zip(clean_slots, cf_slots, strict=True):
        c.update(kind for kind, _ in align(a, b)[1:])
    return {k: int(c.get(k, 0)) for k in CASES}


def _aligned(a: Tensor, plan: list[tuple[str, object]], cf_slots: np.ndarray,
             slot_mean: Tensor | None, P: int) -> Tensor:
    """[P, d] for one pair from its counterfactual latents a [Pc, d]."""
    out = a.new_zeros((P, a.shape[-1]))
    same = [(p, q) for p, (k, q) in enumerate(plan) if k == "same"]
    if same:
        ps, qs = zip(*same, strict=True)
        out[list(ps)] = a[list(qs)]
    for p, (k, s) in enumerate(plan):
        if k == "fewer":
            out[p] = a[torch.as_tensor(np.flatnonzero(cf_slots[1:] == s) + 1)].mean(0)
        elif k == "none":
            if slot_mean is None:
                raise UserError("slot-aligned patching needs slot statistics for slots the "
                                "counterfactual prompt lacks")
            out[p] = slot_mean[s]
    return out


@torch.no_grad()
def slot_aligned_latents(mm, cf_tokens: list[list[int]], clean_slots: list[np.ndarray],
                         cf_slots: list[np.ndarray], P: int) -> dict[str, Tensor]:
    """{hook: [B, P, d_sae]}: each clean token's patch latents (module doc), for one batch of
    pairs (`mm` a MaskedModel; `P` the clean batch's padded length)."""
    for t, s in zip(cf_tokens, cf_slots, strict=True):
        if t is None or len(s) != len(t):
            raise UserError("slot-aligned patching needs each counterfactual prompt's tokens and "
                            "its slots (one per token)")
    toks, att, _ = pad_batch(cf_tokens, list(range(len(cf_tokens))))
    cache = hook_values(mm.model, toks, mm.hooks, att, dtype_for("references"),
                        inference=False)
    plans = [align(c, s) for c, s in zip(clean_slots, cf_slots, strict=True)]
    out = {}
    for h in mm.hooks:
        a = mm.saes[h].encode(cache[h].float())
        means = _slot_means(mm, h)
        rows = [_aligned(a[b, :len(cf_tokens[b])], plans[b], np.asarray(cf_slots[b]), means, P)
                for b in range(len(cf_tokens))]
        out[h] = torch.stack(rows)
    return out


def _slot_means(mm, hook: str) -> Tensor | None:
    """The slot-mean ablation value per slot (the global mean for slots without training
    tokens), as MaskedModel's `slot-mean` uses it."""
    if mm.stats is None or hook not in mm.stats.hooks:
        return None
    st = mm.stats.hooks[hook]
    empty = (mm.stats.counts == 0)[:, None]
    return torch.where(empty, st.global_latent_mean[None], st.latent_mean)


__all__ = ["CASES", "align", "alignment_counts", "slot_aligned_latents"]
