"""Leave-one-training-group-out validation folds for the transfer study (issue 22).

Writes, under benchmarks/transfer/, one source table and one dataset spec per fold. A fold
keeps only the training groups of a dataset (the dataset's own held-out groups, e.g. the
agreement `rc` structure or the element-questions `dialogue` style, are dropped from the
table, so no fold can see them) and holds one training group out as the validation group:

    .venv/bin/python benchmarks/transfer_folds.py

Folds: agreement: val-nounpp (train simple), val-simple (train nounpp);
element-questions: one of question / statement / fill-in / list held out in turn.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "transfer"

DATASETS = {
    # name: (source table, the dataset's own held-out groups, training groups)
    "agreement": ("agreement.jsonl", ["rc"], ["simple", "nounpp"]),
    "element-questions": ("element-questions.jsonl", ["dialogue"],
                          ["question", "statement", "fill-in", "list"]),
}

SPEC = """\
# Validation fold written by benchmarks/transfer_folds.py: {name} without its held-out
# groups {dropped} (never seen by any fold), validation group {val} held out.
kind: prompts
name: {fold}
description: {name} validation fold, {val} held out
source:
  table: {table}
split:
  test_fraction: 0.2
  seed: 0
  held_out_groups: [{val}]
filter:
  kind: logit-diff
  margin: 0.0
{extra}"""


def folds() -> dict[str, Path]:
    OUT.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, (table, dropped, train) in DATASETS.items():
        rows = [json.loads(line) for line in (ROOT / "data" / "sources" / table).open()]
        kept = [r for r in rows if r.get("group") not in dropped]
        ttable = f"{name}-train.jsonl"
        (OUT / ttable).write_text("".join(json.dumps(r) + "\n" for r in kept))
        extra = "  equal_length_pairs: true\n" if name == "agreement" else ""
        for val in train:
            fold = f"{name}-val-{val}"
            p = OUT / f"{fold}.yaml"
            p.write_text(SPEC.format(name=name, dropped=dropped, val=val, fold=fold,
                                     table=ttable, extra=extra))
            written[fold] = p
    return written


if __name__ == "__main__":
    for fold, p in folds().items():
        print(fold, p.relative_to(ROOT))
