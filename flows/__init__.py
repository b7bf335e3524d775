"""Thin Prefect flows over the maskshare library (imports run flows -> maskshare only)."""

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def configure_prefect_env() -> None:
    """Offline, project-local Prefect defaults; anything the user set wins.

    Call before importing prefect: analytics off (it would log an ERROR offline),
    PREFECT_HOME under the project, SQLite's task-run recorder contention avoided.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_HOME", str(PROJECT_ROOT / ".prefect"))
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
