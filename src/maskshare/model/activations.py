"""Running the model over prompts: batching, padding, final-token logits, activations.

The building blocks; the stages that only read the model run them through
`maskshare.model.forward` (one path: inference mode, stopped after the deepest hook,
bfloat16 by use). Called by every stage (datasets, features, slot statistics, masking,
evaluation, circuit listing, SAE training and quality):

- `length_batches`: prompt indices grouped into batches by length, so padding stays small.
  `order` says which prompts come first: `shortest` (stable by (length, index)), `longest`
  (stable by (-length, index)) or `given` (the caller's order, no sort). A batch holds at most
  `batch_size` prompts and, with `max_tokens`, at most that many padded tokens. Batch order
  matters downstream (float sums accumulate batch by batch), so each caller keeps its own.
  `length_parts` splits one length-sorted batch into contiguous parts that pad less.
- `pad_batch`: right-padded token ids [B, P], attention mask [B, P] and lengths [B]
  (docs/architecture.md: batches are right-padded, each prompt read at `length - 1`);
  `pad_slots` pads slot ids with -1.
- `at_final`, `unembed_final`, `logit_diff`: the answer is read at each prompt's own final
  token, ld = logit(answer) - logit(counterfactual); `clean_final_logits` runs the model alone
  and unembeds only the final positions; `final_logit_diff` unembeds only the two tokens
  (what the logit-difference objective and every ld of the evaluation need).
- `run_to_deepest`, `collect_activations`: activations at a set of hooks, the model run only
  up to the deepest of them (`stop_at_layer`), one pass for every hook.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from maskshare.errors import UserError
from maskshare.model.sae_set import hook_layer

Order = Literal["shortest", "longest", "given"]


def hook_name(kind: str, layer: int) -> str:
    """TransformerLens's hook name, e.g. ("resid_post", 6) -> "blocks.6.hook_resid_post"."""
    from transformer_lens.utilities import get_act_name

    return get_act_name(kind, layer)


# ----------------------------------------------------------------------------- batching
def length_batches(lengths: Sequence[int] | np.ndarray, batch_size: int, *,
                   order: Order = "shortest",
                   max_tokens: int | None = None) -> list[list[int]]:
    """Prompt indices in batches of similar length: at most `batch_size` prompts and, with
    `max_tokens`, at most `max_tokens` padded tokens (rows x longest row) a batch (a single
    prompt longer than that still gets a batch of its own)."""
    lengths = [int(x) for x in lengths]
    idx = range(len(lengths))
    if order == "shortest":
        ordered = sorted(idx, key=lambda i: (lengths[i], i))
    elif order == "longest":
        ordered = sorted(idx, key=lambda i: (-lengths[i], i))
    elif order == "given":
        ordered = list(idx)
    else:
        raise ValueError(f"unknown batch order {order!r}")
    batches: list[list[int]] = []
    cur: list[int] = []
    width = 0
    for i in ordered:
        w = max(width, lengths[i])
        if cur and (len(cur) >= batch_size or
                    (max_tokens is not None and w * (len(cur) + 1) > max_tokens)):
            batches.append(cur)
            cur, w = [], lengths[i]
        cur.append(i)
        width = w
    if cur:
        batches.append(cur)
    return batches


