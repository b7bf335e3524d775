"""The one forward path of every stage that only reads the model (issue 23).

Dataset scoring (build and import), attention features, slot statistics, the counterfactual
ablation's reference latents, the clean model's logit differences (M_clean) and the
circuit's top-activating tokens all run the model the same way, here:

- batched by length (`batches`: `padded_batches` with the model's padding id and device);
  the float32 uses keep each caller's batching (batch size, order), because float32 sums
  depend on a batch's composition and their results must stay bit for bit what they were;
  the bfloat16 uses batch under a token budget (`BF16_BATCH`);
- run under `torch.inference_mode()` and stopped after the deepest hook needed
  (`hook_values`: `stop_at_layer`, then an exception once every hook has fired), keeping
  only what each hook's `keep` function returns (a final-row slice, a diagonal, ...);
- final positions only: `final_residual`, and logits only there (`final_logits`) or only
  the two tokens' (`final_logit_diffs`);
- in float32, or in bfloat16 (autocast: matmuls in bf16, reductions in fp32) where the
  figures show the error does not matter for that use (`dtype_for`, `BF16_USES`);
- with torch's threads set once for the machine (`configure_threads`, by `load_model`).

Where bfloat16 is the default, and why (benchmarks/bench_forward.py measures it):
- `features` (attention features for the grouping): bfloat16 since before this module
  (`grouping.features.dtype`, docs/groups-results.md).
- `filter` (the dataset build's behaviour filter): bfloat16, and every prompt within
  `RECHECK_MARGIN` logits of flipping (logit-diff: |ld - margin|; top1: |logit(answer) -
  the highest other logit|) is scored again in float32, so every pass/fail decision is the
  float32 one. Measured on ~1,000 candidates each of elements-symbol and a free-form import
  (benchmarks/bench_forward.py): largest bf16 error 0.55 on an ld and 0.86 on a margin,
  1.5 leaves room; bf16 alone flipped 12 of 1,053 and 6 of 982 decisions, with the
  recheck none. The stored `logit_diff` and `answer_prob` of the prompts not rechecked are
  bfloat16 values (mean ld error 0.06; only the pass table's means read them). Padding and
  batch composition move float32 results by ~1e-4 themselves: a decision closer than that
  to the threshold was never stable.
- float32 stays the default for the slot statistics (the means every mask is trained
  against), the clean logit differences (reported metrics), the counterfactual references
  and the top-activating tokens: their values are results, not decisions, and bf16 moves
  them measurably (elements-symbol, 546 prompts): slot latent means by 0.3-1.7% and error
  means by 1.7-3.0% (relative norm, per SAE), references by up to 2.6%, clean lds by up to
  0.33 (mean 0.07; the mean ld by 0.1%), and 6% of the circuit's top-5 tokens change.
`MASKSHARE_BF16=use,use` names the uses that run in bfloat16 instead (`all`; `none`: float32
everywhere, the exact results of before this module), to measure them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from maskshare.model.activations import (
    Batch,
    Order,
    at_final,
    final_logit_diff,
    pad_id,
    padded_batches,
    unembed_final,
)
from maskshare.model.sae_set import hook_layer

DTYPES = ("float32", "bfloat16")
USES = ("filter", "features", "stats", "clean", "references", "top_tokens")
BF16_USES = frozenset({"filter", "features"})  # bfloat16 by default (module doc)
BF16_BATCH = {"batch_size": 256, "max_tokens": 4096}  # bf16 batching (bench_forward.py)
RECHECK_MARGIN = 1.5  # logits: decisions this close to flipping are redone in fp32 (module doc)

Keep = Callable[[Tensor], Tensor] | None


def bf16_uses() -> frozenset[str]:
    """The uses that run in bfloat16: `$MASKSHARE_BF16` when set (comma-separated uses,
    `all`, or `none`: float32 everywhere), else `BF16_USES`. `features` follows its config
    (`grouping.features.dtype`) whatever this says."""
    env = os.environ.get("MASKSHARE_BF16")
    if env is None or not env.strip():
        return BF16_USES
    names = {u.strip() for u in env.split(",") if u.strip()}
    if "all" in names:
        return frozenset(USES)
    bad = names - set(USES) - {"none"}
    if bad:
        raise ValueError(f"MASKSHARE_BF16: unknown use(s) {sorted(bad)} (use {USES}, all, none)")
    return frozenset(names - {"none"})


def dtype_for(use: str) -> str:
    """The compute dtype of a read-only `use`: bfloat16 if it is in `bf16_uses()`."""
    if use not in USES:
        raise ValueError(f"unknown forward use {use!r} (one of {USES})")
    return "bfloat16" if use in bf16_uses() else "float32"


def precision(dtype: str, device: str | torch.device = "cpu"):
    """The context a pass of `dtype` runs under: nothing for float32, bfloat16 autocast
    (matmuls in bf16, softmax and norms in fp32) for bfloat16."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, not {dtype!r}")
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def batches(model, tokens: Sequence[Sequence[int]], *, batch_size: int = 32,
            order: Order = "shortest", max_tokens: int | None = None,
            dtype: str = "float32", pad: int | None = None) -> Iterator[Batch]:
    """Padded batches of similar length on the model's device, padded with `pad` (None:
    the model's padding id). bfloat16 passes use `BF16_BATCH` where the caller gives no
    `max_tokens` (float32 ones keep the caller's batches: module doc)."""
    if dtype == "bfloat16" and max_tokens is None:
        batch_size = max(batch_size, BF16_BATCH["batch_size"])
        max_tokens = BF16_BATCH["max_tokens"]
    yield from padded_batches(tokens, batch_size, order=order, max_tokens=max_tokens,
                              pad_id=pad_id(model) if pad is None else pad,
                              device=model.cfg.device)


