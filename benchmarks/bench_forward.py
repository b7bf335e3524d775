"""Tokens/s of every read-only forward pass against the SAE collector's pass (issue 23).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_forward.py [--quick] [--skip-import]
        [--skip-effects] [--out FILE]

On the embedded model, its SAEs and the built elements-symbol free-form dataset (all
splits), in one process:

- ceiling: the SAE corpus collector's pass (`saes/activation_store.py`: the Hugging Face form
  in bfloat16, rows of 128 tokens, 32 rows a batch, stopped after the deepest SAE hook)
  over the same tokens, concatenated into rows;
- stages: each read-only stage's pass as the code has it (so the same script, run on an
  older checkout with PYTHONPATH=OLD/src, gives the "before"): the dataset filter's scoring,
  attention features, slot statistics, the counterfactual references, the clean logit
  differences (M_clean) and the circuit's top-activating tokens; each in float32 and in
  bfloat16 (`MASKSHARE_BF16`, which older code ignores), with its share of the ceiling;
- effects (--skip-effects to skip): what bfloat16 changes for each use against float32;
- import: `maskshare datasets import` of 1,000 free-form prompts (data/sources'
  bibliography rows, then element-questions rows) in a child process, wall time with the
  model load, under the default precision and under MASKSHARE_BF16=none.

Prints a table and writes JSON (benchmarks/results/forward.json by default). Timings on
a shared machine are noisy: compare shares of the ceiling measured in the same run, and
rerun on a quiet machine for absolute figures. `bench_forward(model, saes, prompts)` is
the section benchmarks/bench.py runs (tests/benchmarks/test_bench.py runs it on the tiny
model, without the ceiling, which needs the Hugging Face form).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import RESULTS, ROOT, from_end_slots, machine_info  # noqa: E402

N_SLOTS = 12
STAGES = ("filter", "features", "stats", "references", "clean", "top_tokens")


@contextmanager
def bf16(uses: str | None):
    """MASKSHARE_BF16 set to `uses` (None: unset) for the block."""
    old = os.environ.get("MASKSHARE_BF16")
    if uses is None:
        os.environ.pop("MASKSHARE_BF16", None)
    else:
        os.environ["MASKSHARE_BF16"] = uses
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MASKSHARE_BF16", None)
        else:
            os.environ["MASKSHARE_BF16"] = old


def ceiling(hf_model, tokens: list[list[int]], hooks: list[str], ctx: int = 128,
            batch_rows: int = 32, repeats: int = 1) -> dict:
    """The collector's pass (bf16 HF form, stopped after the deepest hook) over the same
    tokens cut into rows of `ctx`."""
    from maskshare.saes.activation_store import _collect_shard, hf_resid_forward

    flat = torch.as_tensor([t for p in tokens for t in p], dtype=torch.long)
    n = (len(flat) // ctx) * ctx
    rows = flat[:n].reshape(-1, ctx)
    fwd = hf_resid_forward(hf_model, hooks)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _collect_shard(fwd, rows, batch_rows, torch.bfloat16)
        ts.append(time.perf_counter() - t0)
    return {"tokens": n, "s": round(min(ts), 3), "tokens_per_s": round(n / min(ts), 1)}


def _stage_fns(model, saes, toks, ans, cf, strs):
    """{stage: fn()} running each read-only stage's pass as the code now has it."""
    from maskshare.config import AttentionFeatures
    from maskshare.datasets import build
    from maskshare.grouping.features import attention_features
    from maskshare.masks.ablations import Counterfactual, PatchPrompts
    from maskshare.masks.circuit import top_activating_tokens
    from maskshare.masks.masking import MaskedModel
    from maskshare.masks.prepared import clean_logit_diffs
    from maskshare.masks.slot_stats import compute_slot_stats
    from maskshare.model.activations import padded_batches

    def feature_cfg():  # the features' precision is their config's, set by the mode here
        env = os.environ.get("MASKSHARE_BF16")
        dtype = {"none": "float32", "all": "bfloat16"}.get(env or "")
        return AttentionFeatures(**({"dtype": dtype} if dtype else {}))

    slots = from_end_slots(toks, N_SLOTS)
    mm = MaskedModel(model, saes, None, N_SLOTS, ablation="zero")
    latents = {h: list(range(16)) for h in saes}

    def filt():
        if hasattr(build, "filter_scores"):  # this checkout: the filter's own precision
            from maskshare.model.forward import dtype_for
            return build.filter_scores(model, toks, ans, cf, "logit-diff", 0.0,
                                       dtype=dtype_for("filter"), progress=False)[2]
        return build.score_prompts(model, toks, ans, cf, progress=False)[2]

    def refs():
        out = []
        with torch.no_grad():
            for b in padded_batches(toks, 32, order="shortest"):
                out.append(Counterfactual().token_values(mm, PatchPrompts(toks), b.idx,
                                                         b.attention_mask))
        return out

    return {
        "filter": filt,
        "features": lambda: attention_features(model, toks, feature_cfg()).matrix,
        "stats": lambda: compute_slot_stats(model, saes, toks, slots, N_SLOTS),
        "references": refs,
        "clean": lambda: clean_logit_diffs(model, toks, ans, cf),
        "top_tokens": lambda: top_activating_tokens(model, saes, toks, strs, latents),
    }


