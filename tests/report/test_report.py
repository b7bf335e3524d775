"""report.html and the groups page built from a finished run's files; slot names; the
`maskshare report` command. (In a real browser: test_report_browser.py.)"""

from __future__ import annotations

import html
import html.parser
import json
import re
import shutil

import polars as pl
import pytest

from maskshare.cli import main
from maskshare.evaluation.metrics import f_at_size
from maskshare.report.groups_view import quality_html, render_html, show
from maskshare.report.page import write_report
from maskshare.report.slot_names import slot_labels


class _Checker(html.parser.HTMLParser):
    VOID = {"meta", "br", "img", "hr", "input", "link", "circle", "line", "rect", "polyline"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.tags = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> (open: {self.stack[-3:]})")
        else:
            self.stack.pop()


def _well_formed(text: str) -> _Checker:
    chk = _Checker()
    chk.feed(text)
    chk.close()
    assert chk.errors == [] and chk.stack == []
    return chk


@pytest.fixture
def run(finished_tiny_run, tmp_path):
    """A copy of the finished tiny run (the fixture's run is shared: never change it)."""
    dst = tmp_path / finished_tiny_run[1].name
    shutil.copytree(finished_tiny_run[1], dst)
    return dst


def test_report_is_rebuilt_from_the_run_files_alone_and_reads_top_down(run):
    (run / "report.html").unlink()
    text = write_report(run).read_text()
    assert text == write_report(run).read_text()  # byte-reproducible
    chk = _well_formed(text)
    assert text.startswith("<!DOCTYPE html>")
    # self-contained: no external scripts, styles, fonts or images
    assert not re.search(r"<script[^>]*\ssrc=|<link\b|@import|url\(|<img\b", text)
    metrics = json.loads((run / "metrics.json").read_text())
    order = [text.index(s) for s in ('id="headline"', 'id="curves"', 'id="comparison"',
                                     'id="details"', 'id="raw"')]
    assert order == sorted(order)
    # the headline names the dataset and its held-out splits, with the chosen circuit's F
    head = text[:order[1]]
    assert "elements-symbol (freeform)" in head and "tiny" in head
    for split, name in (("test_phrasing", "held-out phrasings"), ("test_entity",
                                                                  "held-out entities")):
        assert f"F on {name}" in head
        assert f"{metrics[f'faithfulness_{split}']:.2f}" in head
    # raw metric keys appear only at the end, folded
    assert "attention__slot-mean" not in text[:order[4]]
    assert "<details><summary>metrics.json" in text[order[4]:]
    assert "attention slots, slot-mean ablation" in text[order[2]:order[3]]
    assert chk.tags.count("svg") >= 3 and chk.tags.count("polyline") >= 4  # 2 plots + heat map
    assert 'href="groups/attention/groups.html"' in text


def test_details_say_which_torch_threads_trained_the_masks(run):
    manifests = sorted((run / "masks").glob("*/*/manifest.json"))
    threads = sorted({json.loads(p.read_text())["runtime"]["torch_threads"] for p in manifests})
    assert threads  # every mask's manifest records it
    text = write_report(run).read_text()
    details = text[text.index('id="details"'):text.index('id="raw"')]
    assert f"Masks trained with {'/'.join(map(str, threads))} torch thread" in details
    for p in manifests:  # masks from before the manifests recorded it: nothing claimed
        m = json.loads(p.read_text())
        del m["runtime"]
        p.write_text(json.dumps(m))
    assert "torch thread" not in write_report(run).read_text()


def test_headline_sentences_are_the_curves_read_at_the_matched_size(run):
    from maskshare.report.data import headline, load_run_view

    view = load_run_view(run)
    h = headline(view)
    m = view.metrics
    size, head = m["latents_per_token"], m["headline_split"]
    c = pl.read_parquet(run / "evaluate" / "curves.parquet").filter(
        (pl.col("split") == head) & (pl.col("seed") == 0)).sort("latents_per_token")

    def f(v):
        s = c.filter(pl.col("variant") == v)
        val = f_at_size(s["latents_per_token"].to_list(), s["faithfulness"].to_list(), size)
        return "not measured at this size" if val is None else f"{val:.2f}"

    grouping, ablation, *attribution = h["sentences"]
    assert grouping.startswith(f"At {size:.3g} latents per token on held-out phrasings, "
                               f"attention slots reach F {m['faithfulness']:.2f}")
    assert f"single slot {f('single__slot-mean')}" in grouping
    assert f"from-end positions {f('from-end__slot-mean')}" in grouping
    assert f"zero ablation {f('attention__zero')}" in ablation
    assert f"global-mean ablation {f('attention__global-mean')}" in ablation
    # learned masks against their attribution circuits, read off the same curves
    assert f"learned masks {f('attention__slot-mean')}, attribution patching " \
        f"{f('attention__slot-mean__atp')} and integrated gradients " \
        f"{f('attention__slot-mean__ig')}." in attribution[0]


def test_the_attribution_sentence_names_the_method_closest_to_the_full_model_per_split():
    from pathlib import Path

    from maskshare.report.data import RunView, attribution_sentences

    splits = ["test_phrasing", "test_entity", "test_both"]
    view = RunView(Path("run"), {"grouping": {"kind": "attention"},
                                 "masks": {"ablation": "slot-mean"}},
                   {"headline_split": "test_phrasing"}, pl.DataFrame({"split": splits}),
                   pl.DataFrame(), {}, None)

    def row(finder, fp, fe, fb, grouping="attention"):
        return {"grouping": grouping, "ablation": "slot-mean", "finder": finder,
                "test_phrasing": fp, "test_entity": fe, "test_both": fb}

    rows = [row("masks", 0.9, 0.5, None), row("single-slot", 1.0, 1.0, 1.0, "single"),
            row("atp", 1.3, 0.7, 0.8), row("ig", 0.902, 0.2, 0.9)]
    head, closest, unmeasured = attribution_sentences(view, rows)
    assert head.endswith("held-out phrasings: learned masks 0.90, attribution patching 1.30 "
                         "and integrated gradients 0.90.")
    # F 1.3 overshoots by 0.3: further from the full model than 0.9; 0.9 and 0.902 tie
    assert closest == ("Closest to the full model (F nearest 1) at that size: learned masks "
                       "and integrated gradients tie on held-out phrasings (by 0.20); "
                       "attribution patching on held-out entities (by 0.20).")
    assert unmeasured == "Not every method reaches that size on held-out phrasings and " \
        "entities."
    assert attribution_sentences(view, [r for r in rows if r["finder"] == "masks"]) == []


def test_circuit_listing_names_slots_ranks_by_theta_and_shows_whole_prompts(run):
    from maskshare.report.circuit import circuit_rows, masks_theta
    from maskshare.report.data import load_run_view

    view = load_run_view(run)
    theta = masks_theta(view)
    assert theta is not None
    slots = circuit_rows(view)
    assert slots and all(s["title"].startswith(f"slot {s['slot']} (") for s in slots)
    for s in slots:
        for p in s["per_sae"]:
            vals = [r["theta"] for r in p["rows"]]
            assert vals == sorted(vals, reverse=True) and p["key"] == "theta"
            assert all(v == pytest.approx(float(theta[p["hook"]][s["slot"], r["latent"]]))
                       for v, r in zip(vals, p["rows"], strict=True))
    # each top-activating example is its whole training prompt, split at the firing token
    items = pl.read_parquet(run / "dataset" / "items.parquet")
    train = items.filter(pl.col("split") == "train")["token_strs"].to_list()
    circuit = json.loads((run / "evaluate" / "circuit.json").read_text())
    tops = [t for s in circuit["slots"] for r in s["latents"] for t in r["top_tokens"]]
    assert tops
    for t in tops[:50]:
        assert t["before"] + t["token"] + t["after"] == "".join(train[t["prompt"]][1:])
    text = write_report(run).read_text()
    assert "<mark>" in text and slots[0]["title"].split(" (")[1].split(":")[0] in text


def test_slot_labels_name_the_dominant_role_and_common_tokens():
    t = pl.DataFrame({
        "slot": [0, 1, 1, 1, 1, 2, 2, 2, 2, -1],
        "role": ["bos", "subject", "subject", "subject", "relation", "relation", "other",
                 "relation", "other", "pad"],
        "token": ["<s>", "Ġhydrogen", "Ġlithium", "Ġhydrogen", "Ġis", "Ġsymbol", "Ġthe",
                  "Ġchemical", "Ġa", "x"],
        "split": ["train"] * 10})
    lab = slot_labels(t, n_tokens=2)
    assert set(lab) == {0, 1, 2}
    assert lab[0].label == "BOS"
    assert lab[1].label == "subject: hydrogen, is, …"   # 75% subject; counts, then name
    assert lab[1].role_text == "subject 75%, relation 25%"
    assert lab[2].role == "other/relation" and lab[2].label.startswith("other/relation: ")


def test_groups_page_quality_is_a_table_of_values_and_slots_are_named(run, capsys):
    d = run / "groups" / "attention"
    quality = json.loads((d / "quality.json").read_text())
    qh = quality_html(quality)
    _well_formed(qh)
    assert "{" not in qh and '"' not in re.sub(r'<[^>]*>', "", qh)  # no JSON strings
    for split, m in quality["by_split"].items():
        assert f"<td>{split}</td>" in qh
        assert f"{m['purity_roles']:.3g}" in qh
    table = pl.read_parquet(d / "tokens.parquet")
    labels = slot_labels(table)
    page = render_html(table, quality, title="groups")
    _well_formed(page)
    for lab in labels.values():
        assert html.escape(lab.label) in page
    text = show(run)
    assert all(f"slot {s} ({lab.label})" in text for s, lab in labels.items())


def test_report_command_rebuilds_and_compares_and_refuses_non_runs(run, tmp_path, capsys,
                                                                   monkeypatch):
    (run / "report.html").unlink()
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").is_file()
    out = tmp_path / "cmp" / "both.html"
    out.parent.mkdir()
    other = tmp_path / "other-run"
    shutil.copytree(run, other)
    assert main(["report", "--runs", str(run), str(other), "--out", str(out)]) == 0
    text = out.read_text()
    _well_formed(text)
    assert run.name in text and other.name in text and "Runs side by side" in text
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["report", "--runs", str(run), str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a finished run directory" in err
    assert not (tmp_path / "report-compare.html").exists()
    assert main(["report", "--runs", str(run), str(other)]) == 0
    assert (tmp_path / "report-compare.html").is_file()
