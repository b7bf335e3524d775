"""The evaluation rules on hand-made rows with known answers: lambda choice, headline
metrics, matched-size comparison, splits."""

from __future__ import annotations

import math

import polars as pl
import pytest

from maskshare.config import Ablation, EvalConfig, GroupingKind
from maskshare.evaluation.comparison import (
    EvalRow,
    TopTriples,
    choose_lambda,
    compare_at_matched_size,
    group_splits,
    headline_metrics,
    headline_split,
    heldout_splits,
    quality_metrics,
)
from maskshare.evaluation.selection import BEST, SMALLEST, choose_circuit
from maskshare.run.variants import Variant

MAIN = Variant(GroupingKind.ATTENTION, Ablation.SLOT_MEAN)
SINGLE = Variant(GroupingKind.SINGLE, Ablation.SLOT_MEAN)
ZERO = Variant(GroupingKind.ATTENTION, Ablation.ZERO)


def row(v: Variant, lam: float, split: str, f: float | None, size: float, **more) -> EvalRow:
    m = {"faithfulness": f, "faithfulness_vs_clean": None if f is None else f / 2,
         "completeness": 0.1, "latents_per_token": size, "circuit_size": int(size * 10),
         "distinct_latents": int(size), "ld_model": 3.0, "ld_model_clean": 4.0,
         "ld_ablated": 0.5, "ld_circuit": 2.0, "n_prompts": 8, **more}
    return EvalRow(v.name, v.grouping.value, v.ablation.value, lam, 0, split, m)


def test_the_sparsest_lambda_reaching_the_target_on_the_selection_split_wins():
    rows = [row(MAIN, 0.01, "validation", 0.97, 40.0), row(MAIN, 0.02, "validation", 0.92, 20.0),
            row(MAIN, 0.05, "validation", 0.85, 8.0),
            # other splits and variants never count, however good they look
            row(MAIN, 0.05, "test_phrasing", 0.99, 8.0), row(MAIN, 0.05, "train", 0.99, 8.0),
            row(SINGLE, 0.1, "validation", 1.0, 1.0)]
    assert choose_lambda(rows, MAIN.name) == 0.02
    # a lower target admits the sparser one; another selection split changes the answer
    assert choose_lambda(rows, MAIN.name, EvalConfig(target_f=0.8)) == 0.05
    assert choose_lambda(rows, MAIN.name, EvalConfig(select_split="test_phrasing")) == 0.05


def test_without_a_lambda_reaching_the_target_the_best_f_wins_and_none_is_skipped():
    rows = [row(MAIN, 0.01, "validation", 0.7, 40.0), row(MAIN, 0.02, "validation", None, 20.0),
            row(MAIN, 0.05, "validation", 0.8, 8.0)]
    assert choose_lambda(rows, MAIN.name) == 0.05
    chosen = choose_circuit(rows, MAIN.name, "validation", 0.9)
    assert (chosen.lam, chosen.rule, chosen.faithfulness) == (0.05, BEST, 0.8)
    assert choose_circuit(rows, MAIN.name, "validation", 0.75).rule == SMALLEST
    only_none = [row(MAIN, 0.03, "validation", None, 5.0),
                 row(MAIN, 0.04, "validation", None, 2.0)]
    assert choose_lambda(only_none, MAIN.name) == 0.03  # the first one, undecided


def test_headline_metrics_read_the_main_variant_at_the_chosen_lambda():
    rows = [row(MAIN, 0.01, "test_phrasing", 0.9, 30.0), row(MAIN, 0.02, "test_phrasing", 0.8, 12.0),
            row(MAIN, 0.02, "test_entity", 0.4, 12.0), row(SINGLE, 0.02, "test_phrasing", 0.1, 1.0)]
    m = headline_metrics(rows, MAIN, "test_phrasing", ["test_phrasing", "test_entity"], 0.02)
    assert m["faithfulness"] == 0.8 and m["latents_per_token"] == 12.0
    assert m["faithfulness_test_entity"] == 0.4 and m["faithfulness_vs_clean_test_entity"] == 0.2
    assert list(m)[:3] == ["faithfulness", "faithfulness_vs_clean", "completeness"]


