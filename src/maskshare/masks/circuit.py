"""The circuit as a thing to read: per slot, the kept latents and what activates them.

For each non-BOS slot with kept latents: (hook, latent id, slot-mean activation, the dataset
tokens that activate the latent most, a Neuronpedia URL when the SAE's config carries
`metadata.neuronpedia_id`), ordered by slot-mean activation. Plus the depth summary: kept
latents per SAE (hook) per slot. Everything is plain JSON.
"""

from __future__ import annotations

import numpy as np
import torch

from maskshare.masks.masking import Masks
from maskshare.masks.slot_stats import SlotStats
from maskshare.model.forward import batches, dtype_for, hook_values
from maskshare.model.sae_set import hook_layer

NEURONPEDIA = "https://www.neuronpedia.org"


def neuronpedia_url(sae, latent: int) -> str | None:
    npid = getattr(getattr(sae.cfg, "metadata", None), "neuronpedia_id", None)
    return f"{NEURONPEDIA}/{npid}/{int(latent)}" if npid else None


def kept_latents(masks: Masks) -> dict[str, list[int]]:
    """Distinct latents kept at any non-BOS slot, per hook."""
    return {h: sorted(int(i) for i in torch.nonzero((m[1:] > 0.5).any(0)).flatten())
            for h, m in masks.items()}


@torch.no_grad()
def top_activating_tokens(model, saes: dict, tokens: list[list[int]],
                          token_strs: list[list[str]], latents: dict[str, list[int]],
                          k: int = 5, context: int = 3, batch_size: int = 32) -> dict:
    """For each (hook, latent) in `latents`: the k dataset tokens (non-BOS) where the clean
    model's latent activation is highest: {hook: {latent: [{prompt, pos, token, context,
    before, after, activation}]}}: `context` the `context` tokens up to the firing one,
    `before`/`after` the whole prompt (BOS left out) around it, to show it highlighted.
    One pass of the model, only as deep as the deepest hook."""
    want = {h: torch.as_tensor(v, dtype=torch.long) for h, v in latents.items() if v}
    if not want:
        return {}
    # every non-BOS, non-padding token's activations, rows in (prompt, position) order
    acts: dict[str, list[torch.Tensor]] = {h: [] for h in want}
    where: list[tuple[int, int]] = []
    dtype = dtype_for("top_tokens")
    for batch in batches(model, tokens, batch_size=batch_size, order="shortest", dtype=dtype,
                         pad=0):
        cache = hook_values(model, batch.tokens, list(want), batch.attention_mask, dtype)
        for h, ids in want.items():
            a = saes[h].encode(cache[h].float())[..., ids]  # [B, P, n]
            acts[h] += [a[b, 1:int(n)].float() for b, n in enumerate(batch.lengths)]
        where += [(int(i), p) for i, n in zip(batch.idx, batch.lengths, strict=True)
                  for p in range(1, int(n))]
    order = sorted(range(len(where)), key=where.__getitem__)
    where = [where[j] for j in order]
    out: dict = {}
    for h, ids in want.items():
        a = torch.cat(acts[h])[torch.as_tensor(order, dtype=torch.long)]  # [T, n]
        out[h] = {}
        if a.shape[0] == 0:
            out[h] = {int(lat): [] for lat in ids}
            continue
        # highest first; ties to the earlier prompt, then the earlier position (stable)
        top = np.argsort(-a.numpy(), axis=0, kind="stable")[:k]
        for j, lat in enumerate(ids.tolist()):
            rows = []
            for t in top[:, j].tolist():
                v = float(a[t, j])
                if v <= 0:
                    break
                i, pos = where[t]
                strs = token_strs[i]
                rows.append({"prompt": i, "pos": pos, "token": strs[pos],
                             "context": "".join(strs[max(1, pos - context):pos + 1]),
                             "before": "".join(strs[1:pos]), "after": "".join(strs[pos + 1:]),
                             "activation": v})
            out[h][lat] = rows
    return out


def circuit_summary(masks: Masks, saes: dict, stats: SlotStats | None = None,
                    top_tokens: dict | None = None, slot_names: list[str] | None = None,
                    max_per_slot: int | None = None) -> dict:
    """The readable circuit: per slot the kept latents; depth table; totals."""
    hooks = list(masks)
    n_slots = masks[hooks[0]].shape[0]
    slots = []
    depth = {h: [0] * n_slots for h in hooks}
    for s in range(1, n_slots):
        rows = []
        for h in hooks:
            ids = torch.nonzero(masks[h][s] > 0.5).flatten().tolist()
            depth[h][s] = len(ids)
            mean = stats.hooks[h].latent_mean[s] if stats is not None and h in stats.hooks else None
            for lat in ids:
                rows.append({
                    "hook": h, "layer": hook_layer(h), "latent": int(lat),
                    "mean_activation": None if mean is None else float(mean[lat]),
                    "top_tokens": (top_tokens or {}).get(h, {}).get(int(lat), []),
                    "neuronpedia": neuronpedia_url(saes[h], lat) if h in saes else None,
                })
        if not rows:
            continue
        rows.sort(key=lambda r: -(r["mean_activation"] or 0.0))
        entry = {"slot": s, "n_kept": len(rows),
                 "latents": rows if max_per_slot is None else rows[:max_per_slot]}
        if slot_names is not None and s < len(slot_names):
            entry["name"] = slot_names[s]
        if stats is not None:
            entry["n_train_tokens"] = int(stats.counts[s])
        slots.append(entry)
    kept = {h: int((masks[h][1:] > 0.5).sum()) for h in hooks}
    return {
        "hooks": hooks,
        "layers": [hook_layer(h) for h in hooks],
        "n_slots": int(n_slots),
        "slots": slots,
        "depth": {"hooks": hooks, "per_slot": {h: depth[h][1:] for h in hooks},
                  "slot_ids": list(range(1, n_slots)), "total_per_hook": kept},
        "triples": int(sum(kept.values())),
        "distinct_latents": int(sum(len(v) for v in kept_latents(masks).values())),
    }


def latents_from_summary(summary: dict) -> dict[str, list[int]]:
    """(hook -> latents) listed in a circuit summary, for `top_activating_tokens`."""
    out: dict[str, set] = {}
    for s in summary["slots"]:
        for r in s["latents"]:
            out.setdefault(r["hook"], set()).add(r["latent"])
    return {h: sorted(v) for h, v in out.items()}
