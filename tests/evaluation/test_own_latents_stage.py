"""`evaluate.own_latents` end to end: the evaluation of a finished tiny run rebuilt with each
prompt's own latents at its subject's tokens; metrics.json, curves, report and export say
so, and the sizes count them."""

from __future__ import annotations

import json
import shutil

import polars as pl
import pytest
import yaml

from maskshare.commands.export import export_document
from maskshare.run.handle import open_run
from maskshare.run.resources import load_run_config
from maskshare.stages import evaluate


@pytest.fixture
def run(finished_tiny_run, tmp_path, monkeypatch):
    cfg_path, src, cache = finished_tiny_run
    monkeypatch.setenv("MASKSHARE_CACHE", str(cache))
    monkeypatch.setenv("MASKSHARE_THREADS", "1")
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def test_evaluation_with_own_latents_counts_and_reports_them(run):
    before = pl.read_parquet(run / "evaluate" / "curves.parquet")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg.setdefault("evaluate", {})["own_latents"] = {"k": 4, "roles": ["subject"]}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert load_run_config(run).evaluate.own_latents.k == 4
    shutil.rmtree(run / "evaluate")
    evaluate.build(run)

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["own_latents"] == {"k": 4, "roles": ["subject"]}
    assert 0 < metrics["own_latents_per_token"] < metrics["latents_per_token"]
    after = pl.read_parquet(run / "evaluate" / "curves.parquet")
    key = ["variant", "lambda", "seed", "split"]
    both = before.join(after, on=key, suffix="_own")
    assert both.height > 0 and "own_latents_per_token" in after.columns
    # every circuit of every method grows by what it adds; the learned part is unchanged
    assert (both["latents_per_token_own"] - both["latents_per_token"]
            - both["own_latents_per_token"]).abs().max() < 1e-9
    assert (both["own_latents_per_token"] >= 0).all() and both["own_latents_per_token"].max() > 0
    assert (both["circuit_size_own"] == both["circuit_size"]).all()
    assert set(after["variant"].unique()) == set(before["variant"].unique())
    report = (run / "report.html").read_text()
    assert "plus the subject&#x27;s own" in report or "plus the subject's own" in report
    doc = export_document(open_run(run))
    assert doc["own_latents"] == {"k": 4, "roles": ["subject"]}
