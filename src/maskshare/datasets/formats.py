"""Row formats that need more than a column mapping: `mib` and `recall`.

Each turns a file's rows into rows of the canonical prompt fields (datasets/prompts.py),
which `normalise_rows` then checks as it checks any other table.

`mib`: the circuit-localisation tasks of the Mechanistic Interpretability Benchmark (one row
per prompt, counterfactuals nested in `<name>_counterfactual` objects), read as the
benchmark's own loader (MIB_circuit_track/dataset.py) reads them:

| task | answer | counterfactual | counterfactual prompt (default object) |
|---|---|---|---|
| IOI (`metadata.indirect_object`) | `" " + metadata.indirect_object` | `" " + metadata.subject` | `s2_io_flip_counterfactual.prompt` |
| multiple choice / ARC (`choices`, `answerKey`) | `choices.label[answerKey]` | the object's `choices.label[answerKey]` | `symbol_counterfactual.prompt` |
| arithmetic (`label`) | `str(label)` | `str(<object>.label)` | `random_counterfactual.prompt` |

`--counterfactual FIELD` names another object; where the default is absent, the first
`*_counterfactual` key of the first row in sorted order is used. The task is told apart per
row by its keys.

`recall`: factual-recall rows (`subject`, `attribute` or `target`, `prompt`, `relation` or
`relation_id`) with no counterfactual. The relation becomes the group, the subject the
entity; the answer is the attribute, with a space in front unless it or the prompt has one
at the seam. The counterfactual is another row's attribute of the same relation whose first
token differs from the answer's: among those candidates, the one with the smallest
sha256(seed, relation, subject, prompt, candidate) — so the choice depends on the seed and on
the set of rows, never on their order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from maskshare.datasets.fieldpath import PathError, resolve
from maskshare.errors import UserError

MIB_DEFAULT_COUNTERFACTUAL = {"ioi": "s2_io_flip_counterfactual",
                              "mcqa": "symbol_counterfactual",
                              "arithmetic": "random_counterfactual"}
RECALL_ANSWER = ("attribute", "target")
RECALL_RELATION = ("relation", "relation_id")


def _get(r: dict, path: str, where: str) -> Any:
    try:
        v = resolve(r, path)
    except PathError as e:
        raise UserError(f"{where}: field path {path!r} does not resolve: {e}") from None
    if v is None:
        raise UserError(f"{where}: field path {path!r} is null")
    return v


def _text(v: Any, path: str, where: str) -> str:
    """Labels may be numbers (arithmetic) as in the benchmark, which str()s them."""
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise UserError(f"{where}: {path!r} must be a string or a number, got "
                        f"{type(v).__name__}")
    return str(v)


def mib_task(r: Any) -> str | None:
    if not isinstance(r, dict):
        return None
    meta = r.get("metadata")
    if isinstance(meta, dict) and "indirect_object" in meta:
        return "ioi"
    if "choices" in r and "answerKey" in r:
        return "mcqa"
    if "label" in r:
        return "arithmetic"
    return None


def looks_like_mib(r: dict) -> bool:
    return "prompt" in r and any(str(k).endswith("_counterfactual") for k in r)


def looks_like_recall(r: dict) -> bool:
    return ("prompt" in r and "subject" in r and any(k in r for k in RECALL_ANSWER)
            and any(k in r for k in RECALL_RELATION))


def mib_counterfactual_field(first: dict, where: str, loc: str, chosen: str | None) -> str:
    """The counterfactual object to read: `chosen`, else the benchmark loader's default for
    the first row's task, else the first `*_counterfactual` key in sorted order."""
    if chosen:
        return chosen
    task = mib_task(first)
    default = MIB_DEFAULT_COUNTERFACTUAL.get(task or "")
    if default and default in first:
        return default
    keys = sorted(str(k) for k in first if str(k).endswith("_counterfactual"))
    if not keys:
        raise UserError(f"{where}: {loc}: no '*_counterfactual' object; the mib format needs one "
                        "(or pass --counterfactual FIELD)")
    return keys[0]


