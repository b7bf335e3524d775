"""Nested rows on import (field paths in `columns:` and `--column`), the `mib` and `recall`
formats, and format detection. Tiny random models only."""

from __future__ import annotations

import json
import random

import polars as pl
import pytest
import yaml
from test_prompt_datasets import au_model, run_cli, use_model, write_rows, written  # noqa: F401

from maskshare.config import DatasetRef
from maskshare.datasets import build_dataset
from maskshare.datasets.fieldpath import PathError, parse, resolve
from maskshare.datasets.formats import mib_row
from maskshare.datasets.importing import plan_import
from maskshare.errors import UserError

ROW = {"prompt": "Q", "choices": {"label": ["A", "B", "C"], "text": ["x", "y", "z"]},
       "answerKey": 1, "key_text": "2", "a.b": "literal",
       "symbol_counterfactual": {"prompt": "Q2", "choices": {"label": ["D", "E", "F"]},
                                 "answerKey": 0}}


# ---------------------------------------------------------------------------- field paths
@pytest.mark.parametrize("path, value", [
    ("prompt", "Q"), ("choices.label[answerKey]", "B"), ("choices.label[0]", "A"),
    ("choices.text[-1]", "z"), ("choices.text[key_text]", "z"), ("a.b", "literal"),
    ("symbol_counterfactual.prompt", "Q2"),
    ("symbol_counterfactual.choices.label[symbol_counterfactual.answerKey]", "D"),
])
def test_field_paths_resolve(path, value):
    assert resolve(ROW, path) == value


@pytest.mark.parametrize("path, message, missing", [
    ("symbol_counterfactual.question", "no key 'question' in 'symbol_counterfactual'", True),
    ("nope.prompt", "no key 'nope'", True),
    ("choices.label[5]", "index 5 out of range for 'choices.label' (3 items)", False),
    ("prompt.text", "'prompt' is str, not an object", False),
    ("answerKey[0]", "'answerKey' is int, not a list", False),
    ("choices.label[prompt]", "selector [prompt] is 'Q', not a list index", False),
    ("choices.label[gone]", "selector [gone] does not resolve (no key 'gone')", False),
])
def test_unresolved_paths_say_which_step_failed(path, message, missing):
    with pytest.raises(PathError) as e:
        resolve(ROW, path)
    assert message in str(e.value) and e.value.missing == missing


@pytest.mark.parametrize("bad", ["a..b", "a[", "a[]", "[0]", "a]b", "a[0]b"])
def test_malformed_paths_are_refused(bad):
    with pytest.raises(ValueError):
        parse(bad)


def nested_rows() -> list[dict]:
    metals = [("gold", " Au"), ("silver", " Ag"), ("copper", " Cu"), ("tin", " Sn")]
    rows = []
    for i, (name, _sym) in enumerate(metals):
        labels = [s for _, s in metals]
        rows.append({"q": {"text": f"The symbol for {name} is"}, "choices": {"label": labels},
                     "answerKey": i, "wrong": (i + 1) % len(metals),
                     "meta": {"kind": "metal" if i % 2 else "other"}})
    return rows


def test_import_columns_take_field_paths(dirs, tmp_path, capsys, use_model):  # noqa: F811
    data, _ = dirs
    f = write_rows(tmp_path / "nested.jsonl", nested_rows())
    rc, out, err = run_cli(["datasets", "import", str(f), "--name", "nested", "--format",
                            "prompts", "--column", "prompt=q.text",
                            "--column", "answer=choices.label[answerKey]",
                            "--column", "counterfactual=choices.label[wrong]",
                            "--column", "group=meta.kind", "--min-items", "1",
                            "--no-progress"], capsys)
    assert rc == 0, err
    rows = [json.loads(x) for x in (data / "sources" / "nested.jsonl").read_text().splitlines()]
    assert rows[0] == {"prompt": "The symbol for gold is", "answer": " Au",
                       "counterfactual": " Ag", "group": "other"}
    assert rows[3]["counterfactual"] == " Au" and rows[3]["group"] == "metal"


def test_a_path_that_does_not_resolve_exits_2_naming_row_and_path(dirs, tmp_path, capsys,
                                                                   use_model):  # noqa: F811
    data, cache = dirs
    rows = nested_rows()
    rows[2]["answerKey"] = 9
    f = write_rows(tmp_path / "nested.jsonl", rows)
    rc, out, err = run_cli(["datasets", "import", str(f), "--name", "nested", "--column",
                            "prompt=q.text", "--column", "answer=choices.label[answerKey]",
                            "--column", "counterfactual=choices.label[wrong]"], capsys)
    assert rc == 2 and out == "" and len(err) == 1, err
    assert "line 3" in err[0] and "'choices.label[answerKey]'" in err[0]
    assert "index 9 out of range" in err[0] and written(data, cache) == []
    rc, _, err = run_cli(["datasets", "import", str(f), "--name", "nested", "--column",
                          "answr=q.text"], capsys)
    assert rc == 2 and len(err) == 1 and "unknown field 'answr'" in err[0]


