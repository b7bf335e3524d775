"""Where a mask's training starts: cold, from attribution scores, or from a denser mask.

Cold (`masks.init: cold`): theta = `init_logit` everywhere (every latent half-open), then
`steps` steps of the annealed relaxation prune it.

From attribution (`masks.init: attribution`): the variant's integrated-gradients scores
(stage `attribution`) become initial logits by a benefit/cost rule read in the trained
objective's own units. With `scale: task` the objective is |ld(masked) - ld(M)| / S (S the
task scale, `mask_training.task_scale`) and keeping triple (s, h, i) costs lambda * w_s (w_s
the slot's share of the training tokens, `mask_training.slot_weights`). Its score estimates
how far the mean logit difference falls when that one triple is ablated, so

    r[s, h, i] = |score[s, h, i]| / (S * lambda * w_s)

is the triple's estimated benefit over its cost at this lambda: alone, it is worth keeping
where r > 1. The initial logit is

    theta0 = clip(log(r / open_ratio), -closed_logit, init_logit)

so a triple starts open (theta0 > 0) where r > open_ratio, as open as a cold start
(`init_logit`) from r >= open_ratio * e^init_logit; those far below start closed at -`closed_logit` (where a cold run's dropped
latents end: measured about -2 on the embedded model), with a log-linear ramp between.
`open_ratio` < 1 opens more than the triples that pay for themselves alone: measured on the
embedded model, opening only r >= 1 keeps too few (94 triples open where the cold run
keeps 150) and the training settles on a smaller, less faithful circuit; latents that
matter only together do not show in single-triple scores. Slot 0 (BOS, never ablated) and
slots without training tokens (w_s = 0) start at `init_logit`, as in a cold start. lambda =
0 opens everything (r infinite).

From a denser mask (`masks.continue_sweep`): the next lambda of the ascending sweep starts
from the previous lambda's final theta (its circuit open, the rest closed, the margins as
trained), so the sweep walks down one path of ever sparser circuits.

A warm-started or continued training runs `warm_steps` steps (at most `steps`; the whole
temperature anneal, compressed: `warm_config`) instead of `steps`: it starts near a circuit
and has less to search.
"""

from __future__ import annotations

import torch
from torch import Tensor

from maskshare.config import MaskConfig

CLOSED_LOGIT = 2.0  # -theta0 of a triple far below the threshold (cold runs end near -2)


def attribution_logits(scores: dict[str, Tensor], lam: float, scale: float,
                       weights: Tensor, *, open_ratio: float, init_logit: float,
                       closed_logit: float = CLOSED_LOGIT) -> dict[str, Tensor]:
    """Initial theta {hook: [n_slots, d_sae]} from per-triple attribution scores (see the
    module docstring): clip(log(r / open_ratio), -closed_logit, init_logit)."""
    if open_ratio <= 0 or scale <= 0:
        raise ValueError("open_ratio and scale must be positive")
    w = weights.double()[:, None]
    cost = scale * lam * w                                        # [n_slots, 1]
    out = {}
    for h, s in scores.items():
        s = s.double().abs()
        free = (cost <= 0).expand_as(s).clone()                   # lambda 0, BOS, unused slots
        free[0] = True
        ratio = s / cost.clamp(min=torch.finfo(torch.float64).tiny)
        theta = torch.log(ratio.clamp(min=1e-300) / open_ratio).clamp(-closed_logit,
                                                                       init_logit)
        theta[free] = init_logit
        out[h] = theta.float()
    return out


def attribution_start(scores: dict[str, Tensor], cfg: MaskConfig, lam: float, scale: float,
                      weights: Tensor) -> dict[str, Tensor]:
    """`attribution_logits` with the training's own settings (`init_open_ratio`,
    `init_logit`): the start of a mask trained under `cfg` at `lam` from `scores`, with the
    task scale and slot weights (`mask_training.slot_weights`) of its training prompts."""
    return attribution_logits(scores, lam, scale, weights, open_ratio=cfg.init_open_ratio,
                              init_logit=cfg.init_logit)


def open_triples(theta: dict[str, Tensor]) -> int:
    """Triples starting open (theta > 0), BOS excluded."""
    return int(sum((t[1:] > 0).sum() for t in theta.values()))


def warm_config(cfg: MaskConfig) -> MaskConfig:
    """The settings of a warm-started or continued training: `warm_steps` steps (at most
    `steps`; the anneal compressed into them), everything else as `cfg`."""
    steps = cfg.steps if cfg.warm_steps is None else min(cfg.warm_steps, cfg.steps)
    return cfg.model_copy(update={"steps": steps})


def continued_theta(previous: dict[str, Tensor]) -> dict[str, Tensor]:
    """The next lambda's starting theta: the denser mask's final theta, copied."""
    return {h: t.detach().clone().float() for h, t in previous.items()}

