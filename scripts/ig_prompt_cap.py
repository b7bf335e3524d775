"""Would integrated gradients on fewer training prompts do? On a built run's main variant:
IG (the run's `attribution.ig_steps`) on a seeded sample of N training prompts against the
run's own IG scores (every training prompt): the Jaccard overlap of their top-k triples,
and F on held-out splits of each one's circuit at a few sizes (latents per token on the
training prompts, `attribution.circuit_at_size`), the run's M and empty circuit as the ends.

    HF_HUB_OFFLINE=1 PYTHONPATH=src .venv/bin/python scripts/ig_prompt_cap.py data/runs/default-<hash> [--prompts 128]
"""

from __future__ import annotations

import argparse
import time

import torch

from maskshare.masks.attribution import attribution_by_method, circuit_at_size, method_of
from maskshare.masks.masking import empty_masks, full_masks
from maskshare.masks.variant import prepare_variant
from maskshare.run.resources import load_run_config
from maskshare.run.variants import main_variant
from maskshare.stages.attribution import load_scores


def _flat(scores: dict) -> torch.Tensor:
    """|score| of every non-BOS triple, hooks in order."""
    return torch.cat([t[1:].flatten().abs() for t in scores.values()])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--sizes", type=float, nargs="+", default=[25, 60, 115, 215, 400])
    ap.add_argument("--splits", nargs="+", default=["test_phrasing", "test_entity"])
    args = ap.parse_args()
    cfg = load_run_config(args.run)
    v = main_variant(cfg)
    slots = prepare_variant(args.run, v, "train", cfg.masks.max_train_prompts).slots
    whole = load_scores(args.run, v, "ig")
    sub = prepare_variant(args.run, v, "train", args.prompts)
    t0 = time.perf_counter()
    capped = attribution_by_method(sub.mm, sub.batches, [method_of("ig")],
                                   cfg.attribution.ig_steps)[method_of("ig")]
    print(f"IG on {sub.items.height} of {len(slots)} training prompts: "
          f"{time.perf_counter() - t0:.1f} s")
    a, b = _flat(whole), _flat(capped)
    for k in (150, 500, 1500, 5000):
        top_a = set(torch.topk(a, k).indices.tolist())
        top_b = set(torch.topk(b, k).indices.tolist())
        print(f"  top {k}: Jaccard {len(top_a & top_b) / len(top_a | top_b):.3f}")
    for split in args.splits:
        ev = prepare_variant(args.run, v, split, None)
        n = ev.mm.n_slots
        m = ev.mm.logit_diffs(ev.batches, full_masks(ev.mm.saes, n)).mean()
        e = ev.mm.logit_diffs(ev.batches, empty_masks(ev.mm.saes, n)).mean()
        for size in args.sizes:
            fs = [(ev.mm.logit_diffs(ev.batches, circuit_at_size(s, slots, size)).mean() - e)
                  / (m - e) for s in (whole, capped)]
            print(f"  {split} at {size:g} latents/token: F all prompts {fs[0]:.3f}, "
                  f"{sub.items.height} prompts {fs[1]:.3f}")


if __name__ == "__main__":
    main()
