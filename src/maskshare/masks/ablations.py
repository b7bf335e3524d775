"""The ablations: what an ablated latent becomes, `a' = m * a + (1 - m) * abl`.

Each is a class that owns its data and its values (registered by name in
`maskshare.kinds.ABLATIONS`); `MaskedModel` asks it, never checks which one it has:

- `slot_values(stats, hook, n_slots)`: abl per slot [n_slots, d_sae], or None (zero);
- `prompt_data(items, assign=None)`: what it needs per prompt from an items table (None:
  nothing); `assign(token_rows)` gives new prompts their slots by the variant's grouping;
- `check(tokens, data)`: refuse prompts it cannot serve (UserError);
- `token_values(mm, data, idx, attention_mask, slots)`: abl per token {hook: [B, P, d_sae]}
  for one batch (`slots`: its prompts' slot arrays), computed once when the batch is
  prepared (None: the slot values are used);
- `dataset_problem(spec)`: why a dataset cannot serve it (a message), or None.
- `report()`: what it did that a run reports (metrics.json `ablation_reports`), or None.

A slot with no training tokens takes the global means.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from maskshare.errors import UserError
from maskshare.kinds import ABLATIONS
from maskshare.masks.prepared import check_counterfactual_tokens
from maskshare.masks.slot_patching import CASES, alignment_counts, slot_aligned_latents
from maskshare.masks.slot_stats import SlotStats
from maskshare.model.activations import pad_batch
from maskshare.model.forward import dtype_for, hook_values


class AblationMethod:
    """Base: no per-slot values (zero), no per-prompt data."""

    kind: ClassVar[str]
    needs_stats: ClassVar[bool] = True  # reads the slot statistics

    def slot_values(self, stats: SlotStats, hook: str, n_slots: int) -> Tensor | None:
        return None

    def prompt_data(self, items, assign=None) -> object | None:
        return None

    def check(self, tokens: list[list[int]], data) -> None:
        """Raise UserError when `data` cannot serve these prompts."""

    def token_values(self, mm, data, idx: list[int], attention_mask: Tensor,
                     slots: list | None = None) -> dict[str, Tensor] | None:
        return None

    def dataset_problem(self, spec) -> str | None:
        return None

    def report(self) -> dict | None:
        """What it did that a run should report (metrics.json `ablation_reports`), or None."""
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


@dataclass
class PatchPrompts:
    """The counterfactual prompt of every prompt, and (`slots`, when the grouping gave them)
    its slots, so a pair of any length is patched slot by slot."""

    tokens: list
    slots: list | None = None


class Counterfactual(AblationMethod):
    """Activation patching: each token's latents replaced by those of the counterfactual
    prompt's clean pass. Aligned by slot (`maskshare.masks.slot_patching`) when the
    counterfactual prompts' slots are known: the counterfactual token of the same rank from
    the end in the same slot (fewer: their mean; none: the slot mean), which for a pair with
    the same slot sequence is the token at the same position; without slots, position by
    position (pairs of equal token length). `counts` adds up the alignment cases."""

    kind = "counterfactual"
    needs_stats = False  # slot means only for slots a counterfactual prompt lacks (when given)

    def __init__(self):
        self.counts: Counter = Counter()

    def prompt_data(self, items, assign=None) -> PatchPrompts | None:
        if "counterfactual_tokens" not in items.columns:
            return None
        toks = [None if t is None else list(map(int, t))
                for t in items["counterfactual_tokens"].to_list()]
        if assign is None or any(t is None for t in toks):
            return PatchPrompts(toks)
        return PatchPrompts(toks, assign(toks))

    @staticmethod
    def _patch(data) -> PatchPrompts | None:
        """`data` as PatchPrompts (a plain list: counterfactual prompts, no slots)."""
        return data if data is None or isinstance(data, PatchPrompts) else PatchPrompts(data)

    def check(self, tokens, data) -> None:
        data = self._patch(data)
        if data is None or data.slots is None:
            check_counterfactual_tokens(tokens, None if data is None else data.tokens)
        elif len(data.tokens) != len(tokens):
            raise UserError("ablation 'counterfactual' needs a counterfactual prompt for every "
                            "prompt")

    @torch.no_grad()
    def token_values(self, mm, data, idx, attention_mask, slots=None):
        """enc(x) at every SAE hook of the counterfactual prompts' clean pass [B, P, d_sae],
        aligned by slot when the slots are known, else by position."""
        data = self._patch(data)
        if data.slots is not None and slots is not None:
            cf_toks = [data.tokens[i] for i in idx]
            cf_slots = [data.slots[i] for i in idx]
            self.counts.update(alignment_counts(slots, cf_slots))
            return slot_aligned_latents(mm, cf_toks, slots, cf_slots, attention_mask.shape[1])
        toks, _, _ = pad_batch(data.tokens, idx)
        cache = hook_values(mm.model, toks, mm.hooks, attention_mask,
                            dtype_for("references"), inference=False)
        return {h: mm.saes[h].encode(cache[h].float()) for h in mm.hooks}

    def report(self) -> dict | None:
        """Tokens per alignment case (`slot_patching.CASES`) over the prepared prompts, and
        their shares; None when every pair was patched by position."""
        n = sum(self.counts.values())
        if not n:
            return None
        return {**{k: int(self.counts.get(k, 0)) for k in CASES},
                **{f"{k}_fraction": self.counts.get(k, 0) / n for k in CASES}}

    def dataset_problem(self, spec) -> str | None:
        if spec.pairs_prompts:
            return None
        return (f"ablation 'counterfactual' patches each token with the counterfactual "
                f"prompt's: dataset {spec.name!r} has no counterfactual prompts (import a "
                "clean/patch or mib file as a prompt dataset); or drop 'counterfactual' from "
                "the ablations")


def ablation_method(name: str) -> AblationMethod:
    """The ablation called `name` (UserError for an unknown one)."""
    try:
        return ABLATIONS.get(name)()
    except ValueError as e:
        raise UserError(str(e)) from None
