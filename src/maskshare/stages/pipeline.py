"""The whole run for one `RunConfig`, in this process, with no Prefect in sight.

`run_pipeline(cfg)` prepares the run directory and executes the run's plan
(`maskshare.stages.plan`): every stage call in dependency order, complete outputs skipped
("cached: ..."). The pieces live in their own modules: paths in `run.layout`, model/SAE
caches and the run directory in `run.resources`, the compared methods in `run.variants`,
each stage in `stages/<name>.py`, the evaluation rules in `evaluation.comparison`.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from maskshare.config import RunConfig
from maskshare.errors import UserError
from maskshare.run.resources import prepare_run, run_dir_for
from maskshare.stages.plan import execute, plan

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
