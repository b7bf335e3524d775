"""`maskshare sweep --config FILE`: mask training fanned out over a Dask cluster."""

from __future__ import annotations

from maskshare.config import load_config


def add_arguments(p) -> None:
    p.add_argument("--config", required=True, help="base run config YAML")
    p.add_argument("--datasets", nargs="+", default=None, help="dataset names (default: the config's)")
    p.add_argument("--groupings", nargs="+", default=None, help="groupings to compare")
    p.add_argument("--ablations", nargs="+", default=None, help="ablations to compare")
    p.add_argument("--lambdas", nargs="+", type=float, default=None, help="sparsity settings")
    p.add_argument("--dask-address", default=None,
                   help="an existing Dask scheduler (tcp://host:8786); default: a local cluster")
    p.add_argument("--workers", type=int, default=2, help="local cluster workers (default 2)")
    p.add_argument("--sequential", action="store_true", help="no Dask: one job at a time")


def run(args) -> int:
    load_config(args.config)  # bad config: exit 2 before anything starts
    from flows import configure_prefect_env

    configure_prefect_env()
    from flows import quiet_background
    from flows.sweep import run_sweep

    quiet_background()

    runs = run_sweep(args.config, dask_address=args.dask_address, n_workers=args.workers,
                     sequential=args.sequential, datasets=args.datasets,
                     groupings=args.groupings, ablations=args.ablations, lambdas=args.lambdas)
    for r in runs:
        print(r)
    return 0
