"""Dataset specs: the YAML files in data/datasets/ and their markup.

A phrasing is a template. `{column}` inserts a source column (`{column:capitalize}`,
`:lower`, `:upper`, `:title` transform it; `{{`/`}}` are literal braces). `[[words]]`
labels a span of template text as the `relation` role; `[[words|role]]` gives it another
role. Placeholders take their role from `roles` (the entity column defaults to `subject`,
anything else to `other`). Every other token is `other`; BOS is `bos`, the last token `final`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import polars as pl
from pydantic import Field, ValidationError, model_validator

from maskshare.datasets.prompts import PromptDatasetSpec
from maskshare.datasets.sources import check_entity_table, load_entity_table
from maskshare.domains import DATASET_NAME_RE, Finite, NonNegInt, Seed, Text
from maskshare.errors import UserError
from maskshare.validation import Strict, read_yaml_file, validation_message

NAME_RE = DATASET_NAME_RE
ROLE_RE = re.compile(r"^[a-z][a-z0-9_]*$")
RESERVED_ROLES = ("bos", "final")
TRANSFORMS = {
    "": lambda s: s, "capitalize": lambda s: s[:1].upper() + s[1:], "lower": str.lower,
    "upper": str.upper, "title": str.title,
}
# one token of template markup: [[span]] / [[span|role]], {{, }}, {placeholder[:transform]}
_MARKUP = re.compile(r"\[\[(?P<span>[^\]|]+)(?:\|(?P<role>[^\]]+))?\]\]|(?P<lb>\{\{)|(?P<rb>\}\})"
                     r"|\{(?P<ph>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<tf>[a-z]*))?\}")


class SourceSpec(Strict):
    """Where the rows come from: a CSV/parquet table or a built-in generator."""

    table: Text | None = Field(default=None, description="CSV or parquet path; relative paths "
                              "are looked up beside the spec, then under the data dir")
    generator: Text | None = Field(default=None, description="a generator in sources.GENERATORS")
    params: dict[str, Any] = Field(default_factory=dict, description="generator parameters")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.table is None) == (self.generator is None):
            raise ValueError("give exactly one of source.table and source.generator")
        if self.table is not None and self.params:
            raise ValueError("source.params applies to generators only")
        return self


class Phrasing(Strict):
    id: NonNegInt
    text: str = Field(min_length=1)
    held_out: bool = Field(default=False, description="free-form: a test phrasing")
    where: dict[Text, str] = Field(default_factory=dict,
                                  description="use only rows whose columns equal these values")


class SplitPolicy(Strict):
    test_fraction: Finite = Field(default=0.2, ge=0.0, lt=1.0,
                                 description="fraction of entities held out (test_entity)")
    seed: Seed = 0


class DatasetSpec(Strict):
    """The template kind: an entity table times phrasings, roles from the phrasings' spans.
    (`PromptDatasetSpec` is the other kind; both answer `load_table`, `check_table`,
    `default_filter`, `describe` and `labels_spans`, so nothing asks which kind a spec is.)"""

    labels_spans: ClassVar[bool] = True  # every token's role comes from a labelled span
    pairs_prompts: ClassVar[bool] = False  # no counterfactual prompts (answers only)
    default_filter: ClassVar[tuple[str, float]] = ("top1", 0.0)  # (kind, margin)
    name: str = Field(pattern=NAME_RE, max_length=64)  # a file and folder name
    description: str = ""
    source: SourceSpec
    entity: Text = Field(description="column naming the entity; the split is by entity")
    answer: Text = Field(description="column holding the answer text")
    answer_prefix: str = Field(default=" ", description="prepended to every answer")
    answer_mode: Literal["full", "first_token"] = Field(
        default="full", description="full: the answer is the whole text and items whose first "
        "token is shared with a different answer are dropped; first_token: the answer is its "
        "first token (authors: ' George')")
    roles: dict[Text, str] = Field(default_factory=dict, description="placeholder -> role")
    templated: Phrasing | None = None
    freeform: list[Phrasing] = Field(default_factory=list)
    split: SplitPolicy = Field(default_factory=SplitPolicy)
    counterfactual_seed: Seed = 0

    @model_validator(mode="after")
    def _check(self):
        if self.templated is None and not self.freeform:
            raise ValueError("give a templated phrasing, free-form phrasings, or both")
        if self.templated is not None and self.templated.held_out:
            raise ValueError("the templated phrasing cannot be held out")
        ids = [p.id for p in self.freeform]
        if len(set(ids)) != len(ids):
            raise ValueError(f"free-form phrasing ids repeat: {ids}")
        if self.freeform and not any(p.held_out for p in self.freeform):
            raise ValueError("free-form phrasings need at least one with held_out: true")
        if self.freeform and all(p.held_out for p in self.freeform):
            raise ValueError("free-form phrasings need at least one that is not held out")
        for role in self.roles.values():
            _check_role(role)
        for p in self.phrasings():
            for seg in parse_template(p.text):
                if seg.role is not None:
                    _check_role(seg.role)
        return self

    def phrasings(self, variant: str | None = None) -> list[Phrasing]:
        if variant == "templated":
            return [self.templated] if self.templated else []
        if variant == "freeform":
            return list(self.freeform)
        return ([self.templated] if self.templated else []) + list(self.freeform)

    def load_table(self, spec_dir: Path | None) -> pl.DataFrame:
        return load_entity_table(self.source, spec_dir)

    def check_table(self, df: pl.DataFrame, *, where: str = "source table") -> None:
        check_entity_table(self, df, where=where)

    def describe(self) -> str:
        """The `datasets list` columns after the name."""
        return f"{'+'.join(self.variants()):20s} {len(self.freeform):3d} free-form phrasings"

    def variants(self) -> list[str]:
        return [v for v in ("templated", "freeform") if self.phrasings(v)]

    def placeholders(self) -> set[str]:
        return {s.placeholder for p in self.phrasings() for s in parse_template(p.text)
                if s.placeholder}

    def role_of(self, placeholder: str) -> str:
        if placeholder in self.roles:
            return self.roles[placeholder]
        return "subject" if placeholder == self.entity else "other"

    def required_columns(self) -> set[str]:
        cols = self.placeholders() | {self.entity, self.answer} | set(self.roles)
        for p in self.phrasings():
            cols |= set(p.where)
        return cols


def _check_role(role: str) -> None:
    if not ROLE_RE.match(role) or role in RESERVED_ROLES:
        raise ValueError(f"role {role!r} must be lowercase letters/digits/_ and not one of "
                         f"{RESERVED_ROLES} (those are assigned automatically)")


@dataclass(frozen=True)
class Segment:
    """A piece of a parsed template: literal text, a placeholder, or a labelled span."""

    text: str = ""
    placeholder: str | None = None
    transform: str = ""
    role: str | None = None  # labelled spans only


def parse_template(text: str) -> list[Segment]:
    out: list[Segment] = []
    pos = 0

    def literal(s: str) -> None:
        if "{" in s or "}" in s or "[[" in s or "]]" in s:
            raise ValueError(f"unbalanced or malformed markup in phrasing {text!r} near {s!r} "
                             "(placeholders are {column}, spans [[words]] or [[words|role]], "
                             "literal braces {{ }})")
        if s:
            out.append(Segment(text=s))

    for m in _MARKUP.finditer(text):
        literal(text[pos:m.start()])
        pos = m.end()
        if m["span"] is not None:
            out.append(Segment(text=m["span"], role=(m["role"] or "relation").strip()))
        elif m["lb"]:
            out.append(Segment(text="{"))
        elif m["rb"]:
            out.append(Segment(text="}"))
        else:
            tf = m["tf"] or ""
            if tf not in TRANSFORMS:
                raise ValueError(f"unknown transform {tf!r} in phrasing {text!r}; use one of "
                                 f"{sorted(t for t in TRANSFORMS if t)}")
            out.append(Segment(placeholder=m["ph"], transform=tf))
    literal(text[pos:])
    return out


def render(segments: list[Segment], row: dict[str, Any], role_of) -> tuple[str, list[tuple[int, int, str]]]:
    """Fill a parsed template from `row`: the prompt and its labelled (start, end, role) spans."""
    parts: list[str] = []
    spans: list[tuple[int, int, str]] = []
    n = 0
    for s in segments:
        if s.placeholder is not None:
            piece = TRANSFORMS[s.transform](str(row[s.placeholder]))
            role = role_of(s.placeholder)
        else:
            piece, role = s.text, s.role
        if role is not None and piece:
            spans.append((n, n + len(piece), role))
        parts.append(piece)
        n += len(piece)
    return "".join(parts), spans


def parse_spec(data: Any, *, source: str):
    """A `DatasetSpec` (template kind, the default) or a `PromptDatasetSpec` (`kind: prompts`).

    `kind: template` may be written; it is dropped before validation so a template spec's
    dump (and with it every build key and run hash) is the same with or without it."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: a dataset spec must be a YAML mapping")
    kind = data.get("kind", "template")
    if kind not in ("template", "prompts"):
        raise UserError(f"{source}: kind: {kind!r} is not a dataset kind; use template (the "
                        "default: an entity table times phrasings) or prompts (complete prompts)")
    try:
        if kind == "prompts":
            return PromptDatasetSpec.model_validate(data)
        return DatasetSpec.model_validate({k: v for k, v in data.items() if k != "kind"})
    except ValidationError as e:
        raise UserError(validation_message(e, source)) from None


def read_spec_file(path: str | Path):
    p = Path(path)
    return parse_spec(read_yaml_file(p, "dataset spec"), source=str(p))
