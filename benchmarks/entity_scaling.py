"""F on held-out entities against the number of training entities, for a finished run.

    .venv/bin/python benchmarks/entity_scaling.py --run data/runs/<run> --counts 5 10 20 40

For each n in `--counts`: train the main variant's mask (the run's chosen lambda unless
`--lambda` is given) on the training prompts of the first n training entities (a seeded
order), evaluate it on `test_entity`. Slot means stay those of the whole training split.
Prints a markdown table and writes RUN/evaluate/entity_scaling.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path

from maskshare.artifacts import write_json_atomic
from maskshare.errors import UserError
from maskshare.evaluation.experiments import train_and_evaluate
from maskshare.masks.variant import prepare_variant
from maskshare.run.layout import RunLayout
from maskshare.run.resources import load_run_config, load_run_items, split_items
from maskshare.run.variants import main_variant

logger = logging.getLogger(__name__)


def entity_scaling(run: Path, counts: list[int], seed: int | None = None,
                   lam: float | None = None) -> list[dict]:
    """One row per count: training entities and prompts, lambda, F and size on test_entity."""
    run, layout = Path(run), RunLayout(run)
    cfg = load_run_config(run)
    seed = cfg.seed if seed is None else seed
    lam = float(json.loads(layout.metrics.read_text())["lambda"]) if lam is None else lam
    main = main_variant(cfg)
    if not prepare_variant(run, main, "test_entity").batches:
        raise UserError(f"{run.name} has no test_entity prompts")
    train = split_items(load_run_items(run), "train")
    entities = sorted(set(train["entity"].to_list()))
    random.Random(seed).shuffle(entities)
    rows = []
    for n in counts:
        keep = set(entities[:n])
        sub = train.filter(train["entity"].is_in(list(keep)))
        m = train_and_evaluate(run, main, lam, seed, ["test_entity"],
                               train_items=sub).metrics["test_entity"]
        rows.append({"n_train_entities": len(keep), "n_train_prompts": sub.height,
                     "lambda": lam, "faithfulness": m["faithfulness"],
                     "faithfulness_vs_clean": m["faithfulness_vs_clean"],
                     "latents_per_token": m["latents_per_token"],
                     "n_test_prompts": m["n_prompts"]})
        logger.info("entity scaling: %s", rows[-1])
    write_json_atomic(layout.entity_scaling, rows)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--counts", nargs="+", type=int, default=[5, 10, 20, 40])
    p.add_argument("--lambda", dest="lam", type=float, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rows = entity_scaling(Path(args.run), args.counts, lam=args.lam)
    print("| training entities | training prompts | F (test_entity) | F vs clean | latents/token |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        f = "n/a" if r["faithfulness"] is None else f"{r['faithfulness']:.3f}"
        fc = "n/a" if r["faithfulness_vs_clean"] is None else f"{r['faithfulness_vs_clean']:.3f}"
        print(f"| {r['n_train_entities']} | {r['n_train_prompts']} | {f} | {fc} | "
              f"{r['latents_per_token']:.1f} |")


if __name__ == "__main__":
    main()
