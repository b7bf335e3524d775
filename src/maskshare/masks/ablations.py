"""The ablations: what an ablated latent becomes, `a' = m * a + (1 - m) * abl`.

Each is a class that owns its data and its values (registered by name in
`maskshare.kinds.ABLATIONS`); `MaskedModel` asks it, never checks which one it has:

- `slot_values(stats, hook, n_slots)`: abl per slot [n_slots, d_sae], or None (zero);
- `prompt_data(items)`: what it needs per prompt from an items table (None: nothing);
- `check(tokens, data)`: refuse prompts it cannot serve (UserError);
- `token_values(mm, data, idx, attention_mask)`: abl per token {hook: [B, P, d_sae]} for one
  batch, computed once when the batch is prepared (None: the slot values are used);
- `dataset_problem(spec)`: why a dataset cannot serve it (a message), or None.

A slot with no training tokens takes the global means.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from maskshare.errors import UserError
from maskshare.kinds import ABLATIONS
from maskshare.masks.prepared import check_counterfactual_tokens
from maskshare.masks.slot_stats import SlotStats
from maskshare.model.activations import pad_batch
from maskshare.model.sae_set import hook_layer


class AblationMethod:
    """Base: no per-slot values (zero), no per-prompt data."""

    kind: ClassVar[str]
    needs_stats: ClassVar[bool] = True  # reads the slot statistics

    def slot_values(self, stats: SlotStats, hook: str, n_slots: int) -> Tensor | None:
        return None

    def prompt_data(self, items) -> list | None:
        return None

    def check(self, tokens: list[list[int]], data) -> None:
        """Raise UserError when `data` cannot serve these prompts."""

    def token_values(self, mm, data, idx: list[int],
                     attention_mask: Tensor) -> dict[str, Tensor] | None:
        return None

    def dataset_problem(self, spec) -> str | None:
        return None


class SlotMean(AblationMethod):
    """abl[s] = mean of a over the training tokens of slot s (the default)."""

    kind = "slot-mean"

    def slot_values(self, stats, hook, n_slots):
        st = stats.hooks[hook]
        return torch.where((stats.counts == 0)[:, None], st.global_latent_mean[None],
                           st.latent_mean)


class GlobalMean(AblationMethod):
    """abl[s] = mean of a over every training token."""

    kind = "global-mean"

    def slot_values(self, stats, hook, n_slots):
        return stats.hooks[hook].global_latent_mean[None].expand(n_slots, -1).clone()


class Zero(AblationMethod):
    """abl = 0."""

    kind = "zero"
    needs_stats = False


class Counterfactual(AblationMethod):
    """Activation patching: each token's latents replaced by those of the counterfactual
    prompt's clean pass at the same position (prompt pairs of equal token length)."""

    kind = "counterfactual"
    needs_stats = False

    def prompt_data(self, items) -> list | None:
        if "counterfactual_tokens" not in items.columns:
            return None
        return [None if t is None else list(map(int, t))
                for t in items["counterfactual_tokens"].to_list()]

    def check(self, tokens, data) -> None:
        check_counterfactual_tokens(tokens, data)

    @torch.no_grad()
    def token_values(self, mm, data, idx, attention_mask):
        """enc(x) at every SAE hook of the counterfactual prompts' clean pass [B, P, d_sae]."""
        toks, _, _ = pad_batch(data, idx)
        last = max(hook_layer(h) for h in mm.hooks)
        _, cache = mm.model.run_with_cache(toks, attention_mask=attention_mask,
                                           names_filter=mm.hooks, stop_at_layer=last + 1)
        return {h: mm.saes[h].encode(cache[h]) for h in mm.hooks}

    def dataset_problem(self, spec) -> str | None:
        if getattr(getattr(spec, "filter", None), "equal_length_pairs", False):
            return None
        return (f"ablation 'counterfactual' patches each token with the counterfactual prompt's "
                f"at the same position: dataset {spec.name!r} needs counterfactual prompts and "
                "`filter: {equal_length_pairs: true}` (e.g. `maskshare datasets import FILE "
                "--equal-length-pairs` of a clean/patch file); or drop 'counterfactual' from the "
                "ablations")


def ablation_method(name: str) -> AblationMethod:
    """The ablation called `name` (UserError for an unknown one)."""
    try:
        return ABLATIONS.get(name)()
    except ValueError as e:
        raise UserError(str(e)) from None
