"""`sweep`: the pipeline's costly part (mask training) mapped over datasets x groupings x
ablations x sparsity settings, on a Dask cluster through prefect-dask.

A local cluster by default (`n_workers` processes, one torch thread each), or an existing
scheduler by address. Each run's plan (`maskshare.stages.plan`) is cut at its fan-out:
the calls before it (dataset, groups, slot stats, attribution) run first, run by run; then
the mask calls of every run are submitted to the task runner together (each chain of a
continued sweep in order); then each run's refinement rounds (more lambdas where its
curve has holes or ends short, `maskshare.masks.sweep`); then the rest (evaluate). Results are the same as a sequential sweep: every job is seeded and
writes its own content-addressed directory.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from flows.pipeline import prepare_run_task, refine_sweep, run_calls, submit_calls
from maskshare.config import GroupingKind, RunConfig, load_config, parse_config
from maskshare.run.resources import load_run_config as load_run_config_of
from maskshare.stages.plan import phases, plan


def sweep_configs(base: RunConfig, datasets: list[str] | None = None,
                  groupings: list[str] | None = None, ablations: list[str] | None = None,
                  lambdas: list[float] | None = None) -> list[RunConfig]:
    """One config per dataset, with the requested comparisons and sparsity settings."""
    out = []
    for name in datasets or [base.dataset.name]:
        upd = {"dataset": base.dataset.model_copy(update={"name": name}),
               "name": f"{base.name}-{name}"}
        cfg = base.model_copy(update=upd, deep=True)
        if groupings is not None:
            cfg.evaluate.baselines = [GroupingKind(g) for g in groupings
                                      if GroupingKind(g) != cfg.grouping.kind]
        if ablations is not None:
            cfg.evaluate.ablations = [a for a in ablations if a != cfg.masks.ablation.value]
        if lambdas is not None:
            cfg.masks.lambdas = list(lambdas)
        # validated again: the overrides must stay inside each field's domain (UserError)
        out.append(parse_config(cfg.model_dump(), f"sweep config for {name!r}"))
    return out


@flow(name="sweep")
def sweep_flow(config_path: str, datasets: list[str] | None = None,
               groupings: list[str] | None = None, ablations: list[str] | None = None,
               lambdas: list[float] | None = None) -> list[str]:
    log = get_run_logger()
    cfgs = sweep_configs(load_config(config_path), datasets, groupings, ablations, lambdas)
    runs = [(prepare_run_task(cfg), phases(plan(cfg))) for cfg in cfgs]
    for run, (head, _, _) in runs:
        run_calls(run, head)
    futures = [f for run, (_, fan, _) in runs for f in submit_calls(run, fan)]
    log.info("submitted %d mask-training jobs", len(futures))
    for f in futures:
        f.result()
    for run, _ in runs:  # each run's sweep refinement, its rounds on the same runner
        refine_sweep(run, plan(load_run_config_of(run)), parallel=True)
    for run, (_, _, tail) in runs:
        run_calls(run, tail)
    return [run for run, _ in runs]


def run_sweep(config_path: str, *, dask_address: str | None = None, n_workers: int = 2,
              sequential: bool = False, **kwargs) -> list[str]:
    """Run the sweep on a Dask cluster (local by default), or sequentially."""
    if sequential:
        from prefect.task_runners import ThreadPoolTaskRunner

        runner = ThreadPoolTaskRunner(max_workers=1)
    else:
        from flows.pipeline import dask_runner

        runner = dask_runner(n_workers, dask_address)
    return sweep_flow.with_options(task_runner=runner)(config_path=str(Path(config_path)), **kwargs)
