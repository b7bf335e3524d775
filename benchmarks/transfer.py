"""Issue 22: do attention slots transfer to new prompt structures? Validation first.

Every candidate grouping is a set of `grouping:` overrides of the attention kind. It is
scored on leave-one-training-group-out folds of the training data only
(benchmarks/transfer_folds.py; a fold never contains a dataset's own held-out groups), and
the held-out splits (agreement `rc`, element-questions `dialogue`) are measured only with
`--final`, for the setting chosen on validation and for the baseline.

    .venv/bin/python benchmarks/transfer.py --folds agreement --candidates base uniform
    .venv/bin/python benchmarks/transfer.py --folds eq --candidates base
    .venv/bin/python benchmarks/transfer.py --final --candidates base pin3
    .venv/bin/python benchmarks/transfer.py --table      # what has been measured so far

Each (candidate, fold) is one `maskshare run --no-prefect` (3 lambdas, 20 steps, one seed,
no attribution); the from-end and single baselines run once per fold (candidate
`baselines`). Figures: F on the validation group's split (`test_phrasing` of the fold) per
lambda with latents per token, F interpolated at fixed sizes (linear in log size, only
inside the measured range), and the share of validation tokens out of distribution.
Results accumulate in benchmarks/results/transfer_validation.json (and
transfer_heldout.json for --final), keyed by candidate and fold.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import yaml

from maskshare.evaluation.metrics import f_at_size

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from transfer_folds import folds as write_folds  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CONFIGS = ROOT / "benchmarks" / "transfer" / "configs"
LAMBDAS = [0.003, 0.01, 0.03]
SIZES = [20, 40, 60, 100, 200, 400]  # latents per token at which F is read off each curve

# the attention grouping before this study (src/maskshare/config.py defaults then)
BASE = {"kind": "attention", "n_slots": "auto", "pin_last": None, "ood_fallback": "nearest",
        "features": {"normalize": "none", "layer_start_fraction": 0.67,
                     "position_from_end": False, "position_weight": 1.0, "to_bos": False,
                     "to_self": False, "to_prev": False}}

CANDIDATES: dict[str, dict] = {
    "baselines": {},  # from-end and single only
    "base": {},
    # (1) length-invariant attention: relative to uniform
    "uniform": {"features": {"normalize": "uniform"}},
    # (2) more feature families / layers
    "posend": {"features": {"position_from_end": True}},
    "posend-w3": {"features": {"position_from_end": True, "position_weight": 3.0}},
    "uniform-posend-w3": {"features": {"normalize": "uniform", "position_from_end": True,
                                       "position_weight": 3.0}},
    "uniform-posend": {"features": {"normalize": "uniform", "position_from_end": True}},
    "self-feats": {"features": {"to_bos": True, "to_self": True, "to_prev": True}},
    # what the token itself attends to (independent of what the final token is)
    "own": {"features": {"from_final": False, "to_bos": True, "to_self": True,
                         "to_prev": True}},
    "own-uniform": {"features": {"from_final": False, "to_bos": True, "to_self": True,
                                 "to_prev": True, "normalize": "uniform"}},
    "own-uniform-posend": {"features": {"from_final": False, "to_bos": True, "to_self": True,
                                        "to_prev": True, "normalize": "uniform",
                                        "position_from_end": True}},
    "layers-all": {"features": {"layer_start_fraction": 0.0}},
    "layers-half": {"features": {"layer_start_fraction": 0.5}},
    # (3) slot counts
    "slots4": {"n_slots": 4},
    "slots8": {"n_slots": 8},
    "slots12": {"n_slots": 12},
    # (5) what an out-of-distribution token gets
    "fallback-pos": {"ood_fallback": "position"},
    "uniform-fallback-pos": {"ood_fallback": "position", "features": {"normalize": "uniform"}},
    # (4) hybrid: pin the last k positions, cluster the rest
    "pin2": {"pin_last": 2},
    "pin3": {"pin_last": 3},
    "pin3-uniform": {"pin_last": 3, "features": {"normalize": "uniform"}},
    "pin3-slots6": {"pin_last": 3, "n_slots": 6},
    "pin3-uniform-slots6": {"pin_last": 3, "n_slots": 6, "features": {"normalize": "uniform"}},
}

FOLD_SETS = {
    # agreement with its third training structure (subjrc, 2026-12-07); the two-structure
    # source's folds (agreement-val-simple / -nounpp) are in the results only
    "agreement": [f"agreement3-val-{g}" for g in ("subjrc", "nounpp", "simple")],
    "eq": [f"element-questions-val-{g}" for g in ("question", "statement", "fill-in", "list")],
    "elements": ["elements-symbol-val"],
    # subsets, to add candidates to some folds
    "agreement-simple": ["agreement3-val-simple"],
    "agreement-rest": ["agreement3-val-nounpp", "agreement3-val-simple"],
    "eq-rest": [f"element-questions-val-{g}" for g in ("statement", "fill-in", "list")],
}
FINAL = {"agreement": "agreement", "eq": "element-questions"}


def merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def grouping_of(candidate: str) -> dict:
    return merge(BASE, CANDIDATES[candidate])


def config(candidate: str, dataset: str) -> dict:
    baselines = candidate == "baselines"
    return {
        "name": f"tr-{candidate}", "seed": 0, "model": "smollm2-135m",
        "saes": {"source": "embedded"},
        "dataset": {"name": dataset, "variant": "freeform"},
        # the baselines run carries the base attention grouping (the main variant must exist)
        "grouping": grouping_of("base" if baselines else candidate),
        "masks": {"ablation": "slot-mean", "lambdas": LAMBDAS, "steps": 20},
        "attribution": {"methods": []},
        "evaluate": {"seeds": [0], "baselines": ["from-end", "single"] if baselines else [],
                     "ablations": []},
    }


def run(candidate: str, dataset: str, tag: str) -> Path:
    return run_config(config(candidate, dataset), f"{candidate}__{tag}")


def run_config(cfg: dict, label: str, configs: Path = CONFIGS) -> Path:
    """`maskshare run --no-prefect` on `cfg` (written to configs/label.yaml); the run dir."""
    configs.mkdir(parents=True, exist_ok=True)
    cfg_path = configs / f"{label}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = dict(os.environ, MASKSHARE_THREADS=os.environ.get("MASKSHARE_THREADS", "1"),
               HF_HUB_OFFLINE="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    t0 = time.time()
    p = subprocess.run([str(ROOT / ".venv/bin/maskshare"), "run", "--no-prefect", "--config",
                        str(cfg_path)], cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{label} failed:\n{p.stderr[-3000:]}")
    run_dir = Path(p.stdout.strip().splitlines()[-1])
    print(f"{label}: {run_dir.name} ({time.time() - t0:.0f} s)", flush=True)
    return run_dir


def f_at(points: list[tuple[float, float]], size: float) -> float | None:
    """F at `size` latents per token, linear in log size between measured points
    (`maskshare.evaluation.metrics.f_at_size`)."""
    return f_at_size([s for s, _ in points], [f for _, f in points], size)


def summarise(run_dir: Path, splits: list[str]) -> dict:
    curves = pl.read_parquet(run_dir / "evaluate" / "curves.parquet")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    out = {"run": run_dir.name}
    for split in splits:
        rows = curves.filter(pl.col("split") == split).sort("variant", "lambda")
        for variant in rows["variant"].unique(maintain_order=True).to_list():
            r = rows.filter(pl.col("variant") == variant)
            pts = list(zip(r["latents_per_token"].to_list(), r["faithfulness"].to_list(),
                           strict=True))
            out.setdefault(split, {})[variant] = {
                "points": [{"lambda": lam, "F": f, "latents_per_token": s}
                           for lam, (s, f) in zip(r["lambda"].to_list(), pts, strict=True)],
                "F_at": {str(s): f_at(pts, s) for s in SIZES},
                "n_prompts": int(r["n_prompts"][0]),
            }
        key = split.split(":")[0]
        out.setdefault(split, {})["ood_fraction"] = metrics.get(f"ood_fraction_{key}")
    return out


def store(path: Path, key: str, value: dict) -> None:
    """Set `key` in the JSON file at `path`, read and written under a lock (runs side by side
    store into one file)."""
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        doc = json.loads(path.read_text()) if path.exists() else {}
        doc[key] = value
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        tmp.replace(path)


def validate(candidates: list[str], fold_set: str) -> None:
    specs = write_folds()
    for fold in FOLD_SETS[fold_set]:
        for c in candidates:
            d = run(c, str(specs[fold].relative_to(ROOT)), fold)
            s = summarise(d, ["test_phrasing", "train"])
            s["grouping"] = grouping_of(c)
            store(RESULTS / "transfer_validation.json", f"{c}|{fold}", s)


def final(candidates: list[str], which: list[str]) -> None:
    for w in which:
        name = FINAL[w]
        for c in candidates:
            d = run(c, name, f"final-{name}")
            splits = pl.read_parquet(d / "evaluate" / "curves.parquet")["split"].unique()
            s = summarise(d, sorted(splits.to_list()))
            s["grouping"] = grouping_of(c)
            store(RESULTS / "transfer_heldout.json", f"{c}|{name}", s)


def table(path: Path, split: str = "test_phrasing") -> str:
    doc = json.loads(path.read_text())
    lines = ["| candidate | fold | variant | OOD | " + " | ".join(f"F@{s}" for s in SIZES)
             + " | F (latents/token) per lambda |", "|---" * (5 + len(SIZES)) + "|"]
    for key in sorted(doc):
        cand, fold = key.split("|")
        block = doc[key].get(split, {})
        for variant, v in block.items():
            if variant == "ood_fraction":
                continue
            ood = block.get("ood_fraction")
            pts_f = [(p["latents_per_token"], p["F"]) for p in v["points"]]
            fa = " | ".join("-" if f_at(pts_f, s) is None else f"{f_at(pts_f, s):.2f}"
                            for s in SIZES)
            pts = " / ".join(f"{p['F']:.2f} ({p['latents_per_token']:.0f})" for p in v["points"])
            ood_s = "-" if ood is None or "attention" not in variant else f"{ood:.2f}"
            lines.append(f"| {cand} | {fold} | {variant} | {ood_s} | {fa} | {pts} |")
    return "\n".join(lines)


def closeness(f: float | None) -> float | None:
    """1 - |1 - F|: F above 1 (a circuit more confident than the model) counts as far from
    faithful as the same distance below (the agreement folds' rule, fixed before their
    candidates ran: from-end reaches F 1.3-1.6 on the `subjrc` fold)."""
    return None if f is None else 1.0 - abs(1.0 - f)


def summary(path: Path, folds: list[str], reference: str = "base",
            score=lambda f: f) -> str:
    """Per candidate: on the folds where it ran, the mean score (F, or `closeness`) at each
    size of its attention variant, and the mean paired difference to `reference` on those
    folds (sizes where both have a value)."""
    doc = json.loads(path.read_text())
    att = "attention__slot-mean"

    def fat(cand: str, fold: str, size: int):
        v = doc.get(f"{cand}|{fold}", {}).get("test_phrasing", {}).get(att)
        return None if v is None else score(f_at([(p["latents_per_token"], p["F"])
                                                  for p in v["points"]], size))

    cands = sorted({k.split("|")[0] for k in doc if k.split("|")[1] in folds} - {"baselines"})
    lines = ["| candidate | folds | " + " | ".join(f"F@{s}" for s in SIZES) + " | "
             + " | ".join(f"vs {reference} @{s}" for s in SIZES) + " |",
             "|---" * (2 + 2 * len(SIZES)) + "|"]
    for c in cands:
        fl = [f for f in folds if f"{c}|{f}" in doc]
        mean, diff = [], []
        for s in SIZES:
            xs = [x for x in (fat(c, f, s) for f in fl) if x is not None]
            mean.append(f"{np.mean(xs):.3f} ({len(xs)})" if xs else "-")
            ds = [fat(c, f, s) - fat(reference, f, s) for f in fl
                  if fat(c, f, s) is not None and fat(reference, f, s) is not None]
            diff.append(f"{np.mean(ds):+.3f} ({len(ds)})" if ds else "-")
        lines.append(f"| {c} | {len(fl)} | " + " | ".join(mean) + " | " + " | ".join(diff)
                     + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--candidates", nargs="+", default=["baselines", "base"])
    ap.add_argument("--folds", choices=sorted(FOLD_SETS), default=None)
    ap.add_argument("--final", nargs="*", choices=sorted(FINAL), default=None,
                    help="measure the held-out splits of these datasets (after choosing)")
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--summary", action="store_true", help="validation means per candidate")
    ap.add_argument("--split", default="test_phrasing")
    a = ap.parse_args()
    unknown = [c for c in a.candidates if c not in CANDIDATES]
    if unknown:
        sys.exit(f"unknown candidates {unknown}; known: {sorted(CANDIDATES)}")
    if a.folds:
        validate(a.candidates, a.folds)
    if a.final is not None:
        final(a.candidates, a.final or sorted(FINAL))
    if a.summary:
        p = RESULTS / "transfer_validation.json"
        for name, fl, sc in (
                ("agreement, two structures (simple held out)", ["agreement-val-simple"],
                 None),
                ("agreement, three structures (each held out in turn; 1 - |1 - F|)",
                 FOLD_SETS["agreement"], closeness),
                ("element-questions (4 styles in turn)", FOLD_SETS["eq"], None)):
            what = "F" if sc is None else "1 - |1 - F|"
            print(f"### {name}: mean {what} of the attention variant; paired difference "
                  "to base\n")
            print(summary(p, fl, score=sc or (lambda f: f)), "\n")
    if a.table or not (a.folds or a.final is not None or a.summary):
        for name in ("transfer_validation.json", "transfer_heldout.json"):
            if (RESULTS / name).exists():
                print(f"## {name}\n")
                print(table(RESULTS / name, a.split), "\n")


if __name__ == "__main__":
    main()
