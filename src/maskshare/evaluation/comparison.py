"""From evaluation rows to a run's verdict: the lambda choice, the headline metrics and the
comparison of methods at matched size (read off their F-against-size curves).

Pure functions of typed rows (no model, no files), so the rules can be tested on
hand-made rows:

- one `EvalRow` per (variant, lambda, seed, split): what `evaluate_masks` measured; its
  `finder` says how the circuit was found: `masks` (learned) or an attribution method
  (`atp`, `ig`: a `TopTriples` method, the top-scoring triples at the size of the learned
  mask of that lambda; lambda None for its extra points beyond the sweep's sizes);
- lambda: the sparsest (fewest latents per token) whose F on `select_split` (validation)
  reaches `target_f` (`EvalConfig`); if none does, the one with the best F
  (`maskshare.evaluation.selection`);
- matched size: each method's F read off its own curve (linear in log size) at the main
  method's size; the curve area is mean F over log10 size on the span of every method's
  points (`maskshare.evaluation.metrics.curve_area`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from maskshare.config import EvalConfig
from maskshare.evaluation.metrics import curve_area, f_at_size
from maskshare.evaluation.selection import choose_circuit
from maskshare.run.variants import Variant

# the metrics a run reports first (CLI output, Prefect table artifact)
HEADLINE_METRICS = ["faithfulness", "faithfulness_vs_clean", "completeness", "latents_per_token",
                    "circuit_size", "ari_template", "ari_roles", "purity_roles"]
HEADLINE_KEYS = ("faithfulness", "faithfulness_vs_clean", "completeness", "latents_per_token",
                 "circuit_size", "distinct_latents", "ld_model", "ld_model_clean",
                 "ld_ablated", "ld_circuit", "n_prompts")
PER_SPLIT_KEYS = ("faithfulness", "faithfulness_vs_clean", "n_prompts")
MASKS = "masks"  # the finder of learned masks


@dataclass(frozen=True)
class TopTriples:
    """A peer method to a variant's learned masks: circuits of the top (slot, SAE, latent)
    triples by the variant's attribution scores (`finder`: `atp` or `ig`), each the size of
    the learned mask of one lambda. Compared like a variant, under its own name."""

    variant: Variant
    finder: str

    @property
    def name(self) -> str:
        return f"{self.variant.name}__{self.finder}"

    @property
    def grouping(self):
        return self.variant.grouping

    @property
    def ablation(self):
        return self.variant.ablation


@dataclass(frozen=True)
class EvalRow:
    """One mask (variant, lambda, seed) scored on one split; `metrics` holds the scalar
    metrics of `evaluate_masks` in its order."""

    variant: str
    grouping: str
    ablation: str
    lam: float | None               # None: an attribution circuit matched to no mask
    seed: int
    split: str
    metrics: dict[str, Any] = field(default_factory=dict)
    finder: str = MASKS

    @classmethod
    def of(cls, variant: Variant | TopTriples, lam: float | None, seed: int, split: str,
           metrics: dict) -> EvalRow:
        scalars = {k: v for k, v in metrics.items()
                   if k != "per_prompt" and not isinstance(v, dict | list)}
        return cls(variant.name, variant.grouping.value, variant.ablation.value, lam, seed,
                   split, scalars, getattr(variant, "finder", MASKS))

    @property
    def faithfulness(self) -> float | None:
        return self.metrics.get("faithfulness")

    @property
    def latents_per_token(self) -> float | None:
        return self.metrics.get("latents_per_token")

    def as_dict(self) -> dict:
        """The row as written to curves.parquet."""
        return {"variant": self.variant, "grouping": self.grouping, "ablation": self.ablation,
                "finder": self.finder, "lambda": self.lam, "seed": self.seed, "split": self.split, **self.metrics}


@dataclass(frozen=True)
class MatchedRow:
    """One method compared at the main method's size (`target` latents per token)."""

    method: str
    grouping: str
    ablation: str
    target: float | None
    f_matched: float | None
    area: float | None
    best_f: float | None
    finder: str = MASKS

    def as_dict(self) -> dict:
        """The row as written to comparisons.parquet and shown in the report."""
        col = f"F at {self.target:.0f} latents/token" if self.target else "F matched"
        return {"method": self.method, "grouping": self.grouping, "ablation": self.ablation,
                "finder": self.finder, col: self.f_matched, "curve area (log size)": self.area, "best F": self.best_f}


def heldout_splits(items) -> list[str]:
    """Held-out phrasings of known entities and held-out entities, reported separately."""
    present = set(items["split"].unique().to_list())
    return [s for s in ("test_phrasing", "test_entity", "test_both") if s in present]


