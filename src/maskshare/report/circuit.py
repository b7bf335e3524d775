"""The circuit section of the report: where it sits in depth, and its latents, to read.

From `evaluate/circuit.json` (per slot: kept (hook, latent) with mean activation, top
activating dataset tokens, Neuronpedia URL) and the chosen mask's logits theta
(`masks/<variant>/lam<lambda>_seed<seed>/masks.safetensors`): per slot (named by
`slot_names`) and per SAE, the kept latents ranked by `RANK_KEY`, each with the prompts
where it fires most, the firing token highlighted. The ranking key is a column of each row,
so an attribution score can replace theta by adding a column and changing `RANK_KEY`.
"""

from __future__ import annotations

import html

from maskshare.report.data import RunView
from maskshare.report.slot_names import slot_title
from maskshare.report.svg import svg_heatmap
from maskshare.run.layout import RunLayout

RANK_KEY = "theta"
RANK_LABEL = {"theta": "mask logit θ", "mean_activation": "mean activation"}
SHOW_PER_SAE = 10     # latents shown in full per (slot, SAE); the rest as a list of ids
SHOW_PROMPTS = 3      # top-activating prompts per latent


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def masks_theta(view: RunView) -> dict | None:
    """{hook: array [n_slots, d_sae]} of the chosen mask; None when its file is gone. The
    path is the pipeline's mask directory for the main variant, chosen lambda, first seed."""
    lam = view.metrics.get("lambda")
    if lam is None:
        return None
    p = RunLayout(view.run).mask_file(view.main_variant, lam, view.seed)
    if not p.is_file():
        return None
    from safetensors.numpy import load_file

    return load_file(str(p))


def _train_strs(view: RunView) -> list[list[str]] | None:
    # circuit.json's "prompt" is the index among the training items (in items order)
    if view.items is None:
        return None
    return view.items.filter(view.items["split"] == "train")["token_strs"].to_list()


def _examples(tops: list[dict], train: list[list[str]] | None) -> list[tuple[str, str, str, float]]:
    """(before, token, after, activation) of each top-activating token."""
    out = []
    for t in tops[:SHOW_PROMPTS]:
        before, after = t.get("before"), t.get("after")
        if before is None and train is not None and 0 <= t.get("prompt", -1) < len(train):
            strs, pos = train[t["prompt"]], t["pos"]
            before, after = "".join(strs[1:pos]), "".join(strs[pos + 1:])
        if before is None:  # an old circuit.json and no items: the short context only
            ctx = t.get("context", t["token"])
            before, after = ctx[:len(ctx) - len(t["token"])], ""
        nl = "⏎ "  # a newline inside a prompt, shown so one-line examples keep it visible
        out.append((before.replace("\n", nl), t["token"].replace("\n", nl),
                    after.replace("\n", nl), float(t["activation"])))
    return out


def circuit_rows(view: RunView, rank_by: str = RANK_KEY) -> list[dict]:
    """[{slot, title, n_kept, per_sae: [{hook, layer, rows}]}]: rows ranked by `rank_by`."""
    theta = masks_theta(view)
    labels = view.labels.get(view.main_grouping, {})
    out = []
    for s in view.circuit.get("slots", []):
        by_hook: dict[str, list[dict]] = {}
        for r in s["latents"]:
            row = dict(r)
            th = theta.get(r["hook"]) if theta else None
            row["theta"] = float(th[s["slot"], r["latent"]]) if th is not None else None
            by_hook.setdefault(r["hook"], []).append(row)
        key = rank_by if all(row.get(rank_by) is not None for rows in by_hook.values()
                             for row in rows) else "mean_activation"
        per = []
        for h in view.circuit.get("hooks", list(by_hook)):
            rows = sorted(by_hook.get(h, []), key=lambda r: (-(r.get(key) or 0.0), r["latent"]))
            if rows:
                per.append({"hook": h, "layer": rows[0].get("layer"), "rows": rows, "key": key})
        out.append({"slot": s["slot"], "title": slot_title(labels, s["slot"]),
                    "n_kept": s["n_kept"], "per_sae": per})
    return out