def test_matched_comparison_reads_each_curve_at_the_main_size_in_log_space():
    head = "test_phrasing"
    rows = [row(MAIN, 0.01, head, 0.9, 100.0), row(MAIN, 0.05, head, 0.6, 10.0),
            row(SINGLE, 0.01, head, 0.8, 100.0), row(SINGLE, 0.05, head, 0.2, 1.0),
            row(ZERO, 0.01, head, 0.5, 100.0), row(ZERO, 0.05, head, 0.3, 50.0),
            row(SINGLE, 0.05, "train", 0.0, 1000.0)]  # other splits stay out
    table, metrics = compare_at_matched_size(rows, [MAIN, SINGLE, ZERO], MAIN, head, 10.0)
    by = {r.method: r for r in table}
    assert by[MAIN.name].f_matched == pytest.approx(0.6)
    assert by[SINGLE.name].f_matched == pytest.approx(0.5)  # halfway from 1 to 100 in log10
    assert by[ZERO.name].f_matched is None  # 10 is outside its measured sizes: no extrapolation
    assert metrics[f"baseline_{SINGLE.name}"] == pytest.approx(0.5)
    assert list(metrics)[0] == "curve_area" and f"baseline_{ZERO.name}_curve_area" in metrics
    assert by[SINGLE.name].best_f == 0.8
    # areas share one x range (1..100): single spans it, so its area is the mean of a line
    assert by[SINGLE.name].area == pytest.approx(0.5)
    assert "F at 10 latents/token" in table[0].as_dict()


def test_attribution_circuits_are_compared_like_a_variant():
    head = "test_phrasing"
    ig, atp_zero = TopTriples(MAIN, "ig"), TopTriples(ZERO, "atp")
    rows = [row(MAIN, 0.01, head, 0.9, 100.0), row(MAIN, 0.05, head, 0.6, 10.0),
            row(SINGLE, 0.01, head, 0.8, 100.0),
            EvalRow.of(ig, 0.01, 0, head, {"faithfulness": 0.7, "latents_per_token": 100.0}),
            EvalRow.of(ig, 0.05, 0, head, {"faithfulness": 0.2, "latents_per_token": 10.0}),
            EvalRow.of(atp_zero, 0.01, 0, head, {"faithfulness": 0.1,
                                                 "latents_per_token": 100.0})]
    table, metrics = compare_at_matched_size(rows, [MAIN, SINGLE, ig, atp_zero], MAIN,
                                             head, 10.0)
    by = {r.method: r for r in table}
    assert by[ig.name].f_matched == pytest.approx(0.2) and by[ig.name].finder == "ig"
    assert by[MAIN.name].finder == "masks" and by[MAIN.name].f_matched == pytest.approx(0.6)
    assert metrics[f"baseline_{ig.name}"] == pytest.approx(0.2)
    assert by[ig.name].as_dict()["finder"] == "ig"
    # curve areas span the learned masks' sizes only (10..100), whatever the circuits' sizes
    assert by[atp_zero.name].f_matched is None  # measured at 100 only: no extrapolation to 10


def test_rows_as_written_keep_the_column_order_and_drop_nested_values():
    r = EvalRow.of(MAIN, 0.02, 1, "train", {"faithfulness": 0.5, "per_prompt": [1, 2],
                                            "by_slot": {"a": 1}, "latents_per_token": 3.0})
    assert list(r.as_dict()) == ["variant", "grouping", "ablation", "finder", "lambda", "seed",
                                 "split", "faithfulness", "latents_per_token"]
    assert r.finder == "masks"
    t = EvalRow.of(TopTriples(MAIN, "ig"), 0.02, 1, "train", {"faithfulness": 0.4})
    assert (t.variant, t.grouping, t.ablation, t.finder) == (
        "attention__slot-mean__ig", "attention", "slot-mean", "ig")
    assert r.faithfulness == 0.5 and r.lam == 0.02


