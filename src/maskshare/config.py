"""Typed run configuration: one place states every default.

The same YAML drives `maskshare run --config FILE`, the Prefect flows and deployments.
Unknown fields are rejected (a typo must not silently fall back to a default).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError

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

    name: str = "elements-symbol"
    variant: Literal["templated", "freeform"] = "freeform"
    max_items: int | None = Field(default=None, ge=1, description="cap on items after filtering")
    min_items: int = Field(default=20, ge=1, description="fail if fewer items pass the filter")
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
    layers: list[int] | None = None  # None: layers from layer_start_fraction x n_layers on
    layer_start_fraction: float = Field(default=0.67, ge=0, lt=1)  # 0: every layer
    log_scale: bool = True           # log(attn + eps) before standardising
    # "bfloat16": the feature forward pass runs under autocast, ~1.6x faster on CPUs with
    # AVX512-BF16 (this machine) and the same groups on elements-symbol; use "float32" on
    # CPUs without bfloat16 instructions (autocast is slower there) or for exact patterns
    dtype: Literal["float32", "bfloat16"] = "bfloat16"


class GroupingConfig(Strict):
    kind: GroupingKind = GroupingKind.ATTENTION
    n_slots: int | Literal["auto"] = "auto"
    n_slots_range: tuple[int, int] = (4, 12)  # searched when n_slots is "auto"
    score: Literal["silhouette", "bic"] = "silhouette"
    clusterer: Literal["kmeans", "agglomerative", "gmm", "hdbscan"] = "agglomerative"
    pca_components: int | float | None = 10  # int: components; float: variance kept
    pin_bos: bool = True
    pin_final: bool = True
    from_end_k: int = Field(default=3, ge=1)  # for `from-end`
    features: AttentionFeatures = Field(default_factory=AttentionFeatures)
    batch_size: int = Field(default=32, ge=1)


class MaskConfig(Strict):
    objective: Objective = Objective.LOGIT_DIFF
    ablation: Ablation = Ablation.SLOT_MEAN
    error: ErrorTerm = ErrorTerm.DROP
    relaxation: Relaxation = Relaxation.SIGMOID
    # The sparsity sweep. "auto": AUTO_LAMBDAS, a grid in task-normalised units (see `scale`)
    # that spans circuits from dense to sparse on any task, so a new task needs no tuning.
    lambdas: list[float] | Literal["auto"] = "auto"
    # "task": the objective is divided by its value for the empty circuit (every latent
    # ablated; for logit-diff the task's own mean |ld(empty) - ld(M)|), so a lambda means
    # "share of the task's effect per latent kept per token" on every task; "none": raw units
    scale: Literal["task", "none"] = "task"
    steps: int = Field(default=150, ge=1)
    lr: float = Field(default=0.05, gt=0)
    batch_size: int = Field(default=32, ge=1)
    temperature_start: float = 1.0
    temperature_end: float = 200.0
    init_logit: float = 1.0    # theta at start (mask ~ on)
    checkpoint_every: int = Field(default=25, ge=1)
    max_train_prompts: int | None = None
    # stop once the binarised mask (theta > 0) has not changed for this many consecutive
    # steps, but not before `early_stop_min_steps`; None: always run `steps` (default)
    early_stop_patience: int | None = Field(default=None, ge=1)
    early_stop_min_steps: int = Field(default=50, ge=0)


    @property
    def lambda_grid(self) -> list[float]:
        """The lambdas to train: the configured list, or AUTO_LAMBDAS for "auto"."""
        return list(AUTO_LAMBDAS) if self.lambdas == "auto" else list(self.lambdas)


# The "auto" sweep, in task-normalised units (MaskConfig.scale = "task"). Measured on the
# embedded model (README, "Sparsity without tuning"): from ~150 to ~15 latents per token on
# elements, agreement and code alike.
AUTO_LAMBDAS = (0.002, 0.005, 0.012, 0.03)


class EvalConfig(Strict):
    seeds: list[int] = Field(default_factory=lambda: [0, 1])  # stability across seeds
    baselines: list[GroupingKind] = Field(
        default_factory=lambda: [GroupingKind.SINGLE, GroupingKind.FROM_END, GroupingKind.ROLES])
    ablations: list[Ablation] = Field(
        default_factory=lambda: [Ablation.GLOBAL_MEAN, Ablation.ZERO])
    matched_latents_per_token: float | None = None  # None: chosen from the curves
    # the run's lambda: the sparsest whose F on (a seeded sample of at most `select_limit`
    # prompts of) `select_split` reaches `target_f`; if none does, the one with the best F
    select_split: str = "train"
    select_limit: int | None = Field(default=64, ge=1)
    target_f: float = 0.9


# fields added after run directories existed: left out of config.yaml and of the run's hash
# while they hold their default, so existing runs keep their directory and bytes
_OMIT_AT_DEFAULT = {"evaluate": ("select_split", "select_limit", "target_f")}


class RunConfig(Strict):
    name: str = "default"
    seed: int = 0
    model: str = "smollm2-135m"
    device: str = "cpu"
    threads: int | None = None
    saes: SAESetConfig = Field(default_factory=SAESetConfig)
    dataset: DatasetRef = Field(default_factory=DatasetRef)
    grouping: GroupingConfig = Field(default_factory=GroupingConfig)
    masks: MaskConfig = Field(default_factory=MaskConfig)
    evaluate: EvalConfig = Field(default_factory=EvalConfig)
    runs_dir: str = "data/runs"


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
    return data


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(config_data(cfg), sort_keys=False)