def depth_figure(view: RunView) -> str:
    """Slots (rows, named) x SAE layers (columns): kept latents per cell."""
    d = view.circuit.get("depth") or {}
    hooks, per = d.get("hooks", []), d.get("per_slot", {})
    ids = d.get("slot_ids", [])
    labels = view.labels.get(view.main_grouping, {})
    layers = view.circuit.get("layers") or list(range(len(hooks)))
    rows = [slot_title(labels, s) for s in ids]
    values = [[int(per.get(h, [0] * len(ids))[i]) for h in hooks] for i in range(len(ids))]
    return ('<p class="note">Kept latents per slot (rows) and SAE layer (columns, shallow to '
            'deep); hover a cell for its count.</p>' +
            svg_heatmap(rows, [f"layer {layer}" for layer in layers], values,
                        "kept latents per slot and SAE layer"))


def _latent_row(i: int, r: dict, key: str, train) -> str:
    ex = "".join(f'<div class="ex"><span class="ctx">{_esc(b)}</span><mark>{_esc(t)}</mark>'
                 f'<span class="ctx">{_esc(a)}</span> <span class="muted">({v:.2g})</span>'
                 '</div>' for b, t, a, v in _examples(r.get("top_tokens", []), train))
    link = f'<a href="{_esc(r["neuronpedia"])}">Neuronpedia</a>' if r.get("neuronpedia") else \
        '<span class="muted">–</span>'

    def num(v):
        if v is None:
            return '<span class="muted">–</span>'
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"

    return (f"<tr><td>{i}</td><td>{r['latent']}</td><td>{num(r.get(key))}</td>"
            f"<td>{num(r.get('mean_activation'))}</td>"
            f'<td class="l">{ex or "<span class=muted>never fires on the training prompts</span>"}'
            f"</td><td>{link}</td></tr>")


def circuit_html(view: RunView) -> str:
    slots = circuit_rows(view)
    if not slots:
        return '<p class="note">The circuit keeps no latent outside BOS.</p>'
    train = _train_strs(view)
    c = view.circuit
    out = [f'<p>{c.get("triples", 0)} (slot, SAE, latent) triples, '
           f'{c.get("distinct_latents", 0)} distinct latents, over {len(slots)} slots. '
           f'Per slot and SAE, the kept latents ranked by '
           f'{RANK_LABEL.get(slots[0]["per_sae"][0]["key"], RANK_KEY)}; the prompts where each '
           'fires most on the training split, the firing token highlighted.</p>']
    for k, s in enumerate(slots):
        counts = ", ".join(f"layer {p['layer']}: {len(p['rows'])}" for p in s["per_sae"])
        out.append(f'<details class="slot"{" open" if k == 0 else ""}><summary><b>'
                   f'{_esc(s["title"])}</b>: {s["n_kept"]} kept latents ({counts})</summary>')
        for p in s["per_sae"]:
            key = p["key"]
            out.append(f'<h4>layer {p["layer"]} <code>{_esc(p["hook"])}</code>: '
                       f'{len(p["rows"])} kept</h4><div class="scroll"><table class="latents">'
                       f'<thead><tr><th>rank</th><th>latent</th><th>{_esc(RANK_LABEL.get(key, key))}'
                       '</th><th>mean act.</th><th class="l">fires most on</th><th>link</th></tr>'
                       '</thead><tbody>')
            out += [_latent_row(i + 1, r, key, train)
                    for i, r in enumerate(p["rows"][:SHOW_PER_SAE])]
            out.append("</tbody></table></div>")
            rest = p["rows"][SHOW_PER_SAE:]
            if rest:
                ids = ", ".join(str(r["latent"]) for r in rest[:150])
                more = f" … ({len(rest) - 150} more)" if len(rest) > 150 else ""
                out.append(f'<p class="note">{len(rest)} more, in rank order: {ids}{more}</p>')
        out.append("</details>")
    return "".join(out)
