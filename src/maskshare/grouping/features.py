"""Per-token attention features: how the model treats each token, as a vector.

Definition (for token t of a prompt of length n, positions 0..n-1, BOS at 0, with
A[l, h] the attention pattern of layer l, head h, rows = queries, columns = keys):

- `from_final`: A[l, h][n-1, t] for every selected (layer, head): the attention the final
  position pays to t.
- `to_bos`:  A[l, h][t, 0]   (attention t pays to BOS)
- `to_self`: A[l, h][t, t]   (attention t pays to itself)
- `to_prev`: A[l, h][t, t-1] (attention t pays to its predecessor; 0 for t = 0)
- `position_from_end` (optional): n-1-t, as log1p(n-1-t) when `log_scale`.

With `normalize: uniform` every attention value is multiplied by the number of keys its
query attends to (n for `from_final`, t+1 for the token's own row): attention relative to
uniform, which does not shrink as prompts grow (raw attention from the final position
does: spread evenly over n tokens it is 1/n).

Defaults (`AttentionFeatures`): `from_final` only, in the last third of the layers
(`layer_start_fraction` 0.67: layers 20-29 of SmolLM2's 30), log scale; chosen on
elements-symbol (docs/groups-results.md). With `log_scale` every attention value becomes
log(a + 1e-4). `dtype: bfloat16` runs the forward pass under autocast (faster on CPUs with
bfloat16 instructions, slightly different values). Patterns come from
`blocks.L.attn.hook_pattern`, which is per query head also under grouped-query attention.
Columns are ordered feature group by feature group (as listed), layer-major then head
within each group; `TokenFeatures.names` names them.

Batches are right-padded and run under the causal mask with no attention mask, so a real
token never sees padding: a prompt's features are the same alone or in a batch, and
padding never becomes a row. The model runs only up to the deepest selected layer's
attention pattern (the forward pass is stopped there), and only the needed slices of each
pattern are kept. Prompts are batched by length to keep padding small.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from maskshare.config import AttentionFeatures
from maskshare.errors import UserError
from maskshare.model.activations import hook_name
from maskshare.model.forward import batches as forward_batches
from maskshare.model.forward import hook_values

LOG_EPS = 1e-4
DEFAULT_MAX_BATCH_TOKENS = 2048  # padded tokens a batch


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
    """The layers whose heads give features: `cfg.layers`, or when that is None the layers
    from floor(layer_start_fraction x n_layers) to the last (every layer for 0)."""
    n = model.cfg.n_layers
    if cfg.layers is None:
        start = min(n - 1, int(np.floor(cfg.layer_start_fraction * n + 1e-9)))
        layers = list(range(start, n))
    else:
        layers = sorted(set(cfg.layers))
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


def _attention_groups(cfg: AttentionFeatures) -> list[str]:
    return [g for g, on in (("from_final", cfg.from_final), ("to_bos", cfg.to_bos),
                            ("to_self", cfg.to_self), ("to_prev", cfg.to_prev)) if on]


def _check_prompts(model, tokens: list[list[int]], prompt_ids: list[int] | None) -> list[int]:
    """The prompt ids (0.. by default); UserError for an empty or over-long prompt."""
    if prompt_ids is None:
        prompt_ids = list(range(len(tokens)))
    if len(prompt_ids) != len(tokens):
        raise ValueError("prompt_ids and tokens differ in length")
    if any(len(t) == 0 for t in tokens):
        raise UserError("a prompt has no tokens")
    n_ctx = model.cfg.n_ctx
    if any(len(t) > n_ctx for t in tokens):
        raise UserError(f"a prompt is longer than the model's context ({n_ctx} tokens)")
    return prompt_ids


def _pattern_values(model, batch: Tensor, lens: Tensor, layers: list[int], groups: list[str],
                    dtype: str) -> Tensor:
    """[B, T, group, layer, head]: what each selected layer's pattern hook keeps of one
    right-padded batch (no attention mask: causal attention keeps padding out); the pass
    stops at the deepest selected layer (`maskshare.model.forward.hook_values`)."""
    bi = torch.arange(batch.shape[0])
    if not groups:  # position features only: no pass needed
        return torch.zeros(batch.shape[0], batch.shape[1], 0, len(layers), model.cfg.n_heads)

    def keep(pattern: Tensor) -> Tensor:  # [B, T, group, head]
        p = pattern.detach().float().cpu()  # [B, H, q, k]
        vals = []
        for name in groups:
            if name == "from_final":
                v = p[bi, :, lens - 1, :]                      # [B, H, k]
            elif name == "to_bos":
                v = p[..., 0]                                  # [B, H, q]
            elif name == "to_self":
                v = p.diagonal(0, -2, -1)                      # [B, H, q]
            else:  # to_prev: 0 for t = 0
                v = torch.nn.functional.pad(p.diagonal(-1, -2, -1), (1, 0))
            vals.append(v.transpose(1, 2))
        return torch.stack(vals, dim=2)

    got = hook_values(model, batch, {hook_name("pattern", layer): keep for layer in layers},
                      dtype=dtype)
    return torch.stack([got[hook_name("pattern", layer)] for layer in layers], dim=3)


def _keys_attended(lens: Tensor, T: int, real: Tensor, groups: list[str],
                   per_group: int) -> Tensor:
    """[rows, n_att]: how many keys the query of each kept value attends to under the causal
    mask: the prompt's length n for `from_final` (the final position sees every token), t + 1
    for the token's own row (`to_bos`, `to_self`, `to_prev`). Uniform attention times this
    is 1 at any length (`normalize: uniform`)."""
    n = lens[:, None].expand(-1, T)[real].float()                    # [rows]
    t1 = (torch.arange(T)[None, :].expand(len(lens), -1)[real] + 1).float()
    cols = [(n if g == "from_final" else t1)[:, None].expand(-1, per_group) for g in groups]
    return torch.cat(cols, dim=1)


def attention_features(model, tokens: list[list[int]], cfg: AttentionFeatures | None = None,
                       prompt_ids: list[int] | None = None, batch_size: int = 32,
                       progress: bool = False,
                       max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS) -> TokenFeatures:
    """Attention features of every token of every prompt (see the module docstring).

    `tokens`: one id list per prompt, BOS first. Returns a `TokenFeatures` whose rows are
    ordered prompt by prompt (in the given order), position by position.

    Cost: one forward pass up to the deepest selected layer's attention pattern, nothing
    cached but the feature values: each layer's hook keeps only the rows/columns it needs
    (the final query row, the BOS column, the diagonal and the sub-diagonal). Prompts are
    batched by length (at most `batch_size` prompts and `max_batch_tokens` padded tokens a
    batch), so padding costs little.
    """
    cfg = cfg or AttentionFeatures()
    layers = selected_layers(model, cfg)
    names = feature_names(model, cfg)
    prompt_ids = _check_prompts(model, tokens, prompt_ids)
    groups = _attention_groups(cfg)
    n_att = len(groups) * len(layers) * model.cfg.n_heads

    lengths = np.asarray([len(t) for t in tokens], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    n_rows = int(starts[-1])
    matrix = np.empty((n_rows, len(names)), dtype=np.float32)
    # longest prompts first, at most `max_batch_tokens` padded tokens a batch
    batches = forward_batches(model, tokens, batch_size=batch_size, order="longest",
                              max_tokens=max_batch_tokens, dtype=cfg.dtype)
    if progress:
        from tqdm import tqdm
        batches = tqdm(batches, desc="attention features", unit="batch")
    for b in batches:
        chunk, batch, lens = b.idx, b.tokens, b.lengths
        B, T = batch.shape
        out = _pattern_values(model, batch, lens, layers, groups, cfg.dtype)
        real = torch.arange(T)[None, :] < lens[:, None]          # [B, T]
        vals = out.reshape(B, T, n_att)[real]                    # prompt by prompt, in order
        if cfg.normalize == "uniform":
            vals = vals * _keys_attended(lens, T, real, groups, n_att // len(groups))
        if cfg.log_scale:
            vals = torch.log(vals + LOG_EPS)
        from_end = (lens[:, None] - 1 - torch.arange(T)[None, :])[real].float()
        dest = np.concatenate([np.arange(starts[j], starts[j + 1]) for j in chunk])
        matrix[dest, :n_att] = vals.numpy()
        if cfg.position_from_end:
            matrix[dest, n_att] = (torch.log1p(from_end) if cfg.log_scale else from_end).numpy()
    pid = np.repeat(np.asarray(prompt_ids, dtype=np.int64), lengths)
    position = (np.arange(n_rows, dtype=np.int64) - np.repeat(starts[:-1], lengths)
                if n_rows else np.zeros(0, np.int64))
    return TokenFeatures(matrix, pid, position, np.repeat(lengths, lengths), names)


def items_features(model, items, cfg: AttentionFeatures | None = None, batch_size: int = 32,
                   progress: bool = False,
                   max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS) -> TokenFeatures:
    """`attention_features` of a dataset items table (columns `prompt_id`, `tokens`)."""
    return attention_features(model, [list(t) for t in items["tokens"].to_list()], cfg,
                              prompt_ids=[int(x) for x in items["prompt_id"].to_list()],
                              batch_size=batch_size, progress=progress,
                              max_batch_tokens=max_batch_tokens)
