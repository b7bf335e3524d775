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


def quiet_background() -> None:
    """Run Prefect's background work at the lowest CPU priority, so it never stalls the
    compute's torch threads.

    On a machine whose cores all run torch's threads, anything else that wakes up (the
    ephemeral API server's services and SQLite writes, the client's log and event
    shipping threads) deschedules one of them, and every parallel region then waits for
    it at its barrier: the stages ran 10-40% slower as Prefect tasks than in-process
    (docs/benchmarks.md). This starts the ephemeral server now (unless a server is
    configured: not ours to touch) at nice 19, and lowers this process's other Python
    threads (`quiet_threads`). Call it where a command starts its flow, after
    `configure_prefect_env`. `MASKSHARE_PREFECT_BACKGROUND=normal` leaves priorities alone
    (the benchmark's comparison). Where the platform refuses, nothing changes."""
    if os.environ.get("MASKSHARE_PREFECT_BACKGROUND") == "normal":
        return
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if not PREFECT_API_URL.value() and PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        server = SubprocessASGIServer()
        server.start()
        if server.server_process is not None:
            _lower_priority(_threads_of(server.server_process.pid))
    quiet_threads()


def quiet_threads() -> None:
    """Lower this process's Python threads other than the main one (Prefect's log and
    event workers, client loops) to nice 19; threads they start later inherit it. torch's
    compute threads are not Python threads and keep their priority. Stages call it when
    they start, since Prefect starts its workers lazily."""
    import threading

    if os.environ.get("MASKSHARE_PREFECT_BACKGROUND") == "normal":
        return
    main = threading.main_thread()
    _lower_priority([t.native_id for t in threading.enumerate()
                     if t is not main and t.native_id is not None])


LOW_PRIORITY = 19


def _threads_of(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:  # no /proc (macOS): the process's main thread only
        return [pid]


def _lower_priority(tids: list[int]) -> None:
    for tid in tids:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < LOW_PRIORITY:
                os.setpriority(os.PRIO_PROCESS, tid, LOW_PRIORITY)
        except (OSError, AttributeError):  # gone, not ours, or no such call here
            pass
