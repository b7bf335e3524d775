"""Evaluation in proportion (issue 23): the attribution circuits are scored only where a
reader reads them (never on the selection split, every point on the headline split, the
points `f_at_size` reads elsewhere, no complements), and every figure read from them is the
one scoring every point gives."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest

from maskshare.evaluation.metrics import f_at_size, points_read


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


def _rebuilt(run0, cache, dest, monkeypatch=None):
    from maskshare.stages.evaluate import build

    run = dest / run0.name
    shutil.copytree(run0, run)
    shutil.rmtree(run / "evaluate")
    mp = monkeypatch or pytest.MonkeyPatch()
    mp.setenv("MASKSHARE_CACHE", str(cache))
    try:
        build(run)
    finally:
        mp.undo()
    return run


@pytest.fixture(scope="module")
def both(finished_tiny_run, tmp_path_factory):
    """The tiny run's evaluation rebuilt as it is, and rebuilt scoring every attribution
    circuit on every split with complements (the evaluation before issue 23)."""
    import maskshare.stages.evaluate as ev

    _, run0, cache = finished_tiny_run
    now = _rebuilt(run0, cache, tmp_path_factory.mktemp("reads-now"))
    mp = pytest.MonkeyPatch()
    mp.setattr(ev, "attribution_reads", lambda *a, **k: None)
    every = _rebuilt(run0, cache, tmp_path_factory.mktemp("reads-every"), mp)
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
    assert _metrics(now) == _metrics(every)  # verdicts, baselines, curve areas: all of it
    for f in ("comparisons.parquet",):
        assert pl.read_parquet(now / "evaluate" / f).equals(
            pl.read_parquet(every / "evaluate" / f))
    va, vb = load_run_view(now), load_run_view(every)
    assert comparison_rows(va) == comparison_rows(vb)
    assert plot_series(va) == plot_series(vb)
    assert headline(va) == headline(vb)
    # the learned masks' rows and per-prompt lds are the same bits
    masks = pl.col("finder") == "masks"
    a = pl.read_parquet(now / "evaluate" / "curves.parquet").filter(masks)
    b = pl.read_parquet(every / "evaluate" / "curves.parquet").filter(masks)
    assert a.equals(b)
    learned = ~pl.col("variant").str.contains("__ig|__atp")
    la = pl.read_parquet(now / "evaluate" / "lds.parquet").filter(learned)
    lb = pl.read_parquet(every / "evaluate" / "lds.parquet").filter(learned)
    assert la.equals(lb)


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
