"""Stage `evaluate`: score every variant's masks on the selection split and the held-out
splits, choose the run's lambda, compare methods at matched size, list the circuit; write
RUN/evaluate/ (curves, comparisons, circuit), RUN/metrics.json and RUN/report.html.

The rules (lambda choice, matched size, curves) live in `maskshare.comparison`; this
module computes the rows they need and writes the results.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from maskshare.artifacts import building, write_json_atomic, write_manifest
from maskshare.comparison import (
    EvalRow,
    TopTriples,
    choose_lambda,
    compare_at_matched_size,
    group_splits,
    headline_metrics,
    headline_split,
    heldout_splits,
    pick,
    quality_metrics,
)
from maskshare.config import RunConfig
from maskshare.errors import UserError
from maskshare.layout import RunLayout
from maskshare.resources import (
    get_model,
    get_saes,
    load_run_config,
    load_run_items,
    split_items,
    token_lists,
)
from maskshare.stages.attribution import attribution_methods, matched_circuits
from maskshare.stages.masks import load_masks, prepare_variant
from maskshare.variants import Variant, main_variant, run_seeds, variants


def eval_variant(run: Path, cfg: RunConfig, variant: Variant, seed: int, splits: list[str],
                 clean: dict[str, np.ndarray] | None = None,
                 groups: dict[str, list[str]] | None = None,
                 circuits: tuple[TopTriples, list] | None = None) -> list[EvalRow]:
    """Rows (one per lambda x split, the selection split first) for a variant's masks at
    `seed`. `clean`: per split, the clean model's per-prompt ld (the same for every
    variant), filled in when missing. `groups`: {split: [group]} also scored per group
    (split `<split>:<group>`) from the split's per-prompt lds. `circuits`: (method,
    [(lambda or None, binary masks)]) scored in place of the learned masks, rows named by
    the method (attribution circuits, `attribution_rows`)."""
    from maskshare.evaluation import evaluate_masks, reference_lds, subset_metrics

    rule = cfg.evaluate
    clean = {} if clean is None else clean
    label, masks = circuits or (variant, [(lam, load_masks(run, variant, lam, seed))
                                          for lam in cfg.masks.lambda_grid])
    rows = []
    for split in [rule.select_split, *splits]:
        limit = rule.select_limit if split == rule.select_split else None
        prep = prepare_variant(run, variant, split, limit)
        if split not in clean:
            clean[split] = prep.mm.clean_logit_diffs(prep.batches)
        ref = reference_lds(prep.mm, prep.batches, clean=clean[split])
        by_group = {g: [i for i, p in enumerate(prep.items["phrasing"].to_list()) if p == g]
                    for g in (groups or {}).get(split, [])}
        for lam, m in masks:
            res = evaluate_masks(prep.mm, prep.batches, m, prep.slots, reference=ref)
            rows.append(EvalRow.of(label, lam, seed, split, res))
            for g, idx in by_group.items():
                sub = subset_metrics(res, idx, m, [prep.slots[i] for i in idx])
                rows.append(EvalRow.of(label, lam, seed, f"{split}:{g}", sub))
    return rows


def attribution_rows(run: Path, cfg: RunConfig, seed: int, splits: list[str],
                     clean: dict[str, np.ndarray] | None = None,
                     groups: dict[str, list[str]] | None = None) -> list[EvalRow]:
    """Rows of every attribution method (`attribution_methods`): its circuits at the
    sizes of the variant's learned masks at `seed` (`matched_circuits`), scored by
    `eval_variant` on the same splits as the masks."""
    return [r for t in attribution_methods(cfg)
            for r in eval_variant(run, cfg, t.variant, seed, splits, clean, groups,
                                  circuits=(t, matched_circuits(run, t, seed)))]


def build(run: Path) -> Path:
    import polars as pl

    run, layout = Path(run), RunLayout(run)
    cfg = load_run_config(run)
    t0 = time.time()
    items = load_run_items(run)
    splits = heldout_splits(items)
    head = headline_split(cfg.dataset.variant, splits)
    if head is None:
        raise UserError("the dataset has no held-out prompts to evaluate on")
    seeds, main = run_seeds(cfg), main_variant(cfg)
    rows: list[EvalRow] = []
    clean: dict[str, np.ndarray] = {}  # shared by every variant
    groups = group_splits(items, splits)
    for v in variants(cfg):
        rows += eval_variant(run, cfg, v, seeds[0], splits, clean, groups)
    rows += attribution_rows(run, cfg, seeds[0], splits, clean, groups)
    splits = [*splits, *(f"{s}:{g}" for s in splits for g in groups.get(s, []))]
    lam = choose_lambda(rows, main.name, cfg.evaluate)
    metrics: dict = {"run": run.name, "dataset": cfg.dataset.name,
                     "variant": cfg.dataset.variant, "headline_split": head, "lambda": lam,
                     "error_term": cfg.masks.error.value,
                     **headline_metrics(rows, main, head, splits, lam),
                     **quality_metrics(json.loads(layout.quality(main.grouping).read_text()))}
    target = pick(rows, main.name, head, lam).latents_per_token
    _, table, compared = compare_at_matched_size(
        rows, [*variants(cfg), *attribution_methods(cfg)], main, head, target)
    metrics.update(compared)
    metrics.update(stability_metrics(run, main, lam, seeds))
    circuit = circuit_listing(run, cfg, main, lam, seeds[0], items)
    with building(layout.evaluate) as tmp:
        pl.DataFrame([r.as_dict() for r in rows]).write_parquet(tmp / layout.curves.name)
        pl.DataFrame([r.as_dict() for r in table]).write_parquet(tmp / layout.comparisons.name)
        (tmp / layout.circuit.name).write_text(json.dumps(circuit, indent=1, default=str))
        write_manifest(tmp, timings={"evaluate_s": time.time() - t0})
    metrics["timings"] = {"evaluate_s": time.time() - t0}
    write_json_atomic(layout.metrics, metrics)
    write_run_report(run)
    return layout.evaluate


def stability_metrics(run: Path, main: Variant, lam: float, seeds: list[int]) -> dict:
    """Jaccard overlap of the main variant's masks at the first two seeds."""
    from maskshare.evaluation import jaccard

    if len(seeds) < 2:
        return {}
    a, b = load_masks(run, main, lam, seeds[0]), load_masks(run, main, lam, seeds[1])
    return {"stability_jaccard": jaccard(a, b),
            "stability_jaccard_latents": jaccard(a, b, level="latents")}


def circuit_listing(run: Path, cfg: RunConfig, variant: Variant, lam: float, seed: int,
                    items) -> dict:
    """The kept latents with their slot means and top-activating training tokens."""
    from maskshare.circuit import circuit_summary, kept_latents, top_activating_tokens
    from maskshare.slot_stats import SlotStats

    masks = load_masks(run, variant, lam, seed)
    stats = SlotStats.load(RunLayout(run).slot_stats(variant.grouping))
    train = split_items(items, "train")
    top = top_activating_tokens(get_model(cfg), get_saes(cfg), token_lists(train),
                                train["token_strs"].to_list(), kept_latents(masks))
    return circuit_summary(masks, get_saes(cfg), stats, top_tokens=top)


def write_run_report(run: Path) -> None:
    """report.html, built from the run directory's files alone (see maskshare.report)."""
    from maskshare.report import write_report

    write_report(run)
