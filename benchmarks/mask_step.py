"""Time one mask-training step on the embedded model (figures in docs/masks-results.md).

    MASKSHARE_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/mask_step.py [--random-saes]

32 free-form-like prompts (several phrasings, lengths 8-17 tokens), 12 slots (from-end
style), 4 SAEs at resid_post of layers 6/12/18/24: the embedded set if it exists, else
random StandardSAEs of width 2304 (`--random-saes` forces them; the step cost is the
same for a given width). Prints JSON: seconds per step (median; wall and CPU) with the
cached residual below the first hook (start_at_layer) and without it, with and without
splitting the batch into length groups, and what a full unembed (every position) costs
against the final positions only.

The fuller benchmark (collection throughput, the ratio to a plain forward+backward, the
reuse gain measured interleaved, grouping, scaling, the whole pipeline) is
`benchmarks/bench.py`; this script stays for the unembed and length-split comparisons.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

# the same 32 prompts as bench.py's fallback set (run as a script: benchmarks/ is on sys.path)
from bench_common import FALLBACK_ELEMENTS as ELEMENTS
from bench_common import FALLBACK_PHRASINGS as PHRASINGS


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--random-saes", action="store_true")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--n-slots", type=int, default=12)
    args = ap.parse_args()

    from maskshare.config import MaskConfig
    from maskshare.masks.masking import MaskedModel
    from maskshare.masks.slot_stats import compute_slot_stats
    from maskshare.masks.training import compute_targets, train_masks
    from maskshare.model.activations import unembed_final
    from maskshare.model.models import load_model, tokenize_prompt
    from maskshare.model.sae_set import SAESetConfig, load_saes
    from maskshare.runtime import configure_threads
    from maskshare.testing import tiny_saes

    threads = configure_threads()
    t0 = time.perf_counter()
    model = load_model("smollm2-135m", threads=threads)
    load_s = time.perf_counter() - t0
    hooks = [f"blocks.{i}.hook_resid_post" for i in (6, 12, 18, 24)]
    source = "random StandardSAE, d_sae=2304"
    saes = None
    if not args.random_saes:
        try:
            saes = load_saes(SAESetConfig(), model)
            source = "embedded set: " + ", ".join(f"{h} ({s.cfg.d_sae})" for h, s in saes.items())
        except Exception as e:  # noqa: BLE001 - fall back to random SAEs, and say so
            source += f" (embedded set unavailable: {e})"
    if saes is None:
        saes = tiny_saes(model, hooks=hooks, d_sae=2304, seed=0)
    prompts = [p.format(e) for e in ELEMENTS for p in PHRASINGS]
    tokens = [tokenize_prompt(model, p) for p in prompts]
    ns = args.n_slots
    slots = []
    for t in tokens:  # from-end style: last ns-2 positions own a slot, the rest share slot 1
        s = np.ones(len(t), dtype=np.int64)
        s[0] = 0
        for k in range(1, min(ns - 2, len(t) - 1) + 1):
            s[-k] = 1 + k
        slots.append(s)
    ans = [tokenize_prompt(model, " Au")[1]] * len(tokens)
    cf = [tokenize_prompt(model, " Ag")[1]] * len(tokens)
    t0 = time.perf_counter()
    stats = compute_slot_stats(model, saes, tokens, slots, ns, batch_size=32)
    stats_s = time.perf_counter() - t0

    def step_times(mm, label):
        t0 = time.perf_counter()
        batches = mm.prepare(tokens, slots, ans, cf, batch_size=32)
        prep = time.perf_counter() - t0
        targets = compute_targets(mm, batches)
        times, cpu = [], []
        last = [time.perf_counter(), time.process_time()]

        def cb(step, rec):
            now, c = time.perf_counter(), time.process_time()
            times.append(now - last[0])
            cpu.append(c - last[1])
            last[0], last[1] = now, c

        cfg = MaskConfig(steps=args.steps, batch_size=32, checkpoint_every=10_000)
        last[0], last[1] = time.perf_counter(), time.process_time()
        train_masks(mm, batches, cfg, 0.01, targets=targets, progress=False, callback=cb)
        timed = times[1:]  # first step warms up
        return {"variant": label, "start_layer": mm.start_layer, "prepare_s": round(prep, 3),
                "step_s_median": round(statistics.median(timed), 3),
                "step_cpu_s_median": round(statistics.median(cpu[1:]), 3),
                "step_s_all": [round(x, 3) for x in times]}

    res = []
    mm = MaskedModel(model, saes, stats, ns)
    res.append(step_times(mm, "cached residual below first hook + first-hook latents, "
                              "split by length"))
    mm1 = mm.with_options(split_by_length=False)  # the whole batch padded to its longest
    res.append(step_times(mm1, "as above, batch not split by length"))
    mm0 = mm.with_options(reuse_prefix=False)  # every step from the embeddings
    res.append(step_times(mm0, "no reuse (start at layer 0), split by length"))

    # what a full unembed (every position) would add: ln_final + unembed fwd + bwd
    P = max(len(t) for t in tokens)
    x = torch.randn(len(tokens), P, model.cfg.d_model, requires_grad=True)
    xf = torch.randn(len(tokens), model.cfg.d_model, requires_grad=True)
    for p in model.parameters():
        p.requires_grad_(False)

    def unembed_cost(inp, final_only):
        ts = []
        for _ in range(4):
            t0 = time.perf_counter()
            out = unembed_final(model, inp) if final_only else \
                model.unembed(model.ln_final(inp))
            out.sum().backward()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts[1:])

    full_u = unembed_cost(x, False)
    final_u = unembed_cost(xf, True)
    print(json.dumps({
        "threads": threads, "saes": source, "n_prompts": len(tokens),
        "lengths": [min(map(len, tokens)), max(map(len, tokens))],
        "n_tokens": sum(map(len, tokens)), "n_slots": ns, "model_load_s": round(load_s, 1),
        "slot_stats_s": round(stats_s, 2), "steps": res,
        "unembed_full_positions_fwd_bwd_s": round(full_u, 3),
        "unembed_final_position_fwd_bwd_s": round(final_u, 4),
    }, indent=2))


if __name__ == "__main__":
    main()
