"""Metrics of a binarised circuit on given (held-out) prompts. Plain, JSON-serialisable dicts.

ld(X) is the mean over prompts of logit(answer) - logit(counterfactual) at each prompt's
final position under variant X:
- M: every SAE spliced in, every latent kept (the run's error term); M_clean: the model alone;
- empty: every latent ablated; circuit: the mask; complement: the mask's complement.

    faithfulness          = (ld(C) - ld(empty)) / (ld(M) - ld(empty))
    faithfulness_vs_clean = (ld(C) - ld(empty)) / (ld(M_clean) - ld(empty))
    completeness          = faithfulness of the complement (low is good)

Size, over the evaluated prompts' non-BOS tokens (slot 0 / BOS is never ablated, so never
counted): `latents_per_token` is the mean over those tokens of the latents kept at the
token's slot, summed over SAEs; `circuit_size` counts kept (slot, SAE, latent) triples in
the slots those tokens actually use (`slots_used` of them); `circuit_size_all_slots` counts
every non-BOS slot; `distinct_latents` counts distinct (SAE, latent) pairs kept anywhere.
A ratio whose denominator is (near) zero, and every metric on zero prompts, is None with a
`note` saying why: never a division by zero.

Batches prepared with the subject's own latents (`maskshare.masks.own_latents`) add them to
every circuit and take them from every complement; the reference passes (M, empty) run
without them, and `latents_per_token` counts what they add (`own_latents_per_token`, also
per prompt in `own_added`), the triples the fixed part only.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

import numpy as np

from maskshare.config import ErrorTerm
from maskshare.masks.masking import (
    MaskedModel,
    Masks,
    PreparedBatch,
    complement,
    empty_masks,
    full_masks,
)
from maskshare.masks.own_latents import added_per_prompt as own_added_per_prompt
from maskshare.masks.own_latents import carried as carries_own

EPS = 1e-6


def _ratio(num: float, den: float) -> float | None:
    if not (math.isfinite(num) and math.isfinite(den)) or abs(den) < EPS:
        return None
    return float(num / den)


def size_metrics(masks: Masks, slots: list[np.ndarray], own_added=None) -> dict:
    """Size of a binary mask, weighted by the tokens of `slots` (one array per prompt);
    `own_added`: per prompt, the subject's own latents the circuit adds (counted per token
    too: `own_latents_per_token`)."""
    hooks = list(masks)
    n_slots = next(iter(masks.values())).shape[0]
    kept_per_slot = sum((masks[h] > 0.5).sum(1).double() for h in hooks)  # [n_slots]
    counts = np.zeros(n_slots)
    for s in slots:
        s = np.asarray(s)[1:]
        s = s[s >= 0]
        counts += np.bincount(s, minlength=n_slots)[:n_slots]
    n_tok = counts.sum()
    used = np.nonzero(counts)[0]
    used = used[used != 0]
    kept_np = kept_per_slot.numpy()
    distinct = 0
    for h in hooks:
        any_kept = (masks[h][1:] > 0.5).any(0)
        distinct += int(any_kept.sum())
    own_n = 0.0 if own_added is None else float(np.sum(own_added))
    own = {} if own_added is None else {"own_latents_per_token": own_n / n_tok if n_tok else None}
    return {
        "latents_per_token": float(((counts * kept_np).sum() + own_n) / n_tok)
        if n_tok else None, **own,
        "circuit_size": int(kept_np[used].sum()),
        "slots_used": int(len(used)),
        "circuit_size_all_slots": int(kept_np[1:].sum()),
        "distinct_latents": distinct,
        "kept_per_hook": {h: int((masks[h][1:] > 0.5).sum()) for h in hooks},
        "n_tokens": int(n_tok),
    }


def reference_lds(mm: MaskedModel, batches: list[PreparedBatch],
                  clean: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-prompt ld under M, M_clean and empty: the same for every mask of a variant, so a
    sweep computes them once and passes them to `evaluate_masks(..., reference=...)`.

    M_clean depends only on the prompts, so `clean` (from `mm.clean_logit_diffs` on the same
    prompts, in the same order) can be shared across variants. With error `clean`, M is the
    model itself (every splice returns its input where the mask is 1), so ld(M) = ld(M_clean)
    and its pass is skipped. The empty circuit and M share their passes
    (`mm.logit_diffs_many`)."""
    return _reference(mm, batches, clean, [])[0]


