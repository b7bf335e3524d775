"""Section `steps_to_circuit` of benchmarks/bench.py: a two-lambda sweep trained cold (as
before issue 13: every lambda from `init_logit`, `steps` steps) against the warm sweep the
masks stage now runs (the first lambda from integrated-gradients scores, the next one
continued from it, `warm_steps` each), on the same prepared batches.

Per lambda: the cold circuit's faithfulness F and size (latents per token) on held-out
prompts; the step at which each training first reaches that F (within `f_tol`) at no more
than that size (within `size_tol`), checked every `check_every` steps; the steps each ran
(early stop as configured); Jaccard overlap of the two circuits. Times are process CPU
seconds (robust to other jobs on the machine), the attribution pass included in the warm
side. A control: a cold training as short as the warm one (`warm_steps`), to tell the
start's effect from the shorter anneal's.
"""

from __future__ import annotations

import time

import numpy as np
import torch


def _faithfulness(mm, batches, masks, ref) -> float:
    ld = mm.logit_diffs(batches, masks)
    e = float(np.mean(ref["ld_ablated"]))
    return float((np.mean(ld) - e) / (np.mean(ref["ld_model"]) - e))


class _Tracker:
    """Snapshots of the binarised mask every `every` steps (and the last one), evaluated
    on the held-out batches; an unchanged mask reuses the previous evaluation."""

    def __init__(self, every: int):
        self.every, self.theta, self.snaps = every, {}, {}

    def spy(self, mt):
        orig = mt._initial_theta

        def initial(*a, **k):
            self.theta = orig(*a, **k)
            return self.theta
        return orig, initial

    def __call__(self, step, rec):
        if (step + 1) % self.every == 0:
            self.snaps[step + 1] = {h: (t.detach() > 0).float() for h, t in self.theta.items()}

    def curve(self, mm, batches, slots, ref, res) -> list[dict]:
        from maskshare.evaluation import size_metrics

        self.snaps[len(res.history)] = res.masks()
        out, last = [], None
        for step, m in sorted(self.snaps.items()):
            if last is not None and all(torch.equal(m[h], last[0][h]) for h in m):
                out.append({**last[1], "step": step})
                continue
            row = {"step": step, "f": _faithfulness(mm, batches, m, ref),
                   "lpt": size_metrics(m, slots)["latents_per_token"]}
            out.append(row)
            last = (m, row)
        return out


def _train(mm, batches, cfg, lam, targets, init, every):
    import maskshare.mask_training as mt

    tr = _Tracker(every)
    orig, mt._initial_theta = tr.spy(mt)
    try:
        c0 = time.process_time()
        res = mt.train_masks(mm, batches, cfg, lam, seed=0, targets=targets, init_theta=init,
                             progress=False, callback=tr)
        cpu = time.process_time() - c0
    finally:
        mt._initial_theta = orig
    return res, cpu, tr


def _reached(curve: list[dict], f: float, lpt: float, f_tol: float, size_tol: float):
    return next((r["step"] for r in curve if r["f"] >= f - f_tol
                 and r["lpt"] <= lpt * (1 + size_tol)), None)