def bench_stages(model, saes, toks, ans, cf, strs, repeats: int = 1,
                 modes=(("default", None), ("float32", "none"), ("bfloat16", "all"))) -> dict:
    """Tokens/s of every stage under each precision mode (MASKSHARE_BF16 value); the
    results of each run under "results" for `effects`."""
    n_tok = sum(map(len, toks))
    fns = _stage_fns(model, saes, toks, ans, cf, strs)
    out: dict = {"n_prompts": len(toks), "n_tokens": n_tok, "stages": {}, "results": {}}
    for stage, fn in fns.items():
        row = {}
        for mode, env in modes:
            ts = []
            with bf16(env):
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    res = fn()
                    ts.append(time.perf_counter() - t0)
            row[mode] = {"s": round(min(ts), 3), "tokens_per_s": round(n_tok / min(ts), 1)}
            out["results"][(stage, mode)] = res
        out["stages"][stage] = row
    return out


def effects(results: dict, model, items=None, margin: float = 0.0) -> dict:
    """What bfloat16 ("bfloat16" mode) changes against float32, per use."""
    r = {k: v for k, v in results.items()}
    out: dict = {}
    ld32, ld16 = np.asarray(r["filter", "float32"]), np.asarray(r["clean", "bfloat16"])
    ldf = np.asarray(r["filter", "bfloat16"])  # with the float32 recheck where present
    c32 = np.asarray(r["clean", "float32"])
    e = np.abs(ld16 - c32)
    out["clean"] = {"ld_abs_err_max": float(e.max()), "ld_abs_err_mean": float(e.mean()),
                    "ld_mean_fp32": float(c32.mean()),
                    "mean_ld_rel_err": float(abs(ld16.mean() - c32.mean()) / abs(c32.mean()))}
    out["filter"] = {"margin": margin, "flips_with_recheck": int(((ldf > margin) !=
                                                                  (ld32 > margin)).sum()),
                     "flips_plain_bf16": int(((ld16 > margin) != (c32 > margin)).sum()),
                     "within_1_logit": int((np.abs(c32 - margin) < 1.0).sum()),
                     "n": len(ld32)}
    s32, s16 = r["stats", "float32"], r["stats", "bfloat16"]
    st = {}
    for h in s32.hooks:
        a, b = s32.hooks[h].latent_mean, s16.hooks[h].latent_mean
        ea, eb = s32.hooks[h].error_mean, s16.hooks[h].error_mean
        st[h] = {"latent_mean_rel_err": float((a - b).norm() / a.norm()),
                 "error_mean_rel_err": float((ea - eb).norm() / ea.norm())}
    out["stats"] = st
    ref = {"max_rel_err": max(float((x[h] - y[h]).norm() / x[h].norm())
                              for x, y in zip(r["references", "float32"],
                                              r["references", "bfloat16"], strict=True)
                              for h in x)}
    out["references"] = ref
    t32, t16 = r["top_tokens", "float32"], r["top_tokens", "bfloat16"]
    same = total = 0
    for h in t32:
        for lat in t32[h]:
            a = [(x["prompt"], x["pos"]) for x in t32[h][lat]]
            b = [(x["prompt"], x["pos"]) for x in t16[h][lat]]
            same += len(set(a) & set(b))
            total += max(len(a), len(b))
    out["top_tokens"] = {"top5_overlap": same / max(total, 1)}
    f32, f16 = r["features", "float32"], r["features", "bfloat16"]
    out["features"] = {"abs_err_max": float(np.abs(f32 - f16).max()),
                       "abs_err_mean": float(np.abs(f32 - f16).mean())}
    if items is not None:
        out["features"].update(slot_changes(model, items, f32, f16))
    return out


