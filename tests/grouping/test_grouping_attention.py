"""The attention grouping: pins, clusterers, slot counts, predictor, save/load (tiny model)."""

from __future__ import annotations

import numpy as np
import pytest
from grouping_items import cfg, make_items

from maskshare.config import GroupingConfig, GroupingKind
from maskshare.errors import UserError
from maskshare.grouping import load_grouping, make_grouping
from maskshare.grouping.features import items_features

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


def fitted_arrays(g) -> dict[str, np.ndarray]:
    """Copies of what a fitted attention grouping holds."""
    return {"scaler_mean": g.scaler.mean_.copy(), "scaler_scale": g.scaler.scale_.copy(),
            "pca": g.pca.components_.copy(), "centroids": g.centroids.copy(),
            "ood": g.ood_threshold.copy(), "cluster_of_label": g.cluster_of_label.copy()}


@pytest.mark.parametrize("clusterer", ["kmeans", "agglomerative", "gmm", "hdbscan"])
def test_clusterers_assign_new_prompts_without_refitting(model, items, clusterer):
    g = make_grouping(cfg(n_slots=6, clusterer=clusterer), seed=0).fit(model, items)
    before = fitted_arrays(g)
    new = make_items(model, elements=["hydrogen", "mercury", "platinum"], start_id=1000)
    a = g.assign(model, new)
    after = fitted_arrays(g)
    assert all(np.array_equal(before[k], after[k]) for k in before)  # nothing refitted
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
    f.matrix = f.matrix + 50.0 * g.scaler.scale_.astype(np.float32)
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
    slot, dist = g.predict(r)
    d = np.sqrt(((r[:, None, :] - g.centroids[None]) ** 2).sum(-1))
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


@pytest.mark.parametrize("clusterer", ["kmeans", "gmm", "hdbscan"])
def test_two_fits_with_one_seed_save_byte_identical_files(model, items, clusterer, tmp_path):
    """skops archives carry memory addresses and clock times; ours must not."""
    c = cfg(n_slots=6, clusterer=clusterer)
    for name in ("a", "b"):
        make_grouping(c, seed=5).fit(model, items).save(tmp_path / name)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == ["grouping.json", "grouping.skops"]
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    # and a loaded grouping saves the same bytes again
    load_grouping(tmp_path / "a").save(tmp_path / "c")
    assert (tmp_path / "c" / "grouping.skops").read_bytes() == \
        (tmp_path / "a" / "grouping.skops").read_bytes()


def test_group_directories_of_two_fits_are_byte_identical(model, items, tmp_path):
    """write_group_artifacts twice: every file but the manifest's creation time is equal."""
    import json

    from maskshare.report.groups_view import write_group_artifacts

    for name in ("a", "b"):
        g = make_grouping(cfg(n_slots=6), seed=2).fit(model, items)
        write_group_artifacts(tmp_path / name, g, g.assign(model, items), items)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert "grouping.skops" in files and files == sorted(p.name for p in (tmp_path / "b").iterdir())
    for f in files:
        if f != "manifest.json":
            assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    ma, mb = (json.loads((tmp_path / n / "manifest.json").read_text()) for n in ("a", "b"))
    assert ma["files"] == mb["files"]


