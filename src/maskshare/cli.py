"""The `maskshare` command line (the contract in shared/design.md).

Each command lives in `maskshare.commands.<module>`, which defines
`add_arguments(parser)` and `run(args) -> int`; modules are imported lazily so that
`maskshare --help` is quick. Exit codes: 0 success, 2 bad input (one line on stderr,
nothing written), 1 an internal failure (traceback kept).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from maskshare.artifacts import WRITE_ERRNOS, WriteError
from maskshare.errors import UserError

# name -> (module under maskshare.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("run", "run the whole pipeline for a config; prints the run directory last"),
    "datasets": ("datasets", "list | show NAME | add SPEC.yaml | build NAME"),
    "groups": ("groups", "show RUN [--html FILE]: inspect a run's position groups"),
    "eval": ("evaluate", "apply a run's circuit to new prompts (JSON lines)"),
    "export": ("export", "RUN [--format json|csv] [--out FILE]: the circuit and its slots"),
    "report": ("report", "RUN: rebuild RUN/report.html; --runs A B ...: compare runs"),
    "serve": ("serve", "serve the scheduled deployments on a Prefect server"),
    "sweep": ("sweep", "mask training over datasets x groupings x ablations x lambdas on Dask"),
    "train-saes": ("train_saes", "train the embedded model's SAE set offline"),
    "sae-quality": ("sae_quality", "measure the SAE set's quality table"),
    "runs": ("runs", "list | clean: the runs under a runs root; stale temporary files"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # bad usage is bad input: exit 2 with one line
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="maskshare", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module, help_) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(_module=module)
        try:
            mod = importlib.import_module(f"maskshare.commands.{module}")
        except ModuleNotFoundError as e:
            if e.name != f"maskshare.commands.{module}":
                raise
            sp.set_defaults(_missing=True)
            continue
        mod.add_arguments(sp)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "httpcore", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.command is None:
        parser.print_help()
        return 0
    if getattr(args, "_missing", False):
        print(f"maskshare {args.command}: not built yet", file=sys.stderr)
        return 1
    mod = importlib.import_module(f"maskshare.commands.{args._module}")
    try:
        return int(mod.run(args) or 0)
    except UserError as e:
        print(f"maskshare {args.command}: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, no permission, a read-only file system: one line
        if e.errno not in WRITE_ERRNOS:
            raise
        w = e if isinstance(e, WriteError) else WriteError(e.errno, e.strerror, e.filename)
        print(f"maskshare {args.command}: {w}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
