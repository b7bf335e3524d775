"""Offline training text for the embedded SAE set, assembled from what is on the machine.

No public text corpus ships with any package and the hub is unreachable, so the text is
built from these sources, all made locally:

- `sampled`: text the embedded model writes itself from varied openings
  (`maskshare.saes.corpus_sampling`): the most in-distribution text there is.
- `doc`: prose documentation of installed distributions: the long description in each
  `*.dist-info/METADATA` (the package's README) and every `*.md` / `*.rst` file.
- `docstring`: module, class and function docstrings of the distributions' `*.py` files
  (parsed with `ast`, never imported).
- `code`: the `*.py` source files themselves.
- `elements`: short factual sentences about the 118 chemical elements built from the
  `periodictable` package (names, symbols, atomic numbers, masses, densities), e.g.
  "The chemical symbol for gold is Au." Training and held-out text use disjoint sentence
  templates.

Files are attributed to their distribution through each distribution's RECORD
(`importlib.metadata`); files no distribution owns are not used. Distributions are split
by a seeded shuffle into training and held-out sets, so held-out text comes from
*different distributions* (and therefore different files) than training text. Within a
split, documents are drawn in a seeded order until each source's token budget is met;
each document is cut to `max_doc_chars`. Documents of one source are joined with blank
lines and cut into rows of `context_size` tokens, each starting with the model's BOS;
rows of all sources are then shuffled together (seeded). The result is deterministic
given the seed and the installed packages; its sha256 (over the token rows) and the list
of distributions and files used are recorded in the corpus description.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import logging
import random
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from maskshare.errors import UserError
from maskshare.saes.corpus_sampling import SamplingConfig, sampling_recipe
from maskshare.validation import Strict

logger = logging.getLogger(__name__)

Split = Literal["train", "heldout"]
SOURCES = ("sampled", "doc", "docstring", "code", "elements")
Sampler = Callable[[str, int], "torch.Tensor"]  # (split, n_rows) -> token rows

# sentence templates about elements; training and held-out text use disjoint templates
TRAIN_TEMPLATES = (
    "The chemical symbol for {name} is {sym}.",
    "{Name} has the chemical symbol {sym} and atomic number {num}.",
    "The element {name} ({sym}) has an atomic mass of {mass}.",
    "{sym} is the symbol for {name}.",
    "Element {num} is {name}, whose symbol is {sym}.",
    "{Name}'s chemical symbol is {sym}.",
    "On the periodic table, {name} is written as {sym}.",
    "Q: What is the chemical symbol of {name}?\nA: {sym}",
    "The symbol {sym} stands for {name}.",
    'symbols["{name}"] = "{sym}"',
    "Which symbol stands for {name} on the periodic table? {sym}.",
    "{Name} is a chemical element with symbol {sym}.",
)
HELDOUT_TEMPLATES = (
    "{Name} is element number {num}; its symbol is {sym}.",
    "Which element has the symbol {sym}? It is {name}.",
    "The atomic number of {name} is {num}.",
    "{Name} (symbol: {sym}) has a density of {density} g/cm3.",
)


class CorpusConfig(Strict):
    """What text to assemble and how much of it (every default in one place)."""

    seed: int = 0
    context_size: int = Field(default=128, ge=8)
    train_tokens: int = Field(default=2_100_000, ge=1)
    heldout_tokens: int = Field(default=32_768, ge=1)
    heldout_fraction: float = Field(default=0.2, gt=0, lt=1,
                                    description="fraction of distributions held out")
    mix: dict[str, float] = Field(
        default_factory=lambda: {"sampled": 0.58, "doc": 0.12, "docstring": 0.12, "code": 0.12,
                                 "elements": 0.06},
        description="share of tokens per source")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    max_doc_chars: int = Field(default=6000, ge=100)
    min_doc_chars: int = Field(default=200, ge=1)
    site_packages: list[str] | None = Field(
        default=None, description="folders to read (default: this interpreter's site-packages)")


@dataclass(frozen=True)
class SourceFile:
    dist: str
    path: str  # absolute
    kind: str  # doc | docstring | code


@dataclass
class Corpus:
    """Token rows ([rows, context_size], BOS first) for training and held-out text."""

    train: torch.Tensor
    heldout: torch.Tensor
    description: dict[str, Any] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return self.description["sha256"]


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def default_site_packages() -> list[str]:
    return [sysconfig.get_paths()["purelib"]]


def list_sources(site_packages: list[str]) -> list[SourceFile]:
    """Every usable file of every installed distribution, sorted (deterministic)."""
    return list(_list_sources(tuple(str(p) for p in site_packages)))


@functools.lru_cache(maxsize=4)
def _list_sources(site_packages: tuple[str, ...]) -> tuple[SourceFile, ...]:
    out: set[SourceFile] = set()
    for dist in metadata.distributions(path=list(site_packages)):
        name = dist.metadata["Name"]
        if not name or not dist.files:
            continue
        for f in dist.files:
            p = str(f)
            if "__pycache__" in p or p.startswith(".."):
                continue
            low = p.lower()
            if low.endswith(".dist-info/metadata") or low.endswith((".md", ".rst")):
                kinds = ("doc",)
            elif low.endswith(".py"):
                kinds = ("docstring", "code")
            else:
                continue
            full = str(Path(dist.locate_file(f)))
            out.update(SourceFile(_norm(name), full, k) for k in kinds)
    return tuple(sorted(out, key=lambda s: (s.dist, s.path, s.kind)))


def split_distributions(dists: list[str], seed: int, heldout_fraction: float
                        ) -> tuple[list[str], list[str]]:
    """Seeded split of distribution names into (train, heldout); both non-empty."""
    names = sorted(set(dists))
    if len(names) < 2:
        raise UserError("need at least two installed distributions to hold some out")
    random.Random(f"split-{seed}").shuffle(names)
    n_held = min(len(names) - 1, max(1, round(heldout_fraction * len(names))))
    return sorted(names[n_held:]), sorted(names[:n_held])


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def document_text(src: SourceFile, max_chars: int) -> str:
    """The text one source file contributes (possibly empty)."""
    raw = _read(src.path)
    if src.kind == "doc" and src.path.endswith("METADATA"):
        raw = raw.split("\n\n", 1)[1] if "\n\n" in raw else ""  # the long description
    elif src.kind == "docstring":
        try:
            tree = ast.parse(raw)
        except (SyntaxError, ValueError):
            return ""
        docs = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                d = ast.get_docstring(node)
                if d and len(d) > 40:
                    docs.append(d)
        raw = "\n\n".join(docs)
    text = raw.strip()[:max_chars]
    if not text:
        return ""
    ascii_share = sum(c.isascii() for c in text) / len(text)
    return text if ascii_share > 0.95 else ""


def element_sentences(split: Split, seed: int) -> list[str]:
    """One sentence per (element, template) for the split's templates, seeded order."""
    import periodictable

    templates = TRAIN_TEMPLATES if split == "train" else HELDOUT_TEMPLATES
    out = []
    for el in periodictable.elements:
        if el.number == 0:
            continue
        density = f"{el.density:g}" if el.density else "unknown"
        fields = dict(name=el.name, Name=el.name.capitalize(), sym=el.symbol, num=el.number,
                      mass=f"{el.mass:.2f}", density=density)
        out += [t.format(**fields) for t in templates]
    random.Random(f"elements-{split}-{seed}").shuffle(out)
    return out


