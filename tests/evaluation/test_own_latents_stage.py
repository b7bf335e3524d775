"""`evaluate.own_latents` end to end: the evaluation of a finished tiny run rebuilt with each
prompt's own latents at its subject's tokens; metrics.json, curves, report and export say
so, and the sizes count them."""

from __future__ import annotations

import json
import shutil
import warnings

import polars as pl
import pytest
import yaml

from maskshare.commands.export import export_document
from maskshare.run.handle import open_run
from maskshare.run.resources import load_run_config
from maskshare.stages import evaluate


@pytest.fixture
def run(tiny_run_copy):
    return tiny_run_copy


def rebuild_with_own_latents(run, k: int = 4, by: str | None = None) -> None:
    """The run's evaluation rebuilt with `evaluate.own_latents` {k, roles: [subject]} (and
    `by` where given)."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg.setdefault("evaluate", {})["own_latents"] = {"k": k, "roles": ["subject"],
                                                     **({"by": by} if by else {})}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert load_run_config(run).evaluate.own_latents.k == k
    shutil.rmtree(run / "evaluate")
    evaluate.build(run)


def test_evaluation_with_own_latents_counts_and_reports_them(run):
    before = pl.read_parquet(run / "evaluate" / "curves.parquet")
    rebuild_with_own_latents(run)

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["own_latents"] == {"k": 4, "roles": ["subject"], "by": "activation"}
    assert 0 < metrics["own_latents_per_token"] < metrics["latents_per_token"]
    after = pl.read_parquet(run / "evaluate" / "curves.parquet")
    key = ["variant", "lambda", "seed", "split"]
    both = before.join(after, on=key, suffix="_own")
    assert both.height > 0 and "own_latents_per_token" in after.columns
    # every circuit of every method grows by what it adds; the learned part is unchanged
    assert (both["latents_per_token_own"] - both["latents_per_token"]
            - both["own_latents_per_token"]).abs().max() < 1e-9
    assert (both["own_latents_per_token"] >= 0).all() and both["own_latents_per_token"].max() > 0
    assert (both["circuit_size_own"] == both["circuit_size"]).all()
    assert set(after["variant"].unique()) == set(before["variant"].unique())
    report = (run / "report.html").read_text()
    assert "plus the subject&#x27;s own" in report or "plus the subject's own" in report
    doc = export_document(open_run(run))
    assert doc["own_latents"] == {"k": 4, "roles": ["subject"], "by": "activation"}


def test_eval_on_new_prompts_keeps_own_latents_at_their_entity(run):
    """`maskshare eval` / run.evaluate on prompts with an `entity` scores what the run's
    evaluation scored (the own latents kept at the mention), and says where it could not."""
    from maskshare.evaluation.apply import evaluate_prompts

    rebuild_with_own_latents(run)
    items = pl.read_parquet(run / "dataset" / "items.parquet").filter(
        pl.col("split") == "test_entity")
    assert items.height > 0 and items["entity"].null_count() == 0
    prompts = [{"prompt": r["prompt"], "answer": r["answer"],
                "counterfactual": r["counterfactual"], "entity": r["entity"]}
               for r in items.iter_rows(named=True)]

    res = evaluate_prompts(run, prompts, seed=0)
    assert res["own_latents"] == {"k": 4, "roles": ["subject"], "by": "activation",
                                  "prompts_marked": len(prompts)}
    assert res["own_latents_per_token"] > 0
    # the same per-prompt logit differences as the run's own evaluation of that split
    lds = pl.read_parquet(run / "evaluate" / "lds.parquet").filter(
        (pl.col("variant") == res["variant"]) & (pl.col("lambda") == res["lambda"])
        & (pl.col("split") == "test_entity") & (pl.col("seed") == 0))
    stage = dict(zip(lds["prompt_id"].to_list(), lds["ld_circuit"].to_list(), strict=True))
    assert sorted(stage) == sorted(items["prompt_id"].to_list())
    ours = [p["ld_circuit"] for p in res["per_prompt"]]
    theirs = [stage[i] for i in items["prompt_id"].to_list()]
    assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) < 1e-3

    learned = evaluate_prompts(run, prompts, seed=0, own_latents=False)
    assert "own_latents" not in learned and "own_latents_per_token" not in learned
    assert abs(res["latents_per_token"] - learned["latents_per_token"]
               - res["own_latents_per_token"]) < 1e-9
    assert any(abs(a["ld_circuit"] - b["ld_circuit"]) > 1e-4
               for a, b in zip(res["per_prompt"], learned["per_prompt"], strict=True))

    bare = evaluate_prompts(run, [{k: v for k, v in p.items() if k != "entity"}
                                  for p in prompts], seed=0)
    assert bare["own_latents"]["prompts_marked"] == 0 and "no `entity`" in \
        bare["own_latents"]["note"]
    assert [p["ld_circuit"] for p in bare["per_prompt"]] == \
        [p["ld_circuit"] for p in learned["per_prompt"]]


def test_split_prompts_script_writes_an_eval_prompt_file(finished_tiny_run, tmp_path):
    """scripts/split_prompts.py: a run's split as eval prompt lines, entity included; an
    unknown split is refused with the splits the run has."""
    import subprocess
    import sys
    from pathlib import Path

    from maskshare.evaluation.apply import read_prompts

    _, src, _ = finished_tiny_run
    script = Path(__file__).resolve().parents[2] / "scripts" / "split_prompts.py"
    p = subprocess.run([sys.executable, str(script), str(src), "test_entity"],
                       capture_output=True, text=True, check=True)
    out = tmp_path / "held.jsonl"
    out.write_text(p.stdout)
    prompts, skipped = read_prompts(out)
    every = pl.read_parquet(src / "dataset" / "items.parquet")
    items = every.filter(pl.col("split") == "test_entity")
    assert not skipped and [q.prompt for q in prompts] == items["prompt"].to_list()
    assert [q.entity for q in prompts] == items["entity"].to_list()
    bad = subprocess.run([sys.executable, str(script), str(src), "nope"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "test_entity" in bad.stderr and not bad.stdout
    # --group: one group's rows only; an unknown group is refused with the ones there are
    train = every.filter(pl.col("split") == "train")
    group = sorted(train["phrasing"].unique().to_list())[0]
    one = subprocess.run([sys.executable, str(script), str(src), "train", "--group", group],
                         capture_output=True, text=True, check=True)
    want = train.filter(pl.col("phrasing") == group)["prompt"].to_list()
    assert [json.loads(line)["prompt"] for line in one.stdout.splitlines()] == want
    assert 0 < len(want) < train.height
    nogroup = subprocess.run([sys.executable, str(script), str(src), "train", "--group", "zz"],
                             capture_output=True, text=True)
    assert nogroup.returncode != 0 and group in nogroup.stderr and not nogroup.stdout


@pytest.mark.parametrize("by", ["activation", "deviation"])
def test_applied_with_entity_splices_the_circuit_evaluated_with_own_latents(run, by):
    """run.applied(model, entity=...) keeps the own latents at the entity's tokens: the
    forward pass gives the logit differences run.evaluate reports with the prompts'
    `entity` (own latents ranked by activation, or by deviation from the ablation's
    values); without it, the learned part's; entity on a run without own latents, or a
    list of the wrong length, is refused."""
    import torch

    from maskshare.errors import UserError
    from maskshare.evaluation.applied import entity_roles
    from maskshare.run.resources import get_model

    rebuild_with_own_latents(run, by=by)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["own_latents"]["by"] == by
    assert ("farthest from what the ablation" in (run / "report.html").read_text()) == \
        (by == "deviation")
    items = pl.read_parquet(run / "dataset" / "items.parquet").filter(
        pl.col("split") == "test_entity").sort("prompt_id").head(5)
    prompts = [{"prompt": r["prompt"], "answer": r["answer"],
                "counterfactual": r["counterfactual"], "entity": r["entity"]}
               for r in items.iter_rows(named=True)]
    h = open_run(run)
    res, learned = h.evaluate(prompts), h.evaluate(prompts, own_latents=False)
    assert res["own_latents"]["prompts_marked"] == len(prompts)
    model = get_model(h.config)
    # the tokens marked are the run's own roles' subject tokens
    for r in items.iter_rows(named=True):
        roles = entity_roles(model.tokenizer, list(r["tokens"]), r["entity"])
        assert [x == "subject" for x in roles] == [x == "subject" for x in r["roles"]]
    lengths = [len(h.tokens(p["prompt"])[0]) for p in prompts]
    ans, cfs = items["answer_id"].to_list(), items["counterfactual_id"].to_list()

    def ld(logits):
        fin = logits[torch.arange(len(lengths)), torch.as_tensor(lengths) - 1]
        return fin[torch.arange(len(lengths)), ans] - fin[torch.arange(len(lengths)), cfs]

    texts = [p["prompt"] for p in prompts]
    with torch.no_grad():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # every row marked: no warning
            with h.applied(model, entity=[p["entity"] for p in prompts]) as circuit:
                got = ld(model(texts))
                assert circuit.last_marked.any(dim=1).all()
        with h.applied(model):
            bare = ld(model(texts))
        # an entity found nowhere in its row: that row keeps the learned part, and says so
        typo = [p["entity"] for p in prompts]
        typo[1] = "qzxqzx"
        with pytest.warns(UserWarning, match=r"'qzxqzx' marks no token of row 1") as rec, \
                h.applied(model, entity=typo) as circuit:
            mixed = ld(model(texts))
            assert circuit.last_marked.any(dim=1).tolist() == [True, False, True, True, True]
        assert len(rec) == 1
        assert torch.allclose(mixed[1], bare[1], atol=1e-4)
        assert torch.allclose(mixed[[0, 2, 3, 4]], got[[0, 2, 3, 4]], atol=1e-4)
    want = torch.tensor([p["ld_circuit"] for p in res["per_prompt"]])
    base = torch.tensor([p["ld_circuit"] for p in learned["per_prompt"]])
    assert torch.allclose(got, want, atol=1e-4), (got, want)
    assert torch.allclose(bare, base, atol=1e-4)
    assert not torch.allclose(want, base, atol=1e-3)
    with pytest.raises(UserError, match="one per row"), torch.no_grad(), \
            h.applied(model, entity=["a", "b"]):
        model(texts)


def test_applied_refuses_an_entity_where_the_run_keeps_no_own_latents(run):
    from maskshare.errors import UserError

    with pytest.raises(UserError, match="keeps none"):
        open_run(run).applied(entity="x")


def test_entity_roles_mark_the_mention_as_eval_does():
    """The roles applied() marks from token rows are token_roles' on the same text: the
    mention (any case) `subject`, the final token `final` even inside the mention."""
    from maskshare.datasets.prompt_build import entity_spans
    from maskshare.datasets.rows import token_roles
    from maskshare.evaluation.applied import entity_roles
    from maskshare.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    bos = tok.bos_token_id if tok.bos_token_id is not None else 0
    for text, entity in [("Gold is the element with symbol", "gold"),
                         ("The symbol of gold", "Gold"), ("No mention here", "gold")]:
        ids, _, want = token_roles(tok, text, entity_spans(text, entity, ignore_case=True), bos)
        assert entity_roles(tok, ids, entity) == want
    assert "subject" in entity_roles(tok, token_roles(tok, "Gold is it", [], bos)[0], "gold")
