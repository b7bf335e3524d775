"""Slot-aligned counterfactual patching (maskshare.masks.slot_patching): the alignment rule, its
case counts, exact agreement with position-wise patching on equal slot sequences, and the
patch latents of pairs of different lengths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskshare.config import Ablation
from maskshare.errors import UserError
from maskshare.masks.ablations import PatchPrompts
from maskshare.masks.masking import MaskedModel
from maskshare.masks.slot_patching import align, alignment_counts
from maskshare.masks.slot_stats import compute_slot_stats
from maskshare.testing import tiny_model, tiny_saes

N_SLOTS = 4


def test_align_takes_the_same_rank_from_the_end_then_the_mean_then_the_slot_mean():
    clean = [0, 1, 2, 2, 3, 2]
    cf = [0, 2, 1, 3, 3]
    assert align(clean, cf) == [("same", 0), ("same", 2), ("fewer", 2), ("fewer", 2),
                                ("same", 4), ("same", 1)]
    # the last slot-3 clean token takes the last slot-3 cf token (rank 0 from the end)
    assert align([0, 3, 3], [0, 3, 3, 3]) == [("same", 0), ("same", 2), ("same", 3)]
    assert align([0, 1, 3], [0, 1]) == [("same", 0), ("same", 1), ("none", 3)]
    assert alignment_counts([clean, [0, 1, 3]], [cf, [0, 1]]) == {"same": 4, "fewer": 2,
                                                                  "none": 1}
    same = [0, 1, 2, 1, 3]
    assert align(same, same) == [("same", p) for p in range(5)]


@pytest.fixture(scope="module")
def setup():
    model = tiny_model(seed=0)
    saes = tiny_saes(model, seed=0)
    tok = model.tokenizer

    def enc(text):
        return [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]

    def slots_of(t):  # a toy grouping: the last token its own slot, the rest by parity
        return np.array([0] + [1 + (i % 2) for i in range(len(t) - 2)] + [3])

    clean = [enc(p) for p in ("The chemical symbol for gold is", "Element: Gold\nSymbol:",
                              "The chemical symbol for oxygen is")]
    stats = compute_slot_stats(model, saes, clean, [slots_of(t) for t in clean], N_SLOTS,
                               batch_size=2)
    return model, saes, enc, slots_of, clean, stats


def _mm(setup):
    model, saes, *_, stats = setup
    return MaskedModel(model, saes, stats, N_SLOTS, ablation=Ablation.COUNTERFACTUAL,
                       error="clean")


def test_equal_slot_sequences_give_exactly_the_position_wise_result(setup):
    model, saes, enc, slots_of, clean, stats = setup
    cf = [enc(p) for p in ("The chemical symbol for iron is", "Element: Iron\nSymbol:",
                           "The chemical symbol for carbon is")]
    assert [len(a) for a in clean] == [len(b) for b in cf]
    slots = [slots_of(t) for t in clean]
    mm = _mm(setup)
    args = (clean, slots, [5, 6, 7], [8, 9, 10])
    pos = mm.prepare(*args, batch_size=2, ablation_data=PatchPrompts(cf))
    by_slot = mm.prepare(*args, batch_size=2,
                         ablation_data=PatchPrompts(cf, [slots_of(t) for t in cf]))
    g = torch.Generator().manual_seed(0)
    masks = {h: (torch.rand(N_SLOTS, s.cfg.d_sae, generator=g) > 0.5).float()
             for h, s in saes.items()}
    for a, b in zip(pos, by_slot, strict=True):
        for h in saes:
            n = a.lengths.view(-1, 1)
            keep = torch.arange(a.tokens.shape[1])[None] < n  # padding rows are never read
            assert torch.equal(a.ablation_tokens[h][keep], b.ablation_tokens[h][keep])
    assert np.array_equal(mm.logit_diffs(pos, masks), mm.logit_diffs(by_slot, masks))


def test_pairs_of_other_lengths_get_the_aligned_latents(setup):
    model, saes, enc, slots_of, clean, stats = setup
    cf = [enc(p) for p in ("The symbol for gold is", "Element: Gold, a metal\nSymbol:",
                           "The chemical symbol for oxygen is")]
    assert [len(a) for a in clean] != [len(b) for b in cf]
    slots = [slots_of(t) for t in clean]
    cf_slots = [slots_of(t) for t in cf]
    cf_slots[2] = np.array([0] + [1] * (len(cf[2]) - 1))  # no slot 2 or 3: the slot means
    mm = _mm(setup)
    with pytest.raises(UserError, match="same token length"):
        mm.prepare(clean, slots, [5, 6, 7], [8, 9, 10], ablation_data=PatchPrompts(cf))
    batches = mm.prepare(clean, slots, [5, 6, 7], [8, 9, 10], batch_size=3,
                         ablation_data=PatchPrompts(cf, cf_slots))
    counts = alignment_counts(slots, cf_slots)
    assert dict(mm.ablation_method.counts) == counts  # what a run reports
    assert counts["same"] > 0 and counts["fewer"] > 0 and counts["none"] > 0
    (b,) = batches
    h = list(saes)[-1]
    st = stats.hooks[h]
    for row, i in enumerate(b.idx):
        _, cache = model.run_with_cache(torch.tensor([cf[i]]), names_filter=[h])
        a = saes[h].encode(cache[h])[0]
        for p, (kind, x) in enumerate(align(slots[i], cf_slots[i])):
            got = b.ablation_tokens[h][row, p]
            if kind == "same":
                want = a[x]
            elif kind == "fewer":
                want = a[torch.as_tensor(np.flatnonzero(cf_slots[i][1:] == x) + 1)].mean(0)
            else:
                want = st.latent_mean[x]
            assert torch.allclose(got, want, atol=1e-5), (i, p, kind)
    ld = mm.logit_diffs(batches, {k: torch.zeros(N_SLOTS, s.cfg.d_sae) for k, s in saes.items()})
    assert np.isfinite(ld).all()
