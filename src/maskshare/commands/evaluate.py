"""`maskshare eval --run RUN --prompts FILE.jsonl [--json]`: a run's circuit on new prompts.

Bad prompts are reported on stderr (one line each, with its line number) and skipped; an
unreadable file or one with no usable prompt exits 2 with one line. Nothing is written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SUMMARY = ["faithfulness", "faithfulness_vs_clean", "completeness", "latents_per_token",
           "circuit_size", "distinct_latents", "ld_model", "ld_model_clean", "ld_circuit",
           "ld_ablated", "ood_fraction"]


def add_arguments(p) -> None:
    p.add_argument("--run", required=True, help="a finished run directory")
    p.add_argument("--prompts", required=True,
                   help='JSON lines: {"prompt": ..., "answer": " Au", "counterfactual": " Ag"} '
                        '(optional "entity": the subject as written in the prompt)')
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--variant", default=None,
                   help="grouping__ablation, e.g. attention__slot-mean (default: the run's main)")
    p.add_argument("--lambda", dest="lam", type=float, default=None,
                   help="sparsity setting (default: the one the run chose)")
    p.add_argument("--seed", type=int, default=None, help="mask seed (default: the run's first)")
    p.add_argument("--no-own-latents", dest="own_latents", action="store_false",
                   help="score the learned circuit only, without the subject's own latents "
                        "that runs with evaluate.own_latents keep at each prompt's `entity`")


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    return f"{v + 0.0:.4g}" if isinstance(v, float) else str(v)


def run(args) -> int:
    # heavy (torch, polars): imported when the command runs, not for `maskshare --help`
    from maskshare.evaluation.apply import CF_FILE
    from maskshare.run.handle import open_run

    # the notebook API's call (maskshare.open_run(RUN).evaluate), so both give the same
    res = open_run(Path(args.run)).evaluate(args.prompts, variant=args.variant, lam=args.lam,
                                            seed=args.seed, own_latents=args.own_latents)
    for s in res["skipped"]:
        print(f"skipped line {s['line']}: {s['reason']}", file=sys.stderr)
    if res["n_skipped"]:
        print(f"{res['n_skipped']} of {res['n_prompts']} prompts skipped", file=sys.stderr)
    if res["counterfactual_source"] != CF_FILE:
        print(f"note: {res['n_counterfactual_from_model']} prompt(s) had no counterfactual; "
              "used the clean model's highest-scoring token other than the answer",
              file=sys.stderr)
    if res.get("note"):
        print(f"note: {res['note']}", file=sys.stderr)
    if (own := res.get("own_latents")) and own.get("note"):
        print(f"note: {own['note']}", file=sys.stderr)
    if args.json:
        print(json.dumps(res, default=str))
        return 0
    print(f"run {res['run']}: circuit {res['variant']}, lambda {res['lambda']:g}, "
          f"seed {res['seed']} (error term {res['error_term']})")
    print(f"{'prompts':>24}: {res['n_scored']} scored of {res['n_prompts']} "
          f"({res['n_skipped']} skipped)")
    print(f"{'counterfactuals':>24}: {res['counterfactual_source']}")
    if own:
        print(f"{'own latents':>24}: {own['k']} per SAE at {'/'.join(own['roles'])} tokens of "
              f"{own['prompts_marked']} prompt(s) ({_fmt(res.get('own_latents_per_token'))} "
              "per token)")
    for k in SUMMARY:
        print(f"{k:>24}: {_fmt(res.get(k))}")
    return 0
