"""Items of a prompt dataset (`kind: prompts`) before the behaviour filter.

- `phrasing` is the row's group, `phrasing_id` the group's index among the sorted group
  names; `entity` is the row's entity, else its `id`, else `row<N>` (its 1-based row).
- Answers and counterfactuals are scored by their first token. Rows whose answer and
  counterfactual share that token, whose answer starts with a blank token, or whose prompt
  is longer than the model's context are dropped and counted per group.
- Splits: a seeded `test_fraction` of the split units (entities where given, else prompt
  texts) is held out; rows of a held-out group go to `test_phrasing` (`test_both` when also a
  held-out unit), held-out units of trained groups to `test_entity`, the rest to `train`.
  A prompt text never sits on both sides: a training row whose text also occurs on the test
  side becomes `test_entity`. Exact repeats (prompt, answer, counterfactual) are kept once.
- Roles: `bos`, `final`, `other`, and `subject` on the tokens of every occurrence of the
  row's given entity in its prompt.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import polars as pl

from maskshare.datasets.prompts import DEFAULT_GROUP, PromptDatasetSpec
from maskshare.datasets.rows import split_entities, split_of, token_roles
from maskshare.datasets.schema import ITEMS_SCHEMA, OPTIONAL_ITEMS_SCHEMA, PASS_TABLE_SCHEMA

DROP_SHARED = "answer and counterfactual share their first token"
DROP_BLANK = "answer or counterfactual starts with a blank token"
DROP_LONG = "prompt longer than the model's context"
DROP_PAIR = "counterfactual prompt missing or of another token length (equal_length_pairs)"


def assign_splits(df: pl.DataFrame, test_fraction: float, seed: int,
                  held_out_groups: list[str]) -> list[str]:
    """The split of every row of the canonical table (group filled in); see the module doc."""
    units = [e if e is not None else p for e, p in zip(df["entity"], df["prompt"], strict=True)]
    test_units = split_entities(units, test_fraction, seed)
    held = set(held_out_groups)
    splits = [split_of(u in test_units, g in held) for u, g in zip(units, df["group"],
                                                                    strict=True)]
    on_test = {p for p, s in zip(df["prompt"], splits, strict=True) if s != "train"}
    return ["test_entity" if s == "train" and p in on_test else s
            for p, s in zip(df["prompt"], splits, strict=True)]


def entity_spans(prompt: str, entity: str | None,
                 ignore_case: bool = False) -> list[tuple[int, int, str]]:
    """The `subject` spans of `entity` in `prompt` (every occurrence)."""
    if not entity or not entity.strip():
        return []
    flags = re.IGNORECASE if ignore_case else 0
    return [(m.start(), m.end(), "subject")
            for m in re.finditer(re.escape(entity), prompt, flags)]


def _first(tokenizer, text: str) -> int | None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return int(ids[0]) if ids else None


def _row_tokens(tokenizer, r: dict, bos: int, d_vocab: int, n_ctx: int,
                equal_length_pairs: bool = False):
    """(item fields, None) for a usable row, (None, drop reason) otherwise."""
    a, c = _first(tokenizer, r["answer"]), _first(tokenizer, r["counterfactual"])
    for i in (a, c):
        if i is None or i >= d_vocab or not tokenizer.decode([i]).strip():
            return None, DROP_BLANK
    if a == c:
        return None, DROP_SHARED
    tokens, strs, roles = token_roles(tokenizer, r["prompt"], entity_spans(r["prompt"],
                                                                            r["entity"]), bos)
    if len(tokens) > n_ctx:
        return None, DROP_LONG
    cft = None
    if r["counterfactual_prompt"] is not None:
        cft = [bos] + [int(t) for t in tokenizer(r["counterfactual_prompt"],
                                                 add_special_tokens=False)["input_ids"]]
    if equal_length_pairs and (cft is None or len(cft) != len(tokens)):
        return None, DROP_PAIR
    return {"tokens": tokens, "token_strs": strs, "roles": roles, "answer_id": a,
            "counterfactual_id": c, "counterfactual_tokens": cft}, None


def prompt_items(spec: PromptDatasetSpec, df: pl.DataFrame, tokenizer, bos: int, d_vocab: int,
                 n_ctx: int) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Every usable row as an item (before the filter) with a `held_out` column, and build
    info: counts of repeats and of dropped rows per reason and per group."""
    n_rows = df.height
    df = df.with_columns(pl.col("group").fill_null(DEFAULT_GROUP),
                         pl.int_range(1, n_rows + 1).alias("_row"))
    df = df.unique(subset=["prompt", "answer", "counterfactual"], keep="first",
                   maintain_order=True)
    groups = sorted(set(df["group"].to_list()))
    gid = {g: i for i, g in enumerate(groups)}
    held = set(spec.split.held_out_groups)
    splits = assign_splits(df, spec.split.test_fraction, spec.split.seed,
                           spec.split.held_out_groups)
    rows, dropped = [], Counter()
    dropped_by_group: Counter = Counter()
    for r, split in zip(df.iter_rows(named=True), splits, strict=True):
        item, why = _row_tokens(tokenizer, r, bos, d_vocab, n_ctx,
                                spec.filter.equal_length_pairs)
        if item is None:
            dropped[why] += 1
            dropped_by_group[r["group"]] += 1
            continue
        ent = r["entity"] if r["entity"] is not None else r["id"] or f"row{r['_row']}"
        rows.append({"prompt": r["prompt"], **item, "answer": r["answer"],
                     "counterfactual": r["counterfactual"], "entity": ent,
                     "phrasing_id": gid[r["group"]], "phrasing": r["group"], "split": split,
                     "counterfactual_prompt": r["counterfactual_prompt"],
                     "held_out": r["group"] in held})
    keep = ("answer_prob", "logit_diff", "dataset", "variant", "prompt_id")
    schema = {k: v for k, v in ITEMS_SCHEMA.items() if k not in keep}
    items = pl.DataFrame(rows, schema={**schema, **OPTIONAL_ITEMS_SCHEMA,
                                       "held_out": pl.Boolean})
    items = items.with_row_index("prompt_id").with_columns(pl.col("prompt_id").cast(pl.Int64))
    info = {"n_rows": n_rows, "n_duplicates": n_rows - df.height,
            "n_dropped": sum(dropped.values()), "dropped": dict(sorted(dropped.items())),
            "dropped_by_group": {g: dropped_by_group.get(g, 0) for g in groups},
            "groups": groups, "held_out_groups": sorted(held)}
    return items, info


