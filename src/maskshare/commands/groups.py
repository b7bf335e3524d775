"""`maskshare groups show RUN [--html FILE] [--kind KIND]`: inspect a run's position groups."""

from __future__ import annotations

import argparse

from maskshare.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    show = sub.add_parser("show", help="print a table per slot; --html writes a page",
                          description="print a table per slot of RUN/groups/<kind>/")
    show.add_argument("run_dir", metavar="RUN", help="a run directory (or its groups/<kind>)")
    show.add_argument("--html", metavar="FILE", default=None,
                      help="also write a self-contained HTML page to FILE")
    show.add_argument("--kind", default="attention",
                      help="which grouping of the run (default: attention)")


def run(args: argparse.Namespace) -> int:
    # heavy (torch, polars): imported when the command runs, not for `maskshare --help`
    from maskshare.report.groups_view import show

    if getattr(args, "action", None) != "show":
        raise UserError("usage: maskshare groups show RUN [--html FILE] [--kind KIND]")
    print(show(args.run_dir, kind=args.kind, html_file=args.html))
    if args.html:
        print(f"wrote {args.html}")
    return 0
