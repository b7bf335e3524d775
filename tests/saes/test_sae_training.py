"""The embedded SAE set: offline corpus, training with sae_lens, quality metrics."""

from __future__ import annotations

import json

import pytest
import torch

from maskshare.model.activations import collect_activations
from maskshare.model.sae_set import SAESetConfig, load_saes
from maskshare.saes.corpus import CorpusConfig, build_corpus, element_sentences
from maskshare.saes.quality import (
    ce_recovered,
    element_prompts,
    explained_variance,
    final_logits,
    measure_quality,
    quality_markdown,
    sae_quality,
    sae_stats,
    splice_hooks,
)
from maskshare.saes.training import (
    SAETrainingConfig,
    save_inference_sae,
    train_sae,
    train_saes,
)
from maskshare.testing import tiny_model, tiny_saes, tiny_tokenizer

# package text only: sampled text needs a Hugging Face model (tests/saes/test_corpus_sampling.py)
SMALL = CorpusConfig(context_size=32, train_tokens=4000, heldout_tokens=640,
                     mix={"doc": 0.25, "docstring": 0.25, "code": 0.3, "elements": 0.2})


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0)


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(tiny_tokenizer(), SMALL)


def _strip_kind(sources):
    return {s.split(":", 1)[1] for s in sources if not s.startswith("periodictable:")}


def test_corpus_is_deterministic_and_seed_dependent(corpus):
    again = build_corpus(tiny_tokenizer(), SMALL)
    assert torch.equal(corpus.train, again.train) and torch.equal(corpus.heldout, again.heldout)
    assert corpus.sha256 == again.sha256
    other = build_corpus(tiny_tokenizer(), SMALL.model_copy(update={"seed": 1}))
    assert other.sha256 != corpus.sha256
    assert not torch.equal(other.train, corpus.train)


def test_corpus_rows_start_with_bos_and_heldout_is_disjoint(corpus):
    bos = tiny_tokenizer().bos_token_id
    for rows in (corpus.train, corpus.heldout):
        assert rows.shape[1] == SMALL.context_size
        assert (rows[:, 0] == bos).all()
    assert corpus.train.numel() >= SMALL.train_tokens
    d = corpus.description
    assert set(d["train_distributions"]).isdisjoint(d["heldout_distributions"])
    train_files, held_files = _strip_kind(d["train_sources"]), _strip_kind(d["heldout_sources"])
    assert train_files and held_files
    assert train_files.isdisjoint(held_files)


def test_element_sentences_use_disjoint_templates():
    train, held = set(element_sentences("train", 0)), set(element_sentences("heldout", 0))
    assert "The chemical symbol for gold is Au." in train
    assert train.isdisjoint(held)
    assert sorted(element_sentences("train", 0)) == sorted(element_sentences("train", 5))


def test_collect_activations_matches_a_full_run(model, corpus):
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    rows = corpus.train[:3]
    acts = collect_activations(model, rows, hooks, batch_rows=2)
    _, cache = model.run_with_cache(rows, names_filter=hooks)
    for h in hooks:
        assert acts[h].dtype == torch.float16
        assert acts[h].shape == (3 * (rows.shape[1] - 1), model.cfg.d_model)
        want = cache[h][:, 1:].reshape(-1, model.cfg.d_model)
        torch.testing.assert_close(acts[h].float(), want, rtol=1e-2, atol=1e-2)


def test_training_reduces_error_and_saves_a_loadable_folder(model, corpus, tmp_path):
    from sae_lens import SAE

    hook = "blocks.1.hook_resid_post"
    acts = collect_activations(model, corpus.train, [hook])[hook]
    held = collect_activations(model, corpus.heldout, [hook])[hook].float()
    cfg = SAETrainingConfig(model="tiny", hooks=[hook], d_sae=64, k=8, epochs=0.0001,
                            batch_size=256, lr=5e-3, lr_warm_up_steps=0, corpus=SMALL)
    untrained = train_sae(acts, hook, cfg)  # a single step: essentially the initialisation
    trained = train_sae(acts, hook, cfg.model_copy(update={"epochs": 10}))
    ev0 = sae_stats(untrained, held)["explained_variance"]
    ev1 = sae_stats(trained, held)["explained_variance"]
    assert ev1 > ev0 + 0.2, (ev0, ev1)

    folder = save_inference_sae(trained, tmp_path / hook, dtype="float16")
    loaded = SAE.load_from_disk(str(folder))
    assert loaded.cfg.metadata.hook_name == hook and loaded.cfg.d_sae == 64
    assert loaded.W_enc.dtype == torch.float32  # stored as fp16, loaded as the config says
    x = held[:200]
    # stored as fp16: TopK can pick another latent where two are within fp16 rounding of the
    # k-th (a few rows of a CI run did), so nearly every element is close and the loaded
    # SAE explains the activations as well as the trained one
    got, want = loaded.decode(loaded.encode(x)), trained.decode(trained.encode(x))
    close = torch.isclose(got, want, rtol=0.05, atol=0.05)
    assert close.float().mean() > 0.99, f"{(~close).sum()} of {close.numel()} differ"
    assert sae_stats(loaded, held)["explained_variance"] == pytest.approx(ev1, abs=0.02)
    saes = load_saes(SAESetConfig(source="local", paths=[str(folder)]), model)
    assert list(saes) == [hook]


