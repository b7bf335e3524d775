"""Prompt datasets: complete prompts brought by the user, no template (`kind: prompts`).

A row is `prompt`, `answer`, `counterfactual`, optionally `counterfactual_prompt` (the
patch prompt of a clean/patch pair), `group` (a structure or source: held-out groups play
the part held-out phrasings play in template datasets) and `entity` (the split unit; without
it each prompt text is its own unit). Tables are JSON arrays, JSON lines, CSV or parquet;
`columns` maps these fields to a table's own column names, or to field paths into nested
rows (`symbol_counterfactual.prompt`, `choices.label[answerKey]`: datasets/fieldpath.py),
e.g. the Sparse Feature Circuits clean/patch files:

    columns: {prompt: clean_prefix, answer: clean_answer, counterfactual: patch_answer,
              counterfactual_prompt: patch_prefix, group: case}

Every row is checked where it enters (`normalise_rows`): a missing or non-string field,
an empty prompt or answer, or a counterfactual equal to its answer is a UserError naming
the row. Answers of several tokens are scored by their first token (datasets/prompt_build.py).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar, Literal

import polars as pl
from pydantic import Field, model_validator

from maskshare.datasets.fieldpath import PathError, is_path, parse, resolve, top_key
from maskshare.datasets.formats import looks_like_mib, looks_like_recall
from maskshare.datasets.sources import resolve_table_path
from maskshare.errors import UserError
from maskshare.validation import Strict, read_text_file

NAME_RE = r"^[a-z0-9][a-z0-9_-]*$"
REQUIRED = ("prompt", "answer", "counterfactual")
OPTIONAL = ("counterfactual_prompt", "group", "entity", "id")
FIELDS = REQUIRED + OPTIONAL
TABLE_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
DEFAULT_GROUP = "all"
# the Sparse Feature Circuits clean/patch keys, as a column mapping
CLEAN_PATCH = {"prompt": "clean_prefix", "answer": "clean_answer",
               "counterfactual": "patch_answer", "counterfactual_prompt": "patch_prefix",
               "group": "case"}


class PromptSource(Strict):
    table: str = Field(description=".json (array or lines), .jsonl, .csv or .parquet; relative "
                       "paths are looked up beside the spec, then under the data dir")


class PromptSplit(Strict):
    test_fraction: float = Field(default=0.2, ge=0.0, lt=1.0,
                                 description="fraction of entities (or prompts) held out")
    seed: int = 0
    held_out_groups: list[str] = Field(default_factory=list,
                                       description="groups never trained on (test_phrasing)")


class FilterSpec(Strict):
    kind: Literal["top1", "logit-diff", "none"] = Field(
        default="logit-diff", description="top1: the model's top token is the answer's first "
        "token; logit-diff: logit(answer) - logit(counterfactual) > margin")
    margin: float = 0.0
    equal_length_pairs: bool = Field(
        default=False, description="drop rows whose counterfactual prompt has another token "
        "length than the prompt (patching, ablation `counterfactual`, compares positions)")


class PromptDatasetSpec(Strict):
    labels_spans: ClassVar[bool] = False  # only BOS, the final token and entity subjects
    pairs_prompts: ClassVar[bool] = True  # rows may carry a counterfactual prompt
    kind: Literal["prompts"]
    name: str = Field(pattern=NAME_RE, max_length=64)  # a file and folder name
    description: str = ""
    source: PromptSource
    columns: dict[str, str] = Field(default_factory=dict,
                                    description="field -> the table's column for it")
    split: PromptSplit = Field(default_factory=PromptSplit)
    filter: FilterSpec = Field(default_factory=FilterSpec)

    @model_validator(mode="after")
    def _check(self):
        bad = sorted(set(self.columns) - set(FIELDS))
        if bad:
            raise ValueError(f"columns: unknown field(s) {bad}; map any of {list(FIELDS)}")
        for path in self.columns.values():
            if is_path(path):
                parse(path)  # ValueError on a malformed path
        if len(set(self.split.held_out_groups)) != len(self.split.held_out_groups):
            raise ValueError(f"split.held_out_groups repeats: {self.split.held_out_groups}")
        return self

    @property
    def default_filter(self) -> tuple[str, float]:
        """(kind, margin): the spec's own `filter`."""
        return self.filter.kind, self.filter.margin

    def load_table(self, spec_dir: Path | None) -> pl.DataFrame:
        return load_prompt_table(self, resolve_table_path(self.source.table, spec_dir))

    def check_table(self, df: pl.DataFrame, *, where: str = "source table") -> None:
        """Nothing more: the rows were checked one by one as they were read."""

    def describe(self) -> str:
        """The `datasets list` columns after the name."""
        return f"{'prompts':20s} {self.source.table}"

    def variants(self) -> list[str]:
        return ["freeform"]  # one variant, so run configs' `variant: freeform` works

    def column(self, field: str) -> str:
        return self.columns.get(field, field)


# ----------------------------------------------------------------------------- reading
def read_rows_text(text: str, suffix: str, where: str) -> list[tuple[str, Any]]:
    """(location, value) per row of a JSON array or JSON-lines text; UserError if malformed."""
    body = text.strip()
    if suffix == ".json" and body.startswith("["):
        try:
            arr = json.loads(body)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: malformed JSON array ({e.msg} at line {e.lineno})") from None
        if not isinstance(arr, list):
            raise UserError(f"{where}: expected a JSON array of objects")
        return [(f"row {i}", v) for i, v in enumerate(arr, start=1)]
    rows = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((f"line {i}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: line {i}: malformed JSON ({e.msg} at column {e.colno})"
                            ) from None
    return rows


def read_rows(path: Path) -> list[tuple[str, Any]]:
    """(location, row) for every row of a prompt table file; UserError if unreadable."""
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise UserError(f"{path}: prompt tables must be one of {', '.join(TABLE_SUFFIXES)}")
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    if suffix in (".json", ".jsonl"):
        rows = read_rows_text(read_text_file(path, "prompt table"), suffix, str(path))
    else:
        try:
            df = (pl.read_csv(path, infer_schema=False) if suffix == ".csv"
                  else pl.read_parquet(path))
        except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"{path}: unreadable table ({msg})") from None
        rows = [(f"row {i}", r) for i, r in enumerate(df.iter_rows(named=True), start=1)]
    if not rows:
        raise UserError(f"{path}: no rows")
    return rows


