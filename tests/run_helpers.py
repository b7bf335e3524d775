"""Helpers shared by the end-to-end tests that run the tiny pipeline in subprocesses
(test_reliability, test_shared_use, test_chaos): their environment, a run's stage folders,
what a killed process leaves behind, and scripts/compare_runs.py as a library; and by the
evaluation tests that rebuild a copy of the finished tiny run's evaluation."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def subprocess_env(cache: Path) -> dict:
    """The environment of a pipeline subprocess: its cache, one torch thread, no hub."""
    return {**os.environ, "MASKSHARE_CACHE": str(cache), "MASKSHARE_THREADS": "1",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def rebuilt_evaluation(run0: Path, cache: Path, dest: Path, monkeypatch=None) -> Path:
    """A copy of the finished run `run0` under `dest` with its evaluate stage rebuilt in
    this process (cache `cache`; a complete folder would be kept, so it is removed first).
    `monkeypatch`: patches to hold during the build, undone after it."""
    import shutil

    import pytest

    from maskshare.stages.evaluate import build

    run = dest / run0.name
    shutil.copytree(run0, run)
    shutil.rmtree(run / "evaluate")
    mp = monkeypatch or pytest.MonkeyPatch()
    mp.setenv("MASKSHARE_CACHE", str(cache))
    try:
        build(run)
    finally:
        mp.undo()
    return run


def stage_dirs(run: Path) -> list[Path]:
    """Every visible (not dot-named) stage directory of a run."""
    from maskshare.run.layout import RunLayout

    return RunLayout(run).stage_outputs()


def dot_entries(root: Path) -> list[Path]:
    """Dot-named files and folders under `root` (not those inside one): temporary folders
    and files, lock files and mask checkpoints, i.e. what a killed process leaves behind."""
    found = []
    if root.is_dir():
        for p in sorted(root.iterdir()):
            if p.name.startswith("."):
                found.append(p)
            elif p.is_dir() and not p.is_symlink():
                found += dot_entries(p)
    return found


def compare_runs():
    """scripts/compare_runs.py as a module: `compare(a, b)` lists the files that differ
    between two folders, ignoring only what records time."""
    spec = importlib.util.spec_from_file_location("compare_runs",
                                                  ROOT / "scripts" / "compare_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
