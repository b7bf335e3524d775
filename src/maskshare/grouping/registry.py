"""Every grouping kind by name (`maskshare.kinds.GROUPINGS`): make one from its config, load
a saved one."""

from __future__ import annotations

import json
from pathlib import Path

from maskshare.config import GroupingConfig
from maskshare.errors import UserError
from maskshare.grouping.base import FORMAT, GROUPING_JSON, Grouping
from maskshare.kinds import GROUPINGS


def grouping_kinds() -> dict[str, type[Grouping]]:
    """Every grouping class by kind (`maskshare.kinds.GROUPINGS`)."""
    return {name: GROUPINGS.get(name) for name in GROUPINGS.names()}


def grouping_class(kind: str) -> type[Grouping]:
    return GROUPINGS.get(kind)


def make_grouping(cfg: GroupingConfig, seed: int = 0) -> Grouping:
    return GROUPINGS.get(cfg.kind)(cfg, seed)


def load_grouping(directory: str | Path) -> Grouping:
    """Load a grouping written by `Grouping.save` (JSON + skops; no code executed)."""
    directory = Path(directory)
    p = directory / GROUPING_JSON
    try:
        doc = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read a grouping from {directory}: {e}") from None
    cfg = GroupingConfig.model_validate(doc["config"])
    fmt = doc.get("format")
    # format 1 differs from 2 only in how fitted state is stored: the groupings without
    # state read the same; an attention grouping must be refitted
    if fmt != FORMAT and not (fmt == 1 and not grouping_class(cfg.kind).fitted_state):
        raise UserError(f"the grouping in {directory} was written by an older maskshare "
                        f"(format {fmt}, this one reads {FORMAT}): delete {directory} and rerun "
                        "to refit it")
    g = make_grouping(cfg, doc.get("seed", 0))
    g.slot_names = list(doc["slot_names"])
    g.meta = doc.get("meta", {})
    g._load_state(directory)
    g.fitted = True
    return g
