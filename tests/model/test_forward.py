"""maskshare.model.forward: the read-only forward path gives what each stage computed before
(float32, bit for bit where the batches are the same), stops at the right layer, and runs
in bfloat16 where asked."""

from __future__ import annotations

import pytest
import torch

from maskshare.model.activations import at_final, pad_batch, padded_batches, unembed_final
from maskshare.model.forward import (
    BF16_USES,
    batches,
    bf16_uses,
    dtype_for,
    final_logit_diffs,
    final_logits,
    final_residual,
    hook_values,
    score_rows,
    stop_after,
)
from maskshare.model.models import load_weights, tokenize_prompt
from maskshare.testing import tiny_model

PROMPTS = ["The chemical symbol for gold is", "Gold", "Element: Iron\nSymbol:",
           "Which symbol stands for the element on the periodic table? Answer:", "gold Au",
           "The chemical symbol for oxygen is", "a b c d e f g h i j k l m n o p"]


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0, n_layers=3)


@pytest.fixture(scope="module")
def toks(model):
    return [tokenize_prompt(model, p) for p in PROMPTS]


def _alone(model, t: list[int]) -> torch.Tensor:
    """The final residual of one prompt run alone (no padding, no batch)."""
    with torch.no_grad():
        return model(torch.tensor([t]), stop_at_layer=model.cfg.n_layers)[0, -1]


def test_length_batched_final_residual_and_logits_match_each_prompt_alone(model, toks):
    for dtype, tol in (("float32", 1e-5), ("bfloat16", 0.1)):
        for b in batches(model, toks, batch_size=3, dtype=dtype):
            r = final_residual(model, b, dtype=dtype)
            lg = final_logits(model, b, dtype=dtype)
            assert r.dtype == lg.dtype == torch.float32 and lg.shape == (len(b.idx),
                                                                        model.cfg.d_vocab)
            for j, i in enumerate(b.idx):
                alone = _alone(model, toks[i])
                assert torch.allclose(r[j], alone, atol=tol, rtol=tol), (dtype, i)


def test_float32_results_are_bit_for_bit_those_of_the_old_code(model, toks):
    ans, cf = [5] * len(toks), [6] * len(toks)
    s = score_rows(model, toks, ans, cf, batch_size=4)
    for b in padded_batches(toks, 4, order="shortest", pad_id=0):
        with torch.no_grad():  # what datasets.build.score_prompts ran before
            resid = model(b.tokens, stop_at_layer=model.cfg.n_layers)
            logits = unembed_final(model, at_final(resid, b.lengths))
            old_ld = logits[:, 5] - logits[:, 6]
        new = final_logit_diffs(model, b, torch.tensor([5] * len(b.idx)),
                                torch.tensor([6] * len(b.idx)))
        for j, i in enumerate(b.idx):
            assert s["ld"][i] == float(old_ld[j]) and s["top"][i] == int(logits[j].argmax())
            assert s["prob"][i] == float(logits[j].log_softmax(-1)[5].exp())
        assert torch.allclose(new, old_ld, atol=1e-5)
        # hooks: the old run_with_cache
        hooks = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_pattern"]
        _, cache = model.run_with_cache(b.tokens, attention_mask=b.attention_mask,
                                        stop_at_layer=2, names_filter=hooks)
        got = hook_values(model, b.tokens, hooks, b.attention_mask)
        assert all(torch.equal(got[h], cache[h]) for h in hooks)


def test_the_pass_stops_after_the_deepest_hook(model, toks):
    seen: list[str] = []

    def spy(act, hook):
        seen.append(hook.name)

    tokens, att, _ = pad_batch(toks, [0, 1])
    spies = [(f"blocks.{i}.hook_resid_pre", spy) for i in range(3)] + [
        (f"blocks.{i}.hook_resid_post", spy) for i in range(3)] + [("ln_final.hook_normalized", spy)]
    got = hook_values(model, tokens, {"blocks.1.hook_resid_mid": lambda a: a[:, -1]}, att,
                      extra_hooks=spies)
    assert got["blocks.1.hook_resid_mid"].shape == (2, model.cfg.d_model)  # the kept slice
    assert seen == ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post",
                    "blocks.1.hook_resid_pre"]  # nothing after blocks.1.hook_resid_mid
    assert stop_after(["blocks.0.hook_resid_post", "blocks.2.attn.hook_pattern"]) == 3
    with pytest.raises(KeyError):
        hook_values(model, tokens, ["blocks.9.hook_resid_post"])


def test_inference_flag_gives_tensors_autograd_can_read(model, toks):
    tokens, att, _ = pad_batch(toks, [0, 1])
    ref = hook_values(model, tokens, ["blocks.0.hook_resid_post"], att, inference=False)
    x = ref["blocks.0.hook_resid_post"]
    assert not x.is_inference()
    w = torch.ones(1, requires_grad=True)
    ((x * w) * x).sum().backward()  # saving x for backward would fail on an inference tensor
    assert hook_values(model, tokens, ["blocks.0.hook_resid_post"], att)[
        "blocks.0.hook_resid_post"].is_inference()


def test_bf16_batches_under_a_token_budget_and_the_env_picks_the_uses(model, toks, monkeypatch):
    fp = [b.idx for b in batches(model, toks, batch_size=2)]
    bf = [b.idx for b in batches(model, toks, batch_size=2, dtype="bfloat16")]
    assert max(map(len, fp)) == 2 and len(bf) < len(fp)  # larger bf16 batches
    assert sorted(i for b in bf for i in b) == list(range(len(toks)))
    monkeypatch.delenv("MASKSHARE_BF16", raising=False)
    assert bf16_uses() == BF16_USES and dtype_for("filter") == "bfloat16"
    assert dtype_for("stats") == dtype_for("clean") == "float32"
    monkeypatch.setenv("MASKSHARE_BF16", "none")
    assert dtype_for("filter") == "float32"
    monkeypatch.setenv("MASKSHARE_BF16", "stats,clean")
    assert dtype_for("stats") == "bfloat16" and dtype_for("filter") == "float32"
    monkeypatch.setenv("MASKSHARE_BF16", "all")
    assert all(dtype_for(u) == "bfloat16" for u in ("filter", "stats", "top_tokens"))
    monkeypatch.setenv("MASKSHARE_BF16", "stat")
    with pytest.raises(ValueError):
        dtype_for("stats")


def test_bf16_scores_are_close_and_the_margin_says_whether_the_answer_is_top(model, toks):
    ans, cf = [5] * len(toks), [6] * len(toks)
    s32 = score_rows(model, toks, ans, cf)
    s16 = score_rows(model, toks, ans, cf, dtype="bfloat16")
    assert max(abs(a - b) for a, b in zip(s32["ld"], s16["ld"], strict=True)) < 0.1
    assert [m > 0 for m in s32["margin"]] == [t == 5 for t in s32["top"]]
    top_ans = score_rows(model, toks, s32["top"], cf)  # each prompt's top token as answer
    assert all(m >= 0 for m in top_ans["margin"])


def test_load_weights_loads_every_key_as_the_per_key_loader_did(model):
    other = tiny_model(seed=1, n_layers=3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    load_weights(other, state)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                  other.state_dict().values(), strict=True))
