"""Build a dataset for one model: render prompts, label token roles, pick counterfactuals,
split, keep the items the model answers (behaviour filter), and cache the result.

A build is content-addressed by the spec, the source table's contents, the model name and
the variant, and lives in `cache_dir()/datasets/<name>-<variant>-<hash>/` with
`items.parquet`, `pass_table.parquet`, `spec.yaml` and `manifest.json`.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from maskshare.artifacts import building, hash_config, is_complete, read_manifest, write_manifest
from maskshare.datasets.prompt_build import prompt_items, prompt_pass_table
from maskshare.datasets.prompts import PromptDatasetSpec
from maskshare.datasets.registry import find_spec
from maskshare.datasets.rows import first_token, split_entities, split_of, token_roles
from maskshare.datasets.schema import ITEMS_SCHEMA, PASS_TABLE_SCHEMA, load_items, validate_items
from maskshare.datasets.sources import check_source, load_source
from maskshare.datasets.spec import DatasetSpec, Phrasing, parse_template, render
from maskshare.errors import UserError
from maskshare.model.forward import RECHECK_MARGIN, dtype_for, score_rows
from maskshare.model.models import bos_id
from maskshare.runtime import cache_dir

logger = logging.getLogger(__name__)

BUILD_VERSION = 1
BATCH_SIZE = 32


@dataclass
class BuiltDataset:
    """A built dataset: its cache dir, the items that passed, and the per-phrasing pass table."""

    path: Path
    items: pl.DataFrame
    pass_table: pl.DataFrame
    spec: DatasetSpec
    variant: str
    stats: dict[str, Any] = field(default_factory=dict)
    cached: bool = False


# ---------------------------------------------------------------------------- tokens and roles


# ------------------------------------------------------------------ answers and counterfactuals


def resolve_answers(spec: DatasetSpec, df: pl.DataFrame, tokenizer,
                    d_vocab: int) -> tuple[pl.DataFrame, list[str]]:
    """Add `answer` (text) and `answer_id` (its first token) to the rows; drop rows whose first
    token is shared with a different answer that it does not spell out completely (" Cs" starts
    with " C", carbon's whole answer). Returns the rows kept and the entities dropped."""
    texts = [spec.answer_prefix + str(v) for v in df[spec.answer]]
    ids = []
    for ent, t in zip(df[spec.entity], texts, strict=True):
        i = first_token(tokenizer, t)
        tok = tokenizer.decode([i]) if i is not None else ""
        if i is None or not tok.strip() or i >= d_vocab:
            raise UserError(f"{spec.name}: answer {t!r} (entity {ent!r}) does not start with a "
                            f"token the model can emit (first token {tok!r}); answers must start "
                            "with a non-blank token: check answer_prefix and the answer column")
        ids.append(i)
    if spec.answer_mode == "first_token":
        texts = [tokenizer.decode([i]) for i in ids]
    by_id: dict[int, set[str]] = defaultdict(set)
    for i, t in zip(ids, texts, strict=True):
        by_id[i].add(t)
    keep = []
    for i, t in zip(ids, texts, strict=True):
        partial = tokenizer.decode([i]) != t
        keep.append(not (partial and len(by_id[i]) > 1))
    out = df.with_columns(pl.Series("answer", texts, pl.String),
                          pl.Series("answer_id", ids, pl.Int64))
    mask = pl.Series(keep)
    dropped = out.filter(~mask)[spec.entity].to_list()
    return out.filter(mask), dropped


def pick_counterfactuals(entities: list[str], answers: list[str], answer_ids: list[int],
                         seed: int) -> tuple[list[str], list[int]]:
    """For each entity another entity's answer whose first token differs (seeded per entity)."""
    pool = sorted({(a, i) for a, i in zip(answers, answer_ids, strict=True)})
    cf, cf_ids = [], []
    for ent, aid in zip(entities, answer_ids, strict=True):
        cands = [(a, i) for a, i in pool if i != aid]
        if not cands:
            raise UserError("every answer starts with the same token: no counterfactual exists")
        a, i = random.Random(f"{seed}:{ent}").choice(cands)
        cf.append(a)
        cf_ids.append(i)
    return cf, cf_ids


# ------------------------------------------------------------------------------- the items


def _rows_for(phrasing: Phrasing, df: pl.DataFrame) -> pl.DataFrame:
    for col, val in phrasing.where.items():
        df = df.filter(pl.col(col) == val)
    return df


def render_items(spec: DatasetSpec, df: pl.DataFrame, variant: str, tokenizer,
                 bos: int) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Every (phrasing, row) prompt with tokens, roles, answer, counterfactual and split (before
    the behaviour filter). Templated data keeps only prompts of the modal token length."""
    test_ents = split_entities(df[spec.entity].to_list(), spec.split.test_fraction,
                               spec.split.seed)
    cf, cf_ids = pick_counterfactuals(df[spec.entity].to_list(), df["answer"].to_list(),
                                      df["answer_id"].to_list(), spec.counterfactual_seed)
    cf_of = {e: (c, i) for e, c, i in zip(df[spec.entity], cf, cf_ids, strict=True)}
    rows: list[dict[str, Any]] = []
    for ph in spec.phrasings(variant):
        segs = parse_template(ph.text)
        for r in _rows_for(ph, df).iter_rows(named=True):
            prompt, spans = render(segs, r, spec.role_of)
            tokens, strs, roles = token_roles(tokenizer, prompt, spans, bos)
            ent = str(r[spec.entity])
            rows.append({
                "prompt": prompt, "tokens": tokens, "token_strs": strs, "roles": roles,
                "answer": r["answer"], "answer_id": r["answer_id"],
                "counterfactual": cf_of[ent][0], "counterfactual_id": cf_of[ent][1],
                "entity": ent, "phrasing_id": ph.id, "phrasing": ph.text,
                "split": split_of(ent in test_ents, ph.held_out),
                "held_out": ph.held_out,
            })
    info: dict[str, Any] = {"n_test_entities": len(test_ents)}
    if variant == "templated" and rows:
        lengths = Counter(len(r["tokens"]) for r in rows)
        modal = max(lengths, key=lambda n: (lengths[n], -n))
        info.update(modal_length=modal, n_dropped_length=sum(
            c for n, c in lengths.items() if n != modal))
        rows = [r for r in rows if len(r["tokens"]) == modal]
    schema = {k: v for k, v in ITEMS_SCHEMA.items() if k not in ("answer_prob", "logit_diff",
                                                                  "dataset", "variant",
                                                                  "prompt_id")}
    items = pl.DataFrame(rows, schema={**schema, "held_out": pl.Boolean})
    items = items.with_row_index("prompt_id").with_columns(pl.col("prompt_id").cast(pl.Int64))
    return items, info


# ------------------------------------------------------------------------------- scoring


def score_prompts(model, tokens: list[list[int]], answer_ids: list[int], cf_ids: list[int], *,
                  batch_size: int = BATCH_SIZE, progress: bool = True, desc: str = "scoring",
                  dtype: str = "float32") -> tuple[list[int], list[float], list[float]]:
    """Top-1 token, p(answer) and logit(answer) - logit(counterfactual) at each prompt's own
    final position (`maskshare.model.forward.score_rows`: batches right-padded and sorted by
    length, no attention mask: causal attention keeps the right padding out)."""
    s = score_rows(model, tokens, answer_ids, cf_ids, batch_size=batch_size, dtype=dtype,
                   progress=progress, desc=desc)
    return s["top"], s["prob"], s["ld"]


def filter_scores(model, tokens: list[list[int]], answer_ids: list[int], cf_ids: list[int],
                  kind: str, margin: float, *, dtype: str = "float32", progress: bool = True,
                  desc: str = "scoring") -> tuple[list[int], list[float], list[float], dict]:
    """`score_prompts` for the behaviour filter `kind`. In bfloat16, every prompt whose
    decision is within `RECHECK_MARGIN` logits of flipping (logit-diff: |ld - margin|; top1:
    |logit(answer) - the highest other logit|) is scored again in float32, so every decision is float32's.
    Returns (top, prob, ld, info) with info's `dtype` and `n_rechecked`."""
    if dtype == "float32":
        top, prob, ld = score_prompts(model, tokens, answer_ids, cf_ids, progress=progress,
                                      desc=desc)
        return top, prob, ld, {"dtype": dtype, "n_rechecked": 0}
    s = score_rows(model, tokens, answer_ids, cf_ids, dtype=dtype, progress=progress, desc=desc)
    top, prob, ld = s["top"], s["prob"], s["ld"]
    if kind == "logit-diff":
        doubt = [i for i, d in enumerate(ld) if abs(d - margin) < RECHECK_MARGIN]
    elif kind == "top1":  # the answer's lead over (or gap to) the best other token
        doubt = [i for i, m in enumerate(s["margin"]) if abs(m) < RECHECK_MARGIN]
    else:
        doubt = []
    if doubt:
        t2, p2, l2 = score_prompts(model, [tokens[i] for i in doubt],
                                   [answer_ids[i] for i in doubt], [cf_ids[i] for i in doubt],
                                   progress=False)
        for j, i in enumerate(doubt):
            top[i], prob[i], ld[i] = t2[j], p2[j], l2[j]
    return top, prob, ld, {"dtype": dtype, "n_rechecked": len(doubt)}


def pass_table(items: pl.DataFrame, passed: pl.Series) -> pl.DataFrame:
    df = items.with_columns(passed.alias("_passed"))
    t = (df.group_by("phrasing_id", "phrasing", "held_out", maintain_order=True)
         .agg(n_items=pl.len().cast(pl.Int64), n_passed=pl.col("_passed").sum().cast(pl.Int64),
              mean_answer_prob=pl.col("answer_prob").mean().cast(pl.Float64),
              mean_logit_diff=pl.col("logit_diff").mean().cast(pl.Float64))
         .sort("phrasing_id"))
    return t.select([pl.col(c).cast(d) for c, d in PASS_TABLE_SCHEMA.items()])


# ------------------------------------------------------------------------------- the build


def model_name(model) -> str:
    return str(getattr(model.cfg, "model_name", None) or "unknown")


def resolve_filter(spec, ref) -> tuple[str, float]:
    """(kind, margin) of the behaviour filter for `ref` (a DatasetRef): `behaviour_filter:
    true` is the dataset's default (template specs `top1`, prompt specs their `filter`,
    `logit-diff` unless they say otherwise), false is `none`."""
    bf = getattr(ref, "behaviour_filter", True)
    kind, margin = spec.default_filter
    if bf is True:
        return kind, margin
    if bf is False:
        return "none", margin
    return str(bf), margin


def passes(kind: str, margin: float, top: list[int], ld: list[float],
           answer_ids: list[int]) -> pl.Series:
    """Which scored items the filter keeps: `top1` the model's top token is the answer's first
    token; `logit-diff` logit(answer) - logit(counterfactual) > margin; `none` all."""
    if kind == "top1":
        return pl.Series([t == a for t, a in zip(top, answer_ids, strict=True)], dtype=pl.Boolean)
    if kind == "logit-diff":
        return pl.Series([d > margin for d in ld], dtype=pl.Boolean)
    if kind == "none":  # dry runs on models that answer nothing (e.g. the tiny random model)
        return pl.Series([True] * len(top), dtype=pl.Boolean)
    raise ValueError(f"unknown behaviour filter {kind!r}")


def build_key(spec, source_hash: str, model: str, variant: str,
              max_items: int | None, behaviour_filter: bool | str = True,
              margin: float = 0.0, scoring: str = "float32") -> str:
    parts = {"spec": spec.model_dump(mode="json"), "source": source_hash, "model": model,
             "variant": variant, "max_items": max_items, "version": BUILD_VERSION}
    if scoring != "float32":  # the stored scores differ (not the decisions): another build
        parts["scoring"] = f"{scoring}+float32-recheck-{RECHECK_MARGIN}"
    # top1 (template specs' default) adds nothing and none is `False`, as before the filter
    # had kinds, so existing builds keep their keys
    kind = {True: "top1", False: "none"}.get(behaviour_filter, behaviour_filter) \
        if isinstance(behaviour_filter, bool) else behaviour_filter
    if kind == "none":
        parts["behaviour_filter"] = False
    elif kind != "top1":
        parts["behaviour_filter"] = kind
        parts["margin"] = margin
    return hash_config(parts)


def _load_built(path: Path, spec: DatasetSpec, variant: str) -> BuiltDataset:
    m = read_manifest(path) or {}
    return BuiltDataset(path=path, items=load_items(path),
                        pass_table=pl.read_parquet(path / "pass_table.parquet"), spec=spec,
                        variant=variant, stats=m.get("stats", {}), cached=True)


class TooFewItems(UserError):
    """Fewer items passed the behaviour filter than asked for; carries the pass table."""

    def __init__(self, message: str, built: BuiltDataset):
        super().__init__(message)
        self.built = built


def _check_min(built: BuiltDataset, min_items: int) -> BuiltDataset:
    n = built.items.height
    if n < min_items:
        raise TooFewItems(f"{built.spec.name} ({built.variant}): only {n} items pass the behaviour "
                        f"filter on this model, fewer than min_items={min_items}; add phrasings or "
                        "rows, or lower min_items", built)
    return built


def build_dataset(ref, model, *, progress: bool = True) -> BuiltDataset:
    """Build (or load from the cache) `ref.name` / `ref.variant` for `model`.

    `ref` is a `maskshare.config.DatasetRef`; `ref.name` is a registered name or a spec
    file's path. Raises UserError for bad specs/tables and when fewer than `ref.min_items`
    items pass the behaviour filter (nothing is written then).
    """
    spec, spec_path = find_spec(ref.name)
    if ref.variant not in spec.variants():
        raise UserError(f"{spec.name} has no {ref.variant} variant (it has {spec.variants()})")
    df, source_hash = load_source(spec, spec_path.parent)
    check_source(spec, df)
    return build_from_table(spec, spec_path, df, source_hash, ref, model, progress=progress)


@functools.singledispatch
def kind_items(spec, df: pl.DataFrame, variant: str, model) -> tuple[pl.DataFrame, dict]:
    """(items, info) of a spec's table: one implementation per dataset kind (spec class)."""
    raise TypeError(f"no items builder for {type(spec).__name__}")


@functools.singledispatch
def kind_pass_table(spec, items: pl.DataFrame, passed: pl.Series, info: dict,
                    filt: str) -> pl.DataFrame:
    """The pass table of a build: one implementation per dataset kind (spec class)."""
    raise TypeError(f"no pass table for {type(spec).__name__}")


@kind_items.register
def _(spec: PromptDatasetSpec, df, variant, model):
    return prompt_items(spec, df, model.tokenizer, bos_id(model), model.cfg.d_vocab,
                        model.cfg.n_ctx)


@kind_pass_table.register
def _(spec: PromptDatasetSpec, items, passed, info, filt):
    return prompt_pass_table(items, passed, info, filt)


@kind_pass_table.register
def _(spec: DatasetSpec, items, passed, info, filt):
    return pass_table(items, passed)


@kind_items.register
def _template_items(spec: DatasetSpec, df: pl.DataFrame, variant: str, model):
    n_rows = df.height
    df, dropped = resolve_answers(spec, df, model.tokenizer, model.cfg.d_vocab)
    if df.height == 0:
        raise UserError(f"{spec.name}: no rows left after dropping ambiguous answers")
    items, info = render_items(spec, df, variant, model.tokenizer, bos_id(model))
    return items, {"n_rows": n_rows, "n_dropped_ambiguous": len(dropped),
                   "dropped_ambiguous": dropped, **info}


def build_from_table(spec, spec_path: Path, df: pl.DataFrame, source_hash: str, ref, model, *,
                     progress: bool = True) -> BuiltDataset:
    """Build `spec` from its (checked) table `df` for `model`, or load the cached build."""
    variant, name = ref.variant, model_name(model)
    filt, margin = resolve_filter(spec, ref)
    scoring = dtype_for("filter")
    key = build_key(spec, source_hash, name, variant, ref.max_items, filt, margin, scoring)
    out = cache_dir() / "datasets" / f"{spec.name}-{variant}-{key}"
    if is_complete(out):
        logger.info("loading cached dataset %s", out)
        return _check_min(_load_built(out, spec, variant), ref.min_items)

    t0 = time.time()
    items, info = kind_items(spec, df, variant, model)
    if items.height == 0:
        raise UserError(f"{spec.name}: no usable rows ({info.get('dropped') or info})")
    top, prob, ld, scored = filter_scores(
        model, items["tokens"].to_list(), items["answer_id"].to_list(),
        items["counterfactual_id"].to_list(), filt, margin, dtype=scoring, progress=progress,
        desc=f"{spec.name} {variant}")
    items = items.with_columns(pl.Series("answer_prob", prob, pl.Float64),
                               pl.Series("logit_diff", ld, pl.Float64),
                               pl.lit(spec.name).alias("dataset"),
                               pl.lit(variant).alias("variant"))
    passed = passes(filt, margin, top, ld, items["answer_id"].to_list())
    table = kind_pass_table(spec, items, passed, info, filt)
    kept = items.filter(passed)
    if ref.max_items is not None and kept.height > ref.max_items:
        idx = sorted(random.Random(f"cap:{spec.split.seed}").sample(range(kept.height),
                                                                    ref.max_items))
        kept = kept[idx]
    kept = validate_items(kept.drop("held_out"), source=f"{spec.name} items")
    stats = {**info, "n_scored": items.height, "n_passed": int(passed.sum()),
             "n_items": kept.height, "filter": filt,
             **({"scoring": scored} if scoring != "float32" else {}),
             **({"margin": margin} if filt == "logit-diff" else {}),
             "splits": dict(Counter(kept["split"].to_list()))}
    built = BuiltDataset(path=out, items=kept, pass_table=table, spec=spec, variant=variant,
                         stats=stats)
    _check_min(built, ref.min_items)
    with building(out) as tmp:
        kept.write_parquet(tmp / "items.parquet")
        table.write_parquet(tmp / "pass_table.parquet")
        (tmp / "spec.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json"),
                                                      sort_keys=False))
        write_manifest(tmp, inputs={"spec": str(spec_path), "source_hash": source_hash,
                                    "model": name},
                       config={"variant": variant, "max_items": ref.max_items,
                               "build_version": BUILD_VERSION},
                       seed=spec.split.seed, timings={"build_s": round(time.time() - t0, 2)},
                       extra={"stats": stats, "key": key})
    return built
