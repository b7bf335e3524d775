"""Choosing on validation (docs/selection.md): the validation split, the headline rule, the
sweep that grows by size, the matched-size verdicts; and, end to end on the tiny model,
that no choice reads a held-out row."""

from __future__ import annotations

import json
import logging

import polars as pl
import pytest

from maskshare.config import SweepConfig, load_config, parse_config
from maskshare.config_selection import run_config_data
from maskshare.datasets.validation import carve_validation
from maskshare.evaluation.comparison import EvalRow
from maskshare.evaluation.verdicts import matched_verdicts
from maskshare.masks.sweep import Fit, holes_left, next_lambdas

HELD = ("test_phrasing", "test_entity", "test_both")


def _items(n_phrasings: int, n_entities: int, variant: str = "freeform",
           template: bool = True) -> pl.DataFrame:
    rows = []
    for p in range(n_phrasings):
        for e in range(n_entities):
            held_p, held_e = p == n_phrasings - 1, e == n_entities - 1
            split = {(False, False): "train", (True, False): "test_phrasing",
                     (False, True): "test_entity", (True, True): "test_both"}[(held_p, held_e)]
            rows.append({"prompt_id": len(rows), "prompt": f"p{p} e{e}", "entity": f"e{e}",
                         "phrasing_id": p,
                         "phrasing": f"P{p} {{x}}" if template else f"group{p}",
                         "split": split, "variant": variant})
    return pl.DataFrame(rows)


def test_validation_takes_training_phrasings_groups_or_entities_and_no_held_out_row():
    items = _items(6, 10)
    out, info = carve_validation(items, "auto", 0.2, 0)
    assert info["by"] == "phrasing" and len(info["phrasings"]) == 1  # round(0.2 * 5)
    val = out.filter(pl.col("split") == "validation")
    assert set(val["phrasing"]) == set(info["phrasings"]) and val.height == 9  # known entities
    # only training rows moved; held-out rows keep their splits
    changed = out.filter(pl.col("split") != items["split"])
    before = dict(zip(items["prompt_id"], items["split"], strict=True))
    assert all(before[p] == "train" for p in changed["prompt_id"])
    assert out.filter(pl.col("split").is_in(HELD)).equals(items.filter(pl.col("split").is_in(HELD)))
    assert not set(out.filter(pl.col("split") == "train")["phrasing"]) & set(val["phrasing"])
    # seeded: the same seed the same rows, another seed (here) other ones
    assert carve_validation(items, "auto", 0.2, 0)[0].equals(out)
    assert {tuple(carve_validation(items, "auto", 0.2, s)[1]["phrasings"]) for s in range(6)} \
        != {tuple(info["phrasings"])}
    # prompt datasets: a group where there are >= 3 training groups
    g, info = carve_validation(_items(4, 10, template=False), "auto", 0.2, 0)
    assert info["by"] == "phrasing" and info["phrasings"][0].startswith("group")
    # too few groups, or templated data: a fraction of the training entities
    for few in (_items(3, 10), _items(6, 10, variant="templated")):
        e, info = carve_validation(few, "auto", 0.2, 0)
        assert info["by"] == "entity" and len(info["entities"]) == 2  # round(0.2 * 9)
        val = e.filter(pl.col("split") == "validation")
        assert set(val["entity"]) == set(info["entities"])
        assert not set(e.filter(pl.col("split") == "train")["entity"]) & set(val["entity"])
    assert carve_validation(items, "none", 0.2, 0)[0].equals(items)


def test_runs_written_before_the_validation_split_read_with_their_old_settings():
    old = {"dataset": {"name": "elements-symbol"}, "masks": {"lambdas": [0.01]}}
    cfg = parse_config(run_config_data(old))
    assert cfg.dataset.validation.by == "none" and not cfg.masks.sweep.refine
    assert cfg.evaluate.select_split == "train"
    new = parse_config(old)  # a user config without the fields: the new defaults
    assert new.dataset.validation.by == "auto" and new.masks.sweep.refine
    assert new.evaluate.select_split == "validation"
    assert parse_config(run_config_data(new.model_dump(mode="json"))) == new


