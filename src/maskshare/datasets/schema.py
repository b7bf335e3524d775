"""The built-dataset items schema (docs/architecture.md), checked wherever items enter.

One row per prompt. Other modules code against these columns; extra columns may be added
but never removed or retyped.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from maskshare.errors import UserError

ITEMS_SCHEMA: dict[str, pl.DataType] = {
    "prompt_id": pl.Int64(),
    "prompt": pl.String(),
    "tokens": pl.List(pl.Int64()),
    "token_strs": pl.List(pl.String()),
    "roles": pl.List(pl.String()),
    "answer": pl.String(),
    "answer_id": pl.Int64(),
    "counterfactual": pl.String(),
    "counterfactual_id": pl.Int64(),
    "entity": pl.String(),
    "phrasing_id": pl.Int64(),
    "phrasing": pl.String(),
    "split": pl.String(),
    "answer_prob": pl.Float64(),
    "logit_diff": pl.Float64(),
    "dataset": pl.String(),
    "variant": pl.String(),
}

# optional columns (prompt datasets): null where a row has no counterfactual prompt; template
# datasets leave them out, so their built files keep their bytes
OPTIONAL_ITEMS_SCHEMA: dict[str, pl.DataType] = {
    "counterfactual_prompt": pl.String(),
    "counterfactual_tokens": pl.List(pl.Int64()),
}

SPLITS = ("train", "validation", "test_entity", "test_phrasing", "test_both")
VARIANTS = ("templated", "freeform")
BASE_ROLES = ("bos", "subject", "relation", "final", "other")

PASS_TABLE_SCHEMA: dict[str, pl.DataType] = {
    "phrasing_id": pl.Int64(),
    "phrasing": pl.String(),
    "held_out": pl.Boolean(),
    "n_items": pl.Int64(),
    "n_passed": pl.Int64(),
    "mean_answer_prob": pl.Float64(),
    "mean_logit_diff": pl.Float64(),
}


def validate_items(df: pl.DataFrame, *, source: str = "items") -> pl.DataFrame:
    """Check `df` against ITEMS_SCHEMA and its row invariants; return it in schema column order
    (extra columns kept after). Raises UserError naming the first problem."""
    missing = [c for c in ITEMS_SCHEMA if c not in df.columns]
    if missing:
        raise UserError(f"{source}: missing columns {missing}")
    for col, dtype in ITEMS_SCHEMA.items():
        if df.schema[col] != dtype:
            raise UserError(f"{source}: column {col!r} has type {df.schema[col]}, expected {dtype}")
    for col, dtype in OPTIONAL_ITEMS_SCHEMA.items():
        if col in df.columns and df.schema[col] != dtype:
            raise UserError(f"{source}: column {col!r} has type {df.schema[col]}, expected {dtype}")
    nulls = [c for c in ITEMS_SCHEMA if df[c].null_count()]
    if nulls:
        raise UserError(f"{source}: null values in columns {nulls}")
    if df["prompt_id"].n_unique() != df.height:
        raise UserError(f"{source}: prompt_id is not unique")
    n_tok = df["tokens"].list.len()
    if not (n_tok.equals(df["token_strs"].list.len()) and n_tok.equals(df["roles"].list.len())):
        raise UserError(f"{source}: tokens, token_strs and roles differ in length")
    if df.height and (n_tok < 2).any():
        raise UserError(f"{source}: every prompt needs BOS and at least one token")
    if df.height:
        if df["roles"].list.first().ne("bos").any():
            raise UserError(f"{source}: the first token's role must be 'bos'")
        if df["roles"].list.last().ne("final").any():
            raise UserError(f"{source}: the last token's role must be 'final'")
        if df["tokens"].list.first().n_unique() != 1:
            raise UserError(f"{source}: prompts do not all start with the same BOS token")
    bad_split = set(df["split"].unique()) - set(SPLITS)
    if bad_split:
        raise UserError(f"{source}: unknown split values {sorted(bad_split)}")
    bad_var = set(df["variant"].unique()) - set(VARIANTS)
    if bad_var:
        raise UserError(f"{source}: unknown variant values {sorted(bad_var)}")
    if df.height and (df["answer_id"] == df["counterfactual_id"]).any():
        raise UserError(f"{source}: an item's counterfactual has the answer's first token")
    rest = [c for c in df.columns if c not in ITEMS_SCHEMA]
    return df.select([*ITEMS_SCHEMA, *rest])


def load_items(path: str | Path) -> pl.DataFrame:
    """Read a built dataset's items (a dataset dir or an items.parquet file) and validate them."""
    p = Path(path)
    if p.is_dir():
        p = p / "items.parquet"
    if not p.is_file():
        raise UserError(f"{p}: no such items file (build the dataset first)")
    try:
        df = pl.read_parquet(p)
    except Exception as e:  # noqa: BLE001 - any unreadable parquet is bad input
        raise UserError(f"{p}: unreadable parquet ({type(e).__name__}: {e})") from None
    return validate_items(df, source=str(p))
