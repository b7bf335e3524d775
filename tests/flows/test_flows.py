"""Prefect flows on the tiny end-to-end set-up: pipeline, caching, sweep on Dask."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    from flows import configure_prefect_env

    home = tmp_path_factory.mktemp("prefect-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("PREFECT_HOME", str(home))
    configure_prefect_env()
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield
    mp.undo()


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    from maskshare.testing import write_tiny_run_setup

    root = tmp_path_factory.mktemp("tiny-e2e")
    mp = pytest.MonkeyPatch()
    mp.setenv("MASKSHARE_CACHE", str(root / "cache"))
    yield write_tiny_run_setup(root)
    mp.undo()


def _theta(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for p in sorted((run / "masks").glob("*/*/masks.safetensors")):
        for k, v in load_file(str(p)).items():
            out[f"{p.parent.parent.name}/{p.parent.name}/{k}"] = v
    return out


def test_pipeline_flow_runs_and_a_rerun_recomputes_nothing(harness, tiny_setup):
    from flows.pipeline import pipeline_flow
    from maskshare.config import load_config

    cfg = load_config(tiny_setup)
    run = Path(pipeline_flow(config=cfg))
    metrics = json.loads((run / "metrics.json").read_text())
    for k in ("faithfulness", "faithfulness_vs_clean", "completeness", "latents_per_token",
              "circuit_size", "ari_roles", "purity_roles"):
        assert k in metrics
    assert (run / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert (run / "groups" / "attention" / "groups.html").is_file()
    stamp = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    run2 = Path(pipeline_flow(config_path=str(tiny_setup)))
    assert run2 == run
    # every stage found its complete artifact: nothing was rewritten
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == stamp


def test_sweep_on_a_local_dask_cluster_equals_the_sequential_sweep(harness, tiny_setup, tmp_path):
    import yaml

    from flows.sweep import run_sweep

    cfg = yaml.safe_load(Path(tiny_setup).read_text())
    cfg["evaluate"]["baselines"] = ["single"]
    cfg["evaluate"]["ablations"] = []
    roots = {}
    for mode in ("sequential", "dask"):
        cfg["runs_dir"] = str(tmp_path / mode)
        p = tmp_path / f"{mode}.yaml"
        p.write_text(yaml.safe_dump(cfg))
        runs = run_sweep(str(p), sequential=(mode == "sequential"), n_workers=2)
        assert len(runs) == 1
        roots[mode] = Path(runs[0])
    a, b = _theta(roots["sequential"]), _theta(roots["dask"])
    assert a and a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ma = json.loads((roots["sequential"] / "metrics.json").read_text())
    mb = json.loads((roots["dask"] / "metrics.json").read_text())
    assert ma["faithfulness"] == mb["faithfulness"]


def test_pipeline_with_dask_workers_gives_the_sequential_masks(harness, tiny_setup, tmp_path):
    import yaml

    from flows.pipeline import pipeline_flow
    from maskshare.config import RunConfig

    data = yaml.safe_load(Path(tiny_setup).read_text())
    seq = Path(pipeline_flow(config=RunConfig.model_validate(data)))
    data["runs_dir"] = str(tmp_path / "parallel")
    par = Path(pipeline_flow(config=RunConfig.model_validate(data), workers=2))
    assert par.parent == tmp_path / "parallel" and par.name == seq.name
    a, b = _theta(seq), _theta(par)
    assert a and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


class _Failed:
    """A task state whose result raises `error`."""

    def __init__(self, error: BaseException):
        self.error = error

    def result(self):
        raise self.error


def test_io_tasks_retry_transient_os_errors_but_not_a_full_disk_or_bad_input():
    import errno

    from flows.pipeline import _retry_unless_user_error
    from maskshare.artifacts import WriteError
    from maskshare.errors import UserError

    def retried(e):
        return _retry_unless_user_error(None, None, _Failed(e))

    assert retried(OSError(errno.EIO, "Input/output error"))
    assert not retried(WriteError(errno.ENOSPC, "No space left on device", "/runs/x"))
    assert not retried(UserError("bad input"))
