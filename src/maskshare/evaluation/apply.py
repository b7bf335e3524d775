"""Apply a trained run's circuit to new prompts (what `maskshare eval` does).

    prompts, skipped = read_prompts("new.jsonl")           # bad lines -> skipped, with reasons
    result = evaluate_prompts(run_dir, prompts, skipped=skipped)

A prompt file holds JSON lines `{"prompt": "...", "answer": " Au", "counterfactual": " Ag"}`;
`counterfactual` is optional: without it the clean model's highest-scoring token other than
the answer (and other than special tokens such as BOS) is used, and the result says so per
prompt and overall (`counterfactual_source`). Blank lines are ignored.

The circuit is the run's main variant (or `variant`) at the run's chosen lambda
(`metrics.json`, or `lam`), trained with the run's first seed (or `seed`). Each new prompt's
tokens get their slots from the run's fitted grouping, assigned without refitting; the share
of tokens the grouping finds out of distribution is reported (`ood_fraction`). New prompts
carry no span labels, so a `roles` grouping sees BOS, the final token and `other`.

Answers and counterfactuals of several tokens are scored by their first token (as datasets
are). A bad prompt (malformed line, empty prompt, answer or counterfactual that tokenises to
nothing, counterfactual equal to the answer or sharing its first token, longer than the
model's context, a length the `template` grouping was not fitted on) is skipped with its line
number and reason; it never stops the batch. Fields other than the prompt fields (an id, a
phrasing label) are ignored with one warning for the whole file. No usable prompt at all is a `UserError`. Nothing is written anywhere.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maskshare.artifacts import is_complete
from maskshare.datasets.prompt_build import entity_spans
from maskshare.datasets.rows import token_roles
from maskshare.errors import UserError
from maskshare.evaluation.metrics import evaluate_masks
from maskshare.grouping import load_grouping
from maskshare.masks.masking import MaskedModel
from maskshare.masks.own_latents import marked_tokens
from maskshare.masks.slot_stats import SlotStats
from maskshare.masks.training import TrainResult
from maskshare.model.activations import clean_final_logits, padded_batches
from maskshare.model.models import tokenize_prompt
from maskshare.run.layout import RunLayout
from maskshare.run.resources import get_model, get_saes, load_run_config
from maskshare.run.variants import Variant, main_variant, variants
from maskshare.validation import read_text_file

logger = logging.getLogger(__name__)

FIELDS = ("prompt", "answer", "counterfactual", "entity")
CF_FILE, CF_MODEL = "file", "clean-model top token"


@dataclass(frozen=True)
class Prompt:
    """One prompt to score; `line` is its line number in the file (1-based), if any."""

    prompt: str
    answer: str
    counterfactual: str | None = None
    line: int | None = None
    entity: str | None = None  # the subject's mention: where the run's own latents go


@dataclass(frozen=True)
class Skipped:
    """A prompt that could not be used, and why (one line, fit for stderr)."""

    line: int | None
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}" if self.line is not None else self.reason

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "reason": self.reason}


# ----------------------------------------------------------------------------- reading
def parse_prompt(obj: Any, line: int | None = None) -> Prompt:
    """A `Prompt` from one decoded JSON value; ValueError (one-line reason) if it is not one."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object with {FIELDS[:2]}, got {type(obj).__name__}")
    missing = [k for k in FIELDS[:2] if k not in obj]
    if missing:
        raise ValueError(f"missing field(s) {missing}")
    for k in FIELDS:
        v = obj.get(k)
        if k in ("counterfactual", "entity") and v is None:
            continue
        if not isinstance(v, str):
            raise ValueError(f"{k!r} must be a string, got {type(v).__name__}")
    if not obj["prompt"].strip():
        raise ValueError("empty prompt")
    if not obj["answer"]:
        raise ValueError("empty answer")
    cf = obj.get("counterfactual")
    if cf == "":
        raise ValueError("empty counterfactual (leave the field out to let the model pick one)")
    if cf is not None and cf == obj["answer"]:
        raise ValueError(f"counterfactual equals the answer ({cf!r})")
    return Prompt(prompt=obj["prompt"], answer=obj["answer"], counterfactual=cf, line=line,
                  entity=obj.get("entity") or None)