def _reference(mm: MaskedModel, batches: list[PreparedBatch], clean: np.ndarray | None,
               masks: list[Masks]) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """(reference lds, lds under each of `masks`): the masks, the empty circuit and (unless
    the error term is `clean`) M in the same stacked passes."""
    if clean is None:
        clean = mm.clean_logit_diffs(batches)
    if carries_own(batches) and mm.own_latents != "off":  # references without the own latents
        return _reference(mm.with_options(own_latents="off"), batches, clean, [])[0], \
            mm.logit_diffs_many(batches, masks)
    extra = [empty_masks(mm.saes, mm.n_slots)]
    if mm.error != ErrorTerm.CLEAN:
        extra.append(full_masks(mm.saes, mm.n_slots))
    lds = mm.logit_diffs_many(batches, [*masks, *extra])
    ref = {"ld_model": clean if mm.error == ErrorTerm.CLEAN else lds[len(masks) + 1],
           "ld_model_clean": clean, "ld_ablated": lds[len(masks)]}
    return ref, lds[:len(masks)]


def prompt_slots(batches: list[PreparedBatch]) -> list[np.ndarray]:
    """Each prompt's slot array, in the batches' row order (padding cut off)."""
    return [row[:int(ln)].numpy() for b in batches
            for row, ln in zip(b.slots, b.lengths, strict=True)]


def evaluate_sweep(mm: MaskedModel, batches: list[PreparedBatch], masks: dict[Any, Masks],
                   slots: list[np.ndarray] | None = None,
                   reference: dict[str, np.ndarray] | None = None,
                   clean: np.ndarray | None = None,
                   complements: bool | Collection = True) -> tuple[dict[Any, dict], dict]:
    """`evaluate_masks` for every mask of `masks` ({key: binary mask}, e.g. one per lambda)
    on the same prompts: ({key: its result}, the reference used). Every circuit and
    complement, and the empty circuit and M when `reference` is not given (computed here,
    with `clean` as M_clean when given), run in shared stacked passes. `complements`: True
    (every mask's), False (none: half the cost) or the keys whose complement is scored; a
    mask without one has no `ld_complement` and completeness None."""
    n = sum(len(b) for b in batches)
    if slots is None:
        slots = prompt_slots(batches)
    keys = list(masks)
    if n == 0:
        return {k: _no_prompts(mm, masks[k], slots) for k in keys}, reference or {}
    with_c = set(keys) if complements is True else set(complements or ())
    own = carries_own(batches)
    pairs, at = [], {}
    for k in keys:
        at[k] = len(pairs)
        pairs += [masks[k], complement(masks[k])] if k in with_c and not own else [masks[k]]
    if reference is None:
        reference, lds = _reference(mm, batches, clean, pairs)
    else:
        lds = mm.logit_diffs_many(batches, pairs)
    if own and with_c:  # complements without the own latents: a pass of their own
        comp = [k for k in keys if k in with_c]
        at_c = {k: len(lds) + i for i, k in enumerate(comp)}
        lds += complement_lds(mm, batches, [masks[k] for k in comp])
    out = {}
    for k in keys:
        added = own_added_per_prompt(masks[k], batches) if own else None
        res: dict = {"n_prompts": n, "n_scored": n, "ablation": str(mm.ablation),
                     "error": str(mm.error), **size_metrics(masks[k], slots, added)}
        if added is not None:
            res["own_added"] = [float(x) for x in added]
        ld = {**reference, "ld_circuit": lds[at[k]]}
        if k in with_c:
            ld["ld_complement"] = lds[at_c[k]] if own else lds[at[k] + 1]
        res.update(ld_metrics(ld))
        res["per_prompt"] = {name: [float(x) for x in v] for name, v in ld.items()}
        out[k] = res
    return out, reference


