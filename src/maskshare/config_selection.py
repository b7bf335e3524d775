"""The selection settings of a run's config: the validation split carved from the training
rows, how the lambda sweep grows by size, and stopping a training on validation F
(docs/selection.md), with how a run directory written before them is read
(`run_config_data`). `maskshare.config` holds them in `RunConfig`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from maskshare.domains import (
    Count,
    Finite,
    NonNegFloat,
    NonNegInt,
    PositiveFloat,
    Seed,
    Text,
)
from maskshare.validation import NEW_FIELD, Strict


class ValidationSplit(Strict):
    """The validation split carved from the training rows when the run's dataset is copied
    into the run (maskshare.datasets.validation; docs/selection.md). Validation rows fit
    nothing (grouping, slot statistics, attribution, masks read `train` only); they choose
    the run's circuit (`evaluate.select_split: validation`) and drive the sweep's
    refinement. `by`: `auto` (training phrasings of a free-form template dataset with at
    least 3 of them, or groups of a prompt dataset with at least 3; else entities),
    `phrasing` (phrasings / groups), `entity` (entities or rows), `none` (no validation
    split: selection falls back to the training prompts). `fraction`: share of the training
    phrasings / entities held for validation (at least one)."""

    by: Literal["auto", "phrasing", "entity", "none"] = "auto"
    fraction: Annotated[PositiveFloat, Field(lt=1)] = 0.2
    seed: Seed = 0


class SweepConfig(Strict):
    """How the lambda sweep grows after its first lambdas are trained (maskshare.masks.sweep;
    docs/selection.md): each (variant) chain adds lambdas, at most `budget`, until

    - its densest circuit reaches F >= `dense_f` on the training and the validation sample
      (else a lambda `extend` times smaller than its smallest),
    - its sparsest keeps at most `sparse_size` latents per token (else `extend` times larger),
    - each requested size in `sizes` (latents per token) has a circuit within a factor
      `size_tolerance` (else the geometric midpoint of the lambdas around it), and
    - no two neighbouring circuits differ by more than a factor `max_ratio` in latents per
      token (else their geometric midpoint, continuing from the denser one's theta).

    `refine: false` trains the first lambdas only (the sweep of older runs)."""

    refine: bool = True
    budget: Annotated[NonNegInt, Field(le=64)] = 6
    max_ratio: Annotated[PositiveFloat, Field(gt=1)] = 1.8
    dense_f: Finite = 0.95
    sparse_size: NonNegFloat = 1.0
    extend: Annotated[PositiveFloat, Field(gt=1)] = 3.0
    sizes: list[PositiveFloat] = Field(default_factory=list)
    size_tolerance: Annotated[PositiveFloat, Field(gt=1)] = 1.15


class OwnLatents(Strict):
    """The subject's own latents in every scored circuit (`maskshare.masks.own_latents`;
    docs/transfer.md sections 6-7, 10): at each prompt's tokens whose role is in `roles`, the
    `k` latents per SAE most active there in that prompt's clean pass (`by: activation`), or
    farthest there from the value the ablation would give them (`by: deviation`), are kept in every
    circuit the evaluation scores (learned masks, baselines, attribution circuits) and
    ablated in its complement; sizes count the latents this adds. A recall circuit is then
    a fixed set of task latents plus the subject's own latents at its mention. `k: 0` (the
    library default) scores the learned circuits alone. Masks train without them."""

    k: Annotated[NonNegInt, Field(le=4096)] = 0
    roles: Annotated[list[Text], Field(min_length=1)] = Field(
        default_factory=lambda: ["subject"])
    # added after runs with own latents existed: out of config.yaml and the hash at its default
    by: Annotated[Literal["activation", "deviation"], NEW_FIELD] = "activation"


class ValidationStop(Strict):
    """Stop a mask's training when its F on validation stops improving (off by default):
    every `every` steps (once `masks.early_stop_min_steps` ran) the binarised mask is scored
    on a seeded sample of at most `prompts` validation prompts; training ends after
    `patience` checks without a gain above `min_gain`, or at `masks.steps` /
    `masks.warm_steps` as before. Runs without validation rows train as before."""

    every: Count | None = None
    patience: Count = 2
    prompts: Count = 32
    min_gain: NonNegFloat = 0.005


def run_config_data(data: object) -> object:
    """A run directory's config.yaml data, read with the settings the run was built with: a
    run written before the validation split existed (no `dataset.validation`) had none, a
    static sweep, and chose its lambda on the training prompts (docs/selection.md). User
    configs are not upgraded: leaving the fields out there means the current defaults."""
    if not isinstance(data, dict) or "validation" in (data.get("dataset") or {}):
        return data
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    data.setdefault("dataset", {})["validation"] = {"by": "none"}
    data.setdefault("masks", {}).setdefault("sweep", {"refine": False})
    data.setdefault("evaluate", {}).setdefault("select_split", "train")
    return data
