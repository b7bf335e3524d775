"""Prefect's background work below the compute's priority (`flows.quiet_background`)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="per-thread priorities are a Linux behaviour")


def _thread(stop: threading.Event) -> threading.Thread:
    t = threading.Thread(target=stop.wait, daemon=True)
    t.start()
    return t


def test_quiet_threads_lowers_other_python_threads_and_not_the_main_one(monkeypatch):
    from flows import LOW_PRIORITY, quiet_threads

    monkeypatch.delenv("MASKSHARE_PREFECT_BACKGROUND", raising=False)
    stop = threading.Event()
    t = _thread(stop)
    main_before = os.getpriority(os.PRIO_PROCESS, threading.main_thread().native_id)
    try:
        quiet_threads()
        assert os.getpriority(os.PRIO_PROCESS, t.native_id) == LOW_PRIORITY
        assert os.getpriority(os.PRIO_PROCESS, threading.main_thread().native_id) == main_before
    finally:
        stop.set()


def test_normal_background_leaves_priorities_alone(monkeypatch):
    from flows import quiet_threads

    monkeypatch.setenv("MASKSHARE_PREFECT_BACKGROUND", "normal")
    stop = threading.Event()
    t = _thread(stop)
    before = os.getpriority(os.PRIO_PROCESS, t.native_id)
    try:
        quiet_threads()
        assert os.getpriority(os.PRIO_PROCESS, t.native_id) == before
    finally:
        stop.set()


def test_quiet_background_lowers_every_thread_of_the_ephemeral_server(monkeypatch):
    """The ephemeral server is started by quiet_background (a stand-in process here: a
    Python child with a second thread) and all its threads end at the lowest priority."""
    import prefect.server.api.server as server_mod
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import flows

    child = subprocess.Popen([sys.executable, "-c",
                              "import threading, time; threading.Thread(target=time.sleep, "
                              "args=(60,), daemon=True).start(); print('up', flush=True); "
                              "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    started = []

    class FakeServer:
        server_process = child

        def start(self):
            started.append(True)

    monkeypatch.delenv("MASKSHARE_PREFECT_BACKGROUND", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr(server_mod, "SubprocessASGIServer", FakeServer)
    try:
        assert child.stdout.readline().strip() == "up"
        tids = flows._threads_of(child.pid)
        assert len(tids) == 2
        with temporary_settings(restore_defaults={PREFECT_API_URL}):
            flows.quiet_background()
        assert started
        assert [os.getpriority(os.PRIO_PROCESS, t) for t in tids] == [flows.LOW_PRIORITY] * 2
    finally:
        child.kill()
        child.wait()