def test_splits_and_headline():
    items = pl.DataFrame({"split": ["train", "test_entity", "test_both", "test_phrasing"]})
    assert heldout_splits(items) == ["test_phrasing", "test_entity", "test_both"]
    assert headline_split("freeform", ["test_phrasing", "test_entity"]) == "test_phrasing"
    assert headline_split("templated", ["test_phrasing", "test_entity"]) == "test_entity"
    assert headline_split("freeform", []) is None


def test_prompt_datasets_are_also_scored_per_group_of_each_held_out_split():
    items = pl.DataFrame({"split": ["train", "test_entity", "test_entity", "test_phrasing"],
                          "phrasing": ["simple", "simple", "nounpp", "rc"]})
    # test_phrasing has one group (nothing to break down); test_entity has two
    assert group_splits(items, ["test_phrasing", "test_entity"]) == {
        "test_entity": ["nounpp", "simple"]}
    templated = items.with_columns(pl.lit("The {x} is").alias("phrasing"))
    assert group_splits(templated, ["test_entity"]) == {}  # template phrasings: not groups


def test_quality_metrics_keep_present_values_per_split():
    q = {"ari_roles": 0.7, "ari_template": None, "stability": 0.9,
         "by_split": {"test_entity": {"ari_roles": 0.6, "purity_roles": None}}}
    assert quality_metrics(q) == {"ari_roles": 0.7, "stability": 0.9,
                                  "ari_roles_test_entity": 0.6}
    assert not math.isnan(quality_metrics({"ood_fraction": 0.0})["ood_fraction"])


def test_a_circuit_failing_its_own_training_prompts_is_refused():
    """evaluate.train_floor: the smallest circuit reaching the target on validation is
    refused when F on its mask's training sample is below the floor (agreement's collapsed
    lambda 0.01 read 0.55 there and 1.07 on validation); unknown fits are never refused;
    when every candidate fails, the smallest is kept and the rule says so."""
    from maskshare.evaluation.selection import UNFIT
    from maskshare.report.page import chosen_text

    rows = [row(MAIN, 0.003, "validation", 1.09, 130.0), row(MAIN, 0.01, "validation", 1.07, 36.0),
            row(MAIN, 0.0173, "validation", 0.98, 40.0), row(MAIN, 0.03, "validation", 0.68, 17.0)]
    fits = {0.003: 0.98, 0.01: 0.55, 0.0173: 0.97, 0.03: 0.92}
    assert choose_circuit(rows, MAIN.name, "validation", 0.9).lam == 0.01  # no floor
    chosen = choose_circuit(rows, MAIN.name, "validation", 0.9, fits, 0.8)
    assert (chosen.lam, chosen.rule, chosen.refused) == (0.0173, SMALLEST, (0.01,))
    sel = chosen.as_metrics()["selection"]
    assert sel["train_floor"] == 0.8 and sel["refused_below_train_floor"] == [0.01]
    assert "refused" in chosen_text({"selection": sel}) and "0.01" in chosen_text(
        {"selection": sel})
    # a lambda without a recorded fit is not refused; no floor, no entries
    assert choose_circuit(rows, MAIN.name, "validation", 0.9, {0.01: None}, 0.8).lam == 0.01
    assert "train_floor" not in choose_circuit(rows, MAIN.name, "validation",
                                               0.9).as_metrics()["selection"]
    # every circuit reaching the target fails the floor: the smallest is kept, and said so
    bad = choose_circuit(rows, MAIN.name, "validation", 0.9, {k: 0.1 for k in fits}, 0.8)
    assert (bad.lam, bad.rule) == (0.01, UNFIT)
    assert "fit failure" in chosen_text({"selection": bad.as_metrics()["selection"]})
    # nor does it move a choice made by best F (no circuit reaching the target)
    low = [row(MAIN, 0.01, "validation", 0.7, 40.0), row(MAIN, 0.05, "validation", 0.8, 8.0)]
    assert choose_circuit(low, MAIN.name, "validation", 0.9, {0.01: 0.9, 0.05: 0.1},
                          0.8).rule == BEST
