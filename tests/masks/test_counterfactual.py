"""Counterfactual-prompt patching as an ablation: latents replaced position by position."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskshare.config import Ablation
from maskshare.errors import UserError
from maskshare.masks.masking import MaskedModel, empty_masks, full_masks
from maskshare.masks.slot_stats import compute_slot_stats
from maskshare.testing import tiny_model, tiny_saes

PAIRS = [("The chemical symbol for gold is", "The chemical symbol for iron is"),
         ("Element: Gold\nSymbol:", "Element: Iron\nSymbol:"),
         ("The chemical symbol for oxygen is", "The chemical symbol for carbon is")]


@pytest.fixture(scope="module")
def setup():
    model = tiny_model(seed=0)
    saes = tiny_saes(model, seed=0)
    tok = model.tokenizer
    enc = [[tok.bos_token_id] + tok(p, add_special_tokens=False)["input_ids"]
           for pair in PAIRS for p in pair]
    tokens, cf_tokens = enc[0::2], enc[1::2]
    assert [len(t) for t in tokens] == [len(t) for t in cf_tokens]
    slots = [np.array([0] + [1 + (i % 2) for i in range(len(t) - 1)]) for t in tokens]
    ans = [5, 6, 7]
    cf = [8, 9, 10]
    stats = compute_slot_stats(model, saes, tokens, slots, 3, batch_size=2)
    return model, saes, tokens, cf_tokens, slots, ans, cf, stats


def _logits(mm, batches, masks) -> torch.Tensor:
    out = torch.zeros(sum(len(b) for b in batches), mm.model.cfg.d_vocab)
    with torch.no_grad():
        for b in batches:
            out[b.idx] = mm.final_logits(b, masks)
    return out


def test_empty_circuit_under_patching_is_the_counterfactual_run(setup):
    """Error dropped, every latent patched: after the last SAE hook every non-BOS position
    holds the SAE reconstruction of the counterfactual prompt's clean activation there."""
    model, saes, tokens, cf_tokens, slots, ans, cf, stats = setup
    mm = MaskedModel(model, saes, None, 3, ablation=Ablation.COUNTERFACTUAL, error="drop")
    batches = mm.prepare(tokens, slots, ans, cf, batch_size=2, ablation_data=cf_tokens)
    got = _logits(mm, batches, empty_masks(saes, 3))
    last = list(saes)[-1]
    want = []
    for t in cf_tokens:
        def recon(act, hook):
            out = saes[last].decode(saes[last].encode(act))
            out[:, 0] = act[:, 0]  # BOS is never spliced
            return out
        with torch.no_grad():
            want.append(model.run_with_hooks(torch.tensor([t]), fwd_hooks=[(last, recon)])[0, -1])
    assert torch.allclose(got, torch.stack(want), atol=1e-4)


def test_full_circuit_is_the_sae_model_whatever_the_ablation(setup):
    model, saes, tokens, cf_tokens, slots, ans, cf, stats = setup
    patch = MaskedModel(model, saes, None, 3, ablation=Ablation.COUNTERFACTUAL, error="drop")
    mean = MaskedModel(model, saes, stats, 3, ablation=Ablation.SLOT_MEAN, error="drop")
    bp = patch.prepare(tokens, slots, ans, cf, ablation_data=cf_tokens)
    bm = mean.prepare(tokens, slots, ans, cf)
    full = full_masks(saes, 3)
    assert torch.allclose(_logits(patch, bp, full), _logits(mean, bm, full), atol=1e-5)
    # ... and the empty circuits differ: patching is another reference than the slot mean
    empty = empty_masks(saes, 3)
    assert not torch.allclose(_logits(patch, bp, empty), _logits(mean, bm, empty), atol=1e-3)


def test_patching_refuses_missing_or_unequal_counterfactual_prompts(setup):
    model, saes, tokens, cf_tokens, slots, ans, cf, stats = setup
    mm = MaskedModel(model, saes, None, 3, ablation=Ablation.COUNTERFACTUAL)
    with pytest.raises(UserError, match="needs a counterfactual prompt"):
        mm.prepare(tokens, slots, ans, cf)
    short = [cf_tokens[0][:-1], *cf_tokens[1:]]
    with pytest.raises(UserError, match="same token length.*1 of 3.*prompt 0"):
        mm.prepare(tokens, slots, ans, cf, ablation_data=short)
