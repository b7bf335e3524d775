"""`maskshare sae-quality`: measure an SAE set's quality table (quality.json / quality.md)."""

from __future__ import annotations

import argparse

from maskshare.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--saes", help="SAE set folder (default: data/saes/<model>/)")
    parser.add_argument("--model", default="smollm2-135m", help="model name (default: %(default)s)")
    parser.add_argument("--ce-rows", type=int, default=16,
                        help="held-out rows for the CE-loss-recovered column (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="torch threads (default: cores available)")
    parser.add_argument("--heldout-of", metavar="SET",
                        help="measure on the held-out text of another set (compare sets on "
                        "the same text)")
    parser.add_argument("--json", action="store_true", help="print quality.json instead of the table")


def run(args: argparse.Namespace) -> int:
    import json

    # heavy (torch, polars): imported when the command runs, not for `maskshare --help`
    from maskshare.saes.quality import quality_markdown, sae_quality

    if args.ce_rows < 1:
        raise UserError("--ce-rows must be at least 1")
    q = sae_quality(args.saes, model_name=args.model, threads=args.threads, ce_rows=args.ce_rows,
                    corpus_of=args.heldout_of)
    print(json.dumps(q, indent=2, default=str) if args.json else quality_markdown(q), end="")
    return 0