RULE = SweepConfig()


def test_the_sweep_extends_its_ends_and_fills_holes_largest_first():
    fits = [Fit(0.003, 60, 0.80, 0.70), Fit(0.01, 36, 0.75, 0.6), Fit(0.03, 34, 0.6, 0.5),
            Fit(0.1, 4, 0.2, 0.1)]
    new = next_lambdas(fits, RULE, budget_left=10)
    assert [(n.lam, n.start) for n in new] == [
        (0.001, None),      # densest F 0.70 < 0.95: a smaller lambda, a chain head
        (0.3, 0.1),         # sparsest keeps 4 > 1 latents/token: larger, from the sparsest
        (0.0548, 0.03),     # 34 -> 4 (x8.5): the geometric midpoint, from the denser one
    ]                       # 60 -> 36 (x1.67) and 36 -> 34 are within x1.8
    assert [n.lam for n in next_lambdas(fits, RULE, budget_left=2)] == [0.001, 0.3]
    assert next_lambdas(fits, RULE, budget_left=0) == []
    assert [n.start for n in next_lambdas(fits, RULE, 10, continue_sweep=False)] == [None] * 3
    # a finished sweep adds nothing, and says it has no holes
    done = [Fit(0.001, 100, 0.99, 0.96), Fit(0.003, 60, 0.97, 0.9), Fit(0.01, 36, 0.9, 0.8),
            Fit(0.03, 20, 0.7, 0.6), Fit(0.1, 12, 0.5, 0.4), Fit(0.3, 7, 0.3, 0.2),
            Fit(1.0, 4, 0.1, 0.1), Fit(3.0, 2.4, 0.05, 0.0), Fit(9.0, 1.5, 0.0, 0.0),
            Fit(27.0, 0.5, 0.0, 0.0)]
    assert next_lambdas(done, RULE, 10) == [] and holes_left(done, RULE) == []
    assert holes_left(fits, RULE) == [(0.03, 0.1, 8.5)]
    # a denser end that did not gain F: no further extension (the budget goes to holes)
    stalled = [Fit(0.001, 400, 0.98, 0.57), *fits]
    assert [n.why.split()[0] for n in next_lambdas(stalled, RULE, 10)] == ["sparsest", "sizes",
                                                                            "sizes"]


def test_requested_sizes_are_bisected_toward():
    rule = SweepConfig(sizes=[20.0, 200.0], max_ratio=100, dense_f=0, sparse_size=50)
    fits = [Fit(0.01, 40, 1, 1), Fit(0.1, 10, 1, 1)]
    new = next_lambdas(fits, rule, 10)
    assert [(n.lam, n.start) for n in new] == [(0.0316, 0.01), (0.00333, None)]
    # once a circuit is within the tolerance (x1.15) of a size, that size is done
    fits += [Fit(0.0316, 18, 1, 1), Fit(0.00333, 210, 1, 1)]
    assert next_lambdas(fits, rule, 10) == []


def _row(variant, lam, split, f, size, finder="masks"):
    return EvalRow(variant, variant.split("__")[0], variant.split("__")[1], lam, 0, split,
                   {"faithfulness": f, "latents_per_token": size}, finder)


def test_verdicts_say_per_split_who_leads_at_matched_size_and_by_how_much():
    main, single = "attention__slot-mean", "single__slot-mean"
    rows = [_row(main, 0.01, "test_phrasing", 0.90, 20.0),
            _row(single, 0.01, "test_phrasing", 0.6, 10.0),
            _row(single, 0.02, "test_phrasing", 0.8, 40.0),
            _row(main, 0.01, "test_entity", 0.70, 20.0),
            _row(single, 0.01, "test_entity", 0.82, 10.0),
            _row(single, 0.02, "test_entity", 0.82, 40.0)]
    out = matched_verdicts(rows, main, [(single, "masks")], ["test_phrasing", "test_entity"],
                           0.01)
    p = out["matched_test_phrasing"]
    assert p["leader"] == main and p["methods"][single]["f"] == pytest.approx(0.7)
    assert p["methods"][single]["lead"] == pytest.approx(0.2)
    e = out["matched_test_entity"]
    assert e["leader"] == single and e["methods"][single]["lead"] == pytest.approx(-0.12)
    assert out["verdicts"][1].startswith("On held-out entities at 20 latents per token, single "
                                         "(slot-mean) leads attention (slot-mean) by 0.12 F")
    assert ("leads every other method by at least 0.20 F. attention (slot-mean) leads single "
            "(slot-mean) by 0.20.") \
        in out["verdicts"][0]


