"""Cost of the attention grouping for ~20,000 tokens: features, fit, assign (embedded model).

    MASKSHARE_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/groups_speed.py \
        [--tokens 20000] [--baseline-tokens 2000]

Items: free-form `elements-symbol` (`maskshare.datasets.build_dataset`), repeated with new
prompt ids until there are at least `--tokens` tokens (the work per token is the same as for
distinct prompts). The grouping (default `GroupingConfig`) is fitted on the `train` split of
that table and assigns every prompt, as the pipeline does. Prints one JSON line: tokens,
seconds per phase (features, fit, assign), tokens/s of the features, peak resident memory
(`resource.getrusage`), and the thread count. With `--baseline-tokens N` it also times the
model's plain forward pass (no hooks, every layer, the same length-sorted batches) and the
features on the first N tokens' prompts, so the two can be compared on the same load.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import time

import numpy as np
import polars as pl
import torch

from maskshare.config import DatasetRef, GroupingConfig
from maskshare.grouping import make_grouping
from maskshare.grouping.features import TokenFeatures, items_features
from maskshare.model.activations import padded_batches


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def tiled_items(items: pl.DataFrame, n_tokens: int) -> pl.DataFrame:
    """`items` repeated (new prompt ids), cut after the first prompt reaching `n_tokens`."""
    per = int(items["tokens"].list.len().sum())
    reps = max(1, int(np.ceil(n_tokens / per)))
    parts = [items.with_columns(pl.col("prompt_id") + k * (int(items["prompt_id"].max()) + 1))
             for k in range(reps)]
    big = pl.concat(parts)
    cum = np.cumsum(big["tokens"].list.len().to_numpy())
    return big.head(int(np.searchsorted(cum, n_tokens)) + 1)


def subset(f: TokenFeatures, mask: np.ndarray) -> TokenFeatures:
    return TokenFeatures(f.matrix[mask], f.prompt_id[mask], f.position[mask], f.length[mask],
                         f.names)


def plain_forward_s(model, tokens: list[list[int]], batch_size: int) -> float:
    t0 = time.perf_counter()
    with torch.inference_mode():
        # batched as attention_features batches (longest first, at most 2048 padded tokens)
        for b in padded_batches(tokens, batch_size, order="longest", max_tokens=2048):
            model(b.tokens, return_type=None)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=20000)
    ap.add_argument("--baseline-tokens", type=int, default=0,
                    help="also time the plain forward pass on about this many tokens")
    ap.add_argument("--variant", default="freeform", choices=["freeform", "templated"])
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                    help="override grouping.features.dtype")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from maskshare.datasets import build_dataset
    from maskshare.model.models import load_model

    t0 = time.perf_counter()
    model = load_model("smollm2-135m")
    load_s = time.perf_counter() - t0
    cfg = GroupingConfig()
    if args.dtype:
        cfg = cfg.model_copy(update={"features": cfg.features.model_copy(
            update={"dtype": args.dtype})})
    items = build_dataset(DatasetRef(name="elements-symbol", variant=args.variant), model,
                          progress=False).items
    big = tiled_items(items, args.tokens)
    n_tok = int(big["tokens"].list.len().sum())
    out: dict = {"tokens": n_tok, "prompts": big.height, "threads": torch.get_num_threads(),
                 "dtype": cfg.features.dtype,
                 "model_load_s": round(load_s, 1)}

    if args.baseline_tokens:
        toks = big["tokens"].to_list()
        cum = np.cumsum([len(t) for t in toks])
        n = int(np.searchsorted(cum, args.baseline_tokens)) + 1
        sub = big.head(n)
        fwd = plain_forward_s(model, toks[:n], cfg.batch_size)
        t0 = time.perf_counter()
        items_features(model, sub, cfg.features, batch_size=cfg.batch_size)
        feat = time.perf_counter() - t0
        nt = int(cum[n - 1])
        out["baseline"] = {"tokens": nt, "plain_forward_s": round(fwd, 2),
                           "plain_forward_tok_s": round(nt / fwd), "features_s": round(feat, 2),
                           "features_tok_s": round(nt / feat)}

    t0 = time.perf_counter()
    f = items_features(model, big, cfg.features, batch_size=cfg.batch_size)
    out["features_s"] = round(time.perf_counter() - t0, 2)
    out["features_tok_s"] = round(n_tok / out["features_s"])
    out["n_features"] = f.matrix.shape[1]
    out["peak_rss_mib_after_features"] = round(peak_rss_mib())

    train_mask = big["split"].to_numpy() == "train"
    rows = np.repeat(train_mask, big["tokens"].list.len().to_numpy())
    train = big.filter(pl.col("split") == "train")
    t0 = time.perf_counter()
    g = make_grouping(cfg, seed=0).fit(model, train, subset(f, rows))
    out["fit_s"] = round(time.perf_counter() - t0, 2)
    out["fit_tokens"] = int(rows.sum())
    out["n_slots"] = g.n_slots
    t0 = time.perf_counter()
    a = g.assign(model, big, f)
    out["assign_s"] = round(time.perf_counter() - t0, 2)
    out["assign_tokens"] = int(len(a.flat_slots()))
    out["total_s"] = round(out["features_s"] + out["fit_s"] + out["assign_s"], 2)
    out["peak_rss_mib"] = round(peak_rss_mib())
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
