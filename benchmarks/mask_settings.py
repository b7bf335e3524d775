"""F on held-out prompts against size for other mask-training settings, on a finished run.

    .venv/bin/python benchmarks/mask_settings.py --run data/runs/<run> \\
        --lambdas 0.05 0.08 --set steps=120 --set early_stop_patience=10

Trains the run's main variant (its grouping, ablation, slot statistics and training split)
once per lambda with the run's mask settings overridden by each `--set key=value` (any
field of MaskConfig), evaluates every mask on the held-out split(s) with the run's reference
(M), and prints one row per (lambda, split): latents per token, F vs M, F vs the clean model,
triples, steps run and training seconds. Nothing in the run is changed; the rows are written
to RUN/evaluate/mask_settings/<settings hash>.json.

    .venv/bin/python benchmarks/mask_settings.py --run data/runs/<run> --table \
        --splits validation --sizes 25 40 55 --out benchmarks/results/x.json

collects every setting measured on the run so far: F per setting read off its own
F-against-size points (linear in log size, inside the measured range only) at each size.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import yaml

from maskshare.artifacts import hash_config, write_json_atomic
from maskshare.config import MaskConfig
from maskshare.evaluation.comparison import heldout_splits
from maskshare.evaluation.experiments import train_and_evaluate
from maskshare.evaluation.metrics import f_at_size
from maskshare.run.layout import RunLayout
from maskshare.run.resources import load_run_config, load_run_items
from maskshare.run.variants import main_variant


def parse_sets(pairs: list[str]) -> dict:
    out = {}
    for p in pairs:
        if "=" not in p:
            raise SystemExit(f"--set {p!r}: expected key=value")
        k, v = p.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def run(run_dir: Path, lambdas: list[float], overrides: dict, seed: int | None = None,
        splits: list[str] | None = None) -> list[dict]:
    cfg = load_run_config(run_dir)
    mcfg = MaskConfig.model_validate({**cfg.masks.model_dump(mode="json"), **overrides})
    seed = cfg.seed if seed is None else seed
    main = main_variant(cfg)
    splits = splits or heldout_splits(load_run_items(run_dir))
    rows = []
    for lam in lambdas:
        t = train_and_evaluate(run_dir, main, lam, seed, splits,
                               train_limit=mcfg.max_train_prompts, masks=mcfg)
        for split, m in t.metrics.items():
            rows.append({"variant": main.name, "lambda": lam, "seed": seed, "split": split,
                         "steps_run": len(t.result.history), "train_s": round(t.train_s, 1),
                         "latents_per_token": m["latents_per_token"],
                         "faithfulness": m["faithfulness"],
                         "faithfulness_vs_clean": m["faithfulness_vs_clean"],
                         "circuit_size": m["circuit_size"], "n_prompts": m["n_prompts"],
                         "overrides": overrides})
            logging.getLogger(__name__).info("%s", rows[-1])
    out = RunLayout(run_dir).mask_settings(hash_config(overrides, lambdas, seed))
    write_json_atomic(out, {"overrides": overrides, "masks": mcfg.model_dump(mode="json"),
                            "rows": rows})
    print(f"wrote {out}")
    return rows


def table(run_dir: Path, split: str, sizes: list[float]) -> list[dict]:
    """One row per setting measured on `run_dir` (`run`'s files): its points on `split`
    and F at each of `sizes` (None outside the measured range)."""
    by: dict[str, dict] = {}
    for f in sorted((run_dir / "evaluate" / "mask_settings").glob("*.json")):
        for r in json.loads(f.read_text())["rows"]:
            if r["split"] != split:
                continue
            s = by.setdefault(json.dumps(r["overrides"], sort_keys=True),
                              {"overrides": r["overrides"], "points": {}})
            s["points"][r["lambda"]] = (r["latents_per_token"], r["faithfulness"],
                                        r["steps_run"])
    out = []
    for key in sorted(by):
        pts = sorted(by[key]["points"].items())
        size_f = sorted((p[0], p[1]) for _, p in pts)
        out.append({"overrides": by[key]["overrides"],
                    "points": [{"lambda": lam, "latents_per_token": p[0],
                                "faithfulness": p[1], "steps_run": p[2]} for lam, p in pts],
                    "f_at": {str(s): f_at_size([x for x, _ in size_f],
                                               [y for _, y in size_f], s) for s in sizes}})
    return out


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("--lambdas", nargs="+", type=float)
    p.add_argument("--table", action="store_true",
                   help="train nothing: collect every setting measured on the run")
    p.add_argument("--sizes", nargs="+", type=float, default=[25, 40, 55],
                   help="with --table: latents per token to read F at")
    p.add_argument("--out", type=Path, help="with --table: also write the rows as JSON")
    p.add_argument("--set", dest="sets", action="append", default=[],
                   help="MaskConfig override key=value (repeatable)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--splits", nargs="+", default=None,
                   help="held-out splits to evaluate (default: the run's)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.table:
        split = (args.splits or ["validation"])[0]
        rows = table(args.run, split, args.sizes)
        print(f"F on {split} at " + " / ".join(f"{x:g}" for x in args.sizes)
              + " latents per token; points (latents per token: F)")
        for r in rows:
            at = " / ".join(_f(r["f_at"][str(x)]) for x in args.sizes)
            pts = ", ".join(f"{p['latents_per_token']:.0f}: {p['faithfulness']:.2f}"
                            for p in r["points"])
            print(f"| {json.dumps(r['overrides'])} | {at} | {pts} |")
        if args.out:
            write_json_atomic(args.out, {"run": str(args.run), "split": split,
                                         "sizes": args.sizes, "settings": rows})
        return
    if not args.lambdas:
        p.error("--lambdas is required (or --table)")
    overrides = parse_sets(args.sets)
    rows = run(args.run, args.lambdas, overrides, args.seed, args.splits)
    print(f"settings: {json.dumps(overrides)}")
    print("| lambda | split | steps run | train s | latents/token | F | F vs clean | triples |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['lambda']:g} | {r['split']} | {r['steps_run']} | {r['train_s']:.0f} | "
              f"{r['latents_per_token']:.1f} | {_f(r['faithfulness'])} | "
              f"{_f(r['faithfulness_vs_clean'])} | {r['circuit_size']} |")


if __name__ == "__main__":
    main()