def bench_steps_to_circuit(mm, train_batches, eval_batches, eval_slots, cfg, lambdas,
                           *, check_every: int = 2, f_tol: float = 0.02,
                           size_tol: float = 0.05) -> dict:
    """The section (see the module docstring); `cfg` a MaskConfig, `lambdas` two values."""
    from maskshare.attribution import attribution_by_method, method_of
    from maskshare.evaluation import jaccard, reference_lds
    from maskshare.mask_training import compute_targets, slot_weights
    from maskshare.warm_start import attribution_logits, open_triples, warm_config

    targets = compute_targets(mm, train_batches, cfg.objective, cfg.scale)
    ref = reference_lds(mm, eval_batches)
    c0 = time.process_time()
    ig = attribution_by_method(mm, train_batches, [method_of("ig")], 10)[method_of("ig")]
    attr_cpu = time.process_time() - c0
    wcfg = warm_config(cfg)
    rows, prev = [], None
    for lam in sorted(lambdas):
        cold, cold_cpu, ctr = _train(mm, train_batches, cfg, lam, targets, None, 5)
        if prev is None:
            init = attribution_logits(ig, lam, targets.scale,
                                      slot_weights(train_batches, mm.n_slots),
                                      open_ratio=cfg.init_open_ratio, init_logit=cfg.init_logit)
            start = "attribution"
        else:
            init, start = {h: t.clone() for h, t in prev.items()}, "continued"
        warm, warm_cpu, wtr = _train(mm, train_batches, wcfg, lam, targets, init, check_every)
        prev = warm.theta
        # the control: cold, but as short as the warm start (is it the start or the length?)
        short, _, s_tr = _train(mm, train_batches, wcfg, lam, targets, None, wcfg.steps)
        sc = s_tr.curve(mm, eval_batches, eval_slots, ref, short)[-1]
        cc = ctr.curve(mm, eval_batches, eval_slots, ref, cold)
        wc = wtr.curve(mm, eval_batches, eval_slots, ref, warm)
        f, lpt = cc[-1]["f"], cc[-1]["lpt"]
        cold_to = _reached(cc, f, lpt, f_tol, size_tol)
        warm_to = _reached(wc, f, lpt, f_tol, size_tol)
        rows.append({
            "lambda": lam, "warm_start": start, "open_at_start": open_triples(init),
            "cold_f": round(f, 4), "cold_lpt": round(lpt, 2), "warm_f": round(wc[-1]["f"], 4),
            "warm_lpt": round(wc[-1]["lpt"], 2), "jaccard": round(jaccard(cold.masks(),
                                                                         warm.masks()), 3),
            "cold_short_f": round(sc["f"], 4), "cold_short_lpt": round(sc["lpt"], 2),
            "cold_steps_run": len(cold.history), "warm_steps_run": len(warm.history),
            "cold_steps_to_circuit": cold_to, "warm_steps_to_circuit": warm_to,
            "cold_cpu_s": round(cold_cpu, 2), "warm_cpu_s": round(warm_cpu, 2),
            "cold_curve": cc, "warm_curve": wc})
    return _summary(rows, attr_cpu, cfg, wcfg, len(train_batches), f_tol, size_tol)


def _summary(rows, attr_cpu, cfg, wcfg, n_batches, f_tol, size_tol) -> dict:
    cold_cpu = sum(r["cold_cpu_s"] for r in rows)
    warm_cpu = sum(r["warm_cpu_s"] for r in rows)
    step_cpu = cold_cpu / max(sum(r["cold_steps_run"] for r in rows), 1)
    reached = all(r["warm_steps_to_circuit"] is not None for r in rows)
    to_circuit = sum(r["warm_steps_to_circuit"] or r["warm_steps_run"] for r in rows)
    return {
        "lambdas": [r["lambda"] for r in rows], "rows": rows, "n_train_batches": n_batches,
        "steps": cfg.steps, "warm_steps": wcfg.steps, "f_tol": f_tol, "size_tol": size_tol,
        "early_stop_patience": cfg.early_stop_patience,
        "attribution_cpu_s": round(attr_cpu, 2),
        "attribution_in_steps": round(attr_cpu / step_cpu, 1) if step_cpu else None,
        "cold_steps": sum(r["cold_steps_run"] for r in rows),
        "warm_steps_to_circuit": to_circuit if reached else None,
        "warm_steps_run": sum(r["warm_steps_run"] for r in rows),
        "time_ratio_run": round((warm_cpu + attr_cpu) / cold_cpu, 3) if cold_cpu else None,
        "time_ratio_run_without_attribution": round(warm_cpu / cold_cpu, 3) if cold_cpu else None,
        "time_ratio_to_circuit": round((attr_cpu + step_cpu * to_circuit) / cold_cpu, 3)
        if reached and cold_cpu else None}