def test_a_spec_reads_nested_rows_through_columns(dirs, tmp_path, au_model):  # noqa: F811
    data, _ = dirs
    (data / "sources").mkdir(parents=True, exist_ok=True)
    write_rows(data / "sources" / "nest.jsonl", nested_rows())
    spec = {"kind": "prompts", "name": "nest", "source": {"table": "sources/nest.jsonl"},
            "columns": {"prompt": "q.text", "answer": "choices.label[answerKey]",
                        "counterfactual": "choices.label[wrong]", "group": "meta.kind",
                        "entity": "meta.missing"},  # an optional path may be absent: null
            "split": {"test_fraction": 0.0}}
    (data / "datasets").mkdir(parents=True, exist_ok=True)
    (data / "datasets" / "nest.yaml").write_text(yaml.safe_dump(spec))
    items = build_dataset(DatasetRef(name="nest", min_items=1), au_model, progress=False).items
    gold = items.filter(pl.col("answer") == " Au")
    assert gold.height == 1 and gold["prompt"][0] == "The symbol for gold is"
    assert gold["counterfactual"][0] == " Ag" and gold["phrasing"][0] == "other"


# ------------------------------------------------------------------------------------ mib
NAMES = ["Mary", "John", "Alice", "Bob", "Maximilian", "Tom"]


def ioi_rows() -> list[dict]:
    rows = []
    for i, io in enumerate(NAMES):
        s = NAMES[(i + 1) % len(NAMES)]
        c = NAMES[(i + 2) % len(NAMES)]
        base = f"When {io} and {s} went to the store, {{}} gave a drink to"
        rows.append({"prompt": base.format(s), "metadata": {"indirect_object": io, "subject": s,
                                                            "random_c": c},
                     "s2_io_flip_counterfactual": {"prompt": base.format(io)},
                     "abc_counterfactual": {"prompt": f"When {io} and {s} went to the store, "
                                                      f"{c} gave a drink to"}})
    return rows


def test_mib_ioi_reads_names_and_the_default_counterfactual(dirs, tmp_path, capsys,
                                                           use_model):  # noqa: F811
    data, _ = dirs
    f = write_rows(tmp_path / "ioi.jsonl", ioi_rows())
    rc, out, err = run_cli(["datasets", "import", str(f), "--name", "ioi", "--min-items", "1",
                            "--no-progress"], capsys)
    assert rc == 0, err
    assert "detected format: mib" in out and "'s2_io_flip_counterfactual', the default" in out
    rows = [json.loads(x) for x in (data / "sources" / "ioi.jsonl").read_text().splitlines()]
    assert rows[0] == {"prompt": "When Mary and John went to the store, John gave a drink to",
                       "answer": " Mary", "counterfactual": " John",
                       "counterfactual_prompt": "When Mary and John went to the store, Mary "
                                                "gave a drink to"}
    rc, out, err = run_cli(["datasets", "import", str(f), "--name", "ioi2", "--format", "mib",
                            "--counterfactual", "abc_counterfactual", "--column",
                            "entity=metadata.indirect_object", "--min-items", "1",
                            "--no-progress"], capsys)
    assert rc == 0, err
    rows = [json.loads(x) for x in (data / "sources" / "ioi2.jsonl").read_text().splitlines()]
    assert rows[0]["counterfactual_prompt"].endswith("store, Alice gave a drink to")
    assert rows[0]["entity"] == "Mary" and "detected" not in out
    assert "abc_counterfactual" in (data / "datasets" / "ioi2.yaml").read_text()


def test_mib_multiple_choice_and_arithmetic_rows():
    mc = mib_row(ROW, "symbol_counterfactual", "f: line 1")
    assert mc == {"prompt": "Q", "counterfactual_prompt": "Q2", "answer": "B",
                  "counterfactual": "D"}
    ar = mib_row({"prompt": "12+7=", "label": 19, "operator": "+",
                  "random_counterfactual": {"prompt": "31+5=", "label": 36}},
                 "random_counterfactual", "f: line 1")
    assert ar == {"prompt": "12+7=", "counterfactual_prompt": "31+5=", "answer": "19",
                  "counterfactual": "36"}
    bad = json.loads(json.dumps(ROW))
    del bad["symbol_counterfactual"]["answerKey"]
    with pytest.raises(UserError, match="line 1: field path 'symbol_counterfactual.choices.label"
                       r"\[symbol_counterfactual.answerKey\]' does not resolve"):
        mib_row(bad, "symbol_counterfactual", "f: line 1")


