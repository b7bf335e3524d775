"""The run's `report.html`: one self-contained page (inline CSS, inline SVG, no scripts, no
network): headline metrics, comparison tables, F-versus-size curves, the circuit listing,
where in depth the kept latents sit, and a link to the groups page.

Inputs (plain dicts, as the pipeline has them):
- `comparisons`: tables, each `{"title": str, "rows": [dict, ...], "note": str?}`; a list of
  flat row dicts (no "rows" key) is shown as one table.
- `curves`: one per method, `{"method": str, "plot": str?, "points": [{"latents_per_token":
  x, "faithfulness": y}, ...]}` (or `"sizes"` + `"faithfulness"` lists); curves sharing a
  `plot` (default: one plot) are drawn together, x on a log scale.
- `circuit`: `maskshare.circuit.circuit_summary(...)`.
- `metrics`: the run's metrics (flat values shown; nested dicts as JSON).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from maskshare.artifacts import write_text_atomic

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1100px;color:#222;line-height:1.4;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:2em}h3{font-size:1.05em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}
.note{color:#666;font-size:.9em}.muted{color:#888}
details{margin:.3em 0}summary{cursor:pointer}
code{background:#f5f5f5;padding:0 .2em}
svg text{font-family:inherit}
"""


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v) -> str:
    if v is None:
        return '<span class="muted">–</span>'
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return _esc(v)
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.4g}"
    if isinstance(v, dict | list):
        return f"<code>{_esc(json.dumps(v, default=str)[:200])}</code>"
    return _esc(v)


