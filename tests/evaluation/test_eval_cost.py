"""Evaluation cost (issue 13): several masks per pass (stacked rows), the reference passes
shared, every row computed from cached per-prompt logit differences, and the time of each
phase recorded. The results must stay those of one pass per mask (the path before, kept
here as the reference)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

from maskshare.config import Ablation, ErrorTerm
from maskshare.evaluation.metrics import evaluate_sweep, ld_metrics
from maskshare.masks.masking import MaskedModel, complement, empty_masks, full_masks
from maskshare.masks.slot_stats import compute_slot_stats
from maskshare.masks.stacked import stacked_logit_diffs
from maskshare.testing import tiny_task
from run_helpers import rebuilt_evaluation

PROMPTS = ["The chemical symbol for gold is", "The chemical symbol for iron is",
           "Element: Gold\nSymbol:", "gold Au 79", "The chemical symbol for oxygen is",
           "Which symbol stands for the element on the periodic table? Answer:", "x = 1"]
N_SLOTS = 4


def _slots_for(n: int) -> np.ndarray:
    s = np.array([0] + [3] * (n - 1))
    s[-1] = 1
    if n > 2:
        s[-2] = 2
    return s


@pytest.fixture(scope="module")
def data(tiny):
    model, saes = tiny
    tokens, slots, ans, cf = tiny_task(model, PROMPTS, _slots_for, seed=0)
    stats = compute_slot_stats(model, saes, tokens, slots, N_SLOTS, batch_size=3)
    return model, saes, tokens, slots, ans, cf, stats


def _masks(saes, n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{h: (torch.rand(N_SLOTS, s.cfg.d_sae, generator=g) < p).float()
             for h, s in saes.items()} for p in np.linspace(0.1, 0.9, n)]


def _old_evaluate(mm, batches, masks) -> dict:
    """The evaluation before issue 13: one pass per mask (M, empty, circuit, complement)."""
    clean = mm.clean_logit_diffs(batches)
    full = full_masks(mm.saes, mm.n_slots)
    ld = {"ld_model": clean if mm.error == ErrorTerm.CLEAN else mm.logit_diffs(batches, full),
          "ld_model_clean": clean,
          "ld_ablated": mm.logit_diffs(batches, empty_masks(mm.saes, mm.n_slots)),
          "ld_circuit": mm.logit_diffs(batches, masks),
          "ld_complement": mm.logit_diffs(batches, complement(masks))}
    return {"per_prompt": ld, **ld_metrics(ld)}


@pytest.mark.parametrize("ablation,error", [(Ablation.SLOT_MEAN, ErrorTerm.CLEAN),
                                            (Ablation.GLOBAL_MEAN, ErrorTerm.DROP),
                                            (Ablation.ZERO, ErrorTerm.MEAN)])
@pytest.mark.parametrize("max_tokens", [1, 60, 4096])  # 1 mask a pass, a few, all
def test_stacked_passes_give_each_masks_separate_pass_result(data, ablation, error, max_tokens):
    model, saes, tokens, slots, ans, cf, stats = data
    mm = MaskedModel(model, saes, stats, N_SLOTS, ablation=ablation, error=error)
    batches = mm.prepare(tokens, slots, ans, cf, batch_size=4)
    masks = _masks(saes, 5)
    got = stacked_logit_diffs(mm, batches, masks, max_tokens=max_tokens)
    want = [mm.logit_diffs(batches, m) for m in masks]
    assert len(got) == 5 and np.ptp([w.mean() for w in want]) > 1e-3  # the masks differ
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_stacked_counterfactual_patching_equals_separate_passes():
    from maskshare.testing import tiny_model, tiny_saes

    model = tiny_model(seed=0)
    saes = tiny_saes(model, seed=0)
    tok = model.tokenizer
    pairs = [("The chemical symbol for gold is", "The chemical symbol for iron is"),
             ("Element: Gold\nSymbol:", "Element: Iron\nSymbol:")]
    enc = [[tok.bos_token_id] + tok(p, add_special_tokens=False)["input_ids"]
           for pair in pairs for p in pair]
    tokens, cf_tokens = enc[0::2], enc[1::2]
    slots = [_slots_for(len(t)) for t in tokens]
    mm = MaskedModel(model, saes, None, N_SLOTS, ablation=Ablation.COUNTERFACTUAL,
                     error=ErrorTerm.CLEAN)
    batches = mm.prepare(tokens, slots, [5, 6], [8, 9], ablation_data=cf_tokens)
    masks = _masks(saes, 3, seed=1)
    for g, m in zip(mm.logit_diffs_many(batches, masks), masks, strict=True):
        np.testing.assert_allclose(g, mm.logit_diffs(batches, m), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("error", [ErrorTerm.CLEAN, ErrorTerm.DROP])
def test_a_sweep_evaluated_together_equals_each_mask_evaluated_the_old_way(data, error):
    model, saes, tokens, slots, ans, cf, stats = data
    mm = MaskedModel(model, saes, stats, N_SLOTS, error=error)
    batches = mm.prepare(tokens, slots, ans, cf, batch_size=3)
    masks = dict(zip([0.01, 0.03, 0.1], _masks(saes, 3, seed=2), strict=True))
    results, ref = evaluate_sweep(mm, batches, masks, slots)
    again, _ = evaluate_sweep(mm, batches, masks, slots, reference=ref)  # a shared reference
    for lam, m in masks.items():
        old = _old_evaluate(mm, batches, m)
        for name, v in old["per_prompt"].items():
            np.testing.assert_allclose(results[lam]["per_prompt"][name], v, rtol=1e-5, atol=1e-5)
        for k in ("faithfulness", "faithfulness_vs_clean", "completeness"):
            assert results[lam][k] == pytest.approx(old[k], rel=1e-4, abs=1e-5)
        assert again[lam]["per_prompt"] == results[lam]["per_prompt"]


@pytest.fixture(scope="module")
def evaluated(finished_tiny_run, tmp_path_factory):
    """A copy of the finished tiny run, its evaluation rebuilt (the timings are this build's)."""
    _, run0, cache = finished_tiny_run
    return rebuilt_evaluation(run0, cache, tmp_path_factory.mktemp("eval-cost"))


def test_the_evaluate_stage_rows_equal_one_pass_per_mask(evaluated):
    """Every row of curves.parquet (every variant, lambda and split) against the old path."""
    from maskshare.masks.variant import load_masks, prepare_variant
    from maskshare.run.resources import load_run_config
    from maskshare.run.variants import run_seeds, variants

    cfg = load_run_config(evaluated)
    curves = pl.read_parquet(evaluated / "evaluate" / "curves.parquet")
    metrics = json.loads((evaluated / "metrics.json").read_text())
    chosen, head = metrics["lambda"], metrics["headline_split"]
    main = variants(cfg)[0].name
    seed = run_seeds(cfg)[0]
    checked = complemented = 0
    for v in variants(cfg):
        for split in sorted(set(curves.filter(pl.col("variant") == v.name)["split"])):
            if ":" in split:
                continue
            limit = cfg.evaluate.select_limit if split == cfg.evaluate.select_split else None
            prep = prepare_variant(evaluated, v, split, limit)
            for lam in cfg.masks.lambda_grid:
                old = _old_evaluate(prep.mm, prep.batches, load_masks(evaluated, v, lam, seed))
                sel = curves.filter((pl.col("variant") == v.name) & (pl.col("split") == split)
                                    & (pl.col("lambda") == lam))
                if sel.height == 0:  # a baseline's point nothing reads there: not scored
                    assert v.name != main and split != head, (v.name, split, lam)
                    continue
                row = sel.row(0, named=True)
                # completeness is scored for the main variant's chosen circuit alone
                has_complement = v.name == main and lam == chosen
                complemented += has_complement
                for k in ("ld_model", "ld_ablated", "ld_circuit", "ld_complement",
                          "faithfulness", "completeness"):
                    if k in ("ld_complement", "completeness") and not has_complement:
                        assert row[k] is None, (v.name, split, lam, k)
                    elif old[k] is None:
                        assert row[k] is None, (v.name, split, lam, k)
                    else:
                        assert row[k] == pytest.approx(old[k], rel=1e-4, abs=1e-5), (
                            v.name, split, lam, k)
                checked += 1
    # the main variant everywhere: the selection split and every held-out split
    n_splits = len({s for s in curves["split"] if ":" not in s})
    assert checked >= n_splits * len(cfg.masks.lambda_grid) + len(variants(cfg)) - 1
    # the main variant on the selection split and every held-out split; the baselines on
    # the held-out splits only (nothing reads them on the selection split)
    n_heldout = len({s for s in curves["split"] if ":" not in s}) - 1
    assert complemented == n_heldout + 1
    for v in variants(cfg)[1:]:
        assert cfg.evaluate.select_split not in set(
            curves.filter(pl.col("variant") == v.name)["split"])


def test_rows_are_read_from_the_cached_per_prompt_lds(evaluated):
    lds = pl.read_parquet(evaluated / "evaluate" / "lds.parquet")
    curves = pl.read_parquet(evaluated / "evaluate" / "curves.parquet")
    assert {"variant", "lambda", "seed", "split", "prompt_id", "ld_circuit",
            "ld_complement", "ld_model", "ld_model_clean", "ld_ablated"} <= set(lds.columns)
    plain = curves.filter(~pl.col("split").str.contains(":"))
    # one set of lds per circuit and split (attribution circuits beyond the sweep have no
    # lambda: told apart by their index in the variant's circuit list)
    assert lds.select("variant", "circuit", "split").unique().height == plain.height
    plain = plain.filter(pl.col("lambda").is_not_null())
    for row in plain.iter_rows(named=True):
        part = lds.filter((pl.col("variant") == row["variant"]) & (pl.col("lambda") == row["lambda"])
                          & (pl.col("split") == row["split"]))
        assert part.height == row["n_prompts"]
        # complements not scored (issue 23): null there
        names = ("ld_model", "ld_model_clean", "ld_ablated", "ld_circuit", "ld_complement")
        m = ld_metrics({k: part[k].to_numpy() for k in names if part[k].null_count() == 0})
        # complements are scored for the main variant's chosen circuit alone
        assert (row["completeness"] is None) == (part["ld_complement"].null_count() > 0)
        for k in ("faithfulness", "completeness", "ld_circuit"):
            if row[k] is None:
                assert m[k] is None, (row, k)
            else:
                assert m[k] == pytest.approx(row[k], rel=1e-9, abs=1e-12)


def test_the_evaluation_records_where_its_time_goes(evaluated):
    metrics = json.loads((evaluated / "metrics.json").read_text())
    manifest = json.loads((evaluated / "evaluate" / "manifest.json").read_text())
    phases = metrics["timings"]["phases"]
    assert {"prepare_s", "reference_s", "circuits_s", "curves_s", "circuit_listing_s",
            "report_s"} <= set(phases)
    assert all(v >= 0 for v in phases.values()) and phases["circuits_s"] > 0
    total = metrics["timings"]["evaluate_s"]
    assert sum(v for k, v in phases.items() if k != "report_s") <= total + 1e-3
    assert manifest["timings"]["evaluate_s"] == pytest.approx(total)


def test_a_shared_clean_prefix_gives_every_variant_the_same_bits(data):
    """The clean prefix (residual below the first hook, that hook's latents and error) of a
    prompt set is computed once and shared by models of other groupings and ablations
    (issue 23): the same batches, the same lds, bit for bit, as each model's own."""
    model, saes, tokens, slots, ans, cf, stats = data
    prefix: dict = {}
    for ablation in (Ablation.SLOT_MEAN, Ablation.ZERO):
        mm = MaskedModel(model, saes, stats, N_SLOTS, ablation=ablation, error=ErrorTerm.CLEAN)
        own = mm.prepare(tokens, slots, ans, cf, batch_size=3)
        shared = mm.prepare(tokens, slots, ans, cf, batch_size=3, prefix=prefix)
        for a, b in zip(own, shared, strict=True):
            assert torch.equal(a.resid, b.resid)
            assert (a.first_latents is None) == (b.first_latents is None)
            if a.first_latents is not None:
                assert torch.equal(a.first_latents, b.first_latents)
                assert torch.equal(a.first_error, b.first_error)
        m = _masks(saes, 1, seed=3)
        for x, y in zip(mm.logit_diffs_many(own, m), mm.logit_diffs_many(shared, m), strict=True):
            assert np.array_equal(x, y)
    assert len(prefix) == len(own)  # the second model reused the first one's prefixes
