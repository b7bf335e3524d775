"""Does retraining a finished run's mask reproduce it? (why builds of one config differ)

    MASKSHARE_THREADS=1 .venv/bin/python benchmarks/retrain_check.py RUN [--lambda 0.01]
        [--variant NAME] [--save OUT.pt]

Retrains the mask of `--variant` (default: the main one) at `--lambda` (seed: the run's)
with the run's own settings and training prompts, then compares it with the mask the run
stored: the loss at the first and last steps, and per SAE hook the largest difference of
theta and how many latents' keep/drop decisions (theta > 0) differ. `--save` writes the
retrained theta, to compare two retrainings with each other. Writes nothing into the run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from maskshare.evaluation.experiments import train_and_evaluate
from maskshare.masks.checkpoints import TrainResult
from maskshare.run.layout import RunLayout
from maskshare.run.resources import load_run_config
from maskshare.run.variants import Variant, main_variant
from maskshare.runtime import configure_threads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--lambda", dest="lam", type=float, default=0.01)
    ap.add_argument("--variant", default=None)
    ap.add_argument("--save", type=Path, default=None)
    a = ap.parse_args()
    threads = configure_threads()
    cfg = load_run_config(a.run)
    v = Variant.parse(a.variant) if a.variant else main_variant(cfg)
    stored = TrainResult.load(RunLayout(a.run).masks(v, a.lam, cfg.seed))
    t = train_and_evaluate(a.run, v, a.lam, cfg.seed, [],
                           train_limit=cfg.masks.max_train_prompts)
    new = t.result
    if a.save:
        torch.save(new.theta, a.save)
    out = {"run": a.run.name, "variant": v.name, "lambda": a.lam, "torch_threads": threads,
           "loss_first_steps": {"stored": [h["loss"] for h in stored.history[:3]],
                                "retrained": [h["loss"] for h in new.history[:3]]},
           "loss_last_step": {"stored": stored.history[-1]["loss"],
                              "retrained": new.history[-1]["loss"]},
           "hooks": {h: {"max_abs_theta_diff": float((stored.theta[h] - new.theta[h]).abs().max()),
                         "decisions_differing": int(((stored.theta[h] > 0)
                                                     != (new.theta[h] > 0)).sum())}
                     for h in stored.theta},
           "identical": all(torch.equal(stored.theta[h], new.theta[h]) for h in stored.theta)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
