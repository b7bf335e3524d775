"""Sections of benchmarks/bench.py on the CPU side and the whole run: attention grouping
fit + assign on tiled real features, and `run_pipeline` cold then cached in a child
process."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

BENCH = Path(__file__).with_name("bench.py")  # the child process runs bench.py --pipeline-child

# ----------------------------------------------------------------------------- grouping
def tile_features(feats, tokens: list[list[int]], n_target: int, noise: float = 1e-3,
                  seed: int = 0):
    """Whole prompts repeated until >= n_target tokens: (TokenFeatures, items table) with
    fresh prompt ids and small Gaussian noise (noise * column std) on every copy."""
    import polars as pl

    from maskshare.grouping.features import TokenFeatures

    n_real = len(feats)
    reps = max(1, -(-n_target // n_real))
    rng = np.random.default_rng(seed)
    std = feats.matrix.std(axis=0, keepdims=True).astype(np.float32)
    mats = [feats.matrix] + [feats.matrix + (noise * std * rng.standard_normal(
        feats.matrix.shape)).astype(np.float32) for _ in range(reps - 1)]
    n_p = len(tokens)
    pids = np.concatenate([feats.prompt_id + k * n_p for k in range(reps)])
    f = TokenFeatures(np.concatenate(mats), pids, np.tile(feats.position, reps),
                      np.tile(feats.length, reps), feats.names)
    items = pl.DataFrame({"prompt_id": list(range(reps * n_p)),
                          "tokens": [list(t) for t in tokens] * reps})
    return f, items


def bench_grouping(model, feats, tokens: list[list[int]], sizes=(20_000, 100_000),
                   gcfg=None, seed: int = 0) -> list[dict]:
    """Attention grouping (the default config) fit + assign on tiled real features."""
    from maskshare.config import GroupingConfig
    from maskshare.grouping import make_grouping

    gcfg = gcfg or GroupingConfig()
    rows = []
    for n in sizes:
        f, items = tile_features(feats, tokens, n, seed=seed)
        tracemalloc.start()
        t0 = time.perf_counter()
        g = make_grouping(gcfg, seed=seed).fit(model, items, f)
        t1 = time.perf_counter()
        a = g.assign(model, items, f)
        t2 = time.perf_counter()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rows.append({"target_tokens": n, "tokens": len(f), "features": f.matrix.shape[1],
                     "real_tokens_tiled": len(feats), "clusterer": gcfg.clusterer,
                     "n_slots": g.n_slots, "pca_dims": g.meta.get("pca_dims"),
                     "fit_s": round(t1 - t0, 3), "assign_s": round(t2 - t1, 4),
                     "fit_assign_s": round(t2 - t0, 3),
                     "peak_traced_mb": round(peak / 2**20, 1),
                     "features_mb": round(f.matrix.nbytes / 2**20, 1),
                     "ood_fraction": round(a.ood_fraction, 4)})
        del f, items, g, a
    return rows


# ----------------------------------------------------------------------------- pipeline
def bench_pipeline(config: Path, device: str, threads: int, prefect: bool = True) -> dict:
    """The default pipeline in child processes: cold in-process (`run_pipeline`, a fresh
    runs_dir and a fresh cache dir holding only a link to the converted model), cached
    in-process, then (`prefect`) cold again through Prefect (`maskshare run`, its own
    fresh runs_dir and cache): the Prefect-against-in-process ratio of one invocation."""
    tmp = Path(tempfile.mkdtemp(prefix="maskshare-bench-"))
    cfg_path, env = _cold_setup(config, device, threads, tmp)
    out = {"config": str(config), "runner": "maskshare.stages.pipeline.run_pipeline (no Prefect)",
           "tmp": str(tmp)}
    for label in ("cold", "cached"):
        res = tmp / f"{label}.json"
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, str(BENCH), "--pipeline-child", str(cfg_path),
                            str(res)], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        entry = {"wall_s": round(wall, 1), "returncode": p.returncode}
        if res.is_file():
            entry.update(json.loads(res.read_text()))
        if p.returncode != 0:
            entry["stderr_tail"] = p.stderr[-2000:]
            out[label] = entry
            break
        out[label] = entry
    if prefect and out.get("cold", {}).get("returncode") == 0:
        out["prefect_cold"] = bench_prefect_cold(config, device, threads, tmp / "prefect")
        if out["prefect_cold"].get("returncode") == 0:
            out["prefect_ratio"] = round(out["prefect_cold"]["wall_s"] / out["cold"]["wall_s"],
                                         3)
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def _cold_setup(config: Path, device: str, threads: int, tmp: Path) -> tuple[Path, dict]:
    """(a copy of `config` writing under `tmp`/runs, the child's environment with a fresh
    cache `tmp`/cache that links the converted model only)."""
    from maskshare.config import config_data, dump_config, load_config, parse_config
    from maskshare.runtime import cache_dir

    cache = tmp / "cache"
    cache.mkdir(parents=True)
    models = cache_dir() / "models"
    if models.is_dir():
        (cache / "models").symlink_to(models)
    cfg = parse_config({**config_data(load_config(config)), "runs_dir": str(tmp / "runs"),
                        "device": device}, str(config))
    cfg_path = tmp / "config.yaml"
    cfg_path.write_text(dump_config(cfg))
    env = dict(os.environ, MASKSHARE_CACHE=str(cache), MASKSHARE_THREADS=str(threads),
               HF_HUB_OFFLINE="1")
    return cfg_path, env


def bench_prefect_cold(config: Path, device: str, threads: int, tmp: Path) -> dict:
    """`maskshare run --config` (through Prefect, an ephemeral server) cold, in a child:
    wall seconds (the server's start included), seconds per stage, evaluation share."""
    cfg_path, env = _cold_setup(config, device, threads, tmp)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "maskshare.cli", "run", "--config",
                        str(cfg_path)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    entry = {"wall_s": round(wall, 1), "returncode": p.returncode,
             "runner": "maskshare run (Prefect, ephemeral server)"}
    if p.returncode != 0:
        entry["stderr_tail"] = p.stderr[-2000:]
        return entry
    run = Path(p.stdout.strip().splitlines()[-1])
    entry.update({"run_dir": str(run), "stage_s": stage_timings(run),
                  **evaluation_share(run, wall)})
    return entry


def _pipeline_child(config: str, out: str) -> None:
    import logging

    from maskshare.config import load_config
    from maskshare.stages.pipeline import run_pipeline

    logging.basicConfig(level=logging.INFO)
    t0 = time.perf_counter()
    run = run_pipeline(load_config(config))
    inner = time.perf_counter() - t0
    Path(out).write_text(json.dumps({
        "run_dir": str(run), "inner_s": round(inner, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "stage_s": stage_timings(run), **evaluation_share(run, inner)}))


def evaluation_share(run: Path, inner_s: float) -> dict:
    """The evaluate stage's timings (metrics.json: its phases, the report included) and its
    share of the run's `inner_s` seconds; empty when the run has none (a cached rerun keeps
    the cold run's metrics, so its share would be of another run)."""
    t = json.loads((Path(run) / "metrics.json").read_text()).get("timings") or {}
    if "evaluate_and_report_s" not in t:
        return {}
    return {"evaluate_timings": t,
            "evaluation_share": round(t["evaluate_and_report_s"] / inner_s, 4)}


def stage_timings(run: Path) -> dict[str, float]:
    """Seconds per stage kind (dataset, groups, stats, masks, evaluate), summed over the
    stage directories' manifests (a cached rerun keeps the cold run's manifests)."""
    out: dict[str, float] = {}
    for m in sorted(Path(run).glob("**/manifest.json")):
        t = (json.loads(m.read_text()).get("timings") or {})
        kind = m.relative_to(run).parts[0]
        out[kind] = round(out.get(kind, 0.0) + sum(v for v in t.values()
                                                   if isinstance(v, (int, float))), 1)
    return out
