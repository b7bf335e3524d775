"""`maskshare serve`: serve the pipeline for every config in configs/ on a nightly schedule.

Needs a running Prefect server (`prefect server start --host 127.0.0.1 --port 4200`) and
`PREFECT_API_URL` pointing at it (`http://127.0.0.1:4200/api`). The deployments match
those declared in prefect.yaml. Stop with Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
from pathlib import Path

from maskshare.errors import UserError

DEFAULT_CRON = "0 3 * * *"


def add_arguments(p) -> None:
    p.add_argument("--configs", default="configs", help="folder of run configs (default: configs)")
    p.add_argument("--cron", default=DEFAULT_CRON, help=f"schedule (default: {DEFAULT_CRON!r})")
    p.add_argument("--only", action="append", default=None, metavar="NAME",
                   help="serve only this config (file stem); repeatable")


def deployments(configs_dir: Path, cron: str, only: list[str] | None = None):
    from flows.pipeline import pipeline_flow
    from maskshare.config import load_config

    files = sorted(configs_dir.glob("*.yaml"))
    if only:
        files = [f for f in files if f.stem in only]
    if not files:
        raise UserError(f"no configs to serve in {configs_dir}")
    out = []
    for f in files:
        load_config(f)  # reject a bad config before serving it
        out.append(pipeline_flow.to_deployment(
            name=f"nightly-{f.stem}", cron=cron,
            parameters={"config_path": str(f.resolve())},
            description=f"maskshare pipeline for {f.name}", tags=["maskshare"]))
    return out


def run(args) -> int:
    from flows import configure_prefect_env

    configure_prefect_env()
    if not os.environ.get("PREFECT_API_URL"):
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            raise UserError("serve needs a Prefect server: run `prefect server start --host "
                            "127.0.0.1 --port 4200` and set PREFECT_API_URL=http://127.0.0.1:4200/api")
    from prefect import serve

    deps = deployments(Path(args.configs), args.cron, args.only)
    serve(*deps)
    return 0
