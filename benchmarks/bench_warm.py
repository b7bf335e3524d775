"""Section `steps_to_circuit` of benchmarks/bench.py: a lambda sweep trained cold (as
before issue 13: every lambda from `init_logit`, `steps` steps, early stop as configured)
against the warm sweep the masks stage can run (the first lambda from integrated-gradients
scores, each next one continued from the previous, `warm_steps` each), on the same
prepared batches. Two controls tell the start's effect from the shorter anneal's and from
the continuation: `short` (cold, `warm_steps` steps, each lambda alone) and `continued`
(each lambda after the first continued from the previous cold mask, `warm_steps`).

Per lambda and training: faithfulness F and size (latents per token) of the final circuit
on held-out prompts, the cold sweep's F read at that size (`f_at_size`, linear in log
size, None outside the cold sizes), the step at which the training first reaches the cold
circuit's F (within `f_tol`) at no more than its size (within `size_tol`; checked every
`check_every` steps for `warm`, every 5 for `cold`, at the end for the controls), steps
run, Jaccard overlap with the cold and the short circuit. Times are process CPU seconds
(robust to other jobs on the machine), the attribution pass counted on the warm side.
"""

from __future__ import annotations

import time

import numpy as np
import torch


def _faithfulness(mm, batches, masks, ref) -> float:
    """F of binary `masks` against `reference_lds` output `ref` (no complement pass)."""
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
        from maskshare.evaluation.metrics import size_metrics

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


def _train(ctx, cfg, lam, init, every) -> dict:
    """One training on the context's batches with snapshots every `every` steps: its
    result, CPU seconds, the held-out curve of its snapshots and how many triples it
    started with open."""
    import maskshare.masks.training as mt
    from maskshare.masks.warm_start import open_triples

    tr = _Tracker(every)
    orig, mt._initial_theta = tr.spy(mt)
    try:
        c0 = time.process_time()
        res = mt.train_masks(ctx["mm"], ctx["train"], cfg, lam, seed=0, targets=ctx["targets"],
                             init_theta=init, progress=False, callback=tr)
        cpu = time.process_time() - c0
    finally:
        mt._initial_theta = orig
    curve = tr.curve(ctx["mm"], ctx["eval"], ctx["slots"], ctx["ref"], res)
    return {"res": res, "cpu": cpu, "curve": curve,
            "open": None if init is None else open_triples(init)}


def _reached(curve: list[dict], f: float, lpt: float, f_tol: float, size_tol: float):
    return next((r["step"] for r in curve if r["f"] >= f - f_tol
                 and r["lpt"] <= lpt * (1 + size_tol)), None)


def _row(lam, runs: dict, f_tol: float, size_tol: float) -> dict:
    """One lambda's figures: per training, F and size of its final circuit, steps run and
    to the cold circuit, CPU s, Jaccard overlap with the cold and the short cold circuit."""
    from maskshare.evaluation.metrics import jaccard

    f, lpt = runs["cold"]["curve"][-1]["f"], runs["cold"]["curve"][-1]["lpt"]
    out = {"lambda": lam, "cold_curve": runs["cold"]["curve"],
           "warm_curve": runs["warm"]["curve"]}
    for name, r in runs.items():
        m = r["res"].masks()
        out[name] = {"start": r["start"], "open_at_start": r["open"],
                     "f": round(r["curve"][-1]["f"], 4), "lpt": round(r["curve"][-1]["lpt"], 2),
                     "steps_run": len(r["res"].history), "cpu_s": round(r["cpu"], 2),
                     "steps_to_circuit": _reached(r["curve"], f, lpt, f_tol, size_tol),
                     "jaccard_cold": round(jaccard(m, runs["cold"]["res"].masks()), 3),
                     "jaccard_short": round(jaccard(m, runs["short"]["res"].masks()), 3)}
    return out


def bench_steps_to_circuit(mm, train_batches, eval_batches, eval_slots, cfg, lambdas,
                           *, check_every: int = 2, f_tol: float = 0.02,
                           size_tol: float = 0.05) -> dict:
    """The section (see the module docstring); `cfg` a MaskConfig, `lambdas` two or more.

    Per lambda: `cold` (steps, from init_logit), `warm` (the stage's default chain: the
    first lambda from IG scores, each next one continued from the previous warm mask;
    warm_steps), `short` (cold, warm_steps: the control) and from the second lambda on
    `continued` (warm_steps from the previous cold mask: a chain without attribution)."""
    from maskshare.evaluation.metrics import reference_lds
    from maskshare.masks.attribution import attribution_by_method, method_of
    from maskshare.masks.training import compute_targets, slot_weights
    from maskshare.masks.warm_start import attribution_start, continued_theta, warm_config

    ctx = {"mm": mm, "train": train_batches, "eval": eval_batches, "slots": eval_slots,
           "targets": compute_targets(mm, train_batches, cfg.objective, cfg.scale),
           "ref": reference_lds(mm, eval_batches)}
    c0 = time.process_time()
    ig = attribution_by_method(mm, train_batches, [method_of("ig")], 10)[method_of("ig")]
    attr_cpu = time.process_time() - c0
    wcfg, rows, prev = warm_config(cfg), [], None
    for lam in sorted(lambdas):
        if prev is None:
            w_init = attribution_start(ig, cfg, lam, ctx["targets"].scale,
                                       slot_weights(train_batches, mm.n_slots))
        else:
            w_init = continued_theta(prev["warm"]["res"].theta)
        runs = {"cold": _train(ctx, cfg, lam, None, 5) | {"start": "cold"},
                "warm": _train(ctx, wcfg, lam, w_init, check_every)
                | {"start": "attribution" if prev is None else "continued"},
                "short": _train(ctx, wcfg, lam, None, wcfg.steps) | {"start": "cold"}}
        if prev is not None:
            c_init = continued_theta(prev["cold"]["res"].theta)
            runs["continued"] = _train(ctx, wcfg, lam, c_init, wcfg.steps) | {
                "start": "continued"}
        rows.append(_row(lam, runs, f_tol, size_tol))
        prev = runs
    return _summary(rows, attr_cpu, cfg, wcfg, len(train_batches), f_tol, size_tol)


