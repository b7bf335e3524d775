"""The whole run for one `RunConfig`, stage by stage, with no Prefect in sight.

Each stage is a function of the run directory (plus a small typed value) that reads
its inputs from disk, writes its outputs atomically under the run directory and returns
their path. A stage whose outputs are complete (manifest present, hashes matching) is
skipped and says so, which is what makes a rerun of an unchanged config cheap. The
Prefect flows in `flows/` call these same functions as tasks; `run_pipeline` calls them
in order for notebooks, tests and `maskshare run --no-prefect`.

The run directory is `runs_dir/<name>-<hash>`, the hash covering the config (minus
where it runs), the dataset spec and source table, and the SAE files.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from maskshare.artifacts import (
    building,
    file_sha256,
    hash_config,
    is_complete,
    stage_lock,
    write_json_atomic,
    write_manifest,
    write_text_atomic,
)
from maskshare.config import Ablation, GroupingKind, RunConfig, dump_config, parse_config
from maskshare.errors import UserError
from maskshare.runtime import PROJECT_ROOT, configure_threads

logger = logging.getLogger(__name__)


# the metrics a run reports first (CLI output, Prefect table artifact)
HEADLINE_METRICS = ["faithfulness", "faithfulness_vs_clean", "completeness", "latents_per_token",
                    "circuit_size", "ari_template", "ari_roles", "purity_roles"]


# ----------------------------------------------------------------------------- variants
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
    """The main method, every baseline grouping with the main ablation, every other
    ablation with the main grouping (the design's comparisons; not the full cross)."""
    main = main_variant(cfg)
    out = [main]
    kinds = list(cfg.evaluate.baselines)
    if cfg.dataset.variant == "templated" and GroupingKind.TEMPLATE not in kinds:
        kinds.append(GroupingKind.TEMPLATE)
    for k in kinds:
        if k == GroupingKind.TEMPLATE and cfg.dataset.variant != "templated":
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
    seen: list[GroupingKind] = []
    for v in variants(cfg):
        if v.grouping not in seen:
            seen.append(v.grouping)
    return seen


# ----------------------------------------------------------------------------- resources
@functools.lru_cache(maxsize=2)
def _model(name: str, device: str):
    from maskshare.models import load_model

    return load_model(name, device=device)


def get_model(cfg: RunConfig):
    model = _model(cfg.model, cfg.device)
    # after the load: load_model sets the threads from the environment, and the run's
    # `threads` setting must win (a thread count change also changes float sums' bits)
    configure_threads(cfg.threads)
    return model


@functools.lru_cache(maxsize=2)
def _saes(cfg_json: str, model_name: str, device: str):
    from maskshare.saes import SAESetConfig, load_saes

    return load_saes(SAESetConfig.model_validate_json(cfg_json), _model(model_name, device), device)


def get_saes(cfg: RunConfig):
    get_model(cfg)
    return _saes(cfg.saes.model_dump_json(), cfg.model, cfg.device)


def sae_fingerprint(cfg: RunConfig) -> str:
    """Hash of the SAE files a run uses (or of the release ids, for hub SAEs)."""
    from maskshare.saes import embedded_sae_root

    if cfg.saes.source == "pretrained":
        return hash_config(cfg.saes.model_dump(mode="json"))
    dirs = ([p.parent for p in sorted(embedded_sae_root(cfg.model).glob("*/cfg.json"))]
            if cfg.saes.source == "embedded" else [Path(p) for p in cfg.saes.paths])
    if not dirs:
        raise UserError(f"no SAEs found for {cfg.model!r}: train them with `maskshare train-saes`")
    digests = []
    for d in dirs:
        for f in sorted(d.glob("*")):
            if f.is_file() and f.suffix in (".json", ".safetensors"):
                digests.append((d.name, f.name, file_sha256(f)))
    return hash_config(digests, cfg.saes.model_dump(mode="json"))


def dataset_fingerprint(cfg: RunConfig) -> str:
    from maskshare.datasets.registry import find_spec
    from maskshare.datasets.sources import load_source

    spec, path = find_spec(cfg.dataset.name)
    _, source_hash = load_source(spec, path.parent)
    return hash_config(spec.model_dump(mode="json"), source_hash, cfg.model)


# ----------------------------------------------------------------------------- run dir
def run_dir_for(cfg: RunConfig) -> Path:
    key = cfg.model_dump(mode="json", exclude={"runs_dir", "threads", "device"})
    h = hash_config(key, sae_fingerprint(cfg), dataset_fingerprint(cfg))
    root = Path(cfg.runs_dir)
    if not root.is_absolute():
        root = PROJECT_ROOT / root
    return root / f"{cfg.name}-{h}"


def check_inputs(cfg: RunConfig) -> None:
    """Raise UserError on bad input before anything is written: the model, the SAE set
    (files, hooks, widths against the model), the dataset spec and its variant, and a
    grouping the data cannot take."""
    from maskshare.datasets.registry import find_spec

    get_saes(cfg)  # loads the model too; both are cached for the stages
    spec, _ = find_spec(cfg.dataset.name)
    if cfg.dataset.variant not in spec.variants():
        raise UserError(f"dataset {spec.name!r} has no {cfg.dataset.variant} variant (it has "
                        f"{', '.join(spec.variants())})")
    if cfg.grouping.kind == GroupingKind.TEMPLATE and cfg.dataset.variant != "templated":
        raise UserError("grouping.kind 'template' needs a templated dataset (dataset.variant: "
                        "templated); free-form prompts share no positions")


def prepare_run(cfg: RunConfig) -> Path:
    """Check the inputs, then create the run directory (idempotent) and write its config.yaml."""
    check_inputs(cfg)
    run = run_dir_for(cfg)
    run.mkdir(parents=True, exist_ok=True)
    text = dump_config(cfg)
    p = run / "config.yaml"
    if not p.exists() or p.read_text() != text:
        write_text_atomic(p, text)
    return run


def load_run_config(run: Path) -> RunConfig:
    p = Path(run) / "config.yaml"
    if not p.is_file():
        raise UserError(f"{run} is not a run directory (no config.yaml)")
    return parse_config(yaml.safe_load(p.read_text()), str(p))


def _cached(path: Path, what: str) -> bool:
    if is_complete(path):
        logger.info("cached: %s (%s)", what, path)
        return True
    return False


# ----------------------------------------------------------------------------- stages
def stage_dataset(run: Path) -> Path:
    """Build (or load from cache) the dataset and copy its items into RUN/dataset/."""
    cfg = load_run_config(run)
    out = run / "dataset"
    if _cached(out, "dataset"):
        return out
    from maskshare.datasets import build_dataset

    t0 = time.time()
    built = build_dataset(cfg.dataset, get_model(cfg))
    items = built.items  # max_items is applied by build_dataset
    if items.filter(items["split"] == "train").height == 0:
        raise UserError(f"dataset {cfg.dataset.name!r} has no training items after filtering")
    with building(out) as tmp:
        items.write_parquet(tmp / "items.parquet")
        built.pass_table.write_parquet(tmp / "pass_table.parquet")
        write_manifest(tmp, inputs={"built_dataset": str(built.path)},
                       config=cfg.dataset.model_dump(mode="json"), seed=cfg.seed,
                       timings={"build_s": time.time() - t0})
    return out


def load_run_items(run: Path):
    from maskshare.datasets import load_items

    return load_items(Path(run) / "dataset" / "items.parquet")


def stage_groups(run: Path, kind: GroupingKind | str) -> Path:
    """Fit the grouping `kind` on the training split; assign slots to every item."""
    kind = GroupingKind(kind)
    cfg = load_run_config(run)
    out = run / "groups" / kind.value
    if _cached(out, f"groups {kind.value}"):
        return out
    from maskshare.grouping import grouping_quality, make_grouping, stability
    from maskshare.groups_view import write_group_artifacts

    t0 = time.time()
    model = get_model(cfg)
    items = load_run_items(run).sort("prompt_id")
    train = items.filter(items["split"] == "train")
    gcfg = cfg.grouping.model_copy(update={"kind": kind})
    grouping = make_grouping(gcfg, seed=cfg.seed)
    feats = train_feats = None
    if kind == GroupingKind.ATTENTION:  # one forward pass serves fit, assign and stability
        from maskshare.features import items_features

        feats = items_features(model, items, gcfg.features, batch_size=gcfg.batch_size,
                               progress=True)
        train_feats = _subset_features(feats, train["prompt_id"].to_list())
    grouping.fit(model, train, train_feats)
    assignment = grouping.assign(model, items, feats)
    quality = grouping_quality(grouping, assignment, items)
    if kind == GroupingKind.ATTENTION and len(cfg.evaluate.seeds) > 1:
        quality["stability"] = stability(gcfg, model, train, seeds=tuple(cfg.evaluate.seeds[:2]),
                                         features=train_feats)
    quality["fit_assign_s"] = time.time() - t0
    write_group_artifacts(out, grouping, assignment, items, quality=quality)
    return out


def _subset_features(f, prompt_ids: list[int]):
    """The rows of `f` belonging to `prompt_ids`, in the order of `prompt_ids`."""
    import numpy as np

    from maskshare.features import TokenFeatures

    order = {int(p): i for i, p in enumerate(prompt_ids)}
    rows = np.array([i for i, p in enumerate(f.prompt_id.tolist()) if p in order], dtype=np.int64)
    rows = rows[np.lexsort((f.position[rows], [order[int(p)] for p in f.prompt_id[rows]]))]
    return TokenFeatures(matrix=f.matrix[rows], prompt_id=f.prompt_id[rows],
                         position=f.position[rows], length=f.length[rows], names=f.names)


def load_slots(run: Path, kind: GroupingKind | str):
    """(grouping, {prompt_id: slots}) of a run's grouping `kind`."""
    import numpy as np
    import polars as pl

    from maskshare.grouping import load_grouping

    d = Path(run) / "groups" / GroupingKind(kind).value
    grouping = load_grouping(d)
    toks = pl.read_parquet(d / "tokens.parquet").sort(["prompt_id", "position"])
    slots = {pid: np.asarray(g["slot"].to_list(), dtype=np.int64)
             for (pid,), g in toks.group_by("prompt_id", maintain_order=True)}
    return grouping, slots


# ----------------------------------------------------------------------------- slot stats
def _split_items(items, *splits: str):
    return items.filter(items["split"].is_in(list(splits)))


def _token_lists(items) -> list[list[int]]:
    return [list(map(int, t)) for t in items["tokens"].to_list()]


def stage_stats(run: Path, kind: GroupingKind | str) -> Path:
    """Per-slot means of latents and SAE errors over the training split, for one grouping."""
    kind = GroupingKind(kind)
    cfg = load_run_config(run)
    out = run / "stats" / kind.value
    if _cached(out, f"slot stats {kind.value}"):
        return out
    from maskshare.slot_stats import compute_slot_stats

    t0 = time.time()
    grouping, slots = load_slots(run, kind)
    train = _split_items(load_run_items(run), "train")
    stats = compute_slot_stats(get_model(cfg), get_saes(cfg), _token_lists(train),
                               [slots[p] for p in train["prompt_id"].to_list()],
                               grouping.n_slots, batch_size=cfg.masks.batch_size)
    with building(out) as tmp:
        stats.save(tmp / "slot_stats.safetensors")
        write_manifest(tmp, inputs={"groups": str(run / "groups" / kind.value)},
                       timings={"stats_s": time.time() - t0})
    return out


# ----------------------------------------------------------------------------- masks
def mask_jobs(cfg: RunConfig) -> list[tuple[str, float, int]]:
    """Every (variant, lambda, seed) to train: all variants at the first seed; the main
    variant also at the second seed (stability)."""
    seeds = cfg.evaluate.seeds or [cfg.seed]
    jobs = [(v.name, lam, seeds[0]) for v in variants(cfg) for lam in cfg.masks.lambdas]
    if len(seeds) > 1:
        jobs += [(main_variant(cfg).name, lam, seeds[1]) for lam in cfg.masks.lambdas]
    return jobs


def _masks_dir(run: Path, variant: Variant, lam: float, seed: int) -> Path:
    return Path(run) / "masks" / variant.name / f"lam{lam:g}_seed{seed}"


@functools.lru_cache(maxsize=2)
def _prepared(run: str, variant_name: str, split: str, limit: int | None):
    """(MaskedModel, prepared batches, items, slot arrays) for one variant and split set."""
    from maskshare.masking import MaskedModel
    from maskshare.slot_stats import SlotStats

    run_p = Path(run)
    cfg = load_run_config(run_p)
    variant = Variant.parse(variant_name)
    grouping, slots = load_slots(run_p, variant.grouping)
    stats = SlotStats.load(run_p / "stats" / variant.grouping.value / "slot_stats.safetensors")
    items = _split_items(load_run_items(run_p), *split.split("+"))
    if limit is not None and items.height > limit:
        items = items.sample(n=limit, seed=cfg.seed, shuffle=False)
    mm = MaskedModel(get_model(cfg), get_saes(cfg), stats, grouping.n_slots,
                     ablation=variant.ablation, error=cfg.masks.error)
    slot_arrays = [slots[p] for p in items["prompt_id"].to_list()]
    batches = mm.prepare(_token_lists(items), slot_arrays, items["answer_id"].to_list(),
                         items["counterfactual_id"].to_list(), batch_size=cfg.masks.batch_size)
    return mm, batches, items, slot_arrays


def stage_masks(run: Path, variant: Variant | str, lam: float, seed: int) -> Path:
    """Train one binary mask (variant, lambda, seed) on the training split; resumable."""
    if isinstance(variant, str):
        variant = Variant.parse(variant)
    out = _masks_dir(run, variant, lam, seed)
    if _cached(out, f"masks {variant.name} lambda={lam:g} seed={seed}"):
        return out
    from maskshare.mask_training import train_masks

    cfg = load_run_config(run)
    t0 = time.time()
    mm, batches, _, _ = _prepared(str(run), variant.name, "train", cfg.masks.max_train_prompts)
    ckpt = out.parent / f".{out.name}.checkpoint"
    with stage_lock(out):  # one trainer per mask (and checkpoint); a second waits, then reuses
        if _cached(out, f"masks {variant.name} lambda={lam:g} seed={seed}"):
            return out
        res = train_masks(mm, batches, cfg.masks, lam, seed=seed, checkpoint_dir=ckpt)
        with building(out) as tmp:
            res.save(tmp, extra={"variant": variant.name, "ablation": variant.ablation.value,
                                 "error": cfg.masks.error.value})
            write_manifest(tmp, config=cfg.masks.model_dump(mode="json"), seed=seed,
                           timings={"train_s": time.time() - t0},
                           extra={"variant": variant.name, "lambda": lam})
        shutil.rmtree(ckpt, ignore_errors=True)
    return out


# ----------------------------------------------------------------------------- evaluate
SELECT_SPLIT = "train"       # lambda is chosen on (a sample of) the training prompts ...
SELECT_LIMIT = 64
TARGET_F = 0.9               # ... as the sparsest whose F reaches this


def heldout_splits(cfg: RunConfig, items) -> list[str]:
    """Held-out phrasings of known entities and held-out entities, reported separately."""
    present = set(items["split"].unique().to_list())
    order = ["test_phrasing", "test_entity", "test_both"]
    return [s for s in order if s in present]


def headline_split(cfg: RunConfig, splits: list[str]) -> str | None:
    if cfg.dataset.variant == "freeform" and "test_phrasing" in splits:
        return "test_phrasing"
    return "test_entity" if "test_entity" in splits else (splits[0] if splits else None)


def _eval_variant(run: Path, cfg: RunConfig, variant: Variant, seed: int,
                  splits: list[str], clean: dict[str, np.ndarray] | None = None) -> list[dict]:
    """Rows (one per lambda x split) for a variant's masks at `seed`. `clean`: per split,
    the clean model's per-prompt ld (the same for every variant), filled in when missing."""
    from maskshare.evaluation import evaluate_masks, reference_lds
    from maskshare.mask_training import TrainResult

    rows = []
    clean = {} if clean is None else clean
    results = {lam: TrainResult.load(_masks_dir(run, variant, lam, seed))
               for lam in cfg.masks.lambdas}
    for split in [SELECT_SPLIT, *splits]:
        limit = SELECT_LIMIT if split == SELECT_SPLIT else None
        mm, batches, items, slot_arrays = _prepared(str(run), variant.name, split, limit)
        if split not in clean:
            clean[split] = mm.clean_logit_diffs(batches)
        ref = reference_lds(mm, batches, clean=clean[split])
        for lam, res in results.items():
            m = evaluate_masks(mm, batches, res.masks(), slot_arrays, reference=ref)
            m.pop("per_prompt", None)
            rows.append({"variant": variant.name, "grouping": variant.grouping.value,
                         "ablation": variant.ablation.value, "lambda": lam, "seed": seed,
                         "split": split, **{k: v for k, v in m.items()
                                            if not isinstance(v, dict)}})
    return rows


def choose_lambda(rows: list[dict], variant: str) -> float:
    """The sparsest lambda whose F on the selection split reaches TARGET_F; else best F."""
    sel = [r for r in rows if r["variant"] == variant and r["split"] == SELECT_SPLIT]
    ok = [r for r in sel if r["faithfulness"] is not None and r["faithfulness"] >= TARGET_F]
    if ok:
        return min(ok, key=lambda r: r["latents_per_token"])["lambda"]
    scored = [r for r in sel if r["faithfulness"] is not None]
    return max(scored, key=lambda r: r["faithfulness"])["lambda"] if scored else sel[0]["lambda"]


def stage_evaluate(run: Path) -> dict:
    """Evaluate every variant on the held-out splits; write metrics.json, tables, report."""
    import polars as pl

    from maskshare.evaluation import curve_area, f_at_size, jaccard
    from maskshare.mask_training import TrainResult

    run = Path(run)
    cfg = load_run_config(run)
    out = run / "evaluate"
    if _cached(out, "evaluation") and (run / "metrics.json").is_file():
        return json.loads((run / "metrics.json").read_text())
    t0 = time.time()
    items = load_run_items(run)
    splits = heldout_splits(cfg, items)
    head = headline_split(cfg, splits)
    if head is None:
        raise UserError("the dataset has no held-out prompts to evaluate on")
    seeds = cfg.evaluate.seeds or [cfg.seed]
    main = main_variant(cfg)
    rows: list[dict] = []
    clean: dict[str, np.ndarray] = {}  # shared by every variant
    for v in variants(cfg):
        rows += _eval_variant(run, cfg, v, seeds[0], splits, clean)
    lam = choose_lambda(rows, main.name)

    def pick(variant: str, split: str, lam_: float) -> dict:
        return next(r for r in rows if r["variant"] == variant and r["split"] == split
                    and r["lambda"] == lam_)

    best = pick(main.name, head, lam)
    metrics: dict = {
        "run": run.name, "dataset": cfg.dataset.name, "variant": cfg.dataset.variant,
        "headline_split": head, "lambda": lam, "error_term": cfg.masks.error.value,
        "faithfulness": best["faithfulness"],
        "faithfulness_vs_clean": best["faithfulness_vs_clean"],
        "completeness": best["completeness"], "latents_per_token": best["latents_per_token"],
        "circuit_size": best["circuit_size"], "distinct_latents": best["distinct_latents"],
        "ld_model": best["ld_model"], "ld_model_clean": best["ld_model_clean"],
        "ld_ablated": best["ld_ablated"], "ld_circuit": best["ld_circuit"],
        "n_prompts": best["n_prompts"],
    }
    for split in splits:
        r = pick(main.name, split, lam)
        metrics[f"faithfulness_{split}"] = r["faithfulness"]
        metrics[f"faithfulness_vs_clean_{split}"] = r["faithfulness_vs_clean"]
        metrics[f"n_prompts_{split}"] = r["n_prompts"]
    # grouping quality of the main grouping
    q = json.loads((run / "groups" / main.grouping.value / "quality.json").read_text())
    for k in ("ari_template", "ari_roles", "purity_roles", "ood_fraction", "stability"):
        if q.get(k) is not None:
            metrics[k] = q[k]
    for sp, m in (q.get("by_split") or {}).items():
        for k in ("ari_roles", "purity_roles", "ood_fraction"):
            if m.get(k) is not None:
                metrics[f"{k}_{sp}"] = m[k]
    # curves and matched comparisons on the headline split
    curves, comp_rows = [], []
    target = best["latents_per_token"]
    all_sizes = [r["latents_per_token"] for r in rows
                 if r["split"] == head and r["latents_per_token"]]
    x_range = (min(all_sizes), max(all_sizes)) if all_sizes else None
    for v in variants(cfg):
        pts = sorted((r for r in rows if r["variant"] == v.name and r["split"] == head),
                     key=lambda r: r["latents_per_token"] or 0)
        sizes = [r["latents_per_token"] for r in pts]
        fs = [r["faithfulness"] for r in pts]
        plot = "groupings" if v.ablation == main.ablation else "ablations"
        curves.append({"method": v.name, "plot": plot, "points": [
            {"latents_per_token": s, "faithfulness": f} for s, f in zip(sizes, fs, strict=True)]})
        if v == main:
            curves.append({"method": v.name, "plot": "ablations", "points": curves[-1]["points"]})
        f_matched = f_at_size(sizes, fs, target) if target else None
        area = curve_area(sizes, fs, x_range)
        comp_rows.append({"method": v.name, "grouping": v.grouping.value,
                          "ablation": v.ablation.value,
                          f"F at {target:.0f} latents/token" if target else "F matched": f_matched,
                          "curve area (log size)": area,
                          "best F": max((f for f in fs if f is not None), default=None)})
        if v != main:
            metrics[f"baseline_{v.name}"] = f_matched
            metrics[f"baseline_{v.name}_curve_area"] = area
        else:
            metrics["curve_area"] = area
    # stability across seeds
    if len(seeds) > 1:
        a = TrainResult.load(_masks_dir(run, main, lam, seeds[0])).masks()
        b = TrainResult.load(_masks_dir(run, main, lam, seeds[1])).masks()
        metrics["stability_jaccard"] = jaccard(a, b)
        metrics["stability_jaccard_latents"] = jaccard(a, b, level="latents")
    circuit = _circuit(run, cfg, main, lam, seeds[0], items)
    with building(out) as tmp:
        pl.DataFrame(rows).write_parquet(tmp / "curves.parquet")
        pl.DataFrame(comp_rows).write_parquet(tmp / "comparisons.parquet")
        (tmp / "circuit.json").write_text(json.dumps(circuit, indent=1, default=str))
        write_manifest(tmp, timings={"evaluate_s": time.time() - t0})
    metrics["timings"] = {"evaluate_s": time.time() - t0}
    write_json_atomic(run / "metrics.json", metrics)
    _write_report(run, cfg, metrics, comp_rows, curves, circuit, rows, splits)
    return metrics


def _circuit(run: Path, cfg: RunConfig, variant: Variant, lam: float, seed: int, items) -> dict:
    from maskshare.circuit import circuit_summary, kept_latents, top_activating_tokens
    from maskshare.mask_training import TrainResult
    from maskshare.slot_stats import SlotStats

    masks = TrainResult.load(_masks_dir(run, variant, lam, seed)).masks()
    stats = SlotStats.load(run / "stats" / variant.grouping.value / "slot_stats.safetensors")
    train = _split_items(items, "train")
    top = top_activating_tokens(get_model(cfg), get_saes(cfg), _token_lists(train),
                                train["token_strs"].to_list(), kept_latents(masks))
    return circuit_summary(masks, get_saes(cfg), stats, top_tokens=top)


def _write_report(run: Path, cfg: RunConfig, metrics: dict, comp_rows: list[dict],
                  curves: list[dict], circuit: dict, rows: list[dict], splits: list[str]) -> None:
    from maskshare.report import write_report

    main = main_variant(cfg)
    per_split = []
    for split in splits:
        per_split.append({"title": f"Every method on {split} (all lambdas)", "rows": [
            {k: r[k] for k in ("variant", "lambda", "faithfulness", "faithfulness_vs_clean",
                               "completeness", "latents_per_token", "circuit_size",
                               "distinct_latents", "n_prompts")}
            for r in rows if r["split"] == split]})
    comparisons = [{"title": f"{cfg.dataset.name} ({cfg.dataset.variant}): methods at matched "
                             f"latents per token, on {metrics['headline_split']}",
                    "rows": comp_rows,
                    "note": f"main method {main.name}, lambda {metrics['lambda']:g} chosen on "
                            f"training prompts; error term {cfg.masks.error.value}"},
                   *per_split]
    groups_page = f"groups/{main.grouping.value}/groups.html"
    write_report(run / "report.html", title=f"maskshare run {run.name}", comparisons=comparisons,
                 curves=curves, circuit=circuit, metrics=metrics,
                 groups_page=groups_page if (run / groups_page).is_file() else None)


# ----------------------------------------------------------------------------- all of it
def run_pipeline(cfg: RunConfig) -> Path:
    """Every stage in order, in this process (no Prefect). Returns the run directory.

    A run directory this call created is removed again if a stage then fails on bad input
    (e.g. too few items pass the dataset filter): fixing the input changes the run's hash,
    so it could never be reused, and bad input must leave nothing behind."""
    fresh = not run_dir_for(cfg).exists()
    run = prepare_run(cfg)
    logger.info("run directory: %s", run)
    try:
        stage_dataset(run)
        for k in grouping_kinds(cfg):
            stage_groups(run, k)
            stage_stats(run, k)
        for v, lam, seed in mask_jobs(cfg):
            stage_masks(run, Variant.parse(v), lam, seed)
        stage_evaluate(run)
    except UserError:
        if fresh:
            shutil.rmtree(run, ignore_errors=True)
        raise
    return run


# ----------------------------------------------------------------------------- entity scaling
def entity_scaling(run: Path, counts: list[int], seed: int | None = None,
                   lam: float | None = None) -> list[dict]:
    """How F on held-out entities grows with the number of training entities.

    For each n in `counts`: train the main variant's mask (the run's chosen lambda unless
    given) on the training prompts of the first n training entities (a seeded order),
    evaluate it on `test_entity`. Slot means stay those of the whole training split.
    Rows are also written to RUN/evaluate/entity_scaling.json.
    """
    import random

    from maskshare.evaluation import evaluate_masks, reference_lds
    from maskshare.mask_training import train_masks

    run = Path(run)
    cfg = load_run_config(run)
    seed = cfg.seed if seed is None else seed
    metrics = json.loads((run / "metrics.json").read_text()) if lam is None else {}
    lam = float(metrics["lambda"]) if lam is None else lam
    main = main_variant(cfg)
    mm, test_batches, test_items, test_slots = _prepared(str(run), main.name, "test_entity", None)
    if not test_batches:
        raise UserError(f"{run.name} has no test_entity prompts")
    ref = reference_lds(mm, test_batches)
    _, slots = load_slots(run, main.grouping)
    train = _split_items(load_run_items(run), "train")
    entities = sorted(set(train["entity"].to_list()))
    random.Random(seed).shuffle(entities)
    rows = []
    for n in counts:
        keep = set(entities[:n])
        sub = train.filter(train["entity"].is_in(list(keep)))
        batches = mm.prepare(_token_lists(sub), [slots[p] for p in sub["prompt_id"].to_list()],
                             sub["answer_id"].to_list(), sub["counterfactual_id"].to_list(),
                             batch_size=cfg.masks.batch_size)
        res = train_masks(mm, batches, cfg.masks, lam, seed=seed)
        m = evaluate_masks(mm, test_batches, res.masks(), test_slots, reference=ref)
        rows.append({"n_train_entities": len(keep), "n_train_prompts": sub.height,
                     "lambda": lam, "faithfulness": m["faithfulness"],
                     "faithfulness_vs_clean": m["faithfulness_vs_clean"],
                     "latents_per_token": m["latents_per_token"],
                     "n_test_prompts": m["n_prompts"]})
        logger.info("entity scaling: %s", rows[-1])
    write_json_atomic(run / "evaluate" / "entity_scaling.json", rows)
    return rows
