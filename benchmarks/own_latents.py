"""Issue 22, knowledge recall: a finished run's circuits scored with the subject's own
latents (`evaluate.own_latents`, `maskshare.masks.own_latents`) for several `k`, to choose
`k` on the validation split and report the held-out splits.

    .venv/bin/python benchmarks/own_latents.py RUN [--k 0 8 32 128] [--roles subject]
        [--splits validation test_phrasing test_entity] [--sizes 40 60 100 150]
        [--by activation deviation] [--json OUT]

For each `k` and split: every lambda of the run's main variant (its learned masks, as
trained: the masks train without own latents) scored by the library's evaluation with each
prompt's own `k` latents per SAE at its tokens of `--roles` (k 0: the circuits alone), F
and latents per token (the added latents counted); then F read at `--sizes` latents per
token on each curve (`f_at_size`) and the circuit the run's rule would choose on the
validation split (the smallest with F >= the run's target, else the best). `--by`: how the
own latents are ranked (`evaluate.own_latents.by`: activation, or deviation from the
ablation's value), each scored in turn. Choose `k` on
`validation`; the held-out splits are for reporting. Writes nothing into the run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from maskshare.evaluation.metrics import evaluate_sweep, f_at_size
from maskshare.evaluation.sweep_fits import sweep_lambdas
from maskshare.masks.variant import load_masks, prepare_variant
from maskshare.run.resources import load_run_config
from maskshare.run.variants import main_variant


def chosen(points: list[dict], target: float) -> dict | None:
    """The run's rule on one curve: the smallest circuit with F >= target, else the best."""
    ok = [p for p in points if p["F"] is not None and p["F"] >= target]
    if ok:
        return min(ok, key=lambda p: p["size"])
    scored = [p for p in points if p["F"] is not None]
    return max(scored, key=lambda p: p["F"]) if scored else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--k", type=int, nargs="+", default=[0, 8, 32, 128])
    ap.add_argument("--roles", nargs="+", default=["subject"])
    ap.add_argument("--splits", nargs="+", default=["validation", "test_phrasing",
                                                     "test_entity"])
    ap.add_argument("--sizes", type=float, nargs="+", default=[40, 60, 100, 150])
    ap.add_argument("--by", nargs="+", choices=["activation", "deviation"],
                    default=["activation"])
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    run = Path(a.run)
    cfg = load_run_config(run)
    v = main_variant(cfg)
    seed = (cfg.evaluate.seeds or [cfg.seed])[0]
    lams = sorted(set(sweep_lambdas(run, cfg, v.name, seed)))
    masks = {lam: load_masks(run, v, lam, seed) for lam in lams}
    out = {"run": run.name, "roles": a.roles, "by": a.by, "target_f": cfg.evaluate.target_f,
           "curves": {}, "at_sizes": {}, "chosen": {}}
    settings = [(k, by) for k in a.k for by in (a.by if k else a.by[:1])]
    for k, by in settings:
        for split in a.splits:
            prep = prepare_variant(run, v, split, None,
                                   own=(k, tuple(a.roles), by) if k else None)
            res, _ = evaluate_sweep(prep.mm, prep.batches, masks, prep.slots,
                                    complements=False)
            pts = [{"lambda": lam, "F": r["faithfulness"], "size": r["latents_per_token"],
                    "own": r.get("own_latents_per_token")} for lam, r in res.items()]
            key = f"k{k}|{split}" if by == "activation" or not k else f"k{k}-{by}|{split}"
            out["curves"][key] = pts
            byf = sorted(pts, key=lambda p: p["size"])
            out["at_sizes"][key] = {
                str(s): f_at_size([p["size"] for p in byf], [p["F"] for p in byf], s)
                for s in a.sizes}
            out["chosen"][key] = chosen(pts, cfg.evaluate.target_f)
            c = out["chosen"][key]
            print(f"k {k:>4} {by if k else '':>10} {split:>14}: " + " ".join(
                f"{p['F']:.2f}({p['size']:.0f})" for p in byf)
                + " | at " + " ".join(f"{s:g}: {f:.2f}" if f is not None else f"{s:g}: n/a"
                                      for s, f in zip(a.sizes, out['at_sizes'][key].values(),
                                                      strict=True))
                + (f" | rule: {c['F']:.2f} at {c['size']:.0f}" if c else ""), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