def test_a_bad_mib_row_exits_2_and_writes_nothing(dirs, tmp_path, capsys, use_model):  # noqa: F811
    data, cache = dirs
    rows = ioi_rows()
    del rows[3]["s2_io_flip_counterfactual"]
    f = write_rows(tmp_path / "ioi.jsonl", rows)
    rc, out, err = run_cli(["datasets", "import", str(f), "--name", "ioi"], capsys)
    assert rc == 2 and out == "" and len(err) == 1, err
    assert "line 4" in err[0] and "'s2_io_flip_counterfactual'" in err[0]
    assert written(data, cache) == []


# --------------------------------------------------------------------------------- recall
FACTS = {"capital": [("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome"),
                     ("Germany", "Berlin"), ("Japan", "Tokyo")],
         "continent": [("France", "Europe"), ("Japan", "Asia"), ("Egypt", "Africa"),
                       ("Peru", "South America"), ("Chile", "South America")]}


def recall_rows_() -> list[dict]:
    forms = {"capital": "The capital of {} is", "continent": "{} is a country in"}
    return [{"subject": s, "attribute": a, "relation_id": rel, "prompt": forms[rel].format(s)}
            for rel, facts in FACTS.items() for s, a in facts]


def _plan(path, seed=0, name="facts"):
    from maskshare.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    return plan_import(path, name, fmt="recall", seed=seed,
                       first_token=lambda t: tok(t, add_special_tokens=False)["input_ids"][0])


def test_recall_counterfactuals_differ_in_first_token_and_ignore_row_order(dirs, tmp_path):
    from maskshare.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    rows = recall_rows_()
    t = _plan(write_rows(tmp_path / "r.jsonl", rows)).table
    rel = dict(zip(t["entity"] + t["group"], t["answer"], strict=True))
    for r in t.iter_rows(named=True):
        assert r["counterfactual"] in {" " + a for _, a in FACTS[r["group"]]}
        first = [tok(x, add_special_tokens=False)["input_ids"][0]
                 for x in (r["answer"], r["counterfactual"])]
        assert first[0] != first[1]
        assert rel[r["entity"] + r["group"]] == r["answer"]
    peru = t.filter(pl.col("entity") == "Peru")
    assert peru["counterfactual"][0] != " South America"  # Chile's shares its first token
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    t2 = _plan(write_rows(tmp_path / "r2.jsonl", shuffled)).table
    assert t2.sort("prompt").equals(t.sort("prompt"))
    seeds = [_plan(write_rows(tmp_path / "r.jsonl", rows), seed=s).table["counterfactual"]
             for s in range(4)]
    assert any(not s.equals(seeds[0]) for s in seeds[1:])  # the seed matters


def test_recall_import_groups_by_relation(dirs, tmp_path, capsys, use_model):  # noqa: F811
    data, _ = dirs
    f = write_rows(tmp_path / "r.jsonl", recall_rows_())
    rc, out, err = run_cli(["datasets", "import", str(f), "--name", "facts", "--held-out-group",
                            "continent", "--min-items", "1", "--no-progress"], capsys)
    assert rc == 0, err
    assert "detected format: recall" in out and "| `continent` | yes |" in out
    rows = [json.loads(x) for x in (data / "sources" / "facts.jsonl").read_text().splitlines()]
    assert rows[0]["group"] == "capital" and rows[0]["entity"] == "France"
    assert rows[0]["answer"] == " Paris"


def test_a_relation_without_another_first_token_is_a_bad_row(dirs, tmp_path):
    rows = recall_rows_() + [{"subject": "Mars", "target": "Sol", "relation": "star",
                              "prompt": "Mars orbits"}]
    with pytest.raises(UserError, match="line 11: no other attribute of relation 'star'"):
        _plan(write_rows(tmp_path / "r.jsonl", rows))
    rows = recall_rows_()
    del rows[4]["relation_id"]
    with pytest.raises(UserError, match="line 5: missing field 'relation' or 'relation_id'"):
        _plan(write_rows(tmp_path / "r.jsonl", rows))


def test_old_formats_are_still_detected_first(tmp_path):
    from maskshare.datasets.prompts import detect_format, read_rows

    def fmt(row):
        return detect_format(read_rows(write_rows(tmp_path / "x.jsonl", [row])), "x")

    assert fmt({"prompt": "p", "answer": " a", "counterfactual": " b",
                "x_counterfactual": {}}) == "prompts"
    assert fmt({"clean_prefix": "p", "prompt": "q"}) == "clean-patch"
    assert fmt(ioi_rows()[0]) == "mib"
    assert fmt(recall_rows_()[0]) == "recall"
    assert fmt({"prompt": "p"}) == "prompts"  # and then: missing field 'answer'


# ------------------------------------------------------------------------- shipped examples
def _examples_module():
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / "scripts"))
    try:
        import make_examples
    finally:
        sys.path.remove(str(root / "scripts"))
    return root, make_examples