def print_lines(s: dict) -> list[str]:
    """The section's lines in bench.py's table."""
    lines = [f"steps-to-circuit (lambdas {s['lambdas']}, {s['n_train_batches']} training "
             f"batches; cold {s['steps']} steps, warm {s['warm_steps']}, early stop "
             f"patience {s['early_stop_patience']}; CPU s)"]
    for r in s["rows"]:
        lines.append(
            f"  lambda {r['lambda']:g}: cold F {r['cold_f']:.3f} at {r['cold_lpt']:.1f} "
            f"lat/tok in {r['cold_steps_run']} steps (there at {r['cold_steps_to_circuit']}); "
            f"warm ({r['warm_start']}, {r['open_at_start']} open) F {r['warm_f']:.3f} at "
            f"{r['warm_lpt']:.1f} in {r['warm_steps_run']} (there at "
            f"{r['warm_steps_to_circuit']}); Jaccard {r['jaccard']:.2f}; cold in "
            f"{s['warm_steps']} steps: F {r['cold_short_f']:.3f} at {r['cold_short_lpt']:.1f}")
    reach = s["warm_steps_to_circuit"]
    lines.append(f"  steps-to-circuit cold {s['cold_steps']} / warm "
                 f"{reach if reach is not None else 'not reached'} (+ attribution = "
                 f"{s['attribution_in_steps']} steps), time ratio "
                 f"{s['time_ratio_to_circuit'] if reach is not None else '-'}; whole runs: "
                 f"{s['time_ratio_run']} ({s['time_ratio_run_without_attribution']} without "
                 f"the attribution pass)")
    return lines


def setup_from_run(run: str, n_train: int, n_eval: int, split: str = "test_phrasing"):
    """(masked model, training batches, held-out batches and slots, MaskConfig) of a built
    run's main variant (its groups and statistics; seeded samples of the splits)."""
    from maskshare.resources import load_run_config
    from maskshare.stages.masks import prepare_variant
    from maskshare.variants import main_variant

    cfg = load_run_config(run)
    v = main_variant(cfg)
    tr, ev = prepare_variant(run, v, "train", n_train), prepare_variant(run, v, split, n_eval)
    return tr.mm, tr.batches, ev.batches, ev.slots, cfg.masks


def setup_from_prompts(model, saes, toks, ans, cf, n_train: int, n_eval: int,
                       n_slots: int = 12, batch_size: int = 16):
    """The same from prompts alone: from-end slots, statistics on the first `n_train`
    prompts (training), the next `n_eval` held out; the default MaskConfig."""
    from bench_common import default_error, from_end_slots

    from maskshare.config import MaskConfig
    from maskshare.masking import MaskedModel
    from maskshare.slot_stats import compute_slot_stats

    slots = from_end_slots(toks, n_slots)
    tr, ev = slice(0, n_train), slice(n_train, n_train + n_eval)
    stats = compute_slot_stats(model, saes, toks[tr], slots[tr], n_slots, batch_size=batch_size)
    mm = MaskedModel(model, saes, stats, n_slots, error=default_error())
    batches = [mm.prepare(toks[s], slots[s], ans[s], cf[s], batch_size=batch_size)
               for s in (tr, ev)]
    return mm, batches[0], batches[1], slots[ev], MaskConfig(batch_size=batch_size)


def run_section(args, load) -> dict:
    """bench.py's call: a built run's main variant (`--run`) or the benchmark's prompts
    (`load()` -> model, SAEs, source, prompts) with from-end slots; `--warm-lambdas`."""
    n_train, n_eval = (16, 16) if args.quick else (32, 32)
    if args.run:
        setup = setup_from_run(args.run, n_train, n_eval)
        source = f"run {args.run} (main variant; test_phrasing held out)"
    else:
        model, saes, _, p = load()
        setup = setup_from_prompts(model, saes, p["tokens"], p["answer"], p["counterfactual"],
                                   n_train, n_eval)
        source = f"{p['source']}, from-end slots"
    out = bench_steps_to_circuit(*setup, args.warm_lambdas)
    return {"source": source, "n_train": n_train, "n_eval": n_eval, **out}
