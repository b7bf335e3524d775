"""`maskshare datasets import FILE --name NAME`: a file of complete prompts as a dataset.

    plan = plan_import("pairs.json", "agreement", held_out_groups=["rc"])  # checks everything
    built = build_from_table(plan.spec, plan.spec_path, plan.table, plan.source_hash, ref, model)
    write_dataset(...)  # only now: data/sources/NAME.jsonl, then data/datasets/NAME.yaml

Formats: `clean-patch` (the Sparse Feature Circuits clean/patch JSON: clean_prefix,
clean_answer, patch_answer, optional patch_prefix -> counterfactual_prompt, case -> group)
and `prompts` (the fields of `maskshare eval`'s prompt files, with counterfactual required,
plus optional counterfactual_prompt, group, entity, id); `auto` tells them apart by the
first row's keys. The table is written as JSON lines in canonical field order, so the same
file always gives the same bytes, spec and build.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import yaml

from maskshare.datasets.prompts import (
    CLEAN_PATCH,
    NAME_RE,
    check_groups,
    detect_format,
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

FORMATS = ("auto", "clean-patch", "prompts")


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


def _spec_text(name: str, src: Path, fmt: str, n: int, sha: str, table: str,
               held_out: list[str], test_fraction: float, seed: int,
               pairs: bool = False) -> str:
    body = {"kind": "prompts", "name": name,
            "description": f"imported from {src.name} ({fmt} format)",
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


def plan_import(path: str | Path, name: str, *, fmt: str = "auto",
                held_out_groups: list[str] | tuple[str, ...] = (), force: bool = False,
                test_fraction: float = 0.2, seed: int = 0,
                equal_length_pairs: bool = False) -> ImportPlan:
    """Read and check `path` and the name; UserError (one line naming the row) on bad input."""
    path = Path(path)
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    _check_name(name, force)
    rows = read_rows(path)
    if fmt == "auto":
        fmt = detect_format(rows, str(path))
    columns = CLEAN_PATCH if fmt == "clean-patch" else {}
    df = normalise_rows(rows, columns, str(path))
    held = list(dict.fromkeys(held_out_groups))
    check_groups(df, held, where=str(path))
    text = table_jsonl(df)
    table_name = f"{name}.jsonl"
    sha = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    pairs = equal_length_pairs
    if pairs and df["counterfactual_prompt"].null_count() == df.height:
        raise UserError(f"{path}: --equal-length-pairs needs counterfactual prompts "
                        "(patch_prefix / counterfactual_prompt); this file has none")
    spec_text = _spec_text(name, path, fmt, df.height, sha, f"sources/{table_name}", held,
                           test_fraction, seed, pairs)
    spec = parse_spec(yaml.safe_load(spec_text), source=f"{name} (generated spec)")
    # what a later `datasets build NAME` reads back from the written file: same hash, same key
    table = normalise_rows(read_rows_text(text, ".jsonl", table_name), {}, table_name)
    return ImportPlan(name=name, format=fmt, spec=spec, spec_text=spec_text,
                      spec_path=data_dir() / "datasets" / f"{name}.yaml", table=table,
                      table_name=table_name, table_bytes=text.encode("utf-8"),
                      source_hash=table_hash(table),
                      ignored=dict(sorted(unknown_keys(rows, columns).items())))


def describe_ignored(ignored: dict[str, int]) -> str | None:
    if not ignored:
        return None
    return ("ignored field(s) " + ", ".join(f"{k!r} ({n} rows)" for k, n in ignored.items())
            + "; known: prompt, answer, counterfactual, counterfactual_prompt, group, entity, "
            "id (clean-patch: clean_prefix, clean_answer, patch_prefix, patch_answer, case)")


def write_plan(plan: ImportPlan) -> Path:
    return write_dataset(plan.name, plan.spec_text, plan.table_name, plan.table_bytes)


__all__ = ["FORMATS", "ImportPlan", "describe_ignored", "plan_import", "write_plan"]
