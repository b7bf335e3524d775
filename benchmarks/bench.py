"""maskshare benchmark: how fast, how big, how close to the targets (issue 7).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench.py [--device cpu|cuda] [--quick] [--skip-pipeline]
        [--short-step-only | --stages-only]
        [--warm-only | --skip-warm] [--run RUN] [--warm-lambdas L1 L2 ...]

`--stages-only` prints the stages' speed alone (issue 23) and writes
benchmarks/results/stages.json: the forward section, `maskshare datasets import` of 1,000
free-form prompts (model load included) and the pipeline section.

Prints a table and writes JSON to benchmarks/results/latest.json and
benchmarks/results/<device>.json. Sections (each a function of a model, SAEs and prompts,
so tests/benchmarks/test_bench.py runs them on the tiny model):

- machine: cores, torch threads (= available cores, `configure_threads`), torch, device;
- collection: tokens/s for attention features, for all SAE latents, and for both in one
  pass, the model run only as deep as the deepest hook needed;
- forward (bench_forward.py): tokens/s of every read-only stage's pass in float32, in
  bfloat16 and as configured, against the SAE collector's pass (the ceiling);
- mask_step: one training step (relaxed masks, forward, backward, Adam) against a plain
  forward+backward of the same layers on the same batch (target ratio <= 1.3), and against
  the same step without reusing the residual below the first SAE hook; interleaved in one
  run, medians of the repeats (ratios: median of the per-repeat ratios);
- short_step: the step on 16 prompts of 6-8 tokens and of 12 tokens, now and on the path
  before issue 13 (bench_short.py), interleaved;
- grouping: attention-grouping fit + assign for ~20k and ~100k tokens, and peak traced
  memory (numpy + Python allocations, tracemalloc); the features are real feature rows
  tiled (whole prompts) with small noise;
- scaling: step time and memory kept for backward against prompts, prompt length, SAEs and
  slots;
- steps_to_circuit (bench_warm.py; on the CPU): a two-lambda sweep trained cold against
  the warm sweep the masks stage runs (IG-started first lambda, the next continued from it):
  steps and CPU time until each reaches the cold circuit's F at its size, on held-out
  prompts; `--warm-only` runs just this section, `--run RUN` on a built run's attention
  slots instead of from-end slots;
- pipeline (unless --skip-pipeline): `run_pipeline` on configs/default.yaml in a child
  process, cold (fresh runs dir and dataset/group/mask caches; the converted model and the
  SAEs stay) then cached; wall time, the child's peak RSS, seconds per stage and the
  evaluation's share of the cold run with its phases (the evaluate manifest's timings);
  then the same cold run through Prefect (`maskshare run`, its own fresh runs dir and
  cache) and its ratio to the in-process cold run.

The SAEs are the embedded set when it exists, else random StandardSAEs of width 2304 at
resid_post of layers 6/12/18/24 (same shapes, so the same cost); `saes` in the JSON says
which. Grouping runs on the CPU (numpy/scikit-learn) whatever --device says.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench_* modules beside this file

from bench_common import (  # noqa: E402,F401 - re-exported for tests/benchmarks/test_bench.py
    RESULTS,
    ROOT,
    load_setup,
    machine_info,
)
from bench_forward import bench_forward  # noqa: E402,F401
from bench_forward import lines as forward_lines  # noqa: E402
from bench_pipeline import (  # noqa: E402,F401
    _pipeline_child,
    bench_grouping,
    bench_pipeline,
    evaluation_share,
    stage_timings,
    tile_features,
)
from bench_short import bench_short_step, short_step_lines  # noqa: E402,F401
from bench_step import SCALING_NOTE, bench_collection, bench_mask_step, bench_scaling  # noqa: E402,F401
from bench_warm import bench_steps_to_circuit, run_section  # noqa: E402,F401
from bench_warm import print_lines as warm_lines  # noqa: E402

# ----------------------------------------------------------------------------- report
TARGETS = {"mask_step_ratio_max": 1.3, "pipeline_cold_s_max": 600, "pipeline_cached_s_max": 60,
           "pipeline_peak_rss_mb_max": 6144}


def print_table(res: dict) -> None:
    m = res["machine"]
    lines = [f"maskshare bench  device={m['device']}  cores={m['available_cores']}  "
             f"torch threads={m['torch_threads']}  torch {m['torch']}  "
             f"load avg {m['load_average'][0]:.1f}",
             f"SAEs: {res.get('saes')}", f"prompts: {res.get('prompts')}", ""]
    c = res.get("collection")
    if c:
        lines.append(f"collection ({c['n_tokens']} tokens, {c['n_prompts']} prompts)     tokens/s")
        for k, label in (("features", f"attention features (to layer {c['features_deepest_layer']})"),
                         ("latents", f"SAE latents x{c['n_saes']} (stop at {c['latents_stop_at_layer']})"),
                         ("features_and_latents", "both in one pass")):
            lines.append(f"  {label:<44} {c[f'{k}_tokens_per_s']:>10.1f}")
        lines.append("")
    if res.get("forward"):
        lines += forward_lines(res["forward"]) + [""]
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
    if res.get("short_step"):
        lines += short_step_lines(res["short_step"]) + [""]
    if res.get("steps_to_circuit"):
        lines += [*warm_lines(res["steps_to_circuit"]), ""]
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
    if res.get("pipeline"):
        lines += pipeline_lines(res["pipeline"])
    elif res.get("pipeline_skipped"):
        lines.append(f"pipeline: skipped ({res['pipeline_skipped']})")
    print("\n".join(lines))


def pipeline_lines(p: dict) -> list[str]:
    """The pipeline section: cold and cached wall time, seconds per stage, the evaluation's
    share of the cold run with its phases, and the cold run through Prefect against it."""
    lines = []
    for k in ("cold", "cached", "prefect_cold"):
        if k not in p:
            continue
        e = p[k]
        label = "cold through Prefect" if k == "prefect_cold" else k
        lines.append(f"pipeline {label}: {e['wall_s']:.1f} s" + (
            f", peak RSS {e['peak_rss_mb']:.0f} MB" if "peak_rss_mb" in e else "")
            + f" (rc {e['returncode']})")
        if k != "cached" and e.get("stage_s"):
            lines.append("  stage seconds (manifests): " + ", ".join(
                f"{s} {v:.0f}" for s, v in e["stage_s"].items()))
        if k != "cached" and e.get("evaluation_share") is not None:
            ev = e["evaluate_timings"]
            total = e.get("inner_s", e["wall_s"])
            lines.append(f"  evaluation: {ev['evaluate_and_report_s']:.0f} s of the run's "
                         f"{total:.0f} s = {100 * e['evaluation_share']:.1f}% "
                         f"(target <= 20%); phases: " + ", ".join(
                             f"{n.removesuffix('_s')} {v:.0f}" for n, v in ev["phases"].items()))
    if "prefect_ratio" in p:
        lines.append(f"Prefect / in-process, cold wall: {p['prefect_ratio']:.3f} "
                     f"(target <= 1.1; <= 480 s through Prefect)")
    return lines


def run_all(args) -> dict:
    from maskshare.runtime import configure_threads

    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    threads = configure_threads()
    quick = args.quick
    t_all = time.perf_counter()
    if args.warm_only:
        return {"machine": machine_info(device), "quick": quick,
                "steps_to_circuit": run_section(args, lambda: load_setup("cpu")),
                "bench_wall_s": round(time.perf_counter() - t_all, 1)}
    model, saes, source, prompts = load_setup("cpu")
    res = {"machine": machine_info(device), "saes": source, "prompts": prompts["source"],
           "quick": quick, "targets": TARGETS}
    toks, ans, cf = prompts["tokens"], prompts["answer"], prompts["counterfactual"]
    if args.stages_only:
        return stages_only(args, res, model, saes, prompts, threads, t_all)

    # mask step first: its slot statistics run on the CPU model
    step_prompts = 8 if quick else 32
    res["mask_step"] = bench_mask_step(model, saes, toks[:step_prompts], ans[:step_prompts],
                                       cf[:step_prompts], n_slots=12, device=device,
                                       repeats=3 if quick else 5)
    res["short_step"] = bench_short_step(model, saes, toks, ans, cf, device=device,
                                         repeats=1 if quick else 3)
    # collection on a prefix of the prompts (the model is on `device` now)
    n_coll = 60 if quick else 200
    coll = bench_collection(model, saes, toks[:n_coll], device=device,
                            repeats=1 if quick else 2)
    feats = coll.pop("_features")
    res["collection"] = coll
    # the read-only stages against the SAE collector's pass (bench_forward.py has more)
    res["forward"] = forward_section(model, saes, prompts, n_coll)
    sizes = (2_000, 5_000) if quick else (20_000, 100_000)
    res["grouping"] = bench_grouping(model, feats, toks[:n_coll], sizes=sizes)
    if quick:
        res["scaling"] = bench_scaling(model, saes, toks, ans, cf, prompts=(4, 8),
                                       lengths=(12, 24), sae_counts=(1, 4), slot_counts=(4, 24),
                                       base=(8, None, 4, 12), device=device, repeats=1)
    else:
        res["scaling"] = bench_scaling(model, saes, toks, ans, cf, device=device, repeats=2)
    res["scaling_complexity"] = SCALING_NOTE
    if device == "cpu" and not args.skip_warm:  # where the masks stage runs here
        res["steps_to_circuit"] = run_section(args, lambda: (model, saes, source, prompts))
    if args.skip_pipeline:
        res["pipeline_skipped"] = "--skip-pipeline"
    else:
        res["pipeline"] = bench_pipeline(ROOT / "configs" / "default.yaml", device, threads)
    res["load_average_end"] = list(os.getloadavg())
    res["bench_wall_s"] = round(time.perf_counter() - t_all, 1)
    res["bench_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return res


def forward_section(model, saes, prompts: dict, n: int) -> dict:
    """The read-only stages' tokens/s on the first `n` prompts against the SAE collector's
    pass (the ceiling, measured here)."""
    from maskshare.model.models import load_hf_form

    fwd = bench_forward(model, saes, {k: v[:n] for k, v in prompts.items()
                                      if isinstance(v, list)},
                        hf_model=load_hf_form("smollm2-135m").to(torch.bfloat16))
    fwd.pop("_results")
    return fwd


def stages_only(args, res: dict, model, saes, prompts: dict, threads: int, t_all: float
                ) -> dict:
    """`--stages-only`: the figures of the stages' speed (issue 23) alone: the read-only
    stages against the ceiling, import + build of 1,000 free-form prompts (model load
    included; as configured and all-float32), and the default pipeline cold in-process,
    cached, and cold through Prefect."""
    from bench_forward import bench_import

    res["forward"] = forward_section(model, saes, prompts, 60 if args.quick else 200)
    del model, saes
    res["forward"]["import"] = bench_import()
    if args.skip_pipeline:
        res["pipeline_skipped"] = "--skip-pipeline"
    else:
        res["pipeline"] = bench_pipeline(ROOT / "configs" / "default.yaml", args.device,
                                         threads)
    res["load_average_end"] = list(os.getloadavg())
    res["bench_wall_s"] = round(time.perf_counter() - t_all, 1)
    return res


def write_results(res: dict, out_dir: Path = RESULTS) -> list[Path]:
    """latest.json and <device>.json; a --warm-only run: steps_to_circuit.json alone."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(res, indent=2, default=str)
    paths = [out_dir / "latest.json", out_dir / f"{res['machine']['device']}.json"]
    if set(res) <= {"machine", "quick", "steps_to_circuit", "bench_wall_s"}:
        paths = [out_dir / "steps_to_circuit.json"]
    elif "mask_step" not in res:  # --stages-only
        paths = [out_dir / "stages.json"]
    for p in paths:
        p.write_text(text + "\n")
    return paths


