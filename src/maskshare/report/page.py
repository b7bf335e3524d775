"""The run's `report.html`, built from the run directory's files alone (`write_report(run)`),
and a page comparing runs side by side (`write_comparison(runs, out)`).

One self-contained page (inline CSS and SVG, one inline script that opens folded sections
for printing; no network, no fonts), top to bottom: the headline (dataset, model, the chosen
circuit's size and F on each held-out split, one sentence each on grouping and ablation at
matched size), the F-versus-size plots with the matched size marked, the comparison table
with readable method names, then details (the circuit per split, where it sits in depth,
its latents, the slots, every lambda, the config) and the raw metrics, folded. It reads well
from 1,000 to 1,600 px wide: wide tables scroll inside their own box, figures scale.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import polars as pl
import yaml

from maskshare.artifacts import write_text_atomic
from maskshare.evaluation.selection import SMALLEST, UNFIT
from maskshare.report.circuit import circuit_html, depth_figure
from maskshare.report.data import (
    RunView,
    comparison_rows,
    headline,
    load_run_view,
    mask_threads,
    matched_f,
    method_name,
    plot_series,
    variants,
)
from maskshare.report.svg import svg_curves
from maskshare.run.layout import RunLayout

REPORT = "report.html"

CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0 auto;
max-width:1400px;color:#222;line-height:1.45;padding:1em 1.5em 3em}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.2em;border-bottom:1px solid #ddd;
padding-bottom:.2em;margin-top:1.8em}h3{font-size:1.05em;margin:1.2em 0 .4em}h4{margin:.9em 0 .3em}
.sub{color:#555;margin:.1em 0 .6em;overflow-wrap:anywhere}
.headline{background:#f6f8fb;border:1px solid #dde3ec;border-radius:6px;padding:.6em 1em}
.cards{display:flex;flex-wrap:wrap;gap:.5em 2.2em;margin:.2em 0 .4em}
.card .v{font-size:1.6em;font-weight:600}.card .k{color:#555;font-size:.88em}
.headline p{margin:.3em 0}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:1em}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right;vertical-align:top}
th{background:#f3f3f3}td.l,th.l{text-align:left}tr.main td{font-weight:600;background:#fbfbf0}
table.latents td.l{min-width:22em;max-width:60em}td.l:first-child{min-width:11em}
.ex{white-space:normal;overflow-wrap:anywhere;margin:.1em 0}.ctx{color:#555}
mark{background:#ffe08a;padding:0 .1em;border-radius:2px}
.note{color:#666;font-size:.9em;overflow-wrap:anywhere}.muted{color:#999}
details{margin:.4em 0}summary{cursor:pointer}details.slot{border-left:3px solid #dde3ec;
padding-left:.6em}
code{background:#f5f5f5;padding:0 .2em;overflow-wrap:anywhere}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.85em}
svg.fig{display:block;height:auto;margin:.3em 0}svg text{font-family:inherit}
@media print{body{max-width:none;padding:0;font-size:11pt}.plots{display:block}
details,details.slot{border:0}summary{list-style:none}.scroll{overflow:visible}
h2{break-after:avoid}svg.fig{break-inside:avoid}a{color:inherit}}
@media print{details::details-content{content-visibility:visible;display:block}}
"""

# folded sections open for printing (a closed <details> prints as its summary only)
SCRIPT = ("window.addEventListener('beforeprint',function(){"
          "document.querySelectorAll('details').forEach(function(d){d.open=true;});});")


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _g(v) -> str:
    return "–" if v is None else f"{v:g}"