def test_train_saes_writes_the_set_with_manifest(model, tmp_path, tmp_cache):
    from maskshare.artifacts import is_complete, read_manifest

    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    cfg = SAETrainingConfig(model="tiny", hooks=hooks, d_sae=64, k=8, epochs=2, batch_size=256,
                            corpus=SMALL, activations="model")
    out = train_saes(cfg, out_dir=tmp_path / "set", model=model, quality=True)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == hooks
    assert is_complete(out)
    m = read_manifest(out)
    assert m["corpus"]["sha256"] and m["config"]["k"] == 8 and m["seed"] == 0
    assert set(m["quality"]["per_sae"]) == set(hooks)
    q = json.loads((out / "quality.json").read_text())
    assert (out / "quality.md").read_text().startswith("| SAE (hook)")
    for r in q["per_sae"].values():
        assert 0 < r["l0"] <= 8
    # retraining replaces the set (a different recipe, not the old folder kept)
    train_saes(cfg.model_copy(update={"k": 4}), out_dir=out, model=model, quality=False)
    m = read_manifest(out)
    assert m["config"]["k"] == 4 and m["quality"] is None and not (out / "quality.json").exists()
    # the quality command measures the set on the held-out text its manifest names
    q = sae_quality(out, model=model, ce_rows=2)
    m = read_manifest(out)
    assert q["corpus_sha256"] == m["corpus"]["sha256"]
    assert m["quality"]["per_sae"][hooks[0]]["l0"] <= 4
    assert "quality.json" in m["files"] and is_complete(out)


def _inverting_sae(d: int, hook: str):
    """A StandardSAE with latents [relu(x), relu(-x)] and decoder [I; -I]: x_hat == x."""
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=2 * d))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    sae.cfg.metadata.hook_name = hook
    return sae.eval()


