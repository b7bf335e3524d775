"""Node attribution over (slot, SAE, latent) triples, with the run's ablation as reference.

The masked pass (masking.py) interpolates every latent between its ablation value and its
clean value, a'(m) = abl + m (a - abl). Its derivative in the mask, summed over the tokens
of slot s,

    d ld / d m[s, h, i] = sum_{t in slot s} (d ld / d a'[t, h, i]) * (a[t, h, i] - abl[t, h, i])

is gradient x (a - a_ablated). At m = 1 (the SAE model M) it is **attribution patching**
(one backward pass). Averaged over the straight path m = alpha * 1 with alpha_k = k / N,
k = 1..N, it is **integrated gradients** with N steps (a right Riemann sum, so N = 1 is
attribution patching exactly; Sparse Feature Circuits uses N = 10). IG's completeness: the
scores of all triples sum to ld(M) - ld(empty) up to the Riemann error. Scores are averaged
over prompts (the gradient of the mean ld), so a score estimates how much the mean logit
difference falls when that one triple is ablated. BOS (slot 0) and padding are never
spliced, so their scores are 0.

A circuit of any size is the top triples by |score| (slot 0 excluded); `circuit_at_size`
picks the size that matches a target `latents_per_token`, the size the evaluation reports.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from maskshare.masks.masking import MaskedModel, Masks, PreparedBatch
from maskshare.run.layout import RunLayout

if TYPE_CHECKING:
    from maskshare.run.variants import Variant


class AttributionMethod(StrEnum):
    ATP = "attribution-patching"
    IG = "integrated-gradients"


SHORT_NAMES = {"atp": AttributionMethod.ATP, "ig": AttributionMethod.IG}


def method_of(name: AttributionMethod | str) -> AttributionMethod:
    """A method from its name or its config short name (`atp`, `ig`)."""
    return SHORT_NAMES.get(name) or AttributionMethod(name)


def _alphas(method: AttributionMethod, steps: int) -> list[float]:
    return [1.0] if method == AttributionMethod.ATP else [k / steps for k in range(1, steps + 1)]


def attribution_scores(mm: MaskedModel, batches: list[PreparedBatch],
                       method: AttributionMethod | str = AttributionMethod.IG,
                       steps: int = 10) -> Masks:
    """{hook: [n_slots, d_sae]} mean over prompts of d ld / d m, along the method's path."""
    method = method_of(method)
    return attribution_by_method(mm, batches, [method], steps)[method]


def attribution_by_method(mm: MaskedModel, batches: list[PreparedBatch],
                          methods: list[AttributionMethod | str],
                          steps: int = 10) -> dict[AttributionMethod, Masks]:
    """Scores of several methods from one set of backward passes: integrated gradients'
    last point (alpha = 1) is attribution patching, so both cost IG's `steps` passes."""
    methods = [method_of(m) for m in methods]
    if steps < 1:
        raise ValueError("integrated gradients need at least one step")
    if sum(len(b) for b in batches) == 0:
        raise ValueError("no prompts to attribute on")
    alphas = sorted({a for m in methods for a in _alphas(m, steps)})
    grads = _gradient_sums(mm, batches, alphas)
    n = sum(len(b) for b in batches)
    out = {}
    for m in methods:
        path = _alphas(m, steps)
        total = {h: torch.zeros(mm.n_slots, s.cfg.d_sae) for h, s in mm.saes.items()}
        for a in path:
            for h in total:
                total[h] += grads[a][h]
        scale = 1.0 / (n * len(path))
        out[m] = {h: t * scale for h, t in total.items()}
    return out


def _gradient_sums(mm: MaskedModel, batches: list[PreparedBatch],
                   alphas: list[float]) -> dict[float, Masks]:
    """{alpha: {hook: sum over prompts of d ld / d m at m = alpha}}; model and SAE weights
    are frozen meanwhile (and restored)."""
    sums = {}
    frozen = [p for m in (mm.model, *mm.saes.values()) for p in m.parameters()]
    was = [p.requires_grad for p in frozen]
    try:
        for p in frozen:
            p.requires_grad_(False)
        for alpha in alphas:
            total = {h: torch.zeros(mm.n_slots, s.cfg.d_sae) for h, s in mm.saes.items()}
            for b in batches:
                masks = {h: torch.full_like(t, alpha, requires_grad=True)
                         for h, t in total.items()}
                ld = mm.logit_diff(b, masks)
                grads = torch.autograd.grad(ld.sum(), list(masks.values()), allow_unused=True)
                for h, g in zip(masks, grads, strict=True):
                    if g is not None:
                        total[h] += g.detach()
            sums[alpha] = total
    finally:
        for p, w in zip(frozen, was, strict=True):
            p.requires_grad_(w)
    return sums


def _ranked(scores: Masks) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Every non-BOS triple as (hook index, slot, latent), sorted by |score| descending
    (ties by position, so the order is deterministic)."""
    hooks = list(scores)
    flat = torch.stack([scores[h][1:] for h in hooks]).abs().numpy()  # [H, S-1, D]
    order = np.argsort(-flat.ravel(), kind="stable")
    hi, si, li = np.unravel_index(order, flat.shape)
    return hooks, hi, si + 1, li


def top_circuit(scores: Masks, k: int) -> Masks:
    """Binary masks keeping the `k` triples of largest |score| (BOS is always kept)."""
    hooks, hi, si, li = _ranked(scores)
    out = {h: torch.zeros_like(scores[h]) for h in hooks}
    for h in hooks:
        out[h][0] = 1.0  # BOS is never ablated: keeping it costs nothing and changes nothing
    for j in range(min(k, len(hi))):
        out[hooks[hi[j]]][si[j], li[j]] = 1.0
    return out


def slot_token_share(slots: list[np.ndarray], n_slots: int) -> np.ndarray:
    """Share of the non-BOS, non-padding tokens in each slot ([n_slots], slot 0 gets 0)."""
    counts = np.zeros(n_slots)
    for s in slots:
        s = np.asarray(s)[1:]
        counts += np.bincount(s[s >= 0], minlength=n_slots)[:n_slots]
    return counts / max(counts.sum(), 1)


def circuit_at_size(scores: Masks, slots: list[np.ndarray], latents_per_token: float) -> Masks:
    """The top-|score| circuit whose latents per token (over `slots`' tokens) is closest to
    the target: adding a triple of slot s adds that slot's token share to the size."""
    hooks, hi, si, li = _ranked(scores)
    share = slot_token_share(slots, next(iter(scores.values())).shape[0])
    size = np.concatenate([[0.0], np.cumsum(share[si])])
    k = int(np.argmin(np.abs(size - latents_per_token)))
    return top_circuit(scores, k)


def load_scores(run: str | Path, variant: Variant | str, method: str):
    """The per-triple scores {hook: tensor[n_slots, d_sae]} (float) the stage wrote for
    `method` (`atp`/`ig`, or the method's full name), hooks shallowest first."""
    from safetensors import safe_open


    short = {v: k for k, v in SHORT_NAMES.items()}[method_of(method)]
    path = RunLayout(run).attribution_scores(variant, short)
    if not path.is_file():
        raise FileNotFoundError(f"no {short} attribution scores for {variant}: {path} "
                                "(is it in the config's attribution.methods?)")
    with safe_open(str(path), framework="pt") as f:
        hooks = [h for h in (f.metadata() or {}).get("hooks", "").split(",") if h]
        return {h: f.get_tensor(h) for h in hooks}
