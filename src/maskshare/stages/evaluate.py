"""Stage `evaluate`: score every variant's masks on the selection split and the held-out
splits, choose the run's lambda, compare methods at matched size, list the circuit; write
RUN/evaluate/ (curves, comparisons, per-prompt lds, circuit), RUN/metrics.json and
RUN/report.html.

The rules (lambda choice, matched size, curves) live in `maskshare.evaluation.comparison`; this
module computes the rows they need and writes the results. Cost: a variant's circuits,
complements and empty circuit on a split share stacked passes (`evaluate_sweep`); M_clean
per split and the reference lds per (split, grouping, ablation) are computed once
(`EvalCache`); every row comes from the per-prompt lds (lds.parquet). The attribution
circuits are scored only where they are read (`attribution_reads`: every point on the
headline split, elsewhere the points read at the compared sizes, never on the selection
split, no complements), after the lambda is chosen. Where the time goes is
written to the manifest and metrics.json (`timings.phases`: prepare_s, reference_s,
circuits_s, curves_s, circuit_listing_s, and report_s in metrics.json).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from maskshare.artifacts import building, write_json_atomic, write_manifest
from maskshare.config import RunConfig
from maskshare.errors import UserError
from maskshare.evaluation.comparison import (
    EvalRow,
    TopTriples,
    compare_at_matched_size,
    group_splits,
    headline_metrics,
    headline_split,
    heldout_splits,
    pick,
    quality_metrics,
)
from maskshare.evaluation.metrics import (
    complement_lds,
    evaluate_sweep,
    jaccard,
    points_read,
    size_metrics,
    subset_metrics,
    with_complement,
)
from maskshare.evaluation.selection import choose_circuit, selection_split
from maskshare.evaluation.sweep_fits import sweep_lambdas, train_fs
from maskshare.evaluation.verdicts import matched_verdicts
from maskshare.masks.circuit import circuit_summary, kept_latents, top_activating_tokens
from maskshare.masks.own_latents import added_per_prompt as own_added_per_prompt
from maskshare.masks.slot_stats import SlotStats
from maskshare.masks.variant import load_masks, prepare_variant
from maskshare.report.page import write_report
from maskshare.run.layout import RunLayout
from maskshare.run.resources import (
    get_model,
    get_saes,
    load_run_config,
    load_run_items,
    split_items,
    token_lists,
)
from maskshare.run.variants import Variant, main_variant, run_seeds, variants
from maskshare.stages.attribution import attribution_methods, matched_circuits

# Score every mask on every split with its complement, every attribution circuit too (the
# evaluation before issue 23, which scored what nothing reads): tests compare against it.
SCORE_ALL = False


@dataclass
class EvalCache:
    """What one evaluation shares across its variants (and whoever adds rows to it): the
    clean model's per-prompt ld per split, the reference lds (M, M_clean, empty) per (split,
    grouping, ablation), every scored mask's per-prompt lds (RUN/evaluate/lds.parquet, what
    every row is computed from) and the seconds spent per phase."""

    clean: dict[str, np.ndarray] = field(default_factory=dict)
    reference: dict[tuple, dict] = field(default_factory=dict)
    lds: list = field(default_factory=list)  # polars DataFrames, one per (mask, split)
    timings: dict[str, float] = field(default_factory=dict)
    # what an ablation reports of a variant's prepared split (slot-aligned patching: how
    # many tokens took a same-rank, a mean or a slot-mean patch), {variant: {split: ...}}
    ablation_reports: dict[str, dict] = field(default_factory=dict)
    select: str = ""  # the split the run chooses on (`selection.selection_split`)

    @contextmanager
    def timed(self, phase: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - t0

    def record(self, variant: Variant | TopTriples, lam: float | None, seed: int, split: str,
               prompt_ids: list, per_prompt: dict, circuit: int = 0) -> None:
        import polars as pl

        n = len(prompt_ids)
        self.lds.append(pl.DataFrame({
            "variant": [variant.name] * n,
            "lambda": pl.Series([None if lam is None else float(lam)] * n, dtype=pl.Float64),
            "seed": [seed] * n, "circuit": [circuit] * n,
            "split": [split] * n, "prompt_id": prompt_ids,
            **{k: [float(x) for x in v] for k, v in per_prompt.items()}}))


def score_masks(run: Path, cfg: RunConfig, variant: Variant, masks: dict, split: str,
                cache: EvalCache, complements: bool = True, prep=None):
    """(the variant's prepared split, {key: evaluate_masks result}) for binary `masks`
    ({key: mask}) of `variant` on `split` (the selection split: its seeded sample). M_clean
    and the reference lds come from `cache` when it has them (else they are computed, the
    empty circuit in the same stacked passes as the masks, and kept there).
    `complements=False`: the circuits only (completeness None). `prep`: the prepared split
    when the caller has it."""
    if prep is None:
        prep = _prepare(run, cfg, variant, split, cache)
    if (report := prep.mm.ablation_method.report()) is not None:
        cache.ablation_reports.setdefault(variant.name, {})[split] = report
    with cache.timed("reference_s"):
        if split not in cache.clean:
            cache.clean[split] = prep.mm.clean_logit_diffs(prep.batches)
    key = (split, variant.grouping.value, variant.ablation.value)
    with cache.timed("circuits_s"):
        results, ref = evaluate_sweep(prep.mm, prep.batches, masks, prep.slots,
                                      reference=cache.reference.get(key),
                                      clean=cache.clean[split], complements=complements)
    cache.reference[key] = ref
    return prep, results


def _prepare(run: Path, cfg: RunConfig, variant: Variant, split: str, cache: EvalCache):
    limit = cfg.evaluate.select_limit if split == _select(run, cfg, cache) else None
    own = cfg.evaluate.own_latents
    with cache.timed("prepare_s"):
        return prepare_variant(run, variant, split, limit,
                               own=(own.k, tuple(own.roles), own.by) if own.k else None)


def _select(run: Path, cfg: RunConfig, cache: EvalCache) -> str:
    if not cache.select:
        cache.select = selection_split(cfg.evaluate.select_split, load_run_items(run))
    return cache.select


def eval_variant(run: Path, cfg: RunConfig, variant: Variant, seed: int, splits: list[str],
                 clean: dict[str, np.ndarray] | None = None,
                 groups: dict[str, list[str]] | None = None,
                 cache: EvalCache | None = None,
                 circuits: tuple[TopTriples, list] | None = None,
                 read: dict[str, dict | None] | None = None,
                 choose: Callable[[list[EvalRow]], float] | None = None) -> list[EvalRow]:
    """Rows (one per lambda x split, the selection split first) for a variant's masks at
    `seed`. `clean`: per split, the clean model's per-prompt ld (the same for every
    variant), filled in when missing. `groups`: {split: [group]} also scored per group
    (split `<split>:<group>`) from the split's per-prompt lds. `cache`: shared with the
    other variants' calls (`EvalCache`). `circuits`: (method, [(lambda or None, binary
    masks)]) scored in place of the learned masks, rows named by the method (attribution
    circuits, `attribution_rows`). `read`: score only where the rows are read
    (`attribution_reads`): its splits only (no selection split), per split every circuit
    (None) or those `points_read` picks at its target sizes ({None: targets on the split,
    group: targets on the group}), and no complements. `choose`: the main variant's rule
    (the chosen lambda from the selection split's rows): its circuits are scored on the
    selection split first, then the chosen circuit's complement there, and on the held-out
    splits every circuit with the chosen one's complement (completeness is read for the
    chosen circuit alone: the headline and the per-split table). Without `choose` or
    `read`, the held-out splits alone, no complement (the build gives the baselines a
    `read`)."""
    cache = cache if cache is not None else EvalCache()
    if clean is not None:
        cache.clean = clean
    label, pairs = circuits or (variant, [(lam, load_masks(run, variant, lam, seed))
                                          for lam in sweep_lambdas(run, cfg, variant.name,
                                                                   seed)])
    masks = {i: m for i, (_, m) in enumerate(pairs)}  # lambdas may repeat (None)
    lams = [lam for lam, _ in pairs]
    rows = []
    chosen: set = set()  # the key of the chosen circuit, once the selection split chose it
    if read is not None:
        todo_splits = list(read)
    elif SCORE_ALL:  # every split, every complement
        todo_splits, choose, chosen = [_select(run, cfg, cache), *splits], None, set(masks)
    elif choose is not None:
        todo_splits = [_select(run, cfg, cache), *splits]
    else:
        todo_splits = list(splits)
    for split in todo_splits:
        prep = _prepare(run, cfg, variant, split, cache)
        phrasing, ids = prep.items["phrasing"].to_list(), prep.items["prompt_id"].to_list()
        by_group = {g: [i for i, p in enumerate(phrasing) if p == g]
                    for g in (groups or {}).get(split, [])}
        todo = masks
        if read is not None and read[split] is not None:
            todo = {i: masks[i] for i in sorted(_read_circuits(masks, prep, by_group,
                                                               read[split]))}
        prep, results = score_masks(run, cfg, variant, todo, split, cache,
                                    complements=chosen, prep=prep)
        if choose is not None and not chosen:  # the selection split: choose, then complement
            lam = choose([EvalRow.of(label, lams[i], seed, split, r)
                          for i, r in results.items()])
            chosen = {next(i for i in masks if lams[i] == lam)}
            results = _with_complements(run, cfg, variant, masks, chosen, split, cache, prep,
                                        results)
        with cache.timed("curves_s"):
            for i, res in results.items():
                rows.append(EvalRow.of(label, lams[i], seed, split, res))
                cache.record(label, lams[i], seed, split, ids, res["per_prompt"], circuit=i)
                for g, idx in by_group.items():
                    sub = subset_metrics(res, idx, masks[i], [prep.slots[j] for j in idx])
                    rows.append(EvalRow.of(label, lams[i], seed, f"{split}:{g}", sub))
    return rows


def _with_complements(run: Path, cfg: RunConfig, variant: Variant, masks: dict, keys: set,
                      split: str, cache: EvalCache, prep, results: dict) -> dict:
    """`results` with the complements of `keys`' masks scored (one stacked pass)."""
    order = sorted(keys)
    with cache.timed("circuits_s"):
        lds = dict(zip(order, complement_lds(prep.mm, prep.batches, [masks[k] for k in order]),
                       strict=True))
    return {k: with_complement(r, lds[k]) if k in keys else r for k, r in results.items()}


