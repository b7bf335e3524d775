"""`maskshare datasets import FILE --name NAME`: a file of complete prompts as a dataset.

    plan = plan_import("pairs.json", "agreement", held_out_groups=["rc"])  # checks everything
    built = build_from_table(plan.spec, plan.spec_path, plan.table, plan.source_hash, ref, model)
    write_dataset(...)  # only now: data/sources/NAME.jsonl, then data/datasets/NAME.yaml

Formats: `clean-patch` (the Sparse Feature Circuits clean/patch JSON: clean_prefix,
clean_answer, patch_answer, optional patch_prefix -> counterfactual_prompt, case -> group)
`prompts` (the fields of `maskshare eval`'s prompt files, with counterfactual required,
plus optional counterfactual_prompt, group, entity, id), `mib` (the Mechanistic
Interpretability Benchmark's circuit tasks) and `recall` (factual recall rows, no
counterfactual: one is chosen per row; datasets/formats.py); `auto` tells them apart by the
first row's keys. `columns` (`--column FIELD=PATH`) maps any field to a column or a field
path into nested rows (datasets/fieldpath.py), on top of what the format reads. The table is written as JSON lines in canonical field order, so the same
file always gives the same bytes, spec and build.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import yaml

from maskshare.datasets.fieldpath import parse
from maskshare.datasets.formats import mib_counterfactual_field, mib_row, recall_rows
from maskshare.datasets.prompts import (
    CLEAN_PATCH,
    FIELDS,
    NAME_RE,
    REQUIRED,
    check_groups,
    detect_format,
    field_value,
    normalise_rows,
    read_rows,
    read_rows_text,
    table_jsonl,
    unknown_keys,
)
from maskshare.datasets.registry import _spec_files, write_dataset
from maskshare.datasets.sources import table_hash
from maskshare.datasets.spec import parse_spec
from maskshare.errors import UserError
from maskshare.runtime import data_dir

FORMATS = ("auto", "clean-patch", "prompts", "mib", "recall")


@dataclass
class ImportPlan:
    """Everything an import will write, checked; nothing is written yet."""

    name: str
    format: str
    spec: object
    spec_text: str
    spec_path: Path
    table: pl.DataFrame
    table_name: str
    table_bytes: bytes
    source_hash: str
    ignored: dict[str, int]
    detected: bool = False
    notes: tuple[str, ...] = ()


def _spec_text(name: str, src: Path, fmt: str, n: int, sha: str, table: str,
               held_out: list[str], test_fraction: float, seed: int,
               pairs: bool = False, detail: str = "") -> str:
    body = {"kind": "prompts", "name": name,
            "description": f"imported from {src.name} ({fmt} format{detail})",
            "source": {"table": table},
            "split": {"test_fraction": test_fraction, "seed": seed,
                      "held_out_groups": list(held_out)},
            "filter": {"kind": "logit-diff", "margin": 0.0}}
    if pairs:  # keep only the pairs position-wise patching can use
        body["filter"]["equal_length_pairs"] = True
    head = (f"# Imported by `maskshare datasets import` from {src.name} ({fmt} format, {n} rows,\n"
            f"# sha256 {sha} of the file). Edit freely; `maskshare datasets build {name}`\n"
            "# rebuilds it. filter: logit-diff keeps prompts whose answer's first token beats\n"
            "# the counterfactual's by more than margin; top1 asks for the top token.\n"
            + ("# equal_length_pairs drops rows whose counterfactual prompt has another\n"
               "# token length (the `counterfactual` ablation patches position by position).\n"
               if pairs else ""))
    return head + yaml.safe_dump(body, sort_keys=False, allow_unicode=True)


def _check_name(name: str, force: bool) -> None:
    if not re.match(NAME_RE, name):
        raise UserError(f"--name {name!r}: use lowercase letters, digits, '-' and '_' "
                        "(starting with a letter or digit)")
    files = _spec_files()
    if name in files and not force:
        raise UserError(f"a dataset named {name!r} already exists ({files[name]}); choose "
                        "another --name or pass --force to replace it")


def _canonical_rows(rows, fmt: str, columns: dict[str, str], where: str, seed: int,
                    counterfactual: str | None, first_token) -> tuple[list, dict, list[str]]:
    """(rows for normalise_rows, its column mapping, notes): the mib and recall formats turn
    each row into canonical fields first, then `columns` overrides read the original row."""
    if fmt in ("clean-patch", "prompts"):
        return rows, {**(CLEAN_PATCH if fmt == "clean-patch" else {}), **columns}, []
    notes = []
    if fmt == "mib":
        loc, first = rows[0]
        if not isinstance(first, dict):
            raise UserError(f"{where}: {loc}: expected an object, got {type(first).__name__}")
        cf = mib_counterfactual_field(first, where, loc, counterfactual)
        notes.append(f"counterfactual prompts from {cf!r}"
                     + ("" if counterfactual else ", the default"))
        out = [(loc, mib_row(r, cf, f"{where}: {loc}")) for loc, r in rows]
    else:
        if first_token is None:
            raise UserError("the recall format chooses counterfactuals by first token and "
                            "needs the model's tokenizer")
        out = recall_rows(rows, where, first_token, seed)
        notes.append(f"counterfactual: another attribute of the same relation with another "
                     f"first token, chosen by seed {seed}")
    for (loc, raw), (_, row) in zip(rows, out, strict=True):
        for f, path in columns.items():
            row[f] = field_value(raw, path, f in REQUIRED, f"{where}: {loc}")
    return out, {}, notes


def plan_import(path: str | Path, name: str, *, fmt: str = "auto",
                held_out_groups: list[str] | tuple[str, ...] = (), force: bool = False,
                test_fraction: float = 0.2, seed: int = 0,
                equal_length_pairs: bool = False, columns: dict[str, str] | None = None,
                counterfactual: str | None = None, first_token=None) -> ImportPlan:
    """Read and check `path` and the name; UserError (one line naming the row) on bad input.
    `first_token(text)` (the recall format only) gives an answer's first token id."""
    path = Path(path)
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    columns = _check_columns(columns or {})
    _check_name(name, force)
    rows = read_rows(path)
    detected = fmt == "auto"
    if detected:
        try:
            fmt = detect_format(rows, str(path))
        except UserError:
            if "prompt" not in columns:
                raise
            fmt = "prompts"  # --column says where the prompt is: a table of its own names
    if counterfactual and fmt != "mib":
        raise UserError(f"--counterfactual applies to the mib format, not {fmt}")
    canon, mapping, notes = _canonical_rows(rows, fmt, columns, str(path), seed,
                                            counterfactual, first_token)
    if columns:  # the spec's comment says where each field came from
        notes.append("columns " + ", ".join(f"{f}={p}" for f, p in columns.items()))
    df = normalise_rows(canon, mapping, str(path))
    held = list(dict.fromkeys(held_out_groups))
    check_groups(df, held, where=str(path))
    text = table_jsonl(df)
    table_name = f"{name}.jsonl"
    sha = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    pairs = equal_length_pairs
    if pairs and df["counterfactual_prompt"].null_count() == df.height:
        raise UserError(f"{path}: --equal-length-pairs needs counterfactual prompts "
                        "(patch_prefix / counterfactual_prompt); this file has none")
    detail = "; " + "; ".join(notes) if notes else ""
    spec_text = _spec_text(name, path, fmt, df.height, sha, f"sources/{table_name}", held,
                           test_fraction, seed, pairs, detail)
    spec = parse_spec(yaml.safe_load(spec_text), source=f"{name} (generated spec)")
    # what a later `datasets build NAME` reads back from the written file: same hash, same key
    table = normalise_rows(read_rows_text(text, ".jsonl", table_name), {}, table_name)
    ignored = ({} if fmt in ("mib", "recall")
               else dict(sorted(unknown_keys(rows, mapping).items())))
    return ImportPlan(name=name, format=fmt, spec=spec, spec_text=spec_text,
                      spec_path=data_dir() / "datasets" / f"{name}.yaml", table=table,
                      table_name=table_name, table_bytes=text.encode("utf-8"),
                      source_hash=table_hash(table), ignored=ignored, detected=detected,
                      notes=tuple(notes))


def _check_columns(columns: dict[str, str]) -> dict[str, str]:
    for f, p in columns.items():
        if f not in FIELDS:
            raise UserError(f"--column {f}={p}: unknown field {f!r}; map any of "
                            f"{', '.join(FIELDS)}")
        try:
            parse(p)
        except ValueError as e:
            raise UserError(f"--column {f}={p}: {e}") from None
    return dict(columns)


def describe_ignored(ignored: dict[str, int]) -> str | None:
    if not ignored:
        return None
    return ("ignored field(s) " + ", ".join(f"{k!r} ({n} rows)" for k, n in ignored.items())
            + "; known: prompt, answer, counterfactual, counterfactual_prompt, group, entity, "
            "id (clean-patch: clean_prefix, clean_answer, patch_prefix, patch_answer, case)")


def write_plan(plan: ImportPlan) -> Path:
    return write_dataset(plan.name, plan.spec_text, plan.table_name, plan.table_bytes)


__all__ = ["FORMATS", "ImportPlan", "describe_ignored", "plan_import", "write_plan"]
