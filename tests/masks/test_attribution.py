"""Attribution patching and integrated gradients over (slot, SAE, latent) triples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskshare.config import Ablation
from maskshare.evaluation.metrics import size_metrics
from maskshare.masks.attribution import (
    attribution_scores,
    circuit_at_size,
    slot_token_share,
    top_circuit,
)
from maskshare.masks.masking import MaskedModel, empty_masks, full_masks
from maskshare.masks.slot_stats import compute_slot_stats
from maskshare.testing import tiny_model, tiny_saes, tiny_task, tiny_tokenizer

PROMPTS = ["The chemical symbol for gold is", "Element: Gold\nSymbol:", "gold Au 79",
           "The chemical symbol for iron is", "x = [1, 2, 3]"]
N_SLOTS = 4


def _slots(n: int) -> np.ndarray:
    """BOS 0, the final token its own slot 1, the others alternate 2/3."""
    s = np.array([0] + [2 + (i % 2) for i in range(n - 1)])
    s[-1] = 1
    return s


def _setup(model, saes, ablation=Ablation.SLOT_MEAN, error="clean"):
    tokens, slots, ans, cf = tiny_task(model, PROMPTS, _slots, seed=1)
    stats = compute_slot_stats(model, saes, tokens, slots, N_SLOTS, batch_size=2)
    mm = MaskedModel(model, saes, stats, N_SLOTS, ablation=ablation, error=error)
    return mm, mm.prepare(tokens, slots, ans, cf, batch_size=2), slots, ans, cf


def _linear_toy():
    """One attention-only layer, no normalisation, one SAE at the last residual stream:
    the logits are affine in the spliced latents, so attribution is exact."""
    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformerConfig

    tok = tiny_tokenizer()
    cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_vocab=len(tok),
                                  n_ctx=64, attn_only=True, normalization_type=None, seed=3,
                                  default_prepend_bos=False, device="cpu")
    torch.manual_seed(3)
    model = HookedSAETransformer(cfg, tokenizer=tok, default_padding_side="right").eval()
    return model, tiny_saes(model, hooks=["blocks.0.hook_resid_post"], d_sae=24, seed=3)


def test_attribution_of_a_linear_toy_matches_its_closed_form():
    model, saes = _linear_toy()
    mm, batches, slots, ans, cf = _setup(model, saes)
    h = "blocks.0.hook_resid_post"
    sae = saes[h]
    # closed form: only the final token reaches the logits; there (slot 1)
    # d ld / d m_i = (W_U[:, ans] - W_U[:, cf]) . W_dec[i] * (a_i - abl_i), mean over prompts
    expect = torch.zeros(N_SLOTS, sae.cfg.d_sae)
    for b in batches:
        with torch.no_grad():
            x = model(b.tokens, attention_mask=b.attention_mask, stop_at_layer=1)
            a = sae.encode(x[torch.arange(len(b)), b.lengths - 1])
            w = (model.W_U[:, b.answer] - model.W_U[:, b.counterfactual]).T  # [B, d_model]
            expect[1] += ((w @ sae.W_dec.T) * (a - mm.abl[h][1])).sum(0)
    expect /= len(PROMPTS)
    for method in ("attribution-patching", "integrated-gradients"):
        got = attribution_scores(mm, batches, method, steps=5)[h]
        assert torch.allclose(got, expect, atol=1e-5), method
    # completeness is exact for a linear model: the scores sum to ld(M) - ld(empty)
    full = mm.logit_diffs(batches, full_masks(saes, N_SLOTS)).mean()
    empty = mm.logit_diffs(batches, empty_masks(saes, N_SLOTS)).mean()
    assert float(expect.sum()) == pytest.approx(full - empty, rel=1e-4, abs=1e-5)


def test_integrated_gradients_with_one_step_is_attribution_patching():
    model = tiny_model(seed=0)
    saes = tiny_saes(model, seed=0)
    mm, batches, *_ = _setup(model, saes)
    atp = attribution_scores(mm, batches, "attribution-patching")
    ig1 = attribution_scores(mm, batches, "integrated-gradients", steps=1)
    for h in atp:
        assert torch.equal(atp[h], ig1[h])
        assert atp[h][0].abs().max() == 0  # BOS is never spliced
    assert any(atp[h].abs().max() > 0 for h in atp)


def test_integrated_gradients_converge_to_completeness_on_a_nonlinear_model():
    """Scores sum to ld(M) - ld(empty) in the limit; the right Riemann sum's error is O(1/N)."""
    model = tiny_model(seed=0)
    saes = tiny_saes(model, seed=0)
    mm, batches, *_ = _setup(model, saes, error="drop")
    full = mm.logit_diffs(batches, full_masks(saes, N_SLOTS)).mean()
    empty = mm.logit_diffs(batches, empty_masks(saes, N_SLOTS)).mean()
    err = {}
    for n in (20, 80):
        ig = attribution_scores(mm, batches, "integrated-gradients", steps=n)
        err[n] = abs(sum(float(t.sum()) for t in ig.values()) - (full - empty))
    assert err[80] < err[20] / 3
    assert err[80] < 0.05 * abs(full - empty)


def test_top_circuits_and_the_size_matched_circuit():
    g = torch.Generator().manual_seed(0)
    scores = {"a": torch.randn(N_SLOTS, 10, generator=g), "b": torch.randn(N_SLOTS, 10,
                                                                           generator=g)}
    c = top_circuit(scores, 7)
    assert sum(int(m[1:].sum()) for m in c.values()) == 7
    kept = torch.cat([scores[h][1:][c[h][1:] > 0] for h in c]).abs()
    dropped = torch.cat([scores[h][1:][c[h][1:] == 0] for h in c]).abs()
    assert kept.min() >= dropped.max()
    slots = [_slots(n) for n in (5, 7, 9)]
    share = slot_token_share(slots, N_SLOTS)
    assert share[0] == 0 and share.sum() == pytest.approx(1.0)
    for target in (0.5, 3.0, 11.0):
        m = circuit_at_size(scores, slots, target)
        got = size_metrics(m, slots)["latents_per_token"]
        assert abs(got - target) <= share.max() / 2 + 1e-9