def prompt_pass_table(items: pl.DataFrame, passed: pl.Series, info: dict[str, Any],
                      filt: str) -> pl.DataFrame:
    """One row per group, every group of the table (also those whose rows were all dropped):
    the template pass table's columns plus `n_dropped` and the `filter` used."""
    df = items.with_columns(passed.alias("_passed"))
    agg = (df.group_by("phrasing_id")
           .agg(n_items=pl.len().cast(pl.Int64), n_passed=pl.col("_passed").sum().cast(pl.Int64),
                mean_answer_prob=pl.col("answer_prob").mean().cast(pl.Float64),
                mean_logit_diff=pl.col("logit_diff").mean().cast(pl.Float64)))
    groups = info["groups"]
    base = pl.DataFrame({"phrasing_id": list(range(len(groups))), "phrasing": groups,
                         "held_out": [g in info["held_out_groups"] for g in groups],
                         "n_dropped": [info["dropped_by_group"][g] for g in groups]},
                        schema={"phrasing_id": pl.Int64, "phrasing": pl.String,
                                "held_out": pl.Boolean, "n_dropped": pl.Int64})
    t = base.join(agg, on="phrasing_id", how="left").with_columns(
        pl.col("n_items").fill_null(0), pl.col("n_passed").fill_null(0),
        pl.lit(filt).alias("filter"))
    cols = [pl.col(c).cast(d) for c, d in PASS_TABLE_SCHEMA.items()]
    return t.select([*cols, pl.col("n_dropped"), pl.col("filter")]).sort("phrasing_id")
