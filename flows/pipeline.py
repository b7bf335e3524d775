"""Prefect flows over the run's plan: `pipeline`, its parts, and the Dask fan-out.

Flows are thin: they resolve the config, run the stage calls of
`maskshare.stages.plan.plan(cfg)` (the one place that orders the stages) as tasks named
after their stage, passing run-directory paths and small values (never tensors), and
publish artifacts. The mask calls form independent chains (one per variant and seed when
the sweep continues from lambda to lambda): with a Dask task runner they are submitted to
worker processes, each waiting for the call it continues. Caching is by content: every stage writes a
manifest-checked directory and a rerun of an unchanged config finds it and skips the work
(the task logs "cached: ..."); Prefect's own result cache is not used on top, so a
deleted or corrupted artifact is always rebuilt rather than trusted from a stale record.
Retries apply to I/O-bound steps only, never to bad input (UserError) or numerical faults.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows import quiet_threads
from maskshare.artifacts import WriteError
from maskshare.config import RunConfig, load_config
from maskshare.errors import UserError
from maskshare.evaluation.comparison import HEADLINE_METRICS
from maskshare.run.layout import RunLayout
from maskshare.run.resources import load_run_config, prepare_run, run_dir_for
from maskshare.stages.plan import STAGES, StageCall, phases, plan, refinement_rounds


def _retry_unless_user_error(task_, task_run, state) -> bool:
    """Retry only on failures that may be transient (OS/I/O errors), never on bad input or
    on a write the user must fix (a full disk, no permission: WriteError)."""
    try:
        state.result()
    except (UserError, WriteError):
        return False
    except (OSError, TimeoutError):
        return True
    except Exception:
        return False
    return False


IO_TASK = dict(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2,
               retry_condition_fn=_retry_unless_user_error)
COMPUTE_TASK = dict(cache_policy=NO_CACHE)


@task(name="prepare-run", **IO_TASK)
def prepare_run_task(config: RunConfig) -> str:
    return str(prepare_run(config))


def _run_stage(run: str, stage: str, params: dict) -> str:
    """One stage call of the run (skipped when its output is complete), with Prefect's
    background threads below the compute's priority (`flows.quiet_threads`)."""
    quiet_threads()
    return str(StageCall(stage, params).run(Path(run)))


# one task per stage, named after it; building the dataset is the I/O-bound one
STAGE_TASKS = {name: task(_run_stage, name=name,
                          **(IO_TASK if name == "dataset" else COMPUTE_TASK))
               for name in STAGES}


def run_calls(run: str, calls: list[StageCall], parallel: bool = False) -> list[str]:
    """Each call as its stage's task: in order in this process, or (`parallel`, for the
    fan-out calls under a Dask task runner) submitted to the runner's workers, each waiting
    for the calls of `calls` it reads (a continued sweep's chain). Never to threads of one
    process: the jobs would share the model's hooks."""
    if not parallel:
        return [STAGE_TASKS[c.stage](run, c.stage, c.params) for c in calls]
    return [f.result() for f in submit_calls(run, calls)]


def submit_calls(run: str, calls: list[StageCall]) -> list:
    """Submit `calls` (plan order) to the flow's task runner; a call whose `after` names an
    earlier call of `calls` waits for that call's future."""
    futures: dict[str, object] = {}
    for c in calls:
        wait = [futures[k] for k in c.after if k in futures]
        futures[c.key] = STAGE_TASKS[c.stage].submit(run, c.stage, c.params, wait_for=wait)
    return list(futures.values())


def resolve_config(config: RunConfig | None, config_path: str | None) -> RunConfig:
    if config is not None:
        return config
    if config_path is None:
        raise UserError("give a config or a config_path")
    return load_config(config_path)


@flow(name="build-datasets")
def build_datasets_flow(config: RunConfig | None = None, config_path: str | None = None) -> str:
    cfg = resolve_config(config, config_path)
    run = prepare_run_task(cfg)
    return run_calls(run, [c for c in plan(cfg) if c.stage == "dataset"])[0]


