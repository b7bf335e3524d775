"""The run's headline circuit, chosen on validation only (docs/selection.md).

Rule (`evaluate.target_f`, `evaluate.select_split`): among the main variant's circuits at
the first seed, the smallest (fewest latents per token on the selection split) whose F on
the selection split reaches `target_f`; if none does, the one with the best F there. With
`evaluate.train_floor`, a circuit reaching the target whose F on its own training sample
(the mask's recorded fit, `f_train`) is below the floor is refused: a mask that fails the
prompts it was trained on is not the task's circuit, however well it scores on a validation
split that may be one group (agreement's `subjrc`). Where every circuit reaching the target
is refused, the smallest of them is kept and the rule says so. The
selection split is `validation` (dataset.validation) where the run has one, else `train`
(runs built without one); a held-out split named there is a peek at the test data, and
`Selection.peeked` says so. A pure function of evaluation rows (and, with the floor, of the
masks' recorded training fits): rows of other splits are never read.
"""

from __future__ import annotations

from dataclasses import dataclass

HELDOUT = ("test_phrasing", "test_entity", "test_both")
SMALLEST = "smallest circuit reaching the target F"
BEST = "best F (no circuit reaches the target F)"
UNFIT = ("smallest circuit reaching the target F (every one of them is below the training "
         "floor)")


def selection_split(select_split: str, items) -> str:
    """The split the run chooses on: `select_split`, or `train` when it is `validation` and
    the run has no validation rows."""
    if select_split == "validation" and not (items["split"] == "validation").any():
        return "train"
    return select_split


@dataclass(frozen=True)
class Selection:
    """The chosen circuit: its lambda, the rule that picked it, and its figures on the
    selection split."""

    lam: float
    rule: str
    split: str
    target_f: float
    faithfulness: float | None
    latents_per_token: float | None
    n_prompts: int | None
    train_floor: float | None = None
    refused: tuple[float, ...] = ()  # lambdas reaching the target, below the training floor

    @property
    def peeked(self) -> bool:
        return self.split.split(":")[0] in HELDOUT

    def as_metrics(self) -> dict:
        """The `selection` entry of metrics.json (and `faithfulness_<split>`)."""
        return {"selection": {"rule": self.rule, "split": self.split, "target_f": self.target_f,
                              "lambda": self.lam, "faithfulness": self.faithfulness,
                              "latents_per_token": self.latents_per_token,
                              "n_prompts": self.n_prompts, "peeked_at_test": self.peeked,
                              **({"train_floor": self.train_floor,
                                  "refused_below_train_floor": list(self.refused)}
                                 if self.train_floor is not None else {})},
                f"faithfulness_{self.split}": self.faithfulness}


def choose_circuit(rows, variant: str, split: str, target_f: float,
                   train_f: dict[float, float | None] | None = None,
                   train_floor: float | None = None) -> Selection:
    """The rule of the module doc over `rows` (comparison.EvalRow) of `variant` on `split`
    (learned masks only); `train_f`: {lambda: F on the mask's training sample} (a lambda
    missing or None there is never refused), read only with `train_floor`."""
    sel = [r for r in rows if r.variant == variant and r.split == split and r.lam is not None]
    if not sel:
        raise ValueError(f"no rows of {variant} on {split} to choose from")
    ok = [r for r in sel if r.faithfulness is not None and r.faithfulness >= target_f]
    refused: tuple[float, ...] = ()
    if ok and train_floor is not None and train_f:
        fit = [r for r in ok if train_f.get(r.lam) is None or train_f[r.lam] >= train_floor]
        refused = tuple(sorted(r.lam for r in ok if r not in fit))
        ok, unfit = (fit, False) if fit else (ok, True)
    else:
        unfit = False
    if ok:
        best = min(ok, key=lambda r: (r.latents_per_token, r.lam))
        rule = UNFIT if unfit else SMALLEST
    else:
        scored = [r for r in sel if r.faithfulness is not None]
        best = max(scored, key=lambda r: (r.faithfulness, -r.lam)) if scored else sel[0]
        rule = BEST
    m = best.metrics
    return Selection(best.lam, rule, split, target_f, best.faithfulness,
                     best.latents_per_token, m.get("n_prompts"), train_floor, refused)