def mib_row(r: Any, cf: str, where: str) -> dict[str, Any]:
    """One benchmark row as canonical fields (group, entity left to --column)."""
    if not isinstance(r, dict):
        raise UserError(f"{where}: expected an object, got {type(r).__name__}")
    task = mib_task(r)
    if task is None:
        raise UserError(f"{where}: not an IOI (metadata.indirect_object), multiple-choice "
                        "(choices, answerKey) or arithmetic (label) row of the mib format")
    obj = _get(r, cf, where)
    if not isinstance(obj, dict):
        raise UserError(f"{where}: {cf!r} must be an object with a prompt, got "
                        f"{type(obj).__name__}")
    out = {"prompt": _get(r, "prompt", where), "counterfactual_prompt": _get(r, f"{cf}.prompt",
                                                                             where)}
    if task == "ioi":
        out["answer"] = " " + _text(_get(r, "metadata.indirect_object", where),
                                    "metadata.indirect_object", where)
        out["counterfactual"] = " " + _text(_get(r, "metadata.subject", where),
                                            "metadata.subject", where)
    elif task == "mcqa":
        path = "choices.label[answerKey]"
        out["answer"] = _text(_get(r, path, where), path, where)
        path = f"{cf}.choices.label[{cf}.answerKey]"
        out["counterfactual"] = _text(_get(r, path, where), path, where)
    else:
        out["answer"] = _text(_get(r, "label", where), "label", where)
        out["counterfactual"] = _text(_get(r, f"{cf}.label", where), f"{cf}.label", where)
    return out


def _first_of(r: dict, keys: tuple[str, ...], where: str) -> str:
    for k in keys:
        if r.get(k) is not None:
            v = r[k]
            if isinstance(v, bool) or not isinstance(v, (str, int)):
                raise UserError(f"{where}: {k!r} must be a string, got {type(v).__name__}")
            if not str(v).strip():
                raise UserError(f"{where}: empty {k!r}")
            return str(v)
    raise UserError(f"{where}: missing field {' or '.join(repr(k) for k in keys)}")


def _answer_text(prompt: str, attribute: str) -> str:
    if attribute[:1].isspace() or prompt[-1:].isspace():
        return attribute
    return " " + attribute


def recall_rows(rows: list[tuple[str, Any]], where: str, first_token: Callable[[str], Any],
                seed: int) -> list[tuple[str, dict[str, Any]]]:
    """Canonical rows of a recall file, a counterfactual chosen for each (module doc)."""
    base = []
    for loc, r in rows:
        at = f"{where}: {loc}"
        if not isinstance(r, dict):
            raise UserError(f"{at}: expected an object, got {type(r).__name__}")
        prompt = _first_of(r, ("prompt",), at)
        subject = _first_of(r, ("subject",), at)
        answer = _answer_text(prompt, _first_of(r, RECALL_ANSWER, at))
        relation = _first_of(r, RECALL_RELATION, at)
        rid = r.get("id", r.get("known_id"))
        base.append((loc, {"prompt": prompt, "answer": answer, "group": relation,
                           "entity": subject, "id": None if rid is None else str(rid)}))
    by_rel: dict[str, dict[str, Any]] = {}
    for _, b in base:
        by_rel.setdefault(b["group"], {})[b["answer"]] = None
    firsts = {a: first_token(a) for rel in by_rel.values() for a in rel}
    out = []
    for loc, b in base:
        cands = [a for a in by_rel[b["group"]] if firsts[a] != firsts[b["answer"]]]
        if not cands:
            raise UserError(f"{where}: {loc}: no other attribute of relation {b['group']!r} has "
                            f"a first token other than {b['answer']!r}'s, so there is no "
                            "counterfactual; add rows of that relation or drop this one")
        key = f"{seed}\0{b['group']}\0{b['entity']}\0{b['prompt']}\0"
        b["counterfactual"] = min(cands, key=lambda a: hashlib.sha256(
            (key + a).encode("utf-8")).hexdigest())
        out.append((loc, b))
    return out


__all__ = ["MIB_DEFAULT_COUNTERFACTUAL", "looks_like_mib", "looks_like_recall",
           "mib_counterfactual_field", "mib_row", "mib_task", "recall_rows"]
