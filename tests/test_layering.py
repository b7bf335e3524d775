"""Imports run one way: commands -> flows -> core. Importing any module of the library
(src/maskshare, commands included) must not import Prefect or flows/."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import maskshare

SRC = Path(maskshare.__file__).resolve().parent


def _modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages([str(SRC)], prefix="maskshare."))


def test_the_library_imports_neither_prefect_nor_flows():
    # a fresh interpreter: other tests' imports (flows, prefect) must not hide a violation
    code = ("import importlib, json, sys\n"
            f"for m in {_modules()!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] in "
            "('prefect', 'flows', 'prefect_dask'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=SRC.parents[1])
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_every_stage_has_its_module_and_the_plan_names_them():
    from maskshare.stages.plan import STAGES

    for name, stage in STAGES.items():
        assert stage.build.__module__ == f"maskshare.stages.{name}"
    assert "maskshare.stages.plan" in _modules()


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(SRC)): n for p in sorted(SRC.rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert not long, long
