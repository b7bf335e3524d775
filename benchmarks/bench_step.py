"""Sections of benchmarks/bench.py that time the model: collection (tokens/s of attention
features and SAE latents), the mask-training step against a plain forward+backward, and
how the step scales with prompts, length, SAEs and slots."""

from __future__ import annotations

import time

import numpy as np
import torch
from bench_common import (
    _to_device,
    default_error,
    from_end_slots,
    med,
    saved_for_backward_mb,
    sync,
    timed,
)


# ----------------------------------------------------------------------------- collection
def bench_collection(model, saes: dict, tokens: list[list[int]], device: str = "cpu",
                     repeats: int = 2, batch_size: int = 32, feature_cfg=None) -> dict:
    """Tokens/s: attention features (every layer by default), every SAE's latents, and both in
    one pass; each stops after the deepest hook it needs. Returns the features too (`_features`)."""
    from maskshare.config import AttentionFeatures
    from maskshare.grouping.features import attention_features, selected_layers
    from maskshare.model.activations import padded_batches, stop_layer

    cfg = feature_cfg or AttentionFeatures()
    n_tok = sum(len(t) for t in tokens)
    stop = stop_layer(list(saes))
    kept: list = []

    def encode_hook(h):
        def fn(act, hook):
            kept.append(saes[h].encode(act))
        return fn

    enc = [(h, encode_hook(h)) for h in saes]
    feats = []

    def features_only():
        feats[:] = [attention_features(model, tokens, cfg, batch_size=batch_size)]

    def latents_only():
        with torch.inference_mode():
            for b in padded_batches(tokens, batch_size, device=device):
                model.run_with_hooks(b.tokens, attention_mask=b.attention_mask,
                                     stop_at_layer=stop, fwd_hooks=enc)
        kept.clear()

    def both():
        with torch.inference_mode(), model.hooks(fwd_hooks=enc):
            attention_features(model, tokens, cfg, batch_size=batch_size)
        kept.clear()

    runs = {"features": features_only, "latents": latents_only, "features_and_latents": both}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(repeats):
        order = list(runs) if r % 2 == 0 else list(runs)[::-1]
        for k in order:
            times[k].append(timed(runs[k], device)[0])
    out = {"n_prompts": len(tokens), "n_tokens": n_tok, "repeats": repeats,
           "features_deepest_layer": max(selected_layers(model, cfg)),
           "latents_stop_at_layer": stop, "n_saes": len(saes),
           "d_sae": [s.cfg.d_sae for s in saes.values()]}
    for k, ts in times.items():
        out[f"{k}_s"] = round(med(ts), 3)
        out[f"{k}_tokens_per_s"] = round(n_tok / med(ts), 1)
    out["_features"] = feats[0]
    return out


# ----------------------------------------------------------------------------- mask step
def _plain_fwd_bwd(model, mm, batch) -> None:
    """The floor: the same layers (start_layer .. last) forward + backward on the same batch,
    same length groups, the two tokens' logits at the final positions (as the masked step),
    no SAEs and no masks."""
    from maskshare.masks.prepared import sub_batch
    from maskshare.model.activations import at_final, final_logit_diff, length_parts

    parts = length_parts(batch.lengths.tolist(), mm.max_parts, mm.min_saving,
                         mm.min_split_tokens) \
        if mm.split_by_length else [(0, len(batch))]
    outs = []
    for a, b in parts:
        sb = batch if len(parts) == 1 else sub_batch(batch, a, b)
        x = sb.resid.detach().requires_grad_(True)
        res = model(x, start_at_layer=mm.start_layer, stop_at_layer=model.cfg.n_layers,
                    attention_mask=sb.attention_mask)
        outs.append(at_final(res, sb.lengths))
    ld = final_logit_diff(model, torch.cat(outs), batch.answer, batch.counterfactual)
    ld.abs().mean().backward()


class _StepRunner:
    """One mask-training step as train_masks runs it (relaxed masks -> objective + penalty ->
    backward -> Adam), on one prepared batch, with its own theta and optimiser."""

    def __init__(self, mm, batch, device: str, lam: float = 0.01):
        from maskshare.config import MaskConfig
        from maskshare.masks.training import compute_targets, slot_weights

        self.mm, self.batch, self.lam = mm, batch, lam
        self.cfg = MaskConfig(steps=150)
        self.targets = compute_targets(mm, [batch])
        self.w = slot_weights([batch], mm.n_slots).to(device)
        self.theta = {h: torch.full((mm.n_slots, s.cfg.d_sae), float(self.cfg.init_logit),
                                    device=device, requires_grad=True)
                      for h, s in mm.saes.items()}
        self.opt = torch.optim.Adam(list(self.theta.values()), lr=self.cfg.lr)
        self.t = 0

    def __call__(self) -> None:
        from maskshare.config import Objective
        from maskshare.masks.training import objective_loss, relaxed_masks

        masks, probs = relaxed_masks(self.theta, self.cfg, self.t, 0)
        obj = objective_loss(self.mm, self.batch, masks, self.targets, 0, Objective.LOGIT_DIFF)
        size = sum((self.w[:, None] * p).sum() for p in probs.values())
        loss = obj + self.lam * size
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.t += 1