def html_table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return '<p class="note">(no rows)</p>'
    if columns is None:
        columns = []
        for r in rows:
            columns += [k for k in r if k not in columns]
    head = "".join(f'<th class="l">{_esc(c)}</th>' if i == 0 else f"<th>{_esc(c)}</th>"
                   for i, c in enumerate(columns))
    body = []
    for r in rows:
        cells = []
        for i, c in enumerate(columns):
            v = r.get(c)
            cls = ' class="l"' if i == 0 or isinstance(v, str) else ""
            cells.append(f"<td{cls}>{_fmt(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _curve_points(c: dict) -> list[tuple[float, float]]:
    if "points" in c:
        pts = [(p.get("latents_per_token"), p.get("faithfulness")) for p in c["points"]]
    else:
        pts = list(zip(c.get("sizes", []), c.get("faithfulness", []), strict=False))
    return sorted((float(x), float(y)) for x, y in pts
                  if x is not None and y is not None and x > 0 and math.isfinite(float(y)))


def svg_curves(curves: list[dict], title: str = "", width: int = 560, height: int = 340) -> str:
    """F against latents per token (log x), one polyline per method, with a legend."""
    series = [(c.get("method") or c.get("label") or f"curve {i}", _curve_points(c))
              for i, c in enumerate(curves)]
    allpts = [p for _, pts in series for p in pts]
    ml, mr, mt, mb = 56, 150, 24, 44
    pw, ph = width - ml - mr, height - mt - mb
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">',
             f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="#fff" stroke="#999"/>']
    if title:
        parts.append(f'<text x="{ml}" y="16" font-size="13">{_esc(title)}</text>')
    if not allpts:
        parts.append(f'<text x="{ml + 10}" y="{mt + 20}" font-size="12">no points</text></svg>')
        return "".join(parts)
    lx = [math.log10(x) for x, _ in allpts]
    x0, x1 = math.floor(min(lx)), math.ceil(max(lx))
    if x1 == x0:
        x1 = x0 + 1
    ys = [y for _, y in allpts]
    y0, y1 = min(0.0, min(ys)), max(1.0, max(ys))

    def X(x):
        return ml + (math.log10(x) - x0) / (x1 - x0) * pw

    def Y(y):
        return mt + (1 - (y - y0) / (y1 - y0)) * ph

    for e in range(x0, x1 + 1):
        for m in (1, 2, 5):
            v = m * 10 ** e
            if not (10 ** x0 <= v <= 10 ** x1):
                continue
            xp = X(v)
            parts.append(f'<line x1="{xp:.1f}" y1="{mt}" x2="{xp:.1f}" y2="{mt + ph}" '
                         f'stroke="#eee"/>')
            parts.append(f'<text x="{xp:.1f}" y="{mt + ph + 14}" font-size="10" '
                         f'text-anchor="middle">{v:g}</text>')
    for k in range(6):
        v = y0 + (y1 - y0) * k / 5
        yp = Y(v)
        parts.append(f'<line x1="{ml}" y1="{yp:.1f}" x2="{ml + pw}" y2="{yp:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{ml - 6}" y="{yp + 3:.1f}" font-size="10" '
                     f'text-anchor="end">{v:.2g}</text>')
    if y0 < 1 < y1 or y1 == 1:
        parts.append(f'<line x1="{ml}" y1="{Y(1):.1f}" x2="{ml + pw}" y2="{Y(1):.1f}" '
                     'stroke="#aaa" stroke-dasharray="4 3"/>')
    parts.append(f'<text x="{ml + pw / 2}" y="{height - 8}" font-size="11" '
                 'text-anchor="middle">latents kept per token (log scale)</text>')
    parts.append(f'<text x="14" y="{mt + ph / 2}" font-size="11" text-anchor="middle" '
                 f'transform="rotate(-90 14 {mt + ph / 2})">faithfulness F</text>')
    for i, (name, pts) in enumerate(series):
        col = PALETTE[i % len(PALETTE)]
        if pts:
            d = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in pts)
            parts.append(f'<polyline points="{d}" fill="none" stroke="{col}" stroke-width="2"/>')
            for x, y in pts:
                parts.append(f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="3" fill="{col}">'
                             f'<title>{_esc(name)}: {x:.3g} per token, F={y:.3f}</title></circle>')
        ly = mt + 12 + 16 * i
        parts.append(f'<line x1="{ml + pw + 10}" y1="{ly - 4}" x2="{ml + pw + 28}" '
                     f'y2="{ly - 4}" stroke="{col}" stroke-width="2"/>')
        parts.append(f'<text x="{ml + pw + 32}" y="{ly}" font-size="11">{_esc(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_depth(depth: dict, cell: int = 18) -> str:
    """Heat map: rows = SAE hooks (shallow at top), columns = slots, shade = kept latents."""
    hooks = depth.get("hooks", [])
    per = depth.get("per_slot", {})
    slot_ids = depth.get("slot_ids", [])
    if not hooks or not slot_ids:
        return '<p class="note">(no kept latents)</p>'
    vmax = max([max(per[h]) if per[h] else 0 for h in hooks] + [1])
    ml, mt = 200, 22
    w, h_ = ml + cell * len(slot_ids) + 10, mt + cell * len(hooks) + 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h_}" '
             f'viewBox="0 0 {w} {h_}" role="img" aria-label="kept latents per SAE and slot">']
    for j, s in enumerate(slot_ids):
        parts.append(f'<text x="{ml + cell * j + cell / 2}" y="{mt - 6}" font-size="9" '
                     f'text-anchor="middle">{s}</text>')
    for i, hk in enumerate(hooks):
        parts.append(f'<text x="{ml - 6}" y="{mt + cell * i + cell * 0.7}" font-size="10" '
                     f'text-anchor="end">{_esc(hk)}</text>')
        for j, v in enumerate(per.get(hk, [])):
            a = v / vmax
            fill = f"rgb({int(255 - 200 * a)},{int(255 - 150 * a)},255)" if v else "#fafafa"
            parts.append(f'<rect x="{ml + cell * j}" y="{mt + cell * i}" width="{cell - 1}" '
                         f'height="{cell - 1}" fill="{fill}" stroke="#ddd">'
                         f'<title>{_esc(hk)}, slot {slot_ids[j]}: {v} kept</title></rect>')
    parts.append("</svg>")
    return "".join(parts)


