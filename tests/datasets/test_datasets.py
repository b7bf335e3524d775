"""Dataset specs, sources, building (behaviour filter, roles, counterfactuals, splits, cache)
and the `maskshare datasets` command. Tiny random model except the real_model test."""

from __future__ import annotations

import random
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml

from maskshare.cli import main
from maskshare.config import DatasetRef
from maskshare.datasets import (
    add_spec,
    build_dataset,
    list_specs,
    load_items,
    load_spec,
    validate_items,
)
from maskshare.datasets.build import (
    pick_counterfactuals,
    resolve_answers,
    split_entities,
    token_roles,
)
from maskshare.datasets.prompts import PromptDatasetSpec
from maskshare.datasets.registry import find_spec
from maskshare.datasets.sources import check_source, load_source
from maskshare.datasets.spec import parse_spec, parse_template, render
from maskshare.errors import UserError

BUILTINS = ("elements-symbol", "authors", "code-index")

METALS = [("gold", "Au"), ("silver", "Ag"), ("copper", "Cu"), ("iron", "Fe"), ("lead", "Pb"),
          ("tin", "Sn"), ("zinc", "Zn"), ("nickel", "Ni"), ("cobalt", "Co"), ("sodium", "Na"),
          ("calcium", "Ca"), ("carbon", "C"), ("neon", "Ne"), ("argon", "Ar")]


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """Data and cache dirs in tmp (the built-in specs stay visible)."""
    data, cache = tmp_path / "data", tmp_path / "cache"
    data.mkdir()
    monkeypatch.setenv("MASKSHARE_DATA", str(data))
    monkeypatch.setenv("MASKSHARE_CACHE", str(cache))
    return data, cache


@pytest.fixture(scope="module")
def au_model():
    """A tiny random model whose top-1 next token is always ' Au' (a known behaviour)."""
    from maskshare.testing import tiny_model

    m = tiny_model(seed=0)
    au = m.tokenizer(" Au", add_special_tokens=False)["input_ids"]
    assert len(au) == 1
    with torch.no_grad():
        m.unembed.b_U[au[0]] += 1e3
    return m


def write_metals(tmp_path: Path, name: str = "metals", csv_rows=METALS, **overrides) -> Path:
    """A user's spec + CSV in a folder outside the data dir; returns the spec path."""
    src = tmp_path / "user"
    src.mkdir(exist_ok=True)
    lines = ["element,sym"] + [f"{e},{s}" for e, s in csv_rows]
    (src / f"{name}.csv").write_text("\n".join(lines) + "\n")
    spec = {
        "name": name, "description": "test metals", "source": {"table": f"{name}.csv"},
        "entity": "element", "answer": "sym",
        "templated": {"id": 0, "text": "The [[chemical symbol]] for {element} is"},
        "freeform": [
            {"id": 0, "text": "The [[chemical symbol]] for {element} is"},
            {"id": 1, "text": "Element: {element:capitalize}\n[[Symbol]]:"},
            {"id": 2, "text": "Which [[symbol]] stands for {element}? Answer:", "held_out": True},
        ],
        "split": {"test_fraction": 0.25, "seed": 1},
    }
    spec.update(overrides)
    p = src / f"{name}.yaml"
    p.write_text(yaml.safe_dump(spec, sort_keys=False))
    return p


def nothing_written(data: Path, cache: Path) -> bool:
    ds = list((data / "datasets").glob("*")) if (data / "datasets").exists() else []
    src = list((data / "sources").glob("*")) if (data / "sources").exists() else []
    built = list((cache / "datasets").glob("*")) if (cache / "datasets").exists() else []
    return not ds and not src and not built


# ------------------------------------------------------------------------------ specs


