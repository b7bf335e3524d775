"""Source tables: rows a dataset's phrasings are filled from.

A table is a CSV or parquet file (every column read as text) or the output of a built-in
generator (`GENERATORS`), computed offline and deterministically from its parameters.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from maskshare.errors import UserError
from maskshare.runtime import PROJECT_ROOT, data_dir

TABLE_SUFFIXES = (".csv", ".parquet")


def _elements(min_number: int = 1, max_number: int = 118,
              exclude_symbols: list[str] | tuple[str, ...] = ()) -> pl.DataFrame:
    """The periodic table from the `periodictable` package: number, name, symbol (elements
    in `exclude_symbols` left out, e.g. those a prompt uses as worked examples)."""
    import periodictable

    rows = [
        {"number": str(el.number), "name": el.name, "symbol": el.symbol}
        for el in periodictable.elements
        if min_number <= el.number <= max_number and el.symbol not in exclude_symbols
    ]
    return pl.DataFrame(rows, schema={"number": pl.String, "name": pl.String,
                                      "symbol": pl.String})


def _code_index(n_items: int = 120, lengths: list[int] | tuple[int, ...] = (3,),
                out_of_range: float = 0.15, names: list[str] | tuple[str, ...] = ("x",),
                max_value: int = 9, seed: int = 0) -> pl.DataFrame:
    """Python list indexing rows: `name`, `values` (`[3, 5, 1]`), `index`, `length`, `answer`
    (the printed element as one digit, or `Traceback` for an out-of-range index) and
    `entity` (`name=values[index]`, unique). Deterministic in the parameters."""
    if n_items < 1 or not lengths or min(lengths) < 1 or not names or not 0 <= out_of_range < 1:
        raise UserError("code-index generator: n_items >= 1, lengths >= 1, names non-empty, "
                        "0 <= out_of_range < 1")
    if not 1 <= max_value <= 9:
        raise UserError("code-index generator: max_value must be 1..9 (one-digit answers)")
    rng = random.Random(seed)
    rows, seen = [], set()
    tries = 0
    while len(rows) < n_items:
        tries += 1
        if tries > 100 * n_items:
            raise UserError(f"code-index generator: cannot make {n_items} distinct items "
                            "with these parameters")
        length = rng.choice(list(lengths))
        values = [rng.randint(0, max_value) for _ in range(length)]
        name = rng.choice(list(names))
        if rng.random() < out_of_range:
            index = rng.randint(length, min(length + 3, 9))
            answer = "Traceback"
        else:
            index = rng.randint(0, length - 1)
            answer = str(values[index])
        vals = "[" + ", ".join(map(str, values)) + "]"
        entity = f"{name}={vals}[{index}]"
        if entity in seen:
            continue
        seen.add(entity)
        rows.append({"name": name, "values": vals, "index": str(index), "length": str(length),
                     "answer": answer, "entity": entity})
    return pl.DataFrame(rows)


GENERATORS: dict[str, Callable[..., pl.DataFrame]] = {
    "elements": _elements,
    "code-index": _code_index,
}


def resolve_table_path(table: str, spec_dir: Path | None = None) -> Path:
    """A table path as given in a spec: absolute, beside the spec, or under the data dir."""
    p = Path(table).expanduser()
    if p.is_absolute():
        return p
    for base in ([spec_dir] if spec_dir else []) + [data_dir(), _builtin_data_dir()]:
        if (base / p).exists():
            return base / p
    return data_dir() / p


def _builtin_data_dir() -> Path:
    return PROJECT_ROOT / "data"


def read_table(path: Path) -> pl.DataFrame:
    """Read a CSV/parquet table with every column as text; UserError if it cannot be read."""
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise UserError(f"{path}: source tables must be .csv or .parquet")
    if not path.is_file():
        raise UserError(f"{path}: source table not found")
    try:
        if path.suffix.lower() == ".csv":
            df = pl.read_csv(path, infer_schema=False)
        else:
            df = pl.read_parquet(path)
            df = df.with_columns(pl.all().cast(pl.String))
    except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path}: unreadable table ({msg})") from None
    if df.height == 0:
        raise UserError(f"{path}: the source table has no rows")
    return df


_LOADED: dict[tuple, tuple[pl.DataFrame, str]] = {}  # see load_source
_MAX_LOADED = 8


def _source_key(spec, spec_dir: Path | None) -> tuple | None:
    """What the table depends on: the spec, its folder and the version of its table file
    (None where there is no file to stamp: the loader then reports the problem)."""
    table = getattr(spec.source, "table", None)
    stamp = None
    if table is not None:
        try:
            st = resolve_table_path(table, spec_dir).stat()
        except (OSError, UserError):
            return None
        stamp = (st.st_mtime_ns, st.st_size)
    return type(spec).__name__, spec.model_dump_json(), str(spec_dir), stamp


def load_source(spec, spec_dir: Path | None = None) -> tuple[pl.DataFrame, str]:
    """The spec's source table and a hash of its contents, read and hashed once per version
    of the table in a process (a run needs them for its directory's name and its dataset
    stage)."""
    key = _source_key(spec, spec_dir)
    if key is None:
        return _load_source(spec, spec_dir)
    if key not in _LOADED:
        if len(_LOADED) >= _MAX_LOADED:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = _load_source(spec, spec_dir)
    df, digest = _LOADED[key]
    return df.clone(), digest


def _load_source(spec, spec_dir: Path | None) -> tuple[pl.DataFrame, str]:
    df = spec.load_table(spec_dir)
    return df, table_hash(df)


def load_entity_table(src, spec_dir: Path | None) -> pl.DataFrame:
    """A template spec's entity table: its generator's rows or its CSV/parquet file."""
    if src.generator is not None:
        if src.generator not in GENERATORS:
            raise UserError(f"unknown source generator {src.generator!r}; use one of "
                            f"{sorted(GENERATORS)}")
        try:
            df = GENERATORS[src.generator](**src.params)
        except TypeError as e:
            raise UserError(f"source generator {src.generator!r}: {e}") from None
    else:
        df = read_table(resolve_table_path(src.table, spec_dir))
    return df


def table_hash(df: pl.DataFrame) -> str:
    return hashlib.sha256(df.write_csv().encode()).hexdigest()[:16]


def check_source(spec, df: pl.DataFrame, *, where: str = "source table") -> None:
    """Model-independent checks of a table against its spec (the spec's `check_table`;
    prompt tables are checked row by row as they are read)."""
    spec.check_table(df, where=where)


def check_entity_table(spec, df: pl.DataFrame, *, where: str) -> None:
    """A template spec's table: its columns and no empty answers."""
    missing = sorted(spec.required_columns() - set(df.columns))
    if missing:
        unknown_ph = sorted(spec.placeholders() - set(df.columns))
        what = f"unknown placeholders {unknown_ph}" if unknown_ph else f"missing columns {missing}"
        raise UserError(f"{spec.name}: {what} (the {where} has columns {df.columns})")
    for col in spec.required_columns():
        if df[col].null_count():
            raise UserError(f"{spec.name}: column {col!r} has empty cells in the {where}")
    empty = df.filter(pl.col(spec.answer).str.strip_chars() == "")
    if empty.height:
        raise UserError(f"{spec.name}: {empty.height} empty answers in column {spec.answer!r} "
                        f"(e.g. entity {empty[spec.entity][0]!r})")
    if (df[spec.entity].str.strip_chars() == "").any():
        raise UserError(f"{spec.name}: empty entity names in column {spec.entity!r}")
    if df[spec.entity].n_unique() != df.height:
        dup = df[spec.entity].filter(df[spec.entity].is_duplicated())[0]
        raise UserError(f"{spec.name}: entity column {spec.entity!r} repeats {dup!r}; "
                        "entities must be unique")
    for p in spec.phrasings():
        rows = df
        for col, val in p.where.items():
            rows = rows.filter(pl.col(col) == val)
        if rows.height == 0:
            raise UserError(f"{spec.name}: phrasing {p.id} selects no rows (where: {p.where})")


def describe_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
