"""evaluation/experiments.train_and_evaluate (benchmarks/mask_settings.py): a `masks`
override trains as it says, batch size included."""

from __future__ import annotations

from maskshare.evaluation import experiments
from maskshare.run.resources import load_run_config
from maskshare.run.variants import main_variant


def test_a_batch_size_override_batches_the_training_prompts_as_it_says(tiny_run_copy,
                                                                        monkeypatch):
    run = tiny_run_copy
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
