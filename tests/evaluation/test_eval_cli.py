"""`maskshare eval`: a finished tiny run's circuit applied to prompt files (JSON lines)."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest
import torch

from maskshare.cli import main
from maskshare.evaluation.apply import (
    CF_MODEL,
    evaluate_prompts,
    model_counterfactuals,
    read_prompts,
)

KEYS = ["n_prompts", "n_scored", "faithfulness", "faithfulness_vs_clean", "completeness",
        "latents_per_token", "circuit_size", "ld_model", "ld_circuit", "ld_ablated",
        "n_skipped", "ood_fraction", "counterfactual_source"]


@pytest.fixture(scope="module")
def run_dir(finished_tiny_run):
    return finished_tiny_run[1]


@pytest.fixture(scope="module")
def heldout(run_dir):
    """The run's own held-out prompts of its headline split, as the run stored them; a
    counterfactual's text may be several tokens (the run scores its first), so `cf_token`
    holds that first token's text."""
    from maskshare.testing import tiny_tokenizer

    metrics = json.loads((run_dir / "metrics.json").read_text())
    items = pl.read_parquet(run_dir / "dataset" / "items.parquet")
    items = items.filter(pl.col("split") == metrics["headline_split"]).sort("prompt_id")
    tok = tiny_tokenizer()
    cf = [tok.decode([int(i)]) for i in items["counterfactual_id"]]
    return items.with_columns(pl.Series("cf_token", cf)), metrics


