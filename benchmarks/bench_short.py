"""Section of benchmarks/bench.py: the mask step's fixed cost (issue 13). 16 prompts of 6-8
tokens against 16 prompts of 12 tokens, each timed now and "before" (the path before issue
13, kept as options: TransformerLens's own weight layout, copied on every pass; the whole
vocabulary unembedded for a logit difference; every batch split by length), interleaved in
one run, medians of the repeats."""

from __future__ import annotations

from bench_common import default_error, from_end_slots, med, timed

# (MaskedModel options, weight layout) of each path
PATHS = {"now": ({}, True),
         "before": ({"answer_only": False, "min_split_tokens": 0}, False)}


def stretch(tokens: list[list[int]], lengths: list[int]) -> list[list[int]]:
    """Prompt i brought to exactly lengths[i] tokens: BOS + its tokens repeated / cut."""
    out = []
    for t, n in zip(tokens, lengths, strict=True):
        body = t[1:] * (n // max(1, len(t) - 1) + 1)
        out.append([t[0]] + body[:n - 1])
    return out


def bench_short_step(model, saes: dict, tokens, answers, counterfactuals, n_prompts: int = 16,
                     n_slots: int = 6, repeats: int = 3, device: str = "cpu") -> dict:
    """Step seconds of `n_prompts` short prompts (lengths 6, 7, 8 in turn) and of as many
    12-token prompts, on the path now and before; with the ratios before/now and short/12."""
    from bench_step import _frozen, _StepRunner

    from maskshare.masks.masking import MaskedModel
    from maskshare.masks.slot_stats import compute_slot_stats
    from maskshare.model.models import fast_weight_layout

    idx = [i % len(tokens) for i in range(n_prompts)]
    base = [tokens[i] for i in idx]
    sets = {"short": [6 + i % 3 for i in range(n_prompts)], "len12": [12] * n_prompts}
    runs, info = {}, {}
    for name, lengths in sets.items():
        toks = stretch(base, lengths)
        slots = from_end_slots(toks, n_slots)
        stats = compute_slot_stats(model, saes, toks, slots, n_slots, batch_size=n_prompts)
        for path, (opts, _) in PATHS.items():
            mm = MaskedModel(model, saes, stats, n_slots, error=default_error(), **opts)
            batch = mm.prepare(toks, slots, [answers[i] for i in idx],
                               [counterfactuals[i] for i in idx], batch_size=n_prompts)[0]
            runs[(name, path)] = (mm, batch)
        info[name] = {"n_tokens": sum(lengths), "lengths": sorted(set(lengths))}
    steppers = {}
    times: dict = {k: [] for k in runs}
    cpu: dict = {k: [] for k in runs}
    try:
        with _frozen(model, saes):
            for r in range(repeats + 1):  # the first round warms up, not recorded
                order = list(runs) if r % 2 == 0 else list(runs)[::-1]
                for key in order:
                    fast_weight_layout(model, enable=PATHS[key[1]][1])
                    if key not in steppers:
                        steppers[key] = _StepRunner(*runs[key], device)
                    t, c = timed(steppers[key], device)
                    if r:
                        times[key].append(t)
                        cpu[key].append(c)
    finally:
        fast_weight_layout(model)  # as load_model leaves it
    out = {"n_prompts": n_prompts, "n_slots": n_slots, "repeats": repeats,
           "n_saes": len(saes), "error": default_error()}
    for name in sets:
        row = dict(info[name])
        for path in PATHS:
            row[f"{path}_s"] = round(med(times[(name, path)]), 4)
            row[f"{path}_cpu_s"] = round(med(cpu[(name, path)]), 4)
        for unit, t in (("", times), ("_cpu", cpu)):
            row[f"ratio_before_over_now{unit}"] = round(med([b / n for b, n in zip(
                t[(name, "before")], t[(name, "now")], strict=True)]), 3)
        out[name] = row
    for path in PATHS:
        for unit in ("", "_cpu"):
            out[f"ratio_short_to_len12_{path}{unit}"] = round(
                out["short"][f"{path}{unit}_s"] / out["len12"][f"{path}{unit}_s"], 3)
    return out


def short_step_lines(s: dict) -> list[str]:
    """The section's lines of the printed table (wall and process CPU seconds)."""
    lines = [f"short-prompt mask step ({s['n_prompts']} prompts, {s['n_saes']} SAEs, "
             f"{s['n_slots']} slots; median of {s['repeats']})",
             f"  {'':<24} {'now s':>8} {'before s':>9} {'before/now':>11} {'now cpu':>8} "
             f"{'before cpu':>11} {'cpu ratio':>10}"]
    for name, label in (("short", "prompts of 6-8 tokens"), ("len12", "prompts of 12 tokens")):
        r = s[name]
        lines.append(f"  {label:<24} {r['now_s']:>8.3f} {r['before_s']:>9.3f} "
                     f"{r['ratio_before_over_now']:>11.2f} {r['now_cpu_s']:>8.3f} "
                     f"{r['before_cpu_s']:>11.3f} {r['ratio_before_over_now_cpu']:>10.2f}")
    lines.append(f"  6-8 tokens / 12 tokens: {s['ratio_short_to_len12_now']:.2f} now, "
                 f"{s['ratio_short_to_len12_before']:.2f} before (cpu: "
                 f"{s['ratio_short_to_len12_now_cpu']:.2f}, "
                 f"{s['ratio_short_to_len12_before_cpu']:.2f}; tokens: "
                 f"{s['short']['n_tokens'] / s['len12']['n_tokens']:.2f})")
    return lines
