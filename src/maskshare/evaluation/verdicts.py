"""Does the main method lead? Per held-out split, at matched size (docs/selection.md).

On each held-out split the main method's chosen circuit has a size (latents per token on
that split's tokens) and an F. Every other method (baseline groupings and ablations, the
attribution circuits) is read off its own F-against-size curve on the same split at that
size (`evaluation.f_at_size`, linear in log size, never extrapolated). A method is better
where its F is closer to 1 (the full model; F above 1 overshoots it), so

    lead = |1 - F(other)| - |1 - F(main)|

is positive where the main method leads, by that much F. Where a method leads the main
method, the verdict says which, and by how much; where a curve does not reach that size,
it says so. Pure functions of evaluation rows (`comparison.EvalRow`).
"""

from __future__ import annotations

from maskshare.evaluation.comparison import MASKS
from maskshare.evaluation.metrics import f_at_size

SPLIT_NAMES = {"test_phrasing": "held-out phrasings", "test_entity": "held-out entities",
               "test_both": "held-out phrasings and entities"}
TIE = 0.005  # leads smaller than this are a tie


def _closeness(f: float) -> float:
    return abs(1.0 - f)


def _label(name: str, finder: str) -> str:
    g, a = name.split("__")[:2]
    base = f"{g} ({a})"
    return base if finder == MASKS else f"{base} {finder}"


def split_verdict(rows, main: str, others: list[tuple[str, str]], split: str,
                  lam: float) -> dict | None:
    """{latents_per_token, main_f, methods: {name: {f, lead}}, leader, sentence} on `split`
    (None where the main method has no row there). `others`: (method name as in the rows,
    e.g. `single__slot-mean` or `attention__slot-mean__ig`, and its finder)."""
    mine = [r for r in rows if r.variant == main and r.split == split and r.lam == lam
            and r.finder == MASKS]
    if not mine or mine[0].faithfulness is None or not mine[0].latents_per_token:
        return None
    size, main_f = mine[0].latents_per_token, mine[0].faithfulness
    methods: dict[str, dict] = {}
    for name, finder in others:
        pts = sorted((r for r in rows if r.variant == name and r.finder == finder
                      and r.split == split and r.latents_per_token),
                     key=lambda r: r.latents_per_token)
        f = f_at_size([r.latents_per_token for r in pts], [r.faithfulness for r in pts], size)
        methods[name] = {"f": f, "lead": None if f is None else
                        _closeness(f) - _closeness(main_f), "label": _label(name, finder)}
    read = {k: m for k, m in methods.items() if m["lead"] is not None}
    best = min(read, key=lambda k: read[k]["lead"]) if read else None
    where = f"On {SPLIT_NAMES.get(split, split)} at {size:.3g} latents per token"
    me = _label(main, MASKS)
    if best is None:
        sentence = f"{where}, no other method's curve reaches that size."
        leader = main
    elif read[best]["lead"] < -TIE:
        leader = best
        sentence = (f"{where}, {read[best]['label']} leads {me} by {-read[best]['lead']:.2f} F "
                    f"(F {read[best]['f']:.2f} against {main_f:.2f}).")
    else:
        leader = main
        tied = [read[k]["label"] for k in read if abs(read[k]["lead"]) <= TIE]
        sentence = (f"{where}, {me} (F {main_f:.2f}) leads every other method"
                    + (f" by at least {read[best]['lead']:.2f} F" if not tied else
                       f", tied with {', '.join(tied)}") + ".")
    ahead = [f"{m['label']} by {m['lead']:.2f}" for m in read.values() if m["lead"] > TIE]
    behind = [f"{m['label']} by {-m['lead']:.2f}" for m in read.values() if m["lead"] < -TIE]
    if ahead:
        sentence += f" {me} leads {', '.join(ahead)}" + (
            f"; trails {', '.join(behind)}." if behind else ".")
    unread = [methods[k]["label"] for k in methods if methods[k]["lead"] is None]
    if unread and best is not None:
        sentence += f" Not read at that size: {', '.join(unread)}."
    return {"latents_per_token": size, "main_f": main_f,
            "methods": {k: {"f": m["f"], "lead": m["lead"]} for k, m in methods.items()},
            "leader": leader, "sentence": sentence}


def matched_verdicts(rows, main: str, others: list[tuple[str, str]], splits: list[str],
                     lam: float) -> dict:
    """metrics.json entries: `matched_<split>` per held-out split (`split_verdict`) and
    `verdicts`, their sentences in the splits' order."""
    out: dict = {}
    sentences = []
    for s in splits:
        v = split_verdict(rows, main, others, s, lam)
        if v is not None:
            out[f"matched_{s}"] = v
            sentences.append(v["sentence"])
    out["verdicts"] = sentences
    return out
