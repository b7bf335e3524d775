"""F on held-out entities against the number of training entities, for a finished run.

    .venv/bin/python benchmarks/entity_scaling.py --run data/runs/<run> --counts 5 10 20 40

Prints a markdown table and writes RUN/evaluate/entity_scaling.json.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from maskshare.pipeline import entity_scaling


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
