"""What every stage of a run shares: the loaded model and SAEs, the run directory and its
config, and the run's items.

The model and SAE set are loaded once per process (small LRU caches keyed by name and
device), so a run's stages, executed in one process, load them once. The run directory is
`runs_dir/<name>-<hash>`, the hash covering the config (minus where it runs: `runs_dir`,
`threads`, `device`), the dataset spec and source table, and the SAE files.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import yaml

from maskshare.artifacts import file_sha256, hash_config, write_text_atomic
from maskshare.config import (
    NOT_IN_RUN_HASH,
    RunConfig,
    config_data,
    dump_config,
    hash_excluded,
    parse_config,
)
from maskshare.config_selection import run_config_data
from maskshare.datasets import load_items
from maskshare.datasets.registry import find_spec
from maskshare.datasets.sources import load_source
from maskshare.errors import UserError
from maskshare.kinds import ABLATIONS, GROUPINGS
from maskshare.model.models import load_model
from maskshare.model.sae_set import SAESetConfig, embedded_sae_root, load_saes
from maskshare.run.layout import RunLayout
from maskshare.runtime import PROJECT_ROOT, configure_threads

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- model, SAEs
@functools.lru_cache(maxsize=2)
def _model(name: str, device: str):
    return load_model(name, device=device)


def get_model(cfg: RunConfig):
    model = _model(cfg.model, cfg.device)
    # after the load: load_model sets the threads from the environment, and the run's
    # `threads` setting must win (a thread count change also changes float sums' bits)
    configure_threads(cfg.threads)
    return model


@functools.lru_cache(maxsize=2)
def _saes(cfg_json: str, model_name: str, device: str):
    return load_saes(SAESetConfig.model_validate_json(cfg_json), _model(model_name, device), device)


def get_saes(cfg: RunConfig):
    get_model(cfg)
    return _saes(cfg.saes.model_dump_json(), cfg.model, cfg.device)


# ----------------------------------------------------------------------------- fingerprints
def sae_fingerprint(cfg: RunConfig) -> str:
    """Hash of the SAE files a run uses (or of the release ids, for hub SAEs)."""
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
    """Hash of the dataset spec, its source table and the model that filters it."""
    spec, path = find_spec(cfg.dataset.name)
    _, source_hash = load_source(spec, path.parent)
    return hash_config(spec.model_dump(mode="json"), source_hash, cfg.model)


# ----------------------------------------------------------------------------- run dir
def run_dir_for(cfg: RunConfig) -> Path:
    key = config_data(cfg)
    for k in hash_excluded(cfg, NOT_IN_RUN_HASH):
        key.pop(k)
    h = hash_config(key, sae_fingerprint(cfg), dataset_fingerprint(cfg))
    root = Path(cfg.runs_dir)
    if not root.is_absolute():
        root = PROJECT_ROOT / root
    return root / f"{cfg.name}-{h}"


def check_inputs(cfg: RunConfig) -> None:
    """Raise UserError on bad input before anything is written: the model, the SAE set
    (files, hooks, widths against the model), the dataset spec and its variant, and a
    grouping the data cannot take."""
    get_saes(cfg)  # loads the model too; both are cached for the stages
    spec, _ = find_spec(cfg.dataset.name)
    if cfg.dataset.variant not in spec.variants():
        raise UserError(f"dataset {spec.name!r} has no {cfg.dataset.variant} variant (it has "
                        f"{', '.join(spec.variants())})")
    check_dataset_fits(cfg, spec)


def check_dataset_fits(cfg: RunConfig, spec) -> None:
    """Groupings and ablations the dataset can take, as each kind says (`data_problem`,
    `dataset_problem`): refused for the main grouping and every ablation, warned for a
    baseline grouping (e.g. `roles` on a dataset without labelled spans)."""
    variant = cfg.dataset.variant
    if note := GROUPINGS.get(cfg.grouping.kind).data_problem(spec, variant):
        raise UserError(note)
    for k in cfg.evaluate.baselines:
        kind = GROUPINGS.get(k)
        if kind.takes(variant) and (note := kind.data_problem(spec, variant)):
            logger.warning("%s", note)
    for a in dict.fromkeys((cfg.masks.ablation, *cfg.evaluate.ablations)):
        if note := ABLATIONS.get(a)().dataset_problem(spec):
            raise UserError(note)


def prepare_run(cfg: RunConfig) -> Path:
    """Check the inputs, then create the run directory (idempotent) and write its config.yaml."""
    check_inputs(cfg)
    run = run_dir_for(cfg)
    run.mkdir(parents=True, exist_ok=True)
    text = dump_config(cfg)
    p = RunLayout(run).config
    if not p.exists() or p.read_text() != text:
        write_text_atomic(p, text)
    return run


def load_run_config(run: str | Path) -> RunConfig:
    p = RunLayout(run).config
    if not p.is_file():
        raise UserError(f"{run} is not a run directory (no config.yaml)")
    return parse_config(run_config_data(yaml.safe_load(p.read_text())), str(p))


# ----------------------------------------------------------------------------- items
def load_run_items(run: str | Path):
    """The run's dataset items (written by the dataset stage)."""
    return load_items(RunLayout(run).items)


def split_items(items, *splits: str):
    """The rows of `items` in any of `splits`."""
    return items.filter(items["split"].is_in(list(splits)))


def token_lists(items) -> list[list[int]]:
    return [list(map(int, t)) for t in items["tokens"].to_list()]
