"""The grouping section of a run's config: the grouping kind's name (`GroupingKind`),
`GroupingConfig` (slots, clustering, pinning, the out-of-distribution fallback) and the
attention features it clusters (`AttentionFeatures`). `maskshare.config` holds them in
`RunConfig` and re-exports them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from maskshare.domains import Count, Finite, NonNegInt, bad, not_bool
from maskshare.kinds import GROUPINGS, KindName
from maskshare.validation import Strict


class GroupingKind(KindName):
    """A grouping kind's name (`maskshare.kinds.GROUPINGS`; each is a `Grouping` class that
    owns what it needs and how it assigns slots)."""

    registry = GROUPINGS


GroupingKind.ATTENTION = GroupingKind("attention")
GroupingKind.TEMPLATE = GroupingKind("template")
GroupingKind.SINGLE = GroupingKind("single")
GroupingKind.FROM_END = GroupingKind("from-end")
GroupingKind.ROLES = GroupingKind("roles")


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
