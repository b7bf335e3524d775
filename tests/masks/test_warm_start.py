"""Warm starts of mask training: the attribution -> logits mapping, reproducibility and
resume of warm-started and continued trainings, and the sweep as a chain in the plan."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

from maskshare.artifacts import file_sha256
from maskshare.config import MaskConfig, RunConfig
from maskshare.masks.attribution import attribution_scores
from maskshare.masks.masking import MaskedModel
from maskshare.masks.slot_stats import compute_slot_stats
from maskshare.masks.training import (
    compute_targets,
    slot_weights,
    train_masks,
    train_sweep,
)
from maskshare.masks.warm_start import (
    CLOSED_LOGIT,
    attribution_logits,
    attribution_start,
    warm_config,
)
from maskshare.testing import tiny_task

PROMPTS = ["The chemical symbol for gold is", "Element: Gold\nSymbol:", "gold Au 79",
           "The chemical symbol for iron is", "x = [1, 2, 3]", "The chemical symbol for tin is"]
N_SLOTS = 4


def _slots(n: int) -> np.ndarray:
    s = np.array([0] + [2 + (i % 2) for i in range(n - 1)])
    s[-1] = 1
    return s


@pytest.fixture(scope="module")
def task(tiny):
    model, saes = tiny
    tokens, slots, ans, cf = tiny_task(model, PROMPTS, _slots, seed=2)
    stats = compute_slot_stats(model, saes, tokens, slots, N_SLOTS, batch_size=3)
    mm = MaskedModel(model, saes, stats, N_SLOTS)
    batches = mm.prepare(tokens, slots, ans, cf, batch_size=3)
    scores = attribution_scores(mm, batches, "integrated-gradients", steps=4)
    targets = compute_targets(mm, batches, "logit-diff", "task")
    return dict(mm=mm, batches=batches, scores=scores, targets=targets,
                w=slot_weights(batches, N_SLOTS))


def _cfg(**kw):
    base = dict(steps=10, warm_steps=8, checkpoint_every=3, batch_size=3, lr=0.1,
                temperature_end=50.0, early_stop_patience=None)
    return MaskConfig(**{**base, **kw})


# ---- the mapping ----

def test_the_mapping_opens_what_pays_for_itself_and_closes_the_rest():
    # one SAE, BOS + 2 slots holding 1/4 and 3/4 of the tokens; lambda 0.1, task scale 2:
    # a triple of slot 1 costs 2 * 0.1 * 0.25 = 0.05, of slot 2 0.15 (in score units)
    w = torch.tensor([0.0, 0.25, 0.75])
    scores = {"h": torch.tensor([[9.0, 9.0, 9.0, 9.0],
                                 [1.0, -1.0, 0.05, 1e-6],
                                 [1.0, 0.15, 0.049, 0.0]])}
    th = attribution_logits(scores, 0.1, 2.0, w, open_ratio=0.8, init_logit=0.5)["h"]
    assert th[0].tolist() == [0.5] * 4                       # BOS: as a cold start
    assert th[1, 0] == th[1, 1] == 0.5                       # r = 20, either sign: open
    assert th[2, 0] == 0.5                                   # r = 6.7: open
    assert th[1, 2].item() == pytest.approx(math.log(1 / 0.8))  # r = 1: on the ramp, open
    assert th[2, 1].item() == pytest.approx(math.log(1 / 0.8))  # same r in the other slot
    assert th[2, 2].item() == pytest.approx(math.log(0.049 / 0.15 / 0.8))  # r < 0.8: closed
    assert th[2, 2] < 0
    assert th[1, 3] == th[2, 3] == -CLOSED_LOGIT              # no score: closed
    assert attribution_logits(scores, 0.0, 2.0, w, open_ratio=0.8,
                              init_logit=0.5)["h"].eq(0.5).all()  # lambda 0: all open
    # a larger lambda opens a subset
    big = attribution_logits(scores, 1.0, 2.0, w, open_ratio=0.8, init_logit=0.5)["h"]
    assert ((big > 0) <= (th > 0)).all() and (big > 0).sum() < (th > 0).sum()


def test_on_real_scores_the_top_triples_start_open_and_the_rest_closed(task):
    sc, w, scale = task["scores"], task["w"], task["targets"].scale
    ratio = torch.cat([(sc[h][1:].abs() / (scale * 0.05 * w[1:, None])).flatten()
                       for h in sc])
    theta = attribution_logits(sc, 0.05, scale, w, open_ratio=0.33, init_logit=0.5)
    flat = torch.cat([theta[h][1:].flatten() for h in sc])
    order = torch.argsort(ratio, descending=True)
    n_open = int((flat > 0).sum())
    assert 0 < n_open < flat.numel()  # the case must split the triples
    # exactly the top-ranked (benefit / cost) triples are open, the highest fully
    assert (flat[order[:n_open]] > 0).all() and (flat[order[n_open:]] <= 0).all()
    assert flat[order[0]] == 0.5
    assert (ratio[order[n_open - 1]] > 0.33) and (ratio[order[n_open]] <= 0.33)


# ---- training from a warm start ----

def _warm_theta(task, lam, cfg):
    return attribution_start(task["scores"], cfg, lam, task["targets"].scale, task["w"])


def test_warm_started_training_is_reproducible_to_the_byte(task, tmp_path):
    cfg = _cfg()
    files = []
    for i in range(2):
        init = _warm_theta(task, 0.05, cfg)
        res = train_masks(task["mm"], task["batches"], warm_config(cfg), 0.05, seed=3,
                          init_theta=init, progress=False)
        res.save(tmp_path / str(i))
        files.append([file_sha256(tmp_path / str(i) / f) for f in ("masks.safetensors",
                                                                  "summary.json")])
    assert files[0] == files[1]
    assert len(res.history) == 8  # warm_steps
    cold = train_masks(task["mm"], task["batches"], cfg, 0.05, seed=3, progress=False)
    assert cold.key != res.key and len(cold.history) == 10


@pytest.mark.parametrize("start", ["attribution", "continued"])
def test_warm_started_training_resumes_after_a_crash_like_cold(task, tmp_path, start):
    cfg = warm_config(_cfg())
    if start == "attribution":
        init = _warm_theta(task, 0.05, cfg)
    else:
        init = train_masks(task["mm"], task["batches"], _cfg(), 0.01, seed=3,
                           progress=False).theta
    ref = train_masks(task["mm"], task["batches"], cfg, 0.05, seed=3, init_theta=init,
                      progress=False)

    class Crash(Exception):
        pass

    def crash(step, rec):  # after step 6 of 8; the last checkpoint was after 6 steps
        if step == 6:
            raise Crash

    with pytest.raises(Crash):
        train_masks(task["mm"], task["batches"], cfg, 0.05, seed=3, init_theta=init,
                    checkpoint_dir=tmp_path, progress=False, callback=crash)
    seen = []
    res = train_masks(task["mm"], task["batches"], cfg, 0.05, seed=3, init_theta=init,
                      checkpoint_dir=tmp_path, progress=False,
                      callback=lambda s, r: seen.append(s))
    assert seen[0] == 6  # from the step-6 checkpoint
    for h in ref.theta:
        assert torch.equal(res.theta[h], ref.theta[h])
    assert [r["loss"] for r in res.history] == [r["loss"] for r in ref.history]
    # another start is another run: its checkpoint is not reused
    other = {h: t + 0.25 for h, t in init.items()}
    seen.clear()
    train_masks(task["mm"], task["batches"], cfg, 0.05, seed=3, init_theta=other,
                checkpoint_dir=tmp_path, progress=False, callback=lambda s, r: seen.append(s))
    assert seen[0] == 0


def test_a_continued_sweep_equals_a_rerun_and_each_lambda_starts_from_the_last(task,
                                                                               tmp_path):
    cfg = _cfg(lambdas=[0.01, 0.05, 0.2])
    a = train_sweep(task["mm"], task["batches"], cfg, seed=1, out_dir=tmp_path / "a",
                    warm_start=True, init_scores=task["scores"], progress=False)
    b = train_sweep(task["mm"], task["batches"], cfg, seed=1, out_dir=tmp_path / "b",
                    warm_start=True, init_scores=task["scores"], progress=False)
    for lam in (0.01, 0.05, 0.2):
        assert file_sha256(tmp_path / "a" / f"{lam:g}" / "masks.safetensors") == \
            file_sha256(tmp_path / "b" / f"{lam:g}" / "masks.safetensors")
        assert len(a[lam].history) == 8  # every lambda warm-started
    # lambda 0.05 started from lambda 0.01's result: training it from there alone agrees
    alone = train_masks(task["mm"], task["batches"], warm_config(cfg), 0.05, seed=1,
                        init_theta=a[0.01].theta, progress=False)
    assert all(torch.equal(alone.theta[h], a[0.05].theta[h]) for h in alone.theta)
    assert alone.key == a[0.05].key
    # a removed middle lambda is retrained to the same bytes; the later one is kept
    shutil.rmtree(tmp_path / "a" / "0.05")
    again = train_sweep(task["mm"], task["batches"], cfg, seed=1, out_dir=tmp_path / "a",
                        warm_start=True, init_scores=task["scores"], progress=False)
    assert file_sha256(tmp_path / "a" / "0.05" / "masks.safetensors") == \
        file_sha256(tmp_path / "b" / "0.05" / "masks.safetensors")
    assert all(torch.equal(again[0.2].theta[h], b[0.2].theta[h]) for h in b[0.2].theta)


# ---- the plan ----

def _run_cfg(**masks) -> RunConfig:
    return RunConfig.model_validate({
        "dataset": {"name": "elements-symbol", "variant": "freeform"},
        "masks": {"lambdas": [0.1, 0.01, 0.03], **masks},
        "evaluate": {"seeds": [0, 1], "baselines": ["single"], "ablations": []}})


def test_the_plan_chains_each_variant_and_seed_from_dense_to_sparse():
    from maskshare.stages.plan import chains, phases, plan

    calls = plan(_run_cfg())
    by_key = {c.key: c for c in calls}
    _, fan, _ = phases(calls)
    got = [[(c.params["variant"], c.params["lam"], c.params["seed"]) for c in ch]
           for ch in chains(fan)]
    assert got == [[("attention__slot-mean", lam, 0) for lam in (0.01, 0.03, 0.1)],
                   [("single__slot-mean", lam, 0) for lam in (0.01, 0.03, 0.1)],
                   [("attention__slot-mean", lam, 1) for lam in (0.01, 0.03, 0.1)]]
    for ch in chains(fan):
        first = [by_key[k].stage for k in ch[0].after]
        # the main variant starts from its attribution scores, the baseline cold
        assert first == (["stats", "attribution"] if "attention" in ch[0].params["variant"]
                         else ["stats"])
        for prev, c in zip(ch, ch[1:], strict=False):
            assert prev.key in c.after
    # without continuation every mask is its own chain and reads the scores or nothing
    flat = phases(plan(_run_cfg(continue_sweep=False)))[1]
    assert len(chains(flat)) == len(flat) == 9
    cold = phases(plan(_run_cfg(continue_sweep=False, init="cold")))[1]
    assert all(len(c.after) == 1 for c in cold)  # the stats only


def test_prepared_batches_compute_their_targets_once_per_setting(task):
    from maskshare.masks.variant import Prepared

    mm, batches = task["mm"], task["batches"]
    prep = Prepared(mm, batches, items=None, slots=[], slot_map={})
    first = prep.targets("logit-diff", "task")
    assert prep.targets("logit-diff", "task") is first  # kept: the sweep's masks share it
    fresh = compute_targets(mm, batches, "logit-diff", "task")
    assert first.scale == fresh.scale
    assert all(torch.equal(a, b) for a, b in zip(first.ld, fresh.ld, strict=True))
    other = prep.targets("logit-diff", "none")  # another setting: its own targets
    assert other is not first and other.scale != first.scale