def _frozen(model, saes):
    from maskshare.masks.training import FrozenWeights

    return FrozenWeights(model, *saes.values())


def bench_mask_step(model, saes: dict, tokens, answers, counterfactuals, n_slots: int = 12,
                    device: str = "cpu", repeats: int = 5, stats=None,
                    error: str | None = None) -> dict:
    """Interleaved: masked step (reuse below the first hook, the default), plain fwd+bwd of the
    same layers, masked step from the embeddings every step (no reuse), and the masked step as
    first written (mask expanded per token by a gather, error `clean` with two decodes). One
    batch of all `tokens`. `stats` (SlotStats) is computed on the CPU unless given. `error`:
    the SAE error term, by default the default config's."""
    from maskshare.masks.masking import MaskedModel
    from maskshare.masks.slot_stats import compute_slot_stats

    slots = from_end_slots(tokens, n_slots)
    if stats is None:
        stats = compute_slot_stats(model, saes, tokens, slots, n_slots, batch_size=len(tokens))
    if device != "cpu":
        model.to(device)
        for s in saes.values():
            s.to(device)
    B = len(tokens)
    error = default_error() if error is None else error
    mm = MaskedModel(model, saes, stats, n_slots, error=error)
    mm0 = mm.with_options(reuse_prefix=False)  # every step from the embeddings
    mm_v1 = mm.with_options(expand="gather", fuse_clean=False)  # the first version
    prep_s = {}
    batches = {}
    for name, m in (("reuse", mm), ("full", mm0)):
        t0 = time.perf_counter()
        batches[name] = m.prepare(tokens, slots, answers, counterfactuals, batch_size=B)
        _to_device(m, batches[name], device)
        sync(device)
        prep_s[name] = time.perf_counter() - t0
    b, b0 = batches["reuse"][0], batches["full"][0]
    with _frozen(model, saes):
        runs = {"masked_step": _StepRunner(mm, b, device),
                "plain_fwd_bwd": lambda: _plain_fwd_bwd(model, mm, b),
                "masked_step_no_reuse": _StepRunner(mm0, b0, device),
                "masked_step_gather_2dec": _StepRunner(mm_v1, b, device)}
        wall, cpu = _time_interleaved(runs, repeats, device)
        mem = {k: round(saved_for_backward_mb(runs[k], [model, *saes.values()]), 1)
               for k in runs}
        cuda_peak = {}
        if device.startswith("cuda"):
            for k in runs:
                torch.cuda.reset_peak_memory_stats()
                runs[k]()
                sync(device)
                cuda_peak[k] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    out = {"n_prompts": B, "n_tokens": sum(map(len, tokens)),
           "padded_tokens": int(b.tokens.numel()), "n_slots": n_slots, "n_saes": len(saes),
           "error": error,
           "start_layer": mm.start_layer, "n_layers": model.cfg.n_layers, "repeats": repeats,
           "prepare_s": {k: round(v, 3) for k, v in prep_s.items()}}
    for k in runs:
        out[f"{k}_s"] = round(med(wall[k]), 4)
        out[f"{k}_cpu_s"] = round(med(cpu[k]), 4)
        out[f"{k}_all_s"] = [round(x, 4) for x in wall[k]]
    out.update(_step_ratios(wall, cpu))
    out.update({
        "reuse_ideal_gain": round(model.cfg.n_layers / (model.cfg.n_layers - mm.start_layer), 3),
        "saved_for_backward_mb": mem})
    if cuda_peak:
        out["cuda_max_memory_allocated_mb"] = cuda_peak
    return out


def _time_interleaved(runs: dict, repeats: int, device: str):
    """(wall, cpu) seconds per run name: one warm-up each, then `repeats` rounds in a rotated
    order (to spread load drift over every run)."""
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for k in runs:  # warm-up, not recorded
        runs[k]()
    for r in range(repeats):
        k0 = r % len(runs)
        for k in list(runs)[k0:] + list(runs)[:k0]:
            w, c = timed(runs[k], device)
            wall[k].append(w)
            cpu[k].append(c)
    return wall, cpu


