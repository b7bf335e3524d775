"""The SAE quality table: how well each SAE, and the set together, stands in for the model.

Per SAE, on HELD-OUT text (`maskshare.saes.corpus`: distributions never used for training),
BOS positions excluded throughout (BOS is never spliced or ablated in maskshare):

- `explained_variance`: 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over all tokens.
- `l0`: mean number of non-zero latents per token.
- `dead_fraction`: share of latents that never fire on any held-out token.
- `ce_loss_recovered`: next-token cross-entropy with this SAE alone spliced in (error
  dropped), relative to zero-ablating that activation:
  (CE_zero_abl - CE_spliced) / (CE_zero_abl - CE_clean); 1 = as good as the clean model.
  CE is averaged over the predictions made at positions 1..n-2 (the positions spliced).
- `logit_diff_kept_alone`: fraction of the element-symbol logit difference kept with this
  SAE alone spliced in (error dropped).

For all SAEs spliced together (every hook at once; error term dropped, and kept as the
running pass's x - x_hat, which reproduces the clean model up to float error):
`fraction_kept` = ld(spliced) / ld(clean), where ld is the mean over prompts of
logit(answer) - logit(counterfactual) at the final position, on the prompts
"The chemical symbol for {name} is" -> " {Symbol}" (first token); the counterfactual is
another element's symbol whose first token differs (the next one in a seeded order);
only elements the clean model answers top-1 correctly are used.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from maskshare.artifacts import (
    read_manifest,
    write_json_atomic,
    write_manifest,
    write_text_atomic,
)
from maskshare.errors import UserError
from maskshare.model.activations import at_final, collect_activations, pad_id, padded_batches
from maskshare.model.activations import logit_diff as _logit_diff
from maskshare.model.models import load_model, tokenize_prompt
from maskshare.model.sae_set import SAESetConfig, embedded_sae_root, hook_layer, load_saes
from maskshare.saes.activation_store import outlier_mask
from maskshare.saes.corpus import CorpusConfig, build_corpus
from maskshare.saes.corpus_sampling import model_sampler

logger = logging.getLogger(__name__)

ELEMENT_TEMPLATE = "The chemical symbol for {name} is"
TARGETS = {"explained_variance_min": 0.9, "l0_range": [10, 100], "dead_fraction_max": 0.05,
           "ce_loss_recovered_min": 0.95, "fraction_kept_error_dropped_min": 0.6,
           "fraction_kept_error_dropped_aim": 0.8}


def load_sae_dir(directory: str | Path, model) -> dict[str, Any]:
    """Every sae_lens folder directly under `directory`, as an ordered SAE set."""
    directory = Path(directory)
    paths = sorted(str(p.parent) for p in directory.glob("*/cfg.json"))
    if not paths:
        raise UserError(f"no SAE folders (*/cfg.json) in {directory}: train them with "
                        "`maskshare train-saes`")
    return load_saes(SAESetConfig(source="local", paths=paths), model)


@torch.no_grad()
def reconstruct(sae, x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
    return sae.decode(sae.encode(x.float()))


def explained_variance(x: Float[Tensor, "n d"], x_hat: Float[Tensor, "n d"]) -> float:
    x, x_hat = x.double(), x_hat.double()
    sst = (x - x.mean(0)).pow(2).sum()
    if sst <= 0:
        raise ValueError("explained variance is undefined for constant activations")
    return float(1 - (x - x_hat).pow(2).sum() / sst)


@torch.no_grad()
def _ev_parts(sae, acts: Tensor, mean: Tensor, batch: int) -> tuple[float, float, float, Tensor]:
    sse = sst = l0 = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    for i in range(0, acts.shape[0], batch):
        x = acts[i:i + batch].float()
        a = sae.encode(x)
        x_hat = sae.decode(a)
        sse += float((x.double() - x_hat.double()).pow(2).sum())
        sst += float((x.double() - mean).pow(2).sum())
        nz = a != 0
        l0 += float(nz.sum())
        fired |= nz.any(0)
    return sse, sst, l0, fired


def sae_stats(sae, acts: Float[Tensor, "n d"], batch: int = 4096,
              outlier_factor: float | None = None) -> dict[str, float]:
    """Explained variance, L0, dead-latent fraction and MSE of `sae` on `acts`.

    With `outlier_factor`, explained variance, L0 and MSE are over the positions whose norm
    is at most that many times the median (the rule training used; a handful of attention
    sinks with ~40x the median norm would otherwise carry a third of the variance), and
    `explained_variance_all` / `outlier_fraction` say what that leaves out. Dead latents
    are counted over all positions."""
    keep = torch.ones(acts.shape[0], dtype=torch.bool)
    if outlier_factor is not None:
        keep = outlier_mask(acts, outlier_factor)
    kept = acts[keep]
    sse, sst, l0, fired = _ev_parts(sae, kept, kept.double().mean(0), batch)
    out = {"explained_variance": 1 - sse / sst, "l0": l0 / kept.shape[0],
           "mse": sse / (kept.shape[0] * acts.shape[1])}
    if outlier_factor is not None:
        sse_o, sst_o, _, fired_o = _ev_parts(sae, acts[~keep], acts.double().mean(0), batch)
        sst_all = float((acts.double() - acts.double().mean(0)).pow(2).sum())
        out["explained_variance_all"] = 1 - (sse + sse_o) / sst_all
        out["outlier_fraction"] = float((~keep).float().mean())
        fired |= fired_o
    out["dead_fraction"] = float((~fired).float().mean())
    return out


def _next_token_ce(logits: Tensor, tokens: Tensor) -> Tensor:
    """Summed CE of the predictions made at positions 1..n-2 (of tokens 2..n-1), and count."""
    lp = logits[:, 1:-1].float().log_softmax(-1)
    tgt = tokens[:, 2:]
    return -lp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1).sum(), tgt.numel()


def _replace_hook(fn):
    def hook(act, hook):  # noqa: ARG001 - transformer_lens signature
        out = act.clone()
        out[:, 1:] = fn(act[:, 1:])
        return out
    return hook


@torch.no_grad()
def ce_recovered(model, saes: dict[str, Any], tokens: Tensor, batch_rows: int = 16
                 ) -> dict[str, dict[str, float]]:
    """Per SAE: clean, spliced and zero-ablated next-token CE, and the loss recovered."""
    hooks = list(saes)
    tot = {h: {"spliced": 0.0, "zero": 0.0} for h in hooks}
    clean = 0.0
    count = 0
    for i in tqdm(range(0, tokens.shape[0], batch_rows), desc="CE recovered", unit="batch"):
        batch = tokens[i:i + batch_rows]
        logits, cache = model.run_with_cache(batch, names_filter=hooks)
        s, n = _next_token_ce(logits, batch)
        clean += float(s)
        count += n
        for h, sae in saes.items():
            for mode in ("spliced", "zero"):
                fn = (lambda x, sae=sae: reconstruct(sae, x)) if mode == "spliced" \
                    else torch.zeros_like
                if h.endswith("hook_resid_post"):  # rerun only the layers above the hook
                    x = cache[h].clone()
                    x[:, 1:] = fn(x[:, 1:])
                    out = model(x, start_at_layer=hook_layer(h) + 1)
                else:
                    out = model.run_with_hooks(batch, fwd_hooks=[(h, _replace_hook(fn))])
                tot[h][mode] += float(_next_token_ce(out, batch)[0])
    ce_clean = clean / count
    res = {}
    for h in hooks:
        sp, zero = tot[h]["spliced"] / count, tot[h]["zero"] / count
        res[h] = {"ce_clean": ce_clean, "ce_spliced": sp, "ce_zero_ablation": zero,
                  "ce_loss_recovered": (zero - sp) / (zero - ce_clean)}
    return res


def element_prompts(model, seed: int = 0, template: str = ELEMENT_TEMPLATE
                    ) -> list[dict[str, Any]]:
    """Element-symbol prompts with answer and counterfactual token ids (not yet filtered)."""
    import periodictable

    tok = model.tokenizer
    els = [e for e in periodictable.elements if e.number > 0]
    first = {e.symbol: tok(" " + e.symbol, add_special_tokens=False)["input_ids"][0] for e in els}
    order = list(els)
    random.Random(f"cf-{seed}").shuffle(order)
    items = []
    for i, e in enumerate(order):
        cf = next((c for c in order[i + 1:] + order[:i] if first[c.symbol] != first[e.symbol]),
                  None)
        if cf is None:
            continue
        items.append({"entity": e.name, "prompt": template.format(name=e.name),
                      "tokens": tokenize_prompt(model, template.format(name=e.name)),
                      "answer": " " + e.symbol, "answer_id": first[e.symbol],
                      "counterfactual": " " + cf.symbol, "counterfactual_id": first[cf.symbol]})
    return sorted(items, key=lambda it: it["entity"])


@torch.no_grad()
def final_logits(model, prompts: list[dict[str, Any]], fwd_hooks=(), batch: int = 32
                 ) -> Float[Tensor, "n d_vocab"]:
    """Logits at each prompt's own final token (right-padded batches)."""
    out = []
    tokens = [p["tokens"] for p in prompts]
    # in the prompts' own order, full logits (then the final rows), as measured so far
    for b in padded_batches(tokens, batch, order="given", pad_id=pad_id(model)):
        logits = model.run_with_hooks(b.tokens, fwd_hooks=list(fwd_hooks))
        out.append(at_final(logits, b.lengths).float())
    return torch.cat(out)


