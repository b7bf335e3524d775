"""Look at a grouping: the `RUN/groups/<kind>/` folder, a text table and an HTML page.

`write_group_artifacts(out_dir, grouping, assignment, items, features_2d, quality)`
writes, atomically (the folder appears complete or not at all):

- `grouping.json`, `grouping.safetensors`: the fitted grouping (`load_grouping`)
- `tokens.parquet`: one row per token: prompt_id, position, from_end, token_id, token,
  slot, slot_name, role, split, distance (to the assigned centroid; NaN where none), x, y
  (2-D projection of the features; NaN when not given)
- `quality.json`: `grouping_quality(...)` plus anything the caller adds
- `groups.html`: the self-contained page of `render_html`
- `manifest.json`: file hashes (`maskshare.artifacts`)
"""

from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from maskshare.artifacts import building, write_json_atomic, write_manifest, write_text_atomic
from maskshare.config import GroupingKind
from maskshare.errors import UserError
from maskshare.grouping import Assignment, Grouping, grouping_quality, load_grouping
from maskshare.report.slot_names import display_token, slot_labels
from maskshare.run.layout import RunLayout

TOKENS = "tokens.parquet"
QUALITY = "quality.json"
HTML = "groups.html"
MAX_SCATTER = 4000


def tokens_table(grouping: Grouping, assignment: Assignment, items,
                 features_2d: np.ndarray | None = None) -> pl.DataFrame:
    """Every token of `items` with its slot (the `tokens.parquet` table)."""
    toks = [list(t) for t in items["tokens"].to_list()]
    n = sum(len(t) for t in toks)
    strs = items["token_strs"].to_list() if "token_strs" in items.columns else \
        [[str(x) for x in t] for t in toks]
    roles = items["roles"].to_list() if "roles" in items.columns else [[""] * len(t) for t in toks]
    splits = items["split"].to_list() if "split" in items.columns else [""] * len(toks)
    pids = [int(x) for x in items["prompt_id"].to_list()] if "prompt_id" in items.columns \
        else list(range(len(toks)))
    slots = assignment.flat_slots()
    if len(slots) != n:
        raise ValueError(f"the assignment has {len(slots)} tokens, the items {n}")
    xy = np.full((n, 2), np.nan) if features_2d is None else np.asarray(features_2d, float)
    if xy.shape != (n, 2):
        raise ValueError(f"features_2d has shape {xy.shape}, expected ({n}, 2)")
    names = grouping.slot_names
    return pl.DataFrame({
        "prompt_id": np.repeat(pids, [len(t) for t in toks]).astype(np.int64),
        "position": np.concatenate([np.arange(len(t)) for t in toks]).astype(np.int64),
        "from_end": np.concatenate([np.arange(len(t))[::-1] for t in toks]).astype(np.int64),
        "token_id": np.concatenate([np.asarray(t, dtype=np.int64) for t in toks]),
        "token": [s for ss in strs for s in ss],
        "slot": slots.astype(np.int64),
        "slot_name": [names[s] if 0 <= s < len(names) else "?" for s in slots.tolist()],
        "role": [r for rs in roles for r in rs],
        "split": [sp for sp, t in zip(splits, toks, strict=True) for _ in t],
        "distance": assignment.flat_distance().astype(np.float64),
        "x": xy[:, 0], "y": xy[:, 1],
    })


def write_group_artifacts(out_dir: str | Path, grouping: Grouping, assignment: Assignment,
                          items, features_2d: np.ndarray | None = None,
                          quality: dict[str, Any] | None = None,
                          manifest: dict[str, Any] | None = None) -> Path:
    """Write the `RUN/groups/<kind>/` folder atomically (replacing an older one).

    `features_2d` [n_tokens, 2] defaults to `assignment.features_2d` (the attention
    grouping fills it); `quality` defaults to `grouping_quality(grouping, assignment, items)`.
    """
    out_dir = Path(out_dir)
    if features_2d is None:
        features_2d = assignment.features_2d
    if quality is None:
        quality = grouping_quality(grouping, assignment, items)
    with building(out_dir, replace=True) as tmp:
        grouping.save(tmp)
        table = tokens_table(grouping, assignment, items, features_2d)
        table.write_parquet(tmp / TOKENS)
        write_json_atomic(tmp / QUALITY, quality)
        write_text_atomic(tmp / HTML, render_html(table, quality, grouping.slot_names,
                                                  title=f"groups: {grouping.kind}"))
        write_manifest(tmp, config=grouping.cfg.model_dump(mode="json"), seed=grouping.seed,
                       extra=manifest or {})
    return out_dir


