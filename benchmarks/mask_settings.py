"""F on held-out prompts against size for other mask-training settings, on a finished run.

    .venv/bin/python benchmarks/mask_settings.py --run data/runs/<run> \\
        --lambdas 0.05 0.08 --set steps=120 --set early_stop_patience=10

Trains the run's main variant (its grouping, ablation, slot statistics and training split)
once per lambda with the run's mask settings overridden by each `--set key=value` (any
field of MaskConfig), evaluates every mask on the held-out split(s) with the run's reference
(M), and prints one row per (lambda, split): latents per token, F vs M, F vs the clean model,
triples, steps run and training seconds. Nothing in the run is changed; the rows are written
to RUN/evaluate/mask_settings/<settings hash>.json.
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


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("--lambdas", nargs="+", type=float, required=True)
    p.add_argument("--set", dest="sets", action="append", default=[],
                   help="MaskConfig override key=value (repeatable)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--splits", nargs="+", default=None,
                   help="held-out splits to evaluate (default: the run's)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
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
