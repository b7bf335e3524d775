"""The grouping interface, its save/load, and the groupings that need no fitted model.

Every grouping gives each token of each prompt a *slot* (shared mask and mean). Slot 0 is
BOS in every grouping; `n_slots` counts every slot, BOS included.

- `template`: slot = position; every prompt must have the training length.
- `single`: BOS and one slot for everything else.
- `from-end`: BOS; the last k positions each own a slot (slot 1 = final); the rest share.
- `roles`: BOS; one slot per role seen in training; unseen roles go to `other`.

A grouping directory holds `grouping.json` (format, kind, seed, config, slot names, small
metadata) and, for groupings with fitted scikit-learn objects, `grouping.skops`
(`maskshare.grouping.persist`: no pickle, byte-reproducible).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import polars as pl

from maskshare.artifacts import write_json_atomic
from maskshare.config import GroupingConfig, GroupingKind
from maskshare.datasets.prompts import roles_note
from maskshare.errors import UserError

if TYPE_CHECKING:
    from maskshare.grouping.features import TokenFeatures

GROUPING_JSON = "grouping.json"
# 1: arrays in grouping.safetensors (hand-written transforms); 2: fitted objects in skops
FORMAT = 2


@dataclass
class Assignment:
    """Slots of the tokens of some prompts, aligned with each prompt's tokens."""

    slots: list[np.ndarray]      # int64 per prompt
    distance: list[np.ndarray]   # float64 per prompt; NaN where not applicable
    ood_fraction: float          # share of tokens with a distance beyond the training range
    prompt_ids: list[int]
    features_2d: np.ndarray | None = None  # [n_tokens, 2] projection (attention grouping)

    def flat_slots(self) -> np.ndarray:
        return np.concatenate(self.slots) if self.slots else np.zeros(0, np.int64)

    def flat_distance(self) -> np.ndarray:
        return np.concatenate(self.distance) if self.distance else np.zeros(0)


def token_lists(items) -> list[list[int]]:
    if "tokens" not in items.columns:
        raise UserError("the items table has no 'tokens' column")
    return [list(t) for t in items["tokens"].to_list()]


def prompt_ids(items) -> list[int]:
    if "prompt_id" in items.columns:
        return [int(x) for x in items["prompt_id"].to_list()]
    return list(range(items.height))


def _no_distance(slots: list[np.ndarray], items) -> Assignment:
    return Assignment(slots, [np.full(len(s), np.nan) for s in slots], 0.0, prompt_ids(items))


class Grouping:
    """Base class: subclasses implement `_fit`, `_assign`, and save/load their own state, and
    say what they need and what data they take (the class attributes and classmethods below);
    the stages, the checks and the report ask them, never which kind they are."""

    kind: GroupingKind | str
    title: ClassVar[str] = ""  # how the report names it ("attention slots")
    needs_features: ClassVar[bool] = False  # fit/assign read per-token attention features
    seeded: ClassVar[bool] = False  # the fit depends on the seed: stability across seeds
    fitted_state: ClassVar[bool] = False  # fitted objects beyond grouping.json (refit to load
    #                                       an older format)
    compared_on: ClassVar[tuple[str, ...]] = ()  # dataset variants it is a baseline on unasked
    ood_threshold: np.ndarray | None = None  # per slot; None where distances do not apply

    @classmethod
    def takes(cls, dataset_variant: str) -> bool:
        """Whether it can group prompts of this dataset variant at all."""
        return True

    @classmethod
    def data_problem(cls, spec, dataset_variant: str) -> str | None:
        """Why it says little or nothing on this dataset (refused as the main grouping,
        warned as a baseline), or None."""
        return None

    @classmethod
    def prompt_columns(cls, tokens: list[list[int]]) -> dict[str, tuple[list, Any]]:
        """Columns {name: (values, polars dtype)} it reads beyond `tokens` for prompts that
        come without labels (`maskshare eval` prompt files)."""
        return {}

    def prompt_problem(self, n_tokens: int) -> str | None:
        """Why it cannot give slots to a new prompt of `n_tokens` tokens, or None."""
        return None

    def __init__(self, cfg: GroupingConfig, seed: int = 0):
        self.cfg = cfg
        self.seed = int(seed)
        self.slot_names: list[str] = []
        self.meta: dict[str, Any] = {}
        self.fitted = False

    @property
    def n_slots(self) -> int:
        self._check_fitted()
        return len(self.slot_names)

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError(f"the {self.kind} grouping is not fitted: call fit() first")

    def fit(self, model, items, features: TokenFeatures | None = None) -> Grouping:
        if items.height == 0:
            raise UserError("cannot fit a grouping on an empty items table")
        self._fit(model, items, features)
        self.fitted = True
        return self

    def assign(self, model, items, features: TokenFeatures | None = None) -> Assignment:
        self._check_fitted()
        return self._assign(model, items, features)

    def prompt_items(self, tokens: list[list[int]]):
        """New prompts (token rows, BOS first) as the items table `assign` reads, with the
        columns this kind reads beyond tokens (`prompt_columns`)."""
        tokens = [list(map(int, t)) for t in tokens]
        cols = {"prompt_id": (list(range(len(tokens))), pl.Int64),
                "tokens": (tokens, pl.List(pl.Int64)), **self.prompt_columns(tokens)}
        return pl.DataFrame({k: v for k, (v, _) in cols.items()},
                            schema={k: t for k, (_, t) in cols.items()})

    def assign_tokens(self, model, tokens: list[list[int]]) -> list[np.ndarray]:
        """The slots of new prompts' tokens (one int64 array per prompt), without refitting."""
        if not tokens:
            return []
        return [np.asarray(s, dtype=np.int64)
                for s in self.assign(model, self.prompt_items(tokens)).slots]

    def _fit(self, model, items, features):  # pragma: no cover - abstract
        raise NotImplementedError

    def _assign(self, model, items, features) -> Assignment:  # pragma: no cover - abstract
        raise NotImplementedError

    # state -----------------------------------------------------------------
    def _save_state(self, directory: Path) -> None:
        """Write state beyond `grouping.json` (fitted objects) into `directory`."""

    def _load_state(self, directory: Path) -> None:
        """Read what `_save_state` wrote."""

    def save(self, directory: str | Path) -> None:
        """Write `grouping.json` (and the kind's own state files) into `directory` atomically."""
        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._save_state(directory)
        write_json_atomic(directory / GROUPING_JSON, {
            "format": FORMAT, "kind": str(self.kind), "seed": self.seed,
            "config": self.cfg.model_dump(mode="json"), "slot_names": self.slot_names,
            "meta": self.meta,
        })


