"""Grouping quality: ARI against template positions and roles, purity, stability (tiny model)."""

from __future__ import annotations

import numpy as np
import pytest
from grouping_items import cfg, make_items

from maskshare.config import AttentionFeatures
from maskshare.grouping import grouping_quality, make_grouping, stability

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


def test_purity_of_a_hand_computed_example():
    from maskshare.grouping import purity

    slots = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    roles = np.array(["a", "a", "b", "b", "b", "c", "a", "c", "c", "d"])
    # slot 0: a a b -> 2; slot 1: b b -> 2; slot 2: c a c c -> 3; slot 3: d -> 1
    assert purity(slots, roles) == pytest.approx(8 / 10)
    assert purity(np.zeros(4, np.int64), np.array(["x", "y", "y", "z"])) == pytest.approx(0.5)
    assert np.isnan(purity(np.zeros(0, np.int64), np.zeros(0)))
