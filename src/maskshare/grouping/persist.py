"""Fitted scikit-learn objects on disk with skops: no pickle, byte-reproducible files.

`skops.io` writes a zip archive whose bytes change from save to save even for the same
object: members carry the wall-clock time, numpy arrays are stored under names made of
their memory address (`<id>.npy`), and `schema.json` records an `__id__` (also a memory
address) per node. `dump_fitted` rewrites the archive: ids and array files are renumbered
in the order they first appear in the schema (the same id always maps to the same number,
so shared references survive), members are written in a fixed order with a fixed
timestamp and no compression. Equal fitted objects then give byte-identical files.

`load_fitted` loads only the default-trusted types of skops plus an explicit list; any
other type in the file is a `UserError`, and nothing in the file is executed.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from maskshare.artifacts import atomic_path
from maskshare.errors import UserError

FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip member can carry
SCHEMA = "schema.json"


def _renumber(node: Any, ids: dict[Any, int], files: dict[str, str], members: set[str]) -> None:
    """Replace `__id__` values and array file names in a skops schema, in document order."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "__id__":
                node[key] = ids.setdefault(value, len(ids))
            elif key == "file" and isinstance(value, str) and value in members:
                if value not in files:
                    files[value] = f"{len(files)}{Path(value).suffix}"
                node[key] = files[value]
            else:
                _renumber(value, ids, files, members)
    elif isinstance(node, list):
        for value in node:
            _renumber(value, ids, files, members)


def canonical_skops(data: bytes) -> bytes:
    """The same skops archive with reproducible names, ids, order and timestamps."""
    with zipfile.ZipFile(io.BytesIO(data)) as src:
        members = set(src.namelist()) - {SCHEMA}
        schema = json.loads(src.read(SCHEMA))
        files: dict[str, str] = {}
        _renumber(schema, {}, files, members)
        if set(files) != members:  # an archive member the schema does not reference
            raise ValueError(f"skops archive members not in its schema: {members - set(files)}")
        payload = {new: src.read(old) for old, new in files.items()}
    payload[SCHEMA] = json.dumps(schema, indent=2).encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as dst:
        for name in sorted(payload):
            info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
            info.external_attr = 0o644 << 16
            dst.writestr(info, payload[name])
    return out.getvalue()


def dump_fitted(obj: Any, path: str | Path) -> None:
    """Write `obj` (fitted estimators, numpy arrays, dicts of them) to `path` atomically."""
    import skops.io as sio

    data = canonical_skops(sio.dumps(obj))
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def load_fitted(path: str | Path, trusted: Iterable[str]) -> Any:
    """Load a file written by `dump_fitted`, trusting skops' defaults and `trusted` only."""
    import skops.io as sio

    path = Path(path)
    try:
        data = path.read_bytes()
        unknown = sorted(set(sio.get_untrusted_types(data=data)) - set(trusted))
    except (OSError, zipfile.BadZipFile, KeyError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read fitted objects from {path}: {e}") from None
    if unknown:
        raise UserError(f"{path} holds types maskshare does not load ({', '.join(unknown)}): "
                        "it was not written by maskshare; delete it and rerun")
    return sio.loads(data, trusted=list(trusted))
