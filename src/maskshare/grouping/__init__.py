"""Groupings: give every token of every prompt a *slot* (shared mask and mean).

One interface for every kind (`make_grouping(cfg, seed)`):

    g = make_grouping(cfg, seed)
    g.fit(model, items)                  # items: the dataset items table (polars)
    a = g.assign(model, items)           # new prompts too, without refitting
    g.save(dir); g2 = load_grouping(dir)

Modules: `base` (the interface, `Assignment`, save/load, the groupings without fitted
state), `features` (per-token attention features), `attention` (clusters of attention
features), `quality` (ARI, purity, stability), `persist` (fitted scikit-learn objects in
skops files, byte-reproducible, no pickle), `registry` (kind -> class).

May import: the root's shared modules, `maskshare.model` and `maskshare.datasets` (what a
dataset labels, for the `roles` kind's data check).
"""

from maskshare.grouping.attention import GROUPING_SKOPS, OOD_PERCENTILE, AttentionGrouping
from maskshare.grouping.base import (
    GROUPING_JSON,
    Assignment,
    FromEndGrouping,
    Grouping,
    RolesGrouping,
    SingleGrouping,
    TemplateGrouping,
)
from maskshare.grouping.quality import grouping_quality, purity, stability, template_positions
from maskshare.grouping.registry import grouping_kinds, load_grouping, make_grouping

__all__ = [
    "GROUPING_JSON", "GROUPING_SKOPS", "OOD_PERCENTILE", "Assignment", "AttentionGrouping",
    "FromEndGrouping", "Grouping", "RolesGrouping", "SingleGrouping", "TemplateGrouping",
    "grouping_kinds", "grouping_quality", "load_grouping", "make_grouping", "purity",
    "stability", "template_positions",
]