def complement_lds(mm: MaskedModel, batches: list[PreparedBatch], masks: list[Masks]) -> list:
    """Per-prompt ld under the complement of each binary circuit of `masks` (the subject's
    own latents, where the batches carry them, ablated with the rest of the circuit)."""
    mc = mm.with_options(own_latents="ablate") if carries_own(batches) else mm
    return mc.logit_diffs_many(batches, [complement(m) for m in masks])


def with_complement(result: dict, ld_complement) -> dict:
    """`result` (an `evaluate_sweep` entry scored without its complement) with the
    complement's per-prompt ld added and its metrics recomputed (completeness)."""
    ld = {k: np.asarray(v) for k, v in result["per_prompt"].items()}
    ld["ld_complement"] = np.asarray(ld_complement)
    out = {**result, **ld_metrics(ld)}
    out["per_prompt"] = {name: [float(x) for x in v] for name, v in ld.items()}
    return out


def _no_prompts(mm: MaskedModel, masks: Masks, slots: list[np.ndarray]) -> dict:
    keys = ("ld_model", "ld_model_clean", "ld_ablated", "ld_circuit", "ld_complement",
            "faithfulness", "faithfulness_vs_clean", "completeness")
    return {"n_prompts": 0, "n_scored": 0, "ablation": str(mm.ablation),
            "error": str(mm.error), **size_metrics(masks, slots), **{k: None for k in keys},
            "note": "no usable prompts: nothing to evaluate"}


def evaluate_masks(mm: MaskedModel, batches: list[PreparedBatch], masks: Masks,
                   slots: list[np.ndarray] | None = None,
                   reference: dict[str, np.ndarray] | None = None) -> dict:
    """ld under M, M_clean, empty, circuit, complement; F, F vs clean, completeness; size.

    `masks` must be binary (`binarize(theta)`); `slots` are the evaluated prompts' slot
    arrays (for the size); if None they are read from the batches. `reference`: the
    output of `reference_lds` on the same batches, to skip recomputing it. The circuit,
    its complement (and the empty circuit and M) share their passes (`evaluate_sweep`).
    """
    return evaluate_sweep(mm, batches, {0: masks}, slots, reference)[0][0]


def ld_metrics(ld: dict[str, np.ndarray]) -> dict:
    """Mean lds, F, F vs clean and completeness (with a `note` where a ratio is undefined)
    from per-prompt lds (`evaluate_masks`'s `per_prompt`, or a subset of its prompts).
    Without `ld_complement` (its pass skipped) completeness is None and `ld_complement`
    absent."""
    means = {k: float(np.mean(v)) for k, v in ld.items()}
    out: dict = dict(means)
    e = means["ld_ablated"]
    out["faithfulness"] = _ratio(means["ld_circuit"] - e, means["ld_model"] - e)
    out["faithfulness_vs_clean"] = _ratio(means["ld_circuit"] - e, means["ld_model_clean"] - e)
    out["completeness"] = (_ratio(means["ld_complement"] - e, means["ld_model"] - e)
                           if "ld_complement" in means else None)  # complement not scored
    notes = []
    if out["faithfulness"] is None:
        notes.append("ld(M) equals ld(empty): faithfulness undefined")
    if out["faithfulness_vs_clean"] is None:
        notes.append("ld(M_clean) equals ld(empty): faithfulness vs clean undefined")
    if notes:
        out["note"] = "; ".join(notes)
    return out


