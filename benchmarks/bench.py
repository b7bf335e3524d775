"""maskshare benchmark: how fast, how big, how close to the targets (issue 7).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench.py [--device cpu|cuda] [--quick] [--skip-pipeline]

Prints a table and writes JSON to benchmarks/results/latest.json and
benchmarks/results/<device>.json. Sections (each a function of a model, SAEs and prompts,
so tests/test_bench.py runs them on the tiny model):

- machine: cores, torch threads (= available cores, `configure_threads`), torch, device;
- collection: tokens/s for attention features, for all SAE latents, and for both in one
  pass, the model run only as deep as the deepest hook needed;
- mask_step: one training step (relaxed masks, forward, backward, Adam) against a plain
  forward+backward of the same layers on the same batch (target ratio <= 1.3), and against
  the same step without reusing the residual below the first SAE hook; interleaved in one
  run, medians of the repeats (ratios: median of the per-repeat ratios);
- grouping: attention-grouping fit + assign for ~20k and ~100k tokens, and peak traced
  memory (numpy + Python allocations, tracemalloc); the features are real feature rows
  tiled (whole prompts) with small noise;
- scaling: step time and memory kept for backward against prompts, prompt length, SAEs and
  slots;
- pipeline (unless --skip-pipeline): `run_pipeline` on configs/default.yaml in a child
  process, cold (fresh runs dir and dataset/group/mask caches; the converted model and the
  SAEs stay) then cached; wall time and the child's peak RSS.

The SAEs are the embedded set when it exists, else random StandardSAEs of width 2304 at
resid_post of layers 6/12/18/24 (same shapes, so the same cost); `saes` in the JSON says
which. Grouping runs on the CPU (numpy/scikit-learn) whatever --device says.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RANDOM_HOOKS = [f"blocks.{layer}.hook_resid_post" for layer in (6, 12, 18, 24)]
FALLBACK_ELEMENTS = ["gold", "silver", "iron", "copper", "oxygen", "carbon", "helium", "sodium"]
FALLBACK_PHRASINGS = [
    "The chemical symbol for {} is",
    "Which symbol stands for {} on the periodic table? It is",
    "Q: What is the chemical symbol of the element {}?\nA:",
    "In chemistry, the element {} is written with the symbol",
]


# ----------------------------------------------------------------------------- helpers
def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> tuple[float, float]:
    """(wall s, process CPU s) of fn(), synchronised on CUDA."""
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def med(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def machine_info(device: str) -> dict:
    from maskshare.runtime import available_cores

    info = {"cpu_count": os.cpu_count(), "available_cores": available_cores(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "device": device, "load_average": list(os.getloadavg())}
    try:
        mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
        info["memory_gb"] = round(int(mem) / 2**20, 1)
    except OSError:  # pragma: no cover - non-Linux
        pass
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def load_setup(device: str, n_prompts: int | None = None):
    """The embedded model, its SAEs (or random stand-ins, said so) and real prompts."""
    from maskshare.models import load_model
    from maskshare.saes import SAESetConfig, load_saes
    from maskshare.testing import tiny_saes

    model = load_model("smollm2-135m")  # on the CPU first: slot stats run there
    try:
        saes = load_saes(SAESetConfig(), model)
        source = "embedded set: " + ", ".join(f"{h} ({s.cfg.d_sae})" for h, s in saes.items())
    except Exception as e:  # noqa: BLE001 - the set may not be trained yet: say so
        saes = tiny_saes(model, hooks=RANDOM_HOOKS, d_sae=2304, seed=0)
        source = f"random StandardSAEs d_sae=2304 at {RANDOM_HOOKS} (embedded set unavailable: {e})"
    prompts = real_prompts(model)
    if n_prompts is not None:
        prompts = {k: v[:n_prompts] for k, v in prompts.items()}
    return model, saes, source, prompts


def real_prompts(model) -> dict:
    """tokens / answer / counterfactual ids of the built default dataset (elements-symbol,
    free-form; all splits), in a seeded shuffled order; a small fallback set if unavailable."""
    from maskshare.models import tokenize_prompt

    try:
        from maskshare.config import DatasetRef
        from maskshare.datasets import build_dataset

        items = build_dataset(DatasetRef(name="elements-symbol", variant="freeform"), model,
                              progress=False).items.sample(fraction=1.0, shuffle=True, seed=0)
        return {"tokens": [list(t) for t in items["tokens"].to_list()],
                "answer": items["answer_id"].to_list(),
                "counterfactual": items["counterfactual_id"].to_list(),
                "source": "built dataset elements-symbol/freeform"}
    except Exception as e:  # noqa: BLE001
        texts = [p.format(e_) for e_ in FALLBACK_ELEMENTS for p in FALLBACK_PHRASINGS]
        toks = [tokenize_prompt(model, t) for t in texts]
        a, c = tokenize_prompt(model, " Au")[-1], tokenize_prompt(model, " Ag")[-1]
        return {"tokens": toks, "answer": [a] * len(toks), "counterfactual": [c] * len(toks),
                "source": f"fallback elements prompts ({e})"}


def from_end_slots(tokens: list[list[int]], n_slots: int) -> list[np.ndarray]:
    """BOS -> 0; the last n_slots-2 positions own a slot each; the rest share slot 1."""
    out = []
    for t in tokens:
        s = np.ones(len(t), dtype=np.int64)
        s[0] = 0
        for k in range(1, min(n_slots - 2, len(t) - 1) + 1):
            s[-k] = 1 + k
        out.append(s)
    return out


def _to_device(mm, batches, device: str) -> None:
    if device == "cpu":
        return
    for d in (mm.abl, mm.err_mean):
        for h, v in d.items():
            if v is not None:
                d[h] = v.to(device)
    for b in batches:
        for name, v in vars(b).items():
            if isinstance(v, torch.Tensor):
                setattr(b, name, v.to(device))


def saved_for_backward_mb(fn, modules=()) -> float:
    """MB of distinct tensors autograd keeps for backward while fn() runs: the activation
    memory of a step. Storages of the parameters and buffers of `modules` (the weights, also
    when saved as views such as W.T) are left out."""
    weights = {t.untyped_storage().data_ptr() for m in modules
               for t in [*m.parameters(), *m.buffers()]}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in weights:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values()) / 2**20


# ----------------------------------------------------------------------------- collection
def bench_collection(model, saes: dict, tokens: list[list[int]], device: str = "cpu",
                     repeats: int = 2, batch_size: int = 32, feature_cfg=None) -> dict:
    """Tokens/s: attention features (every layer by default), every SAE's latents, and both in
    one pass; each stops after the deepest hook it needs. Returns the features too (`_features`)."""
    from maskshare.config import AttentionFeatures
    from maskshare.features import attention_features, selected_layers
    from maskshare.saes import hook_layer
    from maskshare.slot_stats import length_batches, pad_batch

    cfg = feature_cfg or AttentionFeatures()
    n_tok = sum(len(t) for t in tokens)
    stop = max(hook_layer(h) for h in saes) + 1
    kept: list = []

    def encode_hook(h):
        def fn(act, hook):
            kept.append(saes[h].encode(act))
        return fn

    enc = [(h, encode_hook(h)) for h in saes]
    feats = []

    def features_only():
        feats[:] = [attention_features(model, tokens, cfg, batch_size=batch_size)]

    def latents_only():
        with torch.inference_mode():
            for idx in length_batches([len(t) for t in tokens], batch_size):
                toks, att, _ = pad_batch(tokens, idx)
                model.run_with_hooks(toks.to(device), attention_mask=att.to(device),
                                     stop_at_layer=stop, fwd_hooks=enc)
        kept.clear()

    def both():
        with torch.inference_mode(), model.hooks(fwd_hooks=enc):
            attention_features(model, tokens, cfg, batch_size=batch_size)
        kept.clear()

    runs = {"features": features_only, "latents": latents_only, "features_and_latents": both}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(repeats):
        order = list(runs) if r % 2 == 0 else list(runs)[::-1]
        for k in order:
            times[k].append(timed(runs[k], device)[0])
    out = {"n_prompts": len(tokens), "n_tokens": n_tok, "repeats": repeats,
           "features_deepest_layer": max(selected_layers(model, cfg)),
           "latents_stop_at_layer": stop, "n_saes": len(saes),
           "d_sae": [s.cfg.d_sae for s in saes.values()]}
    for k, ts in times.items():
        out[f"{k}_s"] = round(med(ts), 3)
        out[f"{k}_tokens_per_s"] = round(n_tok / med(ts), 1)
    out["_features"] = feats[0]
    return out


# ----------------------------------------------------------------------------- mask step
def _plain_fwd_bwd(model, mm, batch) -> None:
    """The floor: the same layers (start_layer .. last) forward + backward on the same batch,
    same length groups, logits at the final positions, no SAEs and no masks."""
    from maskshare.masking import final_logits_from_resid, length_parts, sub_batch

    parts = length_parts(batch.lengths.tolist(), mm.max_parts, mm.min_saving) \
        if mm.split_by_length else [(0, len(batch))]
    outs = []
    for a, b in parts:
        sb = batch if len(parts) == 1 else sub_batch(batch, a, b)
        x = sb.resid.detach().requires_grad_(True)
        res = model(x, start_at_layer=mm.start_layer, stop_at_layer=model.cfg.n_layers,
                    attention_mask=sb.attention_mask)
        outs.append(res[torch.arange(len(sb)), sb.lengths - 1])
    logits = final_logits_from_resid(model, torch.cat(outs))
    r = torch.arange(len(batch))
    (logits[r, batch.answer] - logits[r, batch.counterfactual]).abs().mean().backward()


class _StepRunner:
    """One mask-training step as train_masks runs it (relaxed masks -> objective + penalty ->
    backward -> Adam), on one prepared batch, with its own theta and optimiser."""

    def __init__(self, mm, batch, device: str, lam: float = 0.01):
        from maskshare.config import MaskConfig
        from maskshare.mask_training import compute_targets, slot_weights

        self.mm, self.batch, self.lam = mm, batch, lam
        self.cfg = MaskConfig(steps=150)
        self.targets = compute_targets(mm, [batch])
        self.w = slot_weights([batch], mm.n_slots).to(device)
        self.theta = {h: torch.full((mm.n_slots, s.cfg.d_sae), float(self.cfg.init_logit),
                                    device=device, requires_grad=True)
                      for h, s in mm.saes.items()}
        self.opt = torch.optim.Adam(list(self.theta.values()), lr=self.cfg.lr)
        self.t = 0

    def __call__(self) -> None:
        from maskshare.config import Objective
        from maskshare.mask_training import objective_loss, relaxed_masks

        masks, probs = relaxed_masks(self.theta, self.cfg, self.t, 0)
        obj = objective_loss(self.mm, self.batch, masks, self.targets, 0, Objective.LOGIT_DIFF)
        size = sum((self.w[:, None] * p).sum() for p in probs.values())
        loss = obj + self.lam * size
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.t += 1


def default_error() -> str:
    """The SAE error term of configs/default.yaml (what the default pipeline trains with)."""
    from maskshare.config import load_config

    return str(load_config(ROOT / "configs" / "default.yaml").masks.error)


def _frozen(model, saes):
    from maskshare.mask_training import _Frozen

    return _Frozen(model, *saes.values())


def bench_mask_step(model, saes: dict, tokens, answers, counterfactuals, n_slots: int = 12,
                    device: str = "cpu", repeats: int = 5, stats=None,
                    error: str | None = None) -> dict:
    """Interleaved: masked step (reuse below the first hook, the default), plain fwd+bwd of the
    same layers, masked step from the embeddings every step (no reuse), and the masked step as
    first written (mask expanded per token by a gather, error `clean` with two decodes). One
    batch of all `tokens`. `stats` (SlotStats) is computed on the CPU unless given. `error`:
    the SAE error term, by default the default config's."""
    from maskshare.masking import MaskedModel
    from maskshare.slot_stats import compute_slot_stats

    slots = from_end_slots(tokens, n_slots)
    if stats is None:
        stats = compute_slot_stats(model, saes, tokens, slots, n_slots, batch_size=len(tokens))
    if device != "cpu":
        model.to(device)
        for s in saes.values():
            s.to(device)
    B = len(tokens)
    error = default_error() if error is None else error
    mm = MaskedModel(model, saes, stats, n_slots, error=error)
    mm0 = MaskedModel(model, saes, stats, n_slots, error=error)
    mm_v1 = MaskedModel(model, saes, stats, n_slots, error=error)
    mm_v1.expand, mm_v1.fuse_clean = "gather", False
    mm0.start_layer, mm0.first_outside = 0, False  # every step from the embeddings
    prep_s = {}
    batches = {}
    for name, m in (("reuse", mm), ("full", mm0)):
        t0 = time.perf_counter()
        batches[name] = m.prepare(tokens, slots, answers, counterfactuals, batch_size=B)
        _to_device(m, batches[name], device)
        sync(device)
        prep_s[name] = time.perf_counter() - t0
    b, b0 = batches["reuse"][0], batches["full"][0]
    with _frozen(model, saes):
        runs = {"masked_step": _StepRunner(mm, b, device),
                "plain_fwd_bwd": lambda: _plain_fwd_bwd(model, mm, b),
                "masked_step_no_reuse": _StepRunner(mm0, b0, device),
                "masked_step_gather_2dec": _StepRunner(mm_v1, b, device)}
        wall: dict[str, list[float]] = {k: [] for k in runs}
        cpu: dict[str, list[float]] = {k: [] for k in runs}
        for k in runs:  # warm-up, not recorded
            runs[k]()
        for r in range(repeats):
            k0 = r % len(runs)
            order = list(runs)[k0:] + list(runs)[:k0]  # rotate to spread load drift
            for k in order:
                w, c = timed(runs[k], device)
                wall[k].append(w)
                cpu[k].append(c)
        mem = {k: round(saved_for_backward_mb(runs[k], [model, *saes.values()]), 1)
               for k in runs}
        cuda_peak = {}
        if device.startswith("cuda"):
            for k in runs:
                torch.cuda.reset_peak_memory_stats()
                runs[k]()
                sync(device)
                cuda_peak[k] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    ratio = [wall["masked_step"][i] / wall["plain_fwd_bwd"][i] for i in range(repeats)]
    ratio_cpu = [cpu["masked_step"][i] / cpu["plain_fwd_bwd"][i] for i in range(repeats)]
    gain = [wall["masked_step_no_reuse"][i] / wall["masked_step"][i] for i in range(repeats)]
    gain_cpu = [cpu["masked_step_no_reuse"][i] / cpu["masked_step"][i] for i in range(repeats)]
    v1 = [wall["masked_step_gather_2dec"][i] / wall["masked_step"][i] for i in range(repeats)]
    v1_plain = [wall["masked_step_gather_2dec"][i] / wall["plain_fwd_bwd"][i]
                for i in range(repeats)]
    out = {"n_prompts": B, "n_tokens": sum(map(len, tokens)),
           "padded_tokens": int(b.tokens.numel()), "n_slots": n_slots, "n_saes": len(saes),
           "error": error,
           "start_layer": mm.start_layer, "n_layers": model.cfg.n_layers, "repeats": repeats,
           "prepare_s": {k: round(v, 3) for k, v in prep_s.items()}}
    for k in runs:
        out[f"{k}_s"] = round(med(wall[k]), 4)
        out[f"{k}_cpu_s"] = round(med(cpu[k]), 4)
        out[f"{k}_all_s"] = [round(x, 4) for x in wall[k]]
    out.update({
        "ratio_masked_to_plain": round(med(ratio), 3),
        "ratio_masked_to_plain_cpu": round(med(ratio_cpu), 3),
        "reuse_gain_full_over_reuse": round(med(gain), 3),
        "reuse_gain_full_over_reuse_cpu": round(med(gain_cpu), 3),
        "ratio_gather_2dec_to_masked": round(med(v1), 3),
        "ratio_gather_2dec_to_plain": round(med(v1_plain), 3),
        "reuse_ideal_gain": round(model.cfg.n_layers / (model.cfg.n_layers - mm.start_layer), 3),
        "saved_for_backward_mb": mem})
    if cuda_peak:
        out["cuda_max_memory_allocated_mb"] = cuda_peak
    return out


