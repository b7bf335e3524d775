"""Issue 22, knowledge recall: train the masks *with* each prompt's own latents kept at the
entity's mention, so the fixed part need not keep latents of the training entities.

    .venv/bin/python benchmarks/entity_training.py RUN [--k 32] [--lambdas L ...]
        [--splits validation test_entity test_phrasing] [--json OUT]

`benchmarks/entity_latents.py` adds each prompt's `k` most active latents per SAE at the
entity's tokens (role `subject`) to circuits trained without them: F on held-out elements
rises from 0.45 to 0.71 at the default's chosen circuit (docs/transfer.md section 6). A mask
trained that way still spends latents on what the *training* elements need at their
mention, which does not transfer. Here the main variant's masks are retrained on the run's
training prompts with the same settings (its steps, start, lambda) but with those `k`
latents kept at the mention during training too (free: the size penalty counts the learned
mask only), then scored on each split both ways: fixed part alone (`+0`) and with the
mention's own latents (`+k`). The run's own masks (trained without them) are scored the
same way beside them. Sizes count the added latents averaged over every ablatable token, as
`entity_latents.py` does; F's reference (ld of the empty circuit, of M) is the run's own.
Writes nothing into the run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from maskshare.evaluation.metrics import evaluate_sweep, reference_lds
from maskshare.masks.checkpoints import TrainResult
from maskshare.masks.slot_stats import SlotStats
from maskshare.masks.training import compute_targets, train_masks
from maskshare.masks.variant import batch_items, load_slots, prepare_variant
from maskshare.run.layout import RunLayout
from maskshare.run.resources import (
    get_model,
    get_saes,
    load_run_config,
    load_run_items,
    split_items,
)
from maskshare.run.variants import main_variant

sys.path.insert(0, str(Path(__file__).resolve().parent))
from entity_latents import TopKAtEntity, mark_entity  # noqa: E402


def prepared(mm, items, slot_map, batch_size, grouping):
    """(batches marked at the subject's tokens, slot arrays, ablatable tokens) of `items`."""
    slots = [slot_map[p] for p in items["prompt_id"].to_list()]
    batches = batch_items(mm, items, slots, batch_size, grouping)
    mark_entity(batches, items["roles"].to_list(), slots, ["subject"])
    return batches, slots, sum(int((s > 0).sum()) for s in slots)


def score(mm, batches, slots, n_tokens, masks, k, reference) -> dict:
    """F and latents per token of `masks` alone and with the mention's own `k` latents
    (`reference`: the split's `reference_lds`, shared by every mask)."""
    mm.k = 0
    ref = evaluate_sweep(mm, batches, {0: masks}, slots, reference=reference,
                         complements=False)[0][0]
    e, full = float(np.mean(reference["ld_ablated"])), float(np.mean(reference["ld_model"]))
    mm.k, mm.added = k, 0.0
    ld = float(np.mean(mm.logit_diffs(batches, masks)))
    out = {"F": ref["faithfulness"], "size": ref["latents_per_token"],
           f"F+{k}": (ld - e) / (full - e), f"size+{k}": ref["latents_per_token"]
           + mm.added / n_tokens}
    mm.k = 0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--lambdas", type=float, nargs="+", default=[0.003, 0.00548, 0.01])
    ap.add_argument("--splits", nargs="+", default=["validation", "test_entity",
                                                     "test_phrasing"])
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    run = Path(a.run)
    lay, cfg = RunLayout(run), load_run_config(run)
    if cfg.masks.error.value != "clean" or cfg.masks.ablation.value != "slot-mean":
        raise SystemExit("this check handles error: clean and slot-mean ablation only")
    if cfg.masks.continue_sweep or cfg.masks.init != "cold":
        raise SystemExit("this check retrains cold masks only (masks.init: cold, "
                         "continue_sweep: false)")
    v = main_variant(cfg)
    seed = (cfg.evaluate.seeds or [cfg.seed])[0]
    grouping, slot_map = load_slots(run, v.grouping)
    stats = SlotStats.load(lay.slot_stats(v.grouping))
    mm = TopKAtEntity(get_model(cfg), get_saes(cfg), stats, grouping.n_slots,
                      ablation=v.ablation, error=cfg.masks.error, split_by_length=False)
    items = load_run_items(run)
    train = prepare_variant(run, v, "train", cfg.masks.max_train_prompts).items  # the stage's
    tb, _, _ = prepared(mm, train, slot_map, cfg.masks.batch_size, grouping)
    evals = {s: prepared(mm, split_items(items, s), slot_map, cfg.masks.batch_size, grouping)
             for s in a.splits}
    targets = compute_targets(mm, tb, cfg.masks.objective, cfg.masks.scale)  # k = 0 here
    refs = {s: reference_lds(mm, b[0]) for s, b in evals.items()}
    print(f"{run.name}: {train.height} training prompts; k {a.k} at the subject's tokens; "
          f"splits {', '.join(f'{s} ({len(b[1])})' for s, b in evals.items())}", flush=True)
    out = {"run": run.name, "k": a.k, "steps": cfg.masks.steps, "rows": []}
    for lam in a.lambdas:
        t0 = time.time()
        mm.k = a.k
        res = train_masks(mm, tb, cfg.masks, lam, seed=seed, targets=targets, progress=False)
        mm.k = 0
        trained = {"with": res.masks(), "train_s": time.time() - t0}
        own = lay.masks(v, lam, seed)
        if (own / "masks.safetensors").is_file():
            trained["run"] = TrainResult.load(own).masks()
        for name in ("with", "run"):
            if name not in trained:
                continue
            row = {"lambda": lam, "masks": f"trained {name} +{a.k}" if name == "with"
                   else "the run's (trained without)", "splits": {}}
            for s, (b, sl, n) in evals.items():
                row["splits"][s] = score(mm, b, sl, n, trained[name], a.k, refs[s])
            out["rows"].append(row)
            print(f"lambda {lam:g}, {row['masks']}: " + "; ".join(
                f"{s} F {r['F']:.2f} ({r['size']:.0f}) / +{a.k} {r[f'F+{a.k}']:.2f} "
                f"({r[f'size+{a.k}']:.0f})" for s, r in row["splits"].items()), flush=True)
        print(f"  (training with +{a.k}: {trained['train_s']:.0f} s)", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
