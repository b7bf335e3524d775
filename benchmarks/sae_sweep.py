"""Choose the SAE width and k by a small sweep on one hook (issue 14).

Trains one SAE per (width, k) on the first `--tokens` training activations of `--hook`
(from the same cached corpus and activation store `maskshare train-saes` uses: this
builds them if they are missing) and measures each on held-out text: explained variance,
dead latents (never firing on the held-out activations), L0, and the next-token loss
recovered when the SAE is spliced at its hook. Prints a table and writes
benchmarks/results/sae_sweep.json.

    python benchmarks/sae_sweep.py --hook blocks.12.hook_resid_post --tokens 600000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from maskshare.saes.quality import ce_recovered, sae_stats
from maskshare.saes.training import SAETrainingConfig, prepare_training, train_sae

RESULTS = Path(__file__).resolve().parent / "results"


def heldout_acts(data, hook: str) -> torch.Tensor:
    """Held-out activations (float32 transformer_lens model, BOS dropped)."""
    from maskshare.model.activations import run_to_deepest

    rows = data.corpus.heldout
    out = []
    with torch.inference_mode():
        for i in range(0, rows.shape[0], 16):
            a = run_to_deepest(data.model, rows[i:i + 16], [hook])[hook][:, 1:]
            out.append(a.reshape(-1, a.shape[-1]))
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hook", default="blocks.12.hook_resid_post")
    ap.add_argument("--tokens", type=int, default=600_000)
    ap.add_argument("--widths", type=int, nargs="+", default=[2304, 4608])
    ap.add_argument("--ks", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    base = SAETrainingConfig(threads=args.threads, autocast=True, batch_size=4096, lr=2e-3)
    data = prepare_training(base)
    from maskshare.saes.training import training_activations

    acts, info = training_activations(data.store, args.hook, base)
    acts = acts[: args.tokens]
    held = heldout_acts(data, args.hook)
    rows = []
    for width in args.widths:
        for k in args.ks:
            cfg = base.model_copy(update={"d_sae": width, "k": k, "epochs": args.epochs})
            t = time.perf_counter()
            sae = train_sae(acts, args.hook, cfg)
            secs = time.perf_counter() - t
            st = sae_stats(sae, held)
            ce = ce_recovered(data.model, {args.hook: sae},
                              data.corpus.heldout[:32])[args.hook]["ce_loss_recovered"]
            rows.append({"width": width, "k": k, "train_s": round(secs, 1), **st,
                         "ce_recovered": ce})
            print(json.dumps(rows[-1]), flush=True)
    out = {"hook": args.hook, "train_tokens": int(acts.shape[0]), "epochs": args.epochs,
           "outliers_dropped_of_store": info, "heldout_tokens": int(held.shape[0]),
           "recipe": base.model_dump(mode="json", exclude={"corpus"}), "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sae_sweep.json").write_text(json.dumps(out, indent=1) + "\n")
    print("| width | k | EV (held-out) | dead | L0 | CE recovered | train s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['width']} | {r['k']} | {r['explained_variance']:.3f} | "
              f"{r['dead_fraction']:.1%} | {r['l0']:.1f} | {r['ce_recovered']:.3f} | "
              f"{r['train_s']:.0f} |")


if __name__ == "__main__":
    main()
