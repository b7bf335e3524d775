"""Shared use (issue 15): file permissions follow the umask, stage locks keep builders of the
same stage from removing each other's work, three runs of one config at once, and
`maskshare runs list | clean`."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from maskshare.artifacts import (
    atomic_path,
    building,
    file_sha256,
    is_complete,
    lock_is_held,
    lock_path,
    read_manifest,
    stage_lock,
    write_manifest,
)
from maskshare.cli import main
from run_helpers import stage_dirs, subprocess_env

MINIMAL = {"evaluate": {"seeds": [0], "baselines": [], "ablations": []}}


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> dict:
    from maskshare.testing import write_tiny_run_setup

    root = tmp_path_factory.mktemp("shared-setup")
    cfg = yaml.safe_load(write_tiny_run_setup(root).read_text())
    cfg.update(MINIMAL)
    return cfg


def write_config(path: Path, cfg: dict, **changes) -> Path:
    path.write_text(yaml.safe_dump({**cfg, **changes}, sort_keys=False))
    return path


def cli(config: Path, cache: Path, umask: int | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "maskshare.cli", "run", "--config",
                             str(config), "--no-prefect"], env=subprocess_env(cache), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=None if umask is None else (lambda: os.umask(umask)))


def finished(proc: subprocess.Popen) -> tuple[Path, str]:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return Path(out.strip().splitlines()[-1]), err


# ============================================================================ permissions


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_atomic_files_and_built_folders_get_the_umask_modes(tmp_path, umask):
    from safetensors.torch import save_file

    old = os.umask(umask)
    try:
        f = tmp_path / "sub" / "a.txt"
        with atomic_path(f) as tmp:
            tmp.write_text("x")
        with building(tmp_path / "stage") as d:
            (d / "b.bin").write_bytes(b"y")
            save_file({"w": torch.zeros(2)}, str(d / "w.safetensors"))  # always 0600 itself
            write_manifest(d)
    finally:
        os.umask(old)
    want_file, want_dir = 0o666 & ~umask, 0o777 & ~umask
    for p in (f, tmp_path / "stage" / "b.bin", tmp_path / "stage" / "manifest.json",
              tmp_path / "stage" / "w.safetensors"):
        assert stat.S_IMODE(p.stat().st_mode) == want_file, (p, oct(p.stat().st_mode))
    for p in (f.parent, tmp_path / "stage"):
        assert stat.S_IMODE(p.stat().st_mode) == want_dir, (p, oct(p.stat().st_mode))


@pytest.mark.slow
def test_a_fresh_run_under_umask_022_is_readable_by_group_and_others(tiny_config, tmp_path):
    cfg = write_config(tmp_path / "tiny.yaml", tiny_config, runs_dir=str(tmp_path / "runs"))
    run, _ = finished(cli(cfg, tmp_path / "cache", umask=0o022))
    bad = []
    for root in (run, tmp_path / "cache"):
        for p in [root, *root.rglob("*")]:
            mode = stat.S_IMODE(p.lstat().st_mode)
            need = 0o755 if p.is_dir() else 0o644
            if mode & need != need:
                bad.append(f"{p} {oct(mode)}")
    n = sum(1 for _ in run.rglob("*"))
    print(f"\n{n} paths in the run, 0 private: {not bad}")
    assert n > 20 and not bad, bad[:10]


# ============================================================================ locks


def _hold(final: str, entered, release) -> None:
    with stage_lock(final):
        entered.set()
        release.wait(30)


def test_stage_lock_excludes_other_processes_and_is_reentrant(tmp_path):
    final = tmp_path / "stage"
    ctx = multiprocessing.get_context("spawn")
    entered, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(str(final), entered, release))
    p.start()
    try:
        assert entered.wait(60)
        assert lock_is_held(final) and lock_path(final).exists()
        with stage_lock(final, wait=False) as got:
            assert got is False
    finally:
        release.set()
        p.join(30)
    assert not lock_is_held(final) and not lock_path(final).exists()
    with stage_lock(final) as got, stage_lock(final) as again:  # re-entrant in a thread
        assert got and again and lock_is_held(final) and lock_path(final).exists()
        final.mkdir()
        (final / "x").write_text("x")
        write_manifest(final)
        assert is_complete(final)  # a lock file beside the folder does not count
    assert not lock_path(final).exists() and is_complete(final)
    assert read_manifest(final)["files"] == {"x": file_sha256(final / "x")}
    with stage_lock(final, wait=False) as got:
        assert got


def _build(final: str, value: str, delay: float, done) -> None:
    from maskshare.artifacts import building, is_complete, stage_lock, write_manifest

    with stage_lock(final):  # check complete -> build -> rename, as stage_masks does
        if is_complete(final):
            done.put(("reused", value))
            return
        ckpt = Path(final).parent / f".{Path(final).name}.checkpoint"
        ckpt.mkdir(parents=True, exist_ok=True)
        (ckpt / "state").write_text(value)
        time.sleep(delay)
        assert (ckpt / "state").read_text() == value  # nobody touched our checkpoint
        with building(final) as tmp:
            (tmp / "value").write_text(value)
            write_manifest(tmp)
        shutil.rmtree(ckpt)
        done.put(("built", value))


def test_builders_of_one_stage_wait_and_reuse_the_first_result(tmp_path):
    final = tmp_path / "masks" / "lam0.01_seed0"
    ctx = multiprocessing.get_context("spawn")
    done = ctx.Queue()
    procs = [ctx.Process(target=_build, args=(str(final), f"v{i}", 1.0, done)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    results = sorted(done.get(timeout=5) for _ in procs)
    assert [r[0] for r in results] == ["built", "reused", "reused"], results
    built = next(v for k, v in results if k == "built")
    assert is_complete(final) and (final / "value").read_text() == built
    # no temp folder, checkpoint or lock file left
    assert sorted(p.name for p in final.parent.iterdir()) == ["lam0.01_seed0"]


@pytest.mark.slow
def test_three_runs_of_the_same_config_at_once(tiny_config, tmp_path):
    from maskshare.masks.training import TrainResult

    cfg = write_config(tmp_path / "same.yaml", tiny_config, runs_dir=str(tmp_path / "runs"),
                       masks={**tiny_config["masks"], "steps": 30, "checkpoint_every": 2})
    procs = [cli(cfg, tmp_path / "cache") for _ in range(3)]
    results = [finished(p) for p in procs]
    runs = {r for r, _ in results}
    assert len(runs) == 1 and [p.name for p in (tmp_path / "runs").iterdir()] == \
        [next(iter(runs)).name]
    run = runs.pop()
    dirs = stage_dirs(run)
    assert {d.relative_to(run).parts[0] for d in dirs} == {"dataset", "groups", "stats",
                                                          "attribution", "masks", "evaluate"}
    assert all(is_complete(d) for d in dirs)
    leftovers = [p for root in (run, tmp_path / "cache") for p in root.rglob(".*")]
    assert not leftovers, leftovers  # no temp folders, checkpoints or lock files
    masks = sorted(p.relative_to(run) for p in (run / "masks").glob("*/*"))
    # each mask was trained once: the two other runs waited and found it complete
    for m in masks:
        variant, name = m.parts[1], m.parts[2]
        lam, seed = name[3:].split("_seed")
        line = f"cached: masks {variant} lambda={lam} seed={seed}"
        assert sum(line in err for _, err in results) == 2, (line, [e[-2000:] for _, e in
                                                                    results])
    # ... and equals what a single run with a fresh cache trains
    single = write_config(tmp_path / "single.yaml", yaml.safe_load(cfg.read_text()),
                          runs_dir=str(tmp_path / "single-runs"))
    ref, _ = finished(cli(single, tmp_path / "cache2"))
    assert ref.name == run.name
    for m in masks:
        a, b = TrainResult.load(run / m).theta, TrainResult.load(ref / m).theta
        assert a.keys() == b.keys() and all(torch.equal(a[h], b[h]) for h in a), m
    ma = json.loads((run / "metrics.json").read_text())
    mb = json.loads((ref / "metrics.json").read_text())
    ma.pop("timings"), mb.pop("timings")
    assert ma == mb


# ============================================================================ runs list | clean


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(p, (t, t), follow_symlinks=False)


@pytest.fixture
def runs_tree(finished_tiny_run, tmp_path):
    """A runs root: a finished run, an unfinished one, and what kills leave behind."""
    root = tmp_path / "runs"
    done = root / finished_tiny_run[1].name
    shutil.copytree(finished_tiny_run[1], done)
    part = root / "tiny-0000000000000000"
    (part / "dataset").mkdir(parents=True)
    shutil.copy(done / "config.yaml", part / "config.yaml")
    (part / "dataset" / "items.parquet").write_bytes(b"half")
    stale = {"dir": done / ".dataset.k3j2h1", "tmp": done / "groups" / ".x.json.ab12.tmp",
             "old": done / "groups" / ".attention.old.123"}
    stale["dir"].mkdir()
    (stale["dir"] / "items.parquet").write_bytes(b"x")
    stale["tmp"].write_text("x")
    stale["old"].mkdir()
    fresh = done / "stats" / ".attention.zz99"
    fresh.mkdir()
    ckpt = done / "masks" / "attention__slot-mean" / ".lam0.5_seed0.checkpoint"
    ckpt.mkdir()
    (ckpt / "checkpoint.safetensors").write_bytes(b"c")
    stale["lock"] = done / "stats" / ".single.lock"  # left by a killed holder
    stale["lock"].touch()
    for p in (*stale.values(), ckpt):
        _age(p, 3 * 3600)
    return root, done, part, stale, fresh, ckpt


def snapshot(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*"))


def test_runs_list_shows_each_run_complete_or_not_with_its_f(runs_tree, capsys):
    root, done, part, *_ = runs_tree
    assert main(["runs", "list", "--runs-dir", str(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {ln.split()[0]: ln.split() for ln in out[1:]}
    f = json.loads((done / "metrics.json").read_text())["faithfulness"]
    assert rows[done.name][-2:] == ["yes", f"{f:.3f}"]
    assert rows[part.name][-1] == "no"
    assert main(["runs", "list", "--runs-dir", str(root / "none")]) == 0
    assert "no runs under" in capsys.readouterr().out


def test_runs_clean_is_a_dry_run_unless_told_and_spares_locked_and_fresh_temps(runs_tree,
                                                                             capsys):
    root, done, part, stale, fresh, ckpt = runs_tree
    before = snapshot(root)
    assert main(["runs", "clean", "--runs-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert snapshot(root) == before  # dry run: nothing touched
    listed = {Path(ln.split()[2]) for ln in out.splitlines() if ln.startswith("would delete /")}
    assert listed == set(stale.values()), out

    ctx = multiprocessing.get_context("spawn")
    entered, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(done / "dataset"), entered, release))
    holder.start()
    try:
        assert entered.wait(60)  # someone is building the dataset stage right now
        assert main(["runs", "clean", "--runs-dir", str(root), "--yes", "--checkpoints"]) == 0
    finally:
        release.set()
        holder.join(30)
    out = capsys.readouterr().out
    assert stale["dir"].exists()  # its stage is locked: in use
    assert not stale["tmp"].exists() and not stale["old"].exists() and not ckpt.exists()
    assert not stale["lock"].exists()
    assert fresh.exists()  # too recent to be stale
    assert is_complete(done / "dataset") and part.exists()


def test_runs_clean_removes_the_checkpoint_of_a_finished_mask_without_being_told(tmp_path):
    """A kill between a mask's rename and its checkpoint's removal leaves a checkpoint
    nothing resumes from: stale like a temp folder. A checkpoint of an unfinished mask
    stays unless `--checkpoints`."""
    from maskshare.commands.runs import stale_entries

    masks = tmp_path / "run" / "masks" / "attention__slot-mean"
    done = masks / "lam0.01_seed0"
    done.mkdir(parents=True)
    (done / "masks.safetensors").write_bytes(b"m")
    write_manifest(done)
    finished, unfinished = masks / ".lam0.01_seed0.checkpoint", masks / ".lam0.1_seed0.checkpoint"
    for c in (finished, unfinished):
        c.mkdir()
        (c / "checkpoint.safetensors").write_bytes(b"c")
    later = time.time() + 3600
    assert stale_entries(tmp_path, 1, now=later) == [finished]
    assert stale_entries(tmp_path, 1, checkpoints=True, now=later) == [finished, unfinished]
    assert stale_entries(tmp_path, 120, now=later) == []  # not stale yet


def test_runs_clean_older_than_deletes_old_runs_only_with_yes(runs_tree, capsys):
    root, done, part, *_ = runs_tree
    _age(part, 10 * 86400)
    assert main(["runs", "clean", "--runs-dir", str(root), "--older-than", "5"]) == 0
    assert part.exists() and f"would delete {part} " in capsys.readouterr().out
    assert main(["runs", "clean", "--runs-dir", str(root), "--older-than", "5", "--yes"]) == 0
    assert not part.exists() and done.exists()
    assert main(["runs", "clean", "--runs-dir", str(root), "--older-than", "-1"]) == 2
