"""Attention features, groupings, quality measures and the groups view (tiny model, seconds)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from maskshare.config import AttentionFeatures, GroupingConfig, GroupingKind
from maskshare.errors import UserError
from maskshare.features import attention_features, items_features
from maskshare.grouping import grouping_quality, load_grouping, make_grouping, stability
from maskshare.models import tokenize_prompt

ELEMENTS = ["gold", "silver", "iron", "copper", "zinc", "tin", "lead", "neon", "argon",
            "helium", "oxygen", "carbon", "sodium", "calcium", "nickel", "cobalt"]
# (template, relation words): one template per phrasing, {X} is the subject
PHRASINGS = [
    ("The chemical symbol for {X} is", "chemical symbol"),
    ("Which symbol stands for {X} on the periodic table? Answer:", "symbol stands for"),
    ("Element: {X}\nSymbol:", "Symbol"),
    ("Q: What is the symbol of {X}? A:", "symbol of"),
]


def _item(model, pid, template, relation, entity, phrasing_id, split):
    """One items row: tokens and roles from character spans, as the datasets module does."""
    tok = model.tokenizer
    text = template.replace("{X}", entity)
    a = template.index("{X}")
    subj = (a, a + len(entity))
    r0 = text.index(relation) if relation in text else -1
    rel = (r0, r0 + len(relation))
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, roles = [tokenize_prompt(model, "")[0]], ["bos"]
    for i, (s, e) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        ids.append(i)
        mid = (s + e) / 2
        roles.append("subject" if subj[0] <= mid < subj[1] else
                     "relation" if rel[0] <= mid < rel[1] else "other")
    roles[-1] = "final"
    return {"prompt_id": pid, "prompt": text, "tokens": ids,
            "token_strs": tok.convert_ids_to_tokens(ids), "roles": roles, "entity": entity,
            "phrasing_id": phrasing_id, "phrasing": template, "split": split,
            "variant": "templated" if len(PHRASINGS) == 1 else "freeform"}


def make_items(model, phrasings=PHRASINGS, elements=ELEMENTS, held_out=None, start_id=0):
    rows = []
    for k, (tpl, rel) in enumerate(phrasings):
        for e in elements:
            split = "test_phrasing" if held_out is not None and k == held_out else "train"
            rows.append(_item(model, start_id + len(rows), tpl, rel, e, k, split))
    return pl.DataFrame(rows)


@pytest.fixture(scope="module")
def model(tiny):
    return tiny[0]


@pytest.fixture(scope="module")
def items(model):
    return make_items(model)


@pytest.fixture(scope="module")
def templated(model):
    """One template, subjects restricted to one token length so positions align."""
    tpl, rel = PHRASINGS[0]
    rows = [_item(model, i, tpl, rel, e, 0, "train") for i, e in enumerate(ELEMENTS)]
    df = pl.DataFrame(rows).with_columns(pl.lit("templated").alias("variant"))
    n = df["tokens"].list.len()
    return df.filter(n == n.mode()[0])


def cfg(**kw):
    return GroupingConfig(**kw)


def every_feature(**kw) -> AttentionFeatures:
    """Every feature group in every layer (the defaults use fewer)."""
    kw.setdefault("dtype", "float32")
    return AttentionFeatures(to_bos=True, to_self=True, to_prev=True, layer_start_fraction=0,
                             **kw)


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
    from maskshare.features import selected_layers

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


# ---------------------------------------------------------------- attention grouping

def test_attention_pins_bos_and_final(model, items):
    g = make_grouping(cfg(n_slots=6), seed=0).fit(model, items)
    a = g.assign(model, items)
    assert g.n_slots == 6 and g.slot_names[:2] == ["bos", "final"]
    for s in a.slots:
        assert s[0] == 0 and s[-1] == 1
        assert (s[1:-1] >= 2).all() and (s < g.n_slots).all()
    assert len(a.slots) == items.height
    assert all(len(s) == len(t) for s, t in zip(a.slots, items["tokens"].to_list(), strict=True))
    for d in a.distance:
        assert np.isnan(d[0]) and np.isnan(d[-1]) and np.isfinite(d[1:-1]).all()


def test_attention_without_final_pin(model, items):
    g = make_grouping(cfg(n_slots=5, pin_final=False), seed=0).fit(model, items)
    a = g.assign(model, items)
    assert g.slot_names[0] == "bos" and "final" not in g.slot_names
    assert all((s[1:] >= 1).all() for s in a.slots)


def test_pin_bos_false_is_rejected():
    from maskshare.config import parse_config

    with pytest.raises(UserError, match="grouping.pin_bos: .*slot 0 is BOS"):
        parse_config({"grouping": {"pin_bos": False}})  # where the config enters (issue 15)
    with pytest.raises(UserError, match="slot 0 is BOS"):  # and the grouping, if built anyway
        make_grouping(GroupingConfig.model_construct(**{**cfg().__dict__, "pin_bos": False}))


@pytest.mark.parametrize("clusterer", ["kmeans", "agglomerative", "gmm", "hdbscan"])
def test_clusterers_assign_new_prompts_without_refitting(model, items, clusterer):
    g = make_grouping(cfg(n_slots=6, clusterer=clusterer), seed=0).fit(model, items)
    before = {k: v.copy() for k, v in g.arrays.items()}
    new = make_items(model, elements=["hydrogen", "mercury", "platinum"], start_id=1000)
    a = g.assign(model, new)
    assert all(np.array_equal(before[k], g.arrays[k]) for k in before)  # nothing refitted
    assert [int(x) for x in new["prompt_id"]] == a.prompt_ids
    flat = a.flat_slots()
    assert flat.min() == 0 and flat.max() < g.n_slots
    assert 0.0 <= a.ood_fraction <= 1.0
    if clusterer != "hdbscan":
        assert g.n_slots == 6


def test_kmeans_assign_reproduces_training_labels(model, items):
    """On its own training tokens the nearest-centroid predictor equals KMeans' labels."""
    g = make_grouping(cfg(n_slots=7, clusterer="kmeans"), seed=0).fit(model, items)
    a = g.assign(model, items)
    d = a.flat_distance()
    # the training range: no more than 1% + one token per slot beyond the 99th percentile
    assert a.ood_fraction <= 0.01 + g.n_slots / np.isfinite(d).sum()


