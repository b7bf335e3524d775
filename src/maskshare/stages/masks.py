"""Stage `masks`: train one binary mask (variant, lambda, seed) on the training split,
resumable from its checkpoint, starting where `mask_start` says. What experiments build on
lives in the library: `maskshare.masks.variant.prepare_variant` (a variant's masked model
and batches on a split) and `maskshare.evaluation.experiments.train_and_evaluate`."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from maskshare.artifacts import building, write_manifest
from maskshare.evaluation.sweep_fits import fit_metrics, validation_monitor
from maskshare.masks.attribution import load_scores
from maskshare.masks.training import TrainResult, slot_weights, train_masks
from maskshare.masks.variant import prepare_variant
from maskshare.masks.warm_start import attribution_start, continued_theta, warm_config
from maskshare.run.layout import RunLayout
from maskshare.run.resources import (
    load_run_config,
)
from maskshare.run.variants import Variant, attribution_variants

GRID = "grid"  # a mask call's `start` when it is one of the first lambdas (`mask_start`)


def mask_start(cfg, variant: str, lam: float, start: float | str | None = GRID
               ) -> tuple[str, float | None]:
    """Where the mask (variant, lam) starts (maskshare.masks.warm_start): ("continue", the previous
    lambda) with `masks.continue_sweep` for every lambda but the sweep's smallest; else
    ("attribution", None) with `masks.init: attribution` where the variant has IG scores;
    else ("cold", None). The plan orders the calls by it. A lambda the sweep added
    (maskshare.masks.sweep) says where it starts: `start`, the lambda it continues, or None (a
    chain head: attribution or cold as above)."""
    if start != GRID:
        if start is not None:
            return "continue", float(start)
    else:
        grid = sorted(cfg.masks.lambda_grid)
        i = grid.index(lam)
        if cfg.masks.continue_sweep and i > 0:
            return "continue", grid[i - 1]
    if (cfg.masks.init == "attribution" and "ig" in cfg.attribution.methods
            and variant in {v.name for v in attribution_variants(cfg)}):
        return "attribution", None
    return "cold", None


def starting_theta(run: Path, cfg, variant: Variant, lam: float, seed: int, prep, targets,
                   start: float | str | None = GRID):
    """(initial theta or None for a cold start, how it starts: `mask_start`'s kind)."""
    how, prev = mask_start(cfg, variant.name, lam, start)
    if how == "continue":
        path = RunLayout(run).masks(variant, prev, seed)
        if not (path / "masks.safetensors").is_file():
            raise RuntimeError(f"lambda {lam:g} continues from lambda {prev:g}, whose mask "
                               f"is not there ({path}): the plan trains it first")
        return continued_theta(TrainResult.load(path).theta), how
    if how == "attribution":
        scores = load_scores(run, variant, "ig")
        return attribution_start(scores, cfg.masks, lam, targets.scale,
                                 slot_weights(prep.batches, prep.mm.n_slots)), how
    return None, how


def build(run: Path, variant: Variant | str, lam: float, seed: int,
          start: float | str | None = GRID) -> Path:
    """Train the mask (variant, lam, seed) from where `mask_start` says (`start`: see
    there), and record its fit (`evaluation.sweep_fits.fit_metrics`) in summary.json for
    the sweep's refinement."""
    if isinstance(variant, str):
        variant = Variant.parse(variant)
    cfg = load_run_config(run)
    layout = RunLayout(run)
    out = layout.masks(variant, lam, seed)
    t0 = time.time()
    prep = prepare_variant(run, variant, "train", cfg.masks.max_train_prompts)
    targets = prep.targets(cfg.masks.objective, cfg.masks.scale)
    init, how = starting_theta(run, cfg, variant, lam, seed, prep, targets, start)
    mcfg = cfg.masks if init is None else warm_config(cfg.masks)
    ckpt = layout.checkpoint(variant, lam, seed)
    res = train_masks(prep.mm, prep.batches, mcfg, lam, seed=seed, targets=targets,
                      init_theta=init, checkpoint_dir=ckpt,
                      monitor=validation_monitor(run, cfg, variant))
    fit = fit_metrics(run, cfg, variant, res.masks())
    with building(out) as tmp:
        res.save(tmp, extra={"variant": variant.name, "ablation": variant.ablation.value,
                             "error": cfg.masks.error.value, "init": how, "fit": fit})
        write_manifest(tmp, config=cfg.masks.model_dump(mode="json"), seed=seed,
                       timings={"train_s": time.time() - t0},
                       extra={"variant": variant.name, "lambda": lam, "init": how,
                              "steps_run": len(res.history), "steps_max": mcfg.steps})
    shutil.rmtree(ckpt, ignore_errors=True)
    return out