# ----------------------------------------------------------------------------- scaling
def _stretch(tokens: list[list[int]], length: int) -> list[list[int]]:
    """Each prompt brought to exactly `length` tokens: BOS + its tokens repeated / cut."""
    out = []
    for t in tokens:
        body = t[1:] * (length // max(1, len(t) - 1) + 1)
        out.append([t[0]] + body[:length - 1])
    return out


def bench_scaling(model, saes: dict, tokens, answers, counterfactuals, *,
                  prompts=(8, 16, 32), lengths=(12, 24, 48), sae_counts=(1, 2, 4),
                  slot_counts=(4, 12, 48), base=(16, None, 4, 12), device: str = "cpu",
                  repeats: int = 2) -> list[dict]:
    """Masked-step time (median of `repeats` after a warm-up) and memory kept for backward,
    varying one of (prompts, prompt length, SAEs, slots) at a time around `base`
    (prompts, length or None for the real lengths, SAEs, slots). SAE subsets keep the
    shallowest hook, so the layers run stay the same."""
    from maskshare.masking import MaskedModel
    from maskshare.slot_stats import compute_slot_stats

    hooks = list(saes)
    bp, bl, bs, bk = base

    def subset(k):
        if k >= len(hooks):
            return hooks
        idx = np.unique(np.linspace(0, len(hooks) - 1, k).round().astype(int))
        return [hooks[i] for i in idx]

    points = [("prompts", n, (n, bl, bs, bk)) for n in prompts]
    points += [("length", n, (bp, n, bs, bk)) for n in lengths]
    points += [("saes", n, (bp, bl, n, bk)) for n in sae_counts]
    points += [("slots", n, (bp, bl, bs, n)) for n in slot_counts]
    rows = []
    error = default_error()
    for what, value, (np_, ln, ns, nk) in points:
        toks = tokens[:np_]
        if ln is not None:
            toks = _stretch(toks, ln)
        sub = {h: saes[h] for h in subset(ns)}
        slots = from_end_slots(toks, nk)
        if device != "cpu":
            model.to("cpu")
            for s in saes.values():
                s.to("cpu")
        stats = compute_slot_stats(model, sub, toks, slots, nk, batch_size=len(toks))
        if device != "cpu":
            model.to(device)
            for s in saes.values():
                s.to(device)
        mm = MaskedModel(model, sub, stats, nk, error=error)
        batch = mm.prepare(toks, slots, answers[:np_], counterfactuals[:np_],
                           batch_size=len(toks))
        _to_device(mm, batch, device)
        with _frozen(model, sub):
            step = _StepRunner(mm, batch[0], device)
            step()
            ts = [timed(step, device)[0] for _ in range(repeats)]
            mem = saved_for_backward_mb(step, [model, *sub.values()])
        rows.append({"vary": what, "value": value, "n_prompts": len(toks),
                     "tokens": sum(map(len, toks)), "padded_tokens": int(batch[0].tokens.numel()),
                     "n_saes": len(sub), "n_slots": nk, "step_s": round(med(ts), 4),
                     "saved_for_backward_mb": round(mem, 1)})
    return rows


SCALING_NOTE = (
    "step time ~ t0 + a*B*P*(layers after the first hook)*(d_model^2 + d_model*d_mlp) "
    "+ b*B*P^2*layers (attention) + c*B*P*n_saes*d_sae*d_model (SAE encode/decode) "
    "+ d*B*P*n_saes*n_slots*d_sae (per-token masks: one-hot [B,P,n_slots] @ [n_slots,d_sae]) "
    "+ e*n_slots*n_saes*d_sae (mask parameters, Adam), with t0 a fixed per-step cost of "
    "0.3-0.8 s here (intercepts of the prompt and length series; likely Python and hook overhead per layer); memory kept "
    "for backward ~ B*P*(layers*(d_mlp + d_model) + n_saes*d_sae): linear in prompts and "
    "padded length with an intercept, weakly linear in SAEs, flat in slots up to ~50")


# ----------------------------------------------------------------------------- grouping
def tile_features(feats, tokens: list[list[int]], n_target: int, noise: float = 1e-3,
                  seed: int = 0):
    """Whole prompts repeated until >= n_target tokens: (TokenFeatures, items table) with
    fresh prompt ids and small Gaussian noise (noise * column std) on every copy."""
    import polars as pl

    from maskshare.features import TokenFeatures

    n_real = len(feats)
    reps = max(1, -(-n_target // n_real))
    rng = np.random.default_rng(seed)
    std = feats.matrix.std(axis=0, keepdims=True).astype(np.float32)
    mats = [feats.matrix] + [feats.matrix + (noise * std * rng.standard_normal(
        feats.matrix.shape)).astype(np.float32) for _ in range(reps - 1)]
    n_p = len(tokens)
    pids = np.concatenate([feats.prompt_id + k * n_p for k in range(reps)])
    f = TokenFeatures(np.concatenate(mats), pids, np.tile(feats.position, reps),
                      np.tile(feats.length, reps), feats.names)
    items = pl.DataFrame({"prompt_id": list(range(reps * n_p)),
                          "tokens": [list(t) for t in tokens] * reps})
    return f, items


def bench_grouping(model, feats, tokens: list[list[int]], sizes=(20_000, 100_000),
                   gcfg=None, seed: int = 0) -> list[dict]:
    """Attention grouping (the default config) fit + assign on tiled real features."""
    from maskshare.config import GroupingConfig
    from maskshare.grouping import make_grouping

    gcfg = gcfg or GroupingConfig()
    rows = []
    for n in sizes:
        f, items = tile_features(feats, tokens, n, seed=seed)
        tracemalloc.start()
        t0 = time.perf_counter()
        g = make_grouping(gcfg, seed=seed).fit(model, items, f)
        t1 = time.perf_counter()
        a = g.assign(model, items, f)
        t2 = time.perf_counter()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rows.append({"target_tokens": n, "tokens": len(f), "features": f.matrix.shape[1],
                     "real_tokens_tiled": len(feats), "clusterer": gcfg.clusterer,
                     "n_slots": g.n_slots, "pca_dims": g.meta.get("pca_dims"),
                     "fit_s": round(t1 - t0, 3), "assign_s": round(t2 - t1, 4),
                     "fit_assign_s": round(t2 - t0, 3),
                     "peak_traced_mb": round(peak / 2**20, 1),
                     "features_mb": round(f.matrix.nbytes / 2**20, 1),
                     "ood_fraction": round(a.ood_fraction, 4)})
        del f, items, g, a
    return rows


# ----------------------------------------------------------------------------- pipeline
def bench_pipeline(config: Path, device: str, threads: int) -> dict:
    """run_pipeline(config) twice in child processes: cold (fresh runs_dir and a fresh cache
    dir holding only a link to the converted model), then cached."""
    import yaml

    from maskshare.runtime import cache_dir

    tmp = Path(tempfile.mkdtemp(prefix="maskshare-bench-"))
    cache = tmp / "cache"
    cache.mkdir()
    models = cache_dir() / "models"
    if models.is_dir():
        (cache / "models").symlink_to(models)
    data = yaml.safe_load(Path(config).read_text()) or {}
    data.update({"runs_dir": str(tmp / "runs"), "device": device})
    cfg_path = tmp / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(data, sort_keys=False))
    env = dict(os.environ, MASKSHARE_CACHE=str(cache), MASKSHARE_THREADS=str(threads),
               HF_HUB_OFFLINE="1")
    out = {"config": str(config), "runner": "maskshare.pipeline.run_pipeline (no Prefect)",
           "tmp": str(tmp)}
    for label in ("cold", "cached"):
        res = tmp / f"{label}.json"
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, __file__, "--pipeline-child", str(cfg_path),
                            str(res)], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        entry = {"wall_s": round(wall, 1), "returncode": p.returncode}
        if res.is_file():
            entry.update(json.loads(res.read_text()))
        if p.returncode != 0:
            entry["stderr_tail"] = p.stderr[-2000:]
            out[label] = entry
            break
        out[label] = entry
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def _pipeline_child(config: str, out: str) -> None:
    import logging

    from maskshare.config import load_config
    from maskshare.pipeline import run_pipeline

    logging.basicConfig(level=logging.INFO)
    t0 = time.perf_counter()
    run = run_pipeline(load_config(config))
    Path(out).write_text(json.dumps({
        "run_dir": str(run), "inner_s": round(time.perf_counter() - t0, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "stage_s": stage_timings(run)}))


def stage_timings(run: Path) -> dict[str, float]:
    """Seconds per stage kind (dataset, groups, stats, masks, evaluate), summed over the
    stage directories' manifests (a cached rerun keeps the cold run's manifests)."""
    out: dict[str, float] = {}
    for m in sorted(Path(run).glob("**/manifest.json")):
        t = (json.loads(m.read_text()).get("timings") or {})
        kind = m.relative_to(run).parts[0]
        out[kind] = round(out.get(kind, 0.0) + sum(v for v in t.values()
                                                   if isinstance(v, (int, float))), 1)
    return out


# ----------------------------------------------------------------------------- report
TARGETS = {"mask_step_ratio_max": 1.3, "pipeline_cold_s_max": 600, "pipeline_cached_s_max": 60,
           "pipeline_peak_rss_mb_max": 6144}


def print_table(res: dict) -> None:
    m = res["machine"]
    lines = [f"maskshare bench  device={m['device']}  cores={m['available_cores']}  "
             f"torch threads={m['torch_threads']}  torch {m['torch']}  "
             f"load avg {m['load_average'][0]:.1f}",
             f"SAEs: {res['saes']}", f"prompts: {res['prompts']}", ""]
    c = res.get("collection")
    if c:
        lines.append(f"collection ({c['n_tokens']} tokens, {c['n_prompts']} prompts)     tokens/s")
        for k, label in (("features", f"attention features (to layer {c['features_deepest_layer']})"),
                         ("latents", f"SAE latents x{c['n_saes']} (stop at {c['latents_stop_at_layer']})"),
                         ("features_and_latents", "both in one pass")):
            lines.append(f"  {label:<44} {c[f'{k}_tokens_per_s']:>10.1f}")
        lines.append("")
    s = res.get("mask_step")
    if s:
        lines.append(f"mask step ({s['n_prompts']} prompts, {s['n_tokens']} tokens, "
                     f"{s['n_saes']} SAEs, {s['n_slots']} slots; median of {s['repeats']})"
                     "    wall s   cpu s")
        for k, label in (("masked_step", f"masked step (reuse: start at block {s['start_layer']})"),
                         ("plain_fwd_bwd", "plain fwd+bwd of the same layers"),
                         ("masked_step_no_reuse", "masked step, full forward"),
                         ("masked_step_gather_2dec", "masked step as first written (gather, 2 decodes)")):
            lines.append(f"  {label:<52} {s[k + '_s']:>7.3f} {s[k + '_cpu_s']:>7.3f}")
        ok = "met" if s["ratio_masked_to_plain"] <= TARGETS["mask_step_ratio_max"] else "MISSED"
        lines.append(f"  ratio masked / plain: {s['ratio_masked_to_plain']:.3f} wall, "
                     f"{s['ratio_masked_to_plain_cpu']:.3f} cpu (target <= 1.3: {ok})")
        lines.append(f"  reuse gain full / reuse: {s['reuse_gain_full_over_reuse']:.3f} wall, "
                     f"{s['reuse_gain_full_over_reuse_cpu']:.3f} cpu "
                     f"(ideal forward-only bound {s['reuse_ideal_gain']:.3f})")
        if "ratio_gather_2dec_to_masked" in s:
            lines.append(f"  first version / now: {s['ratio_gather_2dec_to_masked']:.3f} wall "
                         f"(first version / plain: {s['ratio_gather_2dec_to_plain']:.3f})")
        lines.append(f"  MB kept for backward: {s['saved_for_backward_mb']}")
        lines.append("")
    for g in res.get("grouping", []):
        lines.append(f"grouping {g['tokens']:>7} tokens: fit {g['fit_s']:.1f} s + assign "
                     f"{g['assign_s']:.1f} s = {g['fit_assign_s']:.1f} s, peak traced "
                     f"{g['peak_traced_mb']:.0f} MB ({g['clusterer']}, {g['n_slots']} slots)")
    if res.get("grouping"):
        lines.append("")
    sc = res.get("scaling")
    if sc:
        lines.append("scaling       value  prompts  padded tok  SAEs  slots   step s   MB bwd")
        for r in sc:
            lines.append(f"  {r['vary']:<10} {r['value']:>6} {r['n_prompts']:>8} "
                         f"{r['padded_tokens']:>11} {r['n_saes']:>5} {r['n_slots']:>6} "
                         f"{r['step_s']:>8.3f} {r['saved_for_backward_mb']:>8.1f}")
        lines.append("")
    p = res.get("pipeline")
    if p:
        for k in ("cold", "cached"):
            if k in p:
                e = p[k]
                lines.append(f"pipeline {k}: {e['wall_s']:.1f} s, peak RSS "
                             f"{e.get('peak_rss_mb', float('nan')):.0f} MB (rc {e['returncode']})")
                if k == "cold" and e.get("stage_s"):
                    lines.append("  stage seconds (manifests): " + ", ".join(
                        f"{s} {v:.0f}" for s, v in e["stage_s"].items()))
    elif res.get("pipeline_skipped"):
        lines.append(f"pipeline: skipped ({res['pipeline_skipped']})")
    print("\n".join(lines))


def run_all(args) -> dict:
    from maskshare.runtime import configure_threads

    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    threads = configure_threads()
    quick = args.quick
    t_all = time.perf_counter()
    model, saes, source, prompts = load_setup("cpu")
    res = {"machine": machine_info(device), "saes": source, "prompts": prompts["source"],
           "quick": quick, "targets": TARGETS}
    toks, ans, cf = prompts["tokens"], prompts["answer"], prompts["counterfactual"]

    # mask step first: its slot statistics run on the CPU model
    step_prompts = 8 if quick else 32
    res["mask_step"] = bench_mask_step(model, saes, toks[:step_prompts], ans[:step_prompts],
                                       cf[:step_prompts], n_slots=12, device=device,
                                       repeats=3 if quick else 5)
    # collection on a prefix of the prompts (the model is on `device` now)
    n_coll = 60 if quick else 200
    coll = bench_collection(model, saes, toks[:n_coll], device=device,
                            repeats=1 if quick else 2)
    feats = coll.pop("_features")
    res["collection"] = coll
    sizes = (2_000, 5_000) if quick else (20_000, 100_000)
    res["grouping"] = bench_grouping(model, feats, toks[:n_coll], sizes=sizes)
    if quick:
        res["scaling"] = bench_scaling(model, saes, toks, ans, cf, prompts=(4, 8),
                                       lengths=(12, 24), sae_counts=(1, 4), slot_counts=(4, 24),
                                       base=(8, None, 4, 12), device=device, repeats=1)
    else:
        res["scaling"] = bench_scaling(model, saes, toks, ans, cf, device=device, repeats=2)
    res["scaling_complexity"] = SCALING_NOTE
    if args.skip_pipeline:
        res["pipeline_skipped"] = "--skip-pipeline"
    else:
        res["pipeline"] = bench_pipeline(ROOT / "configs" / "default.yaml", device, threads)
    res["load_average_end"] = list(os.getloadavg())
    res["bench_wall_s"] = round(time.perf_counter() - t_all, 1)
    res["bench_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return res


def write_results(res: dict, out_dir: Path = RESULTS) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(res, indent=2, default=str)
    paths = [out_dir / "latest.json", out_dir / f"{res['machine']['device']}.json"]
    for p in paths:
        p.write_text(text + "\n")
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--skip-pipeline", action="store_true",
                    help="skip the whole-pipeline cold/cached runs (the long part)")
    ap.add_argument("--pipeline-child", nargs=2, metavar=("CONFIG", "OUT"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.pipeline_child:
        _pipeline_child(*args.pipeline_child)
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    res = run_all(args)
    print_table(res)
    for p in write_results(res):
        print(f"wrote {p.relative_to(ROOT) if p.is_relative_to(ROOT) else p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
