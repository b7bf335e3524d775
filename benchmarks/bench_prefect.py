"""Where Prefect's tax goes: the same stage calls of a built run timed in-process and as
Prefect tasks, with Prefect's background work at its normal priority and lowered
(`flows.quiet_background`), interleaved in one invocation.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_prefect.py --run RUN [--repeats 3]

Each (repeat, mode) is a child process working on its own copy of RUN with the timed
stages' outputs removed: the main grouping's slot statistics and the main variant's first
mask call (its densest lambda). The model and SAEs are loaded before the clock starts.
Modes: `inprocess` (StageCall.run), `prefect` (the pipeline's own stage tasks in a flow,
ephemeral server, background lowered: what `maskshare run` does) and `prefect-normal`
(the same with MASKSHARE_PREFECT_BACKGROUND=normal). Besides the wall seconds of each
call, it records the CPU seconds the ephemeral server process and this process's
non-main threads used meanwhile. Prints a table and the median ratio of each mode to
in-process; writes benchmarks/results/prefect.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("inprocess", "prefect", "prefect-normal")


def _proc_cpu_s(pid: int, stat: str = "/proc/{}/stat") -> float:
    """utime + stime of process `pid` (all its threads; with `stat` =
    "/proc/self/task/{}/stat", of this process's thread `pid` alone), seconds; 0 where
    unreadable."""
    try:
        fields = Path(stat.format(pid)).read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _threads_cpu_s(skip_main: bool = True) -> float:
    """CPU seconds of this process's Python threads other than the main one."""
    import threading

    total = 0.0
    for t in threading.enumerate():
        if skip_main and t is threading.main_thread() or t.native_id is None:
            continue
        total += _proc_cpu_s(t.native_id, "/proc/self/task/{}/stat")
    return total


def timed_calls(run: Path) -> list:
    """The calls this benchmark times: the main grouping's slot statistics, then the main
    variant's first mask call."""
    from maskshare.run.resources import load_run_config
    from maskshare.run.variants import main_variant
    from maskshare.stages.plan import phases, plan

    cfg = load_run_config(run)
    main = main_variant(cfg)
    head, fan, _ = phases(plan(cfg))
    stats = next(c for c in head if c.stage == "stats"
                 and c.params.get("kind") == main.grouping.value)
    mask = next(c for c in fan if c.params.get("variant") == main.name)
    return [stats, mask]


def child(mode: str, src: str, out: str) -> None:
    from maskshare.run.resources import get_model, get_saes, load_run_config

    tmp = Path(tempfile.mkdtemp(prefix="maskshare-bench-prefect-"))
    run = tmp / Path(src).name
    shutil.copytree(src, run, symlinks=True)
    calls = timed_calls(run)
    for c in calls:
        shutil.rmtree(c.output(run), ignore_errors=True)
    cfg = load_run_config(run)
    get_model(cfg), get_saes(cfg)  # loaded before the clock, as a warm process has them
    rows = []
    if mode == "inprocess":
        for c in calls:
            t0 = time.perf_counter()
            c.run(run)
            rows.append({"stage": c.stage, "wall_s": time.perf_counter() - t0})
        server_cpu = threads_cpu = 0.0
    else:
        if mode == "prefect-normal":
            os.environ["MASKSHARE_PREFECT_BACKGROUND"] = "normal"
        from flows import configure_prefect_env

        configure_prefect_env()
        from prefect import flow
        from prefect.server.api.server import SubprocessASGIServer

        from flows import quiet_background
        from flows.pipeline import STAGE_TASKS

        quiet_background()
        server = SubprocessASGIServer()
        server.start()
        pid = server.server_process.pid

        @flow(name="bench-prefect")
        def bench_flow() -> list:
            out = []
            for c in calls:
                t0 = time.perf_counter()
                STAGE_TASKS[c.stage](str(run), c.stage, c.params)
                out.append({"stage": c.stage, "wall_s": time.perf_counter() - t0})
            return out

        s0, th0 = _proc_cpu_s(pid), _threads_cpu_s()
        rows = bench_flow()
        server_cpu, threads_cpu = _proc_cpu_s(pid) - s0, _threads_cpu_s() - th0
    Path(out).write_text(json.dumps({"mode": mode, "calls": rows,
                                     "server_cpu_s": round(server_cpu, 2),
                                     "background_threads_cpu_s": round(threads_cpu, 2)}))
    shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", help="a built run directory")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "prefect.json"))
    ap.add_argument("--child", nargs=3, metavar=("MODE", "RUN", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    if not args.run:
        ap.error("--run RUN is required")
    results: dict[str, list] = {m: [] for m in args.modes}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            order = args.modes[r % len(args.modes):] + args.modes[:r % len(args.modes)]
            for mode in order:
                out = Path(tmp) / f"{mode}-{r}.json"
                p = subprocess.run([sys.executable, __file__, "--child", mode, args.run,
                                    str(out)], capture_output=True, text=True)
                if p.returncode != 0:
                    print(p.stderr[-3000:], file=sys.stderr)
                    return 1
                res = json.loads(out.read_text())
                results[mode].append(res)
                walls = " ".join(f"{c['stage']} {c['wall_s']:.1f}s" for c in res["calls"])
                print(f"repeat {r} {mode:>15}: {walls}; server CPU {res['server_cpu_s']} s, "
                      f"background threads CPU {res['background_threads_cpu_s']} s", flush=True)
    summary = {}
    base = results.get("inprocess")
    for mode, reps in results.items():
        tot = [sum(c["wall_s"] for c in r["calls"]) for r in reps]
        line = {"median_total_s": round(statistics.median(tot), 2),
                "median_server_cpu_s": statistics.median(r["server_cpu_s"] for r in reps)}
        if base and mode != "inprocess":
            ratios = [t / sum(c["wall_s"] for c in b["calls"]) for t, b in zip(tot, base)]
            line["median_ratio_to_inprocess"] = round(statistics.median(ratios), 3)
        summary[mode] = line
        print(f"{mode:>15}: {line}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"run": args.run, "repeats": results,
                                          "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
