"""Masked forward pass, slot statistics, mask training, evaluation and circuit (the report:
test_report.py).

Everything runs on the tiny random model with hand-made slots (no grouping, no dataset)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from maskshare.config import Ablation, ErrorTerm, MaskConfig, Relaxation
from maskshare.evaluation.metrics import (
    curve_area,
    evaluate_masks,
    f_at_size,
    jaccard,
    size_metrics,
)
from maskshare.masks.circuit import circuit_summary, kept_latents, top_activating_tokens
from maskshare.masks.masking import MaskedModel, binarize, empty_masks, full_masks
from maskshare.masks.prepared import clean_logit_diffs
from maskshare.masks.slot_stats import SlotStats, compute_slot_stats
from maskshare.masks.training import MaskTrainingError, TrainResult, train_masks, train_sweep
from maskshare.testing import tiny_model, tiny_saes, tiny_task

PROMPTS = [
    "The chemical symbol for gold is",
    "The chemical symbol for iron is",
    "Element: Gold\nSymbol:",
    "Which symbol stands for the element on the periodic table? Answer:",
    "gold Au 79",
    "x = [1, 2, 3]\nprint(x[0])",
    "The chemical symbol for oxygen is",
]
N_SLOTS = 5
# ablations to a per-slot value (counterfactual patching: tests/masks/test_counterfactual.py)
MEAN_ABLATIONS = [a for a in Ablation if a != Ablation.COUNTERFACTUAL]


def _slots_for(n: int) -> np.ndarray:
    """BOS -> 0, final -> 1, the one before -> 2, others alternate 3/4."""
    s = np.array([0] + [3 + (i % 2) for i in range(n - 1)])
    s[-1] = 1
    if n > 2:
        s[-2] = 2
    return s


@pytest.fixture(scope="module")
def data(tiny):
    model, saes = tiny
    tokens, slots, ans, cf = tiny_task(model, PROMPTS, _slots_for, seed=0)
    strs = [model.tokenizer.convert_ids_to_tokens(t) for t in tokens]
    stats = compute_slot_stats(model, saes, tokens, slots, N_SLOTS, batch_size=3)
    return dict(model=model, saes=saes, tokens=tokens, slots=slots, ans=ans, cf=cf, strs=strs,
                stats=stats)


def _final_logits_reference(d, fn=None):
    """Full pass of each prompt alone (no start_at_layer, no batching) with `fn(hook, x,
    slots)` replacing the activation at every SAE hook (None: the clean model): [N, vocab]."""
    hook_fns = {} if fn is None else {h: fn for h in d["saes"]}
    out = []
    for t, s in zip(d["tokens"], d["slots"], strict=True):
        toks = torch.tensor([t])
        sl = torch.as_tensor(s)[None]
        fwd = [(h, lambda act, hook, h_=h, fn_=f, sl_=sl: fn_(h_, act, sl_))
               for h, f in hook_fns.items()]
        with torch.no_grad():
            logits = d["model"].run_with_hooks(toks, fwd_hooks=fwd)
        out.append(logits[0, -1])
    return torch.stack(out)


def _ordered_final_logits(mm, batches, masks):
    rows = {}
    with torch.no_grad():
        for b in batches:
            lg = mm.final_logits(b, masks)
            for j, i in enumerate(b.idx):
                rows[i] = lg[j]
    return torch.stack([rows[i] for i in range(len(rows))])


def _mm(d, **kw):
    return MaskedModel(d["model"], d["saes"], d["stats"], N_SLOTS, **kw)


def _prep(mm, d, batch_size=4):
    return mm.prepare(d["tokens"], d["slots"], d["ans"], d["cf"], batch_size=batch_size)


def _random_binary(saes, seed=0, p=0.5):
    g = torch.Generator().manual_seed(seed)
    return {h: (torch.rand(N_SLOTS, s.cfg.d_sae, generator=g) < p).float()
            for h, s in saes.items()}


# ---- the masked forward pass ----

def test_full_mask_with_clean_error_reproduces_the_clean_model(data):
    mm = _mm(data, error=ErrorTerm.CLEAN)
    batches = _prep(mm, data)
    got = _ordered_final_logits(mm, batches, full_masks(data["saes"], N_SLOTS))
    ref = _final_logits_reference(data)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-5)
    ld = mm.logit_diffs(batches, full_masks(data["saes"], N_SLOTS))
    clean = clean_logit_diffs(data["model"], data["tokens"], data["ans"], data["cf"])
    np.testing.assert_allclose(ld, clean, atol=1e-4)
    np.testing.assert_allclose(mm.clean_logit_diffs(batches), clean, atol=1e-5)
    # and the mask matters: ablating everything moves the logits
    empty = _ordered_final_logits(mm, batches, empty_masks(data["saes"], N_SLOTS))
    assert (empty - ref).abs().max() > 1e-2


def test_full_mask_reproduces_the_sae_spliced_model(data):
    """Error `drop`: every non-BOS activation replaced by dec(enc(x)); BOS untouched."""
    saes = data["saes"]
    mm = _mm(data, error=ErrorTerm.DROP)

    def splice(h, x, s):
        y = saes[h].decode(saes[h].encode(x))
        y[:, 0] = x[:, 0]
        return y

    ref = _final_logits_reference(data, splice)
    got = _ordered_final_logits(mm, _prep(mm, data), full_masks(saes, N_SLOTS))
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("ablation,error", [(Ablation.SLOT_MEAN, ErrorTerm.MEAN),
                                            (Ablation.GLOBAL_MEAN, ErrorTerm.DROP),
                                            (Ablation.ZERO, ErrorTerm.DROP)])
def test_empty_mask_reproduces_the_all_ablated_model(data, ablation, error):
    saes, st = data["saes"], data["stats"]
    mm = _mm(data, ablation=ablation, error=error)

    def ablate(h, x, s):
        if ablation == Ablation.SLOT_MEAN:
            a = st[h].latent_mean[s]
        elif ablation == Ablation.GLOBAL_MEAN:
            a = st[h].global_latent_mean.expand(*s.shape, -1)
        else:
            a = torch.zeros(*s.shape, saes[h].cfg.d_sae)
        y = saes[h].decode(a)
        if error == ErrorTerm.MEAN:
            y = y + st[h].error_mean[s]
        y[:, 0] = x[:, 0]
        return y

    ref = _final_logits_reference(data, ablate)
    got = _ordered_final_logits(mm, _prep(mm, data), empty_masks(saes, N_SLOTS))
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-5)


def _sae_lens_final_logits(d, saes: dict, use_error_term: bool, restore_bos: bool = False):
    """sae_lens's own splice (HookedSAETransformer.saes), each prompt alone: [N, vocab].
    `restore_bos`: put each hook's input back at BOS through sae_lens's own hook points
    (hook_sae_input -> hook_sae_output), as maskshare never splices BOS."""
    model, out = d["model"], []
    kept: dict[str, torch.Tensor] = {}  # each hook's input at BOS, for the running prompt

    def keep(act, hook):
        kept[hook.name.removesuffix(".hook_sae_input")] = act[:, 0].clone()

    def put_back(act, hook):
        act = act.clone()
        act[:, 0] = kept[hook.name.removesuffix(".hook_sae_output")]
        return act

    for t in d["tokens"]:
        fwd = [(f"{h}.hook_sae_input", keep) for h in saes] + \
            [(f"{h}.hook_sae_output", put_back) for h in saes] if restore_bos else []
        with torch.no_grad(), model.saes(saes=list(saes.values()),
                                         use_error_term=use_error_term):
            out.append(model.run_with_hooks(torch.tensor([t]), fwd_hooks=fwd)[0, -1])
    return torch.stack(out)


@pytest.mark.parametrize("ablation", MEAN_ABLATIONS)
def test_full_mask_with_clean_error_equals_sae_lens_splice_with_error_term(data, ablation):
    """M with error `clean` is sae_lens's `use_error_term=True` splice at every hook."""
    mm = _mm(data, ablation=ablation, error=ErrorTerm.CLEAN)
    got = _ordered_final_logits(mm, _prep(mm, data), full_masks(data["saes"], N_SLOTS))
    ref = _sae_lens_final_logits(data, data["saes"], use_error_term=True)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_full_mask_with_dropped_error_equals_sae_lens_splice_without_error_term(data):
    """M with error `drop` is sae_lens's `use_error_term=False` splice except at BOS, which
    maskshare never splices: equal once BOS is passed through via sae_lens's hook points;
    without that, equal only where nothing downstream reads BOS (one SAE at the last layer,
    no attention after it), and different otherwise (every later token attends to BOS)."""
    saes = data["saes"]
    mm = _mm(data, error=ErrorTerm.DROP)
    got = _ordered_final_logits(mm, _prep(mm, data), full_masks(saes, N_SLOTS))
    ref = _sae_lens_final_logits(data, saes, use_error_term=False, restore_bos=True)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    spliced_bos = _sae_lens_final_logits(data, saes, use_error_term=False)
    assert (got - spliced_bos).abs().max() > 1e-3

    deepest = f"blocks.{data['model'].cfg.n_layers - 1}.hook_resid_post"
    last = {h: s for h, s in saes.items() if h == deepest}
    assert len(last) == 1
    one = MaskedModel(data["model"], last, data["stats"], N_SLOTS, error=ErrorTerm.DROP)
    got1 = _ordered_final_logits(one, _prep(one, data), full_masks(last, N_SLOTS))
    torch.testing.assert_close(got1, _sae_lens_final_logits(data, last, use_error_term=False),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("ablation", MEAN_ABLATIONS)
def test_fast_splice_matches_the_first_version_in_values_and_gradients(data, ablation):
    """One-hot expansion + one decode for error `clean` (the default) against a gather and
    two decodes (dec(a') + x - dec(a)): same logit differences, same mask gradients."""
    saes = data["saes"]
    g = torch.Generator().manual_seed(1)
    relaxed = {h: torch.rand(N_SLOTS, s.cfg.d_sae, generator=g) for h, s in saes.items()}
    out = {}
    for name, expand, fuse in (("fast", "onehot", True), ("first", "gather", False)):
        mm = _mm(data, ablation=ablation, error=ErrorTerm.CLEAN).with_options(
            expand=expand, fuse_clean=fuse)
        assert (mm.expand, mm.fuse_clean) == (expand, fuse)
        assert all(mm.linear_decoder.values())
        theta = {h: m.clone().requires_grad_(True) for h, m in relaxed.items()}
        lds = [mm.logit_diff(b, theta) for b in _prep(mm, data, batch_size=3)]
        torch.cat(lds).square().sum().backward()
        out[name] = (torch.cat(lds).detach(), {h: t.grad for h, t in theta.items()})
    torch.testing.assert_close(out["fast"][0], out["first"][0], atol=1e-4, rtol=1e-4)
    for h in saes:
        assert out["fast"][1][h].abs().sum() > 0
        torch.testing.assert_close(out["fast"][1][h], out["first"][1][h], atol=1e-4, rtol=1e-3)


def test_empty_mask_with_clean_error_keeps_only_the_error_and_the_ablation(data):
    saes, st = data["saes"], data["stats"]
    mm = _mm(data, ablation=Ablation.SLOT_MEAN, error=ErrorTerm.CLEAN)

    def ablate(h, x, s):
        y = saes[h].decode(st[h].latent_mean[s]) + x - saes[h].decode(saes[h].encode(x))
        y[:, 0] = x[:, 0]
        return y

    ref = _final_logits_reference(data, ablate)
    got = _ordered_final_logits(mm, _prep(mm, data), empty_masks(saes, N_SLOTS))
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("hooks", [["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"],
                                   ["blocks.1.hook_resid_pre", "blocks.2.hook_resid_post"],
                                   ["blocks.1.hook_mlp_out", "blocks.2.hook_resid_post"]])
def test_start_at_layer_reuse_matches_a_full_pass(hooks):
    model = tiny_model(seed=1, n_layers=3)
    saes = tiny_saes(model, hooks=hooks, seed=1)
    tok = model.tokenizer
    tokens = [[tok.bos_token_id] + tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    slots = [_slots_for(len(t)) for t in tokens]
    stats = compute_slot_stats(model, saes, tokens, slots, N_SLOTS)
    mm = MaskedModel(model, saes, stats, N_SLOTS, error=ErrorTerm.CLEAN)
    assert mm.start_layer >= 1
    masks = _random_binary(saes, seed=3)
    batches = mm.prepare(tokens, slots, [5] * len(tokens), [6] * len(tokens), batch_size=3)
    got = _ordered_final_logits(mm, batches, masks)
    # reference: the same splice at every hook, but a full pass from the tokens, one prompt
    ref = []
    for i, (t, s) in enumerate(zip(tokens, slots, strict=True)):
        b = mm.prepare([t], [s], [5], [6], batch_size=1)[0]
        fwd = [(h, lambda act, hook, h_=h, b_=b: mm.splice(h_, act, b_, masks[h_]))
               for h in hooks]
        with torch.no_grad():
            ref.append(model.run_with_hooks(torch.tensor([t]), fwd_hooks=fwd)[0, -1])
        assert b.idx == [0] and i >= 0
    torch.testing.assert_close(got, torch.stack(ref), atol=1e-4, rtol=1e-5)
    clean = clean_logit_diffs(model, tokens, [5] * len(tokens), [6] * len(tokens))
    assert not np.allclose(mm.logit_diffs(batches, masks), clean, atol=1e-3)


def test_options_are_fixed_and_with_options_shares_model_saes_and_stats(data):
    import dataclasses

    from maskshare.masks.masking import MaskOptions

    mm = _mm(data, ablation="zero", error="clean")
    assert mm.options == MaskOptions(ablation=Ablation.ZERO, error=ErrorTerm.CLEAN)
    with pytest.raises(AttributeError, match="with_options"):
        mm.error = ErrorTerm.DROP
    with pytest.raises(dataclasses.FrozenInstanceError):
        mm.options.expand = "gather"
    with pytest.raises(TypeError):
        _mm(data, no_such_option=1)
    other = mm.with_options(error=ErrorTerm.MEAN, reuse_prefix=False)
    assert (other.model, other.stats) == (mm.model, mm.stats) and other.saes == mm.saes
    assert other.error == ErrorTerm.MEAN and other.ablation == Ablation.ZERO
    assert mm.error == ErrorTerm.CLEAN  # the original is untouched
    assert other.start_layer == 0 and mm.start_layer > 0
    # every pass from the embeddings gives what the cached prefix gives
    masks = _random_binary(data["saes"], seed=2)
    full = other.with_options(error=ErrorTerm.CLEAN)
    torch.testing.assert_close(_ordered_final_logits(full, _prep(full, data), masks),
                               _ordered_final_logits(mm, _prep(mm, data), masks),
                               atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("split", [False, True])
def test_padding_does_not_change_any_prompt(data, split):
    # run padded batches whole, or in length groups
    mm = _mm(data, error=ErrorTerm.MEAN).with_options(split_by_length=split)
    g = torch.Generator().manual_seed(1)
    masks = {h: torch.rand(N_SLOTS, s.cfg.d_sae, generator=g) for h, s in data["saes"].items()}
    together = _prep(mm, data, batch_size=len(PROMPTS))
    assert len(together) == 1 and len(set(len(t) for t in data["tokens"])) > 2
    assert (together[0].slots == -1).any()  # really padded
    alone = _prep(mm, data, batch_size=1)
    a = _ordered_final_logits(mm, together, masks)
    b = _ordered_final_logits(mm, alone, masks)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


def test_length_parts_minimise_padding():
    from maskshare.model.activations import length_parts

    assert length_parts([7] * 8 + [10] * 8 + [12] * 8 + [16] * 8) == [(0, 24), (24, 32)]
    assert length_parts([9] * 6) == [(0, 6)]
    assert length_parts([5] * 10 + [30], max_parts=1) == [(0, 11)]


def test_streaming_slot_stats_equal_in_memory_means(data, tmp_path):
    model, saes = data["model"], data["saes"]
    st = compute_slot_stats(model, saes, data["tokens"], data["slots"], N_SLOTS, batch_size=2)
    for h, sae in saes.items():
        xs, ss, pos = [], [], []
        for t, s in zip(data["tokens"], data["slots"], strict=True):
            _, cache = model.run_with_cache(torch.tensor([t]), names_filter=h)
            xs.append(cache[h][0])
            ss.append(torch.as_tensor(s))
            pos.append(torch.arange(len(t)))
        x, s, p = torch.cat(xs), torch.cat(ss), torch.cat(pos)
        with torch.no_grad():
            a = sae.encode(x)
            e = x - sae.decode(a)
        for k in range(N_SLOTS):
            torch.testing.assert_close(st[h].latent_mean[k], a[s == k].mean(0), atol=1e-5,
                                       rtol=1e-4)
            torch.testing.assert_close(st[h].error_mean[k], e[s == k].mean(0), atol=1e-5,
                                       rtol=1e-4)
        torch.testing.assert_close(st[h].global_latent_mean, a[p > 0].mean(0), atol=1e-5,
                                   rtol=1e-4)
        torch.testing.assert_close(st[h].global_error_mean, e[p > 0].mean(0), atol=1e-5,
                                   rtol=1e-4)
    assert st.counts.tolist() == np.bincount(np.concatenate(data["slots"]),
                                             minlength=N_SLOTS).tolist()
    st.save(tmp_path / "s.safetensors")
    back = SlotStats.load(tmp_path / "s.safetensors")
    assert list(back.hooks) == list(st.hooks)
    for h in saes:
        assert torch.equal(back[h].latent_mean, st[h].latent_mean)
        assert torch.equal(back[h].global_error_mean, st[h].global_error_mean)


# ---- training ----

def _cfg(**kw):
    """Cold trainings of a fixed length (the early stop off unless a test sets it)."""
    base = dict(steps=10, checkpoint_every=3, batch_size=3, lr=0.1, temperature_start=1.0,
                temperature_end=50.0, early_stop_patience=None)
    base.update(kw)
    return MaskConfig(**base)


@pytest.mark.parametrize("relaxation", [Relaxation.SIGMOID, Relaxation.HARD_CONCRETE])
def test_resume_after_interruption_gives_the_same_masks(data, tmp_path, relaxation):
    mm = _mm(data)
    batches = _prep(mm, data, batch_size=3)
    cfg = _cfg(relaxation=relaxation)
    ref = train_masks(mm, batches, cfg, 0.01, seed=7, progress=False)
    assert any(not torch.equal(t, torch.full_like(t, cfg.init_logit)) for t in ref.theta.values())

    class Crash(Exception):
        pass

    def crash_at_7(step, rec):
        if step == 7:
            raise Crash

    with pytest.raises(Crash):
        train_masks(mm, batches, cfg, 0.01, seed=7, checkpoint_dir=tmp_path, progress=False,
                    callback=crash_at_7)
    seen = []
    res = train_masks(mm, batches, cfg, 0.01, seed=7, checkpoint_dir=tmp_path, progress=False,
                      callback=lambda s, r: seen.append(s))
    assert seen[0] == 6  # resumed from the step-6 checkpoint, not from scratch
    for h in ref.theta:
        assert torch.equal(res.theta[h], ref.theta[h])
    assert [r["loss"] for r in res.history] == [r["loss"] for r in ref.history]
    other = train_masks(mm, batches, cfg, 0.01, seed=8, progress=False)
    if relaxation == Relaxation.HARD_CONCRETE:
        assert any(not torch.equal(other.theta[h], ref.theta[h]) for h in ref.theta)


def test_nan_in_statistics_stops_training_naming_step_hook_and_slot(data):
    st = data["stats"]
    bad_hook = list(data["saes"])[1]
    hooks = {h: v for h, v in st.hooks.items()}
    from maskshare.masks.slot_stats import HookStats

    lm = hooks[bad_hook].latent_mean.clone()
    lm[3, 5] = float("nan")
    hooks[bad_hook] = HookStats(lm, hooks[bad_hook].error_mean,
                                hooks[bad_hook].global_latent_mean,
                                hooks[bad_hook].global_error_mean)
    mm = MaskedModel(data["model"], data["saes"], SlotStats(hooks, st.counts), N_SLOTS)
    batches = _prep(mm, data)
    with pytest.raises(MaskTrainingError, match=rf"step 0.*{bad_hook}, slot\(s\) \[3\]"):
        train_masks(mm, batches, _cfg(objective="logit-diff"), 0.01, progress=False,
                    targets=None)


def test_sweep_larger_lambda_keeps_fewer_latents_and_saves(data, tmp_path):
    mm = _mm(data)
    batches = _prep(mm, data, batch_size=4)
    cfg = _cfg(steps=30, lambdas=[0.0, 0.5], lr=0.2)
    res = train_sweep(mm, batches, cfg, seed=0, out_dir=tmp_path, progress=False)
    k0 = sum(res[0.0].kept().values())
    k1 = sum(res[0.5].kept().values())
    assert k1 < k0
    back = TrainResult.load(tmp_path / "0.5")
    assert all(torch.equal(back.theta[h], res[0.5].theta[h]) for h in back.theta)
    summary = json.loads((tmp_path / "0.5" / "summary.json").read_text())
    assert summary["kept_total"] == k1 and summary["steps"] == 30
    # a finished lambda is loaded, not retrained; other settings retrain it
    again = train_sweep(mm, batches, cfg, seed=0, out_dir=tmp_path, progress=False)
    assert all(torch.equal(again[0.5].theta[h], res[0.5].theta[h]) for h in back.theta)
    changed = train_sweep(mm, batches, _cfg(steps=5, lambdas=[0.5], lr=0.2), seed=0,
                          out_dir=tmp_path, progress=False)
    assert len(changed[0.5].history) == 5
    assert json.loads((tmp_path / "0.5" / "summary.json").read_text())["steps"] == 5


@pytest.mark.parametrize("objective", ["kl", "ce"])
def test_other_objectives_train(data, objective):
    mm = _mm(data)
    batches = _prep(mm, data)
    res = train_masks(mm, batches, _cfg(objective=objective, steps=4), 0.01, progress=False)
    assert len(res.history) == 4 and all(np.isfinite(r["loss"]) for r in res.history)



def test_mask_training_does_not_depend_on_the_callers_grad_mode(data):
    """load_model no longer switches grad mode on globally: training enables it itself."""
    mm = _mm(data)
    batches = _prep(mm, data)
    on = train_masks(mm, batches, _cfg(steps=3), 0.01, progress=False)
    with torch.no_grad():
        off = train_masks(mm, batches, _cfg(steps=3), 0.01, progress=False)
        assert not torch.is_grad_enabled()
    for h in on.theta:
        torch.testing.assert_close(on.theta[h], off.theta[h], atol=0, rtol=0)
    assert on.history[-1]["loss"] == off.history[-1]["loss"]


# ---- evaluation ----

def test_evaluation_of_full_and_empty_masks(data):
    mm = _mm(data)
    batches = _prep(mm, data)
    full = evaluate_masks(mm, batches, full_masks(data["saes"], N_SLOTS))
    assert full["faithfulness"] == pytest.approx(1.0)
    assert full["completeness"] == pytest.approx(0.0, abs=1e-6)
    n_non_bos = sum(len(t) - 1 for t in data["tokens"])
    assert full["latents_per_token"] == pytest.approx(sum(s.cfg.d_sae for s in data["saes"].values()))
    assert full["n_tokens"] == n_non_bos
    empty = evaluate_masks(mm, batches, empty_masks(data["saes"], N_SLOTS))
    assert empty["faithfulness"] == pytest.approx(0.0, abs=1e-6)
    assert empty["latents_per_token"] == 0 and empty["circuit_size"] == 0
    json.dumps(full)


@pytest.mark.parametrize("error", [ErrorTerm.CLEAN, ErrorTerm.DROP])
def test_shared_reference_equals_one_computed_from_scratch(data, error):
    """reference_lds takes the clean lds shared across variants and, with error `clean`,
    uses them as ld(M) instead of a full-mask pass: same values as computing everything."""
    from maskshare.evaluation.metrics import reference_lds

    mm = _mm(data, error=error)
    batches = _prep(mm, data)
    shared = _mm(data, ablation=Ablation.ZERO, error=error)  # another variant, same prompts
    clean = shared.clean_logit_diffs(_prep(shared, data))
    ref = reference_lds(mm, batches, clean=clean)
    np.testing.assert_allclose(ref["ld_model"],
                               mm.logit_diffs(batches, full_masks(data["saes"], N_SLOTS)),
                               atol=1e-4)
    np.testing.assert_allclose(ref["ld_model_clean"], mm.clean_logit_diffs(batches), atol=1e-5)
    np.testing.assert_allclose(ref["ld_ablated"],
                               mm.logit_diffs(batches, empty_masks(data["saes"], N_SLOTS)))
    if error == ErrorTerm.DROP:  # the SAEs change the model: M is not the clean model
        assert np.abs(ref["ld_model"] - ref["ld_model_clean"]).max() > 1e-3


def test_evaluation_with_zero_prompts_says_so(data):
    mm = _mm(data)
    out = evaluate_masks(mm, [], full_masks(data["saes"], N_SLOTS), slots=[])
    assert out["n_prompts"] == 0 and out["faithfulness"] is None
    assert out["latents_per_token"] is None
    assert "no usable prompts" in out["note"]
    json.dumps(out)


def test_size_metrics_count_tokens_slots_and_distinct_latents(data):
    hooks = list(data["saes"])
    m = empty_masks(data["saes"], N_SLOTS)
    m[hooks[0]][1, [0, 1]] = 1.0   # final slot: 2 latents
    m[hooks[1]][3, 1] = 1.0        # slot 3: 1 latent
    m[hooks[1]][4, 2] = 1.0        # slot 4 (unused by the evaluated prompts below)
    m[hooks[0]][0, :] = 1.0        # BOS: never counted
    slots = [np.array([0, 3, 2, 1]), np.array([0, 3, 1])]
    s = size_metrics(m, slots)
    assert s["latents_per_token"] == pytest.approx((2 * 1 + 2 * 2) / 5)
    assert s["circuit_size"] == 3 and s["slots_used"] == 3 and s["circuit_size_all_slots"] == 4
    assert s["distinct_latents"] == 4


def test_curve_area_jaccard_and_matched_size():
    assert curve_area([10, 100], [0.0, 1.0]) == pytest.approx(0.5, abs=1e-3)
    assert curve_area([10, 100], [1.0, 1.0], x_range=(1, 1000)) == pytest.approx(1.0)
    assert curve_area([], []) is None
    assert f_at_size([10, 100], [0.2, 0.8], 10 ** 1.5) == pytest.approx(0.5)
    assert f_at_size([10, 100], [0.2, 0.8], 1000) is None
    a = {"h": torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])}
    b = {"h": torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0]])}
    assert jaccard(a, b) == pytest.approx(2 / 3)
    assert jaccard(a, b, level="latents") == pytest.approx(1.0)
    z = {"h": torch.zeros(3, 2)}
    assert jaccard(z, z) is None


