"""A run's variant ready to train or score: its grouping's slots (`load_slots`), its
`MaskedModel` with the prompts of a split batched for it (`prepare_variant`, `Prepared`,
`batch_items`) and the masks the masks stage wrote (`load_masks`). What the stages, the
benchmarks and the scripts build on; it writes nothing."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from maskshare.config import GroupingKind
from maskshare.grouping import load_grouping
from maskshare.masks.masking import MaskedModel
from maskshare.masks.own_latents import marked_tokens, ranking
from maskshare.masks.slot_stats import SlotStats
from maskshare.masks.training import TrainResult, compute_targets
from maskshare.run.layout import RunLayout
from maskshare.run.resources import (
    get_model,
    get_saes,
    load_run_config,
    load_run_items,
    split_items,
    token_lists,
)
from maskshare.run.variants import Variant


def load_slots(run: str | Path, kind: GroupingKind | str):
    """(grouping, {prompt_id: slots}) of a run's grouping `kind`."""
    layout = RunLayout(run)
    grouping = load_grouping(layout.groups(kind))
    toks = pl.read_parquet(layout.tokens(kind)).sort(["prompt_id", "position"])
    slots = {pid: np.asarray(g["slot"].to_list(), dtype=np.int64)
             for (pid,), g in toks.group_by("prompt_id", maintain_order=True)}
    return grouping, slots


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
                    limit: int | None = None,
                    own: tuple[int, tuple[str, ...], str] | None = None) -> Prepared:
    """The variant's MaskedModel (its grouping's slot statistics, its ablation, the run's
    error term) and the items of `split` ("a+b" for several), at most `limit` of them (a
    seeded sample), batched. `own`: (k, roles, by): the batches carry each prompt's own `k`
    latents per SAE at its tokens of those roles, ranked `by` activation or deviation
    (`maskshare.masks.own_latents`; the evaluation's `evaluate.own_latents`). Cached for
    the last few requests: stages ask repeatedly."""
    name = variant if isinstance(variant, str) else variant.name
    return _prepared(str(run), name, split, limit, own)


@functools.lru_cache(maxsize=4)
def _prepared(run: str, variant_name: str, split: str, limit: int | None,
              own: tuple[int, tuple[str, ...], str] | None = None) -> Prepared:
    cfg = load_run_config(run)
    variant = Variant.parse(variant_name)
    grouping, slots = load_slots(run, variant.grouping)
    stats = SlotStats.load(RunLayout(run).slot_stats(variant.grouping))
    items = _split_sample(run, cfg.seed, split, limit)
    mm = MaskedModel(get_model(cfg), get_saes(cfg), stats, grouping.n_slots,
                     ablation=variant.ablation, error=cfg.masks.error)
    slot_arrays = [slots[p] for p in items["prompt_id"].to_list()]
    marks = None if not own else \
        (marked_tokens(items["roles"].to_list(), slot_arrays, own[1]), own[0], ranking(own))
    batches = batch_items(mm, items, slot_arrays, cfg.masks.batch_size, grouping,
                          prefix=_prefixes(run, split, limit), own=marks)
    return Prepared(mm, batches, items, slot_arrays, slots, grouping)


def _split_sample(run: str, seed: int, split: str, limit: int | None):
    items = split_items(load_run_items(run), *split.split("+"))
    if limit is not None and items.height > limit:
        items = items.sample(n=limit, seed=seed, shuffle=False)
    return items


def split_slots(run: str | Path, variant: Variant | str, split: str,
                limit: int | None = None) -> list:
    """`prepare_variant(...).slots` (the slot array of each item of the split, in its
    order) without preparing anything: no model pass."""
    variant = Variant.parse(variant) if isinstance(variant, str) else variant
    _, slots = load_slots(run, variant.grouping)
    items = _split_sample(str(run), load_run_config(run).seed, split, limit)
    return [slots[p] for p in items["prompt_id"].to_list()]


@functools.lru_cache(maxsize=4)
def _prefixes(run: str, split: str, limit: int | None) -> dict:
    """The clean prefix of a split's batches (`MaskedModel.prepare(prefix=...)`: the residual
    below the first SAE hook, that hook's latents and error), shared by every variant
    prepared on the split: it depends on the prompts, not on the grouping or ablation."""
    return {}


def batch_items(mm, items, slot_arrays: list, batch_size: int, grouping=None,
                prefix: dict | None = None, own: tuple[list, int, str] | None = None) -> list:
    """Batches for `mm`, with what its ablation needs per prompt from the items (e.g. the
    counterfactual prompts for `counterfactual` patching, with their slots from `grouping`
    so pairs of any length are patched slot by slot). `prefix`: shared clean prefixes
    (`MaskedModel.prepare`). `own`: (marked tokens per item, k, by) for the subject's
    own latents (`MaskedModel.prepare`)."""
    assign = None if grouping is None else (lambda toks: grouping.assign_tokens(mm.model, toks))
    return mm.prepare(token_lists(items), slot_arrays, items["answer_id"].to_list(),
                      items["counterfactual_id"].to_list(), batch_size=batch_size,
                      ablation_data=mm.ablation_method.prompt_data(items, assign),
                      prefix=prefix, own=own)


def load_masks(run: str | Path, variant: Variant | str, lam: float, seed: int):
    """The binarised masks {hook: bool[slot, latent]} the masks stage wrote."""
    return TrainResult.load(RunLayout(run).masks(variant, lam, seed)).masks()
