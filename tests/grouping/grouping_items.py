"""Items tables for the grouping tests: a few element-symbol phrasings on the tiny model.

Tokens and roles come from character spans, as the datasets module makes them.
"""

from __future__ import annotations

import polars as pl

from maskshare.config import AttentionFeatures, GroupingConfig
from maskshare.model.models import tokenize_prompt

ELEMENTS = ["gold", "silver", "iron", "copper", "zinc", "tin", "lead", "neon", "argon",
            "helium", "oxygen", "carbon", "sodium", "calcium", "nickel", "cobalt"]
# (template, relation words): one template per phrasing, {X} is the subject
PHRASINGS = [
    ("The chemical symbol for {X} is", "chemical symbol"),
    ("Which symbol stands for {X} on the periodic table? Answer:", "symbol stands for"),
    ("Element: {X}\nSymbol:", "Symbol"),
    ("Q: What is the symbol of {X}? A:", "symbol of"),
]


def _item(model, pid, template, relation, entity, phrasing_id, split):
    """One items row: tokens and roles from character spans, as the datasets module does."""
    tok = model.tokenizer
    text = template.replace("{X}", entity)
    a = template.index("{X}")
    subj = (a, a + len(entity))
    r0 = text.index(relation) if relation in text else -1
    rel = (r0, r0 + len(relation))
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, roles = [tokenize_prompt(model, "")[0]], ["bos"]
    for i, (s, e) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        ids.append(i)
        mid = (s + e) / 2
        roles.append("subject" if subj[0] <= mid < subj[1] else
                     "relation" if rel[0] <= mid < rel[1] else "other")
    roles[-1] = "final"
    return {"prompt_id": pid, "prompt": text, "tokens": ids,
            "token_strs": tok.convert_ids_to_tokens(ids), "roles": roles, "entity": entity,
            "phrasing_id": phrasing_id, "phrasing": template, "split": split,
            "variant": "templated" if len(PHRASINGS) == 1 else "freeform"}


def make_items(model, phrasings=PHRASINGS, elements=ELEMENTS, held_out=None, start_id=0):
    rows = []
    for k, (tpl, rel) in enumerate(phrasings):
        for e in elements:
            split = "test_phrasing" if held_out is not None and k == held_out else "train"
            rows.append(_item(model, start_id + len(rows), tpl, rel, e, k, split))
    return pl.DataFrame(rows)



def templated_items(model) -> pl.DataFrame:
    """One template, subjects restricted to one token length so positions align."""
    tpl, rel = PHRASINGS[0]
    rows = [_item(model, i, tpl, rel, e, 0, "train") for i, e in enumerate(ELEMENTS)]
    df = pl.DataFrame(rows).with_columns(pl.lit("templated").alias("variant"))
    n = df["tokens"].list.len()
    return df.filter(n == n.mode()[0])


def cfg(**kw):
    return GroupingConfig(**kw)


def every_feature(**kw) -> AttentionFeatures:
    """Every feature group in every layer (the defaults use fewer)."""
    kw.setdefault("dtype", "float32")
    return AttentionFeatures(to_bos=True, to_self=True, to_prev=True, layer_start_fraction=0,
                             **kw)

