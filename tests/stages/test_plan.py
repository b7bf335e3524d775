"""The run's plan: stage order, keys that follow their inputs, and the runner that skips
complete outputs and rebuilds incomplete ones."""

from __future__ import annotations

import logging
import shutil

from maskshare.config import RunConfig
from maskshare.run.layout import RunLayout
from maskshare.run.variants import mask_jobs
from maskshare.stages.plan import StageCall, make_call, phases, plan


def _cfg(**upd) -> RunConfig:
    data = {"dataset": {"name": "elements-symbol", "variant": "freeform"},
            "masks": {"lambdas": [0.01, 0.1]}, "evaluate": {"seeds": [0, 1],
                                                           "baselines": ["single"],
                                                           "ablations": ["zero"]}}
    for k, v in upd.items():
        data.setdefault(k, {}).update(v) if isinstance(v, dict) else data.__setitem__(k, v)
    return RunConfig.model_validate(data)


def test_the_plan_orders_stages_and_every_call_comes_after_what_it_reads():
    calls = plan(_cfg())
    assert [c.stage for c in calls] == ["dataset", "groups", "stats", "groups", "stats",
                                        "attribution", *["masks"] * 8, "evaluate"]
    assert [c.params.get("kind") for c in calls[1:5]] == ["attention", "attention",
                                                          "single", "single"]
    masks = [(c.params["variant"], c.params["lam"], c.params["seed"])
             for c in calls if c.stage == "masks"]
    assert masks == mask_jobs(_cfg())
    seen: set[str] = set()
    for c in calls:
        assert set(c.after) <= seen, c  # dependencies first
        seen.add(c.key)
    assert len(seen) == len(calls)  # keys are unique within a run
    # a mask reads the stats of its own grouping
    by_key = {c.key: c for c in calls}
    single_mask = next(c for c in calls if c.stage == "masks" and "single" in c.params["variant"])
    assert [by_key[k].params for k in single_mask.after] == [{"kind": "single"}]
    # attribution scores the main variant, on its grouping's stats
    attr = next(c for c in calls if c.stage == "attribution")
    assert attr.params == {"variant": "attention__slot-mean"}
    assert [by_key[k].params for k in attr.after] == [{"kind": "attention"}]
    assert not any(c.stage == "attribution" for c in plan(_cfg(attribution={"methods": []})))
    every = [c.params["variant"] for c in plan(_cfg(attribution={"variants": "all"}))
             if c.stage == "attribution"]
    assert len(every) == 3 and set(every) == {v for v, _, _ in mask_jobs(_cfg())}


def test_phases_cut_the_plan_at_the_independent_mask_calls():
    head, fan, tail = phases(plan(_cfg()))
    assert {c.stage for c in head} == {"dataset", "groups", "stats", "attribution"}
    assert {c.stage for c in fan} == {"masks"} and [c.stage for c in tail] == ["evaluate"]


def test_keys_change_downstream_of_a_changed_input_only():
    base = {(c.stage, str(c.params)): c.key for c in plan(_cfg())}
    steps = {(c.stage, str(c.params)): c.key for c in plan(_cfg(masks={"steps": 99}))}
    changed = {k[0] for k in base if base[k] != steps[k]}
    assert changed == {"masks", "evaluate"}  # dataset, groups, stats do not read masks.steps
    grouping = {(c.stage, str(c.params)): c.key
                for c in plan(_cfg(grouping={"n_slots": 9}))}
    changed = {k for k in base if base[k] != grouping[k]}
    assert ("dataset", "{}") not in changed
    assert {k[0] for k in changed} == {"groups", "stats", "attribution", "masks", "evaluate"}
    steps = {(c.stage, str(c.params)): c.key
             for c in plan(_cfg(attribution={"ig_steps": 20}))}
    changed = {k for k in base if base[k] != steps[k]}
    # the main variant's masks start from its IG scores (masks.init: attribution); the
    # baseline's (no scores) start cold and keep their keys
    assert {k[0] for k in changed} == {"attribution", "masks", "evaluate"}
    assert {c.params["variant"] for c, o in zip(plan(_cfg(attribution={"ig_steps": 20})),
                                                 plan(_cfg()), strict=True)
            if c.stage == "masks" and c.key != o.key} == {"attention__slot-mean"}
    cold = {(c.stage, str(c.params)): c.key
            for c in plan(_cfg(attribution={"ig_steps": 20}, masks={"init": "cold"}))}
    base_cold = {(c.stage, str(c.params)): c.key for c in plan(_cfg(masks={"init": "cold"}))}
    assert {k[0] for k in base_cold if base_cold[k] != cold[k]} == {"attribution", "evaluate"}
    assert plan(_cfg()) == plan(_cfg())  # deterministic


