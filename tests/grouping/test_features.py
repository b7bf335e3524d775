"""grouping/features.py's own logic not covered in test_grouping.py: column order and names, the
position-from-end feature, log scaling, and the inputs it refuses (tiny model)."""

from __future__ import annotations

import numpy as np
import pytest

from maskshare.config import AttentionFeatures
from maskshare.errors import UserError
from maskshare.grouping.features import LOG_EPS, attention_features, feature_names
from maskshare.model.models import tokenize_prompt


@pytest.fixture(scope="module")
def model(tiny):
    return tiny[0]


@pytest.fixture(scope="module")
def tokens(model):
    return [tokenize_prompt(model, p) for p in
            ("The chemical symbol for gold is", "gold is", "Element: Gold\nSymbol:")]


def test_names_are_group_major_then_layer_then_head(model):
    fc = AttentionFeatures(to_self=True, layers=[1, 0], position_from_end=True)
    H = model.cfg.n_heads
    names = feature_names(model, fc)
    assert names[:2 * H] == [f"from_final.L{la}.H{h}" for la in (0, 1) for h in range(H)]
    assert names[2 * H:4 * H] == [f"to_self.L{la}.H{h}" for la in (0, 1) for h in range(H)]
    assert names[-1] == "position_from_end" and len(names) == 4 * H + 1


def test_position_from_end_linear_and_log(model, tokens):
    lin = attention_features(model, tokens, AttentionFeatures(
        position_from_end=True, log_scale=False, dtype="float32"))
    log = attention_features(model, tokens, AttentionFeatures(
        position_from_end=True, log_scale=True, dtype="float32"))
    want = np.concatenate([np.arange(len(t) - 1, -1, -1) for t in tokens]).astype(np.float32)
    np.testing.assert_array_equal(lin.matrix[:, -1], want)
    np.testing.assert_allclose(log.matrix[:, -1], np.log1p(want), rtol=1e-6)
    # every attention value is log(a + eps) of the linear one
    np.testing.assert_allclose(log.matrix[:, :-1], np.log(lin.matrix[:, :-1] + LOG_EPS),
                               rtol=1e-5, atol=1e-6)
    # attention from the final position sums to 1 over each prompt's tokens, per head
    starts = np.cumsum([0] + [len(t) for t in tokens])
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        np.testing.assert_allclose(lin.matrix[a:b, :-1].sum(0), 1.0, rtol=1e-5)


def test_refused_inputs(model, tokens):
    with pytest.raises(ValueError, match="switch on at least one"):  # where configs enter
        AttentionFeatures(from_final=False)
    off = AttentionFeatures.model_construct(**{**AttentionFeatures().__dict__,
                                               "from_final": False})
    with pytest.raises(UserError, match="every feature is switched off"):  # built anyway
        attention_features(model, tokens, off)
    with pytest.raises(UserError, match="no tokens"):
        attention_features(model, [tokens[0], []])
    with pytest.raises(UserError, match="longer than the model's context"):
        attention_features(model, [tokens[0] * (model.cfg.n_ctx // len(tokens[0]) + 1)])
    with pytest.raises(ValueError, match="prompt_ids"):
        attention_features(model, tokens, prompt_ids=[1])


def _uniform_attention_model(model):
    """A copy of the tiny model whose every head attends uniformly (queries zeroed: every
    attention score is 0, so the causal softmax spreads 1 / (t + 1) over keys 0..t)."""
    import copy

    import torch

    m = copy.deepcopy(model)
    with torch.no_grad():
        for block in m.blocks:
            block.attn.W_Q.zero_()
            block.attn.b_Q.zero_()
    return m


def test_normalize_uniform_is_length_invariant_where_raw_attention_is_not(model):
    """Issue 22: the same content preceded by more tokens. Under uniform attention raw
    from-final attention is 1/n (it shrinks with the prompt's length); normalised it is 1 at
    every length, and so are the token's own rows (to_bos, to_self, to_prev past t = 0)."""
    m = _uniform_attention_model(model)
    short = tokenize_prompt(m, "gold is")
    long = tokenize_prompt(m, "Here is a question. The symbol of gold is")
    assert len(long) > len(short) + 3
    kw = dict(log_scale=False, dtype="float32", to_bos=True, to_self=True, to_prev=True)
    raw = attention_features(m, [short, long], AttentionFeatures(**kw))
    rel = attention_features(m, [short, long], AttentionFeatures(**kw, normalize="uniform"))
    ff = [i for i, n in enumerate(raw.names) if n.startswith("from_final")]
    own = [i for i, n in enumerate(raw.names) if not n.startswith("from_final")]
    n_s = len(short)
    np.testing.assert_allclose(raw.matrix[:n_s, ff], 1 / n_s, rtol=1e-5)
    np.testing.assert_allclose(raw.matrix[n_s:, ff], 1 / len(long), rtol=1e-5)
    np.testing.assert_allclose(rel.matrix[:, ff], 1.0, rtol=1e-5)
    prev = [i for i, n in enumerate(raw.names) if n.startswith("to_prev")]
    first = rel.position == 0  # BOS: no predecessor, to_prev stays 0
    np.testing.assert_allclose(rel.matrix[np.ix_(~first, own)], 1.0, rtol=1e-5)
    np.testing.assert_allclose(rel.matrix[np.ix_(first, prev)], 0.0)
    # the last two tokens (" gold is") in both prompts: equal only when normalised
    assert not np.allclose(raw.matrix[n_s - 2:n_s, ff], raw.matrix[-2:, ff])
    np.testing.assert_allclose(rel.matrix[n_s - 2:n_s, ff], rel.matrix[-2:, ff], rtol=1e-5)


def test_normalize_uniform_scales_each_value_by_the_keys_its_query_sees(model, tokens):
    kw = dict(log_scale=False, dtype="float32", to_self=True)
    raw = attention_features(model, tokens, AttentionFeatures(**kw))
    rel = attention_features(model, tokens, AttentionFeatures(**kw, normalize="uniform"))
    ff = np.array([n.startswith("from_final") for n in raw.names])
    np.testing.assert_allclose(rel.matrix[:, ff], raw.matrix[:, ff] * raw.length[:, None],
                               rtol=1e-5)
    np.testing.assert_allclose(rel.matrix[:, ~ff], raw.matrix[:, ~ff]
                               * (raw.position[:, None] + 1), rtol=1e-5)
    logged = attention_features(model, tokens, AttentionFeatures(
        dtype="float32", to_self=True, normalize="uniform"))
    np.testing.assert_allclose(logged.matrix, np.log(rel.matrix + LOG_EPS), rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(ValueError, match="normalize"):
        AttentionFeatures(normalize="rank")
