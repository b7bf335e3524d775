"""The `attribution` stage: per-triple scores of the main variant on the training split,
read back through `load_scores`; deterministic, cached on rerun."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from maskshare.layout import RunLayout
from maskshare.resources import load_run_config
from maskshare.stages.attribution import attribution_variants, load_scores
from maskshare.stages.plan import make_call
from maskshare.variants import main_variant


def test_the_stage_writes_both_methods_scores_of_the_main_variant(finished_tiny_run):
    from maskshare.attribution import attribution_scores
    from maskshare.stages.masks import prepare_variant

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
