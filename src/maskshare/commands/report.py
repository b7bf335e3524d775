"""`maskshare report RUN [--screenshots]` rebuilds RUN/report.html from the run's files;
`maskshare report --runs A B ... [--out FILE]` writes a page comparing runs side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

from maskshare.errors import UserError
from maskshare.report import browser

WIDTHS = (1000, 1600)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN", nargs="?", default=None,
                   help="a finished run directory: (re)write its report.html")
    p.add_argument("--runs", nargs="+", metavar="RUN", default=None,
                   help="compare these runs side by side on one page instead")
    p.add_argument("--out", metavar="FILE", default=None,
                   help="where --runs writes its page (default: report-compare.html here)")
    p.add_argument("--screenshots", action="store_true",
                   help="also render the pages in headless Chromium: RUN/screenshots/"
                        "{report,groups}-{1000,1600}.png (with --runs: beside --out)")


def _check(args: argparse.Namespace) -> None:
    """Every UserError before anything is written."""
    # heavy (torch, polars): imported when the command runs, not for `maskshare --help`
    from maskshare.report.data import is_run_dir

    if (args.run_dir is None) == (args.runs is None):
        raise UserError("give one run directory (maskshare report RUN) or several with "
                        "--runs A B ...")
    if args.run_dir is not None and args.out is not None:
        raise UserError("--out goes with --runs; a run's report is always RUN/report.html")
    bad = [r for r in (args.runs or [args.run_dir]) if not is_run_dir(r)]
    if bad:
        raise UserError(f"{bad[0]} is not a finished run directory (it needs config.yaml and "
                        "metrics.json)")
    if args.screenshots and browser.find_chromium() is None:
        raise UserError("--screenshots needs Chromium: install it (apt-get install chromium) "
                        "or set MASKSHARE_CHROMIUM to a Chrome/Chromium binary")


def run(args: argparse.Namespace) -> int:
    # heavy (torch, polars): imported when the command runs, not for `maskshare --help`
    from maskshare.report.page import write_comparison, write_report

    _check(args)
    if args.runs is not None:
        out = write_comparison(args.runs, args.out or Path.cwd() / "report-compare.html")
        shots = [browser.screenshot(out, out.with_name(f"{out.stem}-{w}.png"), w)
                 for w in WIDTHS] if args.screenshots else []
    else:
        out = write_report(args.run_dir)
        shots = browser.screenshots(args.run_dir, WIDTHS) if args.screenshots else []
    for p in [out, *shots]:
        print(f"wrote {p}")
    return 0