class SingleGrouping(Grouping):
    kind = GroupingKind.SINGLE
    title = "single slot"

    def _fit(self, model, items, features):
        self.slot_names = ["bos", "all"]

    def _assign(self, model, items, features):
        slots = [np.where(np.arange(len(t)) == 0, 0, 1).astype(np.int64)
                 for t in token_lists(items)]
        return _no_distance(slots, items)


class TemplateGrouping(Grouping):
    kind = GroupingKind.TEMPLATE
    title = "template positions"
    compared_on = ("templated",)  # the original method: always the reference on templates

    @classmethod
    def takes(cls, dataset_variant: str) -> bool:
        return dataset_variant == "templated"

    @classmethod
    def data_problem(cls, spec, dataset_variant: str) -> str | None:
        if cls.takes(dataset_variant):
            return None
        return ("grouping.kind 'template' needs a templated dataset (dataset.variant: "
                "templated); free-form prompts share no positions")

    def prompt_problem(self, n_tokens: int) -> str | None:
        n = len(self.slot_names)
        if n_tokens == n:
            return None
        return f"prompt is {n_tokens} tokens; the run's template grouping only takes {n}-token prompts"

    def _lengths_or_fail(self, items, what: str) -> set[int]:
        lengths = {len(t) for t in token_lists(items)}
        if len(lengths) != 1:
            raise UserError(f"the template grouping needs prompts of one length; the {what} "
                            f"prompts have {len(lengths)} lengths ({sorted(lengths)[:6]}...): "
                            "use a templated dataset or another grouping kind")
        return lengths

    def _fit(self, model, items, features):
        (n,) = self._lengths_or_fail(items, "training")
        self.slot_names = ["bos"] + [f"pos{i}" for i in range(1, n)]

    def _assign(self, model, items, features):
        (n,) = self._lengths_or_fail(items, "given")
        if n != len(self.slot_names):
            raise UserError(f"the template grouping was fitted on {len(self.slot_names)}-token "
                            f"prompts; these have {n} tokens")
        return _no_distance([np.arange(n, dtype=np.int64) for _ in range(items.height)], items)


class FromEndGrouping(Grouping):
    kind = GroupingKind.FROM_END
    title = "from-end positions"

    def _fit(self, model, items, features):
        k = self.cfg.from_end_k
        self.slot_names = ["bos"] + [f"end-{i}" for i in range(1, k + 1)] + ["rest"]

    def _assign(self, model, items, features):
        k = self.cfg.from_end_k
        out = []
        for t in token_lists(items):
            n = len(t)
            from_end = n - 1 - np.arange(n)
            s = np.where(from_end < k, from_end + 1, k + 1)
            s[0] = 0
            out.append(s.astype(np.int64))
        return _no_distance(out, items)


class RolesGrouping(Grouping):
    kind = GroupingKind.ROLES
    title = "role spans"
    OTHER = "other"

    @classmethod
    def data_problem(cls, spec, dataset_variant: str) -> str | None:
        return roles_note(spec, [cls.kind])

    @classmethod
    def prompt_columns(cls, tokens):
        """A prompt without span labels: BOS, `other`, and its final token."""
        return {"roles": ([["bos"] + [cls.OTHER] * (len(t) - 2) + ["final"] for t in tokens],
                          pl.List(pl.String))}

    def _fit(self, model, items, features):
        if "roles" not in items.columns:
            raise UserError("the roles grouping needs span labels: the items have no 'roles' "
                            "column")
        seen = sorted({r for rs in items["roles"].to_list() for r in rs[1:]} - {"bos"})
        if self.OTHER not in seen:
            seen.append(self.OTHER)
        self.slot_names = ["bos"] + seen

    def _assign(self, model, items, features):
        if "roles" not in items.columns:
            raise UserError("the roles grouping needs a 'roles' column in the items")
        index = {r: i for i, r in enumerate(self.slot_names)}
        other = index[self.OTHER]
        out = []
        for rs in items["roles"].to_list():
            s = np.array([other if r == "bos" else index.get(r, other) for r in rs],
                         dtype=np.int64)
            if len(s):
                s[0] = 0
            out.append(s)
        return _no_distance(out, items)
