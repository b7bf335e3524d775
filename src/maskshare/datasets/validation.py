"""The validation split: training rows set aside to choose with (docs/selection.md).

Held-out splits (`test_phrasing`, `test_entity`, `test_both`) answer the questions the
report asks; nothing may be chosen on them. What is chosen (the run's circuit, where the
sweep adds lambdas) is chosen on `validation`: rows carved from `train` when the run's
dataset is copied into the run (stage `dataset`), so the cached dataset build is untouched.
Validation rows fit nothing: the grouping, the slot statistics, the attribution scores and
the masks read `train` only; the fitted grouping gives validation tokens their slots as it
does any held-out prompt's.

How the rows are carved mirrors the held-out question the run headlines (`by: auto`):

- free-form template data with at least `MIN_GROUPS` training phrasings: a seeded
  `fraction` of those phrasings (at least one; every entity stays known), as
  `test_phrasing` holds phrasings out;
- prompt datasets with at least `MIN_GROUPS` training groups: a seeded fraction of the
  groups (`phrasing` is a prompt dataset's group);
- otherwise (templated data, too few groups): a seeded `fraction` of the training
  entities (a prompt dataset's rows without an entity are their own units).

A prompt text never sits on both sides: a training row whose text also occurs among the
validation rows moves to validation.
"""

from __future__ import annotations

import random
from typing import Any

import polars as pl

MIN_GROUPS = 3  # training phrasings / groups needed to hold some out for validation
VALIDATION = "validation"


def _seeded_share(units: list, fraction: float, seed: int, what: str) -> set:
    """A seeded `fraction` of `units` (sorted first): at least one, never all."""
    units = sorted(set(units))
    if len(units) < 2:
        return set()
    n = min(len(units) - 1, max(1, round(fraction * len(units))))
    random.Random(f"validation:{what}:{seed}").shuffle(units)
    return set(units[:n])


def choose_by(items: pl.DataFrame, by: str) -> str:
    """`phrasing` or `entity` for `by: auto` (see the module doc); `by` otherwise."""
    if by != "auto":
        return by
    train = items.filter(pl.col("split") == "train")
    n_groups = train["phrasing_id"].n_unique()
    templated = (items["variant"] == "templated").all()
    return "phrasing" if not templated and n_groups >= MIN_GROUPS else "entity"


def carve_validation(items: pl.DataFrame, by: str, fraction: float,
                     seed: int) -> tuple[pl.DataFrame, dict[str, Any]]:
    """`items` with some `train` rows relabelled `validation` (module doc), and what was
    done: {by, n_validation, phrasings or entities}. `by: none` changes nothing."""
    if by == "none":
        return items, {"by": "none", "n_validation": 0}
    how = choose_by(items, by)
    train = items.filter(pl.col("split") == "train")
    if how == "phrasing":
        held = _seeded_share(train["phrasing"].to_list(), fraction, seed, "phrasing")
        chosen = pl.col("phrasing").is_in(sorted(held))
    else:
        held = _seeded_share(train["entity"].to_list(), fraction, seed, "entity")
        chosen = pl.col("entity").is_in(sorted(held))
    is_train = pl.col("split") == "train"
    texts = set(train.filter(chosen)["prompt"].to_list())
    out = items.with_columns(
        pl.when(is_train & (chosen | pl.col("prompt").is_in(sorted(texts))))
        .then(pl.lit(VALIDATION)).otherwise(pl.col("split")).alias("split"))
    n_val = out.filter(pl.col("split") == VALIDATION).height
    if out.filter(pl.col("split") == "train").height == 0:  # nothing left to train on
        return items, {"by": how, "n_validation": 0, "note": "too few training rows"}
    key = "phrasings" if how == "phrasing" else "entities"
    return out, {"by": how, "n_validation": n_val, key: sorted(held)}