def slot_changes(model, items, f32: np.ndarray, f16: np.ndarray) -> dict:
    """Fit the default attention grouping on the bf16 features (the default), then assign
    the tokens from their fp32 features: the share of tokens whose slot differs."""
    from maskshare.config import GroupingConfig
    from maskshare.grouping.features import items_features
    from maskshare.grouping.registry import make_grouping

    gcfg = GroupingConfig(kind="attention")
    feats = items_features(model, items, gcfg.features)
    g = make_grouping(gcfg, seed=0)
    g.fit(model, items, features=feats)
    s16 = g.assign(model, items, features=feats).flat_slots()
    feats.matrix = f32 if gcfg.features.dtype == "bfloat16" else f16
    other = g.assign(model, items, features=feats).flat_slots()
    return {"tokens": int(len(s16)), "slot_changed": int((s16 != other).sum()),
            "slot_changed_share": float((s16 != other).mean())}


def candidates(model, which: str) -> dict:
    """Every prompt the build scores (before the filter): `elements` (elements-symbol
    free-form) or `thousand` (the 1,000-prompt import); tokens, ids, filter kind, margin."""
    from maskshare.datasets.build import kind_items
    from maskshare.datasets.registry import find_spec
    from maskshare.datasets.sources import load_source

    if which == "elements":
        spec, path = find_spec("elements-symbol")
        df, _ = load_source(spec, path.parent)
        kind, margin = spec.default_filter
    else:
        from maskshare.datasets.importing import plan_import

        with tempfile.TemporaryDirectory() as d:
            plan = plan_import(thousand_prompts(Path(d) / "thousand.jsonl"), "bench-thousand")
        spec, df = plan.spec, plan.table
        kind, margin = spec.default_filter
    items, _ = kind_items(spec, df, "freeform", model)
    return {"tokens": [list(t) for t in items["tokens"].to_list()],
            "answer": items["answer_id"].to_list(), "cf": items["counterfactual_id"].to_list(),
            "kind": kind, "margin": margin}


