"""benchmarks/bench.py: every section runs on the tiny model and the JSON has its figures.

No timing assertions: only that the keys exist and the numbers are positive and finite."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from maskshare.config import GroupingConfig
from maskshare.model.models import tokenize_prompt
from maskshare.testing import tiny_model, tiny_saes

PROMPTS = [
    "The chemical symbol for gold is",
    "The chemical symbol for iron is",
    "Element: Gold\nSymbol:",
    "Which symbol stands for the element on the periodic table? Answer:",
    "gold Au 79",
    "The chemical symbol for oxygen is",
]


@pytest.fixture(scope="module")
def bench():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench.py"
    spec = importlib.util.spec_from_file_location("maskshare_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def setup():
    model = tiny_model(seed=0, n_layers=3)
    saes = tiny_saes(model, d_sae=48, seed=0)
    toks = [tokenize_prompt(model, p) for p in PROMPTS]
    ans = [tokenize_prompt(model, " Au")[-1]] * len(toks)
    cf = [tokenize_prompt(model, " Fe")[-1]] * len(toks)
    return model, saes, toks, ans, cf


def _positive(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def test_bench_sections_write_json_with_positive_figures(bench, setup, tmp_path, capsys):
    model, saes, toks, ans, cf = setup
    coll = bench.bench_collection(model, saes, toks, repeats=1)
    feats = coll.pop("_features")
    assert len(feats) == coll["n_tokens"] == sum(map(len, toks))
    assert coll["latents_stop_at_layer"] == 3 and coll["features_deepest_layer"] == 2
    step = bench.bench_mask_step(model, saes, toks, ans, cf, n_slots=5, repeats=2)
    assert step["start_layer"] == 1  # the first SAE sits at blocks.0.hook_resid_post
    grouping = bench.bench_grouping(model, feats, toks, sizes=(150, 400),
                                    gcfg=GroupingConfig(n_slots=5, clusterer="kmeans"))
    assert [g["tokens"] >= g["target_tokens"] for g in grouping] == [True, True]
    scaling = bench.bench_scaling(model, saes, toks, ans, cf, prompts=(2, 4), lengths=(6, 10),
                                  sae_counts=(1, 3), slot_counts=(4, 6), base=(4, None, 3, 5),
                                  repeats=1)
    assert [r["vary"] for r in scaling] == ["prompts"] * 2 + ["length"] * 2 + ["saes"] * 2 \
        + ["slots"] * 2
    assert [r["n_saes"] for r in scaling if r["vary"] == "saes"] == [1, 3]
    assert {r["padded_tokens"] for r in scaling if r["vary"] == "length"} == {4 * 6, 4 * 10}
    res = {"machine": bench.machine_info("cpu"), "saes": "tiny", "prompts": "tiny",
           "collection": coll, "mask_step": step, "grouping": grouping, "scaling": scaling,
           "pipeline_skipped": "test"}
    paths = bench.write_results(res, tmp_path)
    assert [p.name for p in paths] == ["latest.json", "cpu.json"]
    data = json.loads(paths[0].read_text())
    assert data == json.loads(paths[1].read_text())
    m = data["machine"]
    assert m["device"] == "cpu" and _positive(m["torch_threads"]) and m["torch"]
    for k in ("features", "latents", "features_and_latents"):
        assert _positive(data["collection"][f"{k}_tokens_per_s"])
    s = data["mask_step"]
    for k in ("masked_step_s", "plain_fwd_bwd_s", "masked_step_no_reuse_s",
              "ratio_masked_to_plain", "reuse_gain_full_over_reuse", "reuse_ideal_gain"):
        assert _positive(s[k]), k
    assert all(_positive(v) for v in s["saved_for_backward_mb"].values())
    for g in data["grouping"]:
        assert all(_positive(g[k]) for k in ("fit_s", "assign_s", "peak_traced_mb", "n_slots"))
    for r in data["scaling"]:
        assert _positive(r["step_s"]) and _positive(r["saved_for_backward_mb"])
    bench.print_table(data)
    out = capsys.readouterr().out
    assert "ratio masked / plain" in out and "pipeline: skipped" in out


def test_short_prompt_step_section_times_now_and_before(bench, setup, capsys):
    model, saes, toks, ans, cf = setup
    s = bench.bench_short_step(model, saes, toks, ans, cf, n_prompts=4, n_slots=4, repeats=1)
    assert s["short"]["lengths"] == [6, 7, 8] and s["len12"]["lengths"] == [12]
    for name in ("short", "len12"):
        assert all(_positive(s[name][k]) for k in ("now_s", "before_s", "ratio_before_over_now"))
    assert _positive(s["ratio_short_to_len12_now"])
    assert not model.blocks[0].mlp.W_gate.is_contiguous()  # left in load_model's layout
    print("\n".join(bench.short_step_lines(s)))
    assert "6-8 tokens / 12 tokens" in capsys.readouterr().out


def test_the_pipeline_section_prints_the_evaluation_share(bench, finished_tiny_run, capsys):
    run = finished_tiny_run[1]
    share = bench.evaluation_share(run, 100.0)
    t = share["evaluate_timings"]
    assert share["evaluation_share"] == pytest.approx(t["evaluate_and_report_s"] / 100, abs=1e-4)
    assert t["evaluate_and_report_s"] >= t["evaluate_s"] > 0 and "report_s" in t["phases"]
    cold = {"wall_s": 120.0, "returncode": 0, "inner_s": 100.0, "stage_s": {"evaluate": 9.0},
            **share}
    prefect = {"wall_s": 132.0, "returncode": 0, "stage_s": {"evaluate": 10.0}, **share}
    print("\n".join(bench.pipeline_lines({"cold": cold, "prefect_cold": prefect,
                                           "prefect_ratio": 1.1})))
    out = capsys.readouterr().out
    assert f"= {100 * share['evaluation_share']:.1f}% (target <= 20%)" in out and "circuits" in out
    assert "pipeline cold through Prefect: 132.0 s (rc 0)" in out
    assert "Prefect / in-process, cold wall: 1.100 (target <= 1.1" in out


def test_tiled_features_keep_whole_prompts(bench, setup):
    model, saes, toks, _, _ = setup
    from maskshare.grouping.features import attention_features

    f = attention_features(model, toks)
    tiled, items = bench.tile_features(f, toks, 3 * len(f) - 1)
    assert len(tiled) == 3 * len(f) and items.height == 3 * len(toks)
    assert sum(len(t) for t in items["tokens"].to_list()) == len(tiled)
    assert (tiled.position[: len(f)] == f.position).all()


def test_steps_to_circuit_compares_a_cold_and_a_warm_sweep(bench, setup, tmp_path, capsys):
    import bench_warm

    from maskshare.config import MaskConfig

    model, saes, toks, ans, cf = setup
    mm, trb, evb, evs, _ = bench_warm.setup_from_prompts(model, saes, toks, ans, cf, 4, 2,
                                                         n_slots=5, batch_size=2)
    cfg = MaskConfig(steps=10, warm_steps=4, batch_size=2, early_stop_patience=None)
    s = bench.bench_steps_to_circuit(mm, trb, evb, evs, cfg, [0.05, 0.01], check_every=2)
    assert s["lambdas"] == [0.01, 0.05] and s["n_train_batches"] == 2
    first, second = s["rows"]
    assert [first["warm"]["start"], second["warm"]["start"]] == ["attribution", "continued"]
    assert "continued" not in first and second["continued"]["start"] == "continued"
    for r in s["rows"]:
        assert r["cold"]["steps_run"] == 10 and r["short"]["steps_run"] == 4
        assert r["warm"]["steps_run"] == 4
        assert [c["step"] for c in r["cold_curve"]] == [5, 10]
        assert [c["step"] for c in r["warm_curve"]] == [2, 4]
        assert r["cold_curve"][-1]["f"] == pytest.approx(r["cold"]["f"], abs=1e-4)
        assert r["cold"]["steps_to_circuit"] in (5, 10)  # its own circuit, by step 10
        assert r["cold"]["jaccard_cold"] == 1 and r["short"]["jaccard_short"] == 1
        assert r["warm"]["steps_to_circuit"] in (None, 2, 4)
        assert r["short"]["steps_to_circuit"] in (None, 4)
    assert s["cold_steps"] == 20 and s["warm_steps_run"] == 8
    assert _positive(s["attribution_cpu_s"]) and _positive(s["time_ratio_run"])
    res = {"machine": bench.machine_info("cpu"), "steps_to_circuit": s}
    bench.print_table(res)
    out = capsys.readouterr().out
    assert "steps-to-circuit cold 20 / warm" in out and "continued (continued" in out
    assert [p.name for p in bench.write_results(res, tmp_path)] == ["steps_to_circuit.json"]


def test_forward_section_times_every_read_only_stage(bench, setup, capsys):
    model, saes, toks, ans, cf = setup
    res = bench.bench_forward(model, saes, {"tokens": toks, "answer": ans,
                                            "counterfactual": cf})
    results = res.pop("_results")
    assert set(res["stages"]) == {"filter", "features", "stats", "references", "clean",
                                  "top_tokens"}
    for row in res["stages"].values():
        assert set(row) == {"default", "float32", "bfloat16"}
        assert all(_positive(v["tokens_per_s"]) for v in row.values())
    import bench_forward

    eff = bench_forward.effects(results, model)
    assert eff["filter"]["flips_with_recheck"] == 0
    assert 0 <= eff["top_tokens"]["top5_overlap"] <= 1
    print("\n".join(bench.forward_lines(res)))
    assert "filter" in capsys.readouterr().out


def test_stages_only_results_go_to_their_own_file(bench, tmp_path):
    """--stages-only leaves the full benchmark's latest.json alone."""
    res = {"machine": {"device": "cpu"}, "quick": True, "forward": {"stages": {}},
           "pipeline_skipped": "test", "bench_wall_s": 1.0}
    assert [p.name for p in bench.write_results(res, tmp_path)] == ["stages.json"]
    assert [p.name for p in bench.write_results({**res, "mask_step": {}}, tmp_path)] == [
        "latest.json", "cpu.json"]
