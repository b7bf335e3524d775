"""Sparsity without per-task tuning: the task-normalised objective and `lambdas: auto`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskshare.config import AUTO_LAMBDAS, MaskConfig, parse_config
from maskshare.errors import UserError
from maskshare.masks.masking import MaskedModel, empty_masks, full_masks
from maskshare.masks.slot_stats import compute_slot_stats
from maskshare.masks.training import compute_targets, train_masks
from maskshare.testing import tiny_model, tiny_saes, tiny_task

PROMPTS = ["The chemical symbol for gold is", "The chemical symbol for iron is",
           "Element: Gold\nSymbol:", "gold Au 79", "The chemical symbol for oxygen is"]


def _masked(unembed_scale: float = 1.0):
    """A MaskedModel of the tiny model whose logits are multiplied by `unembed_scale` (a
    task whose logit differences are c times larger, with the same circuit) and its batches."""
    model = tiny_model(seed=0)
    with torch.no_grad():
        model.W_U.mul_(unembed_scale)
        model.b_U.mul_(unembed_scale)
    saes = tiny_saes(model, seed=0)
    tokens, slots, ans, cf = tiny_task(
        model, PROMPTS, lambda n: np.array([0] + [1 + (i % 2) for i in range(n - 1)]), seed=0)
    stats = compute_slot_stats(model, saes, tokens, slots, 3, batch_size=2)
    mm = MaskedModel(model, saes, stats, 3)
    return mm, mm.prepare(tokens, slots, ans, cf, batch_size=2)


def test_task_scale_is_the_mean_gap_between_the_empty_circuit_and_the_model():
    mm, batches = _masked()
    t = compute_targets(mm, batches, "logit-diff", scale="task")
    ld_m = mm.logit_diffs(batches, full_masks(mm.saes, mm.n_slots))
    ld_e = mm.logit_diffs(batches, empty_masks(mm.saes, mm.n_slots))
    assert t.scale == pytest.approx(float(np.mean(np.abs(ld_e - ld_m))), rel=1e-5)
    assert compute_targets(mm, batches, "logit-diff").scale == 1.0  # scale "none"


def test_a_normalised_lambda_means_the_same_on_a_task_with_larger_logit_differences():
    """Logits x4 (same circuit, 4x the logit differences): with scale `task` the same lambda
    learns the same mask; in raw units (`none`) the objective is 4x larger."""
    cfg = MaskConfig(steps=12, lr=0.1, init_logit=0.5, batch_size=2, lambdas=[0.05])
    runs = {}
    for c in (1.0, 4.0):
        mm, batches = _masked(c)
        for scale in ("task", "none"):
            res = train_masks(mm, batches, cfg.model_copy(update={"scale": scale}), 0.05,
                              progress=False)
            runs[c, scale] = res
    a, b = runs[1.0, "task"], runs[4.0, "task"]
    for h in a.theta:
        assert torch.allclose(a.theta[h], b.theta[h], atol=1e-4)
    raw1 = runs[1.0, "none"].history[0]["objective"]
    raw4 = runs[4.0, "none"].history[0]["objective"]
    assert raw4 == pytest.approx(4 * raw1, rel=1e-3)
    assert a.history[0]["objective"] == pytest.approx(b.history[0]["objective"], rel=1e-3)


def test_auto_lambdas_resolve_to_the_documented_grid_and_lists_stay_lists():
    assert MaskConfig().lambdas == "auto"
    assert MaskConfig().lambda_grid == list(AUTO_LAMBDAS)
    assert MaskConfig(lambdas=[0.3, 0.1]).lambda_grid == [0.3, 0.1]
    assert parse_config({"masks": {"lambdas": "auto"}}).masks.lambda_grid == list(AUTO_LAMBDAS)
    with pytest.raises(UserError, match="masks.lambdas"):
        parse_config({"masks": {"lambdas": "often"}})


def test_without_a_task_signal_the_objective_stays_in_raw_units(caplog):
    """Patching each prompt with itself (error clean): ablating everything changes nothing, so
    there is no scale to divide by; training goes on in raw units and says so."""
    model = tiny_model(seed=0)
    saes = tiny_saes(model, seed=0)
    tok = model.tokenizer
    tokens = [[tok.bos_token_id] + tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    slots = [np.array([0] + [1] * (len(t) - 1)) for t in tokens]
    mm = MaskedModel(model, saes, None, 2, ablation="counterfactual", error="clean")
    batches = mm.prepare(tokens, slots, [5] * len(tokens), [6] * len(tokens), batch_size=2,
                         ablation_data=tokens)
    t = compute_targets(mm, batches, "logit-diff", scale="task")
    assert t.scale == 1.0 and "raw units" in caplog.text
