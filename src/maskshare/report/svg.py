"""Inline SVG figures for the report: F-versus-size curves and the slots x layers heat map.

Every figure has a viewBox and `width="100%"`, so it scales with the page instead of
overflowing it; text is drawn in the page's font; no scripts (tooltips are SVG <title>).
"""

from __future__ import annotations

import html
import math

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _open(w: int, h: int, label: str, cls: str = "fig", max_scale: float = 1.4) -> str:
    # width 100% of the box, but never blown up past max_scale of its natural size
    return (f'<svg class="{cls}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" '
            f'width="100%" style="max-width:{w * max_scale:.0f}px" '
            f'preserveAspectRatio="xMinYMin meet" role="img" aria-label="{_esc(label)}">')


def _log_ticks(x0: int, x1: int) -> list[float]:
    return [m * 10 ** e for e in range(x0, x1 + 1) for m in (1, 2, 5)
            if 10 ** x0 <= m * 10 ** e <= 10 ** x1]


def _nice_range(lo: float, hi: float) -> tuple[float, float, float]:
    """(step, lo, hi) with round tick steps, 4 to 10 ticks."""
    span = hi - lo
    for step in (0.1, 0.2, 0.25, 0.5, 1, 2, 2.5, 5, 10, 20, 50, 100):
        if span / step <= 8:
            break
    return step, math.floor(lo / step) * step, math.ceil(hi / step) * step


def _series(s: dict, col: str, X, Y, lx: float, ly: float) -> list[str]:
    """One method's polyline, points (with tooltips) and legend entry."""
    sw = 3.5 if s.get("main") else 2
    bold = ' font-weight="600"' if s.get("main") else ""
    out = []
    pts = sorted(p for p in s["points"] if p[0] > 0 and math.isfinite(p[1]))
    if pts:
        d = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{d}" fill="none" stroke="{col}" stroke-width="{sw}"/>')
        out += [f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="{sw + 1}" fill="{col}">'
                f'<title>{_esc(s["name"])}: {x:.3g} latents per token, F {y:.3f}</title></circle>'
                for x, y in pts]
    out.append(f'<line x1="{lx}" y1="{ly - 5}" x2="{lx + 22}" y2="{ly - 5}" stroke="{col}" '
               f'stroke-width="{sw}"/><text x="{lx + 28}" y="{ly}" font-size="13"{bold}>'
               f'{_esc(s["name"])}</text>')
    return out