def read_group_dir(path: str | Path, kind: str = "attention") -> tuple[Path, pl.DataFrame, dict]:
    """Find `RUN/groups/<kind>/` (or accept that folder itself) and read its table."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p} does not exist")
    layout = RunLayout(p)
    if (p / TOKENS).is_file():
        d = p
    elif kind in GroupingKind.names():
        d = layout.groups(kind)
    else:
        raise UserError(f"unknown grouping kind {kind!r}; use one of: "
                        + ", ".join(GroupingKind.names()))
    if not (d / TOKENS).is_file():
        root = layout.groups_root
        have = sorted(x.name for x in root.iterdir() if x.is_dir()
                      and not x.name.startswith(".")) if root.is_dir() else []
        hint = f" (this run has: {', '.join(have)}; pick one with --kind)" if have else \
            " (is it a run directory?)"
        raise UserError(f"{d} holds no groups{hint}")
    quality = json.loads((d / QUALITY).read_text()) if (d / QUALITY).is_file() else {}
    return d, pl.read_parquet(d / TOKENS), quality


def _slot_names(d: Path, table: pl.DataFrame) -> list[str]:
    try:
        return load_grouping(d).slot_names
    except UserError:
        n = int(table["slot"].max()) + 1
        return [str(i) for i in range(n)]


def slot_summary(table: pl.DataFrame, n_tokens: int = 6, n_examples: int = 3) -> list[dict]:
    """One dict per slot: size, top tokens, roles, mean position from the end, examples."""
    out = []
    real = table.filter(pl.col("slot") >= 0)
    labels = slot_labels(table)
    for slot in sorted(set(real["slot"].to_list())):
        sub = real.filter(pl.col("slot") == slot)
        pids = list(dict.fromkeys(sub["prompt_id"].to_list()))[:n_examples]
        examples = []
        for pid in pids:
            pr = real.filter(pl.col("prompt_id") == pid).sort("position")
            examples.append("".join(f"[[{t}]]" if s == slot else t for t, s in
                                    zip(_show(pr["token"].to_list()), pr["slot"].to_list(), strict=True)))
        out.append({
            "slot": int(slot), "name": sub["slot_name"][0] if "slot_name" in sub.columns else "",
            "label": labels[int(slot)].label if int(slot) in labels else "",
            "size": sub.height,
            "tokens": Counter(_show(sub["token"].to_list())).most_common(n_tokens),
            "roles": Counter(sub["role"].to_list()).most_common(),
            "mean_from_end": float(sub["from_end"].mean()),
            "examples": examples,
        })
    return out


def _show(tokens: list[str]) -> list[str]:
    """Byte-level BPE display: 'Ġ' -> space, 'Ċ' -> newline mark."""
    return [display_token(t) for t in tokens]


def format_table(summary: list[dict], quality: dict) -> str:
    lines = []
    q = {k: v for k, v in quality.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if q:
        lines.append("quality: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else
                                             f"{k}={v}" for k, v in sorted(q.items())))
    for sp, m in sorted(quality.get("by_split", {}).items()):
        lines.append(f"  {sp}: " + ", ".join(f"{k}={v:.3g}" for k, v in sorted(m.items())
                                             if isinstance(v, float)))
    for s in summary:
        lines.append("")
        lines.append(f"slot {s['slot']} ({s['label'] or s['name']}): {s['size']} tokens, "
                     f"mean position from end {s['mean_from_end']:.2f}")
        lines.append("  tokens: " + ", ".join(f"{t!r}x{c}" for t, c in s["tokens"]))
        lines.append("  roles:  " + ", ".join(f"{r}:{c}" for r, c in s["roles"]))
        for e in s["examples"]:
            lines.append("  e.g.   " + e.replace("\n", "\\n"))
    return "\n".join(lines)


# --------------------------------------------------------------------------- html

def _colour(i: int) -> str:
    if i < 0:
        return "#dddddd"
    if i == 0:
        return "#bbbbbb"
    hue = (i * 137.508) % 360
    return f"hsl({hue:.0f},70%,{72 if i % 2 else 60}%)"


def _scatter(table: pl.DataFrame, by: str, colours: dict, title: str) -> str:
    t = table.filter(pl.col("x").is_not_nan() & pl.col("y").is_not_nan() & (pl.col("slot") > 0))
    if t.height == 0:
        return f"<p><em>{html.escape(title)}: no 2-D projection stored</em></p>"
    if t.height > MAX_SCATTER:
        t = t.sample(MAX_SCATTER, seed=0)
    w, h, m = 460, 360, 20
    x, y = t["x"].to_numpy(), t["y"].to_numpy()
    x0, x1, y0, y1 = x.min(), x.max(), y.min(), y.max()
    sx = (w - 2 * m) / ((x1 - x0) or 1)
    sy = (h - 2 * m) / ((y1 - y0) or 1)
    pts = []
    for xi, yi, key, tok, pos in zip(x, y, t[by].to_list(), t["token"].to_list(),
                                      t["position"].to_list(), strict=True):
        pts.append(f'<circle cx="{m + (xi - x0) * sx:.1f}" cy="{h - m - (yi - y0) * sy:.1f}" '
                   f'r="2.5" fill="{colours.get(key, "#999")}" fill-opacity="0.7">'
                   f"<title>{html.escape(f'{by} {key}: {_show([tok])[0]!r} @{pos}')}</title>"
                   "</circle>")
    legend = " ".join(f'<span class="chip" style="background:{c}">{html.escape(str(k))}</span>'
                      for k, c in colours.items() if k in set(t[by].to_list()))
    return (f'<div class="plot"><h3>{html.escape(title)}</h3><svg width="100%" '
            f'viewBox="0 0 {w} {h}" xmlns="http://www.w3.org/2000/svg">'
            f'<rect width="{w}" height="{h}" fill="#fafafa" stroke="#ccc"/>{"".join(pts)}</svg>'
            f"<div>{legend}</div></div>")


def _value(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return html.escape(str(v))
    if isinstance(v, float):
        return f"{v:.3g}" if v == v else "–"
    if isinstance(v, list):
        return html.escape(", ".join(map(str, v)))
    return html.escape(str(v))


def quality_html(quality: dict) -> str:
    """The grouping's quality as tables: scalar values, then one row per split (by_split)
    and any other nested dict as rows of their own."""
    esc = html.escape
    flat = {k: v for k, v in quality.items() if not isinstance(v, dict)}
    out = ['<div class="scroll"><h3>measures</h3><table><tr><th>measure</th><th>value</th></tr>'
           + "".join(f"<tr><td>{esc(k)}</td><td class=n>{_value(v)}</td></tr>"
                     for k, v in sorted(flat.items())) + "</table></div>"]
    for k, sub in sorted((k, v) for k, v in quality.items() if isinstance(v, dict)):
        if sub and all(isinstance(x, dict) for x in sub.values()):
            cols = list(dict.fromkeys(c for x in sub.values() for c in x))
            head = "".join(f"<th>{esc(c)}</th>" for c in cols)
            body = "".join(f"<tr><td>{esc(r)}</td>" + "".join(
                f"<td class=n>{_value(x.get(c))}</td>" for c in cols) + "</tr>"
                for r, x in sub.items())
            out.append(f'<div class="scroll"><h3>{esc(k)}</h3><table><tr><th></th>{head}</tr>'
                       f"{body}</table></div>")
        else:
            out.append(f'<div class="scroll"><h3>{esc(k)}</h3><table>' + "".join(
                f"<tr><td>{esc(str(a))}</td><td class=n>{_value(b)}</td></tr>"
                for a, b in sub.items()) + "</table></div>")
    return f'<div class="quality">{"".join(out)}</div>'


CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,sans-serif;margin:0 auto;padding:1em 1.5em 3em;max-width:1400px;
color:#222;line-height:1.4}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;margin-top:1.6em}
.scroll{overflow-x:auto;max-width:100%}h3{font-size:1em;margin:.4em 0 0}
.quality{display:flex;flex-wrap:wrap;gap:0 2.5em;align-items:flex-start}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 6px;
vertical-align:top;font-size:13px;text-align:left}th{background:#f3f3f3}td.n{text-align:right}
td.ex{min-width:24em;overflow-wrap:anywhere}
.chip{display:inline-block;padding:0 5px;border-radius:3px;margin:1px;font-size:12px}
.t{white-space:pre-wrap;border-radius:2px;padding:1px 0;margin-right:1px;font-family:monospace}
.p{margin:3px 0;overflow-wrap:anywhere}.pid{color:#888;font-size:11px;display:inline-block;
width:9em}.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(380px,1fr));gap:1em}
.plot svg{width:100%;height:auto;max-width:600px}
@media print{body{max-width:none;padding:0}.scroll{overflow:visible}}
"""


