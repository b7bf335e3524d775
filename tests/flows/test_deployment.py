"""Integration: a real Prefect server, `maskshare serve`, its schedule, one triggered run."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(pred, timeout: float, what: str, proc: subprocess.Popen | None = None):
    end = time.time() + timeout
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited with {proc.returncode}")
        try:
            v = pred()
            if v:
                return v
        except Exception:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def test_serve_registers_the_nightly_schedule_and_runs_a_triggered_flow(tmp_path):
    from maskshare.testing import write_tiny_run_setup

    configs = tmp_path / "configs"
    configs.mkdir()
    cfg_path = write_tiny_run_setup(tmp_path / "setup")
    (configs / "tiny.yaml").write_text(cfg_path.read_text())
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1",
           "MASKSHARE_CACHE": str(tmp_path / "cache"), "MASKSHARE_THREADS": "1"}
    logs = tmp_path / "logs"
    logs.mkdir()
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env,
                              stdout=open(logs / "server.log", "w"), stderr=subprocess.STDOUT)
    serve, saved = None, {}
    try:
        _wait(lambda: urllib.request.urlopen(f"{api}/health", timeout=2).status == 200, 240,
              "the Prefect server", server)  # slow on a loaded machine
        serve = subprocess.Popen([str(BIN / "maskshare"), "serve", "--configs", str(configs),
                                  "--cron", "0 3 * * *"], env=env,
                                 stdout=open(logs / "serve.log", "w"), stderr=subprocess.STDOUT)
        saved = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_HOME")}
        os.environ.update({k: env[k] for k in saved})
        from prefect.client.orchestration import get_client
        from prefect.deployments import run_deployment

        async def read_deployment():
            async with get_client() as c:
                return await c.read_deployment_by_name("pipeline/nightly-tiny")

        dep = _wait(lambda: asyncio.run(read_deployment()), 240, "the deployment", serve)
        assert [s.schedule.cron for s in dep.schedules] == ["0 3 * * *"]
        assert all(s.active for s in dep.schedules)
        assert dep.parameters["config_path"] == str((configs / "tiny.yaml").resolve())

        flow_run = run_deployment("pipeline/nightly-tiny", timeout=480)
        assert flow_run.state is not None and flow_run.state.is_completed(), (
            flow_run.state, (logs / "serve.log").read_text()[-3000:])
        runs = list((tmp_path / "setup" / "runs").glob("tiny-*/metrics.json"))
        assert len(runs) == 1
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if serve is not None:
            _stop(serve)
        _stop(server)
    assert server.poll() is not None and (serve is None or serve.poll() is not None)
