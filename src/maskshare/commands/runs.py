"""`maskshare runs list | clean`: the run directories under a runs root, and tidying it.

`list` shows each run (a folder with a config.yaml): when it was created, its size, whether
every stage is complete, and its headline F. `clean` finds what a killed process leaves
behind (dot-named temporary files and folders, `.NAME.*`, older than `--stale-minutes` and
whose stage nobody holds the lock of; mask checkpoints only with `--checkpoints`, or once
their mask is complete: a kill between the mask's rename and the checkpoint's removal
leaves one nothing resumes from) and, with
`--older-than N`, runs not written to for N days. It only prints what it would delete
unless given `--yes`.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from maskshare.artifacts import LOCK_SUFFIX, MANIFEST, is_complete, lock_is_held, stage_lock
from maskshare.config import RunConfig
from maskshare.errors import UserError
from maskshare.run.layout import RunLayout
from maskshare.runtime import PROJECT_ROOT

CHECKPOINT_SUFFIX = ".checkpoint"


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True,
                                parser_class=type(parser))
    for name, help_ in (("list", "list the runs under the runs root"),
                        ("clean", "delete stale temporary files and (optionally) old runs")):
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--runs-dir", default=None,
                       help="runs root (default: the configs' runs_dir, data/runs)")
    p.add_argument("--stale-minutes", type=float, default=60.0,
                   help="temporary files untouched this long count as stale (default 60)")
    p.add_argument("--older-than", type=float, default=None, metavar="DAYS",
                   help="also delete runs not written to for this many days")
    p.add_argument("--checkpoints", action="store_true",
                   help="also delete stale mask-training checkpoints (a rerun then trains "
                        "that mask from the start instead of resuming); those of "
                        "finished masks are deleted anyway")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", default=True,
                      help="only print what would be deleted (the default)")
    mode.add_argument("--yes", action="store_true", help="delete")


def runs_root(runs_dir: str | None) -> Path:
    root = Path(runs_dir if runs_dir is not None else RunConfig().runs_dir).expanduser()
    return root if root.is_absolute() else PROJECT_ROOT / root


def _entries(path: Path):
    return [path] if not path.is_dir() else [path, *path.rglob("*")]


def size_of(path: Path) -> int:
    return sum(p.lstat().st_size for p in _entries(path) if p.is_file())


def last_written(path: Path) -> float:
    return max((p.lstat().st_mtime for p in _entries(path)), default=0.0)


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


@dataclass
class RunInfo:
    path: Path
    created: float
    size: int
    complete: bool
    faithfulness: float | None


def run_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and RunLayout(p).is_run())


def run_info(run: Path, verify_hashes: bool = False) -> RunInfo:
    layout = RunLayout(run)
    stages = layout.stage_outputs()
    complete = bool(stages) and layout.metrics.is_file() and all(
        is_complete(d, verify_hashes=verify_hashes) for d in stages)
    f = None
    try:
        f = json.loads(layout.metrics.read_text()).get("faithfulness")
    except (OSError, ValueError, AttributeError):
        pass
    return RunInfo(run, layout.config.stat().st_mtime, size_of(run), complete,
                   f if isinstance(f, (int, float)) else None)


def _lock_held(entry: Path) -> bool:
    """Whether some process holds the lock of the stage a `.NAME.<rest>` entry belongs to.
    NAME may itself contain dots (lam0.01_seed0), so every prefix is tried."""
    parts = entry.name[1:].split(".")
    for k in range(1, len(parts)):
        if lock_is_held(entry.parent / ".".join(parts[:k])):
            return True
    return False


def _locked(lock_file: Path) -> Path:
    """The folder a `.NAME.lock` file locks."""
    return lock_file.with_name(lock_file.name[1:-len(LOCK_SUFFIX)])


def _mask_done(checkpoint: Path) -> bool:
    """Whether the mask a `.NAME.checkpoint` folder trains is complete (nothing resumes it)."""
    return is_complete(checkpoint.with_name(checkpoint.name[1:-len(CHECKPOINT_SUFFIX)]))


def stale_entries(root: Path, minutes: float, *, checkpoints: bool = False,
                  now: float | None = None) -> list[Path]:
    """Dot-named temporary files and folders under `root` (not inside another one) that
    were last written more than `minutes` ago and whose stage lock is free."""
    now = time.time() if now is None else now
    found: list[Path] = []

    def walk(d: Path) -> None:
        for p in sorted(d.iterdir()):
            if not p.name.startswith("."):
                if p.is_dir() and not p.is_symlink():
                    walk(p)
                continue
            if p.name == MANIFEST:
                continue
            if p.name.endswith(LOCK_SUFFIX):  # left by a killed holder if not held now
                if now - last_written(p) > minutes * 60 and not lock_is_held(_locked(p)):
                    found.append(p)
                continue
            if p.name.endswith(CHECKPOINT_SUFFIX) and not (checkpoints or _mask_done(p)):
                continue
            if now - last_written(p) > minutes * 60 and not _lock_held(p):
                found.append(p)

    if root.is_dir():
        walk(root)
    return found


def old_runs(root: Path, days: float, now: float | None = None) -> list[Path]:
    """Runs not written to for more than `days` days and with no stage lock held."""
    now = time.time() if now is None else now
    out = []
    for run in run_dirs(root):
        if now - last_written(run) <= days * 86400:
            continue
        locks = run.rglob(f".*{LOCK_SUFFIX}")
        if any(lock_is_held(_locked(p)) for p in locks):
            continue
        out.append(run)
    return out


def _list(root: Path) -> int:
    runs = run_dirs(root)
    if not runs:
        print(f"no runs under {root}")
        return 0
    print(f"{'run':40s} {'created':16s} {'size':>9s} {'complete':>8s} {'F':>7s}")
    for r in map(run_info, runs):
        f = "" if r.faithfulness is None else f"{r.faithfulness:.3f}"
        print(f"{r.path.name:40s} {time.strftime('%Y-%m-%d %H:%M', time.localtime(r.created))} "
              f"{_human(r.size):>9s} {'yes' if r.complete else 'no':>8s} {f:>7s}")
    return 0


def _clean(root: Path, args) -> int:
    if args.stale_minutes < 0 or (args.older_than is not None and args.older_than < 0):
        raise UserError("--stale-minutes and --older-than must be >= 0")
    doomed = stale_entries(root, args.stale_minutes, checkpoints=args.checkpoints)
    if args.older_than is not None:
        doomed += old_runs(root, args.older_than)
    verb = "deleted" if args.yes else "would delete"
    total = 0
    for p in doomed:
        n = size_of(p)
        total += n
        if args.yes:
            if p.name.endswith(LOCK_SUFFIX):
                with stage_lock(_locked(p), wait=False):
                    pass  # taken and released: stage_lock removes the file while holding it
            elif p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        print(f"{verb} {p} ({_human(n)})")
    print(f"{verb} {len(doomed)} item(s), {_human(total)}"
          + ("" if args.yes or not doomed else "; run again with --yes to delete"))
    return 0


def run(args) -> int:
    root = runs_root(args.runs_dir)
    if args.action == "list":
        return _list(root)
    return _clean(root, args)
