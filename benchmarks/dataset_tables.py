"""The held-out tables of the shipped datasets' runs (README "Each dataset's held-out splits",
issue 22), from finished runs only.

    .venv/bin/python benchmarks/dataset_tables.py data/runs/<run> [data/runs/<run> ...]

Per run: how its circuit was chosen (the rule, the selection split, its F there), then per
held-out split (and per group of a prompt dataset's split, `split:group`) the main method's
chosen circuit, F (latents per token on that split), each baseline grouping's F read off
its own curve at that size (linear in log size, never extrapolated: `-` where its curve does
not reach it) and which method is closest to F 1 there; then the main method's F read at
fixed sizes (40 / 60 / 100 latents per token, the issue's targets, and 400) and its whole
curve, densest first; then every method's F at those sizes on each held-out split.
Everything is read from the run's metrics.json and evaluate/curves.parquet.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from report_tables import print_tables  # benchmarks/, beside this script

from maskshare.evaluation.metrics import f_at_size
from maskshare.run.layout import RunLayout

HELDOUT = ("test_phrasing", "test_entity", "test_both")
SIZES = (40, 60, 100, 400)


def _f(v, nd=2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def _name(variant: str, main: str) -> str:
    """`grouping`, or `grouping (ablation)` where the ablation is not the main method's."""
    g, a = variant.split("__")
    return g if a == main.split("__")[1] else f"{g} ({a})"


def curve_points(curves: pl.DataFrame, variant: str, split: str) -> pl.DataFrame:
    """A variant's learned-mask points on `split` at the first seed, by size (empty circuits
    left out)."""
    rows = curves.filter(pl.col("variant") == variant, pl.col("split") == split,
                         pl.col("lambda").is_not_null(), pl.col("seed") == curves["seed"].min())
    if "finder" in rows.columns:
        rows = rows.filter(pl.col("finder") == "masks")
    return rows.filter(pl.col("latents_per_token") > 0).sort("latents_per_token")


def f_on_curve(pts: pl.DataFrame, size: float) -> float | None:
    """F read off `curve_points` at `size` (`f_at_size`: never extrapolated)."""
    if pts.height == 0:
        return None
    return f_at_size(pts["latents_per_token"].to_list(), pts["faithfulness"].to_list(), size)


def tables(run: Path) -> str:
    layout = RunLayout(run)
    m = json.loads(layout.metrics.read_text())
    curves = pl.read_parquet(layout.curves)
    main = pl.read_parquet(layout.comparisons)["method"][0]  # the main variant comes first
    # the other groupings and ablations (not the attribution circuits, `<variant>__<finder>`)
    others = sorted((v for v in curves["variant"].unique().to_list()
                     if v != main and v.count("__") == 1),
                    key=lambda v: (v.split("__")[1] != main.split("__")[1], v))
    lam = m["lambda"]
    sel = m.get("selection") or {}
    out = [f"**`{m['dataset']}`**, run `{run.name}`: lambda {lam:g}, chosen as the "
           f"{sel.get('rule', '?')} on `{sel.get('split', '?')}` (F {_f(sel.get('faithfulness'))} "
           f"at {_f(sel.get('latents_per_token'), 0)} latents per token there, target "
           f"{sel.get('target_f', '?')}).", "",
           "| " + " | ".join(["held-out split", "prompts", f"{main.split('__')[0]} (chosen)",
                            *(_name(o, main) for o in others), "closest to F 1"]) + " |",
           "|---|---:|---:|" + "---:|" * len(others) + "---|"]
    splits = sorted({s for s in curves["split"].unique().to_list()
                     if s.split(":")[0] in HELDOUT}, key=lambda s: (HELDOUT.index(
                         s.split(":")[0]), s))
    for split in splits:
        mine = curve_points(curves, main, split).filter(pl.col("lambda") == lam)
        if mine.height == 0:
            continue
        r = mine.row(0, named=True)
        size, f = r["latents_per_token"], r["faithfulness"]
        fs = {o: f_on_curve(curve_points(curves, o, split), size) for o in others}
        scored = {main: f, **{o: v for o, v in fs.items() if v is not None}}
        lead = min(scored, key=lambda k: abs(1 - scored[k]))
        out.append("| " + " | ".join([f"`{split}`", str(r["n_prompts"]), f"{_f(f)} ({size:.0f})",
                                      *(_f(fs[o]) for o in others), _name(lead, main)])
                   + " |")
    out += ["", f"{main.split('__')[0]}: F read at {' / '.join(map(str, SIZES))} latents per "
                "token, and every lambda's F (latents per token), densest first:", "",
            "| split | " + " | ".join(f"F@{s}" for s in SIZES) + " | curve |",
            "|---|" + "---:|" * len(SIZES) + "---|"]
    for split in ["train", "validation", *splits]:
        pts = curve_points(curves, main, split)
        if pts.height == 0:
            continue
        curve = " / ".join(f"{f:.2f} ({s:.0f})" for f, s in zip(
            pts["faithfulness"].reverse(), pts["latents_per_token"].reverse(), strict=True))
        out.append(f"| `{split}` | " + " | ".join(_f(f_on_curve(pts, s)) for s in SIZES)
                   + f" | {curve} |")
    out += ["", "Every method's F read off its own curve at "
                f"{' / '.join(map(str, SIZES))} latents per token (`-`: not reached):", "",
            "| split | method | " + " | ".join(f"F@{x}" for x in SIZES) + " |",
            "|---|---|" + "---:|" * len(SIZES)]
    for split in splits:
        if ":" in split:
            continue
        for v in [main, *others]:
            pts = curve_points(curves, v, split)
            out.append(f"| `{split}` | {_name(v, main)} | "
                       + " | ".join(_f(f_on_curve(pts, x)) for x in SIZES) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    print_tables(tables, __doc__)