def _pack(docs: list[list[int]], sep: list[int], bos: int, ctx: int, n_rows: int
          ) -> list[list[int]]:
    body = ctx - 1
    stream: list[int] = []
    for d in docs:
        stream += d + sep
        if len(stream) >= body * n_rows:
            break
    return [[bos] + stream[i:i + body] for i in range(0, body * n_rows, body)
            if len(stream[i:i + body]) == body]


def _source_rows(kind: str, split: Split, files: list[SourceFile], tokenizer, cfg: CorpusConfig,
                 n_rows: int, used: list[str], sampler: Sampler | None = None
                 ) -> list[list[int]]:
    if n_rows <= 0:
        return []
    if kind == "sampled":
        if sampler is None:
            raise UserError("corpus.mix has 'sampled' text but no model to sample from")
        used.append(f"sampled:{split} x{n_rows} rows")
        return sampler(split, n_rows).tolist()
    bos = tokenizer.bos_token_id
    sep = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    need = n_rows * (cfg.context_size - 1)
    docs: list[list[int]] = []
    total = 0
    if kind == "elements":
        # paragraphs of a few sentences; repeated (re-shuffled) passes until the budget is met
        rep = 0
        while total < need:
            sents = element_sentences(split, cfg.seed + 1000 * rep)
            for i in range(0, len(sents), 6):
                ids = tokenizer(" ".join(sents[i:i + 6]), add_special_tokens=False)["input_ids"]
                docs.append(ids)
                total += len(ids) + len(sep)
            rep += 1
        used.append(f"periodictable:{split}-templates x{rep}")
    else:
        order = [f for f in files if f.kind == kind]
        random.Random(f"{kind}-{split}-{cfg.seed}").shuffle(order)
        for f in order:
            if total >= need:
                break
            text = document_text(f, cfg.max_doc_chars)
            if len(text) < cfg.min_doc_chars:
                continue
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            docs.append(ids)
            total += len(ids) + len(sep)
            used.append(f"{kind}:{f.path}")
    rows = _pack(docs, sep, bos, cfg.context_size, n_rows)
    if len(rows) < n_rows:
        logger.warning("only %d of %d %s rows of %s text available", len(rows), n_rows, split, kind)
    return rows