def _step_ratios(wall: dict[str, list[float]], cpu: dict[str, list[float]]) -> dict:
    """Medians of the per-repeat ratios between the step variants (interleaved repeats)."""

    def ratio(times, a, b):
        return round(med([x / y for x, y in zip(times[a], times[b], strict=True)]), 3)

    return {
        "ratio_masked_to_plain": ratio(wall, "masked_step", "plain_fwd_bwd"),
        "ratio_masked_to_plain_cpu": ratio(cpu, "masked_step", "plain_fwd_bwd"),
        "reuse_gain_full_over_reuse": ratio(wall, "masked_step_no_reuse", "masked_step"),
        "reuse_gain_full_over_reuse_cpu": ratio(cpu, "masked_step_no_reuse", "masked_step"),
        "ratio_gather_2dec_to_masked": ratio(wall, "masked_step_gather_2dec", "masked_step"),
        "ratio_gather_2dec_to_plain": ratio(wall, "masked_step_gather_2dec", "plain_fwd_bwd"),
    }


# ----------------------------------------------------------------------------- scaling
def _stretch(tokens: list[list[int]], length: int) -> list[list[int]]:
    """Each prompt brought to exactly `length` tokens: BOS + its tokens repeated / cut."""
    out = []
    for t in tokens:
        body = t[1:] * (length // max(1, len(t) - 1) + 1)
        out.append([t[0]] + body[:length - 1])
    return out


def bench_scaling(model, saes: dict, tokens, answers, counterfactuals, *,
                  prompts=(8, 16, 32), lengths=(12, 24, 48), sae_counts=(1, 2, 4),
                  slot_counts=(4, 12, 48), base=(16, None, 4, 12), device: str = "cpu",
                  repeats: int = 2) -> list[dict]:
    """Masked-step time (median of `repeats` after a warm-up) and memory kept for backward,
    varying one of (prompts, prompt length, SAEs, slots) at a time around `base`
    (prompts, length or None for the real lengths, SAEs, slots). SAE subsets keep the
    shallowest hook, so the layers run stay the same."""
    from maskshare.masks.masking import MaskedModel
    from maskshare.masks.slot_stats import compute_slot_stats

    hooks = list(saes)
    bp, bl, bs, bk = base

    def subset(k):
        if k >= len(hooks):
            return hooks
        idx = np.unique(np.linspace(0, len(hooks) - 1, k).round().astype(int))
        return [hooks[i] for i in idx]

    points = [("prompts", n, (n, bl, bs, bk)) for n in prompts]
    points += [("length", n, (bp, n, bs, bk)) for n in lengths]
    points += [("saes", n, (bp, bl, n, bk)) for n in sae_counts]
    points += [("slots", n, (bp, bl, bs, n)) for n in slot_counts]
    rows = []
    error = default_error()
    for what, value, (np_, ln, ns, nk) in points:
        toks = tokens[:np_]
        if ln is not None:
            toks = _stretch(toks, ln)
        sub = {h: saes[h] for h in subset(ns)}
        slots = from_end_slots(toks, nk)
        if device != "cpu":
            model.to("cpu")
            for s in saes.values():
                s.to("cpu")
        stats = compute_slot_stats(model, sub, toks, slots, nk, batch_size=len(toks))
        if device != "cpu":
            model.to(device)
            for s in saes.values():
                s.to(device)
        mm = MaskedModel(model, sub, stats, nk, error=error)
        batch = mm.prepare(toks, slots, answers[:np_], counterfactuals[:np_],
                           batch_size=len(toks))
        _to_device(mm, batch, device)
        with _frozen(model, sub):
            step = _StepRunner(mm, batch[0], device)
            step()
            ts = [timed(step, device)[0] for _ in range(repeats)]
            mem = saved_for_backward_mb(step, [model, *sub.values()])
        rows.append({"vary": what, "value": value, "n_prompts": len(toks),
                     "tokens": sum(map(len, toks)), "padded_tokens": int(batch[0].tokens.numel()),
                     "n_saes": len(sub), "n_slots": nk, "step_s": round(med(ts), 4),
                     "saved_for_backward_mb": round(mem, 1)})
    return rows


SCALING_NOTE = (
    "step time ~ t0 + a*B*P*(layers after the first hook)*(d_model^2 + d_model*d_mlp) "
    "+ b*B*P^2*layers (attention) + c*B*P*n_saes*d_sae*d_model (SAE encode/decode) "
    "+ d*B*P*n_saes*n_slots*d_sae (per-token masks: one-hot [B,P,n_slots] @ [n_slots,d_sae]) "
    "+ e*n_slots*n_saes*d_sae (mask parameters, Adam), with t0 a fixed per-step cost of "
    "0.3-0.8 s here (intercepts of the prompt and length series; likely Python and hook overhead per layer); memory kept "
    "for backward ~ B*P*(layers*(d_mlp + d_model) + n_saes*d_sae): linear in prompts and "
    "padded length with an intercept, weakly linear in SAEs, flat in slots up to ~50")
