"""The `counterfactual` ablation end to end: a clean/patch import keeps the pairs patching can
use, a run compares it with the other ablations, a dataset without pairs is refused."""

from __future__ import annotations

import json

import polars as pl
import pytest
import yaml
from test_prompt_datasets import METALS, clean_patch_rows, run_cli, write_rows

from maskshare.config import DatasetRef, load_config, parse_config
from maskshare.datasets import build_dataset, load_items
from maskshare.datasets.registry import find_spec
from maskshare.errors import UserError
from maskshare.run.resources import check_dataset_fits


def _rows_with_unequal_pairs() -> list[dict]:
    """72 distinct clean/patch rows; the patch prompt is the clean one (same length: patching
    runs) except in every fourth row, where a longer prefix makes it unusable for patching."""
    rows = []
    for k in range(4):
        for r in clean_patch_rows():
            r = {**r, "clean_prefix": "Yes. " * k + r["clean_prefix"]}
            r["patch_prefix"] = r["clean_prefix"]
            if len(rows) % 4 == 0:
                r["patch_prefix"] = "So, as everyone knows, " + r["clean_prefix"]
            rows.append(r)
    return rows


@pytest.mark.slow
def test_import_keeps_equal_length_pairs_and_a_run_patches_pairs_of_any_length(
        dirs, tmp_path, capsys, monkeypatch):
    from maskshare.stages.pipeline import run_pipeline
    from maskshare.testing import write_tiny_run_setup

    data, _ = dirs
    f = write_rows(tmp_path / "pairs.jsonl", _rows_with_unequal_pairs())
    common = ["--model", "tiny", "--held-out-group", "list", "--min-items", "1", "--no-progress"]
    rc, out, err = run_cli(["datasets", "import", str(f), "--name", "pairs", *common,
                            "--equal-length-pairs"], capsys)
    assert rc == 0, err
    spec, _ = find_spec("pairs")
    assert spec.filter.equal_length_pairs
    built = build_dataset(DatasetRef(name="pairs", behaviour_filter=False, max_items=60,
                                     min_items=5), __import__("maskshare.model.models").model.models
                          .load_model("tiny"), progress=False)
    assert built.pass_table["n_dropped"].sum() > 0  # the longer prefixes, counted
    for r in built.items.iter_rows(named=True):  # only pairs of equal token length are left
        assert len(r["counterfactual_tokens"]) == len(r["tokens"])
    # without --equal-length-pairs every pair is kept, and patched slot by slot
    rc, out, err = run_cli(["datasets", "import", str(f), "--name", "pairs-all", *common], capsys)
    assert rc == 0, err
    monkeypatch.setenv("MASKSHARE_THREADS", "1")
    cfg_path = write_tiny_run_setup(tmp_path / "run", dataset="pairs-all")
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["evaluate"]["ablations"] = ["counterfactual", "zero"]
    cfg["evaluate"]["seeds"] = [0]
    cfg_path.write_text(yaml.safe_dump(cfg))
    run = run_pipeline(load_config(cfg_path))
    items = load_items(run / "dataset")
    assert any(len(r["counterfactual_tokens"]) != len(r["tokens"])
               for r in items.iter_rows(named=True))
    curves = pl.read_parquet(run / "evaluate" / "curves.parquet")
    assert "attention__counterfactual" in set(curves["variant"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert "baseline_attention__counterfactual" in metrics
    reports = metrics["ablation_reports"]["attention__counterfactual"]
    for split, rep in reports.items():  # every non-BOS token took one of the three patches
        n = sum(rep[k] for k in ("same", "fewer", "none"))
        assert n > 0 and abs(sum(rep[f"{k}_fraction"] for k in ("same", "fewer", "none"))
                             - 1) < 1e-9, split
    assert any(rep["fewer"] + rep["none"] > 0 for rep in reports.values())  # unequal pairs
    # the held-out rows of the trained groups, also scored per group
    assert {"test_entity:question", "test_entity:statement"} <= set(curves["split"])
    assert "faithfulness_test_entity:question" in metrics
    assert "held-out entities: question" in (run / "report.html").read_text()


def test_patching_needs_a_dataset_with_counterfactual_prompts():
    cfg = parse_config({"evaluate": {"ablations": ["counterfactual"]}})
    spec, _ = find_spec("elements-symbol")  # a template dataset: no counterfactual prompts
    with pytest.raises(UserError, match="has no counterfactual prompts"):
        check_dataset_fits(cfg, spec)
    check_dataset_fits(parse_config({}), spec)  # the other ablations are fine


def test_roles_as_the_main_grouping_of_a_prompt_dataset_is_refused():
    from maskshare.datasets.spec import parse_spec

    spec = parse_spec({"kind": "prompts", "name": "p", "source": {"table": "p.jsonl"}},
                      source="p")
    with pytest.raises(UserError, match="no labelled spans"):
        check_dataset_fits(parse_config({"grouping": {"kind": "roles"}}), spec)
    assert METALS  # the shared fixtures import
