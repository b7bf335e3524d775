"""`maskshare serve`: serve the pipeline for every config in configs/ on a nightly schedule.

Needs a running Prefect server (`prefect server start --host 127.0.0.1 --port 4200`) and
`PREFECT_API_URL` pointing at it (`http://127.0.0.1:4200/api`). The deployments come from
the one registry, `flows.deployments` (one per config; prefect.yaml is generated from it).
Stop with Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
from pathlib import Path

from maskshare.errors import UserError

DEFAULT_CRON = "0 3 * * *"  # as flows.deployments.DEFAULT_CRON (not imported: keeps --help cheap)


def add_arguments(p) -> None:
    p.add_argument("--configs", default="configs", help="folder of run configs (default: configs)")
    p.add_argument("--cron", default=DEFAULT_CRON, help=f"schedule (default: {DEFAULT_CRON!r})")
    p.add_argument("--only", action="append", default=None, metavar="NAME",
                   help="serve only this config (file stem); repeatable")


def run(args) -> int:
    from flows import configure_prefect_env

    configure_prefect_env()
    if not os.environ.get("PREFECT_API_URL"):
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            raise UserError("serve needs a Prefect server: run `prefect server start --host "
                            "127.0.0.1 --port 4200` and set PREFECT_API_URL=http://127.0.0.1:4200/api")
    from prefect import serve

    from flows.deployments import deployment_specs, to_deployments

    serve(*to_deployments(deployment_specs(Path(args.configs), args.cron, args.only)))
    return 0
