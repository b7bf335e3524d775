"""Attention features and the groups view (tiny model, seconds).

The groupings themselves: test_grouping_base.py, test_grouping_attention.py,
test_grouping_quality.py (the package's modules).
"""

from __future__ import annotations

import json
import re

import numpy as np
import polars as pl
import pytest
from grouping_items import ELEMENTS, cfg, every_feature, make_items

from maskshare.config import AttentionFeatures
from maskshare.errors import UserError
from maskshare.grouping import grouping_quality, load_grouping, make_grouping
from maskshare.grouping.features import attention_features, items_features
from maskshare.model.models import tokenize_prompt

# ---------------------------------------------------------------- features

def test_features_shape_names_and_no_padding_rows(model, items):
    fc = every_feature(position_from_end=True)
    f = items_features(model, items, fc, batch_size=7)
    n_tok = sum(len(t) for t in items["tokens"].to_list())
    L, H = model.cfg.n_layers, model.cfg.n_heads
    assert f.matrix.shape == (n_tok, 4 * L * H + 1)
    assert len(f.names) == f.matrix.shape[1] and f.names[-1] == "position_from_end"
    assert np.isfinite(f.matrix).all()
    # rows are prompt by prompt, position by position, and only real tokens
    first = items["tokens"].to_list()[0]
    assert f.position[: len(first)].tolist() == list(range(len(first)))
    assert (f.prompt_id[: len(first)] == items["prompt_id"][0]).all()


def test_features_definition_matches_the_pattern(model):
    ids = tokenize_prompt(model, "The chemical symbol for gold is")
    fc = every_feature(log_scale=False, layers=[1])
    f = attention_features(model, [ids], fc)
    import torch

    _, cache = model.run_with_cache(torch.tensor([ids]))
    pat = cache["blocks.1.attn.hook_pattern"][0].numpy()  # [head, q, k]
    n, H = len(ids), model.cfg.n_heads
    t = 3
    np.testing.assert_allclose(f.matrix[t, :H], pat[:, n - 1, t], atol=1e-6)        # from final
    np.testing.assert_allclose(f.matrix[t, H:2 * H], pat[:, t, 0], atol=1e-6)       # to BOS
    np.testing.assert_allclose(f.matrix[t, 2 * H:3 * H], pat[:, t, t], atol=1e-6)   # to self
    np.testing.assert_allclose(f.matrix[t, 3 * H:], pat[:, t, t - 1], atol=1e-6)    # to prev
    assert (f.matrix[0, 3 * H:] == 0).all()  # BOS has no predecessor


def test_prompt_features_same_alone_and_in_padded_batch(model):
    short = tokenize_prompt(model, "gold is")
    long = tokenize_prompt(model, "Which symbol stands for gold on the periodic table? Answer:")
    fc = every_feature(position_from_end=True)
    alone = attention_features(model, [short], fc)
    both = attention_features(model, [long, short, long], fc, batch_size=3)
    rows = both.prompt_id == 1
    assert rows.sum() == len(short)
    np.testing.assert_allclose(both.matrix[rows], alone.matrix, atol=1e-5)


def test_default_layers_are_the_last_third(model):
    from maskshare.grouping.features import selected_layers

    assert model.cfg.n_layers == 2
    assert selected_layers(model, AttentionFeatures()) == [1]
    assert selected_layers(model, AttentionFeatures(layer_start_fraction=0)) == [0, 1]

    class Thirty:
        class cfg:  # noqa: N801 - stands in for model.cfg
            n_layers = 30

    assert selected_layers(Thirty, AttentionFeatures()) == list(range(20, 30))
    f = attention_features(model, [tokenize_prompt(model, "gold is")], AttentionFeatures())
    assert f.names == [f"from_final.L1.H{h}" for h in range(model.cfg.n_heads)]


