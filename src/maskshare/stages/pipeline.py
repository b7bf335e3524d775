"""The whole run for one `RunConfig`, in this process, with no Prefect in sight.

`run_pipeline(cfg)` prepares the run directory and executes the run's plan
(`maskshare.stages.plan`): every stage call in dependency order, complete outputs skipped
("cached: ..."). The pieces live in their own modules: paths in `layout`, model/SAE caches
and the run directory in `resources`, the compared methods in `variants`, each stage in
`stages/<name>.py`, the evaluation rules in `comparison`. The names below are re-exported
for code that imported them from here.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from maskshare.config import GroupingKind, RunConfig
from maskshare.errors import UserError
from maskshare.evaluation.comparison import HEADLINE_METRICS  # noqa: F401 - re-exported
from maskshare.run.layout import RunLayout
from maskshare.run.resources import (  # noqa: F401 - re-exported
    get_model,
    get_saes,
    load_run_config,
    load_run_items,
    prepare_run,
    run_dir_for,
)
from maskshare.run.variants import Variant, grouping_kinds, main_variant, mask_jobs, variants  # noqa: F401
from maskshare.stages.plan import execute, make_call, plan

logger = logging.getLogger(__name__)


def run_pipeline(cfg: RunConfig) -> Path:
    """Every stage in order, in this process (no Prefect). Returns the run directory.

    A run directory this call created is removed again if a stage then fails on bad input
    (e.g. too few items pass the dataset filter): fixing the input changes the run's hash,
    so it could never be reused, and bad input must leave nothing behind."""
    fresh = not run_dir_for(cfg).exists()
    run = prepare_run(cfg)
    logger.info("run directory: %s", run)
    try:
        execute(plan(cfg), run)
    except UserError:
        if fresh:
            shutil.rmtree(run, ignore_errors=True)
        raise
    return run


# one stage of an existing run, through the plan's runner (skipped when complete)
def _stage(run: Path, stage: str, **params) -> Path:
    return make_call(load_run_config(run), stage, **params).run(run)


def stage_dataset(run: Path) -> Path:
    return _stage(run, "dataset")


def stage_groups(run: Path, kind: GroupingKind | str) -> Path:
    return _stage(run, "groups", kind=GroupingKind(kind).value)


def stage_stats(run: Path, kind: GroupingKind | str) -> Path:
    return _stage(run, "stats", kind=GroupingKind(kind).value)


def stage_masks(run: Path, variant: Variant | str, lam: float, seed: int) -> Path:
    name = variant if isinstance(variant, str) else variant.name
    return _stage(run, "masks", variant=name, lam=lam, seed=seed)


def stage_evaluate(run: Path) -> dict:
    _stage(run, "evaluate")
    return json.loads(RunLayout(run).metrics.read_text())
