"""The masked forward pass over every SAE of a run at once.

At each SAE hook the activation x of a token in slot s becomes

    a  = enc(x)
    a' = m[s] * a + (1 - m[s]) * abl[s]        # abl: slot mean | global mean | zero
                                                #  | counterfactual: per token, enc(x) of the
                                                #    counterfactual prompt's clean pass there
    x' = dec(a') + err                          # err: x - dec(a) | slot mean of it | 0

with a mask `m` per (slot, SAE, latent): float in [0, 1] while training (relaxed), 0/1 when
evaluating. Conventions (docs/architecture.md): every prompt starts with one BOS, batches
are right-padded, slot 0 is BOS and padding is slot -1.

BOS passes through *untouched* at every hook, in every variant (M, circuit, empty,
complement), whatever the error term: never spliced, so never ablated nor (error `drop`)
reconstructed. Padding is untouched too (after each prompt's final token, so causal
attention keeps it out of every real token's result; the attention mask is passed too).

Efficiency by construction:
- the residual stream below the first SAE hook does not depend on the masks: `prepare`
  computes it once per batch and every later pass starts there (`start_at_layer`), with the
  first hook's clean latents and SAE error when it is a `hook_resid_post`/`_pre`;
- batches are grouped by length, so little is spent on padding; several masks can share a
  pass (`logit_diffs_many`, for evaluation);
- logits only at each prompt's own final position, and for a logit difference only the
  answer's and the counterfactual's (`final_logit_diff`). Batches: `maskshare.masks.prepared`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from maskshare.config import Ablation, ErrorTerm
from maskshare.errors import UserError
from maskshare.masks.ablations import ablation_method
from maskshare.masks.own_latents import MODES as OWN_MODES
from maskshare.masks.own_latents import apply as apply_own
from maskshare.masks.own_latents import batch_indices as own_batch_indices
from maskshare.masks.prepared import (
    PreparedBatch,
    clean_batch_logit_diff,
    scatter_rows,
    sub_batch,
)
from maskshare.masks.slot_stats import SlotStats, check_inputs
from maskshare.masks.stacked import stacked_logit_diffs
from maskshare.model.activations import (
    at_final,
    final_logit_diff,
    length_parts,
    logit_diff,
    pad_slots,
    padded_batches,
    unembed_final,
)
from maskshare.model.sae_set import affine_decoder, hook_layer, hook_position

Masks = dict[str, Float[Tensor, "n_slots d_sae"]]


def full_masks(saes: dict, n_slots: int) -> Masks:
    """Every latent kept: the SAE model M."""
    return {h: torch.ones(n_slots, s.cfg.d_sae) for h, s in saes.items()}


def empty_masks(saes: dict, n_slots: int) -> Masks:
    """Every latent ablated."""
    return {h: torch.zeros(n_slots, s.cfg.d_sae) for h, s in saes.items()}


def binarize(theta: Masks) -> Masks:
    """The evaluated circuit: kept where theta > 0."""
    return {h: (t > 0).float() for h, t in theta.items()}


def complement(masks: Masks) -> Masks:
    """The circuit ablated, everything else kept (of a binary mask)."""
    return {h: 1.0 - m for h, m in masks.items()}


@dataclass(frozen=True)
class MaskOptions:
    """How a `MaskedModel` computes its pass; fixed for the model's life (`with_options`
    gives a model with other options, sharing the model, SAEs and statistics).

    - `ablation`, `error`: the method's choices (module docstring).
    - `split_by_length`, `max_parts`, `min_saving`, `min_split_tokens`: run a batch of more
      than `min_split_tokens` padded tokens in up to `max_parts` length groups when each
      extra group saves `min_saving` of them (same results). Each group is another pass
      whose cost does not shrink with its rows: short batches run whole (bench.py).
    - `expand`: how a per-slot mask becomes per-token, "onehot" (a matmul) or "gather".
    - `fuse_clean`: error `clean` with one decode of the latents' change instead of two.
    - `reuse_prefix`: start every pass from the cached residual below the first hook (and
      the first hook's cached latents); False runs every pass from the embeddings.
    - `answer_only`: ld from the two tokens' unembedding columns (`final_logit_diff`);
      False unembeds the whole vocabulary first (equal within float rounding).
    - `own_latents`: what a pass does with the subject's own latents of batches prepared
      with them (`maskshare.masks.own_latents`): `keep` (a circuit), `ablate` (a
      complement), `off` (the reference passes).
    """

    ablation: Ablation = Ablation.SLOT_MEAN
    error: ErrorTerm = ErrorTerm.DROP
    split_by_length: bool = True
    max_parts: int = 3
    min_saving: float = 0.1
    min_split_tokens: int = 256
    expand: Literal["onehot", "gather"] = "onehot"
    fuse_clean: bool = True
    reuse_prefix: bool = True
    answer_only: bool = True
    own_latents: Literal["keep", "ablate", "off"] = "keep"

    def __post_init__(self):
        object.__setattr__(self, "ablation", Ablation(self.ablation))
        object.__setattr__(self, "error", ErrorTerm(self.error))
        if self.expand not in ("onehot", "gather"):
            raise ValueError(f"expand must be 'onehot' or 'gather', not {self.expand!r}")
        if self.own_latents not in OWN_MODES:
            raise ValueError(f"own_latents must be one of {OWN_MODES}")


def _option(name: str):
    def refuse(self, value):
        raise AttributeError(f"MaskedModel.{name} is fixed at construction: pass {name}= to "
                             f"MaskedModel(...) or use mm.with_options({name}=...)")

    return property(lambda self: getattr(self.options, name), refuse,
                    doc=f"`MaskOptions.{name}` (read-only: use `with_options`)")


class MaskedModel:
    """A model with SAEs spliced in at every hook of `saes`, masked per (slot, SAE, latent).

    `stats` holds the per-slot means (needed for `slot-mean`/`global-mean` ablation and for
    error `mean`). A slot with no training tokens falls back to the global means. Settings
    come as `options` and/or as `MaskOptions` keywords (`ablation=`, `error=`, ...), which
    override `options`; they are read-only afterwards.
    """

    ablation = _option("ablation")
    error = _option("error")
    split_by_length = _option("split_by_length")
    max_parts = _option("max_parts")
    min_saving = _option("min_saving")
    min_split_tokens = _option("min_split_tokens")
    expand = _option("expand")
    fuse_clean = _option("fuse_clean")
    own_latents = _option("own_latents")

    def __init__(self, model, saes: dict, stats: SlotStats | None, n_slots: int, *,
                 options: MaskOptions | None = None, **settings):
        self.options = replace(options or MaskOptions(), **settings)
        self.model, self.saes, self.n_slots = model, dict(saes), int(n_slots)
        self.stats = stats
        self.hooks = list(self.saes)
        self.ablation_method = ablation_method(self.ablation)
        needs_stats = self.ablation_method.needs_stats or self.error == ErrorTerm.MEAN
        if needs_stats:
            if stats is None:
                raise UserError(f"ablation {self.ablation} / error {self.error} need slot "
                                "statistics (compute_slot_stats)")
            missing = [h for h in self.hooks if h not in stats.hooks]
            if missing:
                raise UserError(f"slot statistics lack hook(s) {missing}")
            if stats.n_slots != self.n_slots:
                raise UserError(f"slot statistics have {stats.n_slots} slots, masks have "
                                f"{self.n_slots}: recompute them for this grouping")
        self.abl: dict[str, Tensor | None] = {}
        self.err_mean: dict[str, Tensor | None] = {}
        for h in self.hooks:
            self.abl[h] = None
            self.err_mean[h] = None
            if stats is None:
                continue
            st = stats.hooks[h]
            empty = (stats.counts == 0)[:, None]
            self.abl[h] = self.ablation_method.slot_values(stats, h, self.n_slots)
            if self.error == ErrorTerm.MEAN:
                self.err_mean[h] = torch.where(empty, st.global_error_mean[None], st.error_mean)
        # where the cached pass starts
        layers = [hook_layer(h) for h in self.hooks]
        first = self.hooks[0]
        l0, kind = hook_position(first)
        if not self.options.reuse_prefix:
            self.start_layer, self.first_outside = 0, False
        elif kind == "hook_resid_post" and all(ly > l0 for ly in layers[1:]):
            self.start_layer, self.first_outside = l0 + 1, True
        elif kind == "hook_resid_pre":
            self.start_layer, self.first_outside = l0, True
        else:
            self.start_layer, self.first_outside = min(layers), False
        self.n_layers = model.cfg.n_layers
        self.linear_decoder = {h: affine_decoder(s) for h, s in self.saes.items()}

    def with_options(self, **changes) -> MaskedModel:
        """The same model, SAEs and statistics under other `MaskOptions` (batches prepared
        by this model serve the new one unless `reuse_prefix` changes)."""
        return MaskedModel(self.model, self.saes, self.stats, self.n_slots,
                           options=replace(self.options, **changes))

    # ---- preparation (once per prompt set) ----

    @torch.no_grad()
    def prepare(self, tokens: list[list[int]], slots: list[np.ndarray], answer_ids: list[int],
                counterfactual_ids: list[int], batch_size: int = 32,
                ablation_data: list | None = None, prefix: dict | None = None,
                own: tuple[list[np.ndarray], int, str] | None = None) -> list[PreparedBatch]:
        """Group prompts by length into batches and cache what the masks cannot change.
        `ablation_data`: what the ablation needs per prompt, as its `prompt_data(items)`
        gives it (`counterfactual`: each prompt's counterfactual prompt and, for pairs of
        any length, its slots). `prefix`: a dict shared by models of the same model and SAEs
        (other groupings and ablations) to compute each batch's clean prefix once. `own`:
        (marked tokens per prompt, k, by): the subject's own latents (`own_latents`; `by`
        activation or deviation, `OwnLatents.by`; a pair means activation)."""
        check_inputs(tokens, slots, self.n_slots)
        if not (len(answer_ids) == len(counterfactual_ids) == len(tokens)):
            raise UserError("need one answer and one counterfactual id per prompt")
        self.ablation_method.check(tokens, ablation_data)
        out = []
        for pb in padded_batches(tokens, batch_size, order="shortest"):
            idx, toks, att = pb.idx, pb.tokens, pb.attention_mask
            resid, a, err = self._prefix(toks, att, {} if prefix is None else prefix)
            b = PreparedBatch(idx=list(idx), tokens=toks, attention_mask=att,
                              slots=pad_slots(slots, idx, toks.shape[1]), lengths=pb.lengths,
                              answer=torch.as_tensor([answer_ids[i] for i in idx]),
                              counterfactual=torch.as_tensor([counterfactual_ids[i] for i in idx]),
                              resid=resid, first_latents=a, first_error=err)
            b.ablation_tokens = self.ablation_method.token_values(self, ablation_data, idx, att,
                                                                  [slots[i] for i in idx])
            if own is not None and own[1] > 0:
                b.own = own_batch_indices(self, b, own)
            out.append(b)
        return out

    def _prefix(self, toks: Tensor, att: Tensor, cache: dict) -> tuple:
        """(clean residual into block `start_layer`, and where the first hook is outside the
        pass its clean latents and SAE error, else None): they depend on the tokens only."""
        key = (id(self.model), tuple(id(s) for s in self.saes.values()), self.start_layer,
               self.first_outside, tuple(toks.shape), toks.numpy().tobytes(),
               att.numpy().tobytes())
        if key not in cache:
            resid = self.model(toks, attention_mask=att, stop_at_layer=self.start_layer).detach()
            a = err = None
            if self.first_outside:
                sae = self.saes[self.hooks[0]]
                a = sae.encode(resid)
                err = resid - sae.decode(a)
            cache[key] = (resid, a, err)
        return cache[key]

    # ---- the masked pass ----

    def splice(self, hook: str, x: Tensor, batch: PreparedBatch, mask: Tensor,
               a: Tensor | None = None, err: Tensor | None = None) -> Tensor:
        """x' for activation x [B, P, d_in] at `hook` under `mask` [n_slots, d_sae]."""
        sae = self.saes[hook]
        if a is None:
            a = sae.encode(x)
        onehot = self._onehot(batch) if self.expand == "onehot" else None
        m = apply_own(self._per_token(mask, batch, onehot),
                      None if batch.own is None else batch.own[hook], self.own_latents)
        abl_t = self.ablation_at(hook, batch, onehot)
        if self.error == ErrorTerm.CLEAN and self.fuse_clean and self.linear_decoder[hook]:
            # dec(a') + x - dec(a) = x + (dec(a' - a) - b_dec) for an affine decoder, with
            # a' - a = (1 - m) * (abl - a): one decode instead of two, and x exactly where
            # the mask is 1
            d = (1 - m) * (-a if abl_t is None else abl_t - a)
            out = x + (sae.decode(d) - sae.b_dec)
            return torch.where(batch.untouched[..., None], x, out)
        a2 = m * a if abl_t is None else abl_t + m * (a - abl_t)
        out = sae.decode(a2)
        if self.error == ErrorTerm.CLEAN:
            out = out + (err if err is not None else x - sae.decode(a))
        elif self.error == ErrorTerm.MEAN:
            out = out + self._per_token(self.err_mean[hook], batch, onehot)
        return torch.where(batch.untouched[..., None], x, out)

    def ablation_at(self, hook: str, batch, onehot: Tensor | None = None) -> Tensor | None:
        """[B, P, d_sae] what the ablation sets each token's latents to at `hook` (the
        batch's own values per token where its ablation has them; None: zero)."""
        if getattr(batch, "ablation_tokens", None) is not None:
            return batch.ablation_tokens[hook]
        return None if self.abl[hook] is None else self._per_token(self.abl[hook], batch, onehot)

    def _onehot(self, batch: PreparedBatch) -> Tensor:
        """[B, P, n_slots] one-hot of each position's slot (padding -> slot 0; untouched)."""
        return torch.nn.functional.one_hot(batch.slots.clamp(min=0), self.n_slots).float()

    def _per_token(self, per_slot: Tensor, batch: PreparedBatch,
                   onehot: Tensor | None) -> Tensor:
        """[n_slots, d] -> [B, P, d]: each position's slot row. The one-hot matmul's backward
        is a dense matmul; the gather's is a scatter-add, slow on CPU."""
        if onehot is not None:
            return onehot.to(per_slot.dtype) @ per_slot
        return per_slot[batch.slots.clamp(min=0)]

    def final_residual(self, batch: PreparedBatch, masks: Masks) -> Float[Tensor, "B d_model"]:
        """Residual stream after the last block at each prompt's own final token.

        With `split_by_length` the batch's rows (sorted by length by `prepare`) run in up to
        `max_parts` contiguous groups, each padded only to its own longest prompt, when that
        saves more than `min_saving` of the padded tokens; results are the same."""
        self._check_masks(masks)
        parts = length_parts(batch.lengths.tolist(), self.max_parts, self.min_saving,
                             self.min_split_tokens) \
            if self.split_by_length else [(0, len(batch))]
        if len(parts) == 1:
            return self._final_residual(batch, masks)
        return torch.cat([self._final_residual(sub_batch(batch, a, b), masks) for a, b in parts])

    def _final_residual(self, batch: PreparedBatch, masks: Masks) -> Tensor:
        resid = batch.resid
        hooks = self.hooks
        if self.first_outside:
            h0 = hooks[0]
            resid = self.splice(h0, resid, batch, masks[h0], batch.first_latents,
                                batch.first_error)
            hooks = hooks[1:]

        def make(h):
            def fn(act, hook):
                return self.splice(h, act, batch, masks[h])
            return fn

        fwd = [(h, make(h)) for h in hooks]
        with self.model.hooks(fwd_hooks=fwd):
            if self.start_layer < self.n_layers:
                resid = self.model(resid, start_at_layer=self.start_layer,
                                   stop_at_layer=self.n_layers,
                                   attention_mask=batch.attention_mask)
        return at_final(resid, batch.lengths)

    def final_logits(self, batch: PreparedBatch, masks: Masks) -> Float[Tensor, "B d_vocab"]:
        """Logits at each prompt's final position only."""
        return unembed_final(self.model, self.final_residual(batch, masks))

    def logit_diff(self, batch: PreparedBatch, masks: Masks) -> Float[Tensor, " B"]:
        """ld at each prompt's final position (`answer_only`: two tokens' logits only)."""
        if not self.options.answer_only:
            return logit_diff(self.final_logits(batch, masks), batch.answer, batch.counterfactual)
        return final_logit_diff(self.model, self.final_residual(batch, masks), batch.answer,
                                batch.counterfactual)

    @torch.no_grad()
    def logit_diffs(self, batches: list[PreparedBatch], masks: Masks) -> np.ndarray:
        """Per-prompt ld under `masks`, in the caller's prompt order."""
        return scatter_rows(batches, [self.logit_diff(b, masks) for b in batches])

    def logit_diffs_many(self, batches: list[PreparedBatch], masks: list[Masks]) -> list:
        """`logit_diffs` under each of `masks`, several masks per pass (`maskshare.masks.stacked`)."""
        return stacked_logit_diffs(self, batches, masks)

    @torch.no_grad()
    def clean_logit_diffs(self, batches: list[PreparedBatch]) -> np.ndarray:
        """Per-prompt ld of the model alone (no SAEs): M_clean."""
        return scatter_rows(batches, [clean_batch_logit_diff(self.model, b) for b in batches])

    @torch.no_grad()
    def locate_nonfinite(self, batch: PreparedBatch, masks: Masks) -> str | None:
        """Where a masked pass first turns non-finite: 'hook H, slot(s) [..]', else None."""
        for h, m in masks.items():
            bad = ~torch.isfinite(m)
            if bad.any():
                return f"mask of hook {h}, slot(s) {sorted(set(bad.nonzero()[:, 0].tolist()))}"
        found: list[str] = []
        # gather, not one-hot: a NaN in one slot's row stays in that slot's positions
        gather = self if self.expand == "gather" else self.with_options(expand="gather")

        def make(h):
            def fn(act, hook):
                out = gather.splice(h, act, batch, masks[h])
                if not found:
                    bad = ~torch.isfinite(out).all(-1)
                    if bad.any():
                        s = sorted(set(batch.slots[bad].tolist()))
                        found.append(f"hook {h}, slot(s) {s}")
                return out
            return fn

        fwd = [(h, make(h)) for h in self.hooks]
        with self.model.hooks(fwd_hooks=fwd):
            self.model(batch.tokens, attention_mask=batch.attention_mask,
                       stop_at_layer=self.n_layers)
        return found[0] if found else None

    def _check_masks(self, masks: Masks) -> None:
        for h in self.hooks:
            if h not in masks:
                raise UserError(f"no mask for hook {h}")
            want = (self.n_slots, self.saes[h].cfg.d_sae)
            if tuple(masks[h].shape) != want:
                raise UserError(f"mask for {h} has shape {tuple(masks[h].shape)}, expected {want}")
