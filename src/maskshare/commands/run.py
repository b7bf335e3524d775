"""`maskshare run --config FILE`: the whole pipeline; prints the run directory last."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from maskshare.config import load_config
from maskshare.run.layout import RunLayout


def add_arguments(p) -> None:
    p.add_argument("--config", required=True, help="run config YAML (see configs/default.yaml)")
    p.add_argument("--no-prefect", action="store_true",
                   help="run the stages in this process without Prefect")
    p.add_argument("--workers", type=int, default=1,
                   help="train masks in parallel on a local Dask cluster of this many "
                        "processes (one torch thread each); default 1: in this process")
    p.add_argument("--dask-address", default=None,
                   help="train masks on an existing Dask scheduler (tcp://host:8786)")


def print_headline(run: Path) -> None:
    mpath = RunLayout(run).metrics
    if not mpath.is_file():
        return
    metrics = json.loads(mpath.read_text())
    # heavy (torch, polars): imported when the command runs, not for `maskshare --help`
    from maskshare.evaluation.comparison import HEADLINE_METRICS

    for k in HEADLINE_METRICS:
        if k in metrics and metrics[k] is not None:
            v = metrics[k]
            print(f"{k:>24}: {v:.4g}" if isinstance(v, float) else f"{k:>24}: {v}")


def run(args) -> int:
    cfg = load_config(args.config)  # bad config: UserError before anything is written
    if args.no_prefect:
        # heavy (torch, polars): imported when the command runs, not for `maskshare --help`
        from maskshare.stages.pipeline import run_pipeline

        run_dir = run_pipeline(cfg)
    else:
        from flows import configure_prefect_env

        configure_prefect_env()
        from flows import quiet_background
        from flows.pipeline import pipeline_flow

        quiet_background()

        state = pipeline_flow(config=cfg, workers=args.workers,
                              dask_address=args.dask_address, return_state=True)
        if state.is_failed():
            state.result()  # re-raises the stage's exception (UserError -> exit 2)
        run_dir = Path(state.result())
    print_headline(Path(run_dir))
    sys.stdout.flush()
    print(run_dir)
    return 0
