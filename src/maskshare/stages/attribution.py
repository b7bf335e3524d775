"""Stage `attribution`: node attribution scores of one variant over its (slot, SAE, latent)
triples, with the variant's ablation as the reference (`maskshare.masks.attribution`), on the
training split's prepared batches (the prompts its masks train on):
RUN/attribution/<variant>/<method>.safetensors for each of `attribution.methods` (`atp`:
attribution patching, `ig`: integrated gradients with `attribution.ig_steps` steps).

Readers use `load_scores(run, variant, method) -> Masks` ({hook: [n_slots, d_sae]}, the
type masks use): the evaluation (circuits of the top triples at the mask sweep's sizes)
and the warm start of mask training.
"""

from __future__ import annotations

import time
from pathlib import Path

from maskshare.artifacts import building, save_tensors, write_manifest
from maskshare.config import RunConfig
from maskshare.evaluation.comparison import TopTriples
from maskshare.evaluation.metrics import size_metrics
from maskshare.evaluation.sweep_fits import sweep_lambdas
from maskshare.masks.attribution import (
    attribution_by_method,
    circuit_at_size,
    load_scores,
    method_of,
)
from maskshare.masks.variant import load_masks, prepare_variant, split_slots
from maskshare.run.layout import RunLayout
from maskshare.run.resources import load_run_config
from maskshare.run.variants import Variant, attribution_variants


def attribution_methods(cfg: RunConfig) -> list[TopTriples]:
    """The attribution circuits a run compares: each scored variant x each method."""
    return [TopTriples(v, m) for v in attribution_variants(cfg) for m in cfg.attribution.methods]


def build(run: Path, variant: Variant | str) -> Path:
    variant = Variant.parse(variant) if isinstance(variant, str) else variant
    cfg = load_run_config(run)
    layout = RunLayout(run)
    out = layout.attribution(variant)
    t0 = time.time()
    prep = prepare_variant(run, variant, "train", cfg.masks.max_train_prompts)
    methods = cfg.attribution.methods
    scores = attribution_by_method(prep.mm, prep.batches, [method_of(m) for m in methods],
                                   cfg.attribution.ig_steps)
    with building(out) as tmp:
        for m in methods:
            s = scores[method_of(m)]
            save_tensors(s, tmp / layout.attribution_scores(variant, m).name,
                         metadata={"hooks": ",".join(s), "method": method_of(m).value,
                                   "steps": str(cfg.attribution.ig_steps if m == "ig" else 1),
                                   "variant": variant.name})
        write_manifest(tmp, config=cfg.attribution.model_dump(mode="json"),
                       inputs={"stats": str(layout.stats(variant.grouping))},
                       timings={"attribution_s": time.time() - t0},
                       extra={"variant": variant.name, "n_prompts": prep.items.height,
                              "ablation": variant.ablation.value,
                              "error": cfg.masks.error.value})
    return out


BRACKET = (0.5, 2.0)  # extra circuits at these multiples of the sweep's sparsest / densest size


def matched_circuits(run: str | Path, method: TopTriples, seed: int) -> list[tuple]:
    """[(lambda, binary masks)]: the top triples by `method`'s scores at the latents per
    token of the variant's learned mask at each (lambda, `seed`) of the sweep, both measured
    on the training prompts the scores were computed on (the closest size the ranking
    allows: `attribution.circuit_at_size`); then (None, masks) at half the sparsest and
    twice the densest of those sizes. A mask keeps different slots than the ranking does,
    so on a held-out split the two sizes differ; the extra points let each attribution
    curve be read at the masks' sizes there (`f_at_size` never extrapolates)."""
    cfg = load_run_config(run)
    slots = split_slots(run, method.variant, "train", cfg.masks.max_train_prompts)  # no pass
    scores = load_scores(run, method.variant, method.finder)

    def size(m) -> float:
        return size_metrics(m, slots)["latents_per_token"]



    out = []
    for lam in sweep_lambdas(run, cfg, method.variant.name, seed):
        out.append((lam, circuit_at_size(scores, slots, size(load_masks(run, method.variant,
                                                                         lam, seed)))))
    sizes = [size(m) for _, m in out]
    for target in (min(sizes) * BRACKET[0], max(sizes) * BRACKET[1]):
        m = circuit_at_size(scores, slots, target)
        if all(abs(size(m) - s) > 1e-9 for s in sizes):
            out.append((None, m))
            sizes.append(size(m))
    return out
