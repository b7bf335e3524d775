"""The mask step's fixed cost (issue 13): weights stored in the layout TransformerLens's
forward wants (no per-pass copies), a logit difference from the two tokens' unembedding
columns only, and no length split of batches too short to gain from it. Each cut leaves the
results as they were: bit for bit (the layout) or within float rounding (the others)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskshare.config import MaskConfig
from maskshare.masks.masking import MaskedModel
from maskshare.masks.slot_stats import compute_slot_stats
from maskshare.masks.training import (
    FrozenWeights,
    compute_targets,
    relaxed_masks,
    slot_weights,
    train_masks,
)
from maskshare.model.activations import final_logit_diff, length_parts, logit_diff, unembed_final
from maskshare.model.models import _TL_LAYOUTS, fast_weight_layout, load_model
from maskshare.testing import tiny_model, tiny_saes, tiny_task

PROMPTS = ["The chemical symbol for gold is", "gold Au", "Element: iron\nSymbol:",
           "The chemical symbol for oxygen is", "x = 1", "Which symbol stands for tin? It is"]
N_SLOTS = 4


def _slots_for(n: int) -> np.ndarray:
    s = np.array([0] + [3] * (n - 1))
    s[-1] = 1
    if n > 2:
        s[-2] = 2
    return s


def _relaid(model) -> list[torch.Tensor]:
    return [p for m in model.modules() for name in _TL_LAYOUTS.get(type(m).__name__, {})
            if (p := m._parameters.get(name)) is not None]


def _logits(model, tokens) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor(tokens))


@pytest.mark.parametrize("kv_heads", [None, 2])
def test_the_weight_layout_changes_no_bit_and_ends_the_per_pass_copies(kv_heads):
    model = tiny_model(seed=3, n_key_value_heads=kv_heads)
    tokens = [[1, 5, 9, 13, 20, 7], [1, 4, 4, 8, 30, 2]]
    before = _logits(model, tokens)
    params = _relaid(model)
    assert len(params) == 2 * (3 + 4) + 1  # 2 layers x (MLP 3 + attention 4) + unembedding
    assert all(p.is_contiguous() for p in params)
    values = [p.detach().clone() for p in params]
    fast_weight_layout(model)
    assert all(torch.equal(p, v) for p, v in zip(params, values, strict=True))
    assert not any(p.is_contiguous() for p in params)  # stored transposed now ...
    mlp = model.blocks[0].mlp
    for w in (mlp.W_gate, mlp.W_in, mlp.W_out, model.unembed.W_U):
        assert w.T.contiguous().data_ptr() == w.data_ptr()  # ... so TL's copy is a no-op
    assert torch.equal(_logits(model, tokens), before)  # bit for bit
    fast_weight_layout(model, enable=False)
    assert all(p.is_contiguous() for p in params)
    assert torch.equal(_logits(model, tokens), before)


def test_load_model_applies_the_layout():
    model = load_model("tiny")
    assert not model.blocks[0].mlp.W_gate.is_contiguous()
    assert model.unembed.W_U.T.is_contiguous()


def test_the_answer_only_logit_difference_equals_the_full_unembedding(tiny):
    model, _ = tiny
    resid = torch.randn(5, model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    a, c = [3, 4, 5, 6, 7], [8, 8, 2, 9, 3]
    full = logit_diff(unembed_final(model, resid), a, c)
    torch.testing.assert_close(final_logit_diff(model, resid, a, c), full, atol=1e-5, rtol=1e-5)


def test_short_batches_run_whole_but_long_uneven_ones_are_still_split():
    short = [3, 3] + [6] * 10 + [9] * 4  # 16 prompts of 3-9 tokens: 144 padded tokens
    assert length_parts(short) == [(0, 12), (12, 16)]  # 36 fewer tokens, one more pass
    assert length_parts(short, min_tokens=256) == [(0, 16)]
    long = [7] * 8 + [10] * 8 + [12] * 8 + [16] * 8  # 512 padded tokens
    assert length_parts(long, min_tokens=256) == length_parts(long) == [(0, 24), (24, 32)]


def _setup(fast: bool):
    model = tiny_model(seed=0)
    fast_weight_layout(model, enable=fast)
    saes = tiny_saes(model, seed=0)
    tokens, slots, ans, cf = tiny_task(model, PROMPTS * 2, _slots_for, seed=1)
    stats = compute_slot_stats(model, saes, tokens, slots, N_SLOTS, batch_size=4)
    return model, saes, (tokens, slots, ans, cf), stats


def test_a_mask_step_gives_the_same_loss_and_gradients_as_before_the_cuts():
    cfg = MaskConfig(steps=8, batch_size=12, lr=0.1, init_logit=0.5, checkpoint_every=100)
    results, grads = {}, {}
    for name, fast, opts in (("before", False, {"answer_only": False, "min_split_tokens": 0}),
                             ("now", True, {})):
        model, saes, (tokens, slots, ans, cf), stats = _setup(fast)
        mm = MaskedModel(model, saes, stats, N_SLOTS, error="clean", **opts)
        batches = mm.prepare(tokens, slots, ans, cf, batch_size=12)
        targets = compute_targets(mm, batches, scale="task")
        theta = {h: torch.full((N_SLOTS, s.cfg.d_sae), 0.5, requires_grad=True)
                 for h, s in saes.items()}
        masks, _ = relaxed_masks(theta, cfg, 0, 0)
        with FrozenWeights(model, *saes.values()), torch.enable_grad():
            obj = (mm.logit_diff(batches[0], masks) - targets.ld[0]).abs().mean()
            obj.backward()
        grads[name] = {h: t.grad.clone() for h, t in theta.items()}
        results[name] = (targets, train_masks(mm, batches, cfg, 0.02, targets=targets,
                                               progress=False))
        assert float(slot_weights(batches, N_SLOTS).sum()) == pytest.approx(1.0)
    (t0, r0), (t1, r1) = results["before"], results["now"]
    assert t0.scale == pytest.approx(t1.scale, rel=1e-5)
    torch.testing.assert_close(torch.cat(t0.ld), torch.cat(t1.ld), atol=1e-5, rtol=1e-5)
    for h in grads["before"]:
        assert grads["before"][h].abs().max() > 0  # the comparison is not of zeros
        torch.testing.assert_close(grads["now"][h], grads["before"][h], atol=1e-6, rtol=1e-4)
    np.testing.assert_allclose([r["loss"] for r in r1.history],
                               [r["loss"] for r in r0.history], rtol=1e-5)
    for h in r0.theta:
        torch.testing.assert_close(r1.theta[h], r0.theta[h], atol=1e-5, rtol=1e-5)