# ---- circuit and report ----

def test_circuit_listing_with_top_tokens_and_neuronpedia(data):
    saes = data["saes"]
    hooks = list(saes)
    m = empty_masks(saes, N_SLOTS)
    m[hooks[1]][1, 7] = 1.0
    m[hooks[0]][3, 2] = 1.0
    lat = kept_latents(m)
    assert lat == {hooks[0]: [2], hooks[1]: [7]}
    top = top_activating_tokens(data["model"], saes, data["tokens"], data["strs"], lat, k=3)
    saes[hooks[1]].cfg.metadata.neuronpedia_id = "tiny/1-res"
    try:
        c = circuit_summary(m, saes, data["stats"], top)
    finally:
        saes[hooks[1]].cfg.metadata.neuronpedia_id = None
    assert [s["slot"] for s in c["slots"]] == [1, 3]
    row = c["slots"][0]["latents"][0]
    assert row["hook"] == hooks[1] and row["latent"] == 7
    assert row["neuronpedia"] == "https://www.neuronpedia.org/tiny/1-res/7"
    assert row["mean_activation"] == pytest.approx(float(data["stats"][hooks[1]].latent_mean[1, 7]))
    # top tokens really are the largest activations of that latent over non-BOS tokens
    with torch.no_grad():
        best = max(
            float(saes[hooks[1]].encode(data["model"].run_with_cache(
                torch.tensor([t]), names_filter=hooks[1])[1][hooks[1]][0, 1:])[:, 7].max())
            for t in data["tokens"])
    if best > 0:
        assert row["top_tokens"][0]["activation"] == pytest.approx(best, rel=1e-5)
    assert c["depth"]["per_slot"][hooks[0]] == [0, 0, 1, 0]
    json.dumps(c)


def test_binarize_is_theta_positive():
    th = {"h": torch.tensor([[0.5, -0.1, 0.0]])}
    assert binarize(th)["h"].tolist() == [[1.0, 0.0, 0.0]]


def test_early_stop_truncates_training_once_the_binary_mask_is_stable(data):
    mm = _mm(data)
    batches = _prep(mm, data, batch_size=4)
    full = train_masks(mm, batches, _cfg(steps=80, lr=0.2), 0.5, progress=False)
    assert len(full.history) == 80 and "changed" not in full.history[0]  # off: no record
    assert MaskConfig().early_stop_patience == 10  # on by default
    cfg = _cfg(steps=80, lr=0.2, early_stop_patience=4, early_stop_min_steps=10)
    res = train_masks(mm, batches, cfg, 0.5, progress=False)
    n = len(res.history)
    assert 10 <= n < 80
    assert not any(r["changed"] for r in res.history[-4:])
    assert any(r["changed"] for r in res.history)
    # a pure truncation of the same run: the same losses and kept counts step by step
    assert [r["loss"] for r in res.history] == [r["loss"] for r in full.history[:n]]
