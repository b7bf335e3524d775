"""The methods a run compares (variants) and the masks it trains for them.

A variant is a grouping with an ablation. A run compares its main variant with every
baseline grouping (main ablation) and every other ablation (main grouping): the design's
comparisons, not the full cross product.
"""

from __future__ import annotations

from dataclasses import dataclass

from maskshare.config import Ablation, GroupingKind, RunConfig
from maskshare.kinds import GROUPINGS


@dataclass(frozen=True)
class Variant:
    """One method compared in a run: a grouping with an ablation."""

    grouping: GroupingKind
    ablation: Ablation

    @property
    def name(self) -> str:
        return f"{self.grouping.value}__{self.ablation.value}"

    @classmethod
    def parse(cls, name: str) -> Variant:
        g, a = name.split("__")
        return cls(GroupingKind(g), Ablation(a))


def main_variant(cfg: RunConfig) -> Variant:
    return Variant(cfg.grouping.kind, cfg.masks.ablation)


def variants(cfg: RunConfig) -> list[Variant]:
    """The main method, every baseline grouping with the main ablation (and those a grouping
    kind is always compared on for this dataset variant, e.g. `template` on templated data;
    none a kind cannot take), every other ablation with the main grouping."""
    main = main_variant(cfg)
    out = [main]
    data = cfg.dataset.variant
    kinds = list(cfg.evaluate.baselines)
    kinds += [GroupingKind(k) for k in GROUPINGS.names()
              if data in GROUPINGS.get(k).compared_on and k not in kinds]
    for k in kinds:
        if not GROUPINGS.get(k).takes(data):
            continue
        v = Variant(k, main.ablation)
        if v not in out:
            out.append(v)
    for a in cfg.evaluate.ablations:
        v = Variant(main.grouping, a)
        if v not in out:
            out.append(v)
    return out


def grouping_kinds(cfg: RunConfig) -> list[GroupingKind]:
    """Every grouping the variants need, in the variants' order."""
    seen: list[GroupingKind] = []
    for v in variants(cfg):
        if v.grouping not in seen:
            seen.append(v.grouping)
    return seen


def run_seeds(cfg: RunConfig) -> list[int]:
    return cfg.evaluate.seeds or [cfg.seed]


def mask_jobs(cfg: RunConfig) -> list[tuple[str, float, int]]:
    """Every (variant name, lambda, seed) to train: all variants at the first seed; the main
    variant also at the second seed (stability). Lambdas ascending: a continued sweep
    (`masks.continue_sweep`) trains each from the previous one."""
    seeds = run_seeds(cfg)
    grid = sorted(cfg.masks.lambda_grid)
    jobs = [(v.name, lam, seeds[0]) for v in variants(cfg) for lam in grid]
    if len(seeds) > 1:
        jobs += [(main_variant(cfg).name, lam, seeds[1]) for lam in grid]
    return jobs


def attribution_variants(cfg: RunConfig) -> list[Variant]:
    """The variants the stage scores: none without methods; the main variant, or (`all`)
    every variant whose masks are trained."""
    if not cfg.attribution.methods:
        return []
    return variants(cfg) if cfg.attribution.variants == "all" else [main_variant(cfg)]
