"""Typed run configuration: one place states every default.

The same YAML drives `maskshare run --config FILE`, the Prefect flows and deployments.
Unknown fields are rejected (a typo must not silently fall back to a default).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import Field, TypeAdapter, ValidationError, field_validator, model_validator

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
    not_bool,
)
from maskshare.errors import UserError
from maskshare.saes import SAESetConfig
from maskshare.validation import Strict, read_yaml_file, validation_message


class Ablation(StrEnum):
    SLOT_MEAN = "slot-mean"
    GLOBAL_MEAN = "global-mean"
    ZERO = "zero"
    # each token's latents replaced by those of the counterfactual prompt at the same
    # position (activation patching; needs prompt pairs of equal token length)
    COUNTERFACTUAL = "counterfactual"


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


class GroupingKind(StrEnum):
    ATTENTION = "attention"
    TEMPLATE = "template"
    SINGLE = "single"
    FROM_END = "from-end"
    ROLES = "roles"


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


class AttentionFeatures(Strict):
    """Which per-token attention features the `attention` grouping clusters."""

    # Defaults measured on elements-symbol (docs/groups-results.md): attention from the final
    # position in the last third of the layers separates the tokens the answer is read from.
    from_final: bool = True          # attention paid to the token by the final position
    to_bos: bool = False             # attention the token pays to BOS
    to_self: bool = False            # ... to itself
    to_prev: bool = False            # ... to its predecessor
    position_from_end: bool = False  # optionally, position counted from the end
    # None: layers from layer_start_fraction x n_layers on
    layers: list[NonNegInt] | None = Field(default=None, min_length=1)
    layer_start_fraction: Finite = Field(default=0.67, ge=0, lt=1)  # 0: every layer
    log_scale: bool = True           # log(attn + eps) before standardising
    # "bfloat16": the feature forward pass runs under autocast, ~1.6x faster on CPUs with
    # AVX512-BF16 (this machine) and the same groups on elements-symbol; use "float32" on
    # CPUs without bfloat16 instructions (autocast is slower there) or for exact patterns
    dtype: Literal["float32", "bfloat16"] = "bfloat16"
    # "uniform": each attention value times the number of keys its query attends to (the
    # final position's n for from_final, t + 1 for the token's own row), i.e. relative to
    # uniform attention, so a prompt's length alone does not shift the features; "none":
    # raw probabilities (they shrink as prompts grow). docs/transfer.md
    normalize: Literal["none", "uniform"] = "none"
    # the standardised position_from_end column times this before PCA: > 1 makes position
    # weigh like several attention columns (with position_from_end only)
    position_weight: Finite = Field(default=1.0, gt=0, le=100)

    @model_validator(mode="after")
    def _some_feature(self):
        if not (self.from_final or self.to_bos or self.to_self or self.to_prev
                or self.position_from_end):
            raise bad("switch on at least one of from_final, to_bos, to_self, to_prev, "
                      "position_from_end")
        return self


def _is_number(v, whole: bool = False) -> bool:
    try:
        x = float(v) if isinstance(v, (str, float)) else None
    except ValueError:
        return False
    return x is not None and (x.is_integer() or not whole)


class GroupingConfig(Strict):
    kind: GroupingKind = GroupingKind.ATTENTION
    # total slots, pinned ones included. A fixed 8 beat "auto" on agreement and
    # element-questions validation but lost badly on elements-symbol's (docs/transfer.md)
    n_slots: int | Literal["auto"] = "auto"
    n_slots_range: tuple[Count, Count] = (4, 12)  # searched when n_slots is "auto"
    score: Literal["silhouette", "bic"] = "silhouette"
    clusterer: Literal["kmeans", "agglomerative", "gmm", "hdbscan"] = "agglomerative"
    pca_components: int | float | None = 10  # int: components; float: variance kept
    pin_bos: bool = True
    pin_final: bool = True
    # attention: the last k positions each own a slot (slot 1 = final, ..., slot k), like
    # `from-end`, and only the tokens before them are clustered; None: pin_final alone (k = 1
    # when pinned). Needs pin_final. docs/transfer.md
    pin_last: Count | None = None
    # attention: the slot of a token farther from its nearest centroid than the slot's
    # training range (out of distribution): "nearest" keeps the nearest centroid's slot;
    # "position" gives it the cluster whose training tokens' mean position from the end is
    # nearest its own (a from-end fallback). docs/transfer.md
    ood_fallback: Literal["nearest", "position"] = "nearest"
    from_end_k: Count = 3  # for `from-end`
    features: AttentionFeatures = Field(default_factory=AttentionFeatures)
    batch_size: Count = 32

    # these unions would otherwise report one error per member, none saying what is allowed
    @field_validator("n_slots", mode="before")
    @classmethod
    def _n_slots_type(cls, v):
        if not (v == "auto" or isinstance(not_bool(v), int) or _is_number(v, whole=True)):
            raise bad('must be "auto" or a whole number from 2 to 4096')
        return v

    @field_validator("pca_components", mode="before")
    @classmethod
    def _pca_type(cls, v):
        if not (v is None or isinstance(not_bool(v), int) or _is_number(v)):
            raise bad("must be a number of components (1 to 4096), a fraction of variance "
                      "kept (between 0 and 1), or null")
        return v

    @field_validator("n_slots")
    @classmethod
    def _n_slots(cls, v):
        if v != "auto" and not 2 <= v <= 4096:
            raise bad(f"must be \"auto\" or a whole number from 2 to 4096, got {v}")
        return v

    @field_validator("pca_components")
    @classmethod
    def _pca(cls, v):
        if isinstance(v, int) and not 1 <= v <= 4096:
            raise bad(f"a number of components must be from 1 to 4096, got {v}")
        if isinstance(v, float) and not 0 < v < 1:  # NaN fails this too
            raise bad(f"a fraction of variance kept must be between 0 and 1, got {v}")
        return v

    @field_validator("pin_bos")
    @classmethod
    def _bos_pinned(cls, v: bool) -> bool:
        if not v:
            raise bad("false is not supported: slot 0 is BOS in every grouping")
        return v

    @property
    def n_pinned_slots(self) -> int:
        """BOS plus the pinned positions from the end (`pin_last`, or the final token)."""
        if self.pin_last is not None:
            return 1 + self.pin_last
        return 2 if self.pin_final else 1

    @model_validator(mode="after")
    def _pin_last_needs_final(self):
        if self.pin_last is not None and not self.pin_final:
            raise bad("pin_last pins the final token too: it needs pin_final: true")
        return self

    @model_validator(mode="after")
    def _slots_left(self):
        pinned = self.n_pinned_slots
        lo, hi = self.n_slots_range
        if lo > hi:
            raise bad(f"n_slots_range {list(self.n_slots_range)}: low must be <= high")
        if self.n_slots == "auto" and hi < pinned + 2:
            raise bad(f"n_slots_range {list(self.n_slots_range)} leaves fewer than 2 "
                      f"clusters after {pinned} pinned slot(s): use high >= {pinned + 2}")
        if self.n_slots != "auto" and self.n_slots < pinned + 1:
            raise bad(f"n_slots = {self.n_slots} leaves no slot for clusters after "
                      f"{pinned} pinned slot(s): use at least {pinned + 1}")
        return self


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
    lambdas: list[float] | Literal["auto"] = "auto"
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
    checkpoint_every: Count = 25
    max_train_prompts: Count | None = None
    # stop once the binarised mask (theta > 0) has not changed for this many consecutive
    # steps, but not before `early_stop_min_steps`; None: always run `steps`
    early_stop_patience: Count | None = 10
    early_stop_min_steps: NonNegInt = 10
    # where training starts (maskshare.warm_start): `cold` (init_logit everywhere) or
    # `attribution` (the variant's integrated-gradients scores from stage attribution,
    # mapped to logits by a benefit/cost rule that opens triples whose score exceeds
    # `init_open_ratio` x their penalty; a variant without scores starts cold)
    init: Literal["cold", "attribution"] = "attribution"
    init_open_ratio: PositiveFloat = 0.33
    # the sweep as a chain: each lambda (ascending) starts from the previous one's theta
    continue_sweep: bool = True
    # steps of a warm-started or continued training (the anneal compressed into them; at
    # most `steps`); None: `steps`
    warm_steps: Count | None = 20

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
    # the run's lambda: the sparsest whose F on (a seeded sample of at most `select_limit`
    # prompts of) `select_split` reaches `target_f`; if none does, the one with the best F
    select_split: Literal["train", "test_phrasing", "test_entity", "test_both"] = "train"
    select_limit: Count | None = 64
    target_f: PositiveFloat = 0.9

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

    methods: list[Literal["atp", "ig"]] = Field(default_factory=lambda: ["atp", "ig"])
    ig_steps: Annotated[Count, Field(le=1000)] = 10
    variants: Literal["main", "all"] = "main"

    @field_validator("methods")
    @classmethod
    def _distinct_methods(cls, v: list[str]) -> list[str]:
        return distinct(v, "methods")


# fields added after run directories existed: left out of config.yaml and of the run's hash
# while they hold their default, so existing runs keep their directory and bytes
_OMIT_AT_DEFAULT = {"evaluate": ("select_split", "select_limit", "target_f"),
                    "attribution": ("methods", "ig_steps", "variants")}


class RunConfig(Strict):
    name: Slug = "default"  # part of the run directory's name
    seed: Seed = 0
    model: Text = "smollm2-135m"  # a name, or a local Hugging Face folder
    device: str = Field(default="cpu", pattern=r"^(cpu|cuda|mps|xpu)(:[0-9]+)?$")
    threads: Annotated[Count, Field(le=4096)] | None = None
    saes: SAESetConfig = Field(default_factory=SAESetConfig)
    dataset: DatasetRef = Field(default_factory=DatasetRef)
    grouping: GroupingConfig = Field(default_factory=GroupingConfig)
    masks: MaskConfig = Field(default_factory=MaskConfig)
    evaluate: EvalConfig = Field(default_factory=EvalConfig)
    attribution: AttributionConfig = Field(default_factory=AttributionConfig)
    runs_dir: Text = "data/runs"


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
    """`cfg` as plain JSON data, without the fields of `_OMIT_AT_DEFAULT` at their default."""
    data = cfg.model_dump(mode="json")
    for section, names in _OMIT_AT_DEFAULT.items():
        default = type(getattr(cfg, section))()
        for n in names:
            if getattr(getattr(cfg, section), n) == getattr(default, n):
                data[section].pop(n)
        if not data[section]:  # a section added whole, at its default: left out entirely
            data.pop(section)
    return data


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(config_data(cfg), sort_keys=False)
