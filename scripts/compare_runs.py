"""Compare two run directories file by file (sha256), ignoring only what records time.

    python scripts/compare_runs.py RUN_A RUN_B

Byte-compared: every file, except that wall-clock readings (never results) are masked
first: `created` and `timings` in `manifest.json`, `timings` in `metrics.json`,
`fit_assign_s` in a grouping's `quality.json`, the times shown in `.html` pages, and the
manifest hashes of those timed files. The dataset manifest's `built_dataset` input is
compared by its name only (its folder is the MASKSHARE_CACHE the run used). Prints one line per
differing or missing file and a summary; exit status 0 when everything else is identical.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

# every `<name>_s` is a wall time in seconds (evaluate_s, attribution_s, the evaluation phases)
TIMING = re.compile(r"(\b[a-z_]+_s)\b\D{0,40}?[0-9.]+(e-?\d+)?")


def _masked(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name == "manifest.json":
        m = json.loads(data)
        m.pop("created", None)
        m.pop("timings", None)
        for f in m.get("files", {}):
            if f.endswith(".html") or f == "quality.json":
                m["files"][f] = "<timed>"
        if isinstance(m.get("inputs"), dict) and "built_dataset" in m["inputs"]:
            m["inputs"]["built_dataset"] = Path(m["inputs"]["built_dataset"]).name
        return json.dumps(m, sort_keys=True).encode()
    if path.name == "metrics.json":
        m = json.loads(data)
        m.pop("timings", None)
        return json.dumps(m, sort_keys=True).encode()
    if path.name == "quality.json":  # the grouping stage records its own wall time
        m = json.loads(data)
        m.pop("fit_assign_s", None)
        return json.dumps(m, sort_keys=True).encode()
    if path.suffix == ".html":
        return TIMING.sub(r"\1=<time>", data.decode()).encode()
    return data


def compare(a: Path, b: Path) -> list[str]:
    """One line per file that differs or exists on one side only."""
    fa = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
    fb = {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    out = [f"only in A: {p}" for p in sorted(fa - fb)]
    out += [f"only in B: {p}" for p in sorted(fb - fa)]
    for rel in sorted(fa & fb):
        ha = hashlib.sha256(_masked(a / rel)).hexdigest()
        hb = hashlib.sha256(_masked(b / rel)).hexdigest()
        if ha != hb:
            out.append(f"differs: {rel}")
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    a, b = map(Path, argv)
    n = sum(1 for p in a.rglob("*") if p.is_file())
    diffs = compare(a, b)
    for line in diffs:
        print(line)
    print(f"{n} files in A; {len(diffs)} differ or are missing")
    return 0 if not diffs else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
