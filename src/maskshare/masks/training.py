"""Learning masks over (slot, SAE, latent) triples, and sweeps over the sparsity coefficient.

Parameters: theta[hook] of shape [n_slots, d_sae], initialised to `init_logit`.

Relaxations
- `sigmoid` (the original method): m = sigmoid(theta * T), T annealed geometrically from
  `temperature_start` to `temperature_end` over the run (T_t = T0 * (T1/T0)^(t/(steps-1))),
  so the mask hardens towards the binary one used at evaluation (theta > 0).
- `hard-concrete` (Louizos et al. 2018; beta = 2/3, gamma = -0.1, zeta = 1.1), log-alpha =
  theta: a stretched, clamped concrete sample during training; its deterministic gate is
  > 0.5 exactly when theta > 0, so it binarises the same way. No temperature annealing.

Penalty: lambda * (relaxed latents per token) = lambda * sum_s w_s * sum_{hook, latent} m[s],
where w_s is the share of the training set's non-BOS tokens that sit in slot s (BOS is never
ablated, so it costs nothing). This is the relaxed form of `latents_per_token`, the size the
evaluation reports. With `scale: none` lambda reads as "logit units per latent kept per
token"; with `scale: task` (the default) the objective is first divided by the empty
circuit's objective (`task_scale`), so lambda reads as "share of the task's effect per latent
kept per token" and one sweep (`lambdas: auto`) serves every task. For
hard-concrete, m is the gate's probability of being non-zero.

Objectives (mean over the prompts of the step's batch)
- `logit-diff`: |ld(masked) - ld(M)| per prompt, then averaged (not the difference of the
  batch means: each prompt must be matched);
- `kl`: KL(p_M || p_masked) at the final (answer) position;
- `ce`: cross-entropy of the answer token at the final position.

Reproducibility: the batch of step t is drawn from a permutation seeded by (seed, epoch),
hard-concrete noise by (seed, t), so a run depends only on its seed and inputs. A
checkpoint (theta, Adam state, history; safetensors written atomically) every
`checkpoint_every` steps lets an interrupted run resume and end with the masks an
uninterrupted run would have (what is saved, and how: `maskshare.masks.checkpoints`). A
non-finite loss or gradient stops training with an error naming the step and, where found,
the hook and slot.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from maskshare.config import MaskConfig, Objective, Relaxation
from maskshare.masks.checkpoints import (
    CHECKPOINT,
    TrainResult,
    load_checkpoint,
    run_key,
    save_checkpoint,
)
from maskshare.masks.masking import MaskedModel, Masks, empty_masks, full_masks
from maskshare.masks.prepared import PreparedBatch
from maskshare.masks.stopping import EarlyStop, ValidationStop
from maskshare.masks.warm_start import attribution_start, continued_theta, warm_config
from maskshare.model.activations import logit_diff

logger = logging.getLogger(__name__)

HC_BETA, HC_GAMMA, HC_ZETA = 2.0 / 3.0, -0.1, 1.1


class MaskTrainingError(RuntimeError):
    """Training diverged (non-finite loss or gradient); the message names step/hook/slot."""


@dataclass
class Targets:
    """What the masked model is trained to match, per batch (from M, computed once)."""

    ld: list[Tensor]                       # [B] ld(M) per batch
    logprobs: list[Tensor] | None = None   # [B, d_vocab] log p_M at the final position (kl)
    scale: float = 1.0                     # the objective is divided by this (MaskConfig.scale)


@torch.no_grad()
def compute_targets(mm: MaskedModel, batches: list[PreparedBatch],
                    objective: Objective | str = Objective.LOGIT_DIFF,
                    scale: str = "none") -> Targets:
    """ld(M) (and log p_M for `kl`) per batch: the full-mask pass, once for all lambdas.

    `scale="task"`: also the empty circuit's objective (every latent ablated), averaged over
    the prompts, minus M's own: the loss of removing everything. Dividing the objective by it
    makes lambda a share of the task's effect per latent kept per token, the same on a task
    whose logit differences are ~3 as on one where they are ~9."""
    objective = Objective(objective)
    full = full_masks(mm.saes, mm.n_slots)
    lds, lps = [], []
    for b in batches:
        if objective == Objective.KL:
            logits = mm.final_logits(b, full)
            lds.append(logit_diff(logits, b.answer, b.counterfactual))
            lps.append(F.log_softmax(logits, -1))
        else:  # ld as the logit-diff objective computes it: two tokens' logits only
            lds.append(mm.logit_diff(b, full))
    targets = Targets(ld=lds, logprobs=lps if lps else None)
    if scale == "task":
        targets.scale = task_scale(mm, batches, targets, objective)
    return targets


@torch.no_grad()
def task_scale(mm: MaskedModel, batches: list[PreparedBatch], targets: Targets,
               objective: Objective) -> float:
    """Prompt-weighted mean objective of the empty circuit minus that of M (> 0)."""
    empty, full = empty_masks(mm.saes, mm.n_slots), full_masks(mm.saes, mm.n_slots)
    n, gap = 0, 0.0
    for bi, b in enumerate(batches):
        e = objective_loss(mm, b, empty, targets, bi, objective).item()
        m = 0.0 if objective != Objective.CE else objective_loss(mm, b, full, targets, bi,
                                                                 objective).item()
        gap += (e - m) * len(b)
        n += len(b)
    gap /= max(n, 1)
    if not math.isfinite(gap):
        where = next((w for b in batches if (w := mm.locate_nonfinite(b, empty))), None)
        raise MaskTrainingError(
            "non-finite objective of the empty circuit before step 0 (task scale)"
            + (f": first at {where}" if where else "")
            + "; check the slot statistics and SAE weights there")
    if gap <= 1e-6:  # ablating everything changes nothing: no scale to read, raw units
        logger.warning("the empty circuit scores like the full model on these prompts "
                       "(objective gap %.3g): the objective is left in raw units", gap)
        return 1.0
    return gap


def slot_weights(batches: list[PreparedBatch], n_slots: int) -> Tensor:
    """Share of non-BOS, non-padding training tokens per slot ([n_slots], sums to 1)."""
    w = torch.zeros(n_slots, dtype=torch.float64)
    for b in batches:
        s = b.slots[:, 1:]
        s = s[s >= 0]
        w.index_add_(0, s, torch.ones_like(s, dtype=torch.float64))
    return (w / w.sum().clamp(min=1)).float()


def temperature(cfg: MaskConfig, step: int) -> float:
    if cfg.steps <= 1:
        return float(cfg.temperature_end)
    f = step / (cfg.steps - 1)
    t0, t1 = cfg.temperature_start, cfg.temperature_end
    if t0 > 0 and t1 > 0:
        return float(t0 * (t1 / t0) ** f)
    return float(t0 + (t1 - t0) * f)


def relaxed_masks(theta: dict[str, Tensor], cfg: MaskConfig, step: int, seed: int,
                  train: bool = True) -> tuple[Masks, Masks]:
    """(mask used in the forward pass, per-latent penalty weight), both [n_slots, d_sae]."""
    if cfg.relaxation == Relaxation.SIGMOID:
        T = temperature(cfg, step)
        m = {h: torch.sigmoid(t * T) for h, t in theta.items()}
        return m, m
    g = torch.Generator().manual_seed(seed * 1_000_003 + step + 1)
    masks, probs = {}, {}
    for h, t in theta.items():
        if train:
            u = torch.rand(t.shape, generator=g).clamp(1e-6, 1 - 1e-6)
            s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + t) / HC_BETA)
        else:
            s = torch.sigmoid(t)
        masks[h] = (s * (HC_ZETA - HC_GAMMA) + HC_GAMMA).clamp(0.0, 1.0)
        probs[h] = torch.sigmoid(t - HC_BETA * math.log(-HC_GAMMA / HC_ZETA))
    return masks, probs


def objective_loss(mm: MaskedModel, batch: PreparedBatch, masks: Masks, targets: Targets,
                   bi: int, objective: Objective) -> Tensor:
    if objective == Objective.LOGIT_DIFF:  # no [B, d_vocab] logits needed
        return (mm.logit_diff(batch, masks) - targets.ld[bi]).abs().mean()
    logits = mm.final_logits(batch, masks)
    r = torch.arange(len(batch))
    lp = F.log_softmax(logits, -1)
    if objective == Objective.KL:
        ref = targets.logprobs[bi]
        return (ref.exp() * (ref - lp)).sum(-1).mean()
    return -lp[r, batch.answer].mean()


def _batch_for_step(n_batches: int, step: int, seed: int) -> int:
    epoch, k = divmod(step, n_batches)
    return int(np.random.default_rng([seed, epoch]).permutation(n_batches)[k])


class FrozenWeights:
    """Context: the modules' weights need no gradients (while masks train); restores each
    parameter's `requires_grad` on exit."""

    def __init__(self, *modules):
        self.params = [p for m in modules for p in m.parameters()]

    def __enter__(self):
        self.was = [p.requires_grad for p in self.params]
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc):
        for p, w in zip(self.params, self.was, strict=True):
            p.requires_grad_(w)


