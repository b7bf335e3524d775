"""Evaluation in proportion (issue 23): the attribution circuits are scored only where a
reader reads them (never on the selection split, every point on the headline split, the
points `f_at_size` reads elsewhere, no complements), and every figure read from them is the
one scoring every point gives."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from maskshare.evaluation.metrics import f_at_size, points_read
from run_helpers import rebuilt_evaluation


def test_the_points_read_give_f_at_size_its_value_over_every_point():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(300):
        n = int(rng.integers(1, 12))
        sizes = [float(x) for x in rng.choice([0.5, 1, 2, 3, 5, 8, 13, 40], n)]  # ties
        if rng.random() < 0.2:
            sizes[0] = None
        fs = [float(f) for f in rng.random(n)]
        targets = [float(t) for t in rng.uniform(0.2, 50, 3)] + [sizes[-1] or 1.0]
        keep = points_read(sizes, targets)
        for t in targets:
            want = f_at_size(sizes, fs, t)
            sub = sorted(keep)
            got = f_at_size([sizes[i] for i in sub], [fs[i] for i in sub], t)
            assert got == want, (sizes, fs, t, keep)  # bit for bit
            checked += want is not None
    assert checked > 100
    assert points_read([1.0, 2.0, 4.0], [3.0]) == {1, 2}
    assert points_read([1.0, 2.0, 2.0, 4.0], [2.0]) == {1, 2, 3}  # every point of a size
    assert points_read([1.0, 2.0], [0.5, 3.0, None]) == set()  # out of range: nothing read


@pytest.fixture(scope="module")
def both(finished_tiny_run, tmp_path_factory):
    """The tiny run's evaluation rebuilt as it is, and rebuilt scoring every mask and
    attribution circuit on every split with its complement (the evaluation before issue
    23)."""
    import maskshare.stages.evaluate as ev

    _, run0, cache = finished_tiny_run
    now = rebuilt_evaluation(run0, cache, tmp_path_factory.mktemp("reads-now"))
    mp = pytest.MonkeyPatch()
    mp.setattr(ev, "SCORE_ALL", True)
    every = rebuilt_evaluation(run0, cache, tmp_path_factory.mktemp("reads-every"), mp)
    return now, every


def _metrics(run) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    m.pop("timings")
    return m


def test_unread_attribution_points_are_not_scored(both):
    now, every = both
    a = pl.read_parquet(now / "evaluate" / "curves.parquet")
    b = pl.read_parquet(every / "evaluate" / "curves.parquet")
    attr = pl.col("finder") != "masks"
    select = _metrics(now)["selection"]["split"]
    assert b.filter(attr & (pl.col("split") == select)).height > 0
    assert a.filter(attr & (pl.col("split") == select)).height == 0
    assert 0 < a.filter(attr).height < b.filter(attr).height
    assert a.filter(attr)["completeness"].null_count() == a.filter(attr).height
    lds = pl.read_parquet(now / "evaluate" / "lds.parquet")
    scored = lds.filter(pl.col("variant").str.contains("__ig|__atp"))
    assert scored.height and scored["ld_complement"].null_count() == scored.height


def test_every_figure_read_is_the_one_scoring_every_point_gives(both):
    from maskshare.report.data import comparison_rows, headline, load_run_view, plot_series

    now, every = both
    # verdicts, baselines, curve areas: all of it, up to the float rounding of masks scored
    # in other stacks (fewer masks share a stacked pass now)
    _same(_metrics(now), _metrics(every))
    for f in ("comparisons.parquet",):
        _same(pl.read_parquet(now / "evaluate" / f).to_dicts(),
              pl.read_parquet(every / "evaluate" / f).to_dicts())
    va, vb = load_run_view(now), load_run_view(every)
    _same(comparison_rows(va), comparison_rows(vb))
    _same(plot_series(va), plot_series(vb))
    _same(headline(va), headline(vb))
    # every learned-mask row scored now is one of before, its figures the same; what is no
    # longer scored: the baselines on the selection split, completeness but the chosen one's
    masks, key = pl.col("finder") == "masks", ["variant", "lambda", "seed", "split"]
    a = pl.read_parquet(now / "evaluate" / "curves.parquet").filter(masks).sort(key)
    b = pl.read_parquet(every / "evaluate" / "curves.parquet").filter(masks)
    b = b.join(a.select(key), on=key, how="semi").sort(key)
    assert a.height == b.height and a.height < pl.read_parquet(
        every / "evaluate" / "curves.parquet").filter(masks).height
    scored = a["completeness"].is_not_null()
    b_rows = b.to_dicts()
    for i, row in enumerate(a.to_dicts()):
        if not scored[i]:
            row["completeness"] = b_rows[i]["completeness"]
            row["ld_complement"] = b_rows[i]["ld_complement"]
        _same(row, b_rows[i])
    m = _metrics(now)
    select = m["selection"]["split"]
    main = set(a.filter(pl.col("split") == select)["variant"])  # the baselines are not there
    assert len(main) == 1
    is_chosen = pl.col("variant").is_in(main) & (pl.col("lambda") == m["lambda"])
    assert a.filter(is_chosen)["completeness"].null_count() == 0
    assert set(a.filter(is_chosen)["split"]) == set(a.filter(pl.col("variant").is_in(main))[
        "split"])
    assert a.filter(~is_chosen)["completeness"].null_count() == a.filter(~is_chosen).height


def _same(x, y, rel=1e-5, abs_=1e-6):
    """Equal, floats within rounding (nested dicts and lists)."""
    if isinstance(x, dict):
        assert isinstance(y, dict) and x.keys() == y.keys(), (x, y)
        for k in x:
            _same(x[k], y[k], rel, abs_)
    elif isinstance(x, (list, tuple)):
        assert isinstance(y, (list, tuple)) and len(x) == len(y), (x, y)
        for u, v in zip(x, y, strict=True):
            _same(u, v, rel, abs_)
    elif isinstance(x, float) and isinstance(y, float):
        assert y == pytest.approx(x, rel=rel, abs=abs_, nan_ok=True)
    else:
        assert x == y


@pytest.mark.parametrize("split,limit", [("train", None), ("train", 7), ("test_entity", None)])
def test_split_slots_are_the_prepared_slots_without_a_pass(finished_tiny_run, split, limit):
    """The attribution circuits' sizes read the training prompts' slots without preparing
    (no model pass): the same arrays, in the same order, as the prepared split's."""
    from maskshare.masks.variant import prepare_variant, split_slots

    _, run, _ = finished_tiny_run
    for variant in ("attention__slot-mean", "single__slot-mean"):
        want = prepare_variant(run, variant, split, limit).slots
        got = split_slots(run, variant, split, limit)
        assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in
                                             zip(got, want, strict=True))
