"""A kind is its class plus one registry entry: a grouping kind and an ablation defined and
registered here, in this file only, run the tiny pipeline end to end."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from maskshare.config import load_config, parse_config
from maskshare.errors import UserError
from maskshare.grouping.base import Grouping, _no_distance, token_lists
from maskshare.kinds import ABLATIONS, GROUPINGS
from maskshare.masks.ablations import SlotMean
from maskshare.run.layout import RunLayout
from maskshare.stages.pipeline import run_pipeline
from maskshare.testing import write_tiny_run_setup


class ParityGrouping(Grouping):
    """BOS, then even and odd positions: a grouping no built-in kind gives."""

    kind = "test-parity"
    title = "parity slots (test)"

    def _fit(self, model, items, features):
        self.slot_names = ["bos", "even", "odd"]

    def _assign(self, model, items, features):
        slots = []
        for t in token_lists(items):
            s = 1 + np.arange(len(t)) % 2
            s[0] = 0
            slots.append(s.astype(np.int64))
        return _no_distance(slots, items)


class HalfSlotMean(SlotMean):
    """An ablated latent becomes half its slot mean."""

    kind = "test-half-mean"

    def slot_values(self, stats, hook, n_slots):
        return 0.5 * super().slot_values(stats, hook, n_slots)


@pytest.fixture
def test_kinds():
    with GROUPINGS.registered(ParityGrouping), ABLATIONS.registered(HalfSlotMean):
        yield


def test_an_unregistered_kind_is_refused_and_a_registered_one_is_taken(test_kinds):
    cfg = parse_config({"grouping": {"kind": "test-parity"},
                        "evaluate": {"ablations": ["test-half-mean"]}})
    assert cfg.grouping.kind == "test-parity" and cfg.evaluate.ablations == ["test-half-mean"]
    assert GROUPINGS.get("test-parity") is ParityGrouping


def test_kinds_are_unknown_outside_their_registration():
    with pytest.raises(UserError, match="unknown grouping kind 'test-parity'"):
        parse_config({"grouping": {"kind": "test-parity"}})
    with pytest.raises(UserError, match="unknown ablation 'test-half-mean'"):
        parse_config({"masks": {"ablation": "test-half-mean"}})


def test_a_test_grouping_and_ablation_run_the_tiny_pipeline(tmp_path, monkeypatch, test_kinds):
    from maskshare.masks.masking import MaskedModel
    from maskshare.masks.slot_stats import SlotStats
    from maskshare.run.resources import get_model, get_saes

    monkeypatch.setenv("MASKSHARE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MASKSHARE_THREADS", "1")
    p = write_tiny_run_setup(tmp_path, lambdas=(0.1,), steps=3)
    raw = yaml.safe_load(p.read_text())
    raw["grouping"]["kind"] = "test-parity"
    raw["evaluate"].update(seeds=[0], baselines=["single"], ablations=["test-half-mean"])
    raw["dataset"]["max_items"] = 30
    raw["attribution"] = {"methods": []}
    p.write_text(yaml.safe_dump(raw))
    cfg = load_config(p)
    run = run_pipeline(cfg)

    layout = RunLayout(run)
    toks = pl.read_parquet(layout.tokens("test-parity"))
    pos = toks["position"].to_numpy()
    assert toks.height > 0
    assert (toks["slot"].to_numpy() == np.where(pos == 0, 0, 1 + pos % 2)).all()
    for variant in ("test-parity__slot-mean", "test-parity__test-half-mean",
                    "single__slot-mean"):
        summary = json.loads((layout.masks(variant, 0.1, 0) / "summary.json").read_text())
        assert summary["ablation"] == variant.split("__")[1]
    metrics = json.loads(layout.metrics.read_text())
    assert {"faithfulness", "baseline_single__slot-mean",
            "baseline_test-parity__test-half-mean"} <= set(metrics)
    assert "parity slots (test)" in layout.report.read_text()

    # the registered ablation's values are what the masked pass ablates to
    stats = SlotStats.load(layout.slot_stats("test-parity"))
    model, saes = get_model(cfg), get_saes(cfg)
    half = MaskedModel(model, saes, stats, 3, ablation="test-half-mean")
    full = MaskedModel(model, saes, stats, 3, ablation="slot-mean")
    for h in saes:
        torch.testing.assert_close(half.abl[h], 0.5 * full.abl[h])
        assert half.abl[h].abs().sum() > 0