def test_length_batches_keep_the_given_row_order(model):
    """Prompts run in length-sorted batches; rows still come back in the given order."""
    texts = ["gold is", "Which symbol stands for gold on the periodic table? Answer:",
             "The chemical symbol for iron is", "tin", "Q: What is the symbol of neon? A:"]
    toks = [tokenize_prompt(model, t) for t in texts]
    fc = every_feature(position_from_end=True)
    alone = [attention_features(model, [t], fc).matrix for t in toks]
    both = attention_features(model, toks, fc, prompt_ids=[10, 11, 12, 13, 14], batch_size=2,
                              max_batch_tokens=40)
    np.testing.assert_allclose(both.matrix, np.concatenate(alone), atol=1e-5)
    assert both.prompt_id.tolist() == [10 + i for i, t in enumerate(toks) for _ in t]
    assert both.position.tolist() == [p for t in toks for p in range(len(t))]
    assert both.length.tolist() == [len(t) for t in toks for _ in t]


def test_bfloat16_features_are_close_to_float32(model, items):
    f32 = items_features(model, items, AttentionFeatures(dtype="float32"))
    bf16 = items_features(model, items, AttentionFeatures(dtype="bfloat16"))
    assert bf16.matrix.shape == f32.matrix.shape and bf16.names == f32.names
    # log-attention values: bfloat16 keeps about 2-3 significant digits
    assert np.abs(np.exp(bf16.matrix) - np.exp(f32.matrix)).max() < 0.05


def test_feature_layers_validated(model):
    with pytest.raises(UserError, match="out of range"):
        attention_features(model, [[0, 5, 6]], AttentionFeatures(layers=[7]))


# ---------------------------------------------------------------- view + CLI

@pytest.fixture(scope="module")
def run_dir(model, tmp_path_factory):
    from maskshare.report.groups_view import write_group_artifacts

    items = make_items(model, held_out=3)
    g = make_grouping(cfg(n_slots=6), seed=0)
    f = g.features(model, items)
    g.fit(model, items.filter(pl.col("split") == "train"),
          features=None)
    a = g.assign(model, items, features=f)
    q = grouping_quality(g, a, items)
    run = tmp_path_factory.mktemp("run")
    write_group_artifacts(run / "groups" / "attention", g, a, items, g.project_2d(f), q)
    return run, items, a


def test_write_group_artifacts_folder(run_dir):
    from maskshare.artifacts import is_complete

    run, items, a = run_dir
    d = run / "groups" / "attention"
    assert is_complete(d)
    t = pl.read_parquet(d / "tokens.parquet")
    assert t.height == sum(len(x) for x in items["tokens"].to_list())
    assert {"prompt_id", "position", "token", "slot", "role", "split", "distance", "x",
            "y"} <= set(t.columns)
    assert t["slot"].to_list() == a.flat_slots().tolist()
    assert json.loads((d / "quality.json").read_text())["n_slots"] == 6
    assert load_grouping(d).n_slots == 6
    assert not [p for p in run.joinpath("groups").iterdir() if p.name.startswith(".")]


def test_groups_show_and_html(run_dir, tmp_path, capsys):
    from maskshare.cli import main

    run, items, _ = run_dir
    out_html = tmp_path / "g.html"
    assert main(["groups", "show", str(run), "--html", str(out_html)]) == 0
    text = capsys.readouterr().out
    for slot in range(6):
        assert f"slot {slot} (" in text
    assert "[[" in text and "mean position from end" in text
    page = out_html.read_text()
    assert "<svg" in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "<script src" not in page and "<link" not in page
    assert page.count('class="p"') == items.height
    assert re.search(r'title="slot 1 \(final: [^"]*\), role final', page)  # named by content


def test_groups_show_missing_kind_is_bad_input(run_dir, capsys):
    from maskshare.cli import main

    run, _, _ = run_dir
    assert main(["groups", "show", str(run), "--kind", "roles"]) == 2
    err = capsys.readouterr().err
    assert "attention" in err and len(err.strip().splitlines()) == 1


def test_write_group_artifacts_defaults_take_projection_and_quality(model, tmp_path):
    from maskshare.report.groups_view import write_group_artifacts

    items = make_items(model, elements=ELEMENTS[:6])
    g = make_grouping(cfg(n_slots=5), seed=0).fit(model, items)
    a = g.assign(model, items)
    d = write_group_artifacts(tmp_path / "groups" / "attention", g, a, items)
    t = pl.read_parquet(d / "tokens.parquet")
    assert t["x"].is_not_nan().all() and t["y"].is_not_nan().all()
    assert "ari_roles" in json.loads((d / "quality.json").read_text())