def filter_effect(model, c: dict) -> dict:
    """The behaviour filter on every candidate: float32 against bfloat16 alone and against
    bfloat16 with the float32 recheck (this checkout's default): time, score errors
    (ld; `margin`: logit(answer) minus the best other logit, what top1 decides on),
    decisions that flip."""
    from maskshare.datasets.build import filter_scores, passes
    from maskshare.model.forward import score_rows

    toks, a, cf, kind, margin = c["tokens"], c["answer"], c["cf"], c["kind"], c["margin"]
    n_tok = sum(map(len, toks))
    t0 = time.perf_counter()
    s32 = score_rows(model, toks, a, cf)
    t32 = time.perf_counter() - t0
    t0 = time.perf_counter()
    s16 = score_rows(model, toks, a, cf, dtype="bfloat16")
    t16 = time.perf_counter() - t0
    t0 = time.perf_counter()
    topr, _, ldr, info = filter_scores(model, toks, a, cf, kind, margin, dtype="bfloat16",
                                       progress=False)
    tr = time.perf_counter() - t0
    p32 = passes(kind, margin, s32["top"], s32["ld"], a).to_numpy()
    p16 = passes(kind, margin, s16["top"], s16["ld"], a).to_numpy()
    e = np.abs(np.asarray(s16["ld"]) - np.asarray(s32["ld"]))
    em = np.abs(np.asarray(s16["margin"]) - np.asarray(s32["margin"]))
    near = np.abs(np.asarray(s32["ld"] if kind == "logit-diff" else s32["margin"])
                  - (margin if kind == "logit-diff" else 0.0))
    return {"n_prompts": len(toks), "n_tokens": n_tok, "filter": kind, "margin": margin,
            "n_pass_fp32": int(p32.sum()),
            "tokens_per_s": {"float32": round(n_tok / t32, 1), "bfloat16": round(n_tok / t16, 1),
                             "bfloat16_recheck": round(n_tok / tr, 1)},
            "ld_abs_err_max": float(e.max()), "ld_abs_err_p99": float(np.quantile(e, 0.99)),
            "ld_abs_err_mean": float(e.mean()), "margin_abs_err_max": float(em.max()),
            "decision_within": {str(d): int((near < d).sum()) for d in (0.25, 0.5, 1.0, 1.5)},
            "top1_changed": int(sum(x != y for x, y in zip(s32["top"], s16["top"],
                                                           strict=True))),
            "flips_bf16": int((p16 != p32).sum()),
            "flips_bf16_recheck": int((passes(kind, margin, topr, ldr, a).to_numpy()
                                       != p32).sum()),
            "n_rechecked": info["n_rechecked"]}


def thousand_prompts(path: Path) -> Path:
    """1,000 free-form prompt rows (prompts format) from data/sources."""
    rows = []
    for name in ("bibliography.jsonl", "element-questions.jsonl"):
        rows += (ROOT / "data" / "sources" / name).read_text().splitlines()
    path.write_text("\n".join(rows[:1000]) + "\n")
    return path


def bench_import(modes=(("default", None), ("float32", "none"))) -> dict:
    """`maskshare datasets import` of 1,000 prompts in a child process (model load, import,
    build), in a fresh data dir and dataset cache (the converted model is linked in)."""
    from maskshare.runtime import cache_dir

    out = {}
    for mode, env in modes:
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            (d / "cache").mkdir()
            (d / "cache" / "models").symlink_to(cache_dir() / "models")
            f = thousand_prompts(d / "thousand.jsonl")
            e = {**os.environ, "MASKSHARE_DATA": str(d / "data"),
                 "MASKSHARE_CACHE": str(d / "cache"), "HF_HUB_OFFLINE": "1"}
            e.pop("MASKSHARE_BF16", None)
            if env is not None:
                e["MASKSHARE_BF16"] = env
            t0 = time.perf_counter()
            p = subprocess.run([sys.executable, "-m", "maskshare.cli", "datasets", "import",
                                str(f), "--name", "thousand", "--no-progress"], env=e,
                               capture_output=True, text=True, cwd=ROOT)
            wall = time.perf_counter() - t0
            passed = [ln for ln in p.stdout.splitlines() if "**total**" in ln]
            out[mode] = {"wall_s": round(wall, 2), "rc": p.returncode,
                         "total_row": passed[-1] if passed else p.stderr[-300:]}
    return out


MODES = {"default": None, "float32": "none", "bfloat16": "all"}  # MASKSHARE_BF16 values


