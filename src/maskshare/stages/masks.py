"""Stage `masks`: train one binary mask (variant, lambda, seed) on the training split,
resumable from its checkpoint; and the public pieces experiments build on:
`prepare_variant` (a variant's masked model and batches on a split) and
`train_and_evaluate` (train the mask on given prompts, score it on held-out splits)."""

from __future__ import annotations

import functools
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from maskshare.artifacts import building, write_manifest
from maskshare.config import MaskConfig
from maskshare.layout import RunLayout
from maskshare.resources import (
    get_model,
    get_saes,
    load_run_config,
    load_run_items,
    split_items,
    token_lists,
)
from maskshare.stages.groups import load_slots
from maskshare.variants import Variant


@dataclass(frozen=True)
class Prepared:
    """A variant's masked model and the prompts of a split, batched for it."""

    mm: object          # maskshare.masking.MaskedModel
    batches: list
    items: object       # polars DataFrame of the split's items
    slots: list         # slot array per item, in the items' order
    slot_map: dict      # {prompt_id: slots} for every item of the run
    _targets: dict = field(default_factory=dict, compare=False, repr=False)

    def targets(self, objective, scale: str):
        """M's targets on these batches (`mask_training.compute_targets`: the full-mask and
        the empty-mask pass over every prompt), computed once per (objective, scale) and
        kept with the prepared batches, so the masks of a sweep trained in this process
        share them. Read-only for training."""
        from maskshare.mask_training import compute_targets

        key = (str(objective), str(scale))
        if key not in self._targets:
            self._targets[key] = compute_targets(self.mm, self.batches, objective, scale)
        return self._targets[key]


def prepare_variant(run: str | Path, variant: Variant | str, split: str,
                    limit: int | None = None) -> Prepared:
    """The variant's MaskedModel (its grouping's slot statistics, its ablation, the run's
    error term) and the items of `split` ("a+b" for several), at most `limit` of them (a
    seeded sample), batched. Cached for the last few requests: stages ask repeatedly (the
    masks stage asks for three per variant: its training prompts and the two fit samples)."""
    name = variant if isinstance(variant, str) else variant.name
    return _prepared(str(run), name, split, limit)


@functools.lru_cache(maxsize=8)  # a variant's training batches, and its fit samples
def _prepared(run: str, variant_name: str, split: str, limit: int | None) -> Prepared:
    from maskshare.masking import MaskedModel
    from maskshare.slot_stats import SlotStats

    cfg = load_run_config(run)
    variant = Variant.parse(variant_name)
    grouping, slots = load_slots(run, variant.grouping)
    stats = SlotStats.load(RunLayout(run).slot_stats(variant.grouping))
    items = split_items(load_run_items(run), *split.split("+"))
    if limit is not None and items.height > limit:
        items = items.sample(n=limit, seed=cfg.seed, shuffle=False)
    mm = MaskedModel(get_model(cfg), get_saes(cfg), stats, grouping.n_slots,
                     ablation=variant.ablation, error=cfg.masks.error)
    slot_arrays = [slots[p] for p in items["prompt_id"].to_list()]
    batches = batch_items(mm, items, slot_arrays, cfg.masks.batch_size)
    return Prepared(mm, batches, items, slot_arrays, slots)


def batch_items(mm, items, slot_arrays: list, batch_size: int) -> list:
    """Batches for `mm`; with ablation `counterfactual`, the items' counterfactual prompts
    (`counterfactual_tokens`, prompt datasets only) come along for patching."""
    from maskshare.config import Ablation

    cf_tokens = None
    if mm.ablation == Ablation.COUNTERFACTUAL and "counterfactual_tokens" in items.columns:
        cf_tokens = [None if t is None else list(map(int, t))
                     for t in items["counterfactual_tokens"].to_list()]
    return mm.prepare(token_lists(items), slot_arrays, items["answer_id"].to_list(),
                      items["counterfactual_id"].to_list(), batch_size=batch_size,
                      counterfactual_tokens=cf_tokens)


GRID = "grid"  # a mask call's `start` when it is one of the first lambdas (`mask_start`)


