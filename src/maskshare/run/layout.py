"""Every path of a run directory, named once.

    RUN/config.yaml  metrics.json  report.html
    RUN/dataset/                    items.parquet, pass_table.parquet, manifest.json
    RUN/groups/<kind>/              grouping files, tokens.parquet, quality.json, groups.html
    RUN/stats/<kind>/               slot_stats.safetensors
    RUN/attribution/<variant>/      <method>.safetensors (per-triple scores), manifest.json
    RUN/masks/<variant>/lam<λ>_seed<s>/   masks.safetensors, summary.json, manifest.json
    RUN/masks/<variant>/.lam<λ>_seed<s>.checkpoint/   while that mask trains (resumable)
    RUN/evaluate/                   curves.parquet, comparisons.parquet, circuit.json

Stages, readers and experiments ask a `RunLayout` for a path instead of joining strings,
so the layout can only change here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from maskshare.config import GroupingKind


def _kind(kind: GroupingKind | str) -> str:
    return GroupingKind(kind).value


def _name(variant) -> str:
    """A variant's directory name: a `Variant` or its name."""
    return variant if isinstance(variant, str) else variant.name


@dataclass(frozen=True)
class RunLayout:
    """The paths of the run directory `root`."""

    root: Path
    # every stage's output folders, as globs under the run (one per stage of the plan)
    STAGE_OUTPUTS: ClassVar[tuple[str, ...]] = (
        "dataset", "groups/*", "stats/*", "attribution/*", "masks/*/*", "evaluate")

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    def stage_outputs(self) -> list[Path]:
        """Every visible (not dot-named) stage output folder the run has."""
        return [p for pat in self.STAGE_OUTPUTS for p in sorted(self.root.glob(pat))
                if p.is_dir() and not p.name.startswith(".")]

    def is_run(self) -> bool:
        """A run directory: it has its config.yaml."""
        return self.config.is_file()

    def is_finished(self) -> bool:
        """A run whose evaluation wrote metrics.json."""
        return self.is_run() and self.metrics.is_file()

    def grouping_dirs(self) -> list[Path]:
        """RUN/groups/<kind>/ of every grouping the run has."""
        root = self.groups_root
        return [d for d in sorted(root.glob("*")) if d.is_dir() and not d.name.startswith(".")]

    # ------------------------------------------------------------------ top level
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    # ------------------------------------------------------------------ dataset
    @property
    def dataset(self) -> Path:
        return self.root / "dataset"

    @property
    def items(self) -> Path:
        return self.dataset / "items.parquet"

    @property
    def pass_table(self) -> Path:
        return self.dataset / "pass_table.parquet"

    # ------------------------------------------------------------------ groups, stats
    @property
    def groups_root(self) -> Path:
        """RUN/groups: a folder a grouping kind."""
        return self.root / "groups"

    def groups(self, kind: GroupingKind | str) -> Path:
        return self.groups_root / _kind(kind)

    def tokens(self, kind: GroupingKind | str) -> Path:
        return self.groups(kind) / "tokens.parquet"

    def quality(self, kind: GroupingKind | str) -> Path:
        return self.groups(kind) / "quality.json"

    def groups_page(self, kind: GroupingKind | str) -> Path:
        return self.groups(kind) / "groups.html"

    def stats(self, kind: GroupingKind | str) -> Path:
        return self.root / "stats" / _kind(kind)

    def slot_stats(self, kind: GroupingKind | str) -> Path:
        return self.stats(kind) / "slot_stats.safetensors"

    # ------------------------------------------------------------------ attribution
    def attribution(self, variant) -> Path:
        """A variant's node attribution scores (one file per method)."""
        return self.root / "attribution" / _name(variant)

    def attribution_scores(self, variant, method: str) -> Path:
        return self.attribution(variant) / f"{method}.safetensors"

    # ------------------------------------------------------------------ masks
    def variant_masks(self, variant) -> Path:
        """The folder holding every mask of one variant."""
        return self.root / "masks" / _name(variant)

    def masks(self, variant, lam: float, seed: int) -> Path:
        return self.variant_masks(variant) / f"lam{lam:g}_seed{seed}"

    def mask_file(self, variant, lam: float, seed: int) -> Path:
        return self.masks(variant, lam, seed) / "masks.safetensors"

    def checkpoint(self, variant, lam: float, seed: int) -> Path:
        """Where an unfinished mask's training state lives (hidden, next to its output)."""
        out = self.masks(variant, lam, seed)
        return out.parent / f".{out.name}.checkpoint"

    # ------------------------------------------------------------------ evaluation
    @property
    def evaluate(self) -> Path:
        return self.root / "evaluate"

    @property
    def curves(self) -> Path:
        return self.evaluate / "curves.parquet"

    @property
    def comparisons(self) -> Path:
        return self.evaluate / "comparisons.parquet"

    @property
    def lds(self) -> Path:
        """Per-prompt logit differences of every scored mask (what curves.parquet is from)."""
        return self.evaluate / "lds.parquet"

    @property
    def circuit(self) -> Path:
        return self.evaluate / "circuit.json"

    @property
    def entity_scaling(self) -> Path:
        return self.evaluate / "entity_scaling.json"

    def mask_settings(self, key: str) -> Path:
        return self.evaluate / "mask_settings" / f"{key}.json"

    @property
    def screenshots(self) -> Path:
        """Where `maskshare report --screenshots` puts its PNGs."""
        return self.root / "screenshots"

    def relative(self, path: Path) -> str:
        """`path` relative to the run directory, with forward slashes (for links)."""
        return Path(path).relative_to(self.root).as_posix()
