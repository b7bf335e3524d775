"""evaluation/experiments.train_and_evaluate (benchmarks/mask_settings.py): a `masks`
override trains as it says, batch size included."""

from __future__ import annotations

import shutil

import pytest

from maskshare.evaluation import experiments
from maskshare.run.resources import load_run_config
from maskshare.run.variants import main_variant


@pytest.fixture
def run(finished_tiny_run, tmp_path, monkeypatch):
    cfg_path, src, cache = finished_tiny_run
    monkeypatch.setenv("MASKSHARE_CACHE", str(cache))
    monkeypatch.setenv("MASKSHARE_THREADS", "1")
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def test_a_batch_size_override_batches_the_training_prompts_as_it_says(run, monkeypatch):
    cfg = load_run_config(run)
    seen = []
    real = experiments.train_masks

    def spy(mm, batches, mcfg, lam, **kw):
        seen.append([len(b) for b in batches])
        return real(mm, batches, mcfg, lam, **kw)

    monkeypatch.setattr(experiments, "train_masks", spy)
    small = cfg.masks.model_copy(update={"batch_size": 2, "steps": 2})
    same = cfg.masks.model_copy(update={"steps": 2})
    t = experiments.train_and_evaluate(run, main_variant(cfg), 0.01, 0, [], masks=small)
    experiments.train_and_evaluate(run, main_variant(cfg), 0.01, 0, [], masks=same)
    assert max(seen[0]) == 2 < cfg.masks.batch_size
    assert sum(seen[0]) == sum(seen[1]) == t.n_train_prompts  # the same prompts
    assert max(seen[1]) > 2