def _fmt(v, nd: int = 3) -> str:
    """A cell: floats with `nd` decimals below 10 (F reads as 0.940, not 0.94 or 1)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return '<span class="muted">–</span>'
    if isinstance(v, bool) or not isinstance(v, int | float):
        return _esc(v)
    if isinstance(v, int):
        return f"{v:,}"
    v = v + 0.0  # no "-0.000"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.{nd}f}"


def html_table(rows: list[dict], columns: list[str] | None = None,
               headers: dict[str, str] | None = None, main_key: str | None = None) -> str:
    """A table in its own scroll box; string cells left-aligned; `main_key` rows bold."""
    if not rows:
        return '<p class="note">(no rows)</p>'
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    headers = headers or {}
    head = "".join(f'<th class="{"l" if i == 0 else ""}">{_esc(headers.get(c, c))}</th>'
                   for i, c in enumerate(columns))
    body = []
    for r in rows:
        cells = "".join(f'<td{" class=l" if i == 0 or isinstance(r.get(c), str) else ""}>'
                        f"{_fmt(r.get(c))}</td>" for i, c in enumerate(columns))
        body.append(f'<tr{" class=main" if main_key and r.get(main_key) else ""}>{cells}</tr>')
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _page(title: str, body: list[str]) -> str:
    return "\n".join(["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                      '<meta name="viewport" content="width=device-width, initial-scale=1">',
                      f"<title>{_esc(title)}</title><style>{CSS}</style>",
                      f"<script>{SCRIPT}</script></head><body>", *body, "</body></html>", ""])


# ----------------------------------------------------------------------------- sections
def headline_html(view: RunView) -> str:
    h = headline(view)
    cards = [(_fmt(h["latents_per_token"], 1), "latents per token"),
             (_fmt(h["circuit_size"]), "(slot, SAE, latent) triples"),
             (_fmt(h["distinct_latents"]), "distinct latents")]
    cards += [(_fmt(f, 2), f"F on {name} ({n} prompt{'' if n == 1 else 's'})")
              for _, name, f, n in h["splits"]]
    cards.append((_fmt(h["completeness"], 2), "completeness (low is good)"))
    cards_html = "".join(f'<div class="card"><div class="v">{v}</div><div class="k">{_esc(k)}'
                         "</div></div>" for v, k in cards)
    sents = "".join(f"<p>{_esc(s)}</p>" for s in [*h["sentences"], *own_text(view.metrics)])
    return (f'<h1 id="headline">{_esc(h["dataset"])} on {_esc(h["model"])}</h1>'
            f'<p class="sub">{_esc(h["method"])} · {_esc(h["saes"])} · λ {_g(h["lambda"])} '
            f'({_esc(chosen_text(view.metrics))}) · SAE error term {_esc(h["error_term"])} · '
            f'run <code>{_esc(view.run.name)}</code></p>'
            f'<div class="headline"><div class="cards">{cards_html}</div>{sents}'
            f'<p class="note">F: faithfulness against the model with every SAE spliced in '
            f'(1 = the full model\'s logit difference, 0 = every latent ablated); against the '
            f'clean model: {_fmt(h["faithfulness_vs_clean"], 2)} on '
            f'{_esc(h["headline_split_name"])}.</p></div>')


def own_text(metrics: dict) -> list[str]:
    """The sentence saying what every circuit of the run holds beyond its learned latents
    (metrics.json `own_latents`: `evaluate.own_latents`), or nothing."""
    own = metrics.get("own_latents")
    if not own:
        return []
    roles = ", ".join(own["roles"])

    def num(v) -> str:
        return "n/a" if v is None else f"{v:.1f}"
    which = ("whose values there in that prompt's clean pass are farthest from what the "
             "ablation would set them to" if own.get("by") == "deviation" else
             "most active there in that prompt's clean pass")
    return [f"Every circuit here is its learned latents plus the subject's own: at each "
            f"prompt's tokens of role {roles}, the {own['k']} latents per SAE {which} "
            f"(evaluate.own_latents; ablated in the complement). "
            f"They add {num(metrics.get('own_latents_per_token'))} of the chosen circuit's "
            f"{num(metrics.get('latents_per_token'))} latents per token; the listing below "
            "shows the learned part."]


def chosen_text(metrics: dict) -> str:
    """How the circuit was chosen: the rule, the split and the F there (metrics.json
    `selection`); runs without it chose on the training prompts."""
    sel = metrics.get("selection")
    if not sel:
        return "chosen on training prompts"
    where = {"validation": "validation prompts", "train": "training prompts"}.get(
        sel["split"], f"{sel['split']}, a held-out split (a peek: not a held-out figure)")
    f, n, t = _fmt(sel.get("faithfulness"), 2), sel.get("n_prompts"), sel["target_f"]
    refused = sel.get("refused_below_train_floor") or []
    why = (f"; {len(refused)} other circuit(s) reaching it (λ "
           f"{', '.join(f'{x:.3g}' for x in refused)}) were refused: F below "
           f"{sel.get('train_floor'):g} on their own training prompts" if refused else "")
    if sel["rule"] == SMALLEST:
        return (f"chosen on {where}: the smallest circuit with F ≥ {t:g} there, F {f} on {n} "
                f"prompts{why}")
    if sel["rule"] == UNFIT:
        return (f"chosen on {where}: the smallest circuit with F ≥ {t:g} there, F {f} on {n} "
                f"prompts; every circuit reaching it has F below {sel.get('train_floor'):g} on "
                "its own training prompts (a fit failure: read the curves with care)")
    return f"chosen on {where}: none reaches F {t:g} there, the best F, {f} on {n} prompts"


def plots_html(view: RunView) -> str:
    plots = plot_series(view)
    if not plots:
        return '<p class="note">(no curves)</p>'
    size = view.metrics.get("latents_per_token")
    head = view.split_name(view.metrics.get("headline_split") or "")
    figs = "".join(f'<div id="plot-{i}">{svg_curves(p["series"], p["title"], size)}</div>'
                   for i, p in enumerate(plots))
    attr = ""
    if any(p["title"].startswith("Learned masks and attribution") for p in plots):
        steps = (view.config.get("attribution") or {}).get("ig_steps", 10)
        attr = (" Attribution: the top (slot, SAE, latent) triples by attribution patching "
                f"or integrated gradients ({steps} steps) with the run's ablation as "
                "reference, one circuit at each learned mask's size on the training prompts "
                "and one each below and above the sweep.")
    return (f'<div class="plots">{figs}</div><p class="note">F on {_esc(head)} against '
            "circuit size over the λ sweep; the dashed line is the chosen circuit's size, "
            f"where the table below reads each curve.{_esc(attr)}</p>")


def verdicts_html(view: RunView) -> str:
    """Per held-out split, who leads at matched size and by how much (metrics.json
    `verdicts`, maskshare.evaluation.verdicts); below the first plot, so the headline and the
    plot stay on the first screen."""
    verdicts = view.metrics.get("verdicts") or []
    if not verdicts:
        return ""
    return ('<p><b>At matched size, per held-out split</b> (closer to F = 1 leads):</p>'
            '<ul class="verdicts">' + "".join(f"<li>{_esc(v)}</li>" for v in verdicts)
            + "</ul>")


def comparison_html(view: RunView) -> str:
    rows = comparison_rows(view)
    size = view.metrics.get("latents_per_token")
    cols = ["method", *view.heldout, "curve area", "best F"]
    at = f" at {size:.3g} latents/token" if size else ""
    headers = {s: f"F on {view.split_name(s)}{at}" for s in view.heldout}
    headers["curve area"] = "curve area (log size)"
    headers["best F"] = f"best F on {view.split_name(view.metrics.get('headline_split', ''))}"
    return (html_table(rows, cols, headers, main_key="main") +
            '<p class="note">F read off each method\'s F-versus-size curve at the chosen '
            "circuit's size on the headline split (linear in log size; – where the curve does "
            "not reach it). Bold: the main method; on the other splits its row is read off its "
            "curve too, so it can differ from the chosen circuit's F there (latents per token "
            "differ between splits).</p>")


def per_split_rows(view: RunView) -> list[dict]:
    c = view.curves
    lam = view.metrics.get("lambda")
    if not c.height or lam is None:
        return []
    sel = c.filter((pl.col("variant") == view.main_variant) & (pl.col("lambda") == lam)
                   & (pl.col("seed") == view.seed))
    return [{"split": view.split_name(r["split"]), "prompts": r.get("n_prompts"),
             "F": r.get("faithfulness"), "F vs clean": r.get("faithfulness_vs_clean"),
             "completeness": r.get("completeness"), "latents/token": r.get("latents_per_token"),
             "triples": r.get("circuit_size"), "distinct latents": r.get("distinct_latents")}
            for r in sel.iter_rows(named=True)]


def slots_html(view: RunView) -> str:
    labels = view.labels.get(view.main_grouping, {})
    layout = RunLayout(view.run)
    q = layout.groups_page(view.main_grouping)
    link = (f'<p>Every prompt coloured by slot: <a href="{_esc(layout.relative(q))}">groups '
            'page</a>.</p>') if q.is_file() else ""
    rows = [{"slot": s, "name": lab.label, "roles": lab.role_text,
             "distinct tokens": lab.n_tokens} for s, lab in sorted(labels.items())]
    return link + html_table(rows, headers={"roles": "roles (share of training tokens)"})


def all_lambdas_html(view: RunView) -> str:
    c = view.curves
    if not c.height:
        return '<p class="note">(no rows)</p>'
    rows = [{"method": method_name(r["grouping"], r["ablation"], r.get("finder")),
             "λ": r["lambda"],
             "seed": r["seed"], "split": view.split_name(r["split"]),
             "F": r["faithfulness"], "F vs clean": r.get("faithfulness_vs_clean"),
             "completeness": r.get("completeness"), "latents/token": r["latents_per_token"],
             "triples": r.get("circuit_size"), "prompts": r.get("n_prompts")}
            for r in c.sort("variant", "split", "lambda", "seed", maintain_order=True)
            .iter_rows(named=True)]
    return html_table(rows)


def render_report(view: RunView) -> str:
    m = view.metrics
    stab = ""
    if m.get("stability_jaccard") is not None:
        stab = (f"<p>Stability across the first two seeds (Jaccard overlap of kept triples / "
                f"of distinct latents): {_fmt(m['stability_jaccard'], 2)} / "
                f"{_fmt(m.get('stability_jaccard_latents'), 2)}.</p>")
    threads = mask_threads(view.run)
    if threads:
        n = "/".join(map(str, threads))
        stab += (f"<p>Masks trained with {n} torch thread{'' if threads == [1] else 's'}. "
                 "A rebuild with another thread count, or on a CPU with other vector kernels, "
                 "is not bit-identical: float sums split differently; in one measured rebuild "
                 "of the default most points moved by ~0.1 F and its densest mask by 0.4 "
                 "(docs/selection.md).</p>")
    raw = html_table([{"metric": k, "value": v if not isinstance(v, dict | list)
                       else json.dumps(v, default=str)} for k, v in sorted(m.items())])
    body = [headline_html(view),
            '<h2 id="curves">Faithfulness against size</h2>', plots_html(view),
            '<h2 id="comparison">Methods at matched size</h2>', verdicts_html(view),
            comparison_html(view),
            '<h2 id="details">Details</h2>',
            "<h3>The chosen circuit on every split</h3>", html_table(per_split_rows(view)),
            stab, "<h3>Where the circuit sits in depth</h3>", depth_figure(view),
            "<h3>The circuit, latent by latent</h3>", circuit_html(view),
            f"<h3>Slots of the {_esc(view.main_grouping)} grouping</h3>", slots_html(view),
            "<details><summary>Every method at every λ, on every split</summary>",
            all_lambdas_html(view), "</details>",
            "<details><summary>Run configuration (config.yaml)</summary>"
            f"<pre>{_esc(yaml.safe_dump(view.config, sort_keys=False))}</pre></details>",
            '<h2 id="raw">Raw metrics</h2>',
            f"<details><summary>metrics.json ({len(m)} keys)</summary>{raw}</details>"]
    return _page(f"maskshare: {headline(view)['dataset']} — {view.run.name}", body)


def write_report(run: str | Path) -> Path:
    """(Re)build RUN/report.html from the run directory's files; returns its path."""
    view = load_run_view(run)
    path = view.run / REPORT
    write_text_atomic(path, render_report(view))
    return path