def logit_diff(logits: Tensor, prompts: list[dict[str, Any]]) -> Tensor:
    return _logit_diff(logits, [p["answer_id"] for p in prompts],
                       [p["counterfactual_id"] for p in prompts])


def splice_hooks(saes: dict[str, Any], keep_error: bool = False) -> list:
    """Forward hooks replacing each hook's (non-BOS) activation by its SAE reconstruction."""
    def fn_for(sae):
        def f(x):
            x_hat = reconstruct(sae, x)
            return x_hat + (x - x_hat) if keep_error else x_hat
        return f
    return [(h, _replace_hook(fn_for(sae))) for h, sae in saes.items()]


@torch.no_grad()
def logit_diff_kept(model, saes: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """Element-symbol logit difference kept with all SAEs spliced, and with each alone."""
    prompts = element_prompts(model, seed)
    clean = final_logits(model, prompts)
    correct = clean.argmax(-1) == torch.tensor([p["answer_id"] for p in prompts])
    prompts = [p for p, ok in zip(prompts, correct.tolist(), strict=True) if ok]
    if not prompts:  # e.g. a random test model: nothing to measure
        logger.warning("the model answers no element-symbol prompt correctly")
        return {"n_prompts": 0, "ld_clean": None, "ld_spliced_error_dropped": None,
                "fraction_kept_error_dropped": None, "ld_spliced_error_kept": None,
                "fraction_kept_error_kept": None, "alone_error_dropped": dict.fromkeys(saes),
                "entities": []}
    ld_clean = float(logit_diff(clean[correct], prompts).mean())
    res: dict[str, Any] = {"n_prompts": len(prompts), "ld_clean": ld_clean}
    for keep in (False, True):
        ld = float(logit_diff(final_logits(model, prompts, splice_hooks(saes, keep)),
                              prompts).mean())
        tag = "error_kept" if keep else "error_dropped"
        res[f"ld_spliced_{tag}"] = ld
        res[f"fraction_kept_{tag}"] = ld / ld_clean
    res["alone_error_dropped"] = {
        h: float(logit_diff(final_logits(model, prompts, splice_hooks({h: sae})),
                            prompts).mean()) / ld_clean for h, sae in saes.items()}
    res["entities"] = [p["entity"] for p in prompts]
    return res


@torch.no_grad()
def measure_quality(model, saes: dict[str, Any], heldout: Tensor, ce_rows: int = 16,
                    batch_rows: int = 16, seed: int = 0, outlier_factor: float | None = 10.0
                    ) -> dict[str, Any]:
    """The whole quality table for `saes` on held-out token rows ([rows, pos], BOS first)."""
    hooks = list(saes)
    acts = collect_activations(model, heldout, hooks, batch_rows, desc="held-out activations")
    per = {h: {"d_sae": int(sae.cfg.d_sae),
               **sae_stats(sae, acts[h], outlier_factor=outlier_factor)}
           for h, sae in saes.items()}
    del acts
    ce = ce_recovered(model, saes, heldout[:ce_rows], batch_rows)
    ld = logit_diff_kept(model, saes, seed)
    for h in hooks:
        per[h].update(ce[h])
        per[h]["logit_diff_kept_alone"] = ld["alone_error_dropped"][h]
    n_tok = int(heldout.shape[0] * (heldout.shape[1] - 1))
    met = {
        "explained_variance": all(r["explained_variance"] >= TARGETS["explained_variance_min"]
                                  for r in per.values()),
        "l0": all(TARGETS["l0_range"][0] <= r["l0"] <= TARGETS["l0_range"][1]
                  for r in per.values()),
        "dead_fraction": all(r["dead_fraction"] < TARGETS["dead_fraction_max"]
                             for r in per.values()),
        "ce_loss_recovered": all(r["ce_loss_recovered"] >= TARGETS["ce_loss_recovered_min"]
                                 for r in per.values()),
        "fraction_kept_error_dropped": ld["n_prompts"] > 0 and
            ld["fraction_kept_error_dropped"] >= TARGETS["fraction_kept_error_dropped_min"],
    }
    return {"per_sae": per, "all_spliced": {k: v for k, v in ld.items()
                                            if k != "alone_error_dropped"},
            "heldout_tokens": n_tok, "ce_tokens": int(min(ce_rows, heldout.shape[0])
                                                       * (heldout.shape[1] - 2)),
            "targets": TARGETS, "targets_met": met, "outlier_factor": outlier_factor,
            "definitions": __doc__.split("\n\n", 1)[1]}


def _f(v: float | None, fmt: str = ".3f") -> str:
    return "n/a" if v is None else format(v, fmt)


def quality_markdown(q: dict[str, Any]) -> str:
    """A markdown table of a quality dict (for the README)."""
    lines = ["| SAE (hook) | width | L0 | explained variance (held-out) | EV, all positions "
             "| outlier positions | dead latents | CE loss recovered "
             "| logit diff kept (alone, error dropped) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for h, r in q["per_sae"].items():
        frac = r.get("outlier_fraction")
        lines.append(f"| `{h}` | {r['d_sae']} | {r['l0']:.1f} | {r['explained_variance']:.3f} "
                     f"| {_f(r.get('explained_variance_all'))} "
                     f"| {'n/a' if frac is None else format(100 * frac, '.2f') + '%'} "
                     f"| {100 * r['dead_fraction']:.1f}% | {r['ce_loss_recovered']:.3f} "
                     f"| {_f(r['logit_diff_kept_alone'])} |")
    a = q["all_spliced"]
    lines += ["", f"All {len(q['per_sae'])} SAEs spliced together, element-symbol prompts "
              f"({a['n_prompts']} elements the model answers top-1; clean logit difference "
              f"{_f(a['ld_clean'], '.2f')}):", "",
              "| error term | logit difference | fraction kept |", "|---|---|---|",
              f"| dropped | {_f(a['ld_spliced_error_dropped'], '.2f')} "
              f"| {_f(a['fraction_kept_error_dropped'])} |",
              f"| kept (x - x_hat of the running pass) | {_f(a['ld_spliced_error_kept'], '.2f')} "
              f"| {_f(a['fraction_kept_error_kept'])} |", "",
              f"Held-out text: {q['heldout_tokens']} tokens (BOS excluded): model-written text "
              f"from held-out openings and package text from distributions not used in "
              f"training. Explained variance and L0 over positions whose norm is at most "
              f"{q.get('outlier_factor', 'n/a')}x the median (attention sinks left out, as in "
              f"training); EV over all positions beside it. CE over {q['ce_tokens']} predictions. Targets: explained "
              f"variance >= {TARGETS['explained_variance_min']}, L0 in {TARGETS['l0_range']}, "
              f"dead < {100 * TARGETS['dead_fraction_max']:.0f}%, CE loss recovered >= "
              f"{TARGETS['ce_loss_recovered_min']}, fraction kept (error dropped) "
              f">= {TARGETS['fraction_kept_error_dropped_min']} (aim "
              f"{TARGETS['fraction_kept_error_dropped_aim']}). Met: "
              + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in q["targets_met"].items())
              + "."]
    return "\n".join(lines) + "\n"


def write_quality(directory: str | Path, q: dict[str, Any]) -> None:
    directory = Path(directory)
    write_json_atomic(directory / "quality.json", q)
    write_text_atomic(directory / "quality.md", quality_markdown(q))


def sae_quality(sae_dir: str | Path | None = None, model_name: str = "smollm2-135m",
                threads: int | None = None, ce_rows: int = 16, model=None,
                corpus_of: str | Path | None = None) -> dict[str, Any]:
    """Measure the quality of the SAE set in `sae_dir` and write quality.json / quality.md.

    The held-out text is rebuilt from the corpus config recorded in the set's manifest
    (the default corpus config if there is none), so it is the text training never saw;
    `corpus_of` names another set whose held-out text to use instead (to compare sets on
    the same text). Sampled held-out text is read from the cache (sampled if missing).
    """
    sae_dir = Path(sae_dir) if sae_dir is not None else embedded_sae_root(model_name)
    if not sae_dir.is_dir():
        raise UserError(f"{sae_dir} does not exist: train the SAEs with `maskshare train-saes`")
    m = read_manifest(sae_dir) or {}
    cm = (read_manifest(Path(corpus_of)) or {}) if corpus_of is not None else m
    corpus_cfg = CorpusConfig.model_validate((cm.get("config") or {}).get("corpus") or {})
    if model is None:
        model = load_model((m.get("config") or {}).get("model") or model_name, threads=threads)
    t0 = time.perf_counter()
    saes = load_sae_dir(sae_dir, model)

    corpus = build_corpus(model.tokenizer, corpus_cfg,
                          model_sampler(model.cfg.model_name, corpus_cfg, model.tokenizer))
    q = measure_quality(model, saes, corpus.heldout, ce_rows=ce_rows)
    q["corpus_sha256"] = corpus.sha256
    if corpus_of is not None:
        q["heldout_text_of"] = str(corpus_of)
    write_quality(sae_dir, q)
    update_manifest_quality(sae_dir, q, time.perf_counter() - t0)
    return q


def quality_summary(q: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a quality dict (for manifests)."""
    return {
        "per_sae": {h: {k: v for k, v in r.items() if not isinstance(v, list | dict)}
                    for h, r in q.get("per_sae", {}).items()},
        "all_spliced": q.get("all_spliced"),
    }


def update_manifest_quality(directory: Path, quality: dict[str, Any],
                            quality_s: float | None = None) -> None:
    """Refresh an SAE set's manifest after its quality table was re-measured."""
    m = read_manifest(directory)
    if m is None:
        return
    reserved = {"inputs", "config", "seed", "timings", "versions", "runtime", "files",
                "created"}
    extra = {k: v for k, v in m.items() if k not in reserved}
    extra["quality"] = quality_summary(quality)
    timings = dict(m.get("timings") or {})
    if quality_s is not None:
        timings["quality_s"] = quality_s
    write_manifest(directory, inputs=m.get("inputs"), config=m.get("config"), seed=m.get("seed"),
                   timings=timings, extra=extra)
