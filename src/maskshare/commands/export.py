"""`maskshare export RUN [--format json|csv] [--out FILE] [--variant V] [--lambda L] [--seed S]`:
a run's circuit and its slots in the documented schema (docs/export.md), on stdout unless
--out. JSON: one object (the run's circuit settings, `slots`, `latents`); CSV: the `latents`
table alone, one row per kept (slot, SAE, latent). Nothing but FILE is written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

SCHEMA = "maskshare-circuit/1"


def add_arguments(p) -> None:
    p.add_argument("run", metavar="RUN", help="a finished run directory")
    p.add_argument("--format", choices=["json", "csv"], default="json")
    p.add_argument("--out", default=None, metavar="FILE", help="write here (default: stdout)")
    p.add_argument("--variant", default=None,
                   help="grouping__ablation, e.g. attention__slot-mean (default: the run's main)")
    p.add_argument("--lambda", dest="lam", type=float, default=None,
                   help="sparsity setting (default: the one the run chose)")
    p.add_argument("--seed", type=int, default=None, help="mask seed (default: the run's first)")


def export_document(run, variant=None, lam=None, seed=None) -> dict:
    """The JSON export of `run` (a `maskshare.Run`): see docs/export.md."""
    cfg, v, lam, seed, _ = run.resolve(variant, lam, seed)
    latents = run.circuit(v.name, lam, seed)
    slots = run.slot_table(v.name, lam, seed)
    n_tokens = sum(slots["n_train_tokens"][1:])
    per_token = (sum(n * k for n, k in zip(slots["n_train_tokens"][1:], slots["n_kept"][1:],
                                            strict=True)) / n_tokens) if n_tokens else None
    own = cfg.evaluate.own_latents
    return {"schema": SCHEMA, "run": str(run.path), "model": cfg.model,
            "variant": v.name, "grouping": v.grouping.value, "ablation": v.ablation.value,
            "error_term": cfg.masks.error.value, "lambda": lam, "seed": seed,
            "hooks": list(dict.fromkeys(latents["hook"].to_list())) or None,
            "n_slots": slots.height, "n_latents": latents.height,
            "latents_per_token_train": per_token,
            "own_latents": own.model_dump() if own.k else None,
            "slots": slots.to_dicts(), "latents": latents.to_dicts()}


def run(args) -> int:
    # heavy (torch, polars): imported when the command runs, not for `maskshare --help`
    from maskshare.run.handle import open_run

    r = open_run(args.run)
    if args.format == "json":
        text = json.dumps(export_document(r, args.variant, args.lam, args.seed), indent=1,
                          ensure_ascii=False) + "\n"
    else:
        text = r.circuit(args.variant, args.lam, args.seed).write_csv()
    if args.out is None:
        sys.stdout.write(text)
        return 0
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    print(f"{out}: {args.format}", file=sys.stderr)
    return 0