# ----------------------------------------------------------------------------- comparison
def compare_rows(views: list[RunView]) -> list[tuple[str, list[str]]]:
    """(row label, one cell per run) for the side-by-side page."""
    hs = [headline(v) for v in views]
    rows = [(k, [_g(h[key]) if key == "lambda" else _fmt(h[key], nd) for h in hs])
            for k, key, nd in (
        ("dataset", "dataset", 3), ("model", "model", 3), ("SAEs", "saes", 3),
        ("method", "method", 3), ("λ", "lambda", 3), ("SAE error term", "error_term", 3),
        ("latents per token", "latents_per_token", 3), ("triples", "circuit_size", 3),
        ("distinct latents", "distinct_latents", 3),
        ("F vs clean model (headline split)", "faithfulness_vs_clean", 3),
        ("completeness", "completeness", 3))]
    splits = list(dict.fromkeys(s for v in views for s in v.heldout))
    for s in splits:
        rows.append((f"F on {views[0].split_name(s)}",
                     [_fmt(v.metrics.get(f"faithfulness_{s}")) for v in views]))
    seen: list[tuple[str, str, str, str]] = []
    for v in views:
        seen += [m for m in variants(v) if m not in seen]
    for name, g, a, f in seen:
        rows.append((f"{method_name(g, a, f)}: F at matched size",
                     [_fmt(matched_f(v, name, v.metrics.get("headline_split")))
                      for v in views]))
    rows.append(("run", [f"<code>{_esc(v.run.name)}</code>" for v in views]))
    return rows