def test_far_away_tokens_are_out_of_distribution(model, items):
    g = make_grouping(cfg(n_slots=6), seed=0).fit(model, items)
    f = g.features(model, items)
    f.matrix = f.matrix + 50.0 * g.arrays["scaler_scale"].astype(np.float32)
    a = g.assign(model, items, features=f)
    assert a.ood_fraction > 0.9


def test_auto_n_slots_by_silhouette_and_bic(model, items):
    g = make_grouping(cfg(n_slots="auto", n_slots_range=(4, 7)), seed=0).fit(model, items)
    assert 4 <= g.n_slots <= 7 and set(g.meta["auto_scores"]) == {"4", "5", "6", "7"}
    best = max(g.meta["auto_scores"], key=g.meta["auto_scores"].get)
    assert g.n_slots == int(best)
    gb = make_grouping(cfg(n_slots="auto", n_slots_range=(4, 6), score="bic", clusterer="gmm"),
                       seed=0).fit(model, items)
    assert 4 <= gb.n_slots <= 6
    with pytest.raises(UserError, match="bic needs"):
        make_grouping(cfg(n_slots="auto", score="bic"), seed=0).fit(model, items)


def test_ward_tree_matches_sklearn_agglomerative(model, items):
    """Ward labels from the one scipy tree equal scikit-learn's, for every cluster count."""
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.metrics import adjusted_rand_score

    g = make_grouping(cfg(clusterer="agglomerative"), seed=0)
    r = np.random.default_rng(0).normal(size=(300, 5))
    for k in (2, 4, 7):
        ours, _ = g._cluster(r, k)
        ref = AgglomerativeClustering(n_clusters=k, linkage="ward").fit(r).labels_
        assert adjusted_rand_score(ours, ref) == 1.0 and len(set(ours.tolist())) == k