def test_skops_file_holds_arrays_and_a_schema_only(model, items, tmp_path):
    import zipfile

    make_grouping(cfg(n_slots=6), seed=0).fit(model, items).save(tmp_path)
    with zipfile.ZipFile(tmp_path / "grouping.skops") as z:
        names = z.namelist()
        assert names == sorted(names) and "schema.json" in names
        assert all(n == "schema.json" or n.endswith(".npy") for n in names)
        assert {i.date_time for i in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_untrusted_types_in_a_grouping_file_are_refused(model, items, tmp_path):
    import os

    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    make_grouping(cfg(n_slots=6), seed=0).fit(model, items).save(tmp_path)
    sio.dump({"scaler": FunctionTransformer(os.system)}, tmp_path / "grouping.skops")
    with pytest.raises(UserError, match="posix.system"):
        load_grouping(tmp_path)


def test_grouping_written_by_the_old_format_asks_for_a_rerun(model, items, tmp_path):
    """Format 1 kept hand-written transforms in grouping.safetensors: refit, don't misread."""
    import json

    g = make_grouping(cfg(n_slots=6), seed=0).fit(model, items)
    g.save(tmp_path)
    doc = json.loads((tmp_path / "grouping.json").read_text())
    (tmp_path / "grouping.skops").rename(tmp_path / "grouping.safetensors")
    (tmp_path / "grouping.json").write_text(json.dumps({**doc, "format": 1}))
    with pytest.raises(UserError, match=r"older maskshare.*delete .* and rerun"):
        load_grouping(tmp_path)
    (tmp_path / "grouping.json").write_text(json.dumps(doc))  # new format, file missing
    with pytest.raises(UserError, match="cannot read fitted objects"):
        load_grouping(tmp_path)


def test_pin_last_pins_the_last_k_positions_like_from_end(model, items):
    """Issue 22's hybrid: with pin_last k the last k positions own slots 1..k (slot 1 the
    final token), as `from-end` gives them, and only earlier tokens are clustered."""
    g = make_grouping(cfg(n_slots=7, pin_last=3), seed=0).fit(model, items)
    assert g.slot_names[:4] == ["bos", "final", "end-2", "end-3"] and g.n_slots == 7
    new = make_items(model, elements=["hydrogen", "mercury"], start_id=500)
    for table in (items, new):
        a = g.assign(model, table)
        for s, d in zip(a.slots, a.distance, strict=True):
            n = len(s)
            assert s[0] == 0 and list(s[-3:]) == [3, 2, 1]
            assert (s[1:n - 3] >= 4).all()
            assert np.isnan(d[-3:]).all() and np.isfinite(d[1:n - 3]).all()
    assert np.isinf(g.ood_threshold[:4]).all() and np.isfinite(g.ood_threshold[4:]).all()


def test_pin_last_domain():
    from maskshare.config import parse_config

    with pytest.raises(UserError, match="pin_last"):
        parse_config({"grouping": {"pin_last": 2, "pin_final": False}})
    with pytest.raises(UserError, match="n_slots = 4 leaves no slot"):
        parse_config({"grouping": {"pin_last": 3, "n_slots": 4}})
    with pytest.raises(UserError):
        parse_config({"grouping": {"pin_last": 0}})
    assert GroupingConfig(pin_last=1).n_pinned_slots == GroupingConfig().n_pinned_slots == 2


def test_ood_fallback_position_moves_only_out_of_distribution_tokens(model, items):
    """ood_fallback: position gives a token beyond its slot's training range the cluster
    whose training tokens sit nearest its position from the end; other tokens keep their
    nearest-centroid slot; the reported OOD share is the same either way."""
    near = make_grouping(cfg(n_slots=6), seed=0).fit(model, items)
    pos = make_grouping(cfg(n_slots=6, ood_fallback="position"), seed=0).fit(model, items)
    a_near, a_pos = near.assign(model, items), pos.assign(model, items)
    # training tokens within range: nothing moves
    for s, d, t in zip(a_near.slots, a_near.distance, a_pos.slots, strict=True):
        inside = ~(d > near.ood_threshold[s])
        np.testing.assert_array_equal(s[inside], t[inside])
    # every token out of range (thresholds 0): each clustered token takes the cluster whose
    # training tokens' mean log1p(from end) is nearest its own
    train_slots, fe = np.concatenate(a_near.slots), np.concatenate(
        [len(s) - 1 - np.arange(len(s)) for s in a_near.slots])
    means = {c: np.log1p(fe[train_slots == c]).mean() for c in range(2, 6)
             if (train_slots == c).any()}
    pos.ood_threshold = np.where(np.isfinite(pos.ood_threshold), 0.0, np.inf)
    a_all = pos.assign(model, items)
    assert a_all.ood_fraction == 1.0
    for s in a_all.slots:
        n = len(s)
        for i in range(1, n - 1):
            want = min(means, key=lambda c: abs(means[c] - np.log1p(n - 1 - i)))
            assert s[i] == want
    assert a_near.ood_fraction == a_pos.ood_fraction


def test_ood_fallback_survives_save_and_load(model, items, tmp_path):
    g = make_grouping(cfg(n_slots=6, ood_fallback="position"), seed=0).fit(model, items)
    g.save(tmp_path / "g")
    h = load_grouping(tmp_path / "g")
    np.testing.assert_array_equal(g.cluster_from_end, h.cluster_from_end)
    new = make_items(model, elements=["hydrogen", "mercury"], start_id=700)
    for x, y in zip(g.assign(model, new).slots, h.assign(model, new).slots, strict=True):
        np.testing.assert_array_equal(x, y)


def test_position_weight_makes_position_dominate_the_reduced_space(model, items):
    from maskshare.config import AttentionFeatures

    def first_component_on_position(w: float) -> float:
        f = AttentionFeatures(position_from_end=True, position_weight=w, dtype="float32")
        g = make_grouping(cfg(n_slots=6, features=f), seed=0).fit(model, items)
        return float(abs(g.pca.components_[0, -1]))

    assert first_component_on_position(100.0) > 0.99
    assert first_component_on_position(1.0) < 0.9
    with pytest.raises(ValueError, match="position_weight"):
        AttentionFeatures(position_weight=0)
