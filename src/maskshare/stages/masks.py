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
from maskshare.evaluation.metrics import evaluate_masks, reference_lds
from maskshare.masks.attribution import load_scores
from maskshare.masks.masking import MaskedModel
from maskshare.masks.slot_stats import SlotStats
from maskshare.masks.training import TrainResult, compute_targets, slot_weights, train_masks
from maskshare.masks.warm_start import attribution_start, continued_theta, warm_config
from maskshare.run.layout import RunLayout
from maskshare.run.resources import (
    get_model,
    get_saes,
    load_run_config,
    load_run_items,
    split_items,
    token_lists,
)
from maskshare.run.variants import Variant, attribution_variants
from maskshare.stages.groups import load_slots


@dataclass(frozen=True)
class Prepared:
    """A variant's masked model and the prompts of a split, batched for it."""

    mm: object          # maskshare.masks.masking.MaskedModel
    batches: list
    items: object       # polars DataFrame of the split's items
    slots: list         # slot array per item, in the items' order
    slot_map: dict      # {prompt_id: slots} for every item of the run
    grouping: object = None  # the variant's fitted grouping (assigns counterfactual prompts)
    _targets: dict = field(default_factory=dict, compare=False, repr=False)

    def targets(self, objective, scale: str):
        """M's targets on these batches (`mask_training.compute_targets`: the full-mask and
        the empty-mask pass over every prompt), computed once per (objective, scale) and
        kept with the prepared batches, so the masks of a sweep trained in this process
        share them. Read-only for training."""
        key = (str(objective), str(scale))
        if key not in self._targets:
            self._targets[key] = compute_targets(self.mm, self.batches, objective, scale)
        return self._targets[key]


def prepare_variant(run: str | Path, variant: Variant | str, split: str,
                    limit: int | None = None) -> Prepared:
    """The variant's MaskedModel (its grouping's slot statistics, its ablation, the run's
    error term) and the items of `split` ("a+b" for several), at most `limit` of them (a
    seeded sample), batched. Cached for the last few requests: stages ask repeatedly."""
    name = variant if isinstance(variant, str) else variant.name
    return _prepared(str(run), name, split, limit)


@functools.lru_cache(maxsize=4)
def _prepared(run: str, variant_name: str, split: str, limit: int | None) -> Prepared:
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
    batches = batch_items(mm, items, slot_arrays, cfg.masks.batch_size, grouping)
    return Prepared(mm, batches, items, slot_arrays, slots, grouping)


def batch_items(mm, items, slot_arrays: list, batch_size: int, grouping=None) -> list:
    """Batches for `mm`, with what its ablation needs per prompt from the items (e.g. the
    counterfactual prompts for `counterfactual` patching, with their slots from `grouping`
    so pairs of any length are patched slot by slot)."""
    assign = None if grouping is None else (lambda toks: grouping.assign_tokens(mm.model, toks))
    return mm.prepare(token_lists(items), slot_arrays, items["answer_id"].to_list(),
                      items["counterfactual_id"].to_list(), batch_size=batch_size,
                      ablation_data=mm.ablation_method.prompt_data(items, assign))


def mask_start(cfg, variant: str, lam: float) -> tuple[str, float | None]:
    """Where the mask (variant, lam) starts (maskshare.masks.warm_start): ("continue", the previous
    lambda) with `masks.continue_sweep` for every lambda but the sweep's smallest; else
    ("attribution", None) with `masks.init: attribution` where the variant has IG scores;
    else ("cold", None). The plan orders the calls by it."""
    grid = sorted(cfg.masks.lambda_grid)
    i = grid.index(lam)
    if cfg.masks.continue_sweep and i > 0:
        return "continue", grid[i - 1]
    if (cfg.masks.init == "attribution" and "ig" in cfg.attribution.methods
            and variant in {v.name for v in attribution_variants(cfg)}):
        return "attribution", None
    return "cold", None


def starting_theta(run: Path, cfg, variant: Variant, lam: float, seed: int, prep, targets):
    """(initial theta or None for a cold start, how it starts: `mask_start`'s kind)."""
    how, prev = mask_start(cfg, variant.name, lam)
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


def build(run: Path, variant: Variant | str, lam: float, seed: int) -> Path:
    if isinstance(variant, str):
        variant = Variant.parse(variant)
    cfg = load_run_config(run)
    layout = RunLayout(run)
    out = layout.masks(variant, lam, seed)
    t0 = time.time()
    prep = prepare_variant(run, variant, "train", cfg.masks.max_train_prompts)
    targets = prep.targets(cfg.masks.objective, cfg.masks.scale)
    init, how = starting_theta(run, cfg, variant, lam, seed, prep, targets)
    mcfg = cfg.masks if init is None else warm_config(cfg.masks)
    ckpt = layout.checkpoint(variant, lam, seed)
    res = train_masks(prep.mm, prep.batches, mcfg, lam, seed=seed, targets=targets,
                      init_theta=init, checkpoint_dir=ckpt)
    with building(out) as tmp:
        res.save(tmp, extra={"variant": variant.name, "ablation": variant.ablation.value,
                             "error": cfg.masks.error.value, "init": how})
        write_manifest(tmp, config=cfg.masks.model_dump(mode="json"), seed=seed,
                       timings={"train_s": time.time() - t0},
                       extra={"variant": variant.name, "lambda": lam, "init": how,
                              "steps_run": len(res.history), "steps_max": mcfg.steps})
    shutil.rmtree(ckpt, ignore_errors=True)
    return out


def load_masks(run: str | Path, variant: Variant | str, lam: float, seed: int):
    """The binarised masks {hook: bool[slot, latent]} the masks stage wrote."""
    return TrainResult.load(RunLayout(run).masks(variant, lam, seed)).masks()


@functools.lru_cache(maxsize=4)
def split_reference(run: str, variant_name: str, split: str):
    """The reference logit differences (M, clean, empty) of a variant on a split."""
    prep = prepare_variant(run, variant_name, split)
    return reference_lds(prep.mm, prep.batches)


@dataclass
class Trained:
    """A mask trained by `train_and_evaluate` and its metrics per evaluated split."""

    result: object              # maskshare.masks.training.TrainResult
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
    run = str(run)
    cfg = load_run_config(run)
    mcfg = masks or cfg.masks
    prep = prepare_variant(run, variant, "train", train_limit)
    batches, n = prep.batches, prep.items.height
    if train_items is not None:
        batches = batch_items(prep.mm, train_items,
                              [prep.slot_map[p] for p in train_items["prompt_id"].to_list()],
                              cfg.masks.batch_size, prep.grouping)
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
