"""Markdown tables of finished runs, as they appear in the README.

    .venv/bin/python benchmarks/report_tables.py data/runs/<run> [data/runs/<run> ...]

For each run: the headline (main method at the lambda chosen on training prompts, on the
held-out split), every method's F at the main method's latents per token (read off its
F-versus-size curve on the headline split) with its curve area, and the main method on
each held-out split; where the run has attribution circuits, the main method's learned masks
against them on every split at each lambda's size. Everything is read from the run's
metrics.json and evaluate/ tables.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import polars as pl

from maskshare.run.layout import RunLayout


def _f(v, nd=3) -> str:
    return "n/a" if v is None else f"{v:.{nd}f}"


def tables(run: Path) -> str:
    layout = RunLayout(run)
    m = json.loads(layout.metrics.read_text())
    curves = pl.read_parquet(layout.curves)
    comp = pl.read_parquet(layout.comparisons)
    head, lam = m["headline_split"], m["lambda"]
    out = [f"**{m['dataset']} ({m['variant']})**, run `{run.name}`: headline on `{head}`, "
           f"lambda {lam:g} (chosen on training prompts), error term `{m['error_term']}`.", "",
           "| method | F at matched size | curve area (log size) | best F on the sweep |",
           "|---|---:|---:|---:|"]
    fcol = [c for c in comp.columns if c.startswith("F at") or c == "F matched"][0]
    for r in comp.iter_rows(named=True):
        out.append(f"| `{r['method']}` | {_f(r[fcol])} | {_f(r['curve area (log size)'])} | "
                   f"{_f(r['best F'])} |")
    out += ["", f"Matched size: {_f(m['latents_per_token'], 1)} latents per token "
                f"(`{fcol}`).", "",
            "| split | prompts | F vs M | F vs clean | completeness | latents/token | triples | distinct latents |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    main = curves.filter((pl.col("lambda") == lam)
                         & (pl.col("variant") == comp["method"][0]))
    for r in main.iter_rows(named=True):
        out.append(f"| {r['split']} | {r['n_prompts']} | {_f(r['faithfulness'])} | "
                   f"{_f(r['faithfulness_vs_clean'])} | {_f(r['completeness'])} | "
                   f"{_f(r['latents_per_token'], 1)} | {r['circuit_size']} | "
                   f"{r['distinct_latents']} |")
    if m.get("stability_jaccard") is not None:
        out += ["", f"Stability across seeds 0/1 (Jaccard of kept triples / of distinct "
                    f"latents): {_f(m['stability_jaccard'])} / "
                    f"{_f(m.get('stability_jaccard_latents'))}."]
    out += attribution_table(curves, comp["method"][0])
    return "\n".join(out)


FINDERS = {"masks": "learned masks", "ig": "integrated gradients",
           "atp": "attribution patching"}


def attribution_table(curves: pl.DataFrame, main: str) -> list[str]:
    """F (latents per token) of the main variant's learned masks and of its attribution
    circuits at each mask's size, per split and lambda, then the attribution circuits'
    extra points below and above the sweep; [] for a run without them. The evaluation
    scores attribution circuits at every lambda on the headline split only (elsewhere at
    the points read at matched size): their cells are blank where it did not."""
    if "finder" not in curves.columns:
        return []
    rows = curves.filter(pl.col("variant").is_in([main, *(f"{main}__{f}" for f in FINDERS)]))
    finders = [f for f in FINDERS if f in set(rows["finder"].to_list())]
    if len(finders) < 2:
        return []
    out = ["", "Learned masks against attribution (the top triples by score at each mask's "
               "size on the training prompts): F (latents per token)", "",
           "| split | lambda | " + " | ".join(FINDERS[f] for f in finders) + " |",
           "|---|---:|" + "---:|" * len(finders)]

    def cell(r) -> str:
        return f"{_f(r['faithfulness'], 2)} ({_f(r['latents_per_token'], 1)})"

    for (split, lam), g in rows.filter(pl.col("lambda").is_not_null()).group_by(
            ["split", "lambda"], maintain_order=True):
        by = {r["finder"]: r for r in g.iter_rows(named=True)}
        out.append(f"| {split} | {lam:g} | "
                   + " | ".join(cell(by[f]) if f in by else "" for f in finders) + " |")
    extra = rows.filter(pl.col("lambda").is_null())
    for (split,), g in extra.group_by(["split"], maintain_order=True):
        per = {f: g.filter(pl.col("finder") == f).sort("latents_per_token").to_dicts()
               for f in finders}
        for i, where in enumerate(("below the sweep", "above the sweep")):
            out.append(f"| {split} | {where} | " + " | ".join(
                cell(per[f][i]) if len(per[f]) == 2 else "" for f in finders) + " |")
    return out


def print_tables(tables_of, doc: str) -> None:
    """The command line of a table script: `tables_of(run)` printed for each RUN argument."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="a finished run directory")
    runs = ap.parse_args().runs
    for run in runs:
        if not RunLayout(run).metrics.exists():
            ap.error(f"{run}: not a finished run (no {RunLayout(run).metrics.name})")
    for run in runs:
        print(tables_of(run))
        print()


if __name__ == "__main__":
    print_tables(tables, __doc__)