def mask_start(cfg, variant: str, lam: float, start: float | str | None = GRID
               ) -> tuple[str, float | None]:
    """Where the mask (variant, lam) starts (maskshare.warm_start): ("continue", the previous
    lambda) with `masks.continue_sweep` for every lambda but the sweep's smallest; else
    ("attribution", None) with `masks.init: attribution` where the variant has IG scores;
    else ("cold", None). The plan orders the calls by it. A lambda the sweep added
    (maskshare.sweep) says where it starts: `start`, the lambda it continues, or None (a
    chain head: attribution or cold as above)."""
    from maskshare.variants import attribution_variants

    if start != GRID:
        if start is not None:
            return "continue", float(start)
    else:
        grid = sorted(cfg.masks.lambda_grid)
        i = grid.index(lam)
        if cfg.masks.continue_sweep and i > 0:
            return "continue", grid[i - 1]
    if (cfg.masks.init == "attribution" and "ig" in cfg.attribution.methods
            and variant in {v.name for v in attribution_variants(cfg)}):
        return "attribution", None
    return "cold", None


def starting_theta(run: Path, cfg, variant: Variant, lam: float, seed: int, prep, targets,
                   start: float | str | None = GRID):
    """(initial theta or None for a cold start, how it starts: `mask_start`'s kind)."""
    from maskshare.attribution import load_scores
    from maskshare.mask_training import TrainResult, slot_weights
    from maskshare.warm_start import attribution_start, continued_theta

    how, prev = mask_start(cfg, variant.name, lam, start)
    if how == "continue":
        path = RunLayout(run).masks(variant, prev, seed)
        if not (path / "masks.safetensors").is_file():
            raise RuntimeError(f"lambda {lam:g} continues from lambda {prev:g}, whose mask "
                               f"is not there ({path}): the plan trains it first")
        return continued_theta(TrainResult.load(path).theta), how
    if how == "attribution":
        scores = load_scores(run, variant, "ig")
        return attribution_start(scores, cfg.masks, lam, targets.scale,
                                 slot_weights(prep.batches, prep.mm.n_slots)), how
    return None, how


def build(run: Path, variant: Variant | str, lam: float, seed: int,
          start: float | str | None = GRID) -> Path:
    """Train the mask (variant, lam, seed) from where `mask_start` says (`start`: see
    there), and record its fit (`mask_fit`) in summary.json for the sweep's refinement."""
    from maskshare.mask_training import train_masks
    from maskshare.warm_start import warm_config

    if isinstance(variant, str):
        variant = Variant.parse(variant)
    cfg = load_run_config(run)
    layout = RunLayout(run)
    out = layout.masks(variant, lam, seed)
    t0 = time.time()
    prep = prepare_variant(run, variant, "train", cfg.masks.max_train_prompts)
    targets = prep.targets(cfg.masks.objective, cfg.masks.scale)
    init, how = starting_theta(run, cfg, variant, lam, seed, prep, targets, start)
    mcfg = cfg.masks if init is None else warm_config(cfg.masks)
    ckpt = layout.checkpoint(variant, lam, seed)
    res = train_masks(prep.mm, prep.batches, mcfg, lam, seed=seed, targets=targets,
                      init_theta=init, checkpoint_dir=ckpt,
                      monitor=validation_monitor(run, cfg, variant))
    fit = fit_metrics(run, cfg, variant, res.masks())
    with building(out) as tmp:
        res.save(tmp, extra={"variant": variant.name, "ablation": variant.ablation.value,
                             "error": cfg.masks.error.value, "init": how, "fit": fit})
        write_manifest(tmp, config=cfg.masks.model_dump(mode="json"), seed=seed,
                       timings={"train_s": time.time() - t0},
                       extra={"variant": variant.name, "lambda": lam, "init": how,
                              "steps_run": len(res.history), "steps_max": mcfg.steps})
    shutil.rmtree(ckpt, ignore_errors=True)
    return out


def validation_monitor(run: Path, cfg, variant: Variant):
    """binary masks -> F on a seeded sample of `masks.validation_stop.prompts` validation
    prompts (`mask_training._ValidationStop`), or None when the stop is off or the run has
    no validation rows."""
    import numpy as np

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
    """What the sweep's refinement reads of a trained mask (maskshare.sweep.Fit): latents per
    token and F on the seeded sample of at most `evaluate.select_limit` training prompts,
    and F on the same-sized sample of the validation split (the sample the run's circuit
    is chosen on) where the run has one. Never a held-out split."""
    from maskshare.evaluation import evaluate_masks

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
    from maskshare.evaluation import reference_lds

    prep = prepare_variant(run, variant_name, split, limit)
    return reference_lds(prep.mm, prep.batches)


