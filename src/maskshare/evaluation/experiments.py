"""Experiments on a finished run's variant (benchmarks/entity_scaling.py,
benchmarks/mask_settings.py): train a mask on given prompts and score it on held-out splits
against each split's reference (`train_and_evaluate`), writing nothing."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

from maskshare.config import MaskConfig
from maskshare.evaluation.metrics import evaluate_masks, reference_lds
from maskshare.masks.training import train_masks
from maskshare.masks.variant import batch_items, prepare_variant
from maskshare.run.resources import load_run_config
from maskshare.run.variants import Variant


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
    if train_items is None and mcfg.batch_size != cfg.masks.batch_size:
        train_items = prep.items  # the same prompts, batched as `masks` says
    if train_items is not None:
        batches = batch_items(prep.mm, train_items,
                              [prep.slot_map[p] for p in train_items["prompt_id"].to_list()],
                              mcfg.batch_size, prep.grouping)
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