# ------------------------------------------------------------------ end to end, tiny model

def _tiny_cfg(root, baselines=("from-end",), **masks_sweep):
    """A small tiny-model run: the main variant and `baselines`, one seed."""
    import yaml

    from maskshare.testing import write_tiny_run_setup

    p = write_tiny_run_setup(root, lambdas=(0.01, 0.1))
    data = yaml.safe_load(p.read_text())
    data["evaluate"] = {"seeds": [0], "baselines": list(baselines), "ablations": []}
    data["masks"]["sweep"] = masks_sweep
    p.write_text(yaml.safe_dump(data))
    return load_config(p)


def _corrupt_held_out(run):
    """Another counterfactual token for every held-out row (a swap of answer and
    counterfactual would leave F unchanged: it flips every logit difference's sign)."""
    from maskshare.artifacts import write_manifest
    from maskshare.run.layout import RunLayout

    lo = RunLayout(run)
    items = pl.read_parquet(lo.items)
    held = pl.col("split").is_in(HELD)
    other = pl.when(pl.col("answer_id") == 3).then(4).otherwise(3)
    items = items.with_columns(
        pl.when(held).then(other).otherwise(pl.col("counterfactual_id"))
        .cast(pl.Int64).alias("counterfactual_id"))
    items.write_parquet(lo.items)
    write_manifest(lo.dataset)


def test_no_choice_reads_a_held_out_row(tmp_path, monkeypatch):
    """The same run twice, the second with every held-out row's answer and counterfactual
    swapped after the dataset stage: the held-out figures change, but the validation split,
    every lambda the sweep added, every mask and the chosen circuit do not."""
    from maskshare.evaluation.sweep_fits import sweep_lambdas
    from maskshare.run.layout import RunLayout
    from maskshare.run.resources import prepare_run
    from maskshare.stages.pipeline import run_pipeline
    from maskshare.stages.plan import make_call

    monkeypatch.setenv("MASKSHARE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MASKSHARE_THREADS", "1")
    cfg = _tiny_cfg(tmp_path, budget=2)
    clean = run_pipeline(cfg)
    other = cfg.model_copy(update={"runs_dir": str(tmp_path / "other")})
    run = prepare_run(other)
    make_call(other, "dataset").run(run)
    _corrupt_held_out(run)
    assert run_pipeline(other) == run
    a, b = (json.loads(RunLayout(r).metrics.read_text()) for r in (clean, run))
    assert a["faithfulness_test_phrasing"] != b["faithfulness_test_phrasing"]  # it did bite
    assert a["selection"] == b["selection"] and a["lambda"] == b["lambda"]
    assert a["selection"]["split"] == "validation"
    for v in ("attention__slot-mean", "from-end__slot-mean"):
        lams = sweep_lambdas(clean, cfg, v, 0)
        assert lams == sweep_lambdas(run, other, v, 0) and len(lams) > 2  # it grew
        for lam in lams:
            for f in ("masks.safetensors", "summary.json"):
                assert (RunLayout(clean).masks(v, lam, 0) / f).read_bytes() == \
                    (RunLayout(run).masks(v, lam, 0) / f).read_bytes()
    items = pl.read_parquet(RunLayout(clean).items)
    assert (items["split"] == "validation").sum() > 0