def render_html(table: pl.DataFrame, quality: dict, slot_names: list[str] | None = None,
                title: str = "groups") -> str:
    """A self-contained page: quality, per-slot table, 2-D scatters, every prompt coloured.
    Slots are named by what they hold (`slot_names.slot_labels`); `slot_names` (the
    grouping's own, e.g. "c3") are shown beside them."""
    esc = html.escape
    n = int(table["slot"].max()) + 1 if table.height else 0
    slot_names = slot_names or [str(i) for i in range(n)]
    labels = slot_labels(table)
    slot_col = {i: _colour(i) for i in range(n)}
    roles = sorted(set(table["role"].to_list()))
    role_col = {r: _colour(i + 1) for i, r in enumerate(roles)}
    rows = []
    for s in slot_summary(table):
        rows.append(
            f'<tr><td><span class="chip" style="background:{slot_col[s["slot"]]}">'
            f'{s["slot"]}</span> {esc(s["label"] or s["name"])}</td><td>{esc(s["name"])}</td>'
            f'<td class=n>{s["size"]}</td>'
            f"<td>{esc(', '.join(f'{t!r}×{c}' for t, c in s['tokens']))}</td>"
            f"<td>{esc(', '.join(f'{r}:{c}' for r, c in s['roles']))}</td>"
            f'<td class=n>{s["mean_from_end"]:.2f}</td>'
            f"<td class=ex>{'<br>'.join(esc(e) for e in s['examples'])}</td></tr>")
    prompts = []
    for (pid,), pr in table.sort("prompt_id", "position").group_by("prompt_id",
                                                                   maintain_order=True):
        spans = []
        for tok, slot, role, dist in zip(_show(pr["token"].to_list()), pr["slot"].to_list(),
                                         pr["role"].to_list(), pr["distance"].to_list(), strict=True):
            d = "" if dist is None or dist != dist else f", distance {dist:.2f}"
            name = labels[slot].label if slot in labels else \
                (slot_names[slot] if 0 <= slot < len(slot_names) else "?")
            spans.append(f'<span class="t" style="background:{slot_col.get(slot, "#eee")}" '
                         f'title="slot {slot} ({esc(name)}), role {esc(role)}{d}">'
                         f"{esc(tok)}</span>")
        split = pr["split"][0] if "split" in pr.columns else ""
        prompts.append(f'<div class="p"><span class="pid">{pid} {esc(str(split))}</span>'
                       f'{"".join(spans)}</div>')
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style>
</head><body>
<h1 id="headline">{esc(title)}</h1>
<h2>Quality</h2>{quality_html(quality)}
<h2>Slots</h2><p>Each slot named by its dominant role (share of its training tokens) and its most
common tokens.</p>
<div class="scroll"><table><tr><th>slot</th><th>fitted as</th><th>size</th>
<th>most common tokens</th><th>roles</th><th>mean position from end</th>
<th>examples ([[slot tokens]])</th></tr>{"".join(rows)}</table></div>
<h2>2-D projection of the features (PCA)</h2><div class="plots">
{_scatter(table, "slot", slot_col, "coloured by slot")}
{_scatter(table, "role", role_col, "coloured by role")}</div>
<h2>Prompts</h2><p>Hover a token for its slot and role.</p>
{"".join(prompts)}
</body></html>
"""


def show(path: str | Path, kind: str = "attention", html_file: str | Path | None = None) -> str:
    """The text table of `RUN/groups/<kind>/`; with `html_file`, also write the page."""
    d, table, quality = read_group_dir(path, kind)
    names = _slot_names(d, table)
    if html_file is not None:
        write_text_atomic(html_file, render_html(table, quality, names, title=f"groups: {d}"))
    return format_table(slot_summary(table), quality)
