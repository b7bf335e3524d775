"""Prefect flows: one per stage, `pipeline` composing them, `sweep` fanning out on Dask.

Flows are thin: they resolve the config, call `maskshare.pipeline` stage functions as
tasks (which pass run-directory paths and small values, never tensors), and publish
artifacts. Caching is by content: every stage writes a content-addressed, manifest-checked
directory and a rerun of an unchanged config finds it and skips the work (the task logs
"cached: ..."); Prefect's own result cache is not used on top, so a deleted or corrupted
artifact is always rebuilt rather than trusted from a stale Prefect record.
Retries apply to I/O-bound steps only, never to bad input (UserError) or numerical faults.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from maskshare import pipeline as core
from maskshare.config import RunConfig, load_config
from maskshare.errors import UserError


def _retry_unless_user_error(task_, task_run, state) -> bool:
    """Retry only on failures that may be transient (OS/I/O errors), never on bad input."""
    try:
        state.result()
    except UserError:
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
    return str(core.prepare_run(config))


@task(name="build-dataset", **IO_TASK)
def dataset_task(run: str) -> str:
    return str(core.stage_dataset(Path(run)))


@task(name="group-positions", **COMPUTE_TASK)
def groups_task(run: str, kind: str) -> str:
    return str(core.stage_groups(Path(run), kind))


@task(name="slot-stats", **COMPUTE_TASK)
def stats_task(run: str, kind: str) -> str:
    return str(core.stage_stats(Path(run), kind))


@task(name="train-masks", **COMPUTE_TASK)
def masks_task(run: str, variant: str, lam: float, seed: int) -> str:
    return str(core.stage_masks(Path(run), core.Variant.parse(variant), lam, seed))


@task(name="evaluate", **COMPUTE_TASK)
def evaluate_task(run: str) -> dict:
    return core.stage_evaluate(Path(run))


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
    return dataset_task(run)


@flow(name="group-positions")
def group_positions_flow(run: str) -> list[str]:
    cfg = core.load_run_config(Path(run))
    return [groups_task(run, k.value) for k in core.grouping_kinds(cfg)]


@flow(name="train-masks")
def train_masks_flow(run: str, parallel: bool = False) -> list[str]:
    """Slot stats per grouping, then every (variant, lambda, seed) mask: one after another
    in this process, or (`parallel`, with a Dask task runner) submitted to the runner's
    worker processes. Never to threads of one process: the jobs share the model's hooks."""
    cfg = core.load_run_config(Path(run))
    for k in core.grouping_kinds(cfg):
        stats_task(run, k.value)
    jobs = core.mask_jobs(cfg)
    if not parallel:
        return [masks_task(run, v, lam, seed) for v, lam, seed in jobs]
    futures = [masks_task.submit(run, v, lam, seed) for v, lam, seed in jobs]
    return [f.result() for f in futures]


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
    metrics = evaluate_task(run)
    publish_artifacts(run, metrics)
    return metrics


def publish_artifacts(run: str, metrics: dict) -> None:
    rows = [{"metric": k, "value": metrics.get(k)} for k in core.HEADLINE_METRICS
            if k in metrics]
    rows += [{"metric": k, "value": v} for k, v in metrics.items()
             if k.startswith("baseline_") and isinstance(v, int | float)]
    create_table_artifact(key="maskshare-metrics", table=rows,
                          description=f"headline metrics of {Path(run).name}")
    md = "\n".join([f"# maskshare run `{Path(run).name}`", "",
                    "| metric | value |", "|---|---|",
                    *[f"| {r['metric']} | {r['value']:.4g} |" if isinstance(r["value"], float)
                      else f"| {r['metric']} | {r['value']} |" for r in rows],
                    "", f"Report: `{Path(run) / 'report.html'}`"])
    create_markdown_artifact(key="maskshare-summary", markdown=md)
    create_link_artifact(key="maskshare-report", link=(Path(run) / "report.html").resolve().as_uri(),
                         link_text="report.html")


@flow(name="pipeline", log_prints=True)
def pipeline_flow(config: RunConfig | None = None, config_path: str | None = None,
                  workers: int = 1, dask_address: str | None = None) -> str:
    """The whole run for one config: datasets -> groups -> masks -> evaluate.

    With `workers` > 1 (or a `dask_address`) mask training fans out over a Dask cluster;
    results are identical to a sequential run (every job is seeded and self-contained)."""
    log = get_run_logger()
    cfg = resolve_config(config, config_path)
    fresh = not core.run_dir_for(cfg).exists()
    run = prepare_run_task(cfg)
    log.info("run directory: %s", run)
    try:
        dataset_task(run)
        group_positions_flow(run)
        if workers > 1 or dask_address:
            train_masks_flow.with_options(task_runner=dask_runner(workers, dask_address))(
                run, parallel=True)
        else:
            train_masks_flow(run)
        evaluate_flow(run)
    except UserError:  # bad input leaves nothing behind (as core.run_pipeline)
        if fresh:
            shutil.rmtree(run, ignore_errors=True)
        raise
    return run
