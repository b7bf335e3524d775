"""Where dataset specs live: `data_dir()/datasets/*.yaml` (user-added and built-in), plus the
project's own `data/datasets/` when the data dir points elsewhere (built-ins stay visible)."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from maskshare.artifacts import write_text_atomic
from maskshare.datasets.sources import check_source, load_source, resolve_table_path
from maskshare.datasets.spec import DatasetSpec, read_spec_file
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


def find_spec(name: str) -> tuple[DatasetSpec, Path]:
    files = _spec_files()
    if name not in files:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(sorted(files)) or 'none'} "
                        "(add one with `maskshare datasets add SPEC.yaml`)")
    spec = read_spec_file(files[name])
    if spec.name != name:
        raise UserError(f"{files[name]}: the file is named {name!r} but the spec says "
                        f"name: {spec.name!r}")
    return spec, files[name]


def load_spec(name: str) -> DatasetSpec:
    """The spec called `name` (UserError if there is none)."""
    return find_spec(name)[0]


def list_specs() -> list[DatasetSpec]:
    """Every dataset spec, sorted by name."""
    return [find_spec(n)[0] for n in sorted(_spec_files())]


def add_spec(path: str | Path) -> Path:
    """Validate the spec at `path` and its source table, then copy it into data/datasets/.

    A table outside the data dir is copied to `data/sources/` and the spec points at it.
    Nothing is written unless every check passes. Returns the path of the added spec.
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
    copy_from = copy_to = None
    if spec.source.table is not None:
        table = resolve_table_path(spec.source.table, path.parent).resolve()
        if table.is_relative_to(data_dir().resolve()):
            rel = table.relative_to(data_dir().resolve())
        else:
            copy_from = table
            copy_to = data_dir() / "sources" / f"{spec.name}{table.suffix.lower()}"
            if copy_to.exists():
                raise UserError(f"{copy_to} already exists; remove it or rename the dataset")
            rel = copy_to.relative_to(data_dir())
        spec = spec.model_copy(update={"source": spec.source.model_copy(
            update={"table": rel.as_posix()})})
    if copy_from is not None:
        copy_to.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(copy_from, copy_to)
    text = yaml.safe_dump(spec.model_dump(mode="json", exclude_defaults=True), sort_keys=False,
                          allow_unicode=True)
    write_text_atomic(dest, text)
    return dest


