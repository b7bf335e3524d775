"""Stage `dataset`: build (or load from the content-addressed cache) the run's dataset and
copy its items and pass table into RUN/dataset/, with the validation split carved from the
training rows (`dataset.validation`, maskshare.datasets.validation)."""

from __future__ import annotations

import time
from pathlib import Path

from maskshare.artifacts import building, write_manifest
from maskshare.datasets import build_dataset
from maskshare.datasets.validation import carve_validation
from maskshare.errors import UserError
from maskshare.run.layout import RunLayout
from maskshare.run.resources import get_model, load_run_config


def build(run: Path) -> Path:
    cfg = load_run_config(run)
    out = RunLayout(run).dataset
    t0 = time.time()
    built = build_dataset(cfg.dataset, get_model(cfg))
    items = built.items  # max_items is applied by build_dataset
    if items.filter(items["split"] == "train").height == 0:
        raise UserError(f"dataset {cfg.dataset.name!r} has no training items after filtering")
    val = cfg.dataset.validation
    items, carved = carve_validation(items, val.by, val.fraction, val.seed)
    with building(out) as tmp:
        items.write_parquet(tmp / "items.parquet")
        built.pass_table.write_parquet(tmp / "pass_table.parquet")
        write_manifest(tmp, inputs={"built_dataset": str(built.path)},
                       config=cfg.dataset.model_dump(mode="json"), seed=cfg.seed,
                       timings={"build_s": time.time() - t0}, extra={"validation": carved})
    return out
