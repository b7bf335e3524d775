"""Write the source tables of the two shipped prompt datasets (deterministic bytes):

- data/sources/element-questions.jsonl: the hand-written questions of
  scripts/element_questions.py; counterfactual = another element's symbol with a different
  first letter (so a different first token), seeded per element; group = question style.
- data/sources/bibliography.jsonl: author -> one of their books (the other direction of
  `authors`), from data/sources/authors.csv, in several prompt forms; the answer is the
  author's first listed title that does not start with an article (authors with none are
  left out: " The" says nothing about the author); counterfactual = a title by another author
  with a different first letter, seeded per author; group = prompt form.

    python scripts/make_prompt_datasets.py          # rewrites both tables
"""

from __future__ import annotations

import csv
import json
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from element_questions import QUESTIONS  # noqa: E402

ARTICLES = ("The ", "A ", "An ")
# author -> book prompt forms, written out (group name -> form)
BOOK_FORMS = {
    "statement": "One novel written by {author} is",
    "name-a-book": "Name a book by {author}:",
    "famous": "{author}'s best-known book is",
    "qa": "Q: What is a well-known book by {author}?\nA:",
    "list": "Books by {author}:\n1.",
    "advice": "If you have never read {author}, start with",
}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def element_rows() -> list[dict]:
    symbols = sorted({s for _, s, _, _ in QUESTIONS})
    rows, seen = [], set()
    for name, sym, style, prompt in QUESTIONS:
        if re.search(rf"\b{re.escape(sym)}\b", prompt):
            raise SystemExit(f"the prompt for {name} shows its own symbol: {prompt!r}")
        if prompt in seen:
            raise SystemExit(f"repeated prompt {prompt!r}")
        seen.add(prompt)
        others = [s for s in symbols if s[0] != sym[0]]
        cf = random.Random(f"cf:{name}").choice(others)
        rows.append({"prompt": prompt, "answer": f" {sym}", "counterfactual": f" {cf}",
                     "group": style, "entity": name})
    return rows


def bibliography_rows() -> list[dict]:
    books: dict[str, list[str]] = {}
    with open(ROOT / "data" / "sources" / "authors.csv", newline="") as f:
        for r in csv.DictReader(f):
            books.setdefault(r["author"], []).append(r["title"])
    answer = {a: next((t for t in ts if not t.startswith(ARTICLES)), None)
              for a, ts in books.items()}
    answer = {a: t for a, t in answer.items() if t is not None}
    titles = sorted(answer.values())
    rows = []
    for author, title in answer.items():
        cands = [t for t in titles if t[0] != title[0] and t not in books[author]]
        cf = random.Random(f"cf:{author}").choice(cands)
        for group, form in BOOK_FORMS.items():
            rows.append({"prompt": form.format(author=author), "answer": f" {title}",
                         "counterfactual": f" {cf}", "group": group, "entity": author})
    return rows


def main() -> None:
    out = ROOT / "data" / "sources"
    el, bib = element_rows(), bibliography_rows()
    write_jsonl(out / "element-questions.jsonl", el)
    write_jsonl(out / "bibliography.jsonl", bib)
    print(f"element-questions: {len(el)} prompts, {len({r['entity'] for r in el})} elements, "
          f"groups {sorted({r['group'] for r in el})}")
    print(f"bibliography: {len(bib)} prompts, {len({r['entity'] for r in bib})} authors, "
          f"{len(BOOK_FORMS)} forms")


if __name__ == "__main__":
    main()
