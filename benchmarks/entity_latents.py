"""Issue 22, knowledge recall: do prompts about unseen entities lose F because the circuit
lacks *their own* latents at the entity's tokens?

    .venv/bin/python benchmarks/entity_latents.py RUN [--split test_entity] [--k 0 4 16 64]
        [--roles subject] [--lambdas L ...] [--json OUT]

A learned circuit is a fixed set of (slot, SAE, latent) triples. A latent that fires for one
element only is worth keeping for that element's prompts, and a mask trained on other
elements has no reason to keep it; under slot-mean ablation an unseen element's own latents
are replaced by the training elements' mean. This measures that directly on a finished run:
per lambda of the main variant, F on `--split` for the circuit as learned, and for the
circuit plus each prompt's own `k` most active latents (per SAE) at the tokens whose role is
in `--roles` (the entity's mention), input-dependent and nothing else changed (`--k -1`:
every latent there, the entity's tokens clean). `empty+k`
is the empty circuit plus those latents alone. Sizes count the added latents (those the
circuit did not already keep there), averaged over every ablatable token, as the run's
sizes do. The same on `test_phrasing` (known entities) separates "unseen entity" from "any
prompt".

`--by deviation` ranks a token's latents by how far ablation would move them, |a - the
slot mean| (what slot-mean ablation changes most), instead of by activation; `--after`
also marks every token after the mention (where attention may have moved the entity's
identity), final included.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import polars as pl
import torch

from maskshare.evaluation.metrics import evaluate_masks
from maskshare.evaluation.sweep_fits import sweep_lambdas
from maskshare.masks.checkpoints import TrainResult
from maskshare.masks.masking import MaskedModel
from maskshare.masks.own_latents import marked_tokens
from maskshare.masks.slot_stats import SlotStats
from maskshare.model.activations import pad_slots
from maskshare.run.layout import RunLayout
from maskshare.run.resources import get_model, get_saes, load_run_config
from maskshare.run.variants import main_variant


class TopKAtEntity(MaskedModel):
    """The run's masked pass, where the tokens a batch marks in `batch.entity` ([B, P] bool,
    `mark_entity`: the entity's mention) also keep their own `k` most active latents per
    SAE. Error term `clean` only (the run default); counts the latents it adds in `added`.
    Build it with `split_by_length=False` (a split batch would lose its marks) and score it
    with `logit_diffs`, not the stacked passes, when `k` is set."""

    k: int = 0
    added: float = 0.0
    by: str = "activation"  # or "deviation": |a - the ablation value|

    def splice(self, hook, x, batch, mask, a=None, err=None):
        sae = self.saes[hook]
        if a is None:
            a = sae.encode(x)
        onehot = self._onehot(batch) if self.expand == "onehot" else None
        m = self._per_token(mask, batch, onehot)
        abl = self._per_token(self.abl[hook], batch, onehot)
        if self.k:
            sel = batch.entity & ~batch.untouched
            if self.k < 0:  # every latent kept: the entity's tokens clean
                extra = sel[..., None].expand_as(m).to(m.dtype)
            else:
                score = a.detach() if self.by == "activation" else (a - abl).abs().detach()
                top = torch.zeros_like(m).scatter_(-1, score.topk(self.k, dim=-1).indices, 1.0)
                extra = top * (score > 0) * sel[..., None]
            self.added += float(((extra > 0) & (m.detach() == 0)).sum())
            m = torch.maximum(m, extra)
        out = sae.decode(abl + m * (a - abl))
        out = out + (err if err is not None else x - sae.decode(a))
        return torch.where(batch.untouched[..., None], x, out)


def mark_entity(batches, roles: list, slots: list, wanted: list[str],
                after: bool = False) -> int:
    """Set `batch.entity` on each batch: True at the tokens whose role is in `wanted`
    (`roles`, `slots`: per prompt, in the caller's order; the library's `marked_tokens`),
    and with `after` at every token after the first marked one; returns how many are
    marked."""
    marks = [m.astype(np.int64) for m in marked_tokens(roles, slots, wanted)]
    if after:
        marks = [np.maximum.accumulate(m) * (s > 0) for m, s in zip(marks, slots, strict=True)]
    for b in batches:
        b.entity = pad_slots(marks, b.idx, b.slots.shape[1]) > 0
    return int(sum(m.sum() for m in marks))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--split", default="test_entity")
    ap.add_argument("--roles", nargs="+", default=["subject"])
    ap.add_argument("--k", type=int, nargs="+", default=[0, 4, 16, 64],
                    help="latents added per SAE at the entity's tokens; -1: all of them")
    ap.add_argument("--lambdas", type=float, nargs="*", default=None,
                    help="default: every lambda the run trained")
    ap.add_argument("--by", choices=["activation", "deviation"], default="activation",
                    help="rank a token's latents by activation or by |a - slot mean|")
    ap.add_argument("--after", action="store_true",
                    help="also mark every token after the mention")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    run = Path(a.run)
    lay = RunLayout(run)
    cfg = load_run_config(run)
    if cfg.masks.error.value != "clean" or cfg.masks.ablation.value != "slot-mean":
        raise SystemExit("this check handles error: clean and slot-mean ablation only")
    v = main_variant(cfg)
    tok = pl.read_parquet(lay.tokens(v.grouping)).filter(pl.col("split") == a.split)
    items = pl.read_parquet(lay.items).filter(pl.col("split") == a.split)
    if items.height == 0:
        raise SystemExit(f"{run.name} has no prompts on {a.split}")
    by_pid = {k[0]: g.sort("position") for k, g in tok.group_by("prompt_id")}
    pids = items["prompt_id"].to_list()
    slots = [by_pid[p]["slot"].to_numpy().astype(np.int64) for p in pids]
    roles = items["roles"].to_list()
    stats = SlotStats.load(lay.slot_stats(v.grouping))
    n_tokens = sum(int((s > 0).sum()) for s in slots)
    model, saes = get_model(cfg), get_saes(cfg)
    tokens = [list(t) for t in items["tokens"].to_list()]
    ans = [int(x) for x in items["answer_id"].to_list()]
    cf = [int(x) for x in items["counterfactual_id"].to_list()]
    mm = TopKAtEntity(model, saes, stats, int(stats.counts.shape[0]), ablation=v.ablation,
                      error=cfg.masks.error, split_by_length=False)
    batches = mm.prepare(tokens, slots, ans, cf, batch_size=cfg.masks.batch_size)
    mm.by = a.by
    n_marked = mark_entity(batches, roles, slots, a.roles, a.after)
    metrics = json.loads(lay.metrics.read_text())
    seed = (cfg.evaluate.seeds or [cfg.seed])[0]
    lams = a.lambdas or sorted(set(sweep_lambdas(run, cfg, v.name, seed)))
    print(f"{run.name}: {a.split}, {len(tokens)} prompts, {n_marked} of {n_tokens} tokens with "
          f"roles {a.roles}{' and after' if a.after else ''}, by {a.by}; chosen lambda "
          f"{metrics['lambda']:g}", flush=True)
    out = {"run": run.name, "split": a.split, "roles": a.roles, "by": a.by, "after": a.after,
           "n_prompts": len(tokens),
           "marked_tokens": n_marked, "tokens": n_tokens, "rows": []}
    for lam in [None, *lams]:  # None: the empty circuit
        d = lay.masks(v, lam if lam is not None else lams[0], seed)
        if not d.exists():
            continue
        base = TrainResult.load(d).masks()
        if lam is None:
            base = {h: torch.zeros_like(m) for h, m in base.items()}
        masks = base
        mm.k = 0
        ref = evaluate_masks(mm, batches, masks, slots)
        pp = ref["per_prompt"]
        e, full = float(np.mean(pp["ld_ablated"])), float(np.mean(pp["ld_model"]))
        row = {"lambda": lam, "circuit": "empty" if lam is None else f"lambda {lam:g}",
               "latents_per_token": ref["latents_per_token"], "F": {}, "size": {}}
        for k in a.k:
            if k == 0:
                f, size = ref["faithfulness"], ref["latents_per_token"]
            else:
                mm.k, mm.added = k, 0.0
                ld = float(np.mean(mm.logit_diffs(batches, masks)))
                f = (ld - e) / (full - e)
                size = ref["latents_per_token"] + mm.added / n_tokens
            row["F"][k], row["size"][k] = f, size
        out["rows"].append(row)
        print(f"{row['circuit']}: " + "; ".join(
            f"+{k}: F {row['F'][k]:.2f} ({row['size'][k]:.0f})" for k in a.k), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