def write_jsonl(path, rows) -> str:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def cli(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, [ln for ln in out.err.splitlines() if ln.strip()]


def snapshot(d):
    return sorted((str(p.relative_to(d)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in d.rglob("*"))


def test_the_runs_own_heldout_prompts_reproduce_its_metrics(run_dir, heldout, tmp_path, capsys):
    items, metrics = heldout
    rows = [{"prompt": p, "answer": a, "counterfactual": c} for p, a, c in
            zip(items["prompt"], items["answer"], items["cf_token"], strict=True)]
    before = snapshot(run_dir)
    code, out, err = cli(["eval", "--run", str(run_dir), "--prompts",
                          write_jsonl(tmp_path / "p.jsonl", rows), "--json"], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert all(k in res for k in KEYS)
    assert res["n_prompts"] == res["n_scored"] == items.height and res["n_skipped"] == 0
    assert res["counterfactual_source"] == "file" and res["lambda"] == metrics["lambda"]
    for k in ("faithfulness", "faithfulness_vs_clean", "completeness", "latents_per_token",
              "ld_model", "ld_circuit", "ld_ablated"):
        assert res[k] == pytest.approx(metrics[k], rel=1e-4, abs=1e-5), k
    assert res["circuit_size"] == metrics["circuit_size"]
    e = res["ld_ablated"]
    assert res["faithfulness"] == pytest.approx((res["ld_circuit"] - e) / (res["ld_model"] - e))
    # the slots came from the fitted grouping: those the run stored for the same prompts
    toks = pl.read_parquet(run_dir / "groups" / "attention" / "tokens.parquet")
    stored = {pid: g.sort("position")["slot"].to_list()
              for (pid,), g in toks.group_by("prompt_id")}
    assert [r["slots"] for r in res["per_prompt"]] == [stored[p] for p in items["prompt_id"]]
    assert 0.0 <= res["ood_fraction"] <= 1.0
    assert snapshot(run_dir) == before  # nothing written to the run


def test_missing_counterfactual_uses_the_clean_models_top_other_token(run_dir, heldout,
                                                                      tmp_path, capsys):
    from maskshare.model.models import tokenize_prompt
    from maskshare.testing import tiny_model

    items, _ = heldout
    rows = [{"prompt": p, "answer": a} for p, a in zip(items["prompt"][:3], items["answer"][:3],
                                                       strict=True)]
    code, out, err = cli(["eval", "--run", str(run_dir), "--prompts",
                          write_jsonl(tmp_path / "p.jsonl", rows), "--json"], capsys)
    assert code == 0
    res = json.loads(out)
    assert res["counterfactual_source"] == CF_MODEL and res["n_counterfactual_from_model"] == 3
    assert any("no counterfactual" in ln for ln in err)
    model = tiny_model(seed=0)
    for row, got in zip(rows, res["per_prompt"], strict=True):
        with torch.no_grad():
            logits = model(torch.tensor([tokenize_prompt(model, row["prompt"])]))[0, -1]
        answer = model.tokenizer(row["answer"], add_special_tokens=False)["input_ids"][0]
        logits[answer] = -math.inf
        logits[model.tokenizer.all_special_ids] = -math.inf
        assert got["counterfactual"] == model.tokenizer.decode([int(logits.argmax())])
        assert got["counterfactual"] != row["answer"]
        assert got["counterfactual_source"] == CF_MODEL


def test_model_counterfactuals_never_pick_the_answer_or_special_tokens():
    from maskshare.testing import tiny_model

    model = tiny_model(seed=0)
    bos = model.tokenizer.bos_token_id
    with torch.no_grad():  # make BOS and token 7 the model's favourites everywhere
        model.unembed.b_U[bos] += 1e3
        model.unembed.b_U[7] += 5e2
    tokens = [[bos, 10, 11], [bos, 12]]
    assert model_counterfactuals(model, tokens, [7, 8])[1] == 7
    assert model_counterfactuals(model, tokens, [7, 8])[0] not in (7, bos)


def test_bad_lines_are_reported_with_their_line_and_skipped(run_dir, heldout, tmp_path, capsys):
    items, _ = heldout
    good = {"prompt": items["prompt"][0], "answer": items["answer"][0],
            "counterfactual": items["cf_token"][0]}
    rows = [good,
            "{not json",
            {"prompt": "", "answer": " Au"},
            {"prompt": "The chemical symbol for gold is", "answer": " Au Ag",
             "counterfactual": " Au"},
            {"prompt": "The chemical symbol for gold is", "answer": " Au", "counterfactual": " Au"},
            "",
            {"prompt": "The chemical symbol for gold is"},
            ["a", "list"],
            {"prompt": "The chemical symbol for gold is", "answer": 7},
            {"prompt": "gold " * 80, "answer": " Au"},
            good]
    code, out, err = cli(["eval", "--run", str(run_dir), "--prompts",
                          write_jsonl(tmp_path / "p.jsonl", rows), "--json"], capsys)
    assert code == 0
    res = json.loads(out)
    bad_lines = [2, 3, 4, 5, 7, 8, 9, 10]
    assert res["n_scored"] == 2 and res["n_skipped"] == len(bad_lines)
    assert res["n_prompts"] == 2 + len(bad_lines)  # the blank line is not a prompt
    assert [s["line"] for s in res["skipped"]] == bad_lines
    for n in bad_lines:
        assert sum(f"line {n}:" in ln for ln in err) == 1, n
    reasons = {s["line"]: s["reason"] for s in res["skipped"]}
    assert "malformed JSON" in reasons[2] and "empty prompt" in reasons[3]
    assert "share their first token ' Au'" in reasons[4] and "equals the answer" in reasons[5]
    assert "missing" in reasons[7] and "longer than the model's context" in reasons[10]
    assert any(f"{len(bad_lines)} of {res['n_prompts']} prompts skipped" in ln for ln in err)
    assert math.isfinite(res["faithfulness"] if res["faithfulness"] is not None else 0.0)


def test_no_usable_prompt_exits_2_with_one_line(run_dir, tmp_path, capsys):
    p = write_jsonl(tmp_path / "bad.jsonl", ["{oops", {"prompt": " ", "answer": " Au"}])
    before = snapshot(run_dir)
    code, out, err = cli(["eval", "--run", str(run_dir), "--prompts", p, "--json"], capsys)
    assert code == 2 and out == "" and len(err) == 1
    assert "no usable prompts" in err[0] and "2 skipped" in err[0] and "line 1" in err[0]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    code, out, err = cli(["eval", "--run", str(run_dir), "--prompts", str(empty)], capsys)
    assert code == 2 and len(err) == 1 and "no usable prompts: 0 read" in err[0]
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("case", ["missing", "directory", "binary"])
def test_unreadable_prompt_file_exits_2_with_one_line(run_dir, tmp_path, capsys, case):
    p = tmp_path / "p.jsonl"
    if case == "directory":
        p.mkdir()
    elif case == "binary":
        p.write_bytes(b"\xff\xfe\x00\x81garbage\n")
    code, out, err = cli(["eval", "--run", str(run_dir), "--prompts", str(p)], capsys)
    assert code == 2 and out == "" and len(err) == 1 and str(p) in err[0]


def test_bad_run_variant_or_lambda_exit_2(run_dir, heldout, tmp_path, capsys):
    items, _ = heldout
    p = write_jsonl(tmp_path / "p.jsonl", [{"prompt": items["prompt"][0],
                                             "answer": items["answer"][0]}])
    for extra, message in [(["--variant", "telepathy__slot-mean"], "unknown variant"),
                           (["--lambda", "0.123"], "no complete circuit"),
                           (["--seed", "9"], "no complete circuit")]:
        code, out, err = cli(["eval", "--run", str(run_dir), "--prompts", p, *extra], capsys)
        assert code == 2 and len(err) == 1 and message in err[0], extra
    code, _, err = cli(["eval", "--run", str(tmp_path), "--prompts", p], capsys)
    assert code == 2 and len(err) == 1 and "not a run directory" in err[0]


def test_other_variant_and_lambda_and_readable_summary(run_dir, heldout, tmp_path, capsys):
    items, _ = heldout
    rows = [{"prompt": p, "answer": a} for p, a in zip(items["prompt"][:4], items["answer"][:4],
                                                       strict=True)]
    p = write_jsonl(tmp_path / "p.jsonl", rows)
    code, out, _ = cli(["eval", "--run", str(run_dir), "--prompts", p, "--variant",
                        "single__slot-mean", "--lambda", "0.1"], capsys)
    assert code == 0
    assert "circuit single__slot-mean, lambda 0.1" in out
    assert "faithfulness" in out and "4 scored of 4" in out
    res = evaluate_prompts(run_dir, read_prompts(p)[0], variant="single__slot-mean", lam=0.1)
    assert all(set(r["slots"][1:]) == {1} for r in res["per_prompt"])  # one shared slot


def test_library_accepts_plain_dicts(run_dir, heldout):
    items, _ = heldout
    res = evaluate_prompts(run_dir, [{"prompt": items["prompt"][0], "answer": items["answer"][0],
                                      "counterfactual": items["cf_token"][0]},
                                     {"prompt": "x", "answer": " Au and more",
                                      "counterfactual": " Au"}])
    assert res["n_scored"] == 1 and res["skipped"][0]["line"] == 2
    json.dumps(res)
