"""Reliability (issue 8): bad input, interruption, concurrent runs, numerical faults,
corrupted artifacts and reproducibility, on the tiny end-to-end set-up.

Bad configs (unknown fields, wrong types, malformed YAML, unknown grouping kinds, missing
config file) are in test_config.py and bad dataset specs/tables in test_datasets.py; these
tests cover what reaches the pipeline, and what happens to a run that is killed, raced,
corrupted or repeated.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maskshare.artifacts import MANIFEST, file_sha256, is_complete, read_manifest, write_manifest
from maskshare.cli import main
from maskshare.config import load_config
from maskshare.errors import UserError
from run_helpers import stage_dirs, subprocess_env

# the smallest run: the main variant only, one lambda, one seed
MINIMAL = {"evaluate": {"seeds": [0], "baselines": [], "ablations": []},
           "masks": {"lambdas": [0.01]}}


def merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def write_config(path: Path, base: dict, **changes) -> Path:
    path.write_text(yaml.safe_dump(merge(base, changes), sort_keys=False))
    return path


@pytest.fixture(scope="module")
def setup_root(tmp_path_factory):
    """Tiny SAE folders and the tiny base config (as a dict), written once for this module."""
    from maskshare.testing import write_tiny_run_setup

    root = tmp_path_factory.mktemp("setup")
    return yaml.safe_load(write_tiny_run_setup(root).read_text())


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A fresh cache and runs root for one test; one torch thread."""
    monkeypatch.setenv("MASKSHARE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MASKSHARE_THREADS", "1")
    return tmp_path