def _read_circuits(masks: dict, prep, by_group: dict[str, list[int]], targets: dict) -> set:
    """The keys of `masks` whose F is read at `targets` ({None: sizes on the whole split,
    group: sizes on that group's prompts}), from their sizes alone (`points_read`; with the
    subject's own latents where the split's batches carry them)."""
    keys, slots = list(masks), prep.slots
    added = {k: own_added_per_prompt(masks[k], prep.batches) for k in keys}
    out: set = set()
    for g, ts in targets.items():
        idx = list(range(len(slots))) if g is None else by_group.get(g, [])
        sizes = [size_metrics(masks[k], [slots[j] for j in idx],
                              None if added[k] is None else added[k][idx])["latents_per_token"]
                 for k in keys]
        out |= {keys[j] for j in points_read(sizes, ts)}
    return out


def attribution_reads(rows: list[EvalRow], main: Variant, lam: float, head: str,
                      splits: list[str], groups: dict[str, list[str]]) -> dict[str, dict | None]:
    """Where a compared method's F (a baseline's, an attribution method's) is read, per
    held-out split (never the selection split, where nothing compares them): on the
    headline split every circuit (its curve is plotted, its area and best F reported); on each other held-out split at the main
    circuit's size there (the verdicts, `matched_verdicts`) and at its headline size (the
    report's per-split comparison, `report.data.matched_f`), and per group at the headline
    size (the report's `<split>:<group>` columns)."""
    size = pick(rows, main.name, head, lam).latents_per_token
    out: dict[str, dict | None] = {}
    for s in splits:
        if s == head:
            out[s] = None
            continue
        out[s] = {None: [pick(rows, main.name, s, lam).latents_per_token, size],
                  **{g: [size] for g in groups.get(s, [])}}
    return out