def subset_metrics(result: dict, idx: list[int], masks: Masks,
                   slots: list[np.ndarray]) -> dict:
    """`evaluate_masks`'s metrics restricted to the prompts `idx` (positions in its prompt
    order; `slots`: theirs), from its per-prompt lds: no further forward pass."""
    ld = {k: np.asarray(v)[idx] for k, v in result["per_prompt"].items()}
    added = result.get("own_added")
    out = {"n_prompts": len(idx), "n_scored": len(idx), "ablation": result["ablation"],
           "error": result["error"],
           **size_metrics(masks, slots, None if added is None else np.asarray(added)[idx])}
    out.update(ld_metrics(ld))
    return out


def curve_area(sizes: list[float], faithfulness: list[float | None],
               x_range: tuple[float, float] | None = None) -> float | None:
    """Mean F over log10(latents per token): the area under the F-versus-size curve divided
    by the width of `x_range` in log10 units (default: the points' own span). F is clipped
    to [0, 1]; outside the points it is held at the nearest point's value. Points whose F
    is None are skipped; fewer than one usable point gives None."""
    pts = sorted((float(s), min(max(float(f), 0.0), 1.0)) for s, f in zip(sizes, faithfulness,
                                                                           strict=True)
                 if f is not None and s is not None and s > 0 and math.isfinite(f))
    if not pts:
        return None
    xs = np.log10([p[0] for p in pts])
    ys = np.array([p[1] for p in pts])
    lo, hi = (xs[0], xs[-1]) if x_range is None else (math.log10(x_range[0]),
                                                       math.log10(x_range[1]))
    if hi - lo < 1e-12:
        return float(np.interp(lo, xs, ys))
    grid = np.linspace(lo, hi, 513)
    return float(np.trapezoid(np.interp(grid, xs, ys), grid) / (hi - lo))


def f_at_size(sizes: list[float], faithfulness: list[float | None], target: float) -> float | None:
    """F read off the curve at `target` latents per token (linear in log size; None outside
    the measured range, where reading it off would be extrapolation)."""
    pts = sorted((float(s), float(f)) for s, f in zip(sizes, faithfulness, strict=True)
                 if f is not None and s is not None and s > 0)
    if not pts or target < pts[0][0] or target > pts[-1][0] or target <= 0:
        return None
    return float(np.interp(math.log10(target), np.log10([p[0] for p in pts]),
                           [p[1] for p in pts]))


def points_read(sizes: list[float | None], targets: list[float | None]) -> set[int]:
    """Indices of the points whose F `f_at_size` reads at each of `targets`, from their sizes
    alone (before any F is measured): every point of the largest size at or below the
    target and every point of the smallest size above it (np.interp's two neighbours; all of
    a size, so ties sort as among all points). `f_at_size` over just these points gives the
    same value as over all of them: the same neighbours, the same range check. Assumes F is
    None for all points or none (F is None only where ld(M) = ld(empty), a property of the
    prompts, not of the circuit). Targets outside the sizes' range, or None, read nothing."""
    have = sorted({float(s) for s in sizes if s is not None and s > 0})
    out: set[int] = set()
    for t in targets:
        if not have or t is None or t <= 0 or t < have[0] or t > have[-1]:
            continue
        lo = max(s for s in have if s <= t)
        hi = [s for s in have if s > t]
        want = {lo, *hi[:1]}
        out |= {i for i, s in enumerate(sizes) if s is not None and float(s) in want}
    return out


def jaccard(a: Masks, b: Masks, level: str = "triples") -> float | None:
    """Jaccard overlap of two binary masks' kept latents: over (slot, SAE, latent) triples
    (non-BOS slots) or, with level="latents", over distinct (SAE, latent) pairs. None when
    both are empty."""
    inter = union = 0
    for h in a:
        x, y = a[h][1:] > 0.5, b[h][1:] > 0.5
        if level == "latents":
            x, y = x.any(0), y.any(0)
        inter += int((x & y).sum())
        union += int((x | y).sum())
    return None if union == 0 else inter / union