def render_comparison(views: list[RunView]) -> str:
    head = "".join(f"<th>{_esc(headline(v)['dataset'])}<br>{_esc(v.config.get('model'))}</th>"
                   for v in views)
    body = "".join(f'<tr><td class="l">{_esc(k)}</td>{"".join(f"<td>{c}</td>" for c in cells)}'
                   "</tr>" for k, cells in compare_rows(views))
    sentences = "".join(f"<h3>{_esc(headline(v)['dataset'])}, <code>{_esc(v.run.name)}</code>"
                        f"</h3>" + "".join(f"<p>{_esc(s)}</p>" for s in headline(v)["sentences"])
                        for v in views)
    figs = "".join(f"<div>{svg_curves(p['series'], f'{v.run.name}: ' + p['title'], v.metrics.get('latents_per_token'))}</div>"  # noqa: E501
                   for v in views for p in plot_series(v)[:1])
    return _page("maskshare: runs side by side", [
        '<h1 id="headline">Runs side by side</h1>',
        f'<div class="scroll"><table><thead><tr><th class="l"></th>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>",
        '<p class="note">F against each run\'s model with its SAEs spliced in, on its headline '
        "split; matched size: each run's chosen circuit.</p>",
        f'<div class="headline">{sentences}</div>',
        f'<h2>Faithfulness against size</h2><div class="plots">{figs}</div>'])


def write_comparison(runs: list[str | Path], out: str | Path) -> Path:
    views = [load_run_view(r) for r in runs]  # UserError on a non-run directory: nothing written
    out = Path(out)
    write_text_atomic(out, render_comparison(views))
    return out