def length_parts(lengths: list[int], max_parts: int = 3, min_saving: float = 0.1,
                 min_tokens: int = 0) -> list[tuple[int, int]]:
    """Contiguous row ranges [(start, end)] of a batch minimising padded tokens
    (sum of rows x longest row per part) with at most `max_parts` parts; each extra part must
    save at least `min_saving` of the one-part total, else fewer parts are used. A batch of
    at most `min_tokens` padded tokens stays whole (each part is one more pass through the
    layers, whose cost does not shrink with its rows)."""
    n = len(lengths)
    if n <= 1 or max_parts <= 1 or n * max(lengths) <= min_tokens:
        return [(0, n)]
    INF = float("inf")
    # best[k][j]: min padded tokens of rows [0, j) in k parts (rows need not be sorted)
    best = [[INF] * (n + 1) for _ in range(max_parts + 1)]
    back = [[0] * (n + 1) for _ in range(max_parts + 1)]
    best[0][0] = 0.0
    for k in range(1, max_parts + 1):
        for j in range(1, n + 1):
            m = 0
            for i in range(j - 1, -1, -1):
                m = max(m, lengths[i])
                c = best[k - 1][i] + (j - i) * m
                if c < best[k][j]:
                    best[k][j], back[k][j] = c, i
    one = best[1][n]
    k_best = 1
    for k in range(2, max_parts + 1):
        if best[k_best][n] - best[k][n] >= min_saving * one:
            k_best = k
    cuts, j = [], n
    for k in range(k_best, 0, -1):
        i = back[k][j]
        cuts.append((i, j))
        j = i
    return cuts[::-1]


def pad_id(model) -> int:
    """The tokenizer's padding id (0 without a tokenizer or padding token)."""
    tok = getattr(model, "tokenizer", None)
    return int(tok.pad_token_id or 0) if tok is not None else 0


def pad_batch(tokens: Sequence[Sequence[int]], idx: Sequence[int], pad_id: int = 0,
              device: str | torch.device | None = None
              ) -> tuple[Int[Tensor, "B P"], Int[Tensor, "B P"], Int[Tensor, " B"]]:
    """Right-padded token tensor [B, P], attention mask [B, P] and lengths [B] of the
    prompts `idx` of `tokens`."""
    lens = [len(tokens[i]) for i in idx]
    P = max(lens)
    toks = torch.full((len(idx), P), pad_id, dtype=torch.long)
    att = torch.zeros((len(idx), P), dtype=torch.long)
    for b, i in enumerate(idx):
        toks[b, :lens[b]] = torch.as_tensor(tokens[i], dtype=torch.long)
        att[b, :lens[b]] = 1
    lengths = torch.as_tensor(lens, dtype=torch.long)
    if device is not None:
        toks, att = toks.to(device), att.to(device)
    return toks, att, lengths


def pad_slots(slots: Sequence[np.ndarray], idx: Sequence[int], P: int) -> Int[Tensor, "B P"]:
    """Slot ids [B, P] of the prompts `idx`, padding -1."""
    out = torch.full((len(idx), P), -1, dtype=torch.long)
    for b, i in enumerate(idx):
        s = torch.as_tensor(np.asarray(slots[i]), dtype=torch.long)
        out[b, :len(s)] = s
    return out


@dataclass
class Batch:
    """One padded batch: `idx` are the prompts' positions in the caller's list."""

    idx: list[int]
    tokens: Int[Tensor, "B P"]
    attention_mask: Int[Tensor, "B P"]
    lengths: Int[Tensor, " B"]


def padded_batches(tokens: Sequence[Sequence[int]], batch_size: int, *,
                   order: Order = "shortest", max_tokens: int | None = None,
                   pad_id: int = 0, device: str | torch.device | None = None
                   ) -> Iterator[Batch]:
    """`length_batches` of `tokens`, each padded by `pad_batch`."""
    for idx in length_batches([len(t) for t in tokens], batch_size, order=order,
                              max_tokens=max_tokens):
        yield Batch(list(idx), *pad_batch(tokens, idx, pad_id, device))


# ----------------------------------------------------------------------------- final token
def at_final(x: Float[Tensor, "B P *rest"], lengths: Int[Tensor, " B"]) -> Tensor:
    """Each row's value at its own final token (`length - 1`)."""
    return x[torch.arange(x.shape[0], device=x.device), lengths.to(x.device) - 1]


def unembed_final(model, resid_final: Float[Tensor, "B d_model"]) -> Float[Tensor, "B d_vocab"]:
    """ln_final + unembed on [B, d_model] (the final positions only)."""
    x = resid_final[:, None, :]
    if model.cfg.normalization_type is not None:
        x = model.ln_final(x)
    return model.unembed(x)[:, 0, :]