def _summary(rows, attr_cpu, cfg, wcfg, n_batches, f_tol, size_tol) -> dict:
    from maskshare.evaluation.metrics import f_at_size

    def total(name, key):
        return sum(r[name][key] for r in rows)

    cold_cpu, warm_cpu = total("cold", "cpu_s"), total("warm", "cpu_s")
    step_cpu = cold_cpu / max(total("cold", "steps_run"), 1)
    reached = all(r["warm"]["steps_to_circuit"] is not None for r in rows)
    to_circuit = sum(r["warm"]["steps_to_circuit"] or r["warm"]["steps_run"] for r in rows)
    cold_curve = ([r["cold"]["lpt"] for r in rows], [r["cold"]["f"] for r in rows])
    for r in rows:  # the cold sweep's F read at each other circuit's size (None outside)
        for name in ("warm", "short", "continued"):
            if name in r:
                at = f_at_size(*cold_curve, r[name]["lpt"])
                r[name]["cold_f_at_size"] = None if at is None else round(at, 4)
    return {
        "lambdas": [r["lambda"] for r in rows], "rows": rows, "n_train_batches": n_batches,
        "steps": cfg.steps, "warm_steps": wcfg.steps, "f_tol": f_tol, "size_tol": size_tol,
        "early_stop_patience": cfg.early_stop_patience,
        "early_stop_min_steps": cfg.early_stop_min_steps,
        "attribution_cpu_s": round(attr_cpu, 2),
        "attribution_in_steps": round(attr_cpu / step_cpu, 1) if step_cpu else None,
        "cold_steps": total("cold", "steps_run"),
        "warm_steps_to_circuit": to_circuit if reached else None,
        "warm_steps_run": total("warm", "steps_run"),
        "time_ratio_run": round((warm_cpu + attr_cpu) / cold_cpu, 3) if cold_cpu else None,
        "time_ratio_run_without_attribution": round(warm_cpu / cold_cpu, 3) if cold_cpu else None,
        "time_ratio_to_circuit": round((attr_cpu + step_cpu * to_circuit) / cold_cpu, 3)
        if reached and cold_cpu else None}


def print_lines(s: dict) -> list[str]:
    """The section's lines in bench.py's table."""
    lines = [f"steps-to-circuit (lambdas {s['lambdas']}, {s['n_train_batches']} training "
             f"batches; cold {s['steps']} steps, warm {s['warm_steps']}, early stop "
             f"patience {s['early_stop_patience']} from step {s['early_stop_min_steps']}; "
             "F on held-out prompts at latents per token)"]
    for r in s["rows"]:
        c = r["cold"]
        lines.append(f"  lambda {r['lambda']:g}: cold F {c['f']:.3f} at {c['lpt']:.1f} in "
                     f"{c['steps_run']} steps (there at {c['steps_to_circuit']})")
        for name in ("warm", "short", "continued"):
            if name in r:
                x = r[name]
                at = "-" if x["cold_f_at_size"] is None else f"{x['cold_f_at_size']:.3f}"
                lines.append(
                    f"    {name:<9} ({x['start']}{'' if x['open_at_start'] is None else ', ' + str(x['open_at_start']) + ' open'}): "
                    f"F {x['f']:.3f} at {x['lpt']:.1f} (cold sweep there: {at}) in "
                    f"{x['steps_run']} steps, reaches cold at {x['steps_to_circuit']}; "
                    f"Jaccard cold {x['jaccard_cold']:.2f} short {x['jaccard_short']:.2f}")
    reach = s["warm_steps_to_circuit"]
    lines.append(f"  steps-to-circuit cold {s['cold_steps']} / warm "
                 f"{reach if reach is not None else 'not reached'} (+ attribution = "
                 f"{s['attribution_in_steps']} steps), time ratio "
                 f"{s['time_ratio_to_circuit'] if reach is not None else '-'}; whole runs "
                 f"(CPU s): {s['time_ratio_run']} ({s['time_ratio_run_without_attribution']} "
                 "without the attribution pass)")
    return lines


def setup_from_run(run: str, n_train: int, n_eval: int, split: str = "test_phrasing"):
    """(masked model, training batches, held-out batches and slots, MaskConfig) of a built
    run's main variant (its groups and statistics; seeded samples of the splits)."""
    from maskshare.masks.variant import prepare_variant
    from maskshare.run.resources import load_run_config
    from maskshare.run.variants import main_variant

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
    from maskshare.masks.masking import MaskedModel
    from maskshare.masks.slot_stats import compute_slot_stats

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