MAX_GROUPS = 8  # per-group rows for at most this many groups in a split


def group_splits(items, splits: list[str]) -> dict[str, list[str]]:
    """{split: [groups]} for prompt datasets (whose `phrasing` is a group name, not a
    template): each held-out split with more than one group is also reported per group, as
    the split `<split>:<group>` (e.g. `test_entity:nounpp`, held-out rows of a structure
    the mask was trained on), when it has at most MAX_GROUPS groups."""
    if items["phrasing"].str.contains("{", literal=True).any():
        return {}
    out = {}
    for split in splits:
        groups = sorted(set(items.filter(items["split"] == split)["phrasing"].to_list()))
        if 1 < len(groups) <= MAX_GROUPS:
            out[split] = groups
    return out


def headline_split(dataset_variant: str, splits: list[str]) -> str | None:
    """Free-form data: held-out phrasings (the point of the project); else held-out entities."""
    if dataset_variant == "freeform" and "test_phrasing" in splits:
        return "test_phrasing"
    return "test_entity" if "test_entity" in splits else (splits[0] if splits else None)


def choose_lambda(rows: list[EvalRow], variant: str, rule: EvalConfig | None = None) -> float:
    """The sparsest lambda whose F on the selection split reaches the target; else best F
    (`maskshare.evaluation.selection.choose_circuit`, which also says which rule picked it)."""
    rule = rule or EvalConfig()
    return choose_circuit(rows, variant, rule.select_split, rule.target_f).lam


def pick(rows: list[EvalRow], variant: str, split: str, lam: float) -> EvalRow:
    return next(r for r in rows if r.variant == variant and r.split == split and r.lam == lam)


def headline_metrics(rows: list[EvalRow], main: Variant, head: str, splits: list[str],
                     lam: float) -> dict:
    """The main method's metrics at `lam` on the headline split, then F per held-out split."""
    best = pick(rows, main.name, head, lam)
    out = {k: best.metrics[k] for k in HEADLINE_KEYS}
    for split in splits:
        r = pick(rows, main.name, split, lam)
        out[f"faithfulness_{split}"] = r.metrics["faithfulness"]
        out[f"faithfulness_vs_clean_{split}"] = r.metrics["faithfulness_vs_clean"]
        out[f"n_prompts_{split}"] = r.metrics["n_prompts"]
    return out


def compare_at_matched_size(rows: list[EvalRow], methods: list[Variant | TopTriples],
                            main: Variant, head: str, target: float | None
                            ) -> tuple[list[MatchedRow], dict]:
    """Per method (variants, then attribution circuits) on the headline split: its F at
    `target` latents per token and its curve area; plus the metrics entries (`curve_area`,
    `baseline_<method>`, `baseline_<method>_curve_area`) in the methods' order. The curve
    areas are over the span of the learned masks' sizes. (The report draws the curves from
    curves.parquet.)"""
    sizes_all = [r.latents_per_token for r in rows
                 if r.split == head and r.latents_per_token and r.finder == MASKS]
    x_range = (min(sizes_all), max(sizes_all)) if sizes_all else None
    table: list[MatchedRow] = []
    metrics: dict = {}
    for v in methods:
        pts = sorted((r for r in rows if r.variant == v.name and r.split == head),
                     key=lambda r: r.latents_per_token or 0)
        sizes = [r.latents_per_token for r in pts]
        fs = [r.faithfulness for r in pts]
        f_matched = f_at_size(sizes, fs, target) if target else None
        area = curve_area(sizes, fs, x_range)
        table.append(MatchedRow(v.name, v.grouping.value, v.ablation.value, target, f_matched,
                                area, max((f for f in fs if f is not None), default=None),
                                getattr(v, "finder", MASKS)))
        if v != main:
            metrics[f"baseline_{v.name}"] = f_matched
            metrics[f"baseline_{v.name}_curve_area"] = area
        else:
            metrics["curve_area"] = area
    return table, metrics


def quality_metrics(quality: dict) -> dict:
    """The grouping-quality entries of metrics.json from a grouping's quality.json."""
    out = {k: quality[k] for k in ("ari_template", "ari_roles", "purity_roles", "ood_fraction",
                                   "stability") if quality.get(k) is not None}
    for sp, m in (quality.get("by_split") or {}).items():
        for k in ("ari_roles", "purity_roles", "ood_fraction"):
            if m.get(k) is not None:
                out[f"{k}_{sp}"] = m[k]
    return out