def attribution_rows(run: Path, cfg: RunConfig, seed: int, splits: list[str],
                     clean: dict[str, np.ndarray] | None = None,
                     groups: dict[str, list[str]] | None = None,
                     cache: EvalCache | None = None,
                     read: dict[str, dict | None] | None = None) -> list[EvalRow]:
    """Rows of every attribution method (`attribution_methods`): its circuits at the
    sizes of the variant's learned masks at `seed` (`matched_circuits`), scored by
    `eval_variant` on the same splits as the masks, or only where `read` says they are
    read (`attribution_reads`)."""
    return [r for t in attribution_methods(cfg)
            for r in eval_variant(run, cfg, t.variant, seed, splits, clean, groups, cache,
                                  circuits=(t, matched_circuits(run, t, seed)), read=read)]


def build(run: Path) -> Path:
    import polars as pl

    run, layout = Path(run), RunLayout(run)
    cfg = load_run_config(run)
    t0 = time.perf_counter()
    items = load_run_items(run)
    splits = heldout_splits(items)
    head = headline_split(cfg.dataset.variant, splits)
    if head is None:
        raise UserError("the dataset has no held-out prompts to evaluate on")
    seeds, main = run_seeds(cfg), main_variant(cfg)
    rows: list[EvalRow] = []
    cache = EvalCache()  # M_clean and references shared by every variant
    groups = group_splits(items, splits)
    def chosen_of(sel_rows: list[EvalRow]):
        floor = cfg.evaluate.train_floor
        fits = None if floor is None else train_fs(
            run, main, {r.lam for r in sel_rows if r.variant == main.name and r.lam is not None},
            seeds[0])
        return choose_circuit(sel_rows, main.name, _select(run, cfg, cache),
                              cfg.evaluate.target_f, fits, floor)

    def choose(sel_rows: list[EvalRow]) -> float:
        return chosen_of(sel_rows).lam

    # the main variant first: its rows on the selection split choose the lambda; the other
    # methods (baselines, attribution circuits) are then scored only where they are read
    # (`attribution_reads`: every circuit on the headline split, elsewhere the points read
    # at the compared sizes)
    rows += eval_variant(run, cfg, main, seeds[0], splits, groups=groups, cache=cache,
                         choose=choose)
    chosen = chosen_of(rows)
    lam = chosen.lam
    read = None if SCORE_ALL else attribution_reads(rows, main, lam, head, splits, groups)
    for v in variants(cfg):
        if v != main:
            rows += eval_variant(run, cfg, v, seeds[0], splits, groups=groups, cache=cache,
                                 read=read)
    rows += attribution_rows(run, cfg, seeds[0], splits, groups=groups, cache=cache,
                             read=read)
    with cache.timed("curves_s"):
        splits = [*splits, *(f"{s}:{g}" for s in splits for g in groups.get(s, []))]
        metrics: dict = {"run": run.name, "dataset": cfg.dataset.name,
                         "variant": cfg.dataset.variant, "headline_split": head, "lambda": lam,
                         "error_term": cfg.masks.error.value,
                         **headline_metrics(rows, main, head, splits, lam),
                         **chosen.as_metrics(),
                         **quality_metrics(json.loads(layout.quality(main.grouping).read_text()))}
        target = pick(rows, main.name, head, lam).latents_per_token
        table, compared = compare_at_matched_size(
            rows, [*variants(cfg), *attribution_methods(cfg)], main, head, target)
        metrics.update(compared)
        others = [(v.name, "masks") for v in variants(cfg) if v != main]
        others += [(t.name, t.finder) for t in attribution_methods(cfg)]
        metrics.update(matched_verdicts(rows, main.name, others, heldout_splits(items), lam))
        metrics.update(stability_metrics(run, main, lam, seeds))
        metrics.update(own_latents_metrics(cfg, pick(rows, main.name, head, lam)))
        if cache.ablation_reports:
            metrics["ablation_reports"] = cache.ablation_reports
    with cache.timed("circuit_listing_s"):
        circuit = circuit_listing(run, cfg, main, lam, seeds[0], items)
    timings = {"evaluate_s": time.perf_counter() - t0,
               "phases": {k: round(v, 3) for k, v in cache.timings.items()}}
    with building(layout.evaluate) as tmp:
        pl.DataFrame([r.as_dict() for r in rows]).write_parquet(tmp / layout.curves.name)
        pl.DataFrame([r.as_dict() for r in table]).write_parquet(tmp / layout.comparisons.name)
        # attribution circuits' lds have no ld_complement (null there)
        pl.concat(cache.lds, how="diagonal").write_parquet(tmp / layout.lds.name)
        (tmp / layout.circuit.name).write_text(json.dumps(circuit, indent=1, default=str))
        write_manifest(tmp, timings=timings)
    metrics["timings"] = timings
    write_json_atomic(layout.metrics, metrics)
    t1 = time.perf_counter()
    write_run_report(run)
    # the report reads metrics.json, so its own time is added after it is written
    timings["phases"]["report_s"] = round(time.perf_counter() - t1, 3)
    timings["evaluate_and_report_s"] = time.perf_counter() - t0
    write_json_atomic(layout.metrics, metrics)
    return layout.evaluate


