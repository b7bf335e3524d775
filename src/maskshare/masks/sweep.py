"""A sweep driven by size: which lambdas to add once some are trained (docs/selection.md).

The first lambdas (`masks.lambdas`, `auto`: AUTO_LAMBDAS) are a guess. Once they are
trained, each circuit's fit is known (`Fit`: latents per token and F on the training
sample, F on the validation sample; written by the masks stage) and `next_lambdas` says
what to add (`masks.sweep`, `SweepConfig`), in this order of priority while the chain's
budget lasts:

1. dense end: the densest circuit must reach F >= `dense_f` on training and validation;
   else a lambda `extend` times smaller, trained as a chain head (from the attribution
   scores, or cold), unless the last extension gained less than `STALL_F` (measured on
   the embedded model: validation F stays near 0.58 from 226 to 864 latents per token,
   so smaller lambdas only spend the budget);
2. sparse end: the sparsest must keep at most `sparse_size` latents per token; else a
   lambda `extend` times larger, continuing from the sparsest;
3. requested sizes (`sizes`): each needs a circuit within a factor `size_tolerance`; else
   the geometric midpoint of the two lambdas whose sizes bracket it (bisection), or an end
   extended;
4. holes: neighbours (by lambda) whose sizes differ by more than a factor `max_ratio`
   (sizes below `sparse_size` count as `sparse_size`) get their geometric midpoint,
   largest hole first.

A new lambda between two others continues from the denser neighbour's theta (with
`masks.continue_sweep`), so the masks already trained keep their keys and the new one is
one more content-addressed StageCall. A pure function of the fits: rerunning a finished
sweep adds nothing, and the same fits always give the same lambdas. Lambdas are rounded to
three significant digits (they name folders, `lam{lambda:g}`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from maskshare.config import SweepConfig

MIN_LAMBDA_RATIO = 1.05  # neighbours closer than this are not split further
STALL_F = 0.01  # a denser end that gained less F than this: extending further stops


@dataclass(frozen=True)
class Fit:
    """One trained circuit of a sweep: its lambda, latents per token and F on the training
    sample, F on the validation sample (None where the run has none)."""

    lam: float
    size: float
    f_train: float | None
    f_validation: float | None = None

    @property
    def f_worst(self) -> float | None:
        fs = [f for f in (self.f_train, self.f_validation) if f is not None]
        return min(fs) if fs else None


@dataclass(frozen=True)
class NewLambda:
    """A lambda to train, where it starts (`start`: the lambda whose mask it continues, or
    None for a chain head), and why (for the log and docs)."""

    lam: float
    start: float | None
    why: str


def _round(x: float) -> float:
    return float(f"{x:.3g}")


def _mid(a: float, b: float) -> float | None:
    """The geometric midpoint of a < b, rounded; None when they are too close to split."""
    if a <= 0 or b / a < MIN_LAMBDA_RATIO:
        return None
    m = _round(math.sqrt(a * b))
    return m if a < m < b else None


def next_lambdas(fits: list[Fit], rule: SweepConfig, budget_left: int,
                 continue_sweep: bool = True) -> list[NewLambda]:
    """The lambdas to add to a sweep whose trained circuits are `fits` (module doc), at most
    `budget_left`, none already in `fits`."""
    if not fits or budget_left <= 0:
        return []
    pts = sorted(fits, key=lambda f: f.lam)
    have = {p.lam for p in pts}
    out: list[NewLambda] = []

    def add(lam: float | None, start: float | None, why: str) -> None:
        if lam is None or lam in have or any(n.lam == lam for n in out):
            return
        out.append(NewLambda(lam, start if continue_sweep else None, why))

    dense, sparse = pts[0], pts[-1]
    f = dense.f_worst

    def denser(why: str) -> None:
        if dense.lam > 0:
            add(_round(dense.lam / rule.extend), None, why)

    def sparser(why: str) -> None:
        add(_round(max(sparse.lam, 1e-6) * rule.extend), sparse.lam, why)

    stalled = (len(pts) > 1 and f is not None and pts[1].f_worst is not None
               and f < pts[1].f_worst + STALL_F)
    if f is not None and f < rule.dense_f and not stalled:
        denser(f"densest F {f:.3f} < {rule.dense_f:g}")
    if sparse.size > rule.sparse_size:
        sparser(f"sparsest keeps {sparse.size:.3g} > {rule.sparse_size:g} latents/token")
    for s in rule.sizes:
        if any(abs(math.log(max(p.size, 1e-9) / s)) <= math.log(rule.size_tolerance)
               for p in pts):
            continue
        if s > max(p.size for p in pts):
            denser(f"size {s:g} above the densest")
        elif s < min(p.size for p in pts):
            sparser(f"size {s:g} below the sparsest")
        else:
            for a, b in zip(pts, pts[1:], strict=False):
                if min(a.size, b.size) < s < max(a.size, b.size):
                    add(_mid(a.lam, b.lam), a.lam, f"size {s:g} between lambdas "
                        f"{a.lam:g} and {b.lam:g}")
                    break
    floor = max(rule.sparse_size, 1e-9)
    holes = []
    for a, b in zip(pts, pts[1:], strict=False):
        hi, lo = max(a.size, b.size, floor), max(min(a.size, b.size), floor)
        if hi / lo > rule.max_ratio:
            holes.append((hi / lo, a, b))
    for ratio, a, b in sorted(holes, key=lambda h: (-h[0], h[1].lam)):
        add(_mid(a.lam, b.lam), a.lam, f"sizes {a.size:.3g} and {b.size:.3g} differ by "
            f"x{ratio:.2f} > x{rule.max_ratio:g}")
    return out[:budget_left]


def holes_left(fits: list[Fit], rule: SweepConfig) -> list[tuple[float, float, float]]:
    """(lambda, next lambda, size ratio) of every neighbouring pair still further apart than
    `max_ratio` in latents per token (what a sweep reports when its budget ran out)."""
    pts = sorted(fits, key=lambda f: f.lam)
    floor = max(rule.sparse_size, 1e-9)
    out = []
    for a, b in zip(pts, pts[1:], strict=False):
        hi, lo = max(a.size, b.size, floor), max(min(a.size, b.size), floor)
        if hi / lo > rule.max_ratio:
            out.append((a.lam, b.lam, hi / lo))
    return out
