"""Chaos test: `kill -9` at random moments of every stage of the tiny pipeline, rerun, and
compare every artifact (run directory and dataset cache) with an uninterrupted run.

The pipeline runs in processes (tests/run/chaos_runner.py, forked from a forkserver that has
imported the libraries once) that SIGKILL themselves at a
chosen moment: the N-th event (build start, temp folder made, parquet written, atomic file
or folder rename before/after, mask training step) of one stage call. The uninterrupted
reference run counts the events per call and snapshots the runs root and cache before each
call builds, so a kill in a late stage starts from the state that stage would see.

Kills come in chains: kill at a moment, rerun and kill that rerun at a later call, ..., then
one uninterrupted rerun; every kill's state is thus picked up by a rerun (and after each
kill every visible stage folder and built dataset is complete). After the final
rerun, whatever dot-named leftovers remain (temp folders of killed builders, stale lock
files, checkpoints of finished masks) must be what `maskshare runs clean --stale-minutes 0
--yes` deletes (in the runs root and in the cache); then every file must equal the
reference's, ignoring only fields that record time (scripts/compare_runs.py).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import shutil
from collections import Counter
from pathlib import Path

import chaos_runner
import pytest

from maskshare.artifacts import is_complete
from maskshare.cli import main
from run_helpers import compare_runs, dot_entries, stage_dirs, subprocess_env

STAGE_OF = {"prepare": "prepare", "dataset": "dataset", "groups": "groups",
            "slot": "stats", "attribution": "attribution", "masks": "masks",
            "evaluation": "evaluate"}
KILLS = int(os.environ.get("MASKSHARE_CHAOS_KILLS", "32"))
SEED = int(os.environ.get("MASKSHARE_CHAOS_SEED", "15"))


def stage(call: str) -> str:
    return STAGE_OF[call.split()[0]]


class Runner:
    """Starts tests/run/chaos_runner.py runs as forks of one forkserver that has imported the
    libraries: each run is a fresh process that has run nothing before."""

    def __init__(self, config: Path, cache: Path):
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(chaos_runner.PRELOAD)
        self.config, self.log = config, cache.parent / "runner.log"
        # core slots of their own: the test's runs take turns with each other, not with
        # whatever else runs on the machine
        self.env = {**subprocess_env(cache), "MASKSHARE_SLOTS_DIR": str(cache.parent / "slots")}

    def __call__(self, *args: str) -> tuple[int, str]:
        """(exit status, -9 when killed; the run's output)."""
        p = self.ctx.Process(target=chaos_runner.child,
                             args=([str(self.config), *args], self.env, str(self.log)))
        p.start()
        p.join(600)
        if p.exitcode is None:
            p.kill()
            p.join()
        return p.exitcode, self.log.read_text()[-3000:]


def restore(snapshot: Path, work: Path) -> None:
    """The runs root and cache as `snapshot` holds them (fresh for the `prepare` moments)."""
    for name in ("runs", "cache"):
        shutil.rmtree(work / name, ignore_errors=True)
        if (snapshot / name).exists():
            shutil.copytree(snapshot / name, work / name)


def draw_chains(rng: random.Random, events: dict, order: list[str], kills: int,
                forced: list[tuple[str, str, int]]) -> list[list[tuple[str, str, int]]]:
    """Chains of 1-4 kill moments (call, event, n) at strictly later calls of the plan
    (`order`), `kills` moments in all: the `forced` ones, then the stages in turn (so each
    gets its share): a random call of the stage, event and count. A chain starts at the
    first moment not yet used and goes on with the nearest later ones."""
    by_stage: dict[str, list[str]] = {}
    for call in order:
        by_stage.setdefault(stage(call), []).append(call)
    stages = sorted(by_stage)
    moments = list(forced)
    while len(moments) < kills:
        call = rng.choice(by_stage[stages[len(moments) % len(stages)]])
        event = rng.choice(sorted(events[call]))
        moments.append((call, event, rng.randint(1, events[call][event])))
    chains = []
    while moments:
        chain, want = [moments.pop(0)], rng.randint(1, 4)
        for m in sorted(moments, key=lambda m: order.index(m[0])):
            if len(chain) < want and order.index(m[0]) > order.index(chain[-1][0]):
                chain.append(m)
                moments.remove(m)
        chains.append(chain)
    return chains


def assert_visible_folders_complete(work: Path) -> None:
    """A kill leaves every stage folder and built dataset either complete or absent."""
    for run in (work / "runs").glob("*"):
        for d in stage_dirs(run):
            assert is_complete(d), d
    for d in (work / "cache" / "datasets").glob("[!.]*"):
        assert is_complete(d), d


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


PARTS = 2  # the chains run as this many tests, so that xdist workers share them


@pytest.fixture(scope="module")
def chaos_plan(tmp_path_factory):
    """The uninterrupted reference run (its events per call and the snapshots before each
    call), and the kill chains drawn from it; once per worker process, shared by the parts."""
    from maskshare.testing import write_tiny_run_setup

    tmp_path = tmp_path_factory.mktemp("chaos")
    work, snaps, ref = tmp_path / "work", tmp_path / "snapshots", tmp_path / "reference"
    config = write_tiny_run_setup(work)  # runs root work/runs; the cache is work/cache
    cache = work / "cache"
    runner = Runner(config, cache)
    rc, out = runner("count", str(tmp_path / "events.json"), str(snaps))
    assert rc == 0, out
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
    # all parts together: every moment drawn, and a kill in every stage of the plan
    drawn = [m for chain in chains for m in chain]
    assert len(drawn) >= KILLS and {stage(c) for c, _, _ in drawn} == {stage(c) for c in order}
    assert all(m in drawn for m in forced)
    return runner, work, ref, snapshot, chains


@pytest.mark.slow
@pytest.mark.spread
@pytest.mark.parametrize("part", range(PARTS))
def test_random_kills_in_every_stage_rerun_to_the_uninterrupted_artifacts(chaos_plan, part,
                                                                          capsys):
    runner, work, ref, snapshot, chains = chaos_plan
    chains = chains[part::PARTS]
    killed, leftovers, compare = Counter(), Counter(), compare_runs().compare
    for chain in chains:
        restore(snapshot[chain[0][0]], work)
        for call, event, n in chain:
            rc, out = runner("kill", call, event, str(n))
            assert rc == -9, (call, event, n, rc, out)
            killed[stage(call)] += 1
            assert_visible_folders_complete(work)
        rc, out = runner("run")
        assert rc == 0, (chain, out)
        leftovers += clean_leftovers(work)
        for name in ("runs", "cache"):
            assert compare(ref / name, work / name) == [], (chain, name)

    total = sum(killed.values())
    # every kill of this part's chains happened (all parts' chains hold >= KILLS moments
    # and cover every stage: see chaos_plan)
    assert total == sum(len(c) for c in chains)
    with capsys.disabled():
        print(f"\nchaos part {part}: {total} kills ("
              + ", ".join(f"{s} {killed[s]}" for s in sorted(killed)) + f") in {len(chains)} "
              f"chains, {len(chains)} final reruns identical to the uninterrupted run; "
              f"leftovers removed by runs clean: {dict(leftovers) or 'none'}")
