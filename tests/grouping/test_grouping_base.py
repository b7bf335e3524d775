"""The groupings without fitted state: single, from-end, roles, template (tiny model)."""

from __future__ import annotations

import polars as pl
import pytest
from grouping_items import cfg

from maskshare.errors import UserError
from maskshare.grouping import make_grouping

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


def test_old_format_of_a_grouping_without_state_still_loads(model, items, tmp_path):
    import json

    from maskshare.grouping import load_grouping

    g = make_grouping(cfg(kind="from-end", from_end_k=2)).fit(model, items)
    g.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grouping.json"]
    doc = json.loads((tmp_path / "grouping.json").read_text())
    (tmp_path / "grouping.json").write_text(json.dumps({**doc, "format": 1}))
    g2 = load_grouping(tmp_path)
    assert g2.slot_names == g.slot_names
    assert [s.tolist() for s in g2.assign(model, items).slots] == \
        [s.tolist() for s in g.assign(model, items).slots]
