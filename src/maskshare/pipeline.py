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
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from maskshare.artifacts import (
    building,
    file_sha256,
    hash_config,
    is_complete,
    write_manifest,
    write_text_atomic,
)
from maskshare.config import Ablation, GroupingKind, RunConfig, dump_config, parse_config
from maskshare.errors import UserError
from maskshare.runtime import PROJECT_ROOT, configure_threads

logger = logging.getLogger(__name__)


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
    configure_threads(cfg.threads)
    return _model(cfg.model, cfg.device)


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
    from maskshare.datasets import load_spec

    spec = load_spec(cfg.dataset.name)
    return hash_config(spec.fingerprint(), cfg.model)


# ----------------------------------------------------------------------------- run dir
def run_dir_for(cfg: RunConfig) -> Path:
    key = cfg.model_dump(mode="json", exclude={"runs_dir", "threads", "device"})
    h = hash_config(key, sae_fingerprint(cfg), dataset_fingerprint(cfg))
    root = Path(cfg.runs_dir)
    if not root.is_absolute():
        root = PROJECT_ROOT / root
    return root / f"{cfg.name}-{h}"


def prepare_run(cfg: RunConfig) -> Path:
    """Create the run directory (idempotent) and write its config.yaml."""
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
    items = built.items
    if cfg.dataset.max_items is not None and items.height > cfg.dataset.max_items:
        items = items.sample(n=cfg.dataset.max_items, seed=cfg.seed, shuffle=False)
    for split in ("train",):
        if items.filter(items["split"] == split).height == 0:
            raise UserError(f"dataset {cfg.dataset.name!r} has no {split!r} items after filtering")
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
    from maskshare.grouping import grouping_quality, make_grouping
    from maskshare.groups_view import write_group_artifacts

    t0 = time.time()
    model = get_model(cfg)
    items = load_run_items(run)
    train = items.filter(items["split"] == "train")
    gcfg = cfg.grouping.model_copy(update={"kind": kind})
    grouping = make_grouping(gcfg, seed=cfg.seed)
    grouping.fit(model, train)
    assignment = grouping.assign(model, items)
    quality = grouping_quality(grouping, assignment, items)
    if kind == GroupingKind.ATTENTION and len(cfg.evaluate.seeds) > 1:
        from maskshare.grouping import stability

        quality["stability"] = stability(gcfg, model, train, seeds=cfg.evaluate.seeds[:2])
    quality["fit_assign_s"] = time.time() - t0
    write_group_artifacts(out, grouping, assignment, items, quality=quality)
    return out


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