def test_a_complete_stage_is_skipped_and_an_incomplete_one_rebuilt(finished_tiny_run, tmp_path,
                                                                   caplog):
    _, run0, _ = finished_tiny_run
    run = tmp_path / run0.name
    shutil.copytree(run0, run)
    layout = RunLayout(run)
    call = StageCall("stats", {"kind": "single"})
    out = layout.slot_stats("single")
    before = out.stat().st_mtime_ns, out.read_bytes()
    with caplog.at_level(logging.INFO, logger="maskshare"):
        assert call.run(run) == layout.stats("single")
    assert "cached: slot stats single" in caplog.text
    assert out.stat().st_mtime_ns == before[0]
    (layout.stats("single") / "manifest.json").unlink()  # as if killed before it finished
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="maskshare"):
        call.run(run)
    assert "cached" not in caplog.text
    assert out.read_bytes() == before[1]  # rebuilt to the same bytes
    assert call.is_done(run)


def test_evaluate_is_not_done_without_metrics_or_report(finished_tiny_run, tmp_path):
    from maskshare.run.resources import load_run_config

    _, run0, _ = finished_tiny_run
    run = tmp_path / run0.name
    shutil.copytree(run0, run)
    call = make_call(load_run_config(run), "evaluate")
    assert call.is_done(run)
    RunLayout(run).report.unlink()  # killed between metrics.json and report.html
    assert not call.is_done(run)
    RunLayout(run).metrics.unlink()
    assert not call.is_done(run)


def test_the_lambda_rule_stays_out_of_config_yaml_and_the_run_hash_at_its_default():
    import yaml

    from maskshare.config import config_data, dump_config, parse_config

    plain = config_data(_cfg())
    assert not {"select_split", "select_limit", "target_f"} & set(plain["evaluate"])
    changed = _cfg(evaluate={"target_f": 0.8, "select_limit": None})
    data = config_data(changed)
    assert data["evaluate"]["target_f"] == 0.8 and data["evaluate"]["select_limit"] is None
    assert "select_split" not in data["evaluate"]
    assert parse_config(yaml.safe_load(dump_config(changed))) == changed
    # the attribution section, added later, likewise: absent at its default
    assert "attribution" not in plain
    assert config_data(_cfg(attribution={"ig_steps": 5}))["attribution"] == {"ig_steps": 5}
    # the evaluate call's key follows the rule (it reads `evaluate`)
    assert plan(_cfg())[-1].key != plan(changed)[-1].key


def test_a_field_added_to_a_sub_section_stays_out_at_its_default():
    """evaluate.own_latents.by (added after runs with own latents existed): a config that
    sets own_latents keeps its config.yaml and run hash while `by` is at its default."""
    import yaml

    from maskshare.config import config_data, dump_config, parse_config
    from maskshare.run.resources import run_dir_for

    own = _cfg(evaluate={"own_latents": {"k": 8, "roles": ["subject"]}})
    assert config_data(own)["evaluate"]["own_latents"] == {"k": 8, "roles": ["subject"]}
    dev = _cfg(evaluate={"own_latents": {"k": 8, "roles": ["subject"], "by": "deviation"}})
    assert config_data(dev)["evaluate"]["own_latents"]["by"] == "deviation"
    assert parse_config(yaml.safe_load(dump_config(dev))) == dev
    assert run_dir_for(own) != run_dir_for(dev)
    assert "own_latents" not in config_data(_cfg()).get("evaluate", {})
