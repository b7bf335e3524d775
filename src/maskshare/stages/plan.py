"""A run as a plan: the list of stage calls in dependency order, and the runner.

    dataset -> groups(kind) -> stats(kind)     for every grouping the variants need
            -> attribution(variant)            node attribution (attribution.variants)
            -> masks(variant, lambda, seed)    lambdas ascending: with masks.continue_sweep a
                                               chain per (variant, seed), each lambda starting
                                               from the previous one's mask; chains in parallel
            -> refinement rounds               more mask calls, from the trained masks' fits
                                               (`refinement_rounds`, maskshare.masks.sweep)
            -> evaluate

The plan grows once its first mask calls are done: `refinement_rounds` yields the next
round's mask calls (lambdas between or beyond the trained ones, each a content-addressed
StageCall whose `after` is the mask it continues) until the sweep's rule adds none; every
executor runs them before the evaluation, which reads the whole sweep
(`evaluation.sweep_fits.sweep_lambdas`, the same rounds replayed from the fits).

This is the only place that orders the stages: `maskshare.stages.pipeline.run_pipeline` executes
the plan in process; the Prefect flows (flows/) run each `StageCall` as a task named after
its stage, fanning the mask calls out to workers.

A stage declares which config fields its work depends on (`inputs`); a call's `key`
hashes its stage, its arguments, those fields and the keys of the calls before it that it
reads, so a changed input changes the key of every call downstream of it: the plan's
declared data flow, checked by tests. Outputs are not located by key: the run directory's
own hash covers the whole config and the input files, and the paths inside it stay those
of `RunLayout`, so existing runs keep their bytes. Before building, the runner checks the call's
output: complete (manifest present, file hashes matching) means skipped, logged once as
"cached: <what>". A build holds the output's stage lock (one builder per output across
processes) and this process's core slots (runs on one machine take turns).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maskshare.artifacts import hash_config, is_complete, stage_lock
from maskshare.config import RunConfig
from maskshare.evaluation.sweep_fits import sweep_round
from maskshare.run.compute_slot import compute_slot
from maskshare.run.layout import RunLayout
from maskshare.run.resources import load_run_config
from maskshare.run.variants import Variant, attribution_variants, grouping_kinds, mask_jobs
from maskshare.runtime import thread_count
from maskshare.stages import attribution, dataset, evaluate, groups, masks, stats

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One kind of work: what it reads from the config, how it builds, where it writes."""

    name: str
    build: Callable[..., Path]                  # build(run, **params) -> output dir
    output: Callable[..., Path]                 # output(layout, **params) -> output dir
    describe: Callable[..., str]                # the "cached: ..." label
    inputs: tuple[str, ...]                     # config fields (dotted) its key hashes
    also_needs: Callable[[RunLayout], list[Path]] = lambda layout: []  # files besides output
    fan_out: bool = False                       # calls may run in parallel, each after its `after`


STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("dataset", dataset.build, lambda lo: lo.dataset, lambda: "dataset",
          inputs=("model", "seed", "dataset")),
    Stage("groups", groups.build, lambda lo, kind: lo.groups(kind),
          lambda kind: f"groups {kind}", inputs=("seed", "grouping", "evaluate.seeds")),
    Stage("stats", stats.build, lambda lo, kind: lo.stats(kind),
          lambda kind: f"slot stats {kind}", inputs=("saes", "masks.batch_size")),
    # the training prompts as the masks stage batches them (seeded sample, batch size), the
    # error term; the ablation is the variant's
    Stage("attribution", attribution.build, lambda lo, variant: lo.attribution(variant),
          lambda variant: f"attribution {variant}",
          inputs=("saes", "seed", "masks.error", "masks.batch_size", "masks.max_train_prompts",
                  "attribution")),
    Stage("masks", masks.build,
          lambda lo, variant, lam, seed, start=None: lo.masks(variant, lam, seed),
          lambda variant, lam, seed, start=None: f"masks {variant} lambda={lam:g} seed={seed}",
          # evaluate.select_limit: the sample its fit (summary.json) is measured on
          inputs=("saes", "masks", "evaluate.select_limit"), fan_out=True),
    Stage("evaluate", evaluate.build, lambda lo: lo.evaluate, lambda: "evaluation",
          inputs=("saes", "evaluate", "masks.lambdas", "masks.sweep", "masks.error"),
          # written after the folder, in this order: a kill between them leaves the
          # folder complete, and the rerun must still write both
          also_needs=lambda lo: [lo.metrics, lo.report]),
]}


