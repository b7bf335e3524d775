"""Write one split of a finished run's dataset as a `maskshare eval` prompt file (JSON lines
of prompt, answer, counterfactual and entity), e.g. to score a run's held-out prompts
through `eval` the way a new prompt set would be:

    .venv/bin/python scripts/split_prompts.py data/runs/recall-<hash> test_entity > held.jsonl
    .venv/bin/maskshare eval --run data/runs/recall-<hash> --prompts held.jsonl

`--group G` keeps the rows of one group (a prompt dataset's group, a template dataset's
phrasing), e.g. a run's own training rows of one structure, scored per lambda with
`maskshare eval --lambda L` (docs/datasets.md, agreement).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import polars as pl


def _only(items: pl.DataFrame, column: str, value: str, missing: str) -> pl.DataFrame:
    """The rows whose `column` is `value`; exits with `missing` and the values there are
    (the first 12) when none is."""
    known = sorted(items[column].unique().to_list())
    if value not in known:
        sys.exit(f"{missing}; it has {', '.join(known[:12])}")
    return items.filter(pl.col(column) == value)


def rows(run: Path, split: str, group: str | None = None) -> list[dict]:
    items = _only(pl.read_parquet(run / "dataset" / "items.parquet"), "split", split,
                  f"{run}: no split {split!r}")
    if group is not None:
        items = _only(items, "phrasing", group,
                      f"{run}: split {split!r} has no group {group!r}")
    out = []
    for r in items.iter_rows(named=True):
        row = {"prompt": r["prompt"], "answer": r["answer"], "counterfactual": r["counterfactual"]}
        if r.get("entity"):
            row["entity"] = r["entity"]
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("split")
    ap.add_argument("--group", default=None, help="only the rows of this group (phrasing)")
    a = ap.parse_args()
    sys.stdout.write("".join(json.dumps(r) + "\n" for r in rows(a.run, a.split, a.group)))


if __name__ == "__main__":
    main()