def detect_format(rows: list[tuple[str, Any]], where: str) -> str:
    """`clean-patch`, `prompts`, `mib` or `recall`, from the keys of the first row: a row with
    `prompt` and `answer` is `prompts` (as before the other two existed)."""
    loc, first = rows[0]
    if not isinstance(first, dict):
        raise UserError(f"{where}: {loc}: expected an object, got {type(first).__name__}")
    if "clean_prefix" in first:
        return "clean-patch"
    if "prompt" in first and "answer" not in first:
        if looks_like_mib(first):
            return "mib"
        if looks_like_recall(first):
            return "recall"
    if "prompt" in first:
        return "prompts"
    raise UserError(f"{where}: cannot tell the format from the keys {sorted(first)[:8]}; "
                    "expected clean_prefix/clean_answer/patch_answer (clean-patch) or "
                    "prompt/answer/counterfactual (prompts); or pass --format")


def normalise_rows(rows: list[tuple[str, Any]], columns: dict[str, str],
                   where: str) -> pl.DataFrame:
    """The canonical table (FIELDS, String, null where absent) of validated rows; the first
    bad row is a UserError naming it and what is wrong."""
    col = {f: columns.get(f, f) for f in FIELDS}
    out: dict[str, list[str | None]] = {f: [] for f in FIELDS}
    for loc, r in rows:
        if not isinstance(r, dict):
            raise UserError(f"{where}: {loc}: expected an object, got {type(r).__name__}")
        for f in FIELDS:
            v = field_value(r, col[f], f in REQUIRED, f"{where}: {loc}")
            if v is None:
                if f in REQUIRED:
                    raise UserError(f"{where}: {loc}: missing field {col[f]!r}")
                out[f].append(None)
                continue
            if f == "id" and isinstance(v, int) and not isinstance(v, bool):
                v = str(v)  # row ids are often numbers
            if not isinstance(v, str):
                raise UserError(f"{where}: {loc}: {col[f]!r} must be a string, got "
                                f"{type(v).__name__} ({str(v)[:20]!r})")
            if f in ("prompt", "answer", "counterfactual") and not v.strip():
                raise UserError(f"{where}: {loc}: empty {col[f]!r}")
            out[f].append(v if v.strip() or f in REQUIRED else None)
        if out["answer"][-1] == out["counterfactual"][-1]:
            raise UserError(f"{where}: {loc}: the counterfactual equals the answer "
                            f"({out['answer'][-1]!r})")
    return pl.DataFrame(out, schema={f: pl.String for f in FIELDS})


def field_value(r: dict, column: str, required: bool, where: str) -> Any:
    """The row's value for a column or a field path (datasets/fieldpath.py); None if absent
    (a path that does not resolve for a required field is a UserError naming the path)."""
    if not is_path(column) or column in r:
        return r.get(column)
    try:
        return resolve(r, column)
    except PathError as e:
        if e.missing and not required:
            return None
        raise UserError(f"{where}: field path {column!r} does not resolve: {e}") from None


def unknown_keys(rows: list[tuple[str, Any]], columns: dict[str, str]) -> Counter:
    known = {columns.get(f, f) for f in FIELDS} | {top_key(columns.get(f, f)) for f in FIELDS}
    return Counter(k for _, r in rows if isinstance(r, dict) for k in r if k not in known)


def load_prompt_table(spec: PromptDatasetSpec, path: Path) -> pl.DataFrame:
    """The spec's rows as the canonical table, checked row by row."""
    df = normalise_rows(read_rows(path), spec.columns, str(path))
    check_groups(df, spec.split.held_out_groups, where=spec.name)
    return df


def check_groups(df: pl.DataFrame, held_out: list[str], where: str) -> None:
    groups = set(df["group"].fill_null(DEFAULT_GROUP).to_list())
    missing = sorted(set(held_out) - groups)
    if missing:
        raise UserError(f"{where}: held-out group(s) {missing} not in the table (groups: "
                        f"{sorted(groups)[:12]})")
    if held_out and groups <= set(held_out):
        raise UserError(f"{where}: every group is held out; keep at least one for training")


def table_jsonl(df: pl.DataFrame) -> str:
    """The canonical table as JSON lines: fixed key order, absent fields left out, so the
    same rows always give the same bytes."""
    lines = []
    for r in df.iter_rows(named=True):
        lines.append(json.dumps({f: r[f] for f in FIELDS if r.get(f) is not None},
                                ensure_ascii=False))
    return "\n".join(lines) + "\n"


def roles_note(spec, grouping_kinds) -> str | None:
    """Why a `roles` grouping says little here, or None: prompt datasets label only BOS, the
    final token and (where an entity string occurs in its prompt) the subject; everything
    else is `other`. The caller raises or warns (pipeline check_inputs)."""
    if spec.labels_spans or "roles" not in {str(k) for k in grouping_kinds}:
        return None
    return (f"dataset {spec.name!r} has no labelled spans (kind: prompts): the roles grouping "
            "would see only bos/final/other (and subject where an entity occurs in its prompt); "
            "use attention, single or from-end, or a template dataset with [[spans]]")
