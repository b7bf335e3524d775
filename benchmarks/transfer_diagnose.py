"""Issue 22 diagnosis: which tokens of a held-out split go out of distribution (OOD) for
their attention slot, where they land, and whether they matter.

    .venv/bin/python benchmarks/transfer_diagnose.py RUN [--split test_phrasing] [--json OUT]

From a finished run (its fitted attention grouping, slot means and masks):

1. per position from the end: the split's tokens (most common strings), the share OOD, the
   slots they land in, and the slots the training tokens at the same position from the end
   got (training prompts of other structures have other lengths, so this is only a guide);
2. per lambda of the main variant, F on the split with the slots as assigned, and with
   counterfactual slot assignments: `ood-clean` (OOD tokens keep their own latents, i.e. a
   slot whose mask is all ones; they count every latent in the size), `all-clean` (every
   clustered token of the split clean: the ceiling of what the clustered slots cost), and
   `ood-to-position` (each OOD token moved to the cluster whose training tokens' mean
   position from the end is nearest its own); with `--per-slot`, each clustered slot's
   tokens clean (`cN-clean`) and each slot alone ablated (`only-cN-ablated`); with
   `--clean-from-end N ...`, the tokens at position N from the end clean (`from-end-N-clean`,
   pinned slots included).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--split", default="test_phrasing")
    ap.add_argument("--json", default=None)
    ap.add_argument("--per-slot", action="store_true",
                    help="also: each clustered slot's tokens clean, and each slot alone ablated")
    ap.add_argument("--lambdas", type=float, nargs="*", default=None)
    ap.add_argument("--clean-from-end", type=int, nargs="*", default=[],
                    help="also: the tokens at each of these positions from the end clean")
    a = ap.parse_args()

    from maskshare.evaluation.metrics import evaluate_masks
    from maskshare.grouping.registry import load_grouping
    from maskshare.masks.checkpoints import TrainResult
    from maskshare.masks.masking import MaskedModel
    from maskshare.masks.slot_stats import HookStats, SlotStats
    from maskshare.run.layout import RunLayout
    from maskshare.run.resources import get_model, get_saes, load_run_config
    from maskshare.run.variants import main_variant

    run = Path(a.run)
    lay = RunLayout(run)
    cfg = load_run_config(run)
    v = main_variant(cfg)
    g = load_grouping(lay.groups(v.grouping))
    tok = pl.read_parquet(lay.tokens(v.grouping))
    thr = g.ood_threshold
    tok = tok.with_columns(ood=pl.Series([bool(np.isfinite(d) and d > thr[s])
                                          for d, s in zip(tok["distance"], tok["slot"],
                                                          strict=True)]))
    sel = tok.filter(pl.col("split") == a.split.split(":")[0])
    train = tok.filter(pl.col("split") == "train")
    out: dict = {"run": run.name, "split": a.split, "slot_names": g.slot_names,
                 "positions": [], "lambdas": []}
    print(f"{run.name}: split {a.split}, {sel.height} tokens, OOD "
          f"{sel['ood'].mean():.2f} (train {train['ood'].mean():.2f}); slots {g.slot_names}")
    print("from_end | tokens | OOD | slots (split) | slots (train, same from_end)")
    for fe in sorted(sel["from_end"].unique().to_list()):
        s = sel.filter(pl.col("from_end") == fe)
        t = train.filter(pl.col("from_end") == fe)
        words = Counter(s["token"].to_list()).most_common(3)
        sl = Counter(g.slot_names[x] for x in s["slot"].to_list()).most_common(4)
        tl = Counter(g.slot_names[x] for x in t["slot"].to_list()).most_common(4)
        row = {"from_end": fe, "n": s.height, "tokens": words, "ood": float(s["ood"].mean()),
               "slots": sl, "train_slots": tl}
        out["positions"].append(row)
        print(f"{fe} | {words} | {row['ood']:.2f} | {sl} | {tl}")

    # counterfactual slot assignments, scored with the run's masks
    model = get_model(cfg)
    saes = get_saes(cfg)
    items = pl.read_parquet(lay.items).filter(pl.col("split") == a.split.split(":")[0])
    stats = SlotStats.load(lay.slot_stats(v.grouping))
    K = g.n_slots
    # one extra slot K: its mask is all ones, so its tokens keep their own latents
    ext = SlotStats({h: HookStats(torch.cat([st.latent_mean, st.latent_mean[:1]]),
                                  torch.cat([st.error_mean, st.error_mean[:1]]),
                                  st.global_latent_mean, st.global_error_mean)
                     for h, st in stats.hooks.items()},
                    torch.cat([stats.counts, torch.ones(1, dtype=stats.counts.dtype)]))
    by_pid = {pid: grp.sort("position") for pid, grp in
              ((k[0], grp) for k, grp in sel.group_by("prompt_id"))}
    pids = [int(p) for p in items["prompt_id"].to_list()]
    base_slots = [by_pid[p]["slot"].to_numpy().astype(np.int64) for p in pids]
    oods = [by_pid[p]["ood"].to_numpy() for p in pids]
    clustered = [(s >= g.n_pinned) for s in base_slots]
    # mean position from the end of each cluster's training tokens
    fe_mean = {s: float(train.filter(pl.col("slot") == s)["from_end"].mean())
               for s in range(g.n_pinned, K)
               if train.filter(pl.col("slot") == s).height}

    def nearest_by_position(fe: int) -> int:
        return min(fe_mean, key=lambda s: (abs(fe_mean[s] - fe), s))
    variants = {
        "as-assigned": base_slots,
        "ood-clean": [np.where(o, K, s) for s, o in zip(base_slots, oods, strict=True)],
        "all-clean": [np.where(c, K, s) for s, c in zip(base_slots, clustered, strict=True)],
        "ood-to-position": [np.array([nearest_by_position(len(s) - 1 - i) if o[i] else s[i]
                                      for i in range(len(s))], dtype=np.int64)
                            for s, o in zip(base_slots, oods, strict=True)],
    }
    if a.per_slot:  # one clustered slot at a time: its tokens clean / only its tokens ablated
        for c in range(g.n_pinned, K):
            name = g.slot_names[c]
            variants[f"{name}-clean"] = [np.where(s == c, K, s) for s in base_slots]
            variants[f"only-{name}-ablated"] = [np.where((s >= g.n_pinned) & (s != c), K, s)
                                                for s in base_slots]
    for fe in a.clean_from_end:  # one position from the end at a time, pinned or not
        variants[f"from-end-{fe}-clean"] = [np.where(np.arange(len(s))[::-1] == fe, K, s)
                                            for s in base_slots]
    tokens = [list(t) for t in items["tokens"].to_list()]
    ans = [int(x) for x in items["answer_id"].to_list()]
    cf = [int(x) for x in items["counterfactual_id"].to_list()]
    mm = MaskedModel(model, saes, ext, K + 1, ablation=v.ablation, error=cfg.masks.error)
    for lam in a.lambdas or cfg.masks.lambda_grid:
        d = lay.masks(v, lam, (cfg.evaluate.seeds or [cfg.seed])[0])
        masks = TrainResult.load(d).masks()
        masks = {h: torch.cat([m, torch.ones(1, m.shape[1])]) for h, m in masks.items()}
        row = {"lambda": lam}
        for name, slots in variants.items():
            batches = mm.prepare(tokens, slots, ans, cf, batch_size=cfg.masks.batch_size)
            r = evaluate_masks(mm, batches, masks, slots)
            row[name] = {"F": r["faithfulness"], "latents_per_token": r["latents_per_token"]}
        out["lambdas"].append(row)
        print(f"lambda {lam:g}: " + "; ".join(
            f"{k} F {x['F']:.2f} ({x['latents_per_token']:.0f})" for k, x in row.items()
            if k != "lambda"), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
