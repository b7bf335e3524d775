"""Field paths into nested rows: `symbol_counterfactual.prompt`, `choices.label[answerKey]`.

A path is names joined by `.`; a name may be followed by `[I]` selectors that pick one item
of a list: `I` is a whole number (`[0]`, `[-1]`) or another field path, resolved from the
row's top (`choices.label[answerKey]`, `cf.choices.label[cf.answerKey]`), whose value is
a whole number (or a string of digits, as CSV cells are). A key that exists verbatim in the
row (`"a.b"` as one column name) is taken as it is, so every plain column keeps meaning
what it meant before paths existed.

    resolve({"m": {"io": "Mary"}}, "m.io")              -> "Mary"
    resolve({"c": {"l": ["A", "B"]}, "k": 1}, "c.l[k]")  -> "B"

A path that does not resolve raises `PathError` saying which step failed; `missing` tells a
key that is absent (an optional field is then null) from a wrong type or index.
"""

from __future__ import annotations

import re
from typing import Any

_INT = re.compile(r"^-?\d+$")


class PathError(ValueError):
    def __init__(self, message: str, missing: bool = False):
        super().__init__(message)
        self.missing = missing


def is_path(text: str) -> bool:
    return "." in text or "[" in text


def parse(path: str) -> list[tuple[str, list[str]]]:
    """[(name, [selector, ...]), ...]; ValueError on malformed text."""
    steps: list[tuple[str, list[str]]] = []
    name, sels, i = "", [], 0
    while i <= len(path):
        ch = path[i] if i < len(path) else "."
        if ch == "[":
            depth, j = 1, i + 1
            while j < len(path) and depth:
                depth += {"[": 1, "]": -1}.get(path[j], 0)
                j += 1
            inner = path[i + 1:j - 1]
            if depth or not inner.strip() or not name:
                raise ValueError(f"malformed field path {path!r} (selectors are [N] or "
                                 "[field], after a name)")
            if not _INT.match(inner.strip()):
                parse(inner.strip())  # a nested path must itself be well formed
            sels.append(inner.strip())
            i = j
            if i < len(path) and path[i] not in ".[":
                raise ValueError(f"malformed field path {path!r}: '.' or '[' expected after ']'")
            continue
        if ch == ".":
            if not name:
                raise ValueError(f"malformed field path {path!r}: empty name")
            steps.append((name, sels))
            name, sels = "", []
        elif ch == "]":
            raise ValueError(f"malformed field path {path!r}: unbalanced ']'")
        else:
            name += ch
        i += 1
    return steps


def _index(row: dict, sel: str, where: str) -> int:
    if _INT.match(sel):
        return int(sel)
    try:
        key = resolve(row, sel)
    except PathError as e:
        raise PathError(f"its selector [{sel}] does not resolve ({e})") from None
    if isinstance(key, bool) or not (isinstance(key, int) or (isinstance(key, str)
                                                              and _INT.match(key.strip()))):
        raise PathError(f"selector [{sel}] is {key!r}, not a list index (for {where!r})")
    return int(key)


def resolve(row: Any, path: str) -> Any:
    """The value at `path` in `row` (see the module doc); PathError if it does not resolve."""
    if isinstance(row, dict) and path in row:
        return row[path]
    cur, seen = row, ""
    for name, sels in parse(path):
        if not isinstance(cur, dict):
            raise PathError(f"{seen!r} is {type(cur).__name__}, not an object")
        if name not in cur:
            raise PathError(f"no key {name!r}" + (f" in {seen!r}" if seen else ""), missing=True)
        cur, seen = cur[name], f"{seen}.{name}" if seen else name
        for sel in sels:
            if not isinstance(cur, (list, tuple)):
                raise PathError(f"{seen!r} is {type(cur).__name__}, not a list")
            i = _index(row, sel, seen)
            if not -len(cur) <= i < len(cur):
                raise PathError(f"index {i} out of range for {seen!r} ({len(cur)} items)")
            cur, seen = cur[i], f"{seen}[{sel}]"
    return cur


def top_key(path: str) -> str:
    """The row key a path starts at (what the ignored-fields note counts as used)."""
    return path if not is_path(path) else parse(path)[0][0]


__all__ = ["PathError", "is_path", "parse", "resolve", "top_key"]
