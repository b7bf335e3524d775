"""The subject's own latents (maskshare.masks.own_latents): each prompt's `k` most active
latents per SAE at its marked tokens, kept in a circuit, ablated in its complement, left out
of the reference passes, counted in the size. Tiny random model, hand-made slots."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskshare.config import Ablation, ErrorTerm
from maskshare.evaluation.metrics import evaluate_sweep
from maskshare.masks.masking import MaskedModel, complement
from maskshare.masks.own_latents import added_per_prompt, apply, marked_tokens
from maskshare.masks.slot_stats import compute_slot_stats
from maskshare.model.activations import run_to_deepest
from maskshare.testing import tiny_task

PROMPTS = ["The chemical symbol for gold is", "Element: Gold\nSymbol:",
           "Which symbol stands for iron? Answer:", "The chemical symbol for oxygen is"]
N_SLOTS, MARKED_SLOT, K = 6, 5, 3


def _slots_for(n: int) -> np.ndarray:
    """BOS 0, final 1, the token before it 2, the third token its own slot 5 (the marked
    one), others 3/4."""
    s = np.array([0] + [3 + (i % 2) for i in range(n - 1)])
    s[-1], s[-2], s[2] = 1, 2, MARKED_SLOT
    return s


@pytest.fixture(scope="module")
def data(tiny):
    model, saes = tiny
    tokens, slots, ans, cf = tiny_task(model, PROMPTS, _slots_for, seed=0)
    stats = compute_slot_stats(model, saes, tokens, slots, N_SLOTS, batch_size=2)
    roles = [["bos"] + ["other"] * (len(t) - 1) for t in tokens]
    for r in roles:
        r[2] = "subject"
    return dict(model=model, saes=saes, tokens=tokens, slots=slots, ans=ans, cf=cf,
                stats=stats, marks=marked_tokens(roles, slots, ["subject"]))


def _mm(d, **kw):
    return MaskedModel(d["model"], d["saes"], d["stats"], N_SLOTS,
                       ablation=Ablation.SLOT_MEAN, error=ErrorTerm.CLEAN, **kw)


def _circuit(saes, seed=0, p=0.3):
    g = torch.Generator().manual_seed(seed)
    return {h: (torch.rand(N_SLOTS, s.cfg.d_sae, generator=g) < p).float()
            for h, s in saes.items()}


def test_marks_are_the_wanted_roles_never_bos():
    marks = marked_tokens([["bos", "subject", "other", "subject"]], [np.array([0, 1, 2, 3])],
                          ["subject"])
    assert marks[0].tolist() == [False, True, False, True]
    bos = marked_tokens([["subject", "subject"]], [np.array([0, 1])], ["subject"])
    assert bos[0].tolist() == [False, True]


def test_indices_are_the_clean_top_k_at_marked_tokens_only(data):
    mm = _mm(data)
    (b,) = mm.prepare(data["tokens"][:1], data["slots"][:1], data["ans"][:1], data["cf"][:1],
                      own=(data["marks"][:1], K))
    acts = run_to_deepest(data["model"], b.tokens, list(data["saes"]), b.attention_mask)
    for h, sae in data["saes"].items():
        idx = b.own[h][0]
        assert (idx[[p for p in range(idx.shape[0]) if p != 2]] == -1).all()
        a = sae.encode(acts[h])[0, 2]
        want = {int(i) for i in a.topk(K).indices if a[i] > 0}
        assert {int(i) for i in idx[2] if i >= 0} == want and want


@pytest.mark.parametrize("ablation", [Ablation.SLOT_MEAN, Ablation.ZERO])
def test_indices_by_deviation_are_the_latents_ablation_moves_most(data, ablation):
    """`by: deviation` ranks the marked token's latents by |clean value - the value the
    ablation sets there| (its slot's mean under slot-mean); under zero ablation that is
    the activation ranking."""
    mm = MaskedModel(data["model"], data["saes"], data["stats"], N_SLOTS, ablation=ablation,
                     error=ErrorTerm.CLEAN)
    args = (data["tokens"][:1], data["slots"][:1], data["ans"][:1], data["cf"][:1])
    (b,) = mm.prepare(*args, own=(data["marks"][:1], K, "deviation"))
    (act,) = mm.prepare(*args, own=(data["marks"][:1], K))
    acts = run_to_deepest(data["model"], b.tokens, list(data["saes"]), b.attention_mask)
    differs = False
    for h, sae in data["saes"].items():
        idx = b.own[h][0]
        assert (idx[[p for p in range(idx.shape[0]) if p != 2]] == -1).all()
        a = sae.encode(acts[h])[0, 2]
        mean = (data["stats"][h].latent_mean[MARKED_SLOT] if ablation == Ablation.SLOT_MEAN
                else torch.zeros_like(a))
        dev = (a - mean.to(a.dtype)).abs()
        want = {int(i) for i in dev.topk(K).indices if dev[i] > 0}
        assert {int(i) for i in idx[2] if i >= 0} == want and want
        same = set(idx[2].tolist()) == set(act.own[h][0][2].tolist())
        assert same if ablation == Ablation.ZERO else True
        differs |= not same
    assert differs or ablation == Ablation.ZERO  # slot means move the ranking somewhere


def test_apply_keeps_ablates_or_ignores():
    m = torch.tensor([[[1.0, 0.0, 0.0, 1.0]]])
    idx = torch.tensor([[[1, 3, -1]]])
    assert apply(m, idx, "keep").tolist() == [[[1.0, 1.0, 0.0, 1.0]]]
    assert apply(m, idx, "ablate").tolist() == [[[1.0, 0.0, 0.0, 0.0]]]
    assert apply(m, idx, "off").tolist() == m.tolist()
    assert apply(m, None, "keep") is m


@pytest.mark.parametrize("i", range(len(PROMPTS)))
def test_a_circuit_with_own_latents_is_the_fixed_circuit_that_keeps_them(data, i):
    """The marked token is alone in its slot in a one-prompt batch: keeping its own latents
    is exactly a fixed mask whose row for that slot also keeps them; the complement ablates
    them too; the added count is what that row gains."""
    mm = _mm(data)
    args = ([data["tokens"][i]], [data["slots"][i]], [data["ans"][i]], [data["cf"][i]])
    own = mm.prepare(*args, own=([data["marks"][i]], K))
    plain = mm.prepare(*args)
    circuit = _circuit(data["saes"], seed=i)
    fixed = {h: m.clone() for h, m in circuit.items()}
    for h in fixed:
        got = own[0].own[h][0, 2]
        fixed[h][MARKED_SLOT, got[got >= 0]] = 1.0
    torch.testing.assert_close(torch.as_tensor(mm.logit_diffs(own, circuit)),
                               torch.as_tensor(mm.logit_diffs(plain, fixed)))
    ablate = mm.with_options(own_latents="ablate")
    torch.testing.assert_close(
        torch.as_tensor(ablate.logit_diffs(own, complement(circuit))),
        torch.as_tensor(mm.logit_diffs(plain, complement(fixed))))
    gained = sum(int((fixed[h] - circuit[h]).sum()) for h in fixed)
    assert added_per_prompt(circuit, own).tolist() == [gained]
    assert added_per_prompt(circuit, plain) is None


def test_evaluation_keeps_references_and_counts_the_added_latents(data):
    mm = _mm(data)
    args = (data["tokens"], data["slots"], data["ans"], data["cf"])
    own = mm.prepare(*args, batch_size=2, own=(data["marks"], K))
    plain = mm.prepare(*args, batch_size=2)
    masks = {0: _circuit(data["saes"], seed=1), 1: _circuit(data["saes"], seed=2, p=0.05)}
    with_own, ref_own = evaluate_sweep(mm, own, masks, data["slots"])
    without, ref = evaluate_sweep(mm, plain, masks, data["slots"])
    for key in ("ld_model", "ld_ablated", "ld_model_clean"):  # the same references
        np.testing.assert_allclose(ref_own[key], ref[key], rtol=1e-5, atol=1e-5)
    n_tok = sum(len(s) - 1 for s in data["slots"])
    for k in masks:
        added = added_per_prompt(masks[k], own)
        assert with_own[k]["own_added"] == [float(x) for x in added]
        assert with_own[k]["own_latents_per_token"] == pytest.approx(added.sum() / n_tok)
        assert with_own[k]["latents_per_token"] == pytest.approx(
            without[k]["latents_per_token"] + added.sum() / n_tok)
        assert with_own[k]["circuit_size"] == without[k]["circuit_size"]  # the fixed part
        assert with_own[k]["completeness"] is not None
        assert "own_added" not in without[k]
    # the own latents change the circuit's and the complement's passes
    assert with_own[1]["per_prompt"]["ld_circuit"] != without[1]["per_prompt"]["ld_circuit"]
    assert with_own[1]["per_prompt"]["ld_complement"] != \
        without[1]["per_prompt"]["ld_complement"]
