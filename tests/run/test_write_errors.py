"""A write the user must fix (a full disk, no permission, a read-only file system) ends
`maskshare run` with one line naming what could not be written and what to do, exit 1,
nothing half-written; the next run resumes from the last finished stage."""

from __future__ import annotations

import errno
import os
import subprocess
import tempfile
from pathlib import Path

import polars as pl
import pytest
import yaml

from maskshare.artifacts import is_complete
from maskshare.cli import main
from maskshare.testing import write_tiny_run_setup
from run_helpers import dot_entries, stage_dirs

ONE_LINE = "maskshare run: cannot write "


def _small_setup(root: Path) -> Path:
    """The tiny run, cut to what a resume needs: one variant, one lambda, one seed."""
    p = write_tiny_run_setup(root, lambdas=(0.1,), steps=2)
    raw = yaml.safe_load(p.read_text())
    raw["evaluate"].update(seeds=[0], baselines=[], ablations=[])
    raw["attribution"] = {"methods": []}
    raw["dataset"]["max_items"] = 30
    p.write_text(yaml.safe_dump(raw))
    return p


def _run(cfg: Path, capsys) -> tuple[int, list[str]]:
    rc = main(["run", "--config", str(cfg), "--no-prefect"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("maskshare")
           or "Traceback" in ln]
    return rc, err


def _left_behind(runs: Path) -> list[Path]:
    """Temporary files and folders under the runs root (lock files are not data)."""
    return [p for p in dot_entries(runs) if not p.name.endswith(".lock")]


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKSHARE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MASKSHARE_THREADS", "1")
    return tmp_path


def test_a_full_disk_mid_run_is_one_line_and_the_rerun_resumes(env, monkeypatch, capsys,
                                                               caplog):
    cfg = _small_setup(env)
    write_parquet = pl.DataFrame.write_parquet

    def full_in_groups(self, file, *args, **kwargs):  # polars reports ENOSPC like this
        if "/groups/" in str(file):
            raise pl.exceptions.ComputeError("parquet: File out of specification: underlying "
                                             "IO error: No space left on device (os error 28)")
        return write_parquet(self, file, *args, **kwargs)

    monkeypatch.setattr(pl.DataFrame, "write_parquet", full_in_groups)
    rc, err = _run(cfg, capsys)
    assert rc == 1
    assert len(err) == 1 and err[0].startswith(ONE_LINE), err
    assert "groups/attention: No space left on device; free some space" in err[0]
    assert "then rerun" in err[0]
    runs = env / "runs"
    (run,) = [p for p in runs.iterdir() if not p.name.startswith(".")]
    assert not (run / "groups" / "attention").exists()
    assert _left_behind(runs) == []
    assert [d.name for d in stage_dirs(run)] == ["dataset"]
    assert all(is_complete(d, verify_hashes=True) for d in stage_dirs(run))

    monkeypatch.setattr(pl.DataFrame, "write_parquet", write_parquet)
    caplog.set_level("INFO", logger="maskshare.stages.plan")
    rc, err = _run(cfg, capsys)
    assert rc == 0 and err == []
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("cached: dataset") for m in messages)
    assert "building: dataset" not in messages and "building: groups attention" in messages
    assert (run / "metrics.json").is_file()
    assert all(is_complete(d, verify_hashes=True) for d in stage_dirs(run))


def test_no_permission_to_write_the_run_is_one_line(env, monkeypatch, capsys):
    cfg = _small_setup(env)
    mkstemp = tempfile.mkstemp

    def refused(*args, dir=None, **kwargs):
        if dir is not None and str(env / "runs") in str(dir):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
        return mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    rc, err = _run(cfg, capsys)
    assert rc == 1 and len(err) == 1 and err[0].startswith(ONE_LINE), err
    assert "config.yaml: Permission denied; make it writable" in err[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders anyway")
def test_a_read_only_runs_root_is_one_line(env, capsys):
    cfg = _small_setup(env)
    runs = env / "runs"
    runs.mkdir()
    runs.chmod(0o500)
    try:
        rc, err = _run(cfg, capsys)
    finally:
        runs.chmod(0o700)
    assert rc == 1 and len(err) == 1 and err[0].startswith(ONE_LINE), err
    assert "Permission denied" in err[0] and str(runs) in err[0]


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    opts = f"size={size}"
    if path.is_mount():
        opts = "remount," + opts
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.slow
def test_a_real_full_disk_then_more_space_resumes(env, capsys, caplog):
    """The runs root on a 300 KB tmpfs (root only): the run fills it, stops with one line;
    given 8 MB, the rerun keeps the finished stages and completes."""
    runs = env / "runs"
    runs.mkdir()
    if not _mount_tmpfs(runs, "300k"):
        pytest.skip("needs root and tmpfs mounts (mount -t tmpfs) to make a small disk")
    try:
        cfg = _small_setup(env)
        rc, err = _run(cfg, capsys)
        assert rc == 1 and len(err) == 1 and err[0].startswith(ONE_LINE), err
        assert "No space left on device; free some space" in err[0]
        assert _left_behind(runs) == []
        (run,) = [p for p in runs.iterdir() if not p.name.startswith(".")]
        done = stage_dirs(run)
        assert done and all(is_complete(d, verify_hashes=True) for d in done)

        assert _mount_tmpfs(runs, "8m")
        caplog.set_level("INFO", logger="maskshare.stages.plan")
        rc, err = _run(cfg, capsys)
        assert rc == 0 and err == []
        messages = [r.getMessage() for r in caplog.records]
        assert any(m.startswith("cached: dataset") for m in messages)
        assert (run / "metrics.json").is_file()
    finally:  # lazily if something still holds a file there
        if subprocess.run(["umount", str(runs)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(runs)], capture_output=True)