def short_step_only(args) -> int:
    """`--short-step-only`: the short-prompt step section alone, on the embedded model."""
    from maskshare.runtime import configure_threads

    threads = configure_threads()
    model, saes, source, prompts = load_setup("cpu")
    res = bench_short_step(model, saes, prompts["tokens"], prompts["answer"],
                           prompts["counterfactual"], repeats=1 if args.quick else 3)
    print(f"SAEs: {source}; torch threads {threads}; load avg {os.getloadavg()[0]:.1f}")
    print("\n".join(short_step_lines(res)))
    print(json.dumps(res))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--skip-pipeline", action="store_true",
                    help="skip the whole-pipeline cold/cached runs (the long part)")
    ap.add_argument("--short-step-only", action="store_true",
                    help="only the short-prompt step section (printed, not written)")
    ap.add_argument("--warm-only", action="store_true",
                    help="only the steps-to-circuit section (cold vs warm-started masks)")
    ap.add_argument("--skip-warm", action="store_true",
                    help="skip the steps-to-circuit section (run it alone with --warm-only)")
    ap.add_argument("--run", help="steps-to-circuit on this built run's main variant (its "
                    "groups and statistics) instead of from-end slots")
    ap.add_argument("--warm-lambdas", nargs="+", type=float, default=[0.01, 0.03],
                    help="the lambdas (two or more) of the steps-to-circuit sweep")
    ap.add_argument("--stages-only", action="store_true",
                    help="only the stages' speed: read-only passes against the ceiling, the "
                    "1,000-prompt import, the pipeline in-process and through Prefect")
    ap.add_argument("--pipeline-child", nargs=2, metavar=("CONFIG", "OUT"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.pipeline_child:
        _pipeline_child(*args.pipeline_child)
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.short_step_only:
        return short_step_only(args)
    res = run_all(args)
    print_table(res)
    for p in write_results(res):
        print(f"wrote {p.relative_to(ROOT) if p.is_relative_to(ROOT) else p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
