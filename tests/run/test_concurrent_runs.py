"""Two runs of different configs at once on one machine (issue 13): both finish with the
results each gives alone, and when each needs every core they never run a compute stage at
the same time (`compute_slot`: one machine-wide slot per core, one per torch thread).

Each process is pinned to a single core, so it sees one core, runs one torch thread and
needs the one slot there is: the two runs must take turns. Every stage build is logged
("building: X" ... "built: X") while its slots are held, with the wall-clock time."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from run_helpers import subprocess_env

RUN = """
import logging, pathlib, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(created).6f %(levelname)s %(name)s: %(message)s")
import torch, transformer_lens, maskshare.stages.pipeline  # the slow imports, before the start line
from maskshare.cli import main
pathlib.Path(sys.argv[2]).touch()  # ready
while not pathlib.Path(sys.argv[3]).exists():  # go
    time.sleep(0.02)
sys.exit(main(["run", "--config", sys.argv[1], "--no-prefect"]))
"""
LINE = re.compile(r"^(\d+\.\d+) INFO maskshare\.stages\.plan: (building|built): (.+?)"
                  r"(?: \([0-9.]+ s\))?$")
SMALL = {"evaluate": {"seeds": [0], "baselines": [], "ablations": []}}


def _config(path: Path, base: dict, name: str, lam: float, seed: int, runs: Path) -> Path:
    cfg = {**base, **SMALL, "name": name, "seed": seed, "runs_dir": str(runs),
           "masks": {**base["masks"], "lambdas": [lam]}}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _start(config: Path, cache: Path, slots: Path, cpu: int, go: Path) -> subprocess.Popen:
    """`maskshare run` pinned to core `cpu`; it starts once the file `go` exists (after its
    imports: `config` + ".ready" says it got there)."""
    env = {**subprocess_env(cache), "MASKSHARE_SLOTS_DIR": str(slots)}
    return subprocess.Popen([sys.executable, "-c", RUN, str(config), f"{config}.ready", str(go)],
                            env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))


def _ready(configs: list[Path], procs: list[subprocess.Popen]) -> None:
    deadline = time.time() + 600
    while not all(Path(f"{c}.ready").exists() for c in configs):
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        assert time.time() < deadline, "the runs never got ready"
        time.sleep(0.05)


def _finish(proc: subprocess.Popen) -> tuple[Path, list[tuple[float, float, str]]]:
    """(run dir, [(start, end, stage)] of every stage the process built)."""
    out, err = proc.communicate(timeout=1800)  # a loaded machine is slow
    assert proc.returncode == 0, err[-3000:]
    open_, spans = {}, []
    for line in err.splitlines():
        m = LINE.match(line)
        if m and m.group(2) == "building":
            open_[m.group(3)] = float(m.group(1))
        elif m:
            spans.append((open_.pop(m.group(3)), float(m.group(1)), m.group(3)))
    assert not open_, open_
    return Path(out.strip().splitlines()[-1]), spans


def _results(run: Path) -> dict:
    """Every result of a run: each file's sha256, except what records where or when it ran
    (manifests, config.yaml with its runs_dir, HTML pages, the timings in metrics.json and
    quality.json), which is left out or masked."""
    out = {}
    for p in sorted(run.rglob("*")):
        rel = str(p.relative_to(run))
        if not p.is_file() or p.name in ("manifest.json", "config.yaml") or p.suffix == ".html":
            continue
        if p.suffix == ".json" and p.name in ("metrics.json", "quality.json"):
            data = json.loads(p.read_text())
            data.pop("timings", None), data.pop("fit_assign_s", None)
            out[rel] = data
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.mark.slow
def test_two_runs_at_once_take_turns_and_give_the_results_of_each_run_alone(tmp_path):
    from maskshare.testing import write_tiny_run_setup

    base = yaml.safe_load(write_tiny_run_setup(tmp_path / "setup").read_text())
    runs = [("a", 0.01, 0), ("b", 0.05, 1)]  # different configs
    cpus = sorted(os.sched_getaffinity(0))
    pick = [cpus[0], cpus[-1]]  # two cores where there are two: they could run side by side
    # each alone: its own runs dir, cache and core slots, nothing shared with anything
    (tmp_path / "go-now").touch()
    alone = [_start(_config(tmp_path / f"alone-{n}.yaml", base, n, lam, seed,
                            tmp_path / f"alone-runs-{n}"),
                    tmp_path / f"cache-{n}", tmp_path / f"slots-{n}", cpu, tmp_path / "go-now")
             for (n, lam, seed), cpu in zip(runs, pick, strict=True)]
    ref = [_finish(p)[0] for p in alone]
    # together: one runs dir, one cache, the machine-wide slots; started at the same moment
    cfgs = [_config(tmp_path / f"{n}.yaml", base, n, lam, seed, tmp_path / "runs")
            for n, lam, seed in runs]
    procs = [_start(c, tmp_path / "cache", tmp_path / "slots", cpu, tmp_path / "go")
             for c, cpu in zip(cfgs, pick, strict=True)]
    _ready(cfgs, procs)
    (tmp_path / "go").touch()
    (run_a, spans_a), (run_b, spans_b) = (_finish(p) for p in procs)

    assert run_a != run_b
    for got, want in ((run_a, ref[0]), (run_b, ref[1])):
        assert got.name == want.name
        res, alone_res = _results(got), _results(want)
        assert {"evaluate/lds.parquet", "evaluate/curves.parquet", "metrics.json"} <= set(res)
        assert any(k.endswith("masks.safetensors") for k in res)
        assert res == alone_res, [k for k in res if res[k] != alone_res.get(k)]
    for spans in (spans_a, spans_b):
        stages = {what.split()[0] for _, _, what in spans}
        assert {"dataset", "groups", "slot", "masks", "evaluation"} <= stages, spans
    # they ran at the same time (else the next check proves nothing) ...
    assert min(s for s, _, _ in spans_a) < max(e for _, e, _ in spans_b), (spans_a, spans_b)
    assert min(s for s, _, _ in spans_b) < max(e for _, e, _ in spans_a), (spans_a, spans_b)
    # ... but never computed at the same time
    overlaps = [(x, y) for x in spans_a for y in spans_b if x[0] < y[1] and y[0] < x[1]]
    assert not overlaps, overlaps