def svg_curves(series: list[dict], title: str, matched: float | None = None,
               width: int = 720, height: int = 400) -> str:
    """F against latents per token (log x). `series`: [{name, main, points: [(x, y)]}]; the
    main method is drawn thicker; `matched`: a dashed vertical line at that size."""
    pts_all = [p for s in series for p in s["points"] if p[0] > 0 and math.isfinite(p[1])]
    ml, mr, mt, mb = 58, 190, 30, 46
    pw, ph = width - ml - mr, height - mt - mb
    out = [_open(width, height, title),
           f'<text x="{ml}" y="18" font-size="15" font-weight="600">{_esc(title)}</text>',
           f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="#fff" stroke="#999"/>']
    if not pts_all:
        out.append(f'<text x="{ml + 10}" y="{mt + 24}" font-size="13">no points</text></svg>')
        return "".join(out)
    xs = [math.log10(x) for x, _ in pts_all] + ([math.log10(matched)] if matched else [])
    x0, x1 = math.floor(min(xs)), math.ceil(max(xs))
    x1 = x1 if x1 > x0 else x0 + 1
    ys = [y for _, y in pts_all]
    step, y0, y1 = _nice_range(min(0.0, min(ys)), max(1.0, max(ys)))

    def X(x: float) -> float:
        return ml + (math.log10(x) - x0) / (x1 - x0) * pw

    def Y(y: float) -> float:
        return mt + (1 - (y - y0) / (y1 - y0)) * ph

    for v in _log_ticks(x0, x1):
        out.append(f'<line x1="{X(v):.1f}" y1="{mt}" x2="{X(v):.1f}" y2="{mt + ph}" '
                   f'stroke="#eee"/><text x="{X(v):.1f}" y="{mt + ph + 16}" font-size="12" '
                   f'text-anchor="middle">{v:g}</text>')
    for k in range(round((y1 - y0) / step) + 1):
        v = y0 + step * k
        out.append(f'<line x1="{ml}" y1="{Y(v):.1f}" x2="{ml + pw}" y2="{Y(v):.1f}" '
                   f'stroke="#eee"/><text x="{ml - 6}" y="{Y(v) + 4:.1f}" font-size="12" '
                   f'text-anchor="end">{v:g}</text>')
    if y0 <= 1 <= y1:
        out.append(f'<line x1="{ml}" y1="{Y(1):.1f}" x2="{ml + pw}" y2="{Y(1):.1f}" '
                   'stroke="#aaa" stroke-dasharray="4 3"/>')
    if matched:
        xm = X(matched)
        out.append(f'<line x1="{xm:.1f}" y1="{mt}" x2="{xm:.1f}" y2="{mt + ph}" stroke="#444" '
                   f'stroke-dasharray="6 4"/><text x="{xm + 4:.1f}" y="{mt + 14}" '
                   f'font-size="12" fill="#444">matched size {matched:.3g}</text>')
    out.append(f'<text x="{ml + pw / 2}" y="{height - 8}" font-size="13" text-anchor="middle">'
               'latents kept per token (log scale)</text>'
               f'<text x="16" y="{mt + ph / 2}" font-size="13" text-anchor="middle" '
               f'transform="rotate(-90 16 {mt + ph / 2})">faithfulness F</text>')
    for i, s in enumerate(series):
        out += _series(s, PALETTE[i % len(PALETTE)], X, Y, ml + pw + 12, mt + 16 + 22 * i)
    out.append("</svg>")
    return "".join(out)


def svg_heatmap(rows: list[str], cols: list[str], values: list[list[int]], label: str) -> str:
    """A heat map of counts (rows x cols), each cell labelled with its count."""
    if not rows or not cols:
        return '<p class="note">(nothing kept)</p>'
    cw, rh, ml, mt = 96, 28, 300, 24
    w, h = ml + cw * len(cols) + 10, mt + rh * len(rows) + 8
    vmax = max([v for r in values for v in r] + [1])
    out = [_open(w, h, label, cls="fig heat", max_scale=1.25)]
    for j, c in enumerate(cols):
        out.append(f'<text x="{ml + cw * j + cw / 2}" y="{mt - 8}" font-size="13" '
                   f'text-anchor="middle">{_esc(c)}</text>')
    for i, r in enumerate(rows):
        y = mt + rh * i
        txt = r if len(r) <= 44 else r[:43] + "…"
        out.append(f'<text x="{ml - 8}" y="{y + rh * 0.65:.1f}" font-size="13" '
                   f'text-anchor="end"><title>{_esc(r)}</title>{_esc(txt)}</text>')
        for j, v in enumerate(values[i]):
            a = v / vmax
            fill = f"rgb({int(255 - 215 * a)},{int(255 - 160 * a)},255)" if v else "#f7f7f7"
            ink = "#fff" if a > 0.6 else "#222"
            out.append(f'<rect x="{ml + cw * j}" y="{y}" width="{cw - 2}" height="{rh - 2}" '
                       f'fill="{fill}" stroke="#ddd"><title>{_esc(r)}, {_esc(cols[j])}: {v} '
                       f'kept</title></rect><text x="{ml + cw * j + cw / 2 - 1}" '
                       f'y="{y + rh * 0.65:.1f}" font-size="12" text-anchor="middle" '
                       f'fill="{ink}">{v or ""}</text>')
    out.append("</svg>")
    return "".join(out)
