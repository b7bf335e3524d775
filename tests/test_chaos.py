"""Chaos test: `kill -9` at random moments of every stage of the tiny pipeline, rerun, and
compare every artifact (run directory and dataset cache) with an uninterrupted run.

The pipeline runs in subprocesses (tests/chaos_runner.py) that SIGKILL themselves at a
chosen moment: the N-th event (build start, temp folder made, parquet written, atomic file
or folder rename before/after, mask training step) of one stage call. The uninterrupted
reference run counts the events per call and snapshots the runs root and cache before each
call builds, so a kill in a late stage starts from the state that stage would see.

Kills come in chains: kill at a moment, rerun and kill that rerun at a later call, ..., then
one uninterrupted rerun; every kill's state is thus picked up by a rerun. After the final
rerun, whatever dot-named leftovers remain (temp folders of killed builders, stale lock
files, checkpoints of finished masks) must be what `maskshare runs clean --stale-minutes 0
--yes` deletes (in the runs root and in the cache); then every file must equal the
reference's, ignoring only fields that record time (scripts/compare_runs.py).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from maskshare.cli import main
from run_helpers import compare_runs, dot_entries, subprocess_env

RUNNER = Path(__file__).with_name("chaos_runner.py")
STAGE_OF = {"prepare": "prepare", "dataset": "dataset", "groups": "groups",
            "slot": "stats", "masks": "masks", "evaluation": "evaluate"}
KILLS = int(os.environ.get("MASKSHARE_CHAOS_KILLS", "32"))
SEED = int(os.environ.get("MASKSHARE_CHAOS_SEED", "15"))


def stage(call: str) -> str:
    return STAGE_OF[call.split()[0]]


def runner(config: Path, cache: Path, *args: str) -> subprocess.CompletedProcess:
    # core slots of their own: the test's runs take turns with each other, not with
    # whatever else runs on the machine
    env = {**subprocess_env(cache), "MASKSHARE_SLOTS_DIR": str(cache.parent / "slots")}
    return subprocess.run([sys.executable, str(RUNNER), str(config), *args], env=env,
                          capture_output=True, text=True, timeout=600)


def restore(snapshot: Path, work: Path) -> None:
    """The runs root and cache as `snapshot` holds them (fresh for the `prepare` moments)."""
    for name in ("runs", "cache"):
        shutil.rmtree(work / name, ignore_errors=True)
        if (snapshot / name).exists():
            shutil.copytree(snapshot / name, work / name)


def draw_chains(rng: random.Random, events: dict, order: list[str], kills: int,
                forced: list[tuple[str, str, int]]) -> list[list[tuple[str, str, int]]]:
    """Chains of 1-3 kill moments (call, event, n) at strictly later calls of the plan
    (`order`), `kills` moments in all: the `forced` ones first, then the stages in turn
    (so each gets its share), a random call of the stage, event and count."""
    by_stage: dict[str, list[str]] = {}
    for call in order:
        by_stage.setdefault(stage(call), []).append(call)
    stages = sorted(by_stage)
    moments = list(forced)
    while len(moments) < kills:
        call = rng.choice(by_stage[stages[len(moments) % len(stages)]])
        event = rng.choice(sorted(events[call]))
        moments.append((call, event, rng.randint(1, events[call][event])))
    chains, i = [], 0
    while i < len(moments):
        chain = [moments[i]]
        i += 1
        for _ in range(rng.randint(0, 2)):  # extend with later calls only
            if i < len(moments) and order.index(moments[i][0]) > order.index(chain[-1][0]):
                chain.append(moments[i])
                i += 1
        chains.append(chain)
    return chains


def clean_leftovers(work: Path) -> Counter:
    """`maskshare runs clean --stale-minutes 0 --yes` on the runs root and on the cache;
    returns what kinds of leftovers there were. Fails if any survive it."""
    before = Counter("lock" if p.name.endswith(".lock") else
                     "checkpoint" if p.name.endswith(".checkpoint") else "temp"
                     for root in ("runs", "cache") for p in dot_entries(work / root))
    for root in ("runs", "cache"):
        assert main(["runs", "clean", "--runs-dir", str(work / root), "--stale-minutes", "0",
                     "--yes"]) == 0
        left = dot_entries(work / root)
        assert not left, f"left behind where runs clean does not reach: {left}"
    return before


@pytest.mark.slow
def test_random_kills_in_every_stage_rerun_to_the_uninterrupted_artifacts(tmp_path, capsys):
    from maskshare.testing import write_tiny_run_setup

    work, snaps, ref = tmp_path / "work", tmp_path / "snapshots", tmp_path / "reference"
    config = write_tiny_run_setup(work)  # runs root work/runs; the cache is work/cache
    cache = work / "cache"
    done = runner(config, cache, "count", str(tmp_path / "events.json"), str(snaps))
    assert done.returncode == 0, done.stderr[-3000:]
    assert not dot_entries(work / "runs") and not dot_entries(cache)
    for name in ("runs", "cache"):
        shutil.copytree(work / name, ref / name)
    events = json.loads((tmp_path / "events.json").read_text())
    snapshot = {(d / "call.txt").read_text(): d for d in snaps.iterdir()}
    snapshot["prepare"] = tmp_path / "empty"  # before prepare_run: nothing yet
    order = sorted(snapshot, key=lambda c: -1 if c == "prepare" else int(snapshot[c].name))
    order = [c for c in order if events.get(c)]
    assert {stage(c) for c in order} >= set(STAGE_OF.values()) - {"prepare"}
    # the dataset cache write: its manifest (the call's first atomic file) and the rename
    # of the cache folder (the call's first folder rename, before RUN/dataset's); a stage
    # folder's rename; a mask renamed but its checkpoint not yet removed; metrics.json
    # written but report.html not yet
    first_mask = next(c for c in order if stage(c) == "masks")
    forced = [("dataset", "file-before", 1), ("dataset", "dir-before", 1),
              ("dataset", "dir-after", 1), ("groups attention", "dir-before", 1),
              (first_mask, "dir-after", 1), ("evaluation", "file-after", 2)]
    chains = draw_chains(random.Random(SEED), events, order, KILLS, forced)

    killed, leftovers, compare = Counter(), Counter(), compare_runs().compare
    for chain in chains:
        restore(snapshot[chain[0][0]], work)
        for call, event, n in chain:
            proc = runner(config, cache, "kill", call, event, str(n))
            assert proc.returncode == -9, (call, event, n, proc.returncode, proc.stderr[-3000:])
            killed[stage(call)] += 1
        proc = runner(config, cache, "run")
        assert proc.returncode == 0, (chain, proc.stderr[-3000:])
        leftovers += clean_leftovers(work)
        for name in ("runs", "cache"):
            assert compare(ref / name, work / name) == [], (chain, name)

    total = sum(killed.values())
    assert total >= KILLS and set(killed) == {stage(c) for c in order}
    with capsys.disabled():
        print(f"\nchaos: {total} kills ("
              + ", ".join(f"{s} {killed[s]}" for s in sorted(killed)) + f") in {len(chains)} "
              f"chains, {len(chains)} final reruns identical to the uninterrupted run; "
              f"leftovers removed by runs clean: {dict(leftovers) or 'none'}")
