"""Token roles and splits, shared by template datasets (build.py) and prompt datasets
(prompt_build.py), so that neither imports the other."""

from __future__ import annotations

import random

from maskshare.errors import UserError


def _offsets(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    offs, prev = [], 0
    for i in range(len(ids)):  # slow tokenizers: offsets from decoded prefixes
        n = len(tokenizer.decode(ids[: i + 1]))
        offs.append((prev, n))
        prev = n
    return ids, offs


def token_roles(tokenizer, prompt: str, spans: list[tuple[int, int, str]],
                bos: int) -> tuple[list[int], list[str], list[str]]:
    """Token ids (BOS first), their strings and one role per token.

    A token takes the role of the labelled span covering its first non-space character, so a
    token that merges a space into a word (" gold") counts as the word. BOS is `bos`, the last
    token `final`, everything else `other`.
    """
    ids, offs = _offsets(tokenizer, prompt)
    if not ids:
        raise UserError(f"empty prompt {prompt!r}")
    strs = [tokenizer.decode([bos])] + [tokenizer.decode([i]) for i in ids]
    return [bos] + ids, strs, ["bos"] + span_roles(prompt, offs, spans)


def span_roles(text: str, offsets: list[tuple[int, int]],
               spans: list[tuple[int, int, str]]) -> list[str]:
    """One role per token (its character `offsets` in `text`, at least one): the labelled
    span covering its first non-space character, else `other`; the last token `final`
    (`token_roles`' rule, also applied to token rows by `run.applied(entity=...)`)."""
    roles = []
    for s, e in offsets:
        role = "other"
        for i in range(s, min(e, len(text))):
            if text[i].isspace():
                continue
            role = next((r for a, b, r in spans if a <= i < b), "other")
            break
        roles.append(role)
    roles[-1] = "final"
    return roles


def first_token(tokenizer, text: str) -> int | None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return int(ids[0]) if ids else None


def split_entities(entities: list[str], test_fraction: float, seed: int) -> set[str]:
    """The held-out (test) entities: a seeded fraction of the distinct entities."""
    ents = sorted(set(entities))
    if test_fraction <= 0 or len(ents) < 2:
        return set()
    n_test = min(len(ents) - 1, max(1, round(test_fraction * len(ents))))
    random.Random(f"split:{seed}").shuffle(ents)
    return set(ents[:n_test])


def split_of(test_entity: bool, held_out_phrasing: bool) -> str:
    return {(False, False): "train", (True, False): "test_entity",
            (False, True): "test_phrasing", (True, True): "test_both"}[(test_entity,
                                                                        held_out_phrasing)]
