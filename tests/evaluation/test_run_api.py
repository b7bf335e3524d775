"""The notebook API (`maskshare.open_run`) against the CLI on a finished tiny run: the
circuit table against the run's own circuit listing and `maskshare export`, `evaluate`
against `maskshare eval --json`, `slots` against eval's per-prompt slots, `applied` against
the evaluated circuit's logit differences, and the example in docs/api.md, executed."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import polars as pl
import pytest
import torch

import maskshare
from maskshare.cli import main
from maskshare.config import Ablation
from maskshare.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_dir(finished_tiny_run):
    return finished_tiny_run[1]


@pytest.fixture(scope="module")
def run(run_dir):
    return maskshare.open_run(run_dir)


@pytest.fixture(scope="module")
def prompts(run_dir):
    """Held-out prompts of the run, as eval's prompt rows (the first token's text as the
    counterfactual)."""
    from maskshare.testing import tiny_tokenizer

    items = pl.read_parquet(run_dir / "dataset" / "items.parquet")
    items = items.filter(pl.col("split") != "train").sort("prompt_id").head(6)
    tok = tiny_tokenizer()
    return [{"prompt": p, "answer": a, "counterfactual": tok.decode([int(c)])}
            for p, a, c in zip(items["prompt"], items["answer"], items["counterfactual_id"],
                               strict=True)]


def cli(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, [ln for ln in out.err.splitlines() if ln.strip()]


def test_circuit_is_the_runs_circuit_listing_with_theta(run, run_dir):
    df = run.circuit()
    assert df.columns[:9] == ["slot", "slot_name", "hook", "layer", "latent", "theta",
                              "mean_activation", "neuronpedia", "n_slot_tokens"]
    listing = json.loads((run_dir / "evaluate" / "circuit.json").read_text())
    want = {(s["slot"], r["hook"], r["latent"]): r["mean_activation"]
            for s in listing["slots"] for r in s["latents"]}
    got = {(r["slot"], r["hook"], r["latent"]): r["mean_activation"]
           for r in df.iter_rows(named=True)}
    assert want and got.keys() == want.keys()
    assert all(abs(got[k] - want[k]) < 1e-6 for k in want)
    assert (df["theta"] > 0).all() and (df["slot"] > 0).all()
    assert df.height == listing["triples"]
    labels = run.slot_labels()
    assert all(r["slot_name"] == labels[r["slot"]].label for r in df.iter_rows(named=True))


def test_export_prints_the_api_tables(run, run_dir, capsys, tmp_path):
    code, out, err = cli(["export", str(run_dir)], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["schema"] == "maskshare-circuit/1" and doc["variant"] == run.resolve()[1].name
    assert doc["latents"] == json.loads(run.circuit().write_json())
    assert [s["slot"] for s in doc["slots"]] == list(range(doc["n_slots"]))
    assert sum(s["n_kept"] for s in doc["slots"]) == doc["n_latents"] == len(doc["latents"])
    code, out, _ = cli(["export", str(run_dir), "--format", "csv"], capsys)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(rows) == run.circuit().height
    assert list(rows[0]) == run.circuit().columns
    f = tmp_path / "c.json"
    code, out, _ = cli(["export", str(run_dir), "--out", str(f)], capsys)
    assert code == 0 and out == "" and json.loads(f.read_text()) == doc
    code, _, err = cli(["export", str(tmp_path)], capsys)
    assert code == 2 and len(err) == 1 and "not a run directory" in err[0]


def test_evaluate_is_what_eval_prints(run, run_dir, prompts, tmp_path, capsys):
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    code, out, err = cli(["eval", "--run", str(run_dir), "--prompts", str(f), "--json"], capsys)
    assert code == 0, err
    from_cli = json.loads(out)
    api = run.evaluate(prompts)
    assert json.loads(json.dumps(api, default=str)) == from_cli
    assert api["n_scored"] == len(prompts) and isinstance(api["faithfulness"], float)
    assert run.evaluate(f)["per_prompt"] == from_cli["per_prompt"]


def test_slots_are_the_ones_eval_assigns(run, prompts):
    res = run.evaluate(prompts)
    df = run.slots([p["prompt"] for p in prompts])
    for i, row in enumerate(res["per_prompt"]):
        sub = df.filter(pl.col("prompt_index") == i).sort("position")
        assert sub["slot"].to_list() == row["slots"]
        assert sub["slot"][0] == 0 and sub["position"][0] == 0
    assert "".join(df.filter(pl.col("prompt_index") == 0)["token"][1:]) == prompts[0]["prompt"]


def _ld(logits, lengths, answers, cfs):
    fin = logits[torch.arange(len(lengths)), torch.as_tensor(lengths) - 1]
    return (fin[torch.arange(len(lengths)), answers] - fin[torch.arange(len(lengths)), cfs])


def test_applied_forward_pass_gives_the_evaluated_circuit(run, prompts):
    from maskshare.run.resources import get_model

    model = get_model(run.config)
    res = run.evaluate(prompts)
    tok = model.tokenizer
    ans = [tok(p["answer"], add_special_tokens=False)["input_ids"][0] for p in prompts]
    cfs = [tok(p["counterfactual"], add_special_tokens=False)["input_ids"][0] for p in prompts]
    want = torch.tensor([r["ld_circuit"] for r in res["per_prompt"]])
    clean = torch.tensor([r["ld_model_clean"] for r in res["per_prompt"]])
    lengths = [len(run.tokens(p["prompt"])[0]) for p in prompts]
    with torch.no_grad():
        with run.applied(model) as circuit:  # a padded batch of text
            got = _ld(model([p["prompt"] for p in prompts]), lengths, ans, cfs)
            one = _ld(model(run.tokens(prompts[0]["prompt"])), lengths[:1], ans[:1], cfs[:1])
            assert circuit.last_slots[0][:lengths[0]].tolist() == res["per_prompt"][0]["slots"]
        after = _ld(model(run.tokens(prompts[0]["prompt"])), lengths[:1], ans[:1], cfs[:1])
    assert torch.allclose(got, want, atol=1e-4), (got, want)
    assert torch.allclose(one, want[:1], atol=1e-4)
    assert torch.allclose(after, clean[:1], atol=1e-4)  # the hooks are gone
    assert not torch.allclose(got, clean, atol=1e-3)  # and they did change the pass
    with torch.no_grad(), run.applied(model, ablation="zero"):
        zero = _ld(model([p["prompt"] for p in prompts]), lengths, ans, cfs)
    assert not torch.allclose(zero, want, atol=1e-3)


def test_applied_refuses_what_it_cannot_slot(run):
    from maskshare.run.resources import get_model

    model = get_model(run.config)
    with pytest.raises(UserError, match="counterfactual"):
        run.applied(model, ablation=Ablation.COUNTERFACTUAL)
    ids = run.tokens("The symbol for gold is")[:, 1:]  # no BOS
    with run.applied(model), pytest.raises(UserError, match="start with BOS"):
        model(ids)


def test_the_notebook_example_in_docs_runs(run_dir, capsys):
    text = (ROOT / "docs" / "api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "docs/api.md has no python block"
    code = blocks[0].replace('"data/runs/recall-<hash>"', repr(str(run_dir)))
    code = code.replace('"The capital of Peru is"', '"The symbol for gold is"')
    code = code.replace('" Lima"', '" Au"').replace('" Paris"', '" Ag"')
    ns: dict = {}
    exec(compile(code, "docs/api.md", "exec"), ns)  # noqa: S102 - our own documentation
    assert isinstance(ns["circuit"], pl.DataFrame) and ns["circuit"].height > 0
    assert isinstance(ns["result"]["faithfulness"], float)
    assert ns["logits"].shape[-1] == ns["model"].cfg.d_vocab


def test_the_readme_example_runs(run_dir):
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Use it from Python"):]
    code = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    code = code.replace('"data/runs/agreement-<hash>"', repr(str(run_dir)))
    code = code.replace('"The teachers near the desk"', '"The symbol for gold is"')
    code = code.replace('" are"', '" Au"').replace('" is"', '" Ag"')
    ns: dict = {}
    with torch.no_grad():
        exec(compile(code, "README.md", "exec"), ns)  # noqa: S102 - our own documentation
    assert ns["logits"].shape[-1] == ns["model"].cfg.d_vocab
    assert ns["run"].circuit().height > 0