def parse_prompt_line(text: str, line: int | None = None) -> Prompt:
    """Parse one JSON line; ValueError with a one-line reason if it is malformed."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"malformed JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise ValueError("malformed JSON (nested too deeply)") from None
    return parse_prompt(obj, line)


def unknown_fields(text: str) -> list[str]:
    """Keys of a JSON-line object that are not prompt fields (typos get a note)."""
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return []
    return sorted(str(k) for k in obj if k not in FIELDS) if isinstance(obj, dict) else []


def read_prompts(path: str | Path) -> tuple[list[Prompt], list[Skipped]]:
    """Prompts of a JSON-lines file and the lines skipped; UserError if it cannot be read."""
    p = Path(path)
    text = read_text_file(p, "prompts")
    prompts, skipped = [], []
    extra_fields: Counter = Counter()
    for i, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            prompts.append(parse_prompt_line(raw, i))
        except ValueError as e:
            skipped.append(Skipped(i, str(e)))
            continue
        extra_fields.update(unknown_fields(raw))
    if extra_fields:  # one warning for the file, not one per line (ids, labels are common)
        n_lines = sum(1 for raw in text.splitlines() if raw.strip() and unknown_fields(raw))
        logger.warning("%s: ignoring field(s) %s on %d line(s) (known: %s)", p,
                       ", ".join(f"{k!r}" for k in sorted(extra_fields)), n_lines,
                       list(FIELDS))
    return prompts, skipped


# ----------------------------------------------------------------------------- checking
@dataclass
class _Checked:
    prompt: Prompt
    tokens: list[int]
    answer_id: int
    counterfactual_id: int | None


def _first_token(tokenizer, text: str, what: str) -> int:
    """The token an answer is scored by: its first (answers of several tokens included)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"{what} {text!r} has no tokens")
    return int(ids[0])


def check_prompt(model, p: Prompt, *, grouping=None) -> _Checked:
    """Tokenise `p` for `model`; ValueError (one-line reason) if it cannot be scored (by
    `grouping`, where given: its `prompt_problem`)."""
    tok = model.tokenizer
    tokens = tokenize_prompt(model, p.prompt)
    if len(tokens) < 2:
        raise ValueError("empty prompt (no tokens)")
    if len(tokens) > model.cfg.n_ctx:
        raise ValueError(f"prompt is {len(tokens)} tokens, longer than the model's context "
                         f"({model.cfg.n_ctx})")
    if grouping is not None and (problem := grouping.prompt_problem(len(tokens))):
        raise ValueError(problem)
    a = _first_token(tok, p.answer, "answer")
    c = None
    if p.counterfactual is not None:
        c = _first_token(tok, p.counterfactual, "counterfactual")
        if c == a:
            raise ValueError(f"answer {p.answer!r} and counterfactual {p.counterfactual!r} share "
                             f"their first token {tok.decode([a])!r} (answers are scored by "
                             "their first token)")
    return _Checked(p, tokens, a, c)


def _as_prompt(x: Prompt | dict, i: int) -> Prompt:
    if isinstance(x, Prompt):
        return x
    return parse_prompt(x, line=i + 1)


def model_counterfactuals(model, tokens: list[list[int]], answer_ids: list[int],
                          batch_size: int = 32) -> list[int]:
    """Per prompt, the clean model's highest-scoring next token other than the answer and
    the tokenizer's special tokens."""
    import torch


    banned = sorted({int(t) for t in (model.tokenizer.all_special_ids or [])
                     if 0 <= int(t) < model.cfg.d_vocab})
    out = [0] * len(tokens)
    with torch.no_grad():
        for batch in padded_batches(tokens, batch_size, order="shortest"):
            logits = clean_final_logits(model, batch.tokens, batch.lengths,
                                        batch.attention_mask).clone()
            if banned:
                logits[:, banned] = float("-inf")
            for b, i in enumerate(batch.idx):
                logits[b, answer_ids[i]] = float("-inf")
                out[i] = int(logits[b].argmax())
    return out


