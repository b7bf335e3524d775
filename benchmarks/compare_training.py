"""Two (or more) finished runs of one dataset that differ in how masks train, side by side
(issue 22: "trainings stop when validation F stops improving"; docs/selection.md,
"Stopping on validation").

    .venv/bin/python benchmarks/compare_training.py data/runs/<run> data/runs/<run> [--json OUT]

Per run: the training steps its masks ran (each mask's summary.json: steps run against
steps allowed, per variant), the main variant's F on the validation split read at 40 / 60 /
100 / 150 latents per token (its curve in evaluate/curves.parquet, linear in log size,
never extrapolated) and its whole validation curve, the chosen circuit (metrics.json) and
F of the chosen circuit on each held-out split. Validation is what a choice between the
runs' settings may read; the held-out figures are for reporting. Wall times are not here:
measure them on builds run side by side (the README says how each figure was taken).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import polars as pl
from dataset_tables import curve_points, f_on_curve  # benchmarks/, beside this script

from maskshare.run.layout import RunLayout
from maskshare.run.resources import load_run_config

SIZES = (40, 60, 100, 150)
HELDOUT = ("test_phrasing", "test_entity", "test_both")


def steps_run(run: Path) -> dict:
    """{variant: [steps run, steps allowed, masks]} from the masks' summaries (allowed:
    `masks.steps` for a cold start, `masks.warm_steps` (or `steps`) for a warm one)."""
    m = load_run_config(run).masks
    out: dict = {}
    for summary in sorted((run / "masks").glob("*/*/summary.json")):
        s = json.loads(summary.read_text())
        allowed = m.steps if s.get("init") == "cold" else (m.warm_steps or m.steps)
        row = out.setdefault(s["variant"], [0, 0, 0])
        row[0] += int(s["final"]["step"]) + 1
        row[1] += allowed
        row[2] += 1
    return out


def one(run: Path) -> dict:
    layout = RunLayout(run)
    m = json.loads(layout.metrics.read_text())
    curves = pl.read_parquet(layout.curves)
    main = pl.read_parquet(layout.comparisons)["method"][0]
    val = curve_points(curves, main, "validation")
    sizes, fs = val["latents_per_token"].to_list(), val["faithfulness"].to_list()
    held = {s: curve_points(curves, main, s).filter(pl.col("lambda") == m["lambda"])
            for s in HELDOUT}
    return {"run": run.name, "steps": steps_run(run),
            "validation_at": {str(x): f_on_curve(val, x) for x in SIZES},
            "validation_curve": [[round(a, 1), round(b, 3)] for a, b in zip(sizes, fs,
                                                                             strict=True)],
            "chosen": {"lambda": m["lambda"], **(m.get("selection") or {})},
            "heldout": {s: [r["faithfulness"], r["latents_per_token"]]
                        for s, t in held.items() if t.height for r in [t.row(0, named=True)]}}


def _f(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    res = [one(Path(r)) for r in a.runs]
    for r in res:
        print(f"{r['run']}:")
        for v, (ran, allowed, n) in r["steps"].items():
            print(f"  steps {v}: {ran} of {allowed} over {n} masks ({ran / allowed:.0%})")
        print("  validation F at " + ", ".join(f"{k}: {_f(v)}"
                                               for k, v in r["validation_at"].items()))
        print("  validation curve (size, F): " + " ".join(
            f"{_f(f)}({s:.0f})" for s, f in r["validation_curve"]))
        c = r["chosen"]
        print(f"  chosen: lambda {c['lambda']:g}, {c.get('rule', '?')}, validation F "
              f"{_f(c.get('faithfulness'))} at {_f(c.get('latents_per_token'))}")
        print("  held-out at the chosen circuit: " + ", ".join(
            f"{s} {_f(f)} ({n:.0f})" for s, (f, n) in r["heldout"].items()))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
