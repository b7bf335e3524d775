"""Issue 22: how the default run's masks train, chosen on validation folds of its training
data only (never a held-out split).

    .venv/bin/python benchmarks/training_folds.py                 # every setting x fold
    .venv/bin/python benchmarks/training_folds.py --settings cold60 --folds entity
    .venv/bin/python benchmarks/training_folds.py --table         # what has been measured
    .venv/bin/python benchmarks/training_folds.py --heldout       # + held-out splits (report)
    .venv/bin/python benchmarks/training_folds.py --base configs/element-questions.yaml \
        --folds phrasing                                           # another dataset's run

Each (setting, fold) is `configs/default.yaml` with its `masks` training settings replaced
by the setting's and its validation split carved by the fold, the main variant only (no
baselines): one `maskshare run --no-prefect` (`MASKSHARE_THREADS`, default 1). Folds:
`phrasing` (the default's own carving: 2 of the 11 training phrasings), `phrasing-s1`
(the same with validation seed 1: two other phrasings) and `entity` (a
seeded fifth of the training elements, every phrasing kept: the validation analogue of the
held-out elements). Figures: the main variant's F on the fold's validation prompts per
lambda (latents per token on them), F read at fixed sizes (linear in log size, inside the
measured range only), and each mask's training-sample fit. Results accumulate in
benchmarks/results/training_validation.json keyed `setting|fold` (`setting|NAME:fold` for
`--base` another config NAME.yaml, whose fold `phrasing` is that config's own carving,
`by: auto`: held-out groups where it has at least 3 training groups, else entities).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import polars as pl
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from transfer import f_at, merge, run_config, store  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "training_validation.json"
CONFIGS = ROOT / "benchmarks" / "transfer" / "training"
SIZES = [40, 60, 100, 150, 200, 400, 800]
MAIN = "attention__slot-mean"

# every field that says where a training starts and how long it runs, written out so a
# setting does not depend on what configs/default.yaml or the library defaults say today
SETTINGS: dict[str, dict] = {
    # the chain of issue 13: IG start, each lambda continued from the previous, 20 steps
    "chain20": {"steps": 20, "init": "attribution", "continue_sweep": True, "warm_steps": 20},
    # every lambda trained on its own from init_logit, 60 steps (before issue 13)
    "cold60": {"steps": 60, "init": "cold", "continue_sweep": False, "warm_steps": None},
}
FOLDS: dict[str, dict] = {
    "phrasing": {},
    "phrasing-s1": {"validation": {"seed": 1}},  # two other training phrasings
    "entity": {"validation": {"by": "entity"}},
}
# run names (part of the run's hash): those of the runs first measured
NAMES = {"phrasing": "", "entity": "ent-", "phrasing-s1": "s1-", "chain20": "default", "cold60": "cold60"}
HELD_OUT = ["test_phrasing", "test_entity", "test_both"]


DEFAULT = ROOT / "configs" / "default.yaml"


def config(setting: str, fold: str, runs_dir: str | None = None, base_path: Path = DEFAULT) -> dict:
    base = yaml.safe_load(base_path.read_text())
    name = NAMES[fold] + NAMES[setting]
    if base_path.resolve() != DEFAULT.resolve():
        name = f"{base['name']}-{NAMES[fold]}{setting}"
    cfg = merge(base, {"name": name, "masks": SETTINGS[setting],
                       "dataset": FOLDS[fold],
                       "evaluate": {"baselines": [], "ablations": []}})
    if runs_dir:
        cfg["runs_dir"] = runs_dir
    return cfg


def points(curves: pl.DataFrame, split: str) -> list[dict]:
    r = curves.filter(pl.col("split") == split, pl.col("variant") == MAIN,
                      pl.col("finder") == "masks").sort("lambda")
    return [{"lambda": lam, "F": f, "latents_per_token": s} for lam, f, s in
            zip(r["lambda"], r["faithfulness"], r["latents_per_token"], strict=True)]


def summarise(run_dir: Path) -> dict:
    curves = pl.read_parquet(run_dir / "evaluate" / "curves.parquet")
    fits, train_s = {}, 0.0
    for d in sorted((run_dir / "masks" / MAIN).glob("lam*_seed0")):
        s = json.loads((d / "summary.json").read_text())
        manifest = json.loads((d / "manifest.json").read_text())
        fits[d.name] = {**s.get("fit", {}), "steps": manifest["steps_run"]}
        train_s += manifest["timings"]["train_s"]
    out = {"run": run_dir.name, "fits": fits, "train_s": train_s,
           "selection": json.loads((run_dir / "metrics.json").read_text()).get("selection")}
    for split in ["validation", *HELD_OUT]:
        out[split] = {"points": points(curves, split)}
    return out


def fat(v: dict, size: float) -> float | None:
    return f_at([(p["latents_per_token"], p["F"]) for p in v["points"]], size)


def table(doc: dict, split: str) -> str:
    lines = [f"| setting | fold | {' | '.join(f'F@{s}' for s in SIZES)} | F (latents/token) "
             "per lambda, densest first |", "|---" * (3 + len(SIZES)) + "|"]
    for key in sorted(doc):
        setting, fold = key.split("|")
        v = doc[key].get(split)
        if not v:
            continue
        fa = " | ".join("-" if f is None else f"{f:.2f}" for f in (fat(v, s) for s in SIZES))
        pts = " / ".join(f"{p['F']:.2f} ({p['latents_per_token']:.0f})" for p in v["points"])
        lines.append(f"| {setting} | {fold} | {fa} | {pts} |")
    # each setting against the first, per fold, where both curves reach the size
    first, *others = sorted(SETTINGS)
    for other in others:
        for fold in sorted({k.split("|")[1] for k in doc}):
            a, b = doc.get(f"{first}|{fold}", {}).get(split), doc.get(f"{other}|{fold}", {}).get(split)
            if a and b:
                fs = [(fat(a, s), fat(b, s)) for s in SIZES]
                d = ["-" if x is None or y is None else f"{y - x:+.2f}" for x, y in fs]
                lines.append(f"| {other} - {first} | {fold} | {' | '.join(d)} | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=sorted(SETTINGS))
    ap.add_argument("--folds", nargs="+", choices=sorted(FOLDS), default=sorted(FOLDS))
    ap.add_argument("--runs-dir", default=None, help="where the runs go (default: the config's)")
    ap.add_argument("--base", type=Path, default=DEFAULT,
                    help="the run config the settings and folds apply to (default: the default's)")
    ap.add_argument("--table", action="store_true", help="print what has been measured")
    ap.add_argument("--heldout", action="store_true",
                    help="also print the held-out splits (reporting only: never for choosing)")
    a = ap.parse_args()
    if not a.table:
        # results of another config are keyed by its name: `setting|NAME:fold`
        prefix = "" if a.base.resolve() == DEFAULT.resolve() else \
            f"{yaml.safe_load(a.base.read_text())['name']}:"
        for fold in a.folds:
            for setting in a.settings:
                cfg = config(setting, fold, a.runs_dir, a.base)
                key = f"{setting}|{prefix}{fold}"
                d = run_config(cfg, key.replace("|", "__").replace(":", "_"), CONFIGS)
                store(RESULTS, key, summarise(d))
    doc = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for split in ["validation", *(HELD_OUT if a.heldout else [])]:
        print(f"## {split}\n\n{table(doc, split)}\n")
    print("## mask training of the main variant (s, all lambdas; runs side by side differ)\n")
    for key in sorted(doc):
        print(f"- {key}: {doc[key]['train_s']:.0f} s, "
              f"{sum(f['steps'] for f in doc[key]['fits'].values())} steps")


if __name__ == "__main__":
    main()