def _split_rows(split: Split, files: list[SourceFile], tokenizer, cfg: CorpusConfig,
                n_tokens: int, used: list[str], sampler: Sampler | None = None) -> torch.Tensor:
    n_rows = max(1, -(-n_tokens // cfg.context_size))
    unknown = set(cfg.mix) - set(SOURCES)
    if unknown:
        raise UserError(f"corpus.mix has unknown source(s) {sorted(unknown)}; use {SOURCES}")
    total_w = sum(cfg.mix.values())
    if total_w <= 0:
        raise UserError("corpus.mix must give some source a positive share")
    rows: list[list[int]] = []
    kinds = [k for k in SOURCES if cfg.mix.get(k, 0) > 0]
    for i, kind in enumerate(kinds):
        n = round(n_rows * cfg.mix[kind] / total_w) if i < len(kinds) - 1 else n_rows - len(rows)
        rows += _source_rows(kind, split, files, tokenizer, cfg, n, used, sampler)
    random.Random(f"rows-{split}-{cfg.seed}").shuffle(rows)
    if not rows:
        raise UserError(f"no {split} text could be assembled: check corpus.site_packages")
    return torch.tensor(rows, dtype=torch.long)


def build_corpus(tokenizer, cfg: CorpusConfig | None = None, sampler: Sampler | None = None
                 ) -> Corpus:
    """Assemble training and held-out token rows (deterministic given `cfg.seed`; the
    `sampled` rows come from `sampler(split, n_rows)`, needed when the mix has them)."""
    cfg = cfg or CorpusConfig()
    if tokenizer.bos_token_id is None:
        raise UserError("the tokenizer has no BOS token")
    site = cfg.site_packages or default_site_packages()
    files = list_sources(site)
    if not files:
        raise UserError(f"no installed distributions with text found in {site}")
    train_d, held_d = split_distributions([f.dist for f in files], cfg.seed, cfg.heldout_fraction)
    held_set = set(held_d)
    used_train: list[str] = []
    used_held: list[str] = []
    train = _split_rows("train", [f for f in files if f.dist not in held_set], tokenizer, cfg,
                        cfg.train_tokens, used_train, sampler)
    heldout = _split_rows("heldout", [f for f in files if f.dist in held_set], tokenizer, cfg,
                          cfg.heldout_tokens, used_held, sampler)
    h = hashlib.sha256()
    for t in (train, heldout):
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().astype("<i8").tobytes())
    site_root = [str(Path(s)) for s in site]

    def rel(items: list[str]) -> list[str]:
        out = []
        for u in items:
            for s in site_root:
                u = u.replace(s + "/", "")
            out.append(u)
        return out

    description = {
        "what": __doc__.split("\n\n")[1].replace("\n", " "),
        "config": cfg.model_dump(mode="json"),
        "site_packages": site_root,
        "train_distributions": train_d,
        "heldout_distributions": held_d,
        "train_rows": int(train.shape[0]), "heldout_rows": int(heldout.shape[0]),
        "train_tokens": int(train.numel()), "heldout_tokens": int(heldout.numel()),
        "train_sources": rel(used_train), "heldout_sources": rel(used_held),
        "element_templates": {"train": list(TRAIN_TEMPLATES), "heldout": list(HELDOUT_TEMPLATES)},
        **({"sampling": sampling_recipe()} if cfg.mix.get("sampled", 0) > 0 else {}),
        "sha256": h.hexdigest(),
    }
    return Corpus(train=train, heldout=heldout, description=description)
