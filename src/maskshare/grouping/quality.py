"""How well slots match known structure: ARI against template positions and roles, purity,
out-of-distribution share per split, and stability across seeds.

- `ari_template`: adjusted Rand index between slots and template pieces (templated items).
- `ari_roles`: the same against span roles; `purity_roles` = sum over slots of the count of
  the slot's most common role, over the number of tokens.
- `stability`: ARI between the slots of two fits that differ only in their seed.

All over non-BOS tokens (BOS is slot 0 in every grouping).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from maskshare.config import GroupingConfig
from maskshare.grouping.base import Assignment, Grouping, token_lists
from maskshare.grouping.registry import make_grouping

if TYPE_CHECKING:
    from maskshare.grouping.features import TokenFeatures


def template_positions(items) -> np.ndarray | None:
    """Template-piece label of each non-BOS token, or None if the items are not templated.

    Equal lengths: the position. Otherwise (one phrasing, a subject span of varying length):
    position before the subject, one label for the subject span, position from the end after.
    """
    toks = token_lists(items)
    lengths = {len(t) for t in toks}
    if len(lengths) == 1:
        return np.concatenate([np.arange(1, len(t)) for t in toks])
    templated = ("variant" in items.columns and set(items["variant"].to_list()) == {"templated"}) \
        or ("phrasing_id" in items.columns and items["phrasing_id"].n_unique() == 1)
    if not templated or "roles" not in items.columns:
        return None
    out = []
    for rs in items["roles"].to_list():
        n = len(rs)
        subj = [i for i, r in enumerate(rs) if r == "subject"]
        a, b = (subj[0], subj[-1]) if subj else (n, n)
        out += [i if i < a else (1000 if i <= b else 2000 + n - 1 - i) for i in range(1, n)]
    return np.asarray(out)


def purity(labels: np.ndarray, truth: np.ndarray) -> float:
    """Share of tokens whose slot's most common true class is their own (NaN if no tokens)."""
    from sklearn.metrics.cluster import contingency_matrix

    if len(labels) == 0:
        return float("nan")
    return float(contingency_matrix(truth, labels).max(axis=0).sum() / len(labels))


def _measures(slots: np.ndarray, items, templ: np.ndarray | None) -> dict[str, Any]:
    from sklearn.metrics import adjusted_rand_score

    out: dict[str, Any] = {"n_prompts": items.height, "n_tokens": int(len(slots))}
    if templ is not None and len(templ) == len(slots):
        out["ari_template"] = float(adjusted_rand_score(templ, slots))
    if "roles" in items.columns:
        roles = np.asarray([r for rs in items["roles"].to_list() for r in rs[1:]])
        if len(roles) == len(slots) and len(roles):
            out["ari_roles"] = float(adjusted_rand_score(roles, slots))
            out["purity_roles"] = purity(slots, roles)
    return out


def _ood_fraction(distance: np.ndarray, slots: np.ndarray, threshold) -> float:
    has = ~np.isnan(distance)
    if threshold is None or not has.any():
        return 0.0
    return float(np.mean(distance[has] > threshold[slots[has]]))


def grouping_quality(grouping: Grouping, assignment: Assignment, items) -> dict[str, Any]:
    """Quality of an assignment, over non-BOS tokens.

    Keys: `n_slots`, `n_slots_used`, `ood_fraction`, `ari_template` (templated items),
    `ari_roles` and `purity_roles` (items with roles), and `by_split` with the same
    measures per value of the `split` column (and per split, the OOD fraction).
    """
    nonbos = [s[1:] for s in assignment.slots]
    flat = np.concatenate(nonbos) if nonbos else np.zeros(0, np.int64)
    out: dict[str, Any] = {"kind": str(grouping.kind), "n_slots": grouping.n_slots,
                           "n_slots_used": int(len(np.unique(flat))),
                           "ood_fraction": assignment.ood_fraction}
    out.update(_measures(flat, items, template_positions(items)))
    if "split" in items.columns and items["split"].n_unique() > 1:
        out["by_split"] = {}
        splits = items["split"].to_list()
        for sp in sorted(set(splits)):
            idx = [i for i, x in enumerate(splits) if x == sp]
            sub = items[idx]
            m = _measures(np.concatenate([nonbos[i] for i in idx]), sub,
                          template_positions(sub))
            m["ood_fraction"] = _ood_fraction(
                np.concatenate([assignment.distance[i] for i in idx]),
                np.concatenate([assignment.slots[i] for i in idx]), grouping.ood_threshold)
            out["by_split"][sp] = m
    return out


def stability(cfg: GroupingConfig, model, items, seeds: tuple[int, int] = (0, 1),
              features: TokenFeatures | None = None) -> float:
    """ARI between the non-BOS slots of two fits that differ only in their seed."""
    from sklearn.metrics import adjusted_rand_score

    labs = []
    for seed in seeds:
        g = make_grouping(cfg, seed).fit(model, items, features)
        a = g.assign(model, items, features)
        labs.append(np.concatenate([s[1:] for s in a.slots]))
    return float(adjusted_rand_score(labs[0], labs[1]))