def _circuit_html(circuit: dict, max_rows: int = 40) -> str:
    if not circuit or not circuit.get("slots"):
        return '<p class="note">The circuit keeps no latent outside BOS.</p>'
    out = [f'<p>{circuit.get("triples", 0)} (slot, SAE, latent) triples, '
           f'{circuit.get("distinct_latents", 0)} distinct latents.</p>']
    for s in circuit["slots"]:
        name = f' — {_esc(s["name"])}' if s.get("name") else ""
        out.append(f'<details><summary>slot {s["slot"]}{name}: {s["n_kept"]} kept latents'
                   f'</summary>')
        rows = []
        for r in s["latents"][:max_rows]:
            toks = ", ".join(f'{t["token"]!r} ({t["activation"]:.2g})' for t in r["top_tokens"])
            rows.append({"hook": r["hook"], "latent": r["latent"],
                         "mean activation": r["mean_activation"], "top tokens": toks,
                         "neuronpedia": r.get("neuronpedia")})
        tab = html_table(rows)
        # make the Neuronpedia URLs links
        for r in rows:
            if r["neuronpedia"]:
                u = _esc(r["neuronpedia"])
                tab = tab.replace(f">{u}<", f'><a href="{u}">link</a><', 1)
        out.append(tab)
        if len(s["latents"]) > max_rows:
            out.append(f'<p class="note">… and {len(s["latents"]) - max_rows} more</p>')
        out.append("</details>")
    return "".join(out)


def render_report(*, title: str, comparisons: list[dict], curves: list[dict], circuit: dict,
                  metrics: dict, groups_page: str | None) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{_esc(title)}</h1>"]
    if groups_page:
        parts.append(f'<p>Slots of this run: <a href="{_esc(groups_page)}">groups page</a>.</p>')
    parts.append("<h2>Metrics</h2>")
    flat = [{"metric": k, "value": v} for k, v in metrics.items()
            if not isinstance(v, dict | list)]
    parts.append(html_table(flat, ["metric", "value"]))
    for k, v in metrics.items():
        if isinstance(v, dict) and v and all(not isinstance(x, dict | list) for x in v.values()):
            parts.append(f"<h3>{_esc(k)}</h3>" + html_table(
                [{"key": a, "value": b} for a, b in v.items()], ["key", "value"]))
    parts.append("<h2>Comparisons</h2>")
    if comparisons and all("rows" not in c for c in comparisons):
        comparisons = [{"title": "", "rows": comparisons}]
    if not comparisons:
        parts.append('<p class="note">(no comparisons)</p>')
    for c in comparisons:
        if c.get("title"):
            parts.append(f"<h3>{_esc(c['title'])}</h3>")
        parts.append(html_table(c.get("rows", []), c.get("columns")))
        if c.get("note"):
            parts.append(f'<p class="note">{_esc(c["note"])}</p>')
    parts.append("<h2>Faithfulness against size</h2>")
    plots: dict[str, list[dict]] = {}
    for c in curves:
        plots.setdefault(str(c.get("plot", "")), []).append(c)
    if not plots:
        parts.append('<p class="note">(no curves)</p>')
    for name, cs in plots.items():
        parts.append(svg_curves(cs, title=name))
    parts.append("<h2>Circuit</h2>")
    parts.append(_circuit_html(circuit))
    parts.append("<h2>Where in depth the kept latents sit</h2>")
    depth = (circuit or {}).get("depth", {})
    if depth:
        tot = depth.get("total_per_hook", {})
        parts.append(html_table([{"SAE hook": h, "kept (slot, latent) pairs": tot.get(h, 0)}
                                 for h in depth.get("hooks", [])]))
        parts.append(svg_depth(depth))
    else:
        parts.append('<p class="note">(no circuit)</p>')
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: str | Path, *, title: str, comparisons: list[dict], curves: list[dict],
                 circuit: dict, metrics: dict, groups_page: str | None) -> Path:
    """Write the self-contained report atomically; returns its path."""
    path = Path(path)
    write_text_atomic(path, render_report(title=title, comparisons=comparisons, curves=curves,
                                          circuit=circuit, metrics=metrics,
                                          groups_page=groups_page))
    return path
