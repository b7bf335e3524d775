"""maskshare.model.activations: batch orders, padding, final-token logits and logit differences,
activation collection (tiny model)."""

from __future__ import annotations

import pytest
import torch

from maskshare.model.activations import (
    at_final,
    clean_final_logits,
    collect_activations,
    hook_name,
    length_batches,
    logit_diff,
    pad_batch,
    pad_id,
    pad_slots,
    padded_batches,
    run_to_deepest,
    stop_layer,
)
from maskshare.model.models import tokenize_prompt

LENGTHS = [3, 5, 3, 7, 5, 3, 2]
PROMPTS = [
    "The chemical symbol for gold is",
    "gold is",
    "Which symbol stands for the element on the periodic table? Answer:",
    "Element: Gold\nSymbol:",
    "The chemical symbol for iron is",
    "tin",
]


@pytest.fixture(scope="module")
def model(tiny):
    return tiny[0]


@pytest.fixture(scope="module")
def tokens(model):
    return [tokenize_prompt(model, p) for p in PROMPTS]


# ----------------------------------------------------------------------------- batching
def test_shortest_first_is_stable_by_length_then_index():
    assert length_batches(LENGTHS, 3) == [[6, 0, 2], [5, 1, 4], [3]]
    assert length_batches(LENGTHS, 100) == [[6, 0, 2, 5, 1, 4, 3]]


def test_longest_first_is_stable_and_caps_padded_tokens():
    assert length_batches(LENGTHS, 3, order="longest") == [[3, 1, 4], [0, 2, 5], [6]]
    # at most 10 padded tokens: 7 alone; 5+5; 3+3+3; 2
    assert length_batches(LENGTHS, 8, order="longest", max_tokens=10) == \
        [[3], [1, 4], [0, 2, 5], [6]]
    # a prompt longer than the cap still gets a batch of its own
    assert length_batches([12, 2], 8, order="longest", max_tokens=10) == [[0], [1]]


def test_given_order_only_chunks():
    assert length_batches(LENGTHS, 3, order="given") == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(ValueError, match="order"):
        length_batches(LENGTHS, 3, order="random")


def test_every_prompt_is_in_exactly_one_batch():
    for order in ("shortest", "longest", "given"):
        for cap in (None, 6, 12):
            batches = length_batches(LENGTHS, 2, order=order, max_tokens=cap)
            assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
            assert all(0 < len(b) <= 2 for b in batches)


def test_pad_batch_right_pads_with_a_mask_and_lengths():
    toks, att, lens = pad_batch([[1, 2, 3], [4], [5, 6]], [1, 0], pad_id=9)
    assert toks.tolist() == [[4, 9, 9], [1, 2, 3]]
    assert att.tolist() == [[1, 0, 0], [1, 1, 1]]
    assert lens.tolist() == [1, 3] and toks.dtype == att.dtype == lens.dtype == torch.long
    slots = pad_slots([[0, 2, 1], [0], [0, 1]], [1, 0], 4)
    assert slots.tolist() == [[0, -1, -1, -1], [0, 2, 1, -1]]


def test_padded_batches_follow_length_batches(model, tokens):
    got = list(padded_batches(tokens, 4, order="longest", pad_id=pad_id(model)))
    assert [b.idx for b in got] == length_batches([len(t) for t in tokens], 4, order="longest")
    for b in got:
        for row, i in enumerate(b.idx):
            n = len(tokens[i])
            assert b.tokens[row, :n].tolist() == tokens[i] and int(b.lengths[row]) == n
            assert (b.tokens[row, n:] == model.tokenizer.pad_token_id).all()


# ----------------------------------------------------------------------------- final token
def test_at_final_and_logit_diff():
    x = torch.arange(24.0).reshape(2, 3, 4)
    assert at_final(x, torch.tensor([2, 3])).tolist() == [x[0, 1].tolist(), x[1, 2].tolist()]
    logits = torch.tensor([[0.0, 1.0, 5.0], [2.0, -1.0, 0.5]])
    assert logit_diff(logits, [2, 0], [1, 1]).tolist() == [4.0, 3.0]
    assert logit_diff(logits, torch.tensor([0, 2]), torch.tensor([2, 0])).tolist() == [-5.0, -1.5]


def test_final_token_logit_difference_matches_a_per_prompt_loop(model, tokens):
    """Batched (right-padded, with or without attention mask) = one prompt at a time."""
    g = torch.Generator().manual_seed(0)
    ans = torch.randint(0, model.cfg.d_vocab, (len(tokens),), generator=g).tolist()
    cf = torch.randint(0, model.cfg.d_vocab, (len(tokens),), generator=g).tolist()
    with torch.no_grad():
        naive = torch.stack([model(torch.tensor([t]))[0, -1] for t in tokens])
        want = torch.tensor([float(naive[i, ans[i]] - naive[i, cf[i]]) for i in range(len(tokens))])
        for use_mask in (True, False):
            got = torch.zeros(len(tokens))
            for b in padded_batches(tokens, 4, pad_id=pad_id(model)):
                logits = clean_final_logits(model, b.tokens, b.lengths,
                                            b.attention_mask if use_mask else None)
                torch.testing.assert_close(logits, naive[b.idx], atol=1e-4, rtol=1e-5)
                got[b.idx] = logit_diff(logits, [ans[i] for i in b.idx], [cf[i] for i in b.idx])
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


# ----------------------------------------------------------------------------- activations
def test_hook_names_and_stop_layer():
    assert hook_name("resid_post", 6) == "blocks.6.hook_resid_post"
    assert hook_name("pattern", 2) == "blocks.2.attn.hook_pattern"
    assert stop_layer(["blocks.3.hook_resid_post", "blocks.1.hook_mlp_out"]) == 4


def test_run_to_deepest_equals_a_full_pass(model, tokens):
    hooks = ["blocks.0.hook_resid_post", "blocks.0.hook_mlp_out"]
    toks, att, _ = pad_batch(tokens, range(len(tokens)), pad_id(model))
    with torch.no_grad():
        got = run_to_deepest(model, toks, hooks, att)
        _, full = model.run_with_cache(toks, attention_mask=att)
    assert list(got) == hooks
    for h in hooks:
        torch.testing.assert_close(got[h], full[h])


def test_collect_activations_skips_bos_and_flattens_rows(model, tokens):
    n = min(len(t) for t in tokens)
    rows = torch.tensor([t[:n] for t in tokens])
    h = "blocks.1.hook_resid_post"
    acts = collect_activations(model, rows, [h], batch_rows=4)[h]
    assert acts.shape == (len(tokens) * (n - 1), model.cfg.d_model)
    assert acts.dtype == torch.float16
    with torch.no_grad():
        _, cache = model.run_with_cache(rows, names_filter=[h])
    ref = cache[h][:, 1:].reshape(-1, model.cfg.d_model)
    torch.testing.assert_close(acts.float(), ref, atol=2e-3, rtol=2e-3)  # float16 storage
