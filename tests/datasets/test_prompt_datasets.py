"""Prompt datasets (`kind: prompts`): `maskshare datasets import`, the behaviour filters,
splits with held-out groups, first-token scoring, specs named by path, `datasets add` keeping
the spec's bytes, and eval's single extra-field warning. Tiny random models only."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml

from maskshare.cli import main
from maskshare.config import DatasetRef, parse_config
from maskshare.datasets import build_dataset, load_items
from maskshare.datasets.build import build_key
from maskshare.datasets.prompt_build import assign_splits
from maskshare.datasets.prompts import FIELDS, roles_note
from maskshare.datasets.registry import add_spec, find_spec
from maskshare.datasets.spec import parse_spec

# " Au", " Ag", " Cu", " Sn", " Pb", " Zn" are single tokens of the tiny tokenizer
METALS = [("gold", "Au"), ("silver", "Ag"), ("copper", "Cu"), ("tin", "Sn"), ("lead", "Pb"),
          ("zinc", "Zn")]
FORMS = {"statement": "The symbol for {} is", "question": "Which symbol stands for {}?",
         "list": "Metals and symbols: {} ="}


@pytest.fixture(scope="module")
def au_model():
    """A tiny random model whose top-1 next token is always ' Au'."""
    from maskshare.testing import tiny_model

    m = tiny_model(seed=0)
    au = m.tokenizer(" Au", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        m.unembed.b_U[au[0]] += 1e3
    return m


@pytest.fixture
def use_model(monkeypatch, au_model):
    monkeypatch.setattr("maskshare.model.models.load_model", lambda name: au_model)
    return au_model


def clean_patch_rows() -> list[dict]:
    rows = []
    for case, form in FORMS.items():
        for i, (name, sym) in enumerate(METALS):
            other = METALS[(i + 1) % len(METALS)]
            rows.append({"clean_prefix": form.format(name), "clean_answer": f" {sym}",
                         "patch_prefix": form.format(other[0]), "patch_answer": f" {other[1]}",
                         "case": case})
    return rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".json":
        path.write_text(json.dumps(rows, indent=1))
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        df = pl.DataFrame(rows)
        df.write_csv(path) if path.suffix == ".csv" else df.write_parquet(path)
    return path


def run_cli(argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, [ln for ln in out.err.splitlines() if ln.strip()]


def written(data: Path, cache: Path) -> list[str]:
    return sorted(str(p.relative_to(p.parents[1])) for d in (data, cache) if d.exists()
                  for p in d.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------- import
@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet"])
def test_import_clean_patch_in_every_file_format(dirs, tmp_path, capsys, use_model, suffix):
    data, cache = dirs
    f = write_rows(tmp_path / f"pairs{suffix}", clean_patch_rows())
    rc, out, err = run_cli(["datasets", "import", str(f), "--name", "pairs",
                            "--held-out-group", "list", "--min-items", "1", "--no-progress"],
                           capsys)
    assert rc == 0, err
    spec_file, table = data / "datasets" / "pairs.yaml", data / "sources" / "pairs.jsonl"
    assert spec_file.is_file() and table.is_file()
    assert "| `list` | yes |" in out and "behaviour filter: logit-diff" in out
    spec, _ = find_spec("pairs")
    assert spec.kind == "prompts" and spec.split.held_out_groups == ["list"]
    lines = [json.loads(x) for x in table.read_text().splitlines()]
    assert len(lines) == 18 and set(lines[0]) <= set(FIELDS)
    assert lines[0]["prompt"] == "The symbol for gold is" and lines[0]["group"] == "statement"
    assert lines[0]["counterfactual_prompt"] == "The symbol for silver is"
    built = build_dataset(DatasetRef(name="pairs", min_items=1), use_model, progress=False)
    assert built.cached  # the import's own build: same table bytes -> same key
    items = load_items(built.path)
    assert set(items["phrasing"]) <= set(FORMS) and (items["variant"] == "freeform").all()
    gid = dict(zip(items["phrasing"], items["phrasing_id"], strict=True))
    assert all(gid[g] == i for i, g in enumerate(sorted(gid)))
    assert items.schema["counterfactual_tokens"] == pl.List(pl.Int64)
    for r in items.iter_rows(named=True):
        assert r["counterfactual_tokens"][0] == r["tokens"][0]  # BOS first
        assert (r["split"] in ("test_phrasing", "test_both")) == (r["phrasing"] == "list")
    # the model always says " Au": the logit-diff filter keeps every gold prompt
    gold = items.filter(pl.col("answer") == " Au")
    assert gold.height == 3 and (gold["logit_diff"] > 0).all()


def test_import_writes_the_same_bytes_twice(dirs, tmp_path, capsys, use_model):
    data, _ = dirs
    f = write_rows(tmp_path / "p.json", clean_patch_rows())
    args = ["datasets", "import", str(f), "--name", "p", "--min-items", "1", "--no-progress"]
    assert run_cli(args, capsys)[0] == 0
    first = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    assert run_cli([*args, "--force"], capsys)[0] == 0
    assert {p: p.read_bytes() for p in data.rglob("*") if p.is_file()} == first


def test_auto_detects_the_format_from_the_keys(dirs, tmp_path, capsys, use_model):
    data, cache = dirs
    rows = [{"prompt": f"The symbol for {n} is", "answer": f" {s}", "counterfactual": " Au"
             if s != "Au" else " Ag", "group": "g1" if i % 2 else "g2", "entity": n, "id": i}
            for i, (n, s) in enumerate(METALS)]
    f = write_rows(tmp_path / "eval-style.jsonl", rows)
    rc, out, _ = run_cli(["datasets", "import", str(f), "--name", "mine", "--min-items", "1",
                          "--no-progress"], capsys)
    assert rc == 0 and "(prompts format)" in out
    items = build_dataset(DatasetRef(name="mine", min_items=1), use_model, progress=False).items
    gold = items.filter(pl.col("entity") == "gold")
    assert gold.height == 1 and "subject" in gold["roles"][0]  # the entity's tokens
    f2 = write_rows(tmp_path / "other.jsonl", [{"question": "x", "reply": " Au"}])
    rc, _, err = run_cli(["datasets", "import", str(f2), "--name", "other"], capsys)
    assert rc == 2 and len(err) == 1 and "cannot tell the format" in err[0]


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet"])
@pytest.mark.parametrize("case, change, message", [
    ("missing field", lambda r: r.pop("clean_answer"), "missing field 'clean_answer'"),
    ("empty answer", lambda r: r.update(clean_answer=" "), "empty 'clean_answer'"),
    ("non-string", lambda r: r.update(patch_answer=7), "'patch_answer' must be a string"),
    ("same answer", lambda r: r.update(patch_answer=r["clean_answer"]), "equals the answer"),
])
def test_a_bad_row_exits_2_naming_it_and_writes_nothing(dirs, tmp_path, capsys, use_model,
                                                        suffix, case, change, message):
    data, cache = dirs
    rows = clean_patch_rows()
    change(rows[2])
    if suffix in (".csv", ".parquet") and case == "non-string":
        pytest.skip("CSV cells are text; parquet columns have one type")
    if suffix in (".csv", ".parquet") and case == "missing field":
        rows[2]["clean_answer"] = None  # a table row has every column: an empty cell
    f = write_rows(tmp_path / f"bad{suffix}", rows)
    rc, out, err = run_cli(["datasets", "import", str(f), "--name", "bad"], capsys)
    where = "line 3" if suffix == ".jsonl" else "row 3"
    assert rc == 2 and out == "" and len(err) == 1, err
    assert where in err[0] and message in err[0] and str(f) in err[0]
    assert written(data, cache) == []


def test_malformed_json_and_unknown_groups_write_nothing(dirs, tmp_path, capsys, use_model):
    data, cache = dirs
    f = tmp_path / "broken.jsonl"
    f.write_text(json.dumps(clean_patch_rows()[0]) + "\n{oops\n")
    rc, _, err = run_cli(["datasets", "import", str(f), "--name", "broken"], capsys)
    assert rc == 2 and len(err) == 1 and "line 2: malformed JSON" in err[0]
    f = write_rows(tmp_path / "ok.json", clean_patch_rows())
    rc, _, err = run_cli(["datasets", "import", str(f), "--name", "ok", "--held-out-group",
                          "nope"], capsys)
    assert rc == 2 and len(err) == 1 and "held-out group(s) ['nope']" in err[0]
    rc, _, err = run_cli(["datasets", "import", str(f), "--name", "Bad Name"], capsys)
    assert rc == 2 and len(err) == 1 and "--name" in err[0]
    assert written(data, cache) == []


def test_an_existing_name_needs_force(dirs, tmp_path, capsys, use_model):
    data, _ = dirs
    f = write_rows(tmp_path / "p.json", clean_patch_rows())
    base = ["datasets", "import", str(f), "--min-items", "1", "--no-progress"]
    assert run_cli([*base, "--name", "p"], capsys)[0] == 0
    g = write_rows(tmp_path / "q.json", clean_patch_rows()[:9])
    rc, _, err = run_cli(["datasets", "import", str(g), "--name", "p"], capsys)
    assert rc == 2 and len(err) == 1 and "already exists" in err[0] and "--force" in err[0]
    assert len((data / "sources" / "p.jsonl").read_text().splitlines()) == 18
    rc, _, err = run_cli(["datasets", "import", str(g), "--name", "elements-symbol"], capsys)
    assert rc == 2 and "already exists" in err[0]  # built-in names too
    assert run_cli(["datasets", "import", str(g), "--name", "p", "--force", "--min-items", "1",
                    "--no-progress"], capsys)[0] == 0
    assert len((data / "sources" / "p.jsonl").read_text().splitlines()) == 9


def test_too_few_passing_items_writes_no_dataset(dirs, tmp_path, capsys, use_model):
    data, _ = dirs
    f = write_rows(tmp_path / "p.json", clean_patch_rows())
    rc, out, err = run_cli(["datasets", "import", str(f), "--name", "p", "--no-progress",
                            "--min-items", "500"], capsys)
    assert rc == 2 and "min_items=500" in err[-1] and "| **total** |" in out
    assert not (data / "datasets").exists() and not (data / "sources").exists()


# ------------------------------------------------------------------------------- filters
def write_prompt_spec(tmp_path: Path, rows: list[dict], name: str = "ps", **spec) -> Path:
    write_rows(tmp_path / f"{name}.jsonl", rows)
    body = {"kind": "prompts", "name": name, "source": {"table": f"{name}.jsonl"},
            "split": {"test_fraction": 0.0}, **spec}
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(body, sort_keys=False))
    return p


def test_logit_diff_and_top1_filters_keep_what_they_say(dirs, tmp_path, au_model, monkeypatch):
    monkeypatch.setenv("MASKSHARE_BF16", "none")  # float32 scores: `every` is exact
    syms = ["Au", "Ag", "Cu", "Sn", "Pb", "Zn"]
    rows = [{"prompt": f"The symbol for {n} is", "answer": f" {a}", "counterfactual": f" {c}"}
            for n, _ in METALS for a in syms for c in syms if a != c]
    spec = write_prompt_spec(tmp_path, rows, filter={"kind": "logit-diff", "margin": 0.5})
    ref = {"name": str(spec), "min_items": 1}
    every = build_dataset(DatasetRef(**ref, behaviour_filter="none"), au_model, progress=False)
    top1 = build_dataset(DatasetRef(**ref, behaviour_filter="top1"), au_model, progress=False)
    ld = build_dataset(DatasetRef(**ref), au_model, progress=False)  # the spec's default
    assert every.items.height == len(rows) == every.stats["n_scored"]
    key = ["prompt", "answer", "counterfactual"]
    want_ld = every.items.filter(pl.col("logit_diff") > 0.5).select(key)
    assert ld.items.select(key).sort(key).equals(want_ld.sort(key))
    assert set(top1.items["answer"]) == {" Au"} and top1.items.height == len(METALS) * 5
    assert set(ld.items["answer"]) > {" Au"}  # other answers beat their counterfactuals too
    assert (ld.pass_table["filter"] == "logit-diff").all() and ld.stats["margin"] == 0.5
    assert (top1.pass_table["filter"] == "top1").all()
    assert len({every.path, top1.path, ld.path}) == 3


def test_template_filter_default_keeps_build_keys_and_run_hashes():
    spec, _ = find_spec("elements-symbol")
    k = build_key(spec, "h", "m", "freeform", None, True)
    assert k == build_key(spec, "h", "m", "freeform", None, "top1")
    assert build_key(spec, "h", "m", "freeform", None, False) == build_key(
        spec, "h", "m", "freeform", None, "none")
    assert build_key(spec, "h", "m", "freeform", None, "logit-diff") != k
    cfg = parse_config({"dataset": {"name": "elements-symbol"}})
    assert cfg.dataset.model_dump(mode="json")["behaviour_filter"] is True
    assert parse_config({"dataset": {"behaviour_filter": "logit-diff"}}).dataset.behaviour_filter \
        == "logit-diff"
    assert parse_config({"dataset": {"behaviour_filter": False}}).dataset.behaviour_filter is False
    assert "kind" not in parse_spec({**yaml.safe_load(Path(find_spec("authors")[1]).read_text()),
                                     "kind": "template"}, source="x").model_dump()


# ------------------------------------------------------------------------------- splits
def test_splits_hold_out_groups_and_never_put_a_prompt_on_both_sides():
    rows = []
    for g in ("a", "b", "c"):
        for i in range(40):
            # prompts repeat across groups and rows: "p{i % 25}" in every group
            rows.append({"prompt": f"p{i % 25}", "answer": " x", "counterfactual": " y",
                         "counterfactual_prompt": None, "group": g,
                         "entity": None, "id": None})
    df = pl.DataFrame(rows, schema={f: pl.String for f in FIELDS})
    splits = assign_splits(df, 0.2, 3, ["c"])
    sides: dict[str, set[str]] = {}
    for p, s in zip(df["prompt"], splits, strict=True):
        sides.setdefault(p, set()).add(s == "train")
    assert all(len(v) == 1 for v in sides.values())
    by = pl.DataFrame({"group": df["group"], "split": splits})
    assert set(by.filter(pl.col("group") == "c")["split"]) <= {"test_phrasing", "test_both"}
    assert set(by.filter(pl.col("group") != "c")["split"]) <= {"train", "test_entity"}
    # every prompt text also sits in the held-out group, so none can stay in training
    assert "train" not in splits
    assert splits == assign_splits(df, 0.2, 3, ["c"])  # seeded


def test_splits_by_entity_keep_an_entitys_rows_together():
    rows = [{"prompt": f"q{g}{e}", "answer": " x", "counterfactual": " y",
             "counterfactual_prompt": None, "group": g, "entity": f"e{e}", "id": None}
            for g in ("a", "b") for e in range(20)]
    df = pl.DataFrame(rows, schema={f: pl.String for f in FIELDS})
    splits = assign_splits(df, 0.25, 0, ["b"])
    test_ents = {e for e, s in zip(df["entity"], splits, strict=True)
                 if s in ("test_entity", "test_both")}
    assert len(test_ents) == 5
    for e, g, s in zip(df["entity"], df["group"], splits, strict=True):
        held = g == "b"
        assert s == {(False, False): "train", (True, False): "test_entity",
                     (False, True): "test_phrasing", (True, True): "test_both"}[
            (e in test_ents, held)]


def test_multi_token_answers_use_the_first_token_and_shared_ones_are_dropped(dirs, tmp_path,
                                                                             au_model):
    tok = au_model.tokenizer
    rows = [{"prompt": "The symbol for gold is", "answer": " Au Ag", "counterfactual": " Cu",
             "group": "g"},
            {"prompt": "The symbol for tin is", "answer": " Au Ag", "counterfactual": " Au",
             "group": "g"},
            {"prompt": "The symbol for lead is", "answer": " Sn", "counterfactual": " Sn Au",
             "group": "h"},
            {"prompt": "The symbol for zinc is", "answer": " Zn", "counterfactual": " Au",
             "group": "h"}]
    assert len(tok(" Au Ag", add_special_tokens=False)["input_ids"]) == 2
    spec = write_prompt_spec(tmp_path, rows)
    built = build_dataset(DatasetRef(name=str(spec), min_items=1, behaviour_filter="none"),
                          au_model, progress=False)
    items = built.items
    assert items.height == 2 and built.stats["n_dropped"] == 2
    assert built.stats["dropped"] == {"answer and counterfactual share their first token": 2}
    gold = items.filter(pl.col("entity") == "row1")
    au = tok(" Au", add_special_tokens=False)["input_ids"][0]
    assert gold["answer"].item() == " Au Ag" and gold["answer_id"].item() == au
    assert built.pass_table.select("phrasing", "n_items", "n_dropped").rows() == [
        ("g", 1, 1), ("h", 1, 1)]


def test_exact_repeats_are_kept_once(dirs, tmp_path, au_model):
    row = {"prompt": "The symbol for gold is", "answer": " Au", "counterfactual": " Ag"}
    spec = write_prompt_spec(tmp_path, [row, row, {**row, "counterfactual": " Cu"}])
    built = build_dataset(DatasetRef(name=str(spec), min_items=1), au_model, progress=False)
    assert built.items.height == 2 and built.stats["n_duplicates"] == 1


# ------------------------------------------------------------------------------- specs
def test_a_run_config_names_a_spec_by_path(dirs, tmp_path, au_model, monkeypatch):
    rows = [{"prompt": f"The symbol for {n} is", "answer": f" {s}", "counterfactual": " Ag"
             if s == "Au" else " Au", "group": "a" if i % 2 else "b"}
            for i, (n, s) in enumerate(METALS)]
    spec = write_prompt_spec(tmp_path, rows, split={"held_out_groups": ["b"]})
    cfg = parse_config({"dataset": {"name": str(spec), "variant": "freeform", "min_items": 1}})
    built = build_dataset(cfg.dataset, au_model, progress=False)
    assert built.spec.name == "ps" and built.items.height >= 1
    monkeypatch.chdir(tmp_path)
    assert find_spec("ps.yaml")[1] == Path("ps.yaml")  # relative to the working directory
    rc = main(["datasets", "show", "nothere/x.yaml"])
    assert rc == 2


def test_datasets_add_keeps_the_spec_as_written(dirs, tmp_path, capsys):
    data, _ = dirs
    rows = [{"prompt": "The symbol for gold is", "answer": " Au", "counterfactual": " Ag"}]
    write_rows(tmp_path / "mine.jsonl", rows)
    text = ("# Provenance: written by hand from the 2024 survey, rows 1-40.\n"
            "kind: prompts\nname: mine   # the short name\n"
            "source:\n  table: mine.jsonl   # beside this file\n"
            "filter: {kind: top1}\n")
    (tmp_path / "mine.yaml").write_text(text)
    dest = add_spec(tmp_path / "mine.yaml")
    assert (data / "sources" / "mine.jsonl").is_file()
    want = text.replace("table: mine.jsonl", 'table: "sources/mine.jsonl"')
    assert dest.read_text() == want  # comments kept; only the table path repointed
    assert find_spec("mine")[0].filter.kind == "top1"
    # a spec whose table the data dir already holds is copied byte for byte
    (data / "sources" / "tmpl.csv").write_text("element,sym\ngold,Au\nsilver,Ag\n")
    tmpl = ("# a template spec, comments kept\nname: tmpl\nsource: {table: sources/tmpl.csv}\n"
            "entity: element\nanswer: sym\n"
            "templated: {id: 0, text: 'The symbol for {element} is'}   # the only one\n")
    (tmp_path / "tmpl.yaml").write_text(tmpl)
    assert add_spec(tmp_path / "tmpl.yaml").read_text() == tmpl


def test_roles_grouping_note_for_prompt_datasets(tmp_path):
    spec = parse_spec({"kind": "prompts", "name": "x", "source": {"table": "x.jsonl"}},
                      source="x")
    assert "no labelled spans" in roles_note(spec, ["attention", "roles"])
    assert roles_note(spec, ["attention", "single"]) is None
    assert roles_note(find_spec("authors")[0], ["roles"]) is None


# ------------------------------------------------------------------------------- eval
def test_eval_warns_once_about_extra_fields(tmp_path, caplog):
    from maskshare.evaluation.apply import read_prompts

    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"p{i}", "answer": " Au", "id": i,
                                     "phrasing": "q"}) + "\n" for i in range(5)))
    with caplog.at_level(logging.WARNING, logger="maskshare.evaluation.apply"):
        prompts, skipped = read_prompts(f)
    assert len(prompts) == 5 and not skipped
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "'id', 'phrasing'" in warnings[0] and "on 5 line(s)" in warnings[0]


# ------------------------------------------------------------------------------- a run
@pytest.mark.slow
def test_a_tiny_run_on_an_imported_prompt_dataset(dirs, tmp_path, capsys, monkeypatch):
    """The pipeline takes a prompt dataset unchanged: import, then a run naming the spec by
    path, headline on the held-out group."""
    from maskshare.config import load_config
    from maskshare.stages.pipeline import run_pipeline
    from maskshare.testing import write_tiny_run_setup

    data, _ = dirs
    rows = []
    for case, form in FORMS.items():
        for name, sym in METALS * 4:
            rows.append({"prompt": form.format(name) + " " * (len(rows) % 4), "answer": f" {sym}",
                         "counterfactual": " Ag" if sym == "Au" else " Au", "group": case,
                         "entity": name})
    f = write_rows(tmp_path / "metals.jsonl", rows)
    assert run_cli(["datasets", "import", str(f), "--name", "metals", "--held-out-group",
                    "list", "--min-items", "1", "--no-progress", "--model", "tiny"],
                   capsys)[0] == 0
    monkeypatch.setenv("MASKSHARE_THREADS", "1")
    cfg_path = write_tiny_run_setup(tmp_path / "run", dataset=str(data / "datasets" /
                                                                  "metals.yaml"))
    run = run_pipeline(load_config(cfg_path))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["headline_split"] == "test_phrasing"
    items = load_items(run / "dataset")
    assert set(items.filter(pl.col("phrasing") == "list")["split"]) <= {"test_phrasing",
                                                                         "test_both"}


# ------------------------------------------------------------------------------- shipped data
def test_shipped_prompt_datasets_match_their_generator_and_vary():
    import sys

    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / "scripts"))
    try:
        import make_prompt_datasets as gen
    finally:
        sys.path.remove(str(root / "scripts"))
    for name, rows in (("element-questions", gen.element_rows()),
                       ("bibliography", gen.bibliography_rows())):
        spec, path = find_spec(name)
        table = root / "data" / "sources" / f"{name}.jsonl"
        assert [json.loads(x) for x in table.read_text().splitlines()] == rows, name
        groups = {r["group"] for r in rows}
        assert set(spec.split.held_out_groups) < groups
        for r in rows:  # counterfactuals start with another token than the answer
            assert r["answer"][:2] != r["counterfactual"][:2]
    el = gen.element_rows()
    assert len(el) >= 150 and len({r["group"] for r in el}) >= 4
    # written, not templated: with the element's name masked, almost every prompt differs
    shapes = {r["prompt"].lower().replace(r["entity"], "X") for r in el}
    assert len(shapes) >= 0.9 * len(el)


@pytest.mark.real_model
def test_real_model_agreement_pairs_pass_the_logit_diff_filter(dirs, tmp_path, capsys,
                                                               real_model, monkeypatch):
    """SmolLM2 prefers " are" after "The teachers near the desk" (and " is" after the
    singular): the clean/patch pairs pass the default filter; top1 is reported alongside."""
    monkeypatch.setattr("maskshare.model.models.load_model", lambda name: real_model)
    rows = []
    for noun in ("teacher", "doctor", "farmer", "pilot", "nurse", "baker"):
        for plural in (True, False):
            a, b = (f"{noun}s", noun) if plural else (noun, f"{noun}s")
            rows.append({"clean_prefix": f"The {a} near the desk",
                         "clean_answer": " are" if plural else " is",
                         "patch_prefix": f"The {b} near the desk",
                         "patch_answer": " is" if plural else " are",
                         "case": "plural" if plural else "singular"})
    f = write_rows(tmp_path / "agreement.json", rows)
    rc, out, err = run_cli(["datasets", "import", str(f), "--name", "agreement-pairs",
                            "--held-out-group", "singular", "--min-items", "1",
                            "--no-progress"], capsys)
    assert rc == 0, err
    items = build_dataset(DatasetRef(name="agreement-pairs", min_items=1,
                                     behaviour_filter="none"),
                          real_model, progress=False).items
    teachers = items.filter(pl.col("prompt") == "The teachers near the desk")
    assert teachers["answer"].item() == " are" and teachers["logit_diff"].item() > 0
    assert (items["logit_diff"] > 0).mean() >= 0.75


def test_bf16_filter_keeps_exactly_what_float32_keeps(dirs, tmp_path, au_model, monkeypatch):
    """The bfloat16 filter rescores in float32 every prompt near the threshold: the same items
    pass as in float32, and each kept item's stored logit_diff is above the margin."""
    syms = ["Au", "Ag", "Cu", "Sn", "Pb", "Zn"]
    rows = [{"prompt": f"The symbol for {n} is", "answer": f" {a}", "counterfactual": f" {c}"}
            for n, _ in METALS for a in syms for c in syms if a != c]
    spec = write_prompt_spec(tmp_path, rows, filter={"kind": "logit-diff", "margin": 0.5})
    key = ["prompt", "answer", "counterfactual"]
    for filt in ("logit-diff", "top1"):
        ref = DatasetRef(name=str(spec), min_items=1, behaviour_filter=filt)
        monkeypatch.setenv("MASKSHARE_BF16", "filter")
        bf = build_dataset(ref, au_model, progress=False)
        monkeypatch.setenv("MASKSHARE_BF16", "none")
        fp = build_dataset(ref, au_model, progress=False)
        assert bf.path != fp.path and bf.stats["scoring"]["dtype"] == "bfloat16"
        assert "scoring" not in fp.stats  # float32 builds keep their manifests and keys
        assert bf.items.select(key).sort(key).equals(fp.items.select(key).sort(key))
        if filt == "logit-diff":
            assert (bf.items["logit_diff"] > 0.5).all()