def _initial_theta(mm: MaskedModel, cfg: MaskConfig,
                   init_theta: dict[str, Tensor] | None) -> dict[str, Tensor]:
    """The trained parameters: `init_theta` (warm start) or `cfg.init_logit` everywhere."""
    theta = {h: (init_theta[h].detach().clone() if init_theta is not None else
                 torch.full((mm.n_slots, s.cfg.d_sae), float(cfg.init_logit)))
             for h, s in mm.saes.items()}
    for t in theta.values():
        t.requires_grad_(True)
    return theta


def _resume(ckpt: Path | None, theta: dict[str, Tensor], opt: torch.optim.Adam, key: str,
            lam: float) -> tuple[int, list[dict]]:
    """(first step to run, history so far): from the run's checkpoint when there is one."""
    loaded = load_checkpoint(ckpt, theta, opt, key) if ckpt is not None else None
    if loaded is None:
        return 0, []
    logger.info("resuming lambda=%g from step %d (%s)", lam, loaded[0], ckpt)
    return loaded


def _step_loss(mm: MaskedModel, batch: PreparedBatch, bi: int, theta: dict[str, Tensor],
               cfg: MaskConfig, targets: Targets, w: Tensor, lam: float, step: int,
               seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, objective, relaxed size) of one step; MaskTrainingError when not finite."""
    masks, probs = relaxed_masks(theta, cfg, step, seed)
    obj = objective_loss(mm, batch, masks, targets, bi, Objective(cfg.objective)) / targets.scale
    size = sum((w[:, None] * p).sum() for p in probs.values())
    loss = obj + lam * size
    if not torch.isfinite(loss):
        where = mm.locate_nonfinite(batch, {h: m.detach() for h, m in masks.items()})
        raise MaskTrainingError(
            f"non-finite loss ({loss.item()}) at step {step} (lambda {lam:g})"
            + (f": first at {where}" if where else "")
            + "; check the slot statistics and SAE weights there")
    return loss, obj, size


def _check_gradients(theta: dict[str, Tensor], step: int, lam: float) -> None:
    for h, t in theta.items():
        bad = ~torch.isfinite(t.grad)
        if bad.any():
            slots = sorted(set(bad.nonzero()[:, 0].tolist()))
            raise MaskTrainingError(f"non-finite gradient at step {step} (lambda "
                                    f"{lam:g}): hook {h}, slot(s) {slots}")


def train_masks(mm: MaskedModel, batches: list[PreparedBatch], cfg: MaskConfig, lam: float, *,
                seed: int = 0, targets: Targets | None = None,
                init_theta: dict[str, Tensor] | None = None,
                checkpoint_dir: str | Path | None = None, progress: bool = True,
                callback: Callable[[int, dict], None] | None = None,
                monitor: Callable[[dict], float | None] | None = None) -> TrainResult:
    """Train one mask at sparsity coefficient `lam`; resumes from `checkpoint_dir` if present.

    `callback(step, record)` runs after every step (tests use it to simulate a crash).
    With `cfg.early_stop_patience = K`, training ends once the binarised mask has not
    changed for K consecutive steps (and at least `cfg.early_stop_min_steps` steps ran).
    With `cfg.validation_stop.every` and a `monitor` (binary masks -> validation F), it also
    ends once that F stops improving (`masks.stopping.ValidationStop`).
    """
    from tqdm.auto import tqdm

    if not batches:
        raise ValueError("no training prompts")
    if targets is None:
        targets = compute_targets(mm, batches, Objective(cfg.objective), cfg.scale)
    w = slot_weights(batches, mm.n_slots)
    theta = _initial_theta(mm, cfg, init_theta)
    opt = torch.optim.Adam(list(theta.values()), lr=cfg.lr)
    key = run_key(cfg, lam, seed, mm, sum(len(b) for b in batches), init_theta)
    ckpt = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
    start, history = _resume(ckpt, theta, opt, key, lam)
    early = EarlyStop(cfg, theta, history)
    vstop = ValidationStop(cfg, monitor, history)
    bar = tqdm(range(start, start if early.done(start) or vstop.done() else cfg.steps),
               desc=f"masks lambda={lam:g}", disable=not progress, initial=start,
               total=cfg.steps, leave=False)
    # gradients reach theta only; enabled here whatever the caller's grad mode
    with FrozenWeights(mm.model, *mm.saes.values()), torch.enable_grad():
        for step in bar:
            bi = _batch_for_step(len(batches), step, seed)
            loss, obj, size = _step_loss(mm, batches[bi], bi, theta, cfg, targets, w, lam,
                                         step, seed)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            _check_gradients(theta, step, lam)
            opt.step()
            rec = {"step": step, "loss": loss.item(), "objective": obj.item(),
                   "size": size.item(), "temperature": temperature(cfg, step)
                   if cfg.relaxation == Relaxation.SIGMOID else None,
                   "kept": int(sum((t > 0).sum() for t in theta.values()))}
            stop = early.update(theta, rec, step)
            if vstop.update(theta, rec, step):
                stop = True
                logger.info("lambda=%g: validation F not improving (best %.3f), stopping at "
                            "step %d of %d", lam, vstop.best, step + 1, cfg.steps)
            history.append(rec)
            bar.set_postfix(obj=f"{rec['objective']:.3f}", size=f"{rec['size']:.1f}", refresh=False)
            if ckpt is not None and ((step + 1) % cfg.checkpoint_every == 0
                                     or step + 1 == cfg.steps or stop):
                save_checkpoint(ckpt, step + 1, theta, opt, history, key)
            if callback is not None:
                callback(step, rec)
            if stop:
                if not vstop.done():
                    logger.info("lambda=%g: mask unchanged for %d steps, stopping at step %d "
                                "of %d", lam, early.patience, step + 1, cfg.steps)
                break
    bar.close()
    return TrainResult(theta={h: t.detach().clone() for h, t in theta.items()}, lam=lam,
                       seed=seed, history=history, key=key)


def train_sweep(mm: MaskedModel, batches: list[PreparedBatch], cfg: MaskConfig, *,
                seed: int = 0, lambdas: list[float] | None = None, out_dir: str | Path | None = None,
                warm_start: bool = False, init_scores: dict[str, Tensor] | None = None,
                progress: bool = True) -> dict[float, TrainResult]:
    """One mask per lambda (ascending), started as the masks stage starts them
    (`maskshare.masks.warm_start`). Shared across lambdas: the prepared batches (cached residual
    below the first hook, first-hook latents) and M's targets. With `warm_start` (the
    stage's `continue_sweep`) each lambda after the first starts from the previous one's
    theta; without it, or for the first, `init_scores` (attribution scores) give the start
    (`attribution_logits`), else it is cold. A warm-started lambda trains `warm_config(cfg)`.
    With `out_dir`, each lambda checkpoints and saves into `out_dir/<lambda>/`; a finished
    lambda with the same run key is loaded, not retrained."""
    targets = compute_targets(mm, batches, cfg.objective, cfg.scale)
    out: dict[float, TrainResult] = {}
    prev, n_prompts = None, sum(len(b) for b in batches)
    for lam in sorted(cfg.lambda_grid if lambdas is None else lambdas):
        init = how = None
        if warm_start and prev is not None:
            init, how = continued_theta(prev), "continue"
        elif init_scores is not None:
            init = attribution_start(init_scores, cfg, lam, targets.scale,
                                     slot_weights(batches, mm.n_slots))
            how = "attribution"
        lcfg = cfg if init is None else warm_config(cfg)
        d = Path(out_dir) / f"{lam:g}" if out_dir is not None else None
        res = None
        if d is not None and (d / "summary.json").is_file() and (d / "masks.safetensors").is_file():
            res = TrainResult.load(d)
            if res.key != run_key(lcfg, lam, seed, mm, n_prompts, init):
                logger.warning("retraining lambda=%g: %s was trained with other settings", lam, d)
                res = None
        if res is None:
            res = train_masks(mm, batches, lcfg, lam, seed=seed, targets=targets,
                              init_theta=init, checkpoint_dir=d, progress=progress)
            if d is not None:
                res.save(d, extra={"ablation": str(mm.ablation), "error": str(mm.error),
                                   "relaxation": str(cfg.relaxation),
                                   "objective": str(cfg.objective), "init": how or "cold"})
        out[lam] = res
        prev = res.theta
    return out