def test_default_auto_slots_record_scores(model, items):
    g = make_grouping(cfg(), seed=0).fit(model, items)
    lo, hi = GroupingConfig().n_slots_range
    assert lo <= g.n_slots <= hi
    assert g.meta["auto_scores"] and set(g.meta["auto_scores"]) <= {str(n) for n in
                                                                     range(lo, hi + 1)}
    assert g.meta["pca_dims"] <= 10


def test_predict_distances_match_brute_force(model, items):
    g = make_grouping(cfg(clusterer="kmeans", n_slots=6), seed=0).fit(model, items)
    f = items_features(model, items, g.cfg.features)
    r = g.reduce(f.matrix)
    slot, dist = g._predict(r)
    d = np.sqrt(((r[:, None, :] - g.arrays["centroids"][None]) ** 2).sum(-1))
    assert (slot - g.n_pinned == d.argmin(1)).all()
    np.testing.assert_allclose(dist, d.min(1), atol=1e-6)


def test_too_few_slots_is_a_user_error():
    # refused where the config enters (issue 15), before any grouping is fitted
    from maskshare.config import parse_config

    with pytest.raises(UserError, match="n_slots = 2 leaves no slot for clusters"):
        parse_config({"grouping": {"n_slots": 2}})


@pytest.mark.parametrize("kind", list(GroupingKind))
def test_save_load_round_trip_gives_identical_assignments(model, items, templated, kind,
                                                          tmp_path):
    data = templated if kind == GroupingKind.TEMPLATE else items
    c = cfg(kind=kind, n_slots=6, clusterer="gmm" if kind == GroupingKind.ATTENTION else "kmeans")
    g = make_grouping(c, seed=3).fit(model, data)
    g.save(tmp_path)
    assert not list(tmp_path.glob("*.pkl")) and (tmp_path / "grouping.json").is_file()
    g2 = load_grouping(tmp_path)
    assert g2.kind == g.kind and g2.n_slots == g.n_slots and g2.slot_names == g.slot_names
    a, b = g.assign(model, data), g2.assign(model, data)
    for x, y in zip(a.slots, b.slots, strict=True):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(a.distance, b.distance, strict=True):
        np.testing.assert_allclose(x, y, equal_nan=True)
    assert a.ood_fraction == b.ood_fraction


# ---------------------------------------------------------------- other kinds

def test_single_grouping(model, items):
    a = make_grouping(cfg(kind="single")).fit(model, items).assign(model, items)
    assert all(s[0] == 0 and (s[1:] == 1).all() for s in a.slots)


def test_from_end_grouping(model, items):
    g = make_grouping(cfg(kind="from-end", from_end_k=2)).fit(model, items)
    assert g.n_slots == 4
    s = g.assign(model, items).slots[0]
    assert s[0] == 0 and s[-1] == 1 and s[-2] == 2 and (s[1:-2] == 3).all()


def test_roles_grouping_and_unseen_roles(model, items):
    g = make_grouping(cfg(kind="roles")).fit(model, items)
    assert g.slot_names == ["bos", "final", "other", "relation", "subject"]
    new = items.head(2).with_columns(
        pl.col("roles").list.eval(pl.when(pl.element() == "relation").then(pl.lit("verb"))
                                  .otherwise(pl.element())))
    a = g.assign(model, new)
    other = g.slot_names.index("other")
    for rs, s in zip(new["roles"].to_list(), a.slots, strict=True):
        for r, x in zip(rs, s, strict=True):
            want = 0 if r == "bos" else other if r == "verb" else g.slot_names.index(r)
            assert x == want


