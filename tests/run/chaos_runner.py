"""Runs a run config's pipeline in this process, counting moments of interest per stage call
or SIGKILLing itself at one of them; the process tests/run/test_chaos.py starts (forked from a
forkserver through `child`, or from the command line). No test hook lives in library code:
the moments are seen by wrapping what the library calls.

    python tests/run/chaos_runner.py CONFIG count EVENTS.json SNAPSHOTS
        uninterrupted; writes {call: {event: count}} and, before each stage call builds,
        copies the runs root and the cache to SNAPSHOTS/<i> (the state a kill there starts from)
    python tests/run/chaos_runner.py CONFIG kill CALL EVENT N
        SIGKILL at the N-th EVENT of stage call CALL (exit status -9); exit 3 if never reached
    python tests/run/chaos_runner.py CONFIG run
        uninterrupted (a rerun)

A call is its stage's "cached:" label (`dataset`, `groups attention`, `masks ... seed=0`,
`evaluation`); moments outside every build belong to `prepare`. Events:

- `build`: the call's build starts (its stage lock held, nothing written yet)
- `tempdir`: `artifacts.building` made its temp folder (empty)
- `parquet`: a parquet table written (items, pass table, tokens, curves ...)
- `file-before` / `file-after`: an atomic file write's rename (manifests, json, html,
  safetensors, mask checkpoints), killed just before or just after `os.replace`
- `dir-before` / `dir-after`: the atomic rename of a built folder (a stage folder or the
  dataset cache folder) into place, just before or just after, its lock still held
- `step`: a mask training step ended (its checkpoint, if due, written)
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import sys
from collections import Counter, defaultdict
from pathlib import Path

PREPARE = "prepare"


class Chaos:
    """Counts events per call; `kill_at = (call, event, n)` kills at the n-th one."""

    def __init__(self, kill_at: tuple[str, str, int] | None = None, snapshots: Path | None = None,
                 roots: tuple[Path, Path] | None = None):
        self.kill_at, self.snapshots, self.roots = kill_at, snapshots, roots
        self.call = PREPARE
        self.counts: dict[str, Counter] = defaultdict(Counter)
        self.n_calls = 0

    def event(self, name: str) -> None:
        self.counts[self.call][name] += 1
        if self.kill_at == (self.call, name, self.counts[self.call][name]):
            os.kill(os.getpid(), signal.SIGKILL)

    def snapshot(self) -> None:
        if self.snapshots is None:
            return
        dest = self.snapshots / str(self.n_calls)
        for root in self.roots:  # the stage lock held now is not part of the state
            shutil.copytree(root, dest / root.name, ignore=shutil.ignore_patterns(".*.lock"))
        (dest / "call.txt").write_text(self.call)


def install(chaos: Chaos) -> None:
    """Wrap the stages' builds and the calls the moments happen in."""
    import polars as pl

    import maskshare.artifacts as artifacts
    import maskshare.masks.training as mask_training
    from maskshare.stages import plan

    for name, stage in list(plan.STAGES.items()):
        def build(run, _stage=stage, **params):
            outer, chaos.call = chaos.call, _stage.describe(**params)
            chaos.snapshot()
            chaos.n_calls += 1
            chaos.event("build")
            try:
                return _stage.build(run, **params)
            finally:
                chaos.call = outer
        plan.STAGES[name] = dataclasses.replace(stage, build=build)

    replace = os.replace

    def chaos_replace(src, dst, *args, **kwargs):
        kind = "dir" if os.path.isdir(src) else "file"
        chaos.event(f"{kind}-before")
        replace(src, dst, *args, **kwargs)
        chaos.event(f"{kind}-after")
    os.replace = chaos_replace

    make_temp_dir = artifacts.make_temp_dir

    def chaos_make_temp_dir(final_dir):
        tmp = make_temp_dir(final_dir)
        chaos.event("tempdir")
        return tmp
    artifacts.make_temp_dir = chaos_make_temp_dir

    write_parquet = pl.DataFrame.write_parquet

    def chaos_write_parquet(self, *args, **kwargs):
        out = write_parquet(self, *args, **kwargs)
        chaos.event("parquet")
        return out
    pl.DataFrame.write_parquet = chaos_write_parquet

    train_masks = mask_training.train_masks

    def chaos_train_masks(*args, callback=None, **kwargs):
        def step(i, rec):
            if callback is not None:
                callback(i, rec)
            chaos.event("step")
        return train_masks(*args, callback=step, **kwargs)
    mask_training.train_masks = chaos_train_masks  # masks.build imports it at call time


# imported once by the forkserver the test starts runs from: each run is a fresh fork that
# has not run anything, without paying ~9 s of imports (torch, transformer_lens, sae_lens),
# nor the ~3 s of scikit-learn, scipy and skops (about 950 modules, dask's among them) that
# the grouping and evaluation stages import when they first build
PRELOAD = ["torch", "polars", "transformer_lens", "sae_lens", "maskshare.stages.pipeline",
           "maskshare.masks.training", "maskshare.testing", "maskshare.stages.evaluate",
           "maskshare.report.page", "maskshare.datasets", "sklearn.cluster",
           "sklearn.decomposition", "sklearn.metrics", "sklearn.mixture", "sklearn.neighbors",
           "sklearn.preprocessing", "scipy.cluster.hierarchy", "skops.io"]


def child(argv: list[str], env: dict[str, str], log: str) -> None:
    """A forked run (multiprocessing target): its environment, its output to `log`, `main`."""
    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.exit(main(argv))


def main(argv: list[str]) -> int:
    from maskshare.config import load_config
    from maskshare.runtime import cache_dir
    from maskshare.stages.pipeline import run_pipeline

    config, mode, *rest = argv
    cfg = load_config(config)
    if mode == "count":
        chaos = Chaos(snapshots=Path(rest[1]), roots=(Path(cfg.runs_dir), cache_dir()))
    elif mode == "kill":
        chaos = Chaos(kill_at=(rest[0], rest[1], int(rest[2])))
    else:
        chaos = Chaos()
    install(chaos)
    run = run_pipeline(cfg)
    if mode == "count":
        Path(rest[0]).write_text(json.dumps(chaos.counts, indent=1))
    print(run)
    return 3 if mode == "kill" else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
