"""Where dataset specs live: `data_dir()/datasets/*.yaml` (user-added and built-in), plus the
project's own `data/datasets/` when the data dir points elsewhere (built-ins stay visible)."""

from __future__ import annotations

import functools
import json
import re
import shutil
from pathlib import Path

import yaml

from maskshare.artifacts import atomic_path, write_text_atomic
from maskshare.datasets.sources import check_source, load_source, resolve_table_path
from maskshare.datasets.spec import parse_spec, read_spec_file
from maskshare.errors import UserError
from maskshare.runtime import PROJECT_ROOT, data_dir

SPEC_SUFFIX = ".yaml"


def spec_dirs() -> list[Path]:
    dirs = [data_dir() / "datasets"]
    builtin = PROJECT_ROOT / "data" / "datasets"
    if builtin.resolve() != dirs[0].resolve():
        dirs.append(builtin)
    return dirs


def _spec_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in spec_dirs():
        if d.is_dir():
            for p in sorted(d.glob(f"*{SPEC_SUFFIX}")):
                found.setdefault(p.stem, p)
    return found


def is_spec_path(name: str) -> bool:
    """A run config's `dataset.name` names a spec file rather than a registered dataset when
    it ends in .yaml/.yml or contains a path separator."""
    return name.endswith((".yaml", ".yml")) or "/" in name or "\\" in name


def spec_path(name: str) -> Path:
    """A spec file named by path: absolute, relative to the working directory, or relative
    to the project root (so configs in the repo can say data/datasets/x.yaml)."""
    p = Path(name).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return PROJECT_ROOT / p if (PROJECT_ROOT / p).exists() else p


def find_spec(name: str):
    """(spec, its file) for a registered name or a spec file's path; UserError if none."""
    if is_spec_path(name):
        path = spec_path(name)
        if not path.is_file():
            raise UserError(f"dataset spec file {name!r} not found (a dataset name with a "
                            "slash or a .yaml suffix is read as a path)")
        return _read_spec(path), path
    files = _spec_files()
    if name not in files:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(sorted(files)) or 'none'} "
                        "(add one with `maskshare datasets add SPEC.yaml`, or name a spec file "
                        "by its path)")
    spec = _read_spec(files[name])
    if spec.name != name:
        raise UserError(f"{files[name]}: the file is named {name!r} but the spec says "
                        f"name: {spec.name!r}")
    return spec, files[name]


def _read_spec(path: Path):
    """The spec in `path`, parsed once per version of the file: a run asks for it from its
    input checks, its run directory's name and its dataset stage."""
    st = path.stat()
    return _parsed_spec(str(path), st.st_mtime_ns, st.st_size).model_copy(deep=True)


@functools.lru_cache(maxsize=64)
def _parsed_spec(path: str, mtime_ns: int, size: int):
    return read_spec_file(Path(path))


def load_spec(name: str):
    """The spec called `name` (UserError if there is none)."""
    return find_spec(name)[0]


def list_specs() -> list:
    """Every dataset spec, sorted by name."""
    return [find_spec(n)[0] for n in sorted(_spec_files())]


def add_spec(path: str | Path) -> Path:
    """Validate the spec at `path` and its source table, then copy it into data/datasets/.

    The spec's bytes are kept (its comments are provenance). A table outside the data dir is
    copied to `data/sources/<name><suffix>` and only the `table:` value in the copy is
    rewritten to point at it. Nothing is written unless every check passes. Returns the path
    of the added spec.
    """
    path = Path(path)
    spec = read_spec_file(path)
    files = _spec_files()
    if spec.name in files:
        raise UserError(f"a dataset named {spec.name!r} already exists ({files[spec.name]}); "
                        "choose another name")
    df, _ = load_source(spec, path.parent)
    check_source(spec, df)
    dest = data_dir() / "datasets" / f"{spec.name}{SPEC_SUFFIX}"
    text = path.read_text(encoding="utf-8")
    copy_from = copy_to = None
    if getattr(spec.source, "table", None) is not None:
        table = resolve_table_path(spec.source.table, path.parent).resolve()
        if not _resolves_from(spec.source.table, dest.parent, table):
            if table.is_relative_to(data_dir().resolve()):
                rel = table.relative_to(data_dir().resolve())
            else:
                copy_from = table
                copy_to = data_dir() / "sources" / f"{spec.name}{table.suffix.lower()}"
                if copy_to.exists():
                    raise UserError(f"{copy_to} already exists; remove it or rename the dataset")
                rel = copy_to.relative_to(data_dir())
            text = _with_table(text, spec, rel.as_posix(), str(path))
    if copy_from is not None:
        copy_to.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(copy_from, copy_to)
    write_text_atomic(dest, text)
    return dest


def _resolves_from(table: str, spec_dir: Path, target: Path) -> bool:
    """Whether `table` as written still finds `target` from a spec in `spec_dir`."""
    return resolve_table_path(table, spec_dir).resolve() == target


def _with_table(text: str, spec, table: str, where: str) -> str:
    """`text` with only its source table value replaced (comments and layout kept)."""
    pat = re.compile(r"(\btable:[ \t]*)(\"[^\"\n]*\"|'[^'\n]*'|[^\s,}#]+)")
    if len(pat.findall(text)) != 1:
        raise UserError(f"{where}: cannot repoint source.table at the copied table (write "
                        "`table:` once, or give a path under the data dir)")
    new = pat.sub(lambda m: m.group(1) + json.dumps(table), text)
    moved = parse_spec(yaml.safe_load(new), source=where)
    want = spec.model_copy(update={"source": spec.source.model_copy(update={"table": table})})
    if moved != want:  # the match was not the source table
        raise UserError(f"{where}: cannot repoint source.table at the copied table; give a "
                        "path under the data dir")
    return new


def write_dataset(name: str, spec_text: str, table_name: str, table_bytes: bytes) -> Path:
    """Write a table under data/sources/ and then its spec under data/datasets/, each
    atomically (the spec last: a dataset exists once its spec does). Returns the spec path."""
    table = data_dir() / "sources" / table_name
    dest = data_dir() / "datasets" / f"{name}{SPEC_SUFFIX}"
    table.parent.mkdir(parents=True, exist_ok=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(table) as tmp:
        Path(tmp).write_bytes(table_bytes)
    try:
        write_text_atomic(dest, spec_text)
    except BaseException:
        table.unlink(missing_ok=True)
        raise
    return dest