def mask_fit(run: str | Path, variant: Variant | str, lam: float, seed: int):
    """The `maskshare.sweep.Fit` the masks stage recorded for (variant, lam, seed)."""
    import json

    from maskshare.sweep import Fit

    summary = json.loads((RunLayout(run).masks(variant, lam, seed) / "summary.json").read_text())
    fit = summary.get("fit")
    if fit is None:
        raise RuntimeError(f"mask {variant} lambda={lam:g} seed={seed} has no recorded fit "
                           "(trained before the sweep refined itself): rebuild it")
    return Fit(lam, fit["latents_per_token"], fit.get("f_train"), fit.get("f_validation"))


def sweep_round(cfg, run: str | Path, variant: str, lams: list[float]) -> list:
    """The lambdas (`maskshare.sweep.NewLambda`) the sweep's next round adds to `variant`,
    whose trained lambdas are `lams`: decided from the fits at the run's first seed (every
    variant trains there), within what is left of `masks.sweep.budget`."""
    from maskshare.sweep import next_lambdas
    from maskshare.variants import run_seeds

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
    from maskshare.artifacts import is_complete

    lams = sorted(cfg.masks.lambda_grid)
    while new := sweep_round(cfg, run, variant, lams):
        for n in new:
            if not is_complete(RunLayout(run).masks(variant, n.lam, seed)):
                raise RuntimeError(f"the sweep's refinement is not trained (masks {variant} "
                                   f"lambda={n.lam:g} seed={seed}): run the plan with its "
                                   "refinement rounds first")
        lams = sorted([*lams, *(n.lam for n in new)])
    return lams


def load_masks(run: str | Path, variant: Variant | str, lam: float, seed: int):
    """The binarised masks {hook: bool[slot, latent]} the masks stage wrote."""
    from maskshare.mask_training import TrainResult

    return TrainResult.load(RunLayout(run).masks(variant, lam, seed)).masks()


@functools.lru_cache(maxsize=4)
def split_reference(run: str, variant_name: str, split: str):
    """The reference logit differences (M, clean, empty) of a variant on a split."""
    from maskshare.evaluation import reference_lds

    prep = prepare_variant(run, variant_name, split)
    return reference_lds(prep.mm, prep.batches)


@dataclass
class Trained:
    """A mask trained by `train_and_evaluate` and its metrics per evaluated split."""

    result: object              # maskshare.mask_training.TrainResult
    train_s: float
    n_train_prompts: int
    metrics: dict[str, dict]    # split -> evaluate_masks output


def train_and_evaluate(run: str | Path, variant: Variant | str, lam: float, seed: int,
                       eval_splits: list[str], *, train_items=None,
                       train_limit: int | None = None, masks: MaskConfig | None = None) -> Trained:
    """Train `variant`'s mask at `lam` on `train_items` (default: the training split, at
    most `train_limit` prompts, as the masks stage does) with the run's mask settings or
    `masks`; evaluate it on each of `eval_splits` against that split's reference. Slot
    statistics stay the run's. Writes nothing."""
    from maskshare.evaluation import evaluate_masks
    from maskshare.mask_training import train_masks

    run = str(run)
    cfg = load_run_config(run)
    mcfg = masks or cfg.masks
    prep = prepare_variant(run, variant, "train", train_limit)
    batches, n = prep.batches, prep.items.height
    if train_items is not None:
        batches = batch_items(prep.mm, train_items,
                              [prep.slot_map[p] for p in train_items["prompt_id"].to_list()],
                              cfg.masks.batch_size)
        n = train_items.height
    t0 = time.perf_counter()
    res = train_masks(prep.mm, batches, mcfg, lam, seed=seed)
    train_s = time.perf_counter() - t0
    name = variant if isinstance(variant, str) else variant.name
    out = {}
    for split in eval_splits:
        ev = prepare_variant(run, variant, split)
        out[split] = evaluate_masks(ev.mm, ev.batches, res.masks(), ev.slots,
                                    reference=split_reference(run, name, split))
    return Trained(res, train_s, n, out)