def test_builtin_specs_are_valid_and_their_sources_check():
    names = {s.name for s in list_specs()}
    assert set(BUILTINS) <= names
    assert len(names) >= 4  # plus one more element relation
    for name in names:
        spec, path = find_spec(name)
        df, h = load_source(spec, path.parent)
        check_source(spec, df)
        assert len(h) == 16
        if isinstance(spec, PromptDatasetSpec):  # rows checked as they are read
            assert df.height and spec.split.held_out_groups
            continue
        assert df[spec.entity].n_unique() == df.height
        if spec.freeform:
            assert any(p.held_out for p in spec.freeform)
    assert len(load_spec("elements-symbol").freeform) >= 10
    assert len(load_spec("authors").freeform) >= 8
    assert pl.read_csv(Path(__file__).parents[2] / "data/sources/authors.csv").height >= 200


def test_load_spec_unknown_name():
    with pytest.raises(UserError, match="unknown dataset 'nope'"):
        load_spec("nope")


@pytest.mark.parametrize("change, message", [
    ({"colour": "red"}, "Extra inputs"),
    ({"name": "Bad Name"}, "name"),
    ({"freeform": [{"id": 0, "text": "a {element}"}]}, "held_out"),
    ({"templated": {"id": 0, "text": "a {element}", "held_out": True}}, "cannot be held out"),
    ({"templated": {"id": 0, "text": "the {element:shout} x"}}, "unknown transform"),
    ({"templated": {"id": 0, "text": "the [[symbol for {element} is"}}, "markup"),
    ({"roles": {"element": "final"}}, "role"),
    ({"source": {"table": "a.csv", "generator": "elements"}}, "exactly one"),
])
def test_spec_validation_rejects(change, message):
    base = {"name": "x", "source": {"table": "a.csv"}, "entity": "element", "answer": "sym",
            "templated": {"id": 0, "text": "The symbol for {element} is"}}
    with pytest.raises(UserError, match=message):
        parse_spec({**base, **change}, source="spec.yaml")


def test_template_markup_renders_spans():
    segs = parse_template("The [[chemical symbol]] for {element:capitalize} is {{x}}")
    prompt, spans = render(segs, {"element": "gold"}, lambda ph: "subject")
    assert prompt == "The chemical symbol for Gold is {x}"
    assert [(prompt[a:b], r) for a, b, r in spans] == [("chemical symbol", "relation"),
                                                      ("Gold", "subject")]
    _, spans = render(parse_template("[[print|call]]({v})"), {"v": "x"}, lambda ph: "variable")
    assert [r for *_, r in spans] == ["call", "variable"]


# ------------------------------------------------------------------------------ roles


def test_roles_follow_spans_with_merged_spaces(tiny):
    model, _ = tiny
    tok = model.tokenizer
    prompt, spans = render(parse_template("The [[chemical symbol]] for {e} is"),
                           {"e": "praseodymium"}, lambda ph: "subject")
    ids, strs, roles = token_roles(tok, prompt, spans, bos=tok.bos_token_id)
    assert ids[0] == tok.bos_token_id and ids[1:] == tok(prompt, add_special_tokens=False)["input_ids"]
    assert "".join(strs[1:]) == prompt
    assert roles[0] == "bos" and roles[-1] == "final" and len(roles) == len(ids)
    by_role: dict[str, str] = {}
    for s, r in zip(strs[1:], roles[1:], strict=True):
        by_role[r] = by_role.get(r, "") + s
    # tokens carrying a leading space (" praseodymium") count as the word they start
    assert by_role["subject"].strip() == "praseodymium"
    assert by_role["relation"].strip() == "chemical symbol"
    assert by_role["final"] == " is"
    assert by_role["other"].replace(" ", "") == "Thefor"


