"""The fits a self-extending sweep reads (docs/selection.md): each trained mask's latents
per token and F on seeded samples of the training and validation prompts (`fit_metrics`,
recorded in its summary.json by the masks stage; never a held-out split), the lambdas the
next round adds (`sweep_round`, by the rule in `maskshare.masks.sweep`), the whole sweep
replayed from them (`sweep_lambdas`), and F on validation while a mask trains
(`validation_monitor`, `masks.validation_stop`)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from maskshare.artifacts import is_complete
from maskshare.evaluation.metrics import evaluate_masks, reference_lds
from maskshare.masks.sweep import Fit, next_lambdas
from maskshare.masks.variant import prepare_variant
from maskshare.run.layout import RunLayout
from maskshare.run.resources import load_run_items
from maskshare.run.variants import Variant, run_seeds


def validation_monitor(run: Path, cfg, variant: Variant):
    """binary masks -> F on a seeded sample of `masks.validation_stop.prompts` validation
    prompts (`masks.stopping.ValidationStop`), or None when the stop is off or the run has
    no validation rows."""
    vs = cfg.masks.validation_stop
    if vs.every is None or not (load_run_items(run)["split"] == "validation").any():
        return None
    prep = prepare_variant(run, variant, "validation", vs.prompts)
    ref = _fit_reference(str(run), variant.name, "validation", vs.prompts)
    m, e = float(np.mean(ref["ld_model"])), float(np.mean(ref["ld_ablated"]))

    def f(masks) -> float | None:  # the circuit's pass only (no complement)
        ld = float(np.mean(prep.mm.logit_diffs_many(prep.batches, [masks])[0]))
        return (ld - e) / (m - e) if abs(m - e) > 1e-9 else None
    return f


def fit_metrics(run: Path, cfg, variant: Variant, masks) -> dict:
    """What the sweep's refinement reads of a trained mask (maskshare.masks.sweep.Fit): latents per
    token and F on the seeded sample of at most `evaluate.select_limit` training prompts,
    and F on the same-sized sample of the validation split (the sample the run's circuit
    is chosen on) where the run has one. Never a held-out split."""
    out: dict = {}
    items = load_run_items(run)
    for split in ("train", "validation"):
        if not (items["split"] == split).any():
            continue
        prep = prepare_variant(run, variant, split, cfg.evaluate.select_limit)
        res = evaluate_masks(prep.mm, prep.batches, masks, prep.slots,
                             reference=_fit_reference(str(run), variant.name, split,
                                                      cfg.evaluate.select_limit))
        if split == "train":
            out["latents_per_token"] = res["latents_per_token"]
        out[f"f_{split}"] = res["faithfulness"]
    return out


@functools.lru_cache(maxsize=8)
def _fit_reference(run: str, variant_name: str, split: str, limit: int | None):
    prep = prepare_variant(run, variant_name, split, limit)
    return reference_lds(prep.mm, prep.batches)


def _recorded_fit(run: str | Path, variant: Variant | str, lam: float,
                  seed: int) -> dict | None:
    """The `fit` entry of a mask's summary.json (None: no summary, or trained before fits
    were recorded)."""
    summary = RunLayout(run).masks(variant, lam, seed) / "summary.json"
    return json.loads(summary.read_text()).get("fit") if summary.exists() else None


def mask_fit(run: str | Path, variant: Variant | str, lam: float, seed: int):
    """The `maskshare.masks.sweep.Fit` the masks stage recorded for (variant, lam, seed)."""
    fit = _recorded_fit(run, variant, lam, seed)
    if fit is None:
        raise RuntimeError(f"mask {variant} lambda={lam:g} seed={seed} has no recorded fit "
                           "(trained before the sweep refined itself): rebuild it")
    return Fit(lam, fit["latents_per_token"], fit.get("f_train"), fit.get("f_validation"))


def train_fs(run: str | Path, variant: Variant | str, lams, seed: int) -> dict:
    """{lambda: F on the mask's training sample} as the masks stage recorded it (None for a
    mask trained before fits were recorded): what `evaluate.train_floor` reads."""
    return {lam: (_recorded_fit(run, variant, lam, seed) or {}).get("f_train") for lam in lams}


def sweep_round(cfg, run: str | Path, variant: str, lams: list[float]) -> list:
    """The lambdas (`maskshare.masks.sweep.NewLambda`) the sweep's next round adds to `variant`,
    whose trained lambdas are `lams`: decided from the fits at the run's first seed (every
    variant trains there), within what is left of `masks.sweep.budget`."""
    rule = cfg.masks.sweep
    if not rule.refine:
        return []
    seed = run_seeds(cfg)[0]
    fits = [mask_fit(run, variant, lam, seed) for lam in lams]
    return next_lambdas(fits, rule, rule.budget - (len(lams) - len(cfg.masks.lambda_grid)),
                        cfg.masks.continue_sweep)


def sweep_lambdas(run: str | Path, cfg, variant: str, seed: int) -> list[float]:
    """Every lambda of `variant`'s sweep (ascending): the first ones and those the
    refinement rounds added (`sweep_round`), replayed from the trained masks' fits (a pure
    function of them: the rounds the executor ran, `plan.refinement_rounds`). Raises if a
    round's mask at `seed` is missing."""
    lams = sorted(cfg.masks.lambda_grid)
    while new := sweep_round(cfg, run, variant, lams):
        for n in new:
            if not is_complete(RunLayout(run).masks(variant, n.lam, seed)):
                raise RuntimeError(f"the sweep's refinement is not trained (masks {variant} "
                                   f"lambda={n.lam:g} seed={seed}): run the plan with its "
                                   "refinement rounds first")
        lams = sorted([*lams, *(n.lam for n in new)])
    return lams