def test_shipped_examples_match_their_generator_and_import():
    root, gen = _examples_module()
    for name, rows in (("ioi-mib", gen.ioi_rows()), ("recall", gen.recall_rows())):
        lines = (root / "data" / "examples" / f"{name}.jsonl").read_text().splitlines()
        assert [json.loads(x) for x in lines] == rows, name
    ioi = gen.ioi_rows()
    assert 150 <= len(ioi) <= 300 and len({r["metadata"]["template"] for r in ioi}) >= 4
    for r in ioi:  # the flip swaps the second subject mention for the indirect object
        m = r["metadata"]
        head, s2, tail = r["prompt"].rpartition(m["subject"])
        assert s2 and r["prompt"].count(m["subject"]) == 2
        assert r["s2_io_flip_counterfactual"]["prompt"] == head + m["indirect_object"] + tail
        assert r["abc_counterfactual"]["prompt"] == head + m["random_c"] + tail
    # the committed import is what importing the example gives (no tokenizer needed)
    plan = plan_import(root / "data" / "examples" / "ioi-mib.jsonl", "ioi-mib", force=True,
                       columns={"group": "metadata.template"}, held_out_groups=["friends"])
    assert plan.table_bytes == (root / "data" / "sources" / "ioi-mib.jsonl").read_bytes()
    assert plan.spec_text == (root / "data" / "datasets" / "ioi-mib.yaml").read_text()


def test_shipped_recall_facts_are_consistent():
    import periodictable

    _, gen = _examples_module()
    rows = gen.recall_rows()
    assert 300 <= len(rows) <= 600
    facts: dict = {}
    for r in rows:  # one attribute per (relation, subject), every phrasing names its subject
        facts.setdefault((r["relation"], r["subject"]), set()).add(r["attribute"])
        assert r["subject"].lower() in r["prompt"].lower()
    assert all(len(v) == 1 for v in facts.values())
    by_rel: dict = {}
    for (rel, _), _v in facts.items():
        by_rel[rel] = by_rel.get(rel, 0) + 1
    assert len(by_rel) >= 5 and min(by_rel.values()) >= 20
    for (rel, subject), (attr,) in facts.items():
        if rel == "symbol":
            assert periodictable.elements.symbol(attr).name == subject.replace(
                "aluminium", "aluminum")


@pytest.mark.real_model
def test_shipped_recall_import_matches_the_committed_files():
    from pathlib import Path

    from maskshare.model.models import embedded_hf_dir, load_tokenizer

    root = Path(__file__).resolve().parents[2]
    tok = load_tokenizer(embedded_hf_dir())
    plan = plan_import(root / "data" / "examples" / "recall.jsonl", "recall", fmt="recall",
                       force=True, held_out_groups=["language"],
                       first_token=lambda t: tok(t, add_special_tokens=False)["input_ids"][0])
    assert plan.table_bytes == (root / "data" / "sources" / "recall.jsonl").read_bytes()
    assert plan.spec_text == (root / "data" / "datasets" / "recall.yaml").read_text()


def test_the_older_formats_still_write_the_committed_bytes():
    """The shipped agreement set (clean-patch) imports to the committed spec and rows."""
    root, _ = _examples_module()
    plan = plan_import(root / "data" / "examples" / "agreement.jsonl", "agreement", force=True,
                       held_out_groups=["rc"], equal_length_pairs=True)
    assert plan.format == "clean-patch" and plan.notes == ()
    assert plan.table_bytes == (root / "data" / "sources" / "agreement.jsonl").read_bytes()
    assert plan.spec_text == (root / "data" / "datasets" / "agreement.yaml").read_text()


@pytest.mark.real_model
def test_real_model_knows_the_shipped_recall_facts(dirs, capsys, real_model, monkeypatch):
    """SmolLM2 passes the logit-diff filter on nearly every shipped recall row (436 of 452
    measured), every relation included; " Paris" beats its counterfactual after "The
    capital of France is"."""
    root, _ = _examples_module()
    monkeypatch.setattr("maskshare.model.models.load_model", lambda name: real_model)
    rc, out, err = run_cli(["datasets", "import", str(root / "data" / "examples" /
                                                      "recall.jsonl"), "--name", "facts",
                            "--held-out-group", "language", "--no-progress"], capsys)
    assert rc == 0, err
    assert "detected format: recall" in out
    items = build_dataset(DatasetRef(name="facts", behaviour_filter="none"), real_model,
                          progress=False).items
    paris = items.filter(pl.col("prompt") == "The capital of France is")
    assert paris["answer"].item() == " Paris" and paris["logit_diff"].item() > 0
    passed = items.group_by("phrasing").agg((pl.col("logit_diff") > 0).mean().alias("p"))
    assert passed.height == 5 and passed["p"].min() >= 0.85, passed