@flow(name="group-positions")
def group_positions_flow(run: str) -> list[str]:
    """The plan's calls before the mask fan-out, the dataset excepted: groupings and their
    slot statistics."""
    head, _, _ = phases(plan(load_run_config(run)))
    return run_calls(run, [c for c in head if c.stage != "dataset"])


@flow(name="train-masks")
def train_masks_flow(run: str, parallel: bool = False) -> list[str]:
    """Every (variant, lambda, seed) mask of the plan: one after another in this process,
    or (`parallel`, with a Dask task runner) submitted to the runner's worker processes;
    then the sweep's refinement rounds (`refinement_rounds`), each round's calls submitted
    the same way once the previous round is trained."""
    calls = plan(load_run_config(run))
    _, fan, _ = phases(calls)
    out = run_calls(run, fan, parallel)
    return out + refine_sweep(run, calls, parallel)


def refine_sweep(run: str, calls: list[StageCall], parallel: bool = False) -> list[str]:
    """The refinement rounds of a run whose plan is `calls` and whose first mask calls are
    trained: each round run as `run_calls` runs the fan-out."""
    out: list[str] = []
    for new in refinement_rounds(run, calls):
        get_run_logger().info("sweep refinement: %d more mask(s)", len(new))
        out += run_calls(run, new, parallel)
    return out


def dask_runner(workers: int, address: str | None = None):
    """A prefect-dask runner: an existing scheduler, or a local cluster of `workers`
    processes with one torch thread each (two processes x two threads on two cores were
    measured ~10x slower than one thread each)."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1,
                                          "processes": True, "env": {"MASKSHARE_THREADS": "1"}})


@flow(name="evaluate")
def evaluate_flow(run: str) -> dict:
    _, _, tail = phases(plan(load_run_config(run)))
    run_calls(run, tail)
    metrics = json.loads(RunLayout(run).metrics.read_text())
    publish_artifacts(run, metrics)
    return metrics


def publish_artifacts(run: str, metrics: dict) -> None:
    rows = [{"metric": k, "value": metrics.get(k)} for k in HEADLINE_METRICS
            if k in metrics]
    rows += [{"metric": k, "value": v} for k, v in metrics.items()
             if k.startswith("baseline_") and isinstance(v, int | float)]
    create_table_artifact(key="maskshare-metrics", table=rows,
                          description=f"headline metrics of {Path(run).name}")
    md = "\n".join([f"# maskshare run `{Path(run).name}`", "",
                    "| metric | value |", "|---|---|",
                    *[f"| {r['metric']} | {r['value']:.4g} |" if isinstance(r["value"], float)
                      else f"| {r['metric']} | {r['value']} |" for r in rows],
                    "", f"Report: `{RunLayout(run).report}`"])
    create_markdown_artifact(key="maskshare-summary", markdown=md)
    report = RunLayout(run).report
    create_link_artifact(key="maskshare-report", link=report.resolve().as_uri(),
                         link_text=report.name)


@flow(name="pipeline", log_prints=True)
def pipeline_flow(config: RunConfig | None = None, config_path: str | None = None,
                  workers: int = 1, dask_address: str | None = None) -> str:
    """The whole run for one config: the plan's calls up to the mask fan-out, the mask
    calls (`train-masks`), then the rest (`evaluate`, which publishes the artifacts).

    With `workers` > 1 (or a `dask_address`) mask training fans out over a Dask cluster;
    results are identical to a sequential run (every job is seeded and self-contained)."""
    log = get_run_logger()
    cfg = resolve_config(config, config_path)
    fresh = not run_dir_for(cfg).exists()
    run = prepare_run_task(cfg)
    log.info("run directory: %s", run)
    try:
        head, _, _ = phases(plan(cfg))
        run_calls(run, head)
        if workers > 1 or dask_address:
            train_masks_flow.with_options(task_runner=dask_runner(workers, dask_address))(
                run, parallel=True)
        else:
            train_masks_flow(run)
        evaluate_flow(run)
    except UserError:  # bad input leaves nothing behind (as maskshare.stages.pipeline.run_pipeline)
        if fresh:
            shutil.rmtree(run, ignore_errors=True)
        raise
    return run