class _Stop(Exception):
    """Raised once every wanted hook has fired: the rest of the pass is not needed."""


def stop_after(hooks: Sequence[str]) -> int:
    """The `stop_at_layer` that still runs every hook (deepest layer + 1)."""
    return max(hook_layer(h) for h in hooks) + 1


def hook_values(model, tokens: Int[Tensor, "B P"], keep: dict[str, Keep] | Sequence[str],
                attention_mask: Tensor | None = None, dtype: str = "float32",
                extra_hooks: Sequence = (), inference: bool = True) -> dict[str, Tensor]:
    """One pass over `tokens`, stopped as soon as every hook of `keep` has fired: {hook:
    keep[hook](activation)} (the activation itself where `keep` gives None or is a list).
    `extra_hooks`: (name, fn) pairs run as well. `inference=False` runs under `no_grad`
    instead of `inference_mode`, for values a later autograd pass reads (references)."""
    with torch.inference_mode() if inference else torch.no_grad():
        return _hook_values(model, tokens, keep, attention_mask, dtype, extra_hooks)


def _hook_values(model, tokens, keep, attention_mask, dtype, extra_hooks) -> dict[str, Tensor]:
    keep = dict.fromkeys(keep) if not isinstance(keep, dict) else keep
    missing = [h for h in keep if h not in model.hook_dict]
    if missing:
        raise KeyError(f"hook(s) {missing} do not exist in model {model.cfg.model_name!r}")
    got: dict[str, Tensor] = {}

    def grab(act, hook):
        fn = keep[hook.name]
        got[hook.name] = act if fn is None else fn(act)
        if len(got) == len(keep):
            raise _Stop

    hooks = [(h, grab) for h in keep] + list(extra_hooks)
    with precision(dtype, tokens.device):
        try:
            model.run_with_hooks(tokens, attention_mask=attention_mask,
                                 stop_at_layer=stop_after(list(keep)), fwd_hooks=hooks)
        except _Stop:
            pass
    return {h: got[h] for h in keep}


@torch.inference_mode()
def final_residual(model, batch: Batch, attention_mask: bool = True,
                   dtype: str = "float32") -> Float[Tensor, "B d_model"]:
    """The residual stream after the last block at each row's own final token (float32).
    `attention_mask=False` runs under the causal mask alone (right padding stays out)."""
    with precision(dtype, batch.tokens.device):
        resid = model(batch.tokens, attention_mask=batch.attention_mask if attention_mask
                      else None, stop_at_layer=model.cfg.n_layers)
    return at_final(resid, batch.lengths).float()


@torch.inference_mode()
def final_logits(model, batch: Batch, attention_mask: bool = True,
                 dtype: str = "float32") -> Float[Tensor, "B d_vocab"]:
    """Logits at each row's final token only (float32), the unembedding applied there."""
    resid = final_residual(model, batch, attention_mask, dtype)
    with precision(dtype, resid.device):
        return unembed_final(model, resid).float()


@torch.inference_mode()
def final_logit_diffs(model, batch: Batch, answer, counterfactual, attention_mask: bool = True,
                      dtype: str = "float32") -> Float[Tensor, " B"]:
    """logit(answer) - logit(counterfactual) at each row's final token, from the two tokens'
    unembedding columns only (`final_logit_diff`)."""
    resid = final_residual(model, batch, attention_mask, dtype)
    return final_logit_diff(model, resid, answer, counterfactual)


@torch.inference_mode()
def score_rows(model, tokens: list[list[int]], answer_ids: list[int], cf_ids: list[int], *,
               batch_size: int = 32, dtype: str = "float32", progress: bool = False,
               desc: str = "scoring") -> dict[str, list]:
    """Per prompt at its own final token: `top` (top-1 token), `prob` (p(answer)), `ld`
    (logit(answer) - logit(counterfactual)) and `margin` (logit(answer) minus the highest
    other logit: > 0 where the answer is the top token). Batches:
    shortest first, the causal mask alone (the dataset build's scoring since it was first
    written, so float32 results are unchanged)."""
    from tqdm.auto import tqdm

    n = len(tokens)
    out = {"top": [0] * n, "prob": [0.0] * n, "ld": [0.0] * n, "margin": [0.0] * n}
    bs = batches(model, tokens, batch_size=batch_size, order="shortest", dtype=dtype)
    for b in tqdm(bs, desc=desc, unit="batch", disable=not progress, leave=False):
        logits = final_logits(model, b, attention_mask=False, dtype=dtype)
        r = torch.arange(len(b.idx))
        a = torch.as_tensor([answer_ids[i] for i in b.idx])
        c = torch.as_tensor([cf_ids[i] for i in b.idx])
        prob = logits.log_softmax(-1)[r, a].exp()
        ld = logits[r, a] - logits[r, c]
        top = logits.argmax(-1)  # the first of tied maxima, as before
        others = logits.clone()
        others[r, a] = float("-inf")
        margin = logits[r, a] - others.max(-1).values
        for j, i in enumerate(b.idx):
            out["top"][i] = int(top[j])
            out["prob"][i] = float(prob[j])
            out["ld"][i] = float(ld[j])
            out["margin"][i] = float(margin[j])
    return out


__all__ = ["BF16_BATCH", "BF16_USES", "DTYPES", "RECHECK_MARGIN", "USES", "batches", "bf16_uses",
           "dtype_for", "final_logit_diffs", "final_logits", "final_residual", "hook_values",
           "precision", "score_rows", "stop_after"]