@dataclass(frozen=True)
class StageCall:
    """One stage applied to small JSON-able arguments (`params`) within a run."""

    stage: str
    params: dict[str, Any] = field(default_factory=dict)
    key: str = ""
    after: tuple[str, ...] = ()                 # keys of the calls it reads from

    @property
    def spec(self) -> Stage:
        return STAGES[self.stage]

    def output(self, run: str | Path) -> Path:
        return self.spec.output(RunLayout(run), **self.params)

    def describe(self) -> str:
        return self.spec.describe(**self.params)

    def is_done(self, run: str | Path) -> bool:
        return is_complete(self.output(run)) and all(
            p.is_file() for p in self.spec.also_needs(RunLayout(run)))

    def run(self, run: str | Path) -> Path:
        """Build the output unless it is complete; returns the output directory.

        One builder per output across processes (`stage_lock`): a second run of the same
        config waits, then finds the output complete and reuses it. The build holds this
        process's share of the machine's cores (`compute_slot`), so two runs on one machine
        take turns instead of oversubscribing the cores; "building: <what>" and "built:
        <what> (N s)" are logged while the slots are held."""
        out = self.output(run)
        if self._cached(run):
            return out
        with stage_lock(out):
            if self._cached(run):  # built by another process while this one waited
                return out
            threads = thread_count(load_run_config(run).threads)
            with compute_slot(threads, self.describe()):
                logger.info("building: %s", self.describe())
                t0 = time.perf_counter()
                try:
                    return self.spec.build(Path(run), **self.params)
                finally:  # still holding the core slots: logged before another run's start
                    logger.info("built: %s (%.1f s)", self.describe(), time.perf_counter() - t0)

    def _cached(self, run: str | Path) -> bool:
        if self.is_done(run):
            logger.info("cached: %s (%s)", self.describe(), self.output(run))
            return True
        return False


