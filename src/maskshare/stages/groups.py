"""Stage `groups`: fit one grouping on the training split and give every item's tokens a
slot (RUN/groups/<kind>/), with its quality figures (`maskshare.masks.variant.load_slots` reads it back)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from maskshare.config import GroupingKind
from maskshare.grouping import grouping_quality, make_grouping, stability
from maskshare.grouping.features import TokenFeatures, items_features
from maskshare.report.groups_view import write_group_artifacts
from maskshare.run.layout import RunLayout
from maskshare.run.resources import get_model, load_run_config, load_run_items


def build(run: Path, kind: GroupingKind | str) -> Path:
    kind = GroupingKind(kind)
    cfg = load_run_config(run)
    out = RunLayout(run).groups(kind)
    t0 = time.time()
    model = get_model(cfg)
    items = load_run_items(run).sort("prompt_id")
    train = items.filter(items["split"] == "train")
    gcfg = cfg.grouping.model_copy(update={"kind": kind})
    grouping = make_grouping(gcfg, seed=cfg.seed)
    feats = train_feats = None
    if grouping.needs_features:  # one forward pass serves fit, assign and stability
        feats = items_features(model, items, gcfg.features, batch_size=gcfg.batch_size,
                               progress=True)
        train_feats = subset_features(feats, train["prompt_id"].to_list())
    grouping.fit(model, train, train_feats)
    assignment = grouping.assign(model, items, feats)
    quality = grouping_quality(grouping, assignment, items)
    if grouping.seeded and len(cfg.evaluate.seeds) > 1:
        quality["stability"] = stability(gcfg, model, train, seeds=tuple(cfg.evaluate.seeds[:2]),
                                         features=train_feats)
    quality["fit_assign_s"] = time.time() - t0
    write_group_artifacts(out, grouping, assignment, items, quality=quality)
    return out


def subset_features(f, prompt_ids: list[int]):
    """The rows of `f` belonging to `prompt_ids`, in the order of `prompt_ids`."""
    order = {int(p): i for i, p in enumerate(prompt_ids)}
    rows = np.array([i for i, p in enumerate(f.prompt_id.tolist()) if p in order], dtype=np.int64)
    rows = rows[np.lexsort((f.position[rows], [order[int(p)] for p in f.prompt_id[rows]]))]
    return TokenFeatures(matrix=f.matrix[rows], prompt_id=f.prompt_id[rows],
                         position=f.position[rows], length=f.length[rows], names=f.names)
