"""Stage `stats`: per-slot means of SAE latents and SAE errors over the training split, for
one grouping (RUN/stats/<kind>/slot_stats.safetensors)."""

from __future__ import annotations

import time
from pathlib import Path

from maskshare.artifacts import building, write_manifest
from maskshare.config import GroupingKind
from maskshare.masks.slot_stats import compute_slot_stats
from maskshare.masks.variant import load_slots
from maskshare.run.layout import RunLayout
from maskshare.run.resources import (
    get_model,
    get_saes,
    load_run_config,
    load_run_items,
    split_items,
    token_lists,
)


def build(run: Path, kind: GroupingKind | str) -> Path:
    kind = GroupingKind(kind)
    cfg = load_run_config(run)
    layout = RunLayout(run)
    out = layout.stats(kind)
    t0 = time.time()
    grouping, slots = load_slots(run, kind)
    train = split_items(load_run_items(run), "train")
    stats = compute_slot_stats(get_model(cfg), get_saes(cfg), token_lists(train),
                               [slots[p] for p in train["prompt_id"].to_list()],
                               grouping.n_slots, batch_size=cfg.masks.batch_size)
    with building(out) as tmp:
        stats.save(tmp / "slot_stats.safetensors")
        write_manifest(tmp, inputs={"groups": str(layout.groups(kind))},
                       timings={"stats_s": time.time() - t0})
    return out
