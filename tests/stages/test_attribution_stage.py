"""The `attribution` stage: per-triple scores of the main variant on the training split,
read back through `load_scores`; deterministic, cached on rerun."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from maskshare.run.layout import RunLayout
from maskshare.run.resources import load_run_config
from maskshare.run.variants import main_variant
from maskshare.stages.attribution import attribution_variants, load_scores
from maskshare.stages.plan import make_call


def test_the_stage_writes_both_methods_scores_of_the_main_variant(finished_tiny_run):
    from maskshare.masks.attribution import attribution_scores
    from maskshare.masks.variant import prepare_variant

    _, run, _ = finished_tiny_run
    cfg = load_run_config(run)
    main = main_variant(cfg)
    assert attribution_variants(cfg) == [main]
    prep = prepare_variant(run, main, "train", cfg.masks.max_train_prompts)
    atp, ig = load_scores(run, main, "atp"), load_scores(run, main.name, "integrated-gradients")
    assert list(atp) == list(prep.mm.saes) == list(ig)
    for h, sae in prep.mm.saes.items():
        assert atp[h].shape == ig[h].shape == (prep.mm.n_slots, sae.cfg.d_sae)
        assert atp[h][0].abs().max() == 0  # BOS is never spliced
    assert any(atp[h].abs().max() > 0 for h in atp)
    assert any(not torch.equal(atp[h], ig[h]) for h in atp)  # a nonlinear path: they differ
    # the stage's scores are the library's on the same batches (one shared pass for both)
    direct = attribution_scores(prep.mm, prep.batches, "ig", steps=cfg.attribution.ig_steps)
    for h in ig:
        assert torch.allclose(ig[h], direct[h], rtol=1e-5, atol=1e-7)
    with pytest.raises(FileNotFoundError, match="attribution.methods"):
        load_scores(run, "single__slot-mean", "ig")


def test_a_rerun_is_cached_and_a_rebuild_gives_the_same_bytes(finished_tiny_run, tmp_path,
                                                              caplog):
    _, run0, _ = finished_tiny_run
    run = tmp_path / run0.name
    shutil.copytree(run0, run)
    cfg = load_run_config(run)
    call = make_call(cfg, "attribution", variant=main_variant(cfg).name)
    out = RunLayout(run).attribution_scores(main_variant(cfg), "ig")
    before = out.stat().st_mtime_ns, out.read_bytes()
    with caplog.at_level(logging.INFO, logger="maskshare"):
        call.run(run)
    assert "cached: attribution attention__slot-mean" in caplog.text
    assert out.stat().st_mtime_ns == before[0]
    (RunLayout(run).attribution(main_variant(cfg)) / "manifest.json").unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="maskshare"):
        call.run(run)
    assert "cached" not in caplog.text
    assert out.read_bytes() == before[1]  # deterministic: the same bytes again


def test_attribution_circuits_are_rows_of_the_evaluation_where_they_are_read(finished_tiny_run):
    import json

    import polars as pl

    _, run, _ = finished_tiny_run
    cfg = load_run_config(run)
    layout, main = RunLayout(run), main_variant(cfg).name
    metrics = json.loads(layout.metrics.read_text())
    head, select = metrics["headline_split"], metrics["selection"]["split"]
    curves = pl.read_parquet(layout.curves)
    masks = curves.filter(pl.col("variant") == main)
    keys = sorted(zip(masks["split"], masks["lambda"], strict=True))
    assert any(":" not in s and s != "train" for s, _ in keys)  # held-out splits are there
    for finder in ("atp", "ig"):
        attr = curves.filter(pl.col("variant") == f"{main}__{finder}")
        # never on the selection split (nothing compares them there); on the headline split
        # (plotted, its area and best F reported) every lambda of the learned masks and two
        # points beyond the sweep (lambda null); elsewhere only the points read there
        assert select not in set(attr["split"])
        on_head = attr.filter(pl.col("split") == head)
        assert sorted(on_head.filter(pl.col("lambda").is_not_null())["lambda"]) == \
            sorted(masks.filter(pl.col("split") == head)["lambda"])
        assert on_head.filter(pl.col("lambda").is_null()).height == 2
        assert set(attr["split"]) <= set(masks["split"]) - {select}
        assert set(attr["finder"]) == {finder} and set(attr["grouping"]) == {"attention"}
        assert attr["faithfulness"].null_count() < attr.height
        # no complements scored: nothing compares their completeness
        assert attr["completeness"].null_count() == attr.height
    assert set(masks["finder"]) == {"masks"}
    # the learned masks' completeness: the chosen circuit's, on every split it is scored on
    chosen = masks.filter(pl.col("lambda") == metrics["lambda"])
    assert chosen.height and chosen["completeness"].null_count() == 0
    assert masks.filter(pl.col("lambda") != metrics["lambda"])["completeness"].null_count() \
        == masks.height - chosen.height
    comp = pl.read_parquet(layout.comparisons)
    assert comp.filter(pl.col("finder") != "masks")["method"].to_list() == [
        f"{main}__atp", f"{main}__ig"]
    assert f"baseline_{main}__ig" in metrics and f"baseline_{main}__atp_curve_area" in metrics


def test_attribution_circuits_have_the_learned_masks_sizes(finished_tiny_run):
    from maskshare.evaluation.comparison import TopTriples
    from maskshare.evaluation.metrics import size_metrics
    from maskshare.masks.attribution import slot_token_share
    from maskshare.masks.variant import load_masks, prepare_variant
    from maskshare.stages.attribution import matched_circuits

    _, run, _ = finished_tiny_run
    cfg = load_run_config(run)
    main, seed = main_variant(cfg), cfg.evaluate.seeds[0]
    prep = prepare_variant(run, main, "train", cfg.masks.max_train_prompts)
    half_triple = slot_token_share(prep.slots, prep.mm.n_slots).max() / 2
    circuits = matched_circuits(run, TopTriples(main, "ig"), seed)
    matched = [(lam, c) for lam, c in circuits if lam is not None]
    from maskshare.evaluation.sweep_fits import sweep_lambdas

    assert [lam for lam, _ in matched] == sweep_lambdas(run, cfg, main.name, seed)
    sizes = []
    for lam, c in matched:
        want = size_metrics(load_masks(run, main, lam, seed), prep.slots)["latents_per_token"]
        got = size_metrics(c, prep.slots)["latents_per_token"]
        assert abs(got - want) <= half_triple + 1e-9, (lam, got, want)
        sizes.append(want)
    assert len(set(sizes)) > 1  # the sweep's sizes differ, so the matching is not trivial
    # beyond the sweep: one circuit below its sparsest size and one above its densest
    extra = sorted(size_metrics(c, prep.slots)["latents_per_token"]
                   for lam, c in circuits if lam is None)
    assert len(extra) == 2 and extra[0] < min(sizes) and extra[1] > max(sizes)


def test_the_report_shows_masks_against_attribution(finished_tiny_run):
    from maskshare.report.data import comparison_rows, load_run_view, plot_series

    _, run, _ = finished_tiny_run
    page = RunLayout(run).report.read_text()
    for text in ("attention slots, slot-mean ablation · integrated gradients",
                 "attention slots, slot-mean ablation · attribution patching",
                 "Learned masks and attribution", "Closest to the full model"):
        assert text in page, text
    view = load_run_view(run)
    plot = next(p for p in plot_series(view) if p["title"].startswith("Learned masks"))
    assert [s["name"] for s in plot["series"]] == [
        "learned masks", "attribution patching", "integrated gradients"]
    assert all(s["points"] for s in plot["series"])
    # the groupings and ablations plots keep to learned masks
    assert all("·" not in s["name"] for p in plot_series(view)[:2] for s in p["series"])
    rows = {r["finder"]: r for r in comparison_rows(view) if r["grouping"] == "attention"
            and r["ablation"] == "slot-mean"}
    assert set(rows) == {"masks", "atp", "ig"}