def test_quality_metrics_on_known_cases(model, corpus):
    hook = "blocks.0.hook_resid_post"
    x = collect_activations(model, corpus.heldout, [hook])[hook].float()
    ident = _inverting_sae(model.cfg.d_model, hook)
    stats = sae_stats(ident, x)
    assert stats["explained_variance"] == pytest.approx(1.0, abs=1e-6)
    assert stats["dead_fraction"] == 0.0
    assert stats["l0"] == pytest.approx(model.cfg.d_model, abs=0.5)
    assert explained_variance(x, x.mean(0).expand_as(x)) == pytest.approx(0.0, abs=1e-9)

    zero = _inverting_sae(model.cfg.d_model, hook)
    with torch.no_grad():
        zero.W_dec.zero_()
    ce = ce_recovered(model, {hook: ident}, corpus.heldout[:4], batch_rows=2)[hook]
    assert ce["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    ce0 = ce_recovered(model, {hook: zero}, corpus.heldout[:4], batch_rows=2)[hook]
    assert ce0["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-4)
    assert ce0["ce_zero_ablation"] != pytest.approx(ce0["ce_clean"])


def test_splicing_with_error_kept_reproduces_the_clean_model(model):
    saes = tiny_saes(model, seed=0)
    prompts = element_prompts(model)[:10]
    assert all(p["answer_id"] != p["counterfactual_id"] for p in prompts)
    clean = final_logits(model, prompts)
    kept = final_logits(model, prompts, splice_hooks(saes, keep_error=True))
    dropped = final_logits(model, prompts, splice_hooks(saes, keep_error=False))
    torch.testing.assert_close(kept, clean, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(dropped, clean, atol=1e-3)


def test_measure_quality_table(model, corpus):
    saes = tiny_saes(model, seed=0)
    q = measure_quality(model, saes, corpus.heldout[:8], ce_rows=2, batch_rows=4)
    assert set(q["per_sae"]) == set(saes)
    for r in q["per_sae"].values():
        assert r["ce_loss_recovered"] == pytest.approx(
            (r["ce_zero_ablation"] - r["ce_spliced"]) / (r["ce_zero_ablation"] - r["ce_clean"]))
    md = quality_markdown(q)
    assert md.count("| `blocks.") == len(saes)
    json.dumps(q)  # strict JSON (no tensors)


def test_cli_rejects_a_bad_training_config(capsys):
    from maskshare.cli import main

    assert main(["train-saes", "--epochs", "-1"]) == 2
    err = capsys.readouterr().err
    assert "epochs" in err and len(err.strip().splitlines()) == 1


@pytest.mark.real_model
def test_shipped_sae_set_loads_with_its_hooks_and_widths(real_model):
    from maskshare.artifacts import is_complete
    from maskshare.model.sae_set import embedded_sae_root
    from maskshare.saes.training import DEFAULT_HOOKS

    saes = load_saes(SAESetConfig(), real_model)
    assert list(saes) == DEFAULT_HOOKS
    for sae in saes.values():
        assert sae.cfg.d_in == real_model.cfg.d_model
        assert sae.cfg.d_sae == 4 * real_model.cfg.d_model
    root = embedded_sae_root("smollm2-135m")
    assert is_complete(root)
    q = json.loads((root / "quality.json").read_text())
    assert set(q["per_sae"]) == set(DEFAULT_HOOKS)
    # the recipe the README describes: >= 2M training tokens, mostly model-written
    from maskshare.artifacts import read_manifest

    m = read_manifest(root)
    corpus = m["corpus"]
    assert corpus["train_tokens"] >= 2_000_000
    assert corpus["config"]["mix"]["sampled"] > 0.5 and "sampling" in corpus
    assert m["config"]["architecture"] == "topk" and m["timings"]["total_s"] > 0
    weights = list(root.glob("*/sae_weights.safetensors"))
    assert len(weights) == len(DEFAULT_HOOKS)
    assert sum(w.stat().st_size for w in weights) <= 50 * 2**20
    from safetensors import safe_open

    for w in weights:
        with safe_open(str(w), framework="pt") as f:
            assert all(f.get_slice(k).get_dtype() in ("F16", "BF16") for k in f.keys())


def test_activation_store_is_a_manifest_checked_resumable_artifact(model, corpus, tmp_cache,
                                                                  monkeypatch):
    import maskshare.saes.activation_store as store_mod
    import maskshare.saes.training as st
    from maskshare.artifacts import is_complete

    cfg = SAETrainingConfig(model="tiny", hooks=["blocks.0.hook_resid_post"], corpus=SMALL,
                            activations="model", forward_batch_rows=4)
    calls = []
    real = store_mod._collect_shard
    monkeypatch.setattr(store_mod, "_collect_shard",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(store_mod, "SHARD_ROWS", 40)
    small = type(corpus)(train=corpus.train[:100], heldout=corpus.heldout,
                         description=corpus.description)
    d = st.activation_store(model, small, cfg)
    n_shards = 3
    assert is_complete(d) and len(calls) == n_shards
    first = store_mod.load_hook(d, "blocks.0.hook_resid_post")
    assert first.shape == (100 * (SMALL.context_size - 1), model.cfg.d_model)
    st.activation_store(model, small, cfg)
    assert len(calls) == n_shards  # reused
    shard = sorted(d.glob("shard-*"))[1]
    shard.write_bytes(shard.read_bytes()[:100])  # truncated: rebuilt, never trusted
    st.activation_store(model, small, cfg)
    assert len(calls) == 2 * n_shards
    assert torch.equal(store_mod.load_hook(d, "blocks.0.hook_resid_post"), first)

    # killed after one shard: the rerun collects only the missing shards
    import shutil
    shutil.rmtree(d)
    def dies_after_one(*a, **k):
        if len(calls) >= 2 * n_shards + 1:
            raise KeyboardInterrupt
        return calls.append(1) or real(*a, **k)
    monkeypatch.setattr(store_mod, "_collect_shard", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        st.activation_store(model, small, cfg)
    assert not d.exists()
    monkeypatch.setattr(store_mod, "_collect_shard",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    st.activation_store(model, small, cfg)
    assert len(calls) == 3 * n_shards
    assert torch.equal(store_mod.load_hook(d, "blocks.0.hook_resid_post"), first)


def test_outlier_positions_are_dropped_from_training(model, corpus, tmp_cache):
    from maskshare.saes.activation_store import outlier_mask

    x = torch.randn(1000, 8)
    x[[3, 500]] *= 50
    keep = outlier_mask(x, 10.0)
    assert keep.sum() == 998 and not keep[3] and not keep[500]