def test_roles_with_trailing_space_tokens():
    """A tokenizer that attaches spaces to the end of the previous token ("The ", "gold ")."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<bos>", "The ", "chemical ", "symbol ", "for ", "gold ", "is", "go", "ld "]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<bos>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"\S+\s?"), behavior="isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>")
    prompt, spans = render(parse_template("The [[chemical symbol]] for {e} is"), {"e": "gold"},
                           lambda ph: "subject")
    ids, strs, roles = token_roles(tok, prompt, spans, bos=0)
    assert strs[1:] == ["The ", "chemical ", "symbol ", "for ", "gold ", "is"]
    assert roles == ["bos", "other", "relation", "relation", "other", "subject", "final"]


# ------------------------------------------------------------------- answers, counterfactuals


def test_shared_first_token_answers_are_dropped(tiny):
    model, _ = tiny
    tok = model.tokenizer
    spec = parse_spec({"name": "t", "source": {"table": "a.csv"}, "entity": "e", "answer": "a",
                       "templated": {"id": 0, "text": "{e} is"}}, source="t")
    df = pl.DataFrame({"e": ["carbon", "cesiumx", "gold"], "a": ["C", "Cxqz", "Au"]})
    assert tok.decode(tok(" Cxqz", add_special_tokens=False)["input_ids"][:1]) == " C"
    kept, dropped = resolve_answers(spec, df, tok, model.cfg.d_vocab)
    assert dropped == ["cesiumx"]  # " Cxqz" starts with " C", carbon's whole answer
    assert kept["e"].to_list() == ["carbon", "gold"]
    ids = dict(zip(kept["e"], kept["answer_id"], strict=True))
    assert tok.decode([ids["gold"]]) == " Au"
    # first_token mode: the answer is its first token, so nothing is ambiguous
    spec2 = spec.model_copy(update={"answer_mode": "first_token"})
    kept2, dropped2 = resolve_answers(spec2, df, tok, model.cfg.d_vocab)
    assert dropped2 == [] and kept2["answer"].to_list() == [" C", " C", " Au"]


def test_answer_must_start_with_an_emittable_token(tiny):
    model, _ = tiny
    spec = parse_spec({"name": "t", "source": {"table": "a.csv"}, "entity": "e", "answer": "a",
                       "answer_prefix": "\n", "templated": {"id": 0, "text": "{e} is"}},
                      source="t")
    df = pl.DataFrame({"e": ["gold", "silver"], "a": ["Au", "Ag"]})
    with pytest.raises(UserError, match="does not start with a token the model can emit"):
        resolve_answers(spec, df, model.tokenizer, model.cfg.d_vocab)


def test_counterfactual_never_shares_the_answer_first_token():
    rng = random.Random(0)
    ents = [f"e{i}" for i in range(200)]
    ids = [rng.randint(0, 5) for _ in ents]
    answers = [f"a{i}" for i in ids]
    cf, cf_ids = pick_counterfactuals(ents, answers, ids, seed=3)
    assert all(c != a for c, a in zip(cf_ids, ids, strict=True))
    assert all(f"a{i}" == c for c, i in zip(cf, cf_ids, strict=True))
    assert len(set(cf_ids)) > 1  # not a constant choice
    assert pick_counterfactuals(ents, answers, ids, seed=3) == (cf, cf_ids)  # seeded
    with pytest.raises(UserError, match="no counterfactual"):
        pick_counterfactuals(["a", "b"], ["x", "x"], [1, 1], seed=0)


def test_split_by_entity_is_seeded_fraction():
    ents = [f"e{i}" for i in range(100)]
    test = split_entities(ents, 0.2, seed=0)
    assert len(test) == 20 and test <= set(ents)
    assert split_entities(list(reversed(ents)), 0.2, seed=0) == test
    assert split_entities(ents, 0.2, seed=1) != test
    assert split_entities(ents, 0.0, seed=0) == set()


# -------------------------------------------------------------------------- build + cache


def test_add_build_and_use_a_new_dataset(dirs, tmp_path, au_model):
    data, cache = dirs
    spec_path = write_metals(tmp_path)
    assert main(["datasets", "add", str(spec_path)]) == 0
    added = data / "datasets" / "metals.yaml"
    assert added.is_file() and (data / "sources" / "metals.csv").is_file()
    assert "metals" in {s.name for s in list_specs()}

    built = build_dataset(DatasetRef(name="metals", variant="freeform", min_items=1), au_model,
                          progress=False)
    items = load_items(built.path)
    assert built.path.parent == cache / "datasets"
    # the model always says " Au": exactly gold's prompts pass, in every phrasing
    assert items["entity"].unique().to_list() == ["gold"]
    assert items.height == 3 and sorted(items["phrasing_id"]) == [0, 1, 2]
    assert (items["answer"] == " Au").all() and (items["counterfactual"] != " Au").all()
    assert (items["answer_prob"] > 0.99).all() and (items["logit_diff"] > 100).all()
    pt = built.pass_table
    assert pt["n_items"].to_list() == [len(METALS)] * 3 and pt["n_passed"].to_list() == [1, 1, 1]
    assert pt.filter(pl.col("held_out"))["phrasing_id"].to_list() == [2]
    held = items.filter(pl.col("phrasing_id") == 2)["split"].item()
    assert held in ("test_phrasing", "test_both")
    for row in items.iter_rows(named=True):
        assert row["tokens"][0] == au_model.tokenizer.bos_token_id
        assert row["roles"][0] == "bos" and row["roles"][-1] == "final"
        assert "subject" in row["roles"]
    # used downstream: read each prompt's own final position and get " Au" back
    with torch.no_grad():
        for toks in items["tokens"]:
            logits = au_model(torch.tensor([toks]))[0, -1]
            assert au_model.tokenizer.decode([int(logits.argmax())]) == " Au"


def test_build_is_cached_by_content(dirs, tmp_path, au_model, monkeypatch):
    data, cache = dirs
    add_spec(write_metals(tmp_path))
    ref = DatasetRef(name="metals", variant="templated", min_items=1)
    first = build_dataset(ref, au_model, progress=False)
    assert not first.cached and (first.path / "manifest.json").is_file()

    import maskshare.datasets.build as b

    def boom(*a, **k):
        raise AssertionError("scored again")

    monkeypatch.setattr(b, "score_prompts", boom)
    second = build_dataset(ref, au_model, progress=False)
    assert second.cached and second.path == first.path
    assert second.items.equals(first.items) and second.pass_table.equals(first.pass_table)
    monkeypatch.undo()
    monkeypatch.setenv("MASKSHARE_DATA", str(data))
    monkeypatch.setenv("MASKSHARE_CACHE", str(cache))
    # other variant or edited source table -> another directory
    other = build_dataset(DatasetRef(name="metals", variant="freeform", min_items=1), au_model,
                          progress=False)
    assert other.path != first.path
    csv = data / "sources" / "metals.csv"
    csv.write_text(csv.read_text().replace("tin,Sn", "tin,Sm"))
    edited = build_dataset(ref, au_model, progress=False)
    assert edited.path != first.path and not edited.cached


def test_templated_keeps_the_modal_token_length(dirs, tmp_path, au_model):
    add_spec(write_metals(tmp_path, csv_rows=METALS + [("praseodymium", "Pr")]))
    tok = au_model.tokenizer
    built = build_dataset(DatasetRef(name="metals", variant="templated", min_items=1), au_model,
                          progress=False)
    lengths = [len(tok(f"The chemical symbol for {e} is", add_special_tokens=False)["input_ids"])
               for e, _ in METALS + [("praseodymium", "Pr")]]
    top = max(map(lengths.count, lengths))
    modal = min(n for n in lengths if lengths.count(n) == top)  # ties: the shorter
    assert built.stats["modal_length"] == modal + 1  # + BOS
    assert built.stats["n_dropped_length"] == sum(n != modal for n in lengths)
    assert built.pass_table["n_items"].item() == sum(n == modal for n in lengths)
    assert built.items["tokens"].list.len().unique().to_list() == [modal + 1]


def test_too_few_items_after_filter(dirs, tmp_path, au_model):
    data, cache = dirs
    add_spec(write_metals(tmp_path))
    with pytest.raises(UserError, match="fewer than min_items=5"):
        build_dataset(DatasetRef(name="metals", variant="freeform", min_items=5), au_model,
                      progress=False)
    assert not (cache / "datasets").exists() or not any((cache / "datasets").iterdir())


def test_unknown_variant(dirs, tmp_path, au_model):
    add_spec(write_metals(tmp_path, freeform=[]))
    with pytest.raises(UserError, match="no freeform variant"):
        build_dataset(DatasetRef(name="metals", variant="freeform"), au_model, progress=False)


def test_load_items_checks_the_schema(dirs, tmp_path, au_model):
    add_spec(write_metals(tmp_path))
    built = build_dataset(DatasetRef(name="metals", variant="freeform", min_items=1), au_model,
                          progress=False)
    items = load_items(built.path)
    assert validate_items(items).columns[:3] == ["prompt_id", "prompt", "tokens"]
    bad = tmp_path / "bad.parquet"
    items.drop("roles").write_parquet(bad)
    with pytest.raises(UserError, match="missing columns"):
        load_items(bad)
    items.with_columns(pl.col("answer_id").cast(pl.Int32)).write_parquet(bad)
    with pytest.raises(UserError, match="answer_id"):
        load_items(bad)
    items.with_columns(pl.lit("val").alias("split")).write_parquet(bad)
    with pytest.raises(UserError, match="split"):
        load_items(bad)
    bad.write_bytes(b"not parquet")
    with pytest.raises(UserError, match="unreadable"):
        load_items(bad)


def test_generated_code_index_rows_are_deterministic_and_correct():
    spec = load_spec("code-index")
    df1, h1 = load_source(spec)
    df2, h2 = load_source(spec)
    assert h1 == h2 and df1.equals(df2)
    for r in df1.iter_rows(named=True):
        values = [int(v) for v in r["values"].strip("[]").split(", ")]
        i = int(r["index"])
        assert len(values) == int(r["length"])
        assert r["answer"] == (str(values[i]) if i < len(values) else "Traceback")
    assert (df1["answer"] == "Traceback").any()
    assert df1["length"].n_unique() > 1 and df1["name"].n_unique() > 1


# ------------------------------------------------------------------------- the CLI, bad input


def run_cli(args, capsys):
    rc = main(args)
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_list_and_show(dirs, capsys):
    rc, out, _ = run_cli(["datasets", "list"], capsys)
    assert rc == 0 and all(n in out for n in BUILTINS)
    rc, out, _ = run_cli(["datasets", "show", "elements-symbol"], capsys)
    assert rc == 0 and "chemical symbol" in out and "100 rows" in out
    rc, _, err = run_cli(["datasets", "show", "nope"], capsys)
    assert rc == 2 and "unknown dataset" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("case, overrides, csv_rows, message", [
    ("unknown placeholder", {"templated": {"id": 0, "text": "The symbol for {elem} is"}},
     METALS, "unknown placeholders ['elem']"),
    ("missing column", {"answer": "symbol"}, METALS, "missing columns ['symbol']"),
    ("empty answer", {}, METALS + [("mystery", "")], "empty"),
    ("blank answer", {}, METALS + [("mystery", "  ")], "empty answers"),
    ("duplicate entity", {}, METALS + [("gold", "Au")], "repeats 'gold'"),
    ("bad spec field", {"phrasing": "x"}, METALS, "Extra inputs"),
])
def test_cli_add_rejects_bad_input(dirs, tmp_path, capsys, case, overrides, csv_rows, message):
    data, cache = dirs
    spec = write_metals(tmp_path, csv_rows=csv_rows, **overrides)
    rc, _, err = run_cli(["datasets", "add", str(spec)], capsys)
    assert rc == 2, case
    assert message in err and len(err.strip().splitlines()) == 1
    assert nothing_written(data, cache)


def test_cli_add_rejects_duplicate_names(dirs, tmp_path, capsys):
    data, cache = dirs
    rc, _, _ = run_cli(["datasets", "add", str(write_metals(tmp_path))], capsys)
    assert rc == 0
    rc, _, err = run_cli(["datasets", "add", str(write_metals(tmp_path))], capsys)
    assert rc == 2 and "already exists" in err
    builtin = write_metals(tmp_path, name="elements-symbol")
    rc, _, err = run_cli(["datasets", "add", str(builtin)], capsys)
    assert rc == 2 and "'elements-symbol' already exists" in err
    assert sorted(p.name for p in (data / "datasets").iterdir()) == ["metals.yaml"]


def test_cli_add_rejects_unreadable_files(dirs, tmp_path, capsys):
    data, cache = dirs
    rc, _, err = run_cli(["datasets", "add", str(tmp_path / "missing.yaml")], capsys)
    assert rc == 2 and "cannot read" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    rc, _, err = run_cli(["datasets", "add", str(bad)], capsys)
    assert rc == 2 and "malformed YAML" in err
    bad.write_text("- just\n- a list\n")
    rc, _, err = run_cli(["datasets", "add", str(bad)], capsys)
    assert rc == 2 and "mapping" in err
    spec = write_metals(tmp_path)
    (tmp_path / "user" / "metals.csv").write_bytes(b"\xff\xfe\x00garbage\x00\n\x01")
    rc, _, err = run_cli(["datasets", "add", str(spec)], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    pq = write_metals(tmp_path, name="pq", source={"table": "pq.parquet"})
    (pq.parent / "pq.parquet").write_text("not a parquet file")
    rc, _, err = run_cli(["datasets", "add", str(pq)], capsys)
    assert rc == 2 and "unreadable table" in err
    nofile = write_metals(tmp_path, name="nofile", source={"table": "nothere.csv"})
    rc, _, err = run_cli(["datasets", "add", str(nofile)], capsys)
    assert rc == 2 and "not found" in err
    assert nothing_written(data, cache)


def test_cli_build_unknown_variant_fails_before_loading(dirs, tmp_path, capsys):
    add_spec(write_metals(tmp_path, freeform=[]))
    rc, _, err = run_cli(["datasets", "build", "metals", "--variant", "freeform"], capsys)
    assert rc == 2 and "no freeform variant" in err


def test_pass_table_format():
    from maskshare.commands.datasets import format_pass_table

    t = pl.DataFrame({"phrasing_id": [0, 1], "phrasing": ["A {x}\nB:", "C|{x}"],
                      "held_out": [False, True], "n_items": [10, 10], "n_passed": [7, 2],
                      "mean_answer_prob": [0.5, 0.1], "mean_logit_diff": [2.0, -1.0]})
    s = format_pass_table(t)
    assert "`A {x}\\nB:`" in s and "C\\|{x}" in s and "| **total** | | 20 | 9 |" in s


# ------------------------------------------------------------------------- the real model


@pytest.mark.real_model
def test_real_model_templated_elements_symbol(real_model, tmp_cache):
    built = build_dataset(DatasetRef(name="elements-symbol", variant="templated", min_items=20),
                          real_model, progress=False)
    items = built.items
    gold = items.filter(pl.col("entity") == "gold")
    assert gold.height == 1 and gold["answer"].item() == " Au"
    assert gold["prompt"].item() == "The chemical symbol for gold is"
    assert gold["answer_prob"].item() > 0.5 and gold["logit_diff"].item() > 0
    assert gold["roles"].item().to_list() == ["bos", "other", "relation", "relation", "other",
                                              "subject", "final"]
    assert built.stats["dropped_ambiguous"]  # e.g. " Cs" starts with carbon's " C"
    assert "cesium" in built.stats["dropped_ambiguous"]
    assert items["tokens"].list.len().n_unique() == 1
