"""What the report shows, computed from a finished run directory's files alone.

`load_run_view(run)` reads config.yaml, metrics.json, evaluate/{curves,comparisons}.parquet,
evaluate/circuit.json, groups/<kind>/tokens.parquet and dataset/items.parquet. From them:

- `headline(view)`: the chosen circuit (size, F per held-out split) and one sentence each on
  grouping and ablation at matched size (the main method's latents per token), with F read
  off each method's F-versus-size curve on the headline split (`f_at_size`, linear in log
  size; "not measured" where the curve does not reach that size).
- `plot_series(view)`: the curves of each plot: every grouping with the main ablation, every
  ablation with the main grouping (the design's comparisons), and the main method's learned
  masks against its attribution circuits (top triples by attribution patching / integrated
  gradients at the masks' sizes) where the run has them.
- `comparison_rows(view)`: per method, F at matched size on every held-out split, curve area
  and best F, with readable method names.
- `attribution_sentences(view, rows)`: which of learned masks and attribution circuits has
  the F closest to 1 at matched size on each held-out split, from the comparison rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import yaml

from maskshare.artifacts import read_manifest
from maskshare.errors import UserError
from maskshare.evaluation.metrics import f_at_size
from maskshare.kinds import GROUPINGS
from maskshare.report.slot_names import SlotLabel, load_slot_labels
from maskshare.run.layout import RunLayout

SPLIT_NAMES = {"train": "training prompts", "validation": "validation prompts",
               "test_phrasing": "held-out phrasings",
               "test_entity": "held-out entities",
               "test_both": "held-out phrasings and entities"}
HELDOUT = ("test_phrasing", "test_entity", "test_both")
MASKS = "masks"
FINDER_NAMES = {MASKS: "learned masks", "atp": "attribution patching",
                "ig": "integrated gradients"}
TIE = 0.005  # F values whose distances to 1 differ by less are reported as a tie


def grouping_name(g: str) -> str:
    """How the report names grouping kind `g` (its class's `title`; the name itself for a
    kind this maskshare does not know)."""
    try:
        return GROUPINGS.get(g).title or g
    except ValueError:
        return g


def finder_name(finder: str | None) -> str:
    return FINDER_NAMES.get(finder or MASKS, finder)


def method_name(grouping: str, ablation: str, finder: str | None = MASKS) -> str:
    """`attention__slot-mean` -> "attention slots, slot-mean ablation"; its integrated
    gradients circuits -> "attention slots, slot-mean ablation · integrated gradients"."""
    base = f"{grouping_name(grouping)}, {ablation} ablation"
    return base if (finder or MASKS) == MASKS else f"{base} · {finder_name(finder)}"


@dataclass
class RunView:
    run: Path
    config: dict
    metrics: dict
    curves: pl.DataFrame
    comparisons: pl.DataFrame
    circuit: dict
    items: pl.DataFrame | None
    labels: dict[str, dict[int, SlotLabel]] = field(default_factory=dict)  # per grouping kind

    @property
    def main_grouping(self) -> str:
        return self.config["grouping"]["kind"]

    @property
    def main_ablation(self) -> str:
        return self.config["masks"]["ablation"]

    @property
    def main_variant(self) -> str:
        return f"{self.main_grouping}__{self.main_ablation}"

    @property
    def seed(self) -> int:
        seeds = self.config.get("evaluate", {}).get("seeds") or [self.config.get("seed", 0)]
        return int(seeds[0])

    def split_name(self, split: str) -> str:
        if ":" in split:  # a prompt dataset's split restricted to one group
            base, group = split.split(":", 1)
            return f"{self.split_name(base)}: {group}"
        # prompt datasets carry a group name where phrasings carry a template
        if split in ("test_phrasing", "test_both") and self.items is not None and \
                not self.items["phrasing"].str.contains("{", literal=True).any():
            return SPLIT_NAMES[split].replace("phrasings", "groups")
        return SPLIT_NAMES.get(split, split)

    @property
    def heldout(self) -> list[str]:
        present = set(self.curves["split"].unique().to_list()) if self.curves.height else set()
        # each held-out split, then its per-group splits (prompt datasets: `<split>:<group>`)
        return [x for s in HELDOUT if s in present
                for x in [s, *sorted(p for p in present if p.startswith(f"{s}:"))]]


def is_run_dir(path: str | Path) -> bool:
    return RunLayout(path).is_finished()


def load_run_view(run: str | Path) -> RunView:
    run = Path(run)
    if not is_run_dir(run):
        raise UserError(f"{run} is not a finished run directory (it needs config.yaml and "
                        "metrics.json: run `maskshare run --config FILE` first)")
    layout = RunLayout(run)
    config = yaml.safe_load(layout.config.read_text())
    metrics = json.loads(layout.metrics.read_text())
    curves = pl.read_parquet(layout.curves) if layout.curves.is_file() else pl.DataFrame()
    comps = pl.read_parquet(layout.comparisons) if layout.comparisons.is_file() \
        else pl.DataFrame()
    circuit = json.loads(layout.circuit.read_text()) if layout.circuit.is_file() else {}
    items = pl.read_parquet(layout.items) if layout.items.is_file() else None
    labels = {d.name: load_slot_labels(d) for d in layout.grouping_dirs()}
    return RunView(run, config, metrics, curves, comps, circuit, items, labels)


# ----------------------------------------------------------------------------- curves
def _curve(view: RunView, variant: str, split: str) -> tuple[list[float], list[float | None]]:
    c = view.curves
    if not c.height:
        return [], []
    c = c.filter((pl.col("variant") == variant) & (pl.col("split") == split)
                 & (pl.col("seed") == view.seed)).sort("latents_per_token")
    return c["latents_per_token"].to_list(), c["faithfulness"].to_list()


def variants(view: RunView) -> list[tuple[str, str, str, str]]:
    """(method, grouping, ablation, finder) in the run's order (comparisons.parquet, else
    curves); `finder` is `masks` for learned masks (and in runs from before attribution)."""
    src = view.comparisons if view.comparisons.height else view.curves
    if not src.height:
        return []
    name = "method" if "method" in src.columns else "variant"
    if "finder" not in src.columns:
        src = src.with_columns(pl.lit(MASKS).alias("finder"))
    rows = src.select(name, "grouping", "ablation", "finder").unique(maintain_order=True)
    return [tuple(r) for r in rows.iter_rows()]


def plot_series(view: RunView) -> list[dict]:
    """[{title, series: [{name, main, points: [(size, F)]}]}] on the headline split."""
    head = view.metrics.get("headline_split")
    main_g, main_a = view.main_grouping, view.main_ablation
    plots = []
    for title, keep, label in (
            (f"Groupings, each with {main_a} ablation",
             lambda g, a, f: a == main_a and f == MASKS, lambda g, a, f: grouping_name(g)),
            (f"Ablations, each with {grouping_name(main_g)}",
             lambda g, a, f: g == main_g and f == MASKS, lambda g, a, f: f"{a} ablation"),
            (f"Learned masks and attribution, {grouping_name(main_g)} with {main_a} ablation",
             lambda g, a, f: g == main_g and a == main_a, lambda g, a, f: finder_name(f))):
        series = []
        for v, g, a, f in variants(view):
            if not keep(g, a, f):
                continue
            xs, ys = _curve(view, v, head)
            series.append({"name": label(g, a, f), "main": v == view.main_variant,
                           "points": [(x, y) for x, y in zip(xs, ys, strict=True)
                                      if x and y is not None]})
        if len(series) > 1 or (series and not plots):
            plots.append({"title": title, "series": series})
    return plots


def matched_f(view: RunView, variant: str, split: str) -> float | None:
    size = view.metrics.get("latents_per_token")
    xs, ys = _curve(view, variant, split)
    return f_at_size(xs, ys, size) if size and xs else None


def comparison_rows(view: RunView) -> list[dict]:
    out = []
    comp = {r.get("method"): r for r in view.comparisons.iter_rows(named=True)} \
        if view.comparisons.height else {}
    for v, g, a, f in variants(view):
        c = comp.get(v, {})
        row = {"method": method_name(g, a, f), "main": v == view.main_variant, "variant": v,
               "grouping": g, "ablation": a, "finder": f}
        for s in view.heldout:
            row[s] = matched_f(view, v, s)
        row["curve area"] = c.get("curve area (log size)")
        row["best F"] = c.get("best F")
        out.append(row)
    return out


# ----------------------------------------------------------------------------- headline
def _f(v) -> str:
    return "not measured at this size" if v is None else f"{v:.2f}"


def _sentence(lead: str, main_f, others: list[tuple[str, float | None]], size: float,
              head: str) -> str:
    parts = [f"{name} {_f(f)}" for name, f in others]
    rest = ("; " + (parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and "
                    + parts[-1])) if parts else ""
    return f"At {size:.3g} latents per token on {head}, {lead} reach F {_f(main_f)}{rest}."


def headline(view: RunView) -> dict:
    """The numbers and sentences at the top of the report."""
    m, cfg = view.metrics, view.config
    head = m.get("headline_split")
    size = m.get("latents_per_token")
    hooks = view.circuit.get("hooks", [])
    out = {
        "dataset": f"{m.get('dataset', cfg['dataset']['name'])} ({m.get('variant', '')})",
        "model": cfg.get("model", "?"),
        "saes": _sae_text(cfg, view.circuit),
        "method": method_name(view.main_grouping, view.main_ablation),
        "lambda": m.get("lambda"), "error_term": m.get("error_term"),
        "latents_per_token": size, "circuit_size": m.get("circuit_size"),
        "distinct_latents": m.get("distinct_latents"), "n_hooks": len(hooks),
        "headline_split": head, "headline_split_name": view.split_name(head or ""),
        "splits": [(s, view.split_name(s), m.get(f"faithfulness_{s}"),
                    m.get(f"n_prompts_{s}")) for s in view.heldout],
        "faithfulness_vs_clean": m.get("faithfulness_vs_clean"),
        "completeness": m.get("completeness"),
        "sentences": [],
    }
    if not size or not head:
        return out
    rows = comparison_rows(view)
    main_f = m.get("faithfulness")  # measured at the chosen lambda: the same as the card above
    hname = view.split_name(head)
    masks = [r for r in rows if r["finder"] == MASKS]
    grp = [(grouping_name(r["grouping"]), r[head]) for r in masks
           if not r["main"] and r["ablation"] == view.main_ablation]
    abl = [(f"{r['ablation']} ablation", r[head]) for r in masks
           if not r["main"] and r["grouping"] == view.main_grouping]
    lead = grouping_name(view.main_grouping)
    if grp:
        out["sentences"].append(_sentence(lead, main_f, grp, size, hname))
    if abl:
        out["sentences"].append(_sentence(f"{lead} with {view.main_ablation} ablation", main_f,
                                          abl, size, hname).replace(
            f"At {size:.3g} latents per token on {hname}, ", "At the same size, "))
    out["sentences"] += attribution_sentences(view, rows)
    return out


def _closest(cands: list[tuple[str, float]]) -> tuple[list[str], float | None]:
    """The methods whose F is closest to 1 (the full model; F above 1 overshoots it), all
    within TIE of the closest, and how much closer they are than the next method."""
    best = min(abs(1 - f) for _, f in cands)
    top = [n for n, f in cands if abs(1 - f) <= best + TIE]  # in the rows' order
    rest = sorted(abs(1 - f) for _, f in cands if abs(1 - f) > best + TIE)
    return top, (rest[0] - best if rest else None)


def attribution_sentences(view: RunView, rows: list[dict]) -> list[str]:
    """The main method's learned masks against its attribution circuits at matched size:
    F on the headline split, then which is closest to the full model on each held-out
    split where every one of them reaches that size."""
    same = sorted((r for r in rows if r["grouping"] == view.main_grouping
                   and r["ablation"] == view.main_ablation),
                  key=lambda r: r["finder"] != MASKS)  # learned masks first
    if not any(r["finder"] != MASKS for r in same):
        return []
    head = view.metrics.get("headline_split")
    first = [f"{finder_name(r['finder'])} {_f(r[head])}" for r in same]
    out = [f"At the same size against attribution (the top triples by score at the learned "
           f"masks' sizes on the training prompts), on {view.split_name(head)}: "
           f"{', '.join(first[:-1])} and {first[-1]}."]
    by: dict[tuple[str, ...], list[str]] = {}
    unmeasured = []
    for s in view.heldout:
        cands = [(finder_name(r["finder"]), r[s]) for r in same]
        if any(f is None for _, f in cands):
            unmeasured.append(view.split_name(s))
            continue
        top, margin = _closest(cands)
        by.setdefault(tuple(top), []).append(
            view.split_name(s) + (f" (by {margin:.2f})" if margin is not None else ""))
    parts = [(f"{' and '.join(top)} tie" if len(top) > 1 else f"{top[0]}")
             + f" on {', '.join(splits)}" for top, splits in by.items()]
    if parts:
        out.append("Closest to the full model (F nearest 1) at that size: "
                   + "; ".join(parts) + ".")
    if unmeasured:
        out.append(f"Not every method reaches that size on {', '.join(unmeasured)}.")
    return out


def _sae_text(cfg: dict, circuit: dict) -> str:
    s = cfg.get("saes", {})
    src = s.get("source", "?")
    what = {"embedded": "embedded SAEs", "pretrained": f"SAEs {s.get('release')}",
            "local": "local SAEs"}.get(src, f"{src} SAEs")
    layers = circuit.get("layers") or []
    return f"{what} at layers {', '.join(map(str, layers))}" if layers else what


def mask_threads(run: str | Path) -> list[int]:
    """The torch thread counts the run's masks were trained with (their manifests'
    `runtime`; masks written before it was recorded say nothing)."""
    seen = set()
    for p in (RunLayout(run).root / "masks").glob("*/*/manifest.json"):
        n = (read_manifest(p.parent) or {}).get("runtime", {}).get("torch_threads")
        if n is not None:
            seen.add(int(n))
    return sorted(seen)