def test_a_size_targeted_sweep_hits_its_size_and_leaves_no_hole_but_for_its_budget(
        tmp_path, monkeypatch, caplog):
    import yaml

    from maskshare.evaluation.sweep_fits import mask_fit, sweep_lambdas
    from maskshare.stages.pipeline import run_pipeline

    monkeypatch.setenv("MASKSHARE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MASKSHARE_THREADS", "1")
    cfg = _tiny_cfg(tmp_path, baselines=(), sizes=[30.0], budget=6, max_ratio=1.6)
    cfg = parse_config({**yaml.safe_load(yaml.safe_dump(cfg.model_dump(mode="json"))),
                        "attribution": {"methods": []}})
    rule = cfg.masks.sweep
    run = run_pipeline(cfg)
    v = "attention__slot-mean"
    lams = sweep_lambdas(run, cfg, v, 0)
    fits = [mask_fit(run, v, lam, 0) for lam in lams]
    first = [f for f in fits if f.lam in cfg.masks.lambda_grid]
    near = [f for f in fits if 1 / 1.15 <= f.size / 30 <= 1.15]
    # the first lambdas left work to do: a hole, and no circuit near 30 latents per token
    assert holes_left(first, rule) and not [f for f in first if f in near]
    assert near  # bisection found one
    added = len(lams) - len(first)
    assert 0 < added <= rule.budget
    assert added == rule.budget or (holes_left(fits, rule) == []
                                    and fits[-1].size <= rule.sparse_size)
    # every remaining hole is one the rule would still split: only the budget stopped it
    if holes_left(fits, rule):
        assert next_lambdas(fits, rule, 1)
    # a rerun builds nothing and replays the same sweep
    caplog.set_level(logging.INFO, logger="maskshare.stages.plan")
    caplog.clear()
    assert run_pipeline(cfg) == run
    assert not [r for r in caplog.records if r.getMessage().startswith("building:")]
    assert sweep_lambdas(run, cfg, v, 0) == lams


def test_training_stops_when_validation_f_stops_improving_and_resumes_to_the_same_stop(
        tiny, tmp_path):
    import numpy as np

    from maskshare.config import MaskConfig
    from maskshare.masks.masking import MaskedModel
    from maskshare.masks.slot_stats import compute_slot_stats
    from maskshare.masks.training import train_masks
    from maskshare.testing import tiny_task

    model, saes = tiny
    prompts = ["a b c d", "e f g", "h i j k l", "m n o", "p q r s", "t u v"]
    tokens, slots, ans, cf = tiny_task(model, prompts, lambda n: np.minimum(np.arange(n), 2))
    stats = compute_slot_stats(model, saes, tokens, slots, n_slots=3)
    mm = MaskedModel(model, saes, stats, 3)
    batches = mm.prepare(tokens, slots, ans, cf, batch_size=3)
    scores = iter([0.5, 0.7, 0.702, 0.69, 0.9, 0.95])  # no gain > 0.005 after the 2nd check
    seen = []

    def monitor(masks):
        assert all(set(m.unique().tolist()) <= {0.0, 1.0} for m in masks.values())  # binary
        seen.append(1)
        return next(scores)

    cfg = MaskConfig(steps=30, batch_size=3, early_stop_patience=None, early_stop_min_steps=4,
                     validation_stop={"every": 2, "patience": 2})
    res = train_masks(mm, batches, cfg, 0.01, seed=0, progress=False, monitor=monitor)
    # checks after steps 4, 6, 8, 10 (min 4 steps, every 2): 0.702 and 0.69 gain nothing
    assert len(res.history) == 10 and len(seen) == 4
    assert [r.get("f_validation") for r in res.history if "f_validation" in r] == \
        [0.5, 0.7, 0.702, 0.69]
    # without a monitor (a run without validation rows) the setting changes nothing
    assert len(train_masks(mm, batches, cfg, 0.01, seed=0, progress=False).history) == 30
    # a resumed training rebuilds the stop from its history: it does not train on
    ckpt = tmp_path / "ckpt"
    scores = iter([0.5, 0.7, 0.702, 0.69])
    train_masks(mm, batches, cfg, 0.01, seed=0, progress=False, monitor=monitor,
                checkpoint_dir=ckpt)
    again = train_masks(mm, batches, cfg, 0.01, seed=0, progress=False,
                        monitor=lambda m: pytest.fail("trained on after its stop"),
                        checkpoint_dir=ckpt)
    assert len(again.history) == 10
