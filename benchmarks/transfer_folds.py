"""Leave-one-training-group-out validation folds for the transfer study (issue 22).

Writes, under benchmarks/transfer/, one source table and one dataset spec per fold. A fold
keeps only the training groups of a dataset (the dataset's own held-out groups, e.g. the
agreement `rc` structure or the element-questions `dialogue` style, are dropped from the
table, so no fold can see them) and holds one training group out as the validation group:

    .venv/bin/python benchmarks/transfer_folds.py

Folds: agreement: one of simple / nounpp / subjrc held out in turn (the other two train;
before the `subjrc` structure, 2026-12-07, only simple and nounpp trained);
element-questions: one of question / statement / fill-in / list held out in turn.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "transfer"

DATASETS = {
    # name: (source table, the dataset's own held-out groups, training groups)
    # agreement3: the agreement source with its third training structure (subjrc,
    # 2026-12-07); the folds named agreement-val-* in benchmarks/results were the two-structure
    # source's (simple / nounpp only)
    "agreement3": ("agreement.jsonl", ["rc"], ["simple", "nounpp", "subjrc"]),
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


# elements-symbol (free-form phrasings): its held-out phrasings 8 and 10 dropped, two
# training phrasings of other shapes held out instead (picked before any run: 4, a sentence
# ending in a relation phrase; 9, a Q/A pair mentioning the element twice)
ELEMENTS_VAL_HELD_OUT = (4, 9)


def elements_fold() -> Path:
    import yaml

    spec = yaml.safe_load((ROOT / "data" / "datasets" / "elements-symbol.yaml").read_text())
    spec["name"] = "elements-symbol-val"
    spec["description"] = "elements-symbol validation fold (phrasings 8, 10 dropped; 4, 9 held out)"
    kept = []
    for ph in spec["freeform"]:
        if ph.get("held_out"):
            continue
        ph = dict(ph)
        if ph["id"] in ELEMENTS_VAL_HELD_OUT:
            ph["held_out"] = True
        kept.append(ph)
    spec["freeform"] = kept
    p = OUT / "elements-symbol-val.yaml"
    p.write_text("# Validation fold written by benchmarks/transfer_folds.py\n"
                 + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    return p


def folds() -> dict[str, Path]:
    OUT.mkdir(parents=True, exist_ok=True)
    written = {"elements-symbol-val": elements_fold()}
    for name, (table, dropped, train) in DATASETS.items():
        rows = [json.loads(line) for line in (ROOT / "data" / "sources" / table).open()]
        kept = [r for r in rows if r.get("group") not in dropped]
        ttable = f"{name}-train.jsonl"
        (OUT / ttable).write_text("".join(json.dumps(r) + "\n" for r in kept))
        extra = "  equal_length_pairs: true\n" if name.startswith("agreement") else ""
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