def logit_diff(logits: Float[Tensor, "B d_vocab"], answer, counterfactual) -> Float[Tensor, " B"]:
    """logit(answer) - logit(counterfactual) per row (ids: tensors or lists, one per row)."""
    r = torch.arange(logits.shape[0], device=logits.device)
    a = torch.as_tensor(answer, device=logits.device)
    c = torch.as_tensor(counterfactual, device=logits.device)
    return logits[r, a] - logits[r, c]


def final_logit_diff(model, resid_final: Float[Tensor, "B d_model"], answer,
                     counterfactual) -> Float[Tensor, " B"]:
    """logit(answer) - logit(counterfactual) per row from the residual at the final positions:
    ln_final, then only those two tokens' unembedding columns. Equal to
    `logit_diff(unembed_final(...))` within float rounding, without the [B, d_vocab] logits
    (a [d_model, 49152] matmul forward and backward for SmolLM2)."""
    x = resid_final[:, None, :]
    if model.cfg.normalization_type is not None:
        x = model.ln_final(x)
    x = x[:, 0, :]
    a = torch.as_tensor(answer, device=x.device)
    c = torch.as_tensor(counterfactual, device=x.device)
    w_t, b = model.W_U.T, model.b_U  # w_t: [d_vocab, d_model]
    return ((x * w_t[a]).sum(-1) + b[a]) - ((x * w_t[c]).sum(-1) + b[c])


def clean_final_logits(model, tokens: Int[Tensor, "B P"], lengths: Int[Tensor, " B"],
                       attention_mask: Tensor | None = None) -> Float[Tensor, "B d_vocab"]:
    """The model alone (whatever hooks are active): logits at each row's final token, the
    unembedding applied to those positions only."""
    resid = model(tokens, attention_mask=attention_mask, stop_at_layer=model.cfg.n_layers)
    return unembed_final(model, at_final(resid, lengths))


# ----------------------------------------------------------------------------- activations
def stop_layer(hooks: Sequence[str]) -> int:
    """The `stop_at_layer` that still runs every hook of `hooks` (deepest layer + 1)."""
    return max(hook_layer(h) for h in hooks) + 1


def run_to_deepest(model, tokens: Int[Tensor, "B P"], hooks: Sequence[str],
                   attention_mask: Tensor | None = None) -> dict[str, Tensor]:
    """Activations {hook: [B, P, ...]} of one forward pass stopped after the deepest hook."""
    hooks = list(hooks)
    _, cache = model.run_with_cache(tokens, attention_mask=attention_mask,
                                    stop_at_layer=stop_layer(hooks), names_filter=hooks)
    return {h: cache[h] for h in hooks}


def _flat(act: Tensor) -> Tensor:
    """[batch, pos, ...] -> [batch, pos, d] (hook_z-style activations are flattened)."""
    return act.reshape(*act.shape[:2], -1)


@torch.no_grad()
def collect_activations(model, tokens: Int[Tensor, "rows pos"], hooks: list[str],
                        batch_rows: int = 16, skip_bos: bool = True,
                        desc: str = "activations") -> dict[str, Float[Tensor, "n d"]]:
    """Activations at `hooks` for every (non-BOS) token of equal-length token rows
    [rows, pos] (BOS first), in ONE model pass up to the deepest hook; float16, rows then
    positions flattened."""
    from tqdm.auto import tqdm

    missing = [h for h in hooks if h not in model.hook_dict]
    if missing:
        raise UserError(f"hook(s) {missing} do not exist in model {model.cfg.model_name!r}")
    out: dict[str, list[Tensor]] = {h: [] for h in hooks}
    start = 1 if skip_bos else 0
    for i in tqdm(range(0, tokens.shape[0], batch_rows), desc=desc, unit="batch"):
        cache = run_to_deepest(model, tokens[i:i + batch_rows], hooks)
        for h in hooks:
            a = _flat(cache[h])[:, start:]
            out[h].append(a.reshape(-1, a.shape[-1]).to(torch.float16))
    return {h: torch.cat(v) for h, v in out.items()}