# ----------------------------------------------------------------------------- the circuit
def resolve_circuit(run: Path, variant: str | None = None, lam: float | None = None,
                    seed: int | None = None):
    """(config, Variant, lambda, seed, masks dir) of the circuit to apply; UserError if the
    run does not hold it."""
    cfg = load_run_config(run)
    if variant is None:
        v = main_variant(cfg)
    else:
        try:
            v = Variant.parse(variant)
        except ValueError:
            known = ", ".join(x.name for x in variants(cfg))
            raise UserError(f"unknown variant {variant!r}; this run has: {known}") from None
    if lam is None:
        mpath = RunLayout(run).metrics
        try:
            metrics = json.loads(mpath.read_text())
            lam = float(metrics["lambda"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise UserError(f"{run} has no chosen lambda ({mpath} missing or incomplete): "
                            "finish the run with `maskshare run`, or pass --lambda") from None
    if seed is None:
        seed = (cfg.evaluate.seeds or [cfg.seed])[0]
    d = RunLayout(run).masks(v, lam, seed)
    if not is_complete(d):
        vdir = RunLayout(run).variant_masks(v)
        have = sorted(p.name for p in vdir.glob("lam*_seed*")
                      if is_complete(p)) if vdir.is_dir() else []
        raise UserError(f"{run} has no complete circuit for variant {v.name}, lambda {lam:g}, "
                        f"seed {seed}; it has: {', '.join(have) or 'none'}")
    return cfg, v, float(lam), int(seed), d


def _check_prompts(model, raw: list, skipped: list[Skipped],
                   grouping) -> tuple[list[_Checked], int]:
    """The usable prompts of `raw` (the others join `skipped`, sorted by line) and how many
    were read (malformed lines already in `skipped` included); UserError when none is."""
    n_unparsed = len(skipped)  # lines that never became prompts (malformed)
    checked: list[_Checked] = []
    for i, x in enumerate(raw):
        line = x.line if isinstance(x, Prompt) else i + 1
        try:
            checked.append(check_prompt(model, _as_prompt(x, i), grouping=grouping))
        except ValueError as e:
            skipped.append(Skipped(line, str(e)))
    n_read = len(raw) + n_unparsed
    skipped.sort(key=lambda s: (s.line is None, s.line or 0))
    if not checked:
        first = f" (first: {skipped[0]})" if skipped else ""
        raise UserError(f"no usable prompts: {n_read} read, {len(skipped)} skipped{first}")
    return checked, n_read


def _counterfactual_ids(model, checked: list[_Checked]) -> tuple[list[int], dict[int, int]]:
    """Each prompt's counterfactual id: the file's, else the clean model's top other token
    (those picked by the model: {prompt index: id})."""
    tokens = [c.tokens for c in checked]
    answers = [c.answer_id for c in checked]
    need = [i for i, c in enumerate(checked) if c.counterfactual_id is None]
    picked = dict(zip(need, model_counterfactuals(model, [tokens[i] for i in need],
                                                  [answers[i] for i in need]), strict=True)) \
        if need else {}
    cfs = [c.counterfactual_id if c.counterfactual_id is not None else picked[i]
           for i, c in enumerate(checked)]
    return cfs, picked


def _per_prompt_rows(tokenizer, checked: list[_Checked], cfs: list[int],
                     picked: dict[int, int], slots: list[np.ndarray],
                     per: dict[str, Any]) -> list[dict]:
    rows = []
    for i, c in enumerate(checked):
        row = {"line": c.prompt.line, "prompt": c.prompt.prompt, "answer": c.prompt.answer,
               "counterfactual": tokenizer.decode([cfs[i]]),
               "counterfactual_source": CF_MODEL if i in picked else CF_FILE,
               "slots": [int(s) for s in slots[i]]}
        for k, vals in per.items():
            row[k] = float(vals[i])
        rows.append(row)
    return rows


def own_marks(model, cfg, checked: list[_Checked], slots: list[np.ndarray],
              use: bool = True) -> tuple[tuple[list[np.ndarray], int] | None, dict | None]:
    """The run's `evaluate.own_latents` on new prompts: per prompt, True at the tokens of
    its `entity` mentions (role `subject`, as prompt datasets mark it; any case), and what the result
    says of it; (None, None) when the run keeps none (k 0) or `use` is False."""
    own = cfg.evaluate.own_latents
    if not (use and own.k):
        return None, None
    # any case: a template's "Gold's symbol" marks the entity `gold` there too
    roles = [token_roles(model.tokenizer, c.prompt.prompt,
                         entity_spans(c.prompt.prompt, c.prompt.entity, ignore_case=True),
                         c.tokens[0])[2] for c in checked]
    marks = marked_tokens(roles, slots, own.roles)
    n = sum(bool(m.any()) for m in marks)
    info = {**own.model_dump(), "prompts_marked": n}
    if n < len(checked):
        info["note"] = (f"{len(checked) - n} of {len(checked)} prompts carry no `entity` "
                        "found in their prompt: their circuit is the learned part only")
    return (marks, own.k, own.by), info


def evaluate_prompts(run: str | Path, prompts: Iterable[Prompt | dict], *,
                     variant: str | None = None, lam: float | None = None,
                     seed: int | None = None, skipped: Iterable[Skipped] = (),
                     batch_size: int | None = None, own_latents: bool = True) -> dict:
    """Score the circuit of `run` on `prompts`; returns a JSON-serialisable dict.

    Keys: `n_prompts` (read, skipped ones included), `n_scored`, `n_skipped`, `skipped`
    (line and reason each), `faithfulness`, `faithfulness_vs_clean`, `completeness`,
    `latents_per_token`, `circuit_size`, `distinct_latents`, `ld_model`, `ld_model_clean`,
    `ld_circuit`, `ld_ablated`, `ld_complement`, `ood_fraction`, `counterfactual_source`
    (`file`, `clean-model top token`, or `mixed`), `n_counterfactual_from_model`,
    `variant`, `lambda`, `seed`, `run`, `per_prompt`, and `note` where a metric is undefined.
    Runs whose evaluation keeps the subject's own latents (`evaluate.own_latents`) keep them
    here too, at each prompt's `entity` mention (`own_latents`: the setting and how many
    prompts were marked; `own_latents_per_token`), unless `own_latents` is False.
    UserError when the run lacks the circuit or no prompt is usable.
    """
    run = Path(run)
    cfg, v, lam, seed, mdir = resolve_circuit(run, variant, lam, seed)
    skipped = list(skipped)
    model = get_model(cfg)
    grouping = load_grouping(RunLayout(run).groups(v.grouping))
    checked, n_read = _check_prompts(model, list(prompts), skipped, grouping)
    cfs, picked = _counterfactual_ids(model, checked)

    items = grouping.prompt_items([c.tokens for c in checked])
    assignment = grouping.assign(model, items)
    slots = [np.asarray(s, dtype=np.int64) for s in assignment.slots]
    stats = SlotStats.load(RunLayout(run).slot_stats(v.grouping))
    mm = MaskedModel(model, get_saes(cfg), stats, grouping.n_slots, ablation=v.ablation,
                     error=cfg.masks.error)
    own, own_info = own_marks(model, cfg, checked, slots, own_latents)
    batches = mm.prepare([c.tokens for c in checked], slots, [c.answer_id for c in checked],
                         cfs, batch_size=batch_size or cfg.masks.batch_size,
                         ablation_data=mm.ablation_method.prompt_data(
                             items, lambda toks: grouping.assign_tokens(model, toks)),
                         own=own)
    m = evaluate_masks(mm, batches, TrainResult.load(mdir).masks(), slots)
    per = m.pop("per_prompt", {})
    m.pop("kept_per_hook", None)
    source = CF_FILE if not picked else CF_MODEL if len(picked) == len(checked) else "mixed"
    return {
        "run": str(run), "variant": v.name, "lambda": lam, "seed": seed,
        "grouping": v.grouping.value, "ablation": v.ablation.value,
        "error_term": cfg.masks.error.value,
        **m,
        "n_prompts": n_read, "n_scored": len(checked), "n_skipped": len(skipped),
        "skipped": [s.as_dict() for s in skipped],
        "ood_fraction": float(assignment.ood_fraction),
        "counterfactual_source": source, "n_counterfactual_from_model": len(picked),
        **({"own_latents": own_info} if own_info else {}),
        "per_prompt": _per_prompt_rows(model.tokenizer, checked, cfs, picked, slots, per),
    }
