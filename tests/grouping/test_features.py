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