def bench_forward(model, saes, prompts: dict, hf_model=None, repeats: int = 1,
                  modes=tuple(MODES)) -> dict:
    """The section benchmarks/bench.py runs: stage tokens/s (and the ceiling's, with the
    Hugging Face form `hf_model`) in each precision mode of `modes`."""
    toks, ans, cf = prompts["tokens"], prompts["answer"], prompts["counterfactual"]
    strs = prompts.get("token_strs") or [[str(t) for t in p] for p in toks]
    res = bench_stages(model, saes, toks, ans, cf, strs, repeats=repeats,
                       modes=tuple((m, MODES[m]) for m in modes))
    results = res.pop("results")
    if hf_model is not None:
        res["ceiling"] = ceiling(hf_model, toks, list(saes), repeats=repeats)
        for row in res["stages"].values():
            for v in row.values():
                v["share_of_ceiling"] = round(v["tokens_per_s"] / res["ceiling"]["tokens_per_s"], 3)
    res["_results"] = results
    return res


def lines(res: dict) -> list[str]:
    out = []
    if "ceiling" in res:
        c = res["ceiling"]
        out.append(f"ceiling (collector, HF bf16): {c['tokens_per_s']:.0f} tokens/s over "
                   f"{c['tokens']} tokens")
    modes = " | ".join(next(iter(res["stages"].values()), {}))
    out.append(f"stages over {res['n_prompts']} prompts, {res['n_tokens']} tokens   "
               f"tokens/s (share of ceiling): {modes}")
    for stage, row in res["stages"].items():
        cells = [f"{v['tokens_per_s']:>7.0f} ({v.get('share_of_ceiling', float('nan')):.2f})"
                 for v in row.values()]
        out.append(f"  {stage:<11} " + " | ".join(cells))
    for mode, v in res.get("import", {}).items():
        out.append(f"import+build 1,000 prompts ({mode}): {v['wall_s']:.1f} s rc {v['rc']}")
    for use, v in res.get("effects", {}).items():
        out.append(f"bf16 effect {use}: {json.dumps(v)}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="120 prompts")
    ap.add_argument("--skip-import", action="store_true")
    ap.add_argument("--skip-effects", action="store_true")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES),
                    help="precision modes of the stage timings (an older checkout: default)")
    ap.add_argument("--import-modes", nargs="+", default=["default", "float32"],
                    choices=["default", "float32"],
                    help="precisions of the import timing (an older checkout: default only)")
    ap.add_argument("--out", default=str(RESULTS / "forward.json"))
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from bench_common import load_setup

    from maskshare.config import DatasetRef
    from maskshare.datasets import build_dataset
    from maskshare.model.models import load_hf_form

    t0 = time.perf_counter()
    model, saes, source, _ = load_setup("cpu")
    load_s = time.perf_counter() - t0
    with bf16("none"):  # the float32 build: the same items whatever the default
        items = build_dataset(DatasetRef(name="elements-symbol", variant="freeform"), model,
                              progress=False).items
    if args.quick:
        items = items.sample(n=120, seed=0)
    prompts = {"tokens": [list(t) for t in items["tokens"].to_list()],
               "answer": items["answer_id"].to_list(),
               "counterfactual": items["counterfactual_id"].to_list(),
               "token_strs": items["token_strs"].to_list()}
    hf = load_hf_form("smollm2-135m").to(torch.bfloat16)
    res = bench_forward(model, saes, prompts, hf_model=hf, repeats=args.repeats,
                        modes=args.modes)
    results = res.pop("_results")
    res.update(machine=machine_info("cpu"), saes=source, load_setup_s=round(load_s, 2))
    if not args.skip_effects and set(args.modes) >= {"float32", "bfloat16"}:
        res["effects"] = effects(results, model, items)
        for which in ("elements", "thousand"):
            res["effects"][f"filter_{which}"] = filter_effect(model, candidates(model, which))
    if not args.skip_import:
        modes = {"default": None, "float32": "none"}
        res["import"] = bench_import(tuple((m, modes[m]) for m in args.import_modes))
    res["load_average_end"] = list(os.getloadavg())
    print("\n".join(lines(res)))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