def test_template_grouping_rejects_unequal_lengths(model, items, templated):
    with pytest.raises(UserError, match="one length"):
        make_grouping(cfg(kind="template")).fit(model, items)
    g = make_grouping(cfg(kind="template")).fit(model, templated)
    n = len(templated["tokens"][0])
    assert g.n_slots == n
    assert g.assign(model, templated).slots[0].tolist() == list(range(n))
    with pytest.raises(UserError, match="one length"):
        g.assign(model, items)


# ---------------------------------------------------------------- quality

def test_quality_template_grouping_is_perfect_and_single_is_zero(model, templated):
    g = make_grouping(cfg(kind="template")).fit(model, templated)
    q = grouping_quality(g, g.assign(model, templated), templated)
    assert q["ari_template"] == pytest.approx(1.0)
    s = make_grouping(cfg(kind="single")).fit(model, templated)
    assert grouping_quality(s, s.assign(model, templated), templated)["ari_template"] == \
        pytest.approx(0.0)


def test_attention_recovers_template_positions(model, templated):
    """A knowable case: with position as the only feature, clusters are the positions."""
    n = len(templated["tokens"][0])
    only_pos = AttentionFeatures(from_final=False, to_bos=False, to_self=False, to_prev=False,
                                 position_from_end=True)
    g = make_grouping(cfg(n_slots=n, features=only_pos), seed=0).fit(model, templated)
    q = grouping_quality(g, g.assign(model, templated), templated)
    assert q["ari_template"] == pytest.approx(1.0)
    # and a wrong number of slots cannot reach it
    g = make_grouping(cfg(n_slots=n - 2, features=only_pos), seed=0).fit(model, templated)
    assert grouping_quality(g, g.assign(model, templated), templated)["ari_template"] < 0.95


def test_roles_quality_and_split_breakdown(model):
    items = make_items(model, held_out=3)
    g = make_grouping(cfg(kind="roles")).fit(model, items)
    q = grouping_quality(g, g.assign(model, items), items)
    assert q["ari_roles"] == pytest.approx(1.0) and q["purity_roles"] == pytest.approx(1.0)
    assert set(q["by_split"]) == {"train", "test_phrasing"}
    s = make_grouping(cfg(kind="single")).fit(model, items)
    qs = grouping_quality(s, s.assign(model, items), items)
    roles = [r for rs in items["roles"].to_list() for r in rs[1:]]
    share = max(roles.count(r) for r in set(roles)) / len(roles)
    assert qs["purity_roles"] == pytest.approx(share) and qs["ari_roles"] == pytest.approx(0.0)


def test_stability_is_an_ari(model, items):
    c = cfg(n_slots=6)
    f = make_grouping(c).features(model, items)
    s = stability(c, model, items, seeds=(0, 0), features=f)
    assert s == pytest.approx(1.0)
    assert -1.0 <= stability(c, model, items, seeds=(0, 1), features=f) <= 1.0


# ---------------------------------------------------------------- view + CLI

@pytest.fixture(scope="module")
def run_dir(model, tmp_path_factory):
    from maskshare.groups_view import write_group_artifacts

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
    assert 'title="slot 1 (final), role final' in page


def test_groups_show_missing_kind_is_bad_input(run_dir, capsys):
    from maskshare.cli import main

    run, _, _ = run_dir
    assert main(["groups", "show", str(run), "--kind", "roles"]) == 2
    err = capsys.readouterr().err
    assert "attention" in err and len(err.strip().splitlines()) == 1


def test_write_group_artifacts_defaults_take_projection_and_quality(model, tmp_path):
    from maskshare.groups_view import write_group_artifacts

    items = make_items(model, elements=ELEMENTS[:6])
    g = make_grouping(cfg(n_slots=5), seed=0).fit(model, items)
    a = g.assign(model, items)
    d = write_group_artifacts(tmp_path / "groups" / "attention", g, a, items)
    t = pl.read_parquet(d / "tokens.parquet")
    assert t["x"].is_not_nan().all() and t["y"].is_not_nan().all()
    assert "ari_roles" in json.loads((d / "quality.json").read_text())
