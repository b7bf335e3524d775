"""Typed YAML input, checked once: the strict model base, the one-line validation message,
and the YAML file loader shared by run configs (config.py) and dataset specs (datasets/).

Every problem a user can cause becomes one `UserError` line naming the file and what to
change: an unknown field is rejected (a typo must not fall back to a default silently).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from maskshare.errors import UserError


class Strict(BaseModel):
    """A pydantic model that rejects unknown fields."""

    model_config = ConfigDict(extra="forbid", use_enum_values=False)


def _loc_part(x) -> str:
    """A field name as written, or quoted when it is blank or not printable (one line)."""
    x = str(x)
    return x if x.isprintable() and x.strip() == x and x else repr(x)


def validation_message(e: ValidationError, source: str) -> str:
    """`source: field.path: what is wrong` for the first error, `(and N more)` if there are
    more; a model-level error has no field path."""
    errors = e.errors()
    err = errors[0]
    loc = ".".join(_loc_part(x) for x in err["loc"])
    msg = " ".join(err["msg"].removeprefix("Value error, ").splitlines())
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{source}: {loc}: {msg}{more}" if loc else f"{source}: {msg}{more}"


def read_text_file(path: str | Path, what: str = "file") -> str:
    """The UTF-8 text of a file the user named; a one-line UserError when it cannot be read
    or is not UTF-8."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}") from None


def read_yaml_file(path: str | Path, what: str = "file") -> Any:
    """The parsed YAML of `path` (None for an empty file); a one-line UserError when it
    cannot be read, is not UTF-8 or is not YAML."""
    path = Path(path)
    text = read_text_file(path, what)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = (str(getattr(e, "problem", None) or e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path}: malformed YAML{where} ({problem})") from None


@dataclass(frozen=True)
class HashRule:
    """How a field enters the hashes, declared on the field (`Annotated[type, RULE]`; the
    rules are `maskshare.config`'s); `hash_excluded(model, rule)` lists the fields it marks."""

    name: str


# added after run directories existed: left out of config.yaml and of the run's hash while
# at its default, so existing runs keep their directory and bytes (`config.config_data`; a
# section whose fields are all left out is left out whole). Here, not in `maskshare.config`,
# so that the config's sub-sections (config_selection, ...) can mark their fields too.
NEW_FIELD = HashRule("left out at its default")


def hash_excluded(model: type[BaseModel] | BaseModel, rule: HashRule) -> tuple[str, ...]:
    """The fields of `model` that `rule` marks."""
    fields = type(model).model_fields if isinstance(model, BaseModel) else model.model_fields
    return tuple(n for n, f in fields.items() if rule in f.metadata)
