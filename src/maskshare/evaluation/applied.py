"""A run's circuit on any forward pass of the model: `with run.applied(model): model(...)`.

Inside the `with` block every forward pass of `model` (a HookedTransformer or
HookedSAETransformer without SAEs attached, the run's model) runs with the circuit spliced
in at each of the run's SAE hooks, as `MaskedModel.splice` computes it for training and
evaluation:

    a' = m[s] * enc(x) + (1 - m[s]) * abl[s];   x' = dec(a') + err

Each call's tokens get their slots from the run's fitted grouping first (one clean pass with
the hooks off, as `maskshare eval` assigns them). Every row must start with BOS; pass a
string or a list of strings and they are tokenised as the run's prompts are (BOS, then the
text; a list is right-padded with an attention mask), or token rows (`run.tokens(text)`),
with `attention_mask=` when they are padded. BOS and padding pass untouched. Ablations:
`slot-mean`, `global-mean` or `zero` (the run's own by default); `counterfactual` needs
paired prompts and is refused. Calls that hold only part of a prompt (`generate` with a KV
cache) cannot be given slots and are refused.

A run that keeps the subject's own latents (`evaluate.own_latents`) needs the entity's
mention to splice in the circuit it evaluated: `entity=` (one string for every row, or one
per row of each call) marks each row's tokens of that entity, as `run.evaluate` marks a
prompt's `entity`, and a clean pass of the call finds their own latents. Without `entity`
the circuit spliced in is the learned part alone; so it is for a row where the entity marks
no token (a typo, another spelling), and a warning names that row and entity.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from itertools import accumulate

import torch
from torch import Tensor

from maskshare.config import Ablation
from maskshare.datasets.prompt_build import entity_spans
from maskshare.datasets.rows import span_roles
from maskshare.errors import UserError
from maskshare.masks.own_latents import marked_tokens, ranked_from, top_indices
from maskshare.model.activations import pad_batch, pad_slots
from maskshare.model.models import tokenize_prompt


@dataclass
class SlotBatch:
    """What `MaskedModel.splice` reads of a batch: slots [B, P] (-1 on padding)."""

    slots: Tensor
    ablation_tokens: dict | None = None
    own: dict | None = None  # the subject's own latents at the entity's tokens ({hook: idx})

    @property
    def untouched(self) -> Tensor:
        pos0 = torch.zeros_like(self.slots, dtype=torch.bool)
        pos0[:, 0] = True
        return pos0 | (self.slots < 0)


class AppliedCircuit:
    """The context manager `Run.applied` returns; `last_slots` holds the slots [B, P] of the
    latest call (-1 on padding)."""

    def __init__(self, model, masked, masks: dict, grouping, grouping_kind: str, bos: int,
                 own: tuple[int, list[str], str] | None = None,
                 entity: str | list[str] | None = None):
        self.model, self.mm, self.masks = model, masked, masks
        self.grouping, self.kind, self.bos = grouping, grouping_kind, bos
        self.own, self.entity = own, entity  # own: (k, roles, by) of evaluate.own_latents
        self.last_slots: Tensor | None = None
        self.last_marked: Tensor | None = None  # [B, P] True at the entity's kept tokens
        self._handles: list = []
        self._busy = False
        self._batch: SlotBatch | None = None

    def __enter__(self) -> AppliedCircuit:
        missing = [h for h in self.mm.hooks if h not in self.model.hook_dict]
        if missing:
            raise UserError(f"the model has no hook point(s) {missing}: apply the circuit to "
                            "the run's own model")
        self._handles.append(self.model.register_forward_pre_hook(self._pre, with_kwargs=True))
        for h in self.mm.hooks:
            self._handles.append(self.model.hook_dict[h].register_forward_hook(self._splicer(h)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._batch = None

    # ---- per call: tokens -> slots ----
    def _pre(self, module, args, kwargs):
        if self._busy:
            return None
        inp = args[0] if args else kwargs.get("input")
        changed = False
        if isinstance(inp, str) or (isinstance(inp, (list, tuple)) and inp
                                    and all(isinstance(x, str) for x in inp)):
            toks, att = self._tokenise([inp] if isinstance(inp, str) else list(inp))
            args = (toks, *args[1:]) if args else args
            if not args:
                kwargs["input"] = toks
            if att is not None:
                kwargs["attention_mask"] = att
            changed = True
        elif not (isinstance(inp, Tensor) and not inp.is_floating_point()):
            raise UserError("inside run.applied(...), call the model on text or on token rows "
                            "that start with BOS (run.tokens(text)), not on residuals")
        else:
            toks, att = inp, kwargs.get("attention_mask")
        self._batch = SlotBatch(self._slots(toks, att))
        self.last_slots = self._batch.slots
        if self.entity is not None and self.own is not None:
            self._batch.own = self._own(toks if toks.ndim > 1 else toks[None], att)
        return (args, kwargs) if changed else None

    def _own(self, toks: Tensor, att: Tensor | None) -> dict:
        """{hook: [B, P, k]} the own latents at each row's tokens of its entity (a clean pass
        of the call, hooks off)."""
        entities = [self.entity] * len(toks) if isinstance(self.entity, str) else self.entity
        if len(entities) != len(toks):
            raise UserError(f"entity has {len(entities)} entries for a call of {len(toks)} "
                            "row(s): give one string, or one per row")
        slots = self._batch.slots
        rows = [[int(t) for t in toks[b, :int((slots[b] >= 0).sum())]] for b in range(len(toks))]
        roles = [entity_roles(self.model.tokenizer, r, e) for r, e in zip(rows, entities,
                                                                         strict=True)]
        marks = marked_tokens(roles, [s[s >= 0].numpy() for s in slots], self.own[1])
        for b, (m, e) in enumerate(zip(marks, entities, strict=True)):
            if not m.any():
                text = self.model.tokenizer.decode(rows[b][1:])
                warnings.warn(f"entity {e!r} marks no token of row {b} ({text!r}): its "
                              "circuit there is the learned part only", stacklevel=4)
        self.last_marked = torch.as_tensor(pad_slots([m.astype("int64") for m in marks],
                                                     list(range(len(marks))),
                                                     toks.shape[1])) > 0
        self._busy = True
        try:
            return top_indices(self.model, self.mm.saes, toks, att, self.last_marked,
                               self.own[0], ranked_from(self.mm, self._batch, self.own))
        finally:
            self._busy = False

    def _tokenise(self, texts: list[str]) -> tuple[Tensor, Tensor | None]:
        rows = [tokenize_prompt(self.model, t) for t in texts]
        toks, att, _ = pad_batch(rows, list(range(len(rows))))
        return toks, (att if len({len(r) for r in rows}) > 1 else None)

    def _slots(self, toks: Tensor, att: Tensor | None) -> Tensor:
        if toks.ndim == 1:
            toks = toks[None]
        lengths = att.sum(1).tolist() if att is not None else [toks.shape[1]] * toks.shape[0]
        rows = [toks[b, :int(n)].tolist() for b, n in enumerate(lengths)]
        if any(not r or r[0] != self.bos for r in rows):
            raise UserError("every row must start with BOS (the run's prompts do): pass text, "
                            "or tokens from run.tokens(text); a KV-cached call (generate) "
                            "cannot be given slots")
        self._busy = True  # the grouping may run the model: no slots, no splicing then
        try:
            slots = self.grouping.assign_tokens(self.model, rows)
        finally:
            self._busy = False
        return pad_slots(slots, list(range(len(rows))), toks.shape[1])

    def _splicer(self, hook: str):
        def fn(module, inputs, output):
            if self._busy or self._batch is None:
                return None
            return self.mm.splice(hook, output, self._batch, self.masks[hook])
        return fn


def entity_roles(tokenizer, row: list[int], entity: str) -> list[str]:
    """One role per token of `row` (BOS first), by `token_roles`' rule
    (`datasets.rows.span_roles`) on the row's decoded text: `subject` on a mention of
    `entity` (any case), the last token `final`, as a prompt's `entity` is marked for
    `maskshare eval`."""
    strs = [tokenizer.decode([t]) for t in row[1:]]
    if not strs:
        return ["bos"]
    ends = list(accumulate(len(p) for p in strs))
    text = "".join(strs)
    return ["bos"] + span_roles(text, list(zip([0, *ends[:-1]], ends, strict=True)),
                                entity_spans(text, entity, ignore_case=True))


def check_ablation(ablation: str | Ablation) -> Ablation:
    try:
        a = Ablation(ablation)
    except ValueError:
        raise UserError(f"ablation {ablation!r}: use slot-mean, global-mean or zero") from None
    if a == Ablation.COUNTERFACTUAL:
        raise UserError("the counterfactual ablation patches from paired prompts; "
                        "run.applied(...) takes slot-mean, global-mean or zero")
    return a


__all__ = ["AppliedCircuit", "SlotBatch", "check_ablation", "entity_roles"]
