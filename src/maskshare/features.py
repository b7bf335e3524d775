"""Per-token attention features: how the model treats each token, as a vector.

Definition (for token t of a prompt of length n, positions 0..n-1, BOS at 0, with
A[l, h] the attention pattern of layer l, head h, rows = queries, columns = keys):

- `from_final`: A[l, h][n-1, t] for every selected (layer, head): the attention the final
  position pays to t.
- `to_bos`:  A[l, h][t, 0]   (attention t pays to BOS)
- `to_self`: A[l, h][t, t]   (attention t pays to itself)
- `to_prev`: A[l, h][t, t-1] (attention t pays to its predecessor; 0 for t = 0)
- `position_from_end` (optional): n-1-t, as log1p(n-1-t) when `log_scale`.

With `log_scale` every attention value becomes log(a + 1e-4). Patterns come from
`blocks.L.attn.hook_pattern`, which is per query head also under grouped-query attention.
Columns are ordered feature group by feature group (as listed), layer-major then head
within each group; `TokenFeatures.names` names them.

Batches are right-padded and run under the causal mask with no attention mask, so a real
token never sees padding: a prompt's features are the same alone or in a batch, and
padding never becomes a row. The model runs only up to the deepest selected layer
(`stop_at_layer`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from maskshare.config import AttentionFeatures
from maskshare.errors import UserError

LOG_EPS = 1e-4


@dataclass
class TokenFeatures:
    """One row per real token: `matrix[i]` belongs to token `position[i]` of `prompt_id[i]`."""

    matrix: np.ndarray       # float32 [n_tokens, n_features]
    prompt_id: np.ndarray    # int64 [n_tokens]
    position: np.ndarray     # int64 [n_tokens]
    length: np.ndarray       # int64 [n_tokens]: the length of the token's prompt
    names: list[str]

    def __len__(self) -> int:
        return int(self.matrix.shape[0])


def selected_layers(model, cfg: AttentionFeatures) -> list[int]:
    n = model.cfg.n_layers
    layers = list(range(n)) if cfg.layers is None else sorted(set(cfg.layers))
    bad = [x for x in layers if not 0 <= x < n]
    if bad:
        raise UserError(f"grouping.features.layers: {bad} out of range for a {n}-layer model "
                        f"(use 0..{n - 1}, or leave it empty for every layer)")
    if not layers:
        raise UserError("grouping.features.layers is empty: name at least one layer")
    return layers


def feature_names(model, cfg: AttentionFeatures) -> list[str]:
    layers = selected_layers(model, cfg)
    heads = range(model.cfg.n_heads)
    names: list[str] = []
    for group, on in (("from_final", cfg.from_final), ("to_bos", cfg.to_bos),
                      ("to_self", cfg.to_self), ("to_prev", cfg.to_prev)):
        if on:
            names += [f"{group}.L{layer}.H{h}" for layer in layers for h in heads]
    if cfg.position_from_end:
        names.append("position_from_end")
    if not names:
        raise UserError("grouping.features: every feature is switched off; enable at least one")
    return names


def _prompt_rows(pats: list[torch.Tensor], n: int, b: int, cfg: AttentionFeatures) -> np.ndarray:
    """Feature rows [n, n_features] of prompt b (length n) from per-layer patterns."""
    cols = []
    t = torch.arange(n)
    # pats[i]: [batch, head, q, k]
    stack = torch.stack([p[b, :, :n, :n] for p in pats])  # [layer, head, n, n]
    L, H = stack.shape[:2]
    if cfg.from_final:
        cols.append(stack[:, :, n - 1, :].reshape(L * H, n).T)
    if cfg.to_bos:
        cols.append(stack[:, :, :, 0].reshape(L * H, n).T)
    if cfg.to_self:
        cols.append(stack[:, :, t, t].reshape(L * H, n).T)
    if cfg.to_prev:
        prev = torch.zeros(L, H, n)
        if n > 1:
            prev[:, :, 1:] = stack[:, :, t[1:], t[1:] - 1]
        cols.append(prev.reshape(L * H, n).T)
    out = torch.cat(cols, dim=1) if cols else torch.zeros(n, 0)
    if cfg.log_scale:
        out = torch.log(out + LOG_EPS)
    if cfg.position_from_end:
        pos = (n - 1 - t).to(out.dtype)[:, None]
        out = torch.cat([out, torch.log1p(pos) if cfg.log_scale else pos], dim=1)
    return out.numpy().astype(np.float32)


def attention_features(model, tokens: list[list[int]], cfg: AttentionFeatures | None = None,
                       prompt_ids: list[int] | None = None, batch_size: int = 32,
                       progress: bool = False) -> TokenFeatures:
    """Attention features of every token of every prompt (see the module docstring).

    `tokens`: one id list per prompt, BOS first. Returns a `TokenFeatures` whose rows are
    ordered prompt by prompt, position by position.
    """
    cfg = cfg or AttentionFeatures()
    layers = selected_layers(model, cfg)
    names = feature_names(model, cfg)
    if prompt_ids is None:
        prompt_ids = list(range(len(tokens)))
    if len(prompt_ids) != len(tokens):
        raise ValueError("prompt_ids and tokens differ in length")
    if any(len(t) == 0 for t in tokens):
        raise UserError("a prompt has no tokens")
    n_ctx = model.cfg.n_ctx
    if any(len(t) > n_ctx for t in tokens):
        raise UserError(f"a prompt is longer than the model's context ({n_ctx} tokens)")
    pad = int(model.tokenizer.pad_token_id or 0) if model.tokenizer is not None else 0
    hook_names = {f"blocks.{layer}.attn.hook_pattern": i for i, layer in enumerate(layers)}
    stop = max(layers) + 1

    rows, pids, poss, lens = [], [], [], []
    order = range(0, len(tokens), batch_size)
    if progress:
        from tqdm import tqdm
        order = tqdm(order, desc="attention features", unit="batch")
    for start in order:
        chunk = tokens[start:start + batch_size]
        width = max(len(t) for t in chunk)
        batch = torch.full((len(chunk), width), pad, dtype=torch.long)
        for i, t in enumerate(chunk):
            batch[i, :len(t)] = torch.as_tensor(t, dtype=torch.long)
        pats: list[torch.Tensor | None] = [None] * len(layers)

        def keep(pattern, hook, pats=pats):
            pats[hook_names[hook.name]] = pattern.detach().float().cpu()

        with torch.no_grad():
            model.run_with_hooks(batch, stop_at_layer=stop,
                                 fwd_hooks=[(h, keep) for h in hook_names])
        for i, t in enumerate(chunk):
            n = len(t)
            rows.append(_prompt_rows(pats, n, i, cfg))  # type: ignore[arg-type]
            pids.append(np.full(n, prompt_ids[start + i], dtype=np.int64))
            poss.append(np.arange(n, dtype=np.int64))
            lens.append(np.full(n, n, dtype=np.int64))
    if not rows:
        return TokenFeatures(np.zeros((0, len(names)), np.float32), np.zeros(0, np.int64),
                             np.zeros(0, np.int64), np.zeros(0, np.int64), names)
    return TokenFeatures(np.concatenate(rows), np.concatenate(pids), np.concatenate(poss),
                         np.concatenate(lens), names)


def items_features(model, items, cfg: AttentionFeatures | None = None, batch_size: int = 32,
                   progress: bool = False) -> TokenFeatures:
    """`attention_features` of a dataset items table (columns `prompt_id`, `tokens`)."""
    return attention_features(model, [list(t) for t in items["tokens"].to_list()], cfg,
                              prompt_ids=[int(x) for x in items["prompt_id"].to_list()],
                              batch_size=batch_size, progress=progress)