def own_latents_metrics(cfg: RunConfig, row: EvalRow) -> dict:
    """What metrics.json says of the subject's own latents (`evaluate.own_latents`): its
    settings and, at the chosen circuit on the headline split, how many latents per token
    they add (part of `latents_per_token`); nothing when they are off."""
    own = cfg.evaluate.own_latents
    if not own.k:
        return {}
    return {"own_latents": own.model_dump(),
            "own_latents_per_token": row.metrics.get("own_latents_per_token")}


def stability_metrics(run: Path, main: Variant, lam: float, seeds: list[int]) -> dict:
    """Jaccard overlap of the main variant's masks at the first two seeds."""
    if len(seeds) < 2:
        return {}
    a, b = load_masks(run, main, lam, seeds[0]), load_masks(run, main, lam, seeds[1])
    return {"stability_jaccard": jaccard(a, b),
            "stability_jaccard_latents": jaccard(a, b, level="latents")}


def circuit_listing(run: Path, cfg: RunConfig, variant: Variant, lam: float, seed: int,
                    items) -> dict:
    """The kept latents with their slot means and top-activating training tokens."""
    masks = load_masks(run, variant, lam, seed)
    stats = SlotStats.load(RunLayout(run).slot_stats(variant.grouping))
    train = split_items(items, "train")
    top = top_activating_tokens(get_model(cfg), get_saes(cfg), token_lists(train),
                                train["token_strs"].to_list(), kept_latents(masks))
    return circuit_summary(masks, get_saes(cfg), stats, top_tokens=top)


def write_run_report(run: Path) -> None:
    """report.html, built from the run directory's files alone (see maskshare.report.page)."""
    write_report(run)