def _field(cfg: RunConfig, dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


def make_call(cfg: RunConfig, stage: str, after: list[StageCall] = (), **params) -> StageCall:
    inputs = {f: _field(cfg, f) for f in STAGES[stage].inputs}
    deps = tuple(c.key for c in after)
    return StageCall(stage, params, hash_config(stage, params, inputs, deps), deps)


def plan(cfg: RunConfig) -> list[StageCall]:
    """Every stage call of a run of `cfg`, in dependency order."""
    data = make_call(cfg, "dataset")
    calls = [data]
    stats_by_kind = {}
    for kind in grouping_kinds(cfg):
        g = make_call(cfg, "groups", [data], kind=kind.value)
        stats_by_kind[kind.value] = make_call(cfg, "stats", [g], kind=kind.value)
        calls += [g, stats_by_kind[kind.value]]
    attr = {v.name: make_call(cfg, "attribution", [stats_by_kind[v.grouping.value]],
                              variant=v.name)
            for v in attribution_variants(cfg)}
    calls += list(attr.values())
    calls += _mask_calls(cfg, stats_by_kind, attr)
    return [*calls, make_call(cfg, "evaluate", calls)]


def _mask_calls(cfg: RunConfig, stats_by_kind: dict[str, StageCall],
                attr: dict[str, StageCall]) -> list[StageCall]:
    """The mask calls (lambdas ascending per variant and seed), each after what it starts
    from (`masks.mask_start`): the previous lambda's mask (a chain per variant and seed), or
    the variant's attribution scores; then the evaluation after all of them."""
    out: list[StageCall] = []
    last: dict[tuple[str, int], StageCall] = {}
    for v, lam, seed in mask_jobs(cfg):
        how, _ = masks.mask_start(cfg, v, lam)
        after = [stats_by_kind[Variant.parse(v).grouping.value]]
        if how == "attribution":
            after.append(attr[v])
        elif how == "continue":
            after.append(last[(v, seed)])
        last[(v, seed)] = make_call(cfg, "masks", after, variant=v, lam=lam, seed=seed)
        out.append(last[(v, seed)])
    return out


def phases(calls: list[StageCall]) -> tuple[list[StageCall], list[StageCall], list[StageCall]]:
    """(calls before the fan-out, the fan-out calls, calls after): the fan-out calls depend
    on the first part and on each other only along their `after` keys (a continued sweep is
    a chain per variant and seed: `chains`), and only the last part depends on them."""
    idx = [i for i, c in enumerate(calls) if c.spec.fan_out]
    if not idx:
        return list(calls), [], []
    return list(calls[:idx[0]]), calls[idx[0]:idx[-1] + 1], list(calls[idx[-1] + 1:])


def chains(calls: list[StageCall]) -> list[list[StageCall]]:
    """`calls` (in plan order) cut into chains: a call goes after the one of `calls` its
    `after` names (at most one here: a mask continues one denser mask), or starts a chain.
    Chains are independent of each other: what runs in parallel."""
    where: dict[str, list[StageCall]] = {}
    out: list[list[StageCall]] = []
    for c in calls:
        prev = [k for k in c.after if k in where]
        if len(prev) > 1:
            raise ValueError(f"{c.describe()} reads {len(prev)} calls of its own phase")
        chain = where[prev[0]] if prev else []
        if not prev:
            out.append(chain)
        chain.append(c)
        where[c.key] = chain
    return out


def execute(calls: list[StageCall], run: str | Path) -> list[Path]:
    """Run every call in order in this process (complete outputs are skipped), the sweep's
    refinement rounds after the mask calls (before the calls that follow them)."""
    head, fan, tail = phases(calls)
    out = [c.run(run) for c in [*head, *fan]]
    if fan:
        for new in refinement_rounds(run, calls):
            out += [c.run(run) for c in new]
    return out + [c.run(run) for c in tail]


# ------------------------------------------------------------------ the sweep's refinement

def _seed_of_chain(cfg: RunConfig) -> dict[str, list[int]]:
    """{variant: its seeds} as `mask_jobs` trains them (the first seed's fits decide)."""
    out: dict[str, list[int]] = {}
    for v, _, seed in mask_jobs(cfg):
        if seed not in out.setdefault(v, []):
            out[v].append(seed)
    return out


def next_round(cfg: RunConfig, run: str | Path, calls: list[StageCall]) -> list[StageCall]:
    """The mask calls the sweep adds (`evaluation.sweep_fits.sweep_round`, maskshare.masks.sweep) given `calls`
    (the plan and its earlier rounds, every mask call trained): per variant, decided from
    its first seed's fits and trained at each of its seeds, each after the stats of its
    grouping and what it starts from (the mask it continues, or the attribution scores)."""
    if not cfg.masks.sweep.refine:
        return []
    mask_calls = [c for c in calls if c.stage == "masks"]
    by_key = {(c.params["variant"], c.params["lam"], c.params["seed"]): c for c in mask_calls}
    stats_of = {c.params["kind"]: c for c in calls if c.stage == "stats"}
    attr_of = {c.params["variant"]: c for c in calls if c.stage == "attribution"}
    out: list[StageCall] = []
    for v, seeds in _seed_of_chain(cfg).items():
        lams = sorted({lam for (name, lam, s) in by_key if name == v and s == seeds[0]})
        for n in sweep_round(cfg, run, v, lams):
            logger.info("sweep %s: adding lambda %g (%s)", v, n.lam, n.why)
            for seed in seeds:
                how, prev = masks.mask_start(cfg, v, n.lam, n.start)
                after = [stats_of[Variant.parse(v).grouping.value]]
                if how == "attribution":
                    after.append(attr_of[v])
                elif how == "continue":
                    after.append(by_key[(v, prev, seed)])
                out.append(make_call(cfg, "masks", after, variant=v, lam=n.lam, seed=seed,
                                     start=n.start))
    return out


def refinement_rounds(run: str | Path, calls: list[StageCall]):
    """Each round's new mask calls (`next_round`), computed once the previous round's are
    trained: the caller runs a round's calls (in order, or as chains in parallel: a call
    only reads calls of earlier rounds) before asking for the next."""

    cfg = load_run_config(run)
    calls = list(calls)
    while new := next_round(cfg, run, calls):
        yield new
        calls += new
