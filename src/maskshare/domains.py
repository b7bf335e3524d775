"""The domain of every kind of config value, as pydantic types checked where input enters.

A value outside its domain is bad input: the config, spec or prompt file is refused with one
line naming the field and what is allowed, before anything is written. The types here only
narrow what was accepted before; they never change a valid value or its dumped form (run
directories are named by a hash of `model_dump`).

- `Slug`: a name that becomes a file or folder name (run names): letters, digits, `_`, `.`,
  `-`, starting with a letter or digit, no `..`, at most 128 characters. `DatasetName` is the
  dataset specs' stricter lowercase pattern, or a spec file's path (`.yaml`, or with a `/`).
- `Count` (>= 1), `NonNegInt` (>= 0): integers that fit in int32 (they reach C code).
- `Seed`: 0 <= seed < 2**32 (numpy and scikit-learn seeds).
- `Finite`, `PositiveFloat`, `NonNegFloat`: finite floats (no NaN or infinity); > 0; >= 0.
- `Text`: a non-empty single-line string (model names, paths, hook names, column names).
A boolean is never taken as a number (YAML `true` would otherwise count as 1).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field
from pydantic_core import PydanticCustomError

INT32_MAX = 2**31 - 1
SEED_MAX = 2**32 - 1
SLUG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
DATASET_NAME_RE = r"^[a-z0-9][a-z0-9_-]{0,63}$"  # at most 64 characters


def bad(message: str) -> PydanticCustomError:
    """A validation error whose message is shown as is (no "Value error, " prefix)."""
    return PydanticCustomError("bad_value", message)


def not_bool(v: Any) -> Any:
    if isinstance(v, bool):
        raise bad("expected a number, not true/false")
    return v


def _slug(v: str) -> str:
    if not SLUG_RE.match(v) or ".." in v:
        raise bad(f"must be a plain name of at most 128 letters, digits, '_', '.' or '-', "
                  f"starting with a letter or digit (no '/', no '..'); got {v[:40]!r}")
    return v


def _one_line(v: str) -> str:
    if not v.strip() or any(c in v for c in "\n\r\0"):
        raise bad("must be non-empty text on one line")
    return v


Slug = Annotated[str, AfterValidator(_slug)]
def _dataset_name(v: str) -> str:
    # a spec file named by its path (ends in .yaml/.yml or holds a slash: registry.is_spec_path)
    # or a registered name in the specs' lowercase pattern
    if v.endswith((".yaml", ".yml")) or "/" in v or "\\" in v:
        return _one_line(v)
    if not re.match(DATASET_NAME_RE, v):
        raise bad(f"must be a dataset name (at most 64 lowercase letters, digits, '_' or '-', "
                  f"starting with a letter or digit) or a spec file's path ending in .yaml; got {v[:40]!r}")
    return v


DatasetName = Annotated[str, AfterValidator(_dataset_name)]
Text = Annotated[str, AfterValidator(_one_line)]
Count = Annotated[int, BeforeValidator(not_bool), Field(ge=1, le=INT32_MAX)]
NonNegInt = Annotated[int, BeforeValidator(not_bool), Field(ge=0, le=INT32_MAX)]
Seed = Annotated[int, BeforeValidator(not_bool), Field(ge=0, le=SEED_MAX)]
Finite = Annotated[float, BeforeValidator(not_bool), Field(allow_inf_nan=False)]
PositiveFloat = Annotated[float, BeforeValidator(not_bool), Field(gt=0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, BeforeValidator(not_bool), Field(ge=0, allow_inf_nan=False)]


def distinct(values: list, what: str, key=lambda v: v) -> list:
    """Refuse repeated values (`key` maps each to what must differ, e.g. a folder name)."""
    seen: dict = {}
    for v in values:
        k = key(v)
        if k in seen:
            raise bad(f"{what} repeat: {seen[k]!r} and {v!r}")
        seen[k] = v
    return values