def files_under(root: Path) -> list[str]:
    """Every file under `root` (empty folders, such as a cache root, do not count)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) \
        if root.exists() else []


def cli_run(config: Path, cache: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "maskshare.cli", "run", "--config",
                             str(config), "--no-prefect"], env=subprocess_env(cache),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ============================================================================ bad input


def save_sae(folder: Path, hook: str, d_in: int, d_sae: int = 16) -> str:
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    sae.cfg.metadata.hook_name = hook
    folder.mkdir(parents=True)
    sae.save_model(str(folder))
    return str(folder)


def write_user_dataset(data: Path, *, table: bool = True, yaml_text: str | None = None) -> None:
    """A user dataset `metals` (free-form only) in the data dir `data`."""
    (data / "datasets").mkdir(parents=True)
    spec = {"name": "metals", "source": {"table": "sources/metals.csv"}, "entity": "element",
            "answer": "sym",
            "freeform": [{"id": 0, "text": "The chemical symbol for {element} is"},
                         {"id": 1, "text": "Which symbol stands for {element}? Answer:",
                          "held_out": True}]}
    (data / "datasets" / "metals.yaml").write_text(yaml_text or yaml.safe_dump(spec))
    if table:
        (data / "sources").mkdir()
        (data / "sources" / "metals.csv").write_text(
            "element,sym\ngold,Au\nsilver,Ag\ncopper,Cu\niron,Fe\nlead,Pb\ntin,Sn\n")


BAD_RUNS = {
    # case: (config changes given the test's tmp dir, what the one line must say)
    "sae width": (lambda t: {"saes": {"paths": [save_sae(t / "wide", "blocks.0.hook_resid_post",
                                                         33)]}}, "d_in=33"),
    "unknown hook": (lambda t: {"saes": {"paths": [save_sae(t / "odd", "blocks.0.hook_telepathy",
                                                            32)]}}, "does not exist in model"),
    "hook beyond the model": (lambda t: {"saes": {"paths": [
        save_sae(t / "deep", "blocks.7.hook_resid_post", 32)]}}, "does not exist in model"),
    "hook not in the set": (lambda t: {"saes": {"hooks": ["blocks.0.hook_mlp_out"]}},
                            "no SAE found for hook"),
    "missing SAE folder": (lambda t: {"saes": {"paths": [str(t / "nothere")]}},
                           "not an sae_lens SAE folder"),
    "unknown model": (lambda t: {"model": "no-such-model-xyz"}, "unknown model"),
    "unknown dataset": (lambda t: {"dataset": {"name": "no-such-dataset"}}, "unknown dataset"),
    "too few items": (lambda t: {"dataset": {"min_items": 10_000}}, "fewer than min_items"),
    "template grouping on free-form prompts": (lambda t: {"grouping": {"kind": "template"}},
                                               "template"),
    "variant the dataset lacks": (lambda t: {"dataset": {"variant": "templated",
                                                         "name": "metals"}},
                                  "no templated variant"),
    "missing source table": (lambda t: {"dataset": {"name": "metals"}}, "not found"),
    "malformed dataset spec": (lambda t: {"dataset": {"name": "metals"}}, "malformed YAML"),
}


@pytest.mark.parametrize("case", list(BAD_RUNS))
def test_bad_run_input_is_one_line_exit_2_and_nothing_written(case, setup_root, env,
                                                              monkeypatch, capsys):
    change, message = BAD_RUNS[case]
    changes = change(env / "case")
    if "metals" in json.dumps(changes):
        data = env / "data"
        write_user_dataset(data, table=case != "missing source table",
                           yaml_text="name: metals\nsource: [unclosed\n"
                           if case == "malformed dataset spec" else None)
        monkeypatch.setenv("MASKSHARE_DATA", str(data))
    cfg = write_config(env / "bad.yaml", setup_root, runs_dir=str(env / "runs"),
                       **changes)
    before = files_under(env)
    code = main(["run", "--config", str(cfg), "--no-prefect"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()
           and not re.match(r"^(INFO|DEBUG|WARNING) ", ln) and "it/s" not in ln
           and "batch/s" not in ln]
    assert code == 2, err
    assert len(err) == 1 and message in err[0], err
    assert files_under(env) == before  # no run dir, no cache entry, nothing


def test_config_that_is_not_text_is_one_line_exit_2(env, capsys):
    p = env / "binary.yaml"
    p.write_bytes(b"name: x\n\x80\xff\x00")
    code = main(["run", "--config", str(p), "--no-prefect"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not UTF-8" in err[0]
    assert files_under(env) == ["binary.yaml"]


# prompt files and dataset specs: generated junk is rejected with a message, never a traceback
_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                    st.text(max_size=12))
_json = st.recursive(_scalar, lambda c: st.one_of(st.lists(c, max_size=3),
                                                  st.dictionaries(st.text(max_size=8), c,
                                                                  max_size=3)), max_leaves=6)
_prompt_obj = st.fixed_dictionaries({}, optional={
    "prompt": st.one_of(st.text(max_size=40), _scalar),
    "answer": st.one_of(st.sampled_from([" Au", " Ag", "Au", " Goldilocks", "", " "]),
                        st.text(max_size=6), _scalar),
    "counterfactual": st.one_of(st.sampled_from([" Au", " Ag", ""]), st.text(max_size=6),
                                _scalar),
    "extra": _scalar})
_line = st.one_of(_prompt_obj.map(json.dumps), _json.map(json.dumps), st.text(max_size=30))


@pytest.fixture(scope="module")
def tiny_model():
    from maskshare.testing import tiny_model

    return tiny_model(seed=0)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_line, max_size=6))
def test_generated_prompt_files_are_read_or_rejected_with_a_message(lines, tiny_model, tmp_path):
    from maskshare.evaluation.apply import Prompt, check_prompt, read_prompts

    p = tmp_path / "gen.jsonl"
    p.write_text("\n".join(lines), encoding="utf-8")
    prompts, skipped = read_prompts(p)
    n_nonblank = sum(1 for ln in "\n".join(lines).splitlines() if ln.strip())
    assert len(prompts) + len(skipped) == n_nonblank
    for s in skipped:
        assert s.reason and "\n" not in s.reason and s.line >= 1
    for pr in prompts:
        assert isinstance(pr, Prompt) and pr.prompt.strip() and pr.answer
        try:
            c = check_prompt(tiny_model, pr)
        except ValueError as e:
            assert str(e) and "\n" not in str(e)
        else:
            assert c.tokens[0] == tiny_model.tokenizer.bos_token_id
            assert c.counterfactual_id != c.answer_id


_spec_keys = st.sampled_from(["name", "description", "source", "entity", "answer",
                              "answer_prefix", "answer_mode", "roles", "templated", "freeform",
                              "split", "counterfactual_seed", "bogus"])
_phrasing = st.fixed_dictionaries({}, optional={
    "id": st.one_of(st.integers(-2, 3), _scalar), "held_out": st.one_of(st.booleans(), _scalar),
    "text": st.one_of(st.sampled_from(["The [[symbol]] for {element} is", "a {element:shout}",
                                       "[[open {element}", "x {{y}} {element}", "{}", ""]),
                      st.text(max_size=20), _scalar)})
_spec = st.one_of(
    _json,
    st.dictionaries(_spec_keys, _json, max_size=6),
    st.fixed_dictionaries(
        {"name": st.sampled_from(["metals", "Bad Name", "", "x"]),
         "source": st.one_of(st.just({"table": "a.csv"}), _json),
         "entity": st.one_of(st.just("element"), _scalar),
         "answer": st.one_of(st.just("sym"), _scalar)},
        optional={"templated": st.one_of(_phrasing, _json),
                  "freeform": st.one_of(st.lists(_phrasing, max_size=3), _json),
                  "roles": st.one_of(st.dictionaries(st.text(max_size=6),
                                                     st.sampled_from(["final", "subject", "X y"]),
                                                     max_size=2), _json),
                  "split": _json, "bogus": _scalar}))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_spec)
def test_generated_dataset_specs_are_accepted_or_rejected_with_a_message(data):
    from maskshare.datasets.spec import DatasetSpec, parse_spec

    try:
        spec = parse_spec(data, source="gen.yaml")
    except UserError as e:
        assert str(e).startswith("gen.yaml: ") and "\n" not in str(e)
    else:
        assert isinstance(spec, DatasetSpec)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(content=st.one_of(st.text(max_size=80), _spec.map(lambda d: yaml.safe_dump(d)),
                         st.binary(max_size=40)))
def test_generated_spec_files_are_accepted_or_rejected_with_a_message(content, tmp_path):
    from maskshare.datasets.spec import DatasetSpec, read_spec_file

    p = tmp_path / "gen.yaml"
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    try:
        spec = read_spec_file(p)
    except UserError as e:
        assert str(p) in str(e) and "\n" not in str(e)
    else:
        assert isinstance(spec, DatasetSpec)


# ============================================================================ interruption


@pytest.mark.slow
def test_sigkilled_mask_training_resumes_to_the_uninterrupted_masks(setup_root, env, caplog):
    from maskshare.masks.training import TrainResult
    from maskshare.run.layout import RunLayout
    from maskshare.run.resources import prepare_run
    from maskshare.run.variants import main_variant
    from maskshare.stages.pipeline import run_pipeline
    from maskshare.stages.plan import execute, make_call, plan

    # the default start: warm, from the main variant's IG scores (masks.init: attribution),
    # for warm_steps steps; long, and without the early stop, so the kill lands mid-training
    cfg_path = write_config(env / "long.yaml", merge(setup_root, MINIMAL),
                            runs_dir=str(env / "runs"),
                            masks={"steps": 150, "warm_steps": 150, "checkpoint_every": 10,
                                   "lambdas": [0.01], "early_stop_patience": None})
    cfg = load_config(cfg_path)
    run = prepare_run(cfg)  # the stages before masks, in this process (cheap, model cached)
    head = [c for c in plan(cfg) if c.stage in ("dataset", "groups", "stats", "attribution")
            and c.params.get("kind", cfg.grouping.kind.value) == cfg.grouping.kind.value]
    execute(head, run)
    # an uninterrupted reference: the same inputs in a copy of the run, trained from scratch
    ref_run = env / "reference" / run.name
    shutil.copytree(run, ref_run)
    v = main_variant(cfg)
    out = RunLayout(run).masks(v, 0.01, 0)
    ckpt = RunLayout(run).checkpoint(v, 0.01, 0) / "checkpoint.safetensors"

    proc = cli_run(cfg_path, env / "cache")
    seen_incomplete = []
    deadline = time.time() + 120
    while not ckpt.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline, "no checkpoint appeared"
        seen_incomplete += [d for d in stage_dirs(run) if not is_complete(d)]
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not seen_incomplete  # while it ran, every visible stage dir was complete
    assert not out.exists()  # killed before it finished: no masks dir at all ...
    assert all(is_complete(d) for d in stage_dirs(run))  # ... and nothing half-written
    from safetensors import safe_open

    with safe_open(str(ckpt), framework="pt") as f:
        killed_at = int(f.metadata()["step"])
    assert 0 < killed_at < 150

    with caplog.at_level(logging.INFO, logger="maskshare"):
        assert run_pipeline(cfg) == run  # rerun the same config
    resumed = [r.getMessage() for r in caplog.records if "resuming" in r.getMessage()]
    assert resumed and re.search(rf"from step {killed_at}\b", resumed[0]), resumed
    assert is_complete(out) and not ckpt.parent.exists()

    make_call(cfg, "masks", variant=v.name, lam=0.01, seed=0).run(ref_run)
    got = TrainResult.load(out)
    ref = TrainResult.load(RunLayout(ref_run).masks(v, 0.01, 0))
    assert got.theta.keys() == ref.theta.keys()
    for h in ref.theta:
        assert torch.equal(got.theta[h], ref.theta[h]), h
    assert [r["loss"] for r in got.history] == [r["loss"] for r in ref.history]
    assert len(got.history) == 150
    assert json.loads((out / "summary.json").read_text())["init"] == "attribution"


# ============================================================================ concurrency


def _finished(proc: subprocess.Popen, timeout: float = 240) -> Path:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return Path(out.strip().splitlines()[-1])


def _assert_valid_run(run: Path, cfg_path: Path) -> None:
    cfg = load_config(cfg_path)
    assert load_config(run / "config.yaml") == cfg
    dirs = stage_dirs(run)
    assert {d.relative_to(run).parts[0] for d in dirs} == {"dataset", "groups", "stats",
                                                          "attribution", "masks", "evaluate"}
    for d in dirs:
        assert is_complete(d), d
    from maskshare.evaluation.sweep_fits import sweep_lambdas

    metrics = json.loads((run / "metrics.json").read_text())
    sweep = {lam for v in {p.parent.name for p in (run / "masks").glob("*/*")}
             for lam in sweep_lambdas(run, cfg, v, 0)}
    assert metrics["lambda"] in sweep and set(cfg.masks.lambda_grid) <= sweep
    masks = list((run / "masks").glob("*/*"))
    assert {json.loads((m / "summary.json").read_text())["lambda"] for m in masks} == sweep
    assert not [p for p in run.rglob(".*")], "temporary files left behind"


@pytest.mark.slow
def test_two_runs_with_different_configs_at_once_do_not_clobber(setup_root, env):
    base = merge(setup_root, MINIMAL)
    a = write_config(env / "a.yaml", base, name="a", runs_dir=str(env / "runs"),
                     masks={"lambdas": [0.01]})
    b = write_config(env / "b.yaml", base, name="b", runs_dir=str(env / "runs"),
                     masks={"lambdas": [0.05]}, seed=1)
    procs = [cli_run(a, env / "cache"), cli_run(b, env / "cache")]
    runs = [_finished(p) for p in procs]
    assert runs[0] != runs[1]
    _assert_valid_run(runs[0], a)
    _assert_valid_run(runs[1], b)
    built = [d for d in (env / "cache" / "datasets").iterdir() if not d.name.startswith(".")]
    assert len(built) == 1 and is_complete(built[0])  # the shared dataset cache, built once
    # each run's dataset is the shared build's items, with its validation rows carved out
    from maskshare.datasets.validation import carve_validation

    items = pl.read_parquet(built[0] / "items.parquet")
    for r, c in zip(runs, (a, b), strict=True):
        val = load_config(c).dataset.validation
        want, _ = carve_validation(items, val.by, val.fraction, val.seed)
        assert pl.read_parquet(r / "dataset" / "items.parquet").equals(want)


@pytest.mark.slow
def test_two_runs_of_the_same_config_at_once_give_one_valid_result(setup_root, env):
    cfg = write_config(env / "same.yaml", merge(setup_root, MINIMAL), runs_dir=str(env / "runs"))
    procs = [cli_run(cfg, env / "cache"), cli_run(cfg, env / "cache")]
    runs = [_finished(p) for p in procs]
    assert runs[0] == runs[1]
    assert [p.name for p in (env / "runs").iterdir()] == [runs[0].name]
    _assert_valid_run(runs[0], cfg)


# ============================================================================ numerical faults


def _copy_run_until_stats(run: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    shutil.copy(run / "config.yaml", dest / "config.yaml")
    for part in ("dataset", "groups", "stats"):
        shutil.copytree(run / part, dest / part)
    return dest


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_activations_stop_training_naming_step_hook_and_slot(finished_tiny_run, env,
                                                                        value):
    from maskshare.masks.slot_stats import SlotStats
    from maskshare.masks.training import MaskTrainingError
    from maskshare.run.layout import RunLayout
    from maskshare.run.resources import load_run_config
    from maskshare.run.variants import main_variant
    from maskshare.stages.plan import make_call

    run = _copy_run_until_stats(finished_tiny_run[1], env / "runs" / "nan-run")
    cfg = load_run_config(run)
    v = main_variant(cfg)
    stats_dir = run / "stats" / v.grouping.value
    stats = SlotStats.load(stats_dir / "slot_stats.safetensors")
    hook = list(stats.hooks)[1]
    slot = int(torch.argmax(stats.counts[1:])) + 1  # the busiest non-BOS slot
    stats.hooks[hook].latent_mean[slot, 5] = value  # as if the stats stage had produced it
    stats.save(stats_dir / "slot_stats.safetensors")
    write_manifest(stats_dir)
    with pytest.raises(MaskTrainingError) as e:
        make_call(cfg, "masks", variant=v.name, lam=cfg.masks.lambda_grid[0], seed=0).run(run)
    msg = str(e.value)
    # `scale: task` (the default) meets the NaN in the empty circuit's objective, before step 0
    assert re.search(r"(at|before) step \d+", msg) and f"hook {hook}" in msg, msg
    assert re.search(rf"slot\(s\) \[([0-9, ]*\b)?{slot}\b", msg), msg
    assert "\n" not in msg
    out = RunLayout(run).masks(v, cfg.masks.lambda_grid[0], 0)
    assert not out.exists()  # no masks from a diverged run


# ============================================================================ corruption


def _truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def test_tensor_files_with_metadata_are_byte_reproducible(tmp_path):
    # safetensors writes metadata from a hash map (random key order per save); rebuilt
    # artifacts are compared by sha256, so equal inputs must give equal bytes
    from safetensors import safe_open

    from maskshare.artifacts import save_tensors

    tensors = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(4, dtype=torch.int64)}
    meta = {f"key{i}": f"value {i}" for i in range(8)}
    hashes = set()
    for i in range(12):
        p = tmp_path / f"t{i}.safetensors"
        save_tensors(tensors, p, metadata=meta)
        hashes.add(file_sha256(p))
    assert len(hashes) == 1
    with safe_open(str(tmp_path / "t0.safetensors"), framework="pt") as f:
        assert f.metadata() == meta
        assert torch.equal(f.get_tensor("b"), tensors["b"])
        assert torch.equal(f.get_tensor("a"), tensors["a"])


def test_truncated_artifacts_are_detected_by_hash_and_rebuilt(finished_tiny_run, env,
                                                              monkeypatch, caplog):
    from maskshare.stages.pipeline import run_pipeline

    cfg_path, run0, cache0 = finished_tiny_run
    # the same config in another runs root: same run name; the run and the cache copied there
    cfg = load_config(cfg_path).model_copy(update={"runs_dir": str(env / "runs")})
    run = env / "runs" / run0.name
    shutil.copytree(run0, run)
    shutil.copytree(cache0, env / "cache")
    (cached_ds,) = [d for d in (env / "cache" / "datasets").iterdir()
                    if not d.name.startswith(".")]
    victims = [run / "stats" / "attention" / "slot_stats.safetensors",
               run / "dataset" / "items.parquet",
               run / "groups" / "attention" / "tokens.parquet",
               cached_ds / "items.parquet"]
    good = {p: file_sha256(p) for p in victims}
    for p in victims:
        _truncate(p)
        assert not is_complete(p.parent)
    untouched = run / "stats" / "single" / "slot_stats.safetensors"
    untouched_mtime = untouched.stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        assert run_pipeline(cfg) == run
    log = "\n".join(r.getMessage() for r in caplog.records)
    for p in victims:
        assert file_sha256(p) == good[p], p  # rebuilt, identical to the original
        assert read_manifest(p.parent)["files"][p.name] == good[p]
        assert is_complete(p.parent)
    assert "cached: dataset" not in log and "cached: slot stats attention" not in log
    assert "cached: groups attention" not in log
    assert "loading cached dataset" not in log  # the truncated cache entry was not loaded
    assert "cached: slot stats single" in log  # intact stages are still reused ...
    assert untouched.stat().st_mtime_ns == untouched_mtime  # ... not rewritten


def test_a_missing_manifest_or_file_means_incomplete(tmp_path):
    d = tmp_path / "stage"
    d.mkdir()
    (d / "a.bin").write_bytes(b"abc")
    assert not is_complete(d)  # no manifest yet
    write_manifest(d)
    assert is_complete(d)
    (d / "a.bin").write_bytes(b"abd")  # same size, other bytes
    assert not is_complete(d)
    (d / "a.bin").unlink()
    assert not is_complete(d)
    (d / MANIFEST).write_text("{truncated")
    assert not is_complete(d)


def test_a_manifest_records_the_torch_threads_it_computed_with(tmp_path):
    import torch

    d = tmp_path / "stage"
    d.mkdir()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        write_manifest(d)
        kernels = torch.backends.cpu.get_cpu_capability()
        assert read_manifest(d)["runtime"] == {"torch_threads": 1, "cpu_capability": kernels}
        if (os.cpu_count() or 1) > 1:
            torch.set_num_threads(2)
            write_manifest(d)
            assert read_manifest(d)["runtime"]["torch_threads"] == 2
    finally:
        torch.set_num_threads(before)


def test_building_keeps_a_concurrent_winner_that_lands_just_before_the_rename(tmp_path,
                                                                             monkeypatch):
    import maskshare.artifacts as artifacts

    final = tmp_path / "stage"
    real_replace = os.replace

    def racing_replace(src, dst):  # another process renames its build into place first
        if Path(dst) == final and not final.exists():
            other = tmp_path / ".other"
            other.mkdir()
            (other / "x.txt").write_text("theirs")
            write_manifest(other)
            real_replace(other, final)
        return real_replace(src, dst)

    monkeypatch.setattr(artifacts.os, "replace", racing_replace)
    with artifacts.building(final) as tmp:
        (tmp / "x.txt").write_text("ours")
        write_manifest(tmp)
    assert is_complete(final) and (final / "x.txt").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["stage"]  # our temp dir and lock are gone


# ============================================================================ reproducibility


def test_same_config_and_seed_give_identical_datasets_groupings_and_masks(finished_tiny_run,
                                                                          env):
    from maskshare.masks.training import TrainResult
    from maskshare.stages.pipeline import run_pipeline

    cfg_path, run0, _ = finished_tiny_run
    cfg = load_config(cfg_path).model_copy(update={"runs_dir": str(env / "runs")})
    run1 = run_pipeline(cfg)  # a separate runs root and a fresh cache: everything rebuilt
    assert run1 != run0 and run1.name == run0.name
    a = pl.read_parquet(run0 / "dataset" / "items.parquet")
    b = pl.read_parquet(run1 / "dataset" / "items.parquet")
    assert a.equals(b) and a.height > 0
    for g in (run0 / "groups").iterdir():
        ta = pl.read_parquet(g / "tokens.parquet").sort(["prompt_id", "position"])
        tb = pl.read_parquet(run1 / "groups" / g.name / "tokens.parquet").sort(["prompt_id",
                                                                              "position"])
        assert ta["slot"].to_list() == tb["slot"].to_list(), g.name
        assert file_sha256(g / "grouping.json") == \
            file_sha256(run1 / "groups" / g.name / "grouping.json"), g.name
    masks0 = sorted(p.relative_to(run0) for p in (run0 / "masks").glob("*/*"))
    assert masks0 == sorted(p.relative_to(run1) for p in (run1 / "masks").glob("*/*"))
    for rel in masks0:
        ta, tb = TrainResult.load(run0 / rel).theta, TrainResult.load(run1 / rel).theta
        for h in ta:
            assert torch.equal(ta[h], tb[h]), (rel, h)
    m0 = json.loads((run0 / "metrics.json").read_text())
    m1 = json.loads((run1 / "metrics.json").read_text())
    m0.pop("timings"), m1.pop("timings")
    assert m0 == m1
