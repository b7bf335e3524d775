"""Typed run configuration: one place states every default.

The same YAML drives `maskshare run --config FILE`, the Prefect flows and deployments.
Unknown fields are rejected (a typo must not silently fall back to a default).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from maskshare.config_grouping import AttentionFeatures as AttentionFeatures
from maskshare.config_grouping import GroupingConfig
from maskshare.config_grouping import GroupingKind as GroupingKind
from maskshare.config_selection import OwnLatents, SweepConfig, ValidationSplit, ValidationStop
from maskshare.domains import (
    Count,
    DatasetName,
    Finite,
    NonNegFloat,
    NonNegInt,
    PositiveFloat,
    Seed,
    Slug,
    Text,
    bad,
    distinct,
)
from maskshare.errors import UserError
from maskshare.kinds import ABLATIONS, KindName
from maskshare.model.sae_set import SAESetConfig
from maskshare.validation import (
    NEW_FIELD,
    HashRule,
    Strict,
    hash_excluded,
    read_yaml_file,
    validation_message,
)


class Ablation(KindName):
    """An ablation's name (`maskshare.kinds.ABLATIONS`; each is a class in
    `maskshare.masks.ablations` that owns its values)."""

    registry = ABLATIONS


Ablation.SLOT_MEAN = Ablation("slot-mean")
Ablation.GLOBAL_MEAN = Ablation("global-mean")
Ablation.ZERO = Ablation("zero")
# each token's latents from the patch prompt's, aligned by slot (masks.slot_patching)
Ablation.COUNTERFACTUAL = Ablation("counterfactual")


# NEW_FIELD (maskshare.validation): added after run directories existed, left out of
# config.yaml and the run's hash while at its default (`config_data`)
# chooses which masks to train or where training starts (hashed there through the start
# itself), not what a training computes: out of a mask's training key (masks.checkpoints)
NOT_IN_MASK_KEY = HashRule("not in a mask's key")
# where a run runs, not what it computes: out of the run directory's name (run_dir_for)
NOT_IN_RUN_HASH = HashRule("not in the run's hash")


class ErrorTerm(StrEnum):
    CLEAN = "clean"
    MEAN = "mean"
    DROP = "drop"


class Objective(StrEnum):
    LOGIT_DIFF = "logit-diff"
    KL = "kl"
    CE = "ce"


class Relaxation(StrEnum):
    SIGMOID = "sigmoid"
    HARD_CONCRETE = "hard-concrete"


class DatasetRef(Strict):
    """A built-in or user-added dataset (data/datasets/<name>.yaml), or a spec file named by
    its path (`name: path/to/spec.yaml`: ends in .yaml/.yml or holds a slash), and its
    variant (prompt datasets have one: `freeform`)."""

    name: DatasetName = "elements-symbol"
    variant: Literal["templated", "freeform"] = "freeform"
    max_items: Count | None = Field(default=None, description="cap on items after filtering")
    min_items: Count = Field(default=20, description="fail if fewer items pass the filter")
    # true stays the default (not a kind's name) so configs that leave it out keep their hash
    behaviour_filter: bool | Literal["top1", "logit-diff", "none"] = Field(
        default=True, description="which items to keep: top1 (the model's top token is the "
        "answer's first token), logit-diff (logit(answer) - logit(counterfactual) above the "
        "spec's filter.margin, default 0) or none; true = the dataset's default (top1 for "
        "template specs, the spec's filter for prompt specs: logit-diff), false = none (dry "
        "runs on models that answer nothing, e.g. `tiny`)")
    validation: ValidationSplit = Field(default_factory=ValidationSplit)


# The "auto" sweep, in task-normalised units (MaskConfig.scale = "task"): a lambda is the
# share of the task's effect (mean |ld(empty) - ld(M)|) one latent per token must carry to be
# kept. Placed from the embedded model: its earlier hand-calibrated sweep on elements-symbol
# (0.02 / 0.05 / 0.12 logit units, ~150 / ~95 / ~50 latents per token) over that task's scale
# (~8.2 logit units, measured) is 0.0024 / 0.006 / 0.015 in these units; the grid extends it
# a factor ~3 each side, to sparse circuits (README, "Sparsity without tuning").
AUTO_LAMBDAS = (0.003, 0.01, 0.03, 0.1)


_LAMBDA_LIST = TypeAdapter(Annotated[list[NonNegFloat], Field(min_length=1)])


class MaskConfig(Strict):
    objective: Objective = Objective.LOGIT_DIFF
    ablation: Ablation = Ablation.SLOT_MEAN
    # the SAE error term: `clean` keeps x - dec(enc(x)) of the running pass (M is then the
    # model itself); the embedded SAEs keep only 0.27 of the logit difference without it
    error: ErrorTerm = ErrorTerm.CLEAN
    relaxation: Relaxation = Relaxation.SIGMOID
    # The sparsity sweep: `auto` (the default) is AUTO_LAMBDAS, a grid in task-normalised
    # units (see `scale`) spanning dense to sparse circuits on any task, so a new task needs
    # no tuning; or a list, each >= 0 (lambda 0, no sparsity penalty, is the full mask)
    lambdas: Annotated[list[float] | Literal["auto"], NOT_IN_MASK_KEY] = "auto"
    # "task": the objective is divided by its value for the empty circuit (every latent
    # ablated; for logit-diff the task's own mean |ld(empty) - ld(M)|), so a lambda means
    # "share of the task's effect per latent kept per token" on every task; "none": raw units
    scale: Literal["task", "none"] = "task"
    # optimiser settings calibrated on the embedded model (README): masks start near 0.5 so
    # unneeded latents switch off before the temperature grows
    steps: Count = 60
    lr: PositiveFloat = 0.1
    batch_size: Count = 16
    temperature_start: PositiveFloat = 1.0
    temperature_end: PositiveFloat = 200.0  # >= temperature_start
    init_logit: Finite = 0.5    # theta at start (mask ~ on)
    checkpoint_every: Annotated[Count, NOT_IN_MASK_KEY] = 25
    max_train_prompts: Count | None = None
    # stop once the binarised mask (theta > 0) has not changed for this many consecutive
    # steps, but not before `early_stop_min_steps`; None: always run `steps`
    early_stop_patience: Count | None = 10
    early_stop_min_steps: NonNegInt = 10
    # where training starts (maskshare.masks.warm_start): `cold` (init_logit everywhere) or
    # `attribution` (the variant's integrated-gradients scores from stage attribution,
    # mapped to logits by a benefit/cost rule that opens triples whose score exceeds
    # `init_open_ratio` x their penalty; a variant without scores starts cold)
    init: Annotated[Literal["cold", "attribution"], NOT_IN_MASK_KEY] = "attribution"
    init_open_ratio: Annotated[PositiveFloat, NOT_IN_MASK_KEY] = 0.33
    # the sweep as a chain: each lambda (ascending) starts from the previous one's theta
    continue_sweep: Annotated[bool, NOT_IN_MASK_KEY] = True
    # steps of a warm-started or continued training (the anneal compressed into them; at
    # most `steps`); None: `steps`
    warm_steps: Annotated[Count | None, NOT_IN_MASK_KEY] = 20
    # lambdas added after the first ones, from their circuits' sizes and F (SweepConfig);
    # which lambdas a run has, not how one mask trains
    sweep: Annotated[SweepConfig, NOT_IN_MASK_KEY] = Field(default_factory=SweepConfig)
    validation_stop: Annotated[ValidationStop, NEW_FIELD] = Field(
        default_factory=ValidationStop)

    @field_validator("lambdas", mode="wrap")
    @classmethod
    def _lambdas(cls, v, handler):
        if v == "auto":
            return "auto"
        try:
            lams = _LAMBDA_LIST.validate_python(v)
        except ValidationError as e:  # one line naming the item, not the union's two branches
            err = e.errors()[0]
            item = ".".join(str(x) for x in err["loc"])
            raise bad(f"{'item ' + item + ': ' if item else ''}{err['msg']} (or: auto)") from None
        # each lambda names a folder lam{lambda:g}: two that print alike would share it
        return distinct(lams, "lambdas", key=lambda x: f"{x:g}")

    @model_validator(mode="after")
    def _annealing_up(self):
        if self.temperature_end < self.temperature_start:
            raise bad(f"temperature_end ({self.temperature_end:g}) must be >= "
                      f"temperature_start ({self.temperature_start:g})")
        return self

    @property
    def lambda_grid(self) -> list[float]:
        """The lambdas to train: the configured list, or AUTO_LAMBDAS for `auto`."""
        return list(AUTO_LAMBDAS) if self.lambdas == "auto" else list(self.lambdas)


class EvalConfig(Strict):
    seeds: list[Seed] = Field(default_factory=lambda: [0, 1], min_length=1)  # stability
    baselines: list[GroupingKind] = Field(
        default_factory=lambda: [GroupingKind.SINGLE, GroupingKind.FROM_END, GroupingKind.ROLES])
    ablations: list[Ablation] = Field(
        default_factory=lambda: [Ablation.GLOBAL_MEAN, Ablation.ZERO])
    matched_latents_per_token: PositiveFloat | None = None  # None: chosen from the curves
    # the run's circuit (its lambda): the sparsest whose F on (a seeded sample of at most
    # `select_limit` prompts of) `select_split` reaches `target_f`; if none does, the one
    # with the best F. `validation` (dataset.validation) falls back to `train` where the
    # run has no validation rows (runs built before it existed); a held-out split here is
    # a peek at the test data, and the report says so
    select_split: Annotated[Literal["validation", "train", "test_phrasing", "test_entity",
                                    "test_both"], NEW_FIELD] = "validation"
    select_limit: Annotated[Count | None, NEW_FIELD] = 64
    target_f: Annotated[PositiveFloat, NEW_FIELD] = 0.9
    # a circuit reaching target_f whose F on its mask's training sample (the recorded fit)
    # is below this is refused (maskshare.evaluation.selection); None: no floor
    train_floor: Annotated[Finite | None, NEW_FIELD] = 0.8
    own_latents: Annotated[OwnLatents, NEW_FIELD] = Field(default_factory=OwnLatents)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: list[int]) -> list[int]:
        return distinct(v, "seeds")


class AttributionConfig(Strict):
    """Node attribution over (slot, SAE, latent) triples (stage `attribution`): a peer method
    to the learned masks and the scores a warm start reads. `methods`: `atp` (attribution
    patching) and/or `ig` (integrated gradients, `ig_steps` steps along the ablation path,
    as Sparse Feature Circuits does); an empty list switches the stage off. `variants`:
    `main` (the run's main variant only) or `all` (every variant whose masks are trained)."""

    methods: Annotated[list[Literal["atp", "ig"]], NEW_FIELD] = Field(
        default_factory=lambda: ["atp", "ig"])
    ig_steps: Annotated[Count, Field(le=1000), NEW_FIELD] = 10
    variants: Annotated[Literal["main", "all"], NEW_FIELD] = "main"

    @field_validator("methods")
    @classmethod
    def _distinct_methods(cls, v: list[str]) -> list[str]:
        return distinct(v, "methods")


class RunConfig(Strict):
    name: Slug = "default"  # part of the run directory's name
    seed: Seed = 0
    model: Text = "smollm2-135m"  # a name, or a local Hugging Face folder
    device: Annotated[str, NOT_IN_RUN_HASH] = Field(
        default="cpu", pattern=r"^(cpu|cuda|mps|xpu)(:[0-9]+)?$")
    threads: Annotated[Annotated[Count, Field(le=4096)] | None, NOT_IN_RUN_HASH] = None
    saes: SAESetConfig = Field(default_factory=SAESetConfig)
    dataset: DatasetRef = Field(default_factory=DatasetRef)
    grouping: GroupingConfig = Field(default_factory=GroupingConfig)
    masks: MaskConfig = Field(default_factory=MaskConfig)
    evaluate: EvalConfig = Field(default_factory=EvalConfig)
    attribution: AttributionConfig = Field(default_factory=AttributionConfig)
    runs_dir: Annotated[Text, NOT_IN_RUN_HASH] = "data/runs"


def parse_config(data: object, source: str = "config") -> RunConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise UserError(validation_message(e, source)) from None


def load_config(path: str | Path) -> RunConfig:
    path = Path(path)
    return parse_config(read_yaml_file(path, "config"), str(path))


def config_data(cfg: RunConfig) -> dict:
    """`cfg` as plain JSON data, without the `NEW_FIELD` fields at their default (at any
    depth: a field added to a sub-section, e.g. `evaluate.own_latents.by`, too)."""
    data = cfg.model_dump(mode="json")
    for section in type(cfg).model_fields:
        value = getattr(cfg, section)
        if not isinstance(value, BaseModel):
            continue
        _drop_new_defaults(value, data[section])
        if not data[section]:  # a section added whole, at its default: left out entirely
            data.pop(section)
    return data


def _drop_new_defaults(value: BaseModel, data: dict) -> None:
    """Pop from `data` (`value` dumped) its `NEW_FIELD` fields at their default, and so in
    every sub-model still there."""
    names = hash_excluded(value, NEW_FIELD)
    if names:
        default = type(value)()
        for n in names:
            if getattr(value, n) == getattr(default, n):
                data.pop(n, None)
    for n in type(value).model_fields:
        sub = getattr(value, n)
        if isinstance(sub, BaseModel) and isinstance(data.get(n), dict):
            _drop_new_defaults(sub, data[n])


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(config_data(cfg), sort_keys=False)
