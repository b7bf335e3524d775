"""The machine-wide core slots that keep two runs from oversubscribing the cores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

SCRIPT = """
import json, sys, time
from maskshare.run.compute_slot import compute_slot
threads, total, hold = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
with compute_slot(threads, "test", total=total) as waited:
    t0 = time.time()
    print("held", flush=True)
    time.sleep(hold)
    t1 = time.time()
print(json.dumps({"start": t0, "end": t1, "waited": waited}), flush=True)
"""


def _spawn(tmp_path, threads: int, total: int, hold: float) -> subprocess.Popen:
    env = {**os.environ, "MASKSHARE_SLOTS_DIR": str(tmp_path / "slots")}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(threads), str(total), str(hold)],
                            stdout=subprocess.PIPE, text=True, env=env)


def _interval(p: subprocess.Popen) -> dict:
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0
    return json.loads(out.strip().splitlines()[-1])


def test_two_runs_that_each_need_every_core_never_compute_at_once(tmp_path):
    procs = [_spawn(tmp_path, 2, 2, 1.0) for _ in range(2)]
    a, b = sorted((_interval(p) for p in procs), key=lambda r: r["start"])
    assert a["end"] <= b["start"]          # one after the other
    assert b["waited"] > 0.5               # ... because the second waited for the slots


def test_one_thread_runs_share_the_cores(tmp_path):
    procs = [_spawn(tmp_path, 1, 2, 1.5) for _ in range(2)]
    a, b = sorted((_interval(p) for p in procs), key=lambda r: r["start"])
    assert b["start"] < a["end"]           # they overlap: one slot each


def test_a_killed_holder_does_not_block_the_next_run(tmp_path):
    holder = _spawn(tmp_path, 2, 2, 60.0)
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    t0 = time.time()
    nxt = _interval(_spawn(tmp_path, 2, 2, 0.1))
    assert nxt["waited"] < 5 and time.time() - t0 < 30


FAIR = """
import json, sys, time
from maskshare.run.compute_slot import compute_slot
t_end = time.time() + float(sys.argv[1])
n = 0
while time.time() < t_end:   # many short stages, one after the other, all cores each
    with compute_slot(2, "stage", total=2):
        time.sleep(0.05)
    n += 1
print(json.dumps({"stages": n}), flush=True)
"""


def test_a_run_of_many_short_stages_does_not_starve_another_run(tmp_path):
    env = {**os.environ, "MASKSHARE_SLOTS_DIR": str(tmp_path / "slots")}
    busy = subprocess.Popen([sys.executable, "-c", FAIR, "6"], stdout=subprocess.PIPE,
                            text=True, env=env)
    time.sleep(1.5)  # the busy run holds the slots most of the time now
    other = _interval(_spawn(tmp_path, 2, 2, 0.1))
    assert other["waited"] < 3.0  # served between two of the busy run's stages
    busy.communicate(timeout=60)
