"""Write the shipped example prompt sets of the `mib` and `recall` import formats (one JSON
object per line, each in its own format's field names; docs/formats.md):

- data/examples/ioi-mib.jsonl: indirect-object identification in the row shape of the
  Mechanistic Interpretability Benchmark ("When Mary and John went to the store, John gave a
  drink to" -> " Mary"): `prompt`, `metadata.{indirect_object, subject, random_c, template,
  place, object}` and two counterfactual objects, `s2_io_flip_counterfactual` (the second
  mention of the subject replaced by the indirect object: the answer flips) and
  `abc_counterfactual` (replaced by a third name). About a quarter of the names take
  several tokens in SmolLM2's tokenizer (" Bartholomew": 3), so some clean/counterfactual
  pairs differ in token length. `metadata.template` is this file's own addition (the
  template's name), to serve as a group.
- data/examples/recall.jsonl: factual recall, `subject`, `attribute`, `relation`, `prompt`,
  several phrasings per relation: country -> capital, country -> language, country or
  city -> continent, person -> occupation, element -> chemical symbol. Facts written by
  hand; countries with several official languages, contested capitals and transcontinental
  countries are left out so every phrasing is true.

Deterministic: the same arguments write the same bytes.

    python scripts/make_examples.py [--out-dir data/examples]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

# ---------------------------------------------------------------------------- IOI (mib)
SHORT_NAMES = ["Mary", "John", "Alice", "Bob", "Sarah", "Tom", "James", "Emma", "David",
               "Lisa", "Michael", "Anna", "Daniel", "Kate", "Paul", "Laura", "Mark", "Rachel",
               "Peter", "Susan", "Kevin", "Helen"]
LONG_NAMES = ["Maximilian", "Penelope", "Xavier", "Ingrid", "Ignatius", "Bartholomew",
              "Siobhan", "Rosalind", "Bernadette", "Gwendolyn"]
PLACES = ["store", "park", "school", "station", "garden", "restaurant", "library", "beach",
          "hospital", "office"]
OBJECTS = ["drink", "book", "letter", "ring", "bag", "gift", "key", "flower", "ball", "hat"]
# {A} and {B} are introduced, {S} is mentioned again and gives to the other (the answer)
TEMPLATES = {
    "went": "When {A} and {B} went to the {place}, {S} gave a {object} to",
    "then": "Then, {A} and {B} had a lot of fun at the {place}. {S} gave a {object} to",
    "after": "After {A} and {B} went to the {place}, {S} handed the {object} to",
    "while": "While {A} and {B} were working at the {place}, {S} passed a {object} to",
    "friends": "Friends {A} and {B} found a {object} at the {place}. {S} gave it to",
    "afterwards": "Afterwards, {A} and {B} walked to the {place}, and {S} threw the {object} to",
}
IOI_PER_TEMPLATE = 40


def _name(rng: random.Random, avoid: set[str]) -> str:
    pool = LONG_NAMES if rng.random() < 0.25 else SHORT_NAMES
    return rng.choice([n for n in pool if n not in avoid])


def ioi_rows(seed: int = 0) -> list[dict]:
    rng = random.Random(f"ioi:{seed}")
    rows = []
    for tname, text in TEMPLATES.items():
        for i in range(IOI_PER_TEMPLATE):
            io = _name(rng, set())
            s = _name(rng, {io})
            c = _name(rng, {io, s})
            place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
            a, b = (io, s) if i % 2 == 0 else (s, io)  # ABBA and BABA orders
            fill = {n: text.format(A=a, B=b, S=n, place=place, object=obj) for n in (s, io, c)}
            rows.append({"prompt": fill[s],
                         "metadata": {"indirect_object": io, "subject": s, "random_c": c,
                                      "template": tname, "order": "ABBA" if i % 2 == 0
                                      else "BABA", "place": place, "object": obj},
                         "s2_io_flip_counterfactual": {"prompt": fill[io]},
                         "abc_counterfactual": {"prompt": fill[c]}})
    return rows


# -------------------------------------------------------------------------------- recall
CAPITALS = [("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome"), ("Germany", "Berlin"),
            ("Japan", "Tokyo"), ("China", "Beijing"), ("Russia", "Moscow"), ("Egypt", "Cairo"),
            ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Austria", "Vienna"),
            ("Poland", "Warsaw"), ("Sweden", "Stockholm"), ("Norway", "Oslo"),
            ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Ireland", "Dublin"),
            ("Hungary", "Budapest"), ("Belgium", "Brussels"), ("Canada", "Ottawa"),
            ("Argentina", "Buenos Aires"), ("Peru", "Lima"), ("Cuba", "Havana"),
            ("Kenya", "Nairobi"), ("Iran", "Tehran"), ("Iraq", "Baghdad"),
            ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("South Korea", "Seoul"),
            ("Pakistan", "Islamabad"), ("Saudi Arabia", "Riyadh"), ("Turkey", "Ankara"),
            ("Australia", "Canberra"), ("Romania", "Bucharest"), ("Chile", "Santiago")]
LANGUAGES = [("France", "French"), ("Spain", "Spanish"), ("Italy", "Italian"),
             ("Germany", "German"), ("Japan", "Japanese"), ("China", "Chinese"),
             ("Russia", "Russian"), ("Portugal", "Portuguese"), ("Brazil", "Portuguese"),
             ("Greece", "Greek"), ("Poland", "Polish"), ("Sweden", "Swedish"),
             ("Norway", "Norwegian"), ("Denmark", "Danish"), ("the Netherlands", "Dutch"),
             ("Hungary", "Hungarian"), ("Turkey", "Turkish"), ("Mexico", "Spanish"),
             ("Argentina", "Spanish"), ("Iran", "Persian"), ("Thailand", "Thai"),
             ("Vietnam", "Vietnamese"), ("South Korea", "Korean"), ("Egypt", "Arabic"),
             ("Saudi Arabia", "Arabic"), ("the Czech Republic", "Czech"),
             ("Romania", "Romanian"), ("Indonesia", "Indonesian"),
             ("Israel", "Hebrew")]
CONTINENTS = [("France", "Europe"), ("Germany", "Europe"), ("Poland", "Europe"),
              ("Sweden", "Europe"), ("Italy", "Europe"), ("Portugal", "Europe"),
              ("Japan", "Asia"), ("China", "Asia"), ("India", "Asia"), ("Thailand", "Asia"),
              ("Vietnam", "Asia"), ("Mongolia", "Asia"), ("Nepal", "Asia"),
              ("Kenya", "Africa"), ("Nigeria", "Africa"), ("Morocco", "Africa"),
              ("Ethiopia", "Africa"), ("Ghana", "Africa"), ("Senegal", "Africa"),
              ("Tanzania", "Africa"), ("Brazil", "South America"),
              ("Argentina", "South America"), ("Peru", "South America"),
              ("Colombia", "South America"), ("Bolivia", "South America"),
              ("Uruguay", "South America"), ("Canada", "North America"),
              ("Mexico", "North America"), ("Guatemala", "North America"),
              ("Honduras", "North America")]
CITY_CONTINENTS = [("Paris", "Europe"), ("Berlin", "Europe"), ("Tokyo", "Asia"),
                   ("Bangkok", "Asia"), ("Nairobi", "Africa"), ("Lagos", "Africa"),
                   ("Lima", "South America"), ("Buenos Aires", "South America"),
                   ("Toronto", "North America"), ("Chicago", "North America")]
OCCUPATIONS = [("Pablo Picasso", "painter"), ("Vincent van Gogh", "painter"),
               ("Claude Monet", "painter"), ("Rembrandt", "painter"),
               ("Wolfgang Amadeus Mozart", "composer"), ("Ludwig van Beethoven", "composer"),
               ("Johann Sebastian Bach", "composer"), ("Pyotr Ilyich Tchaikovsky", "composer"),
               ("Charles Dickens", "novelist"), ("Jane Austen", "novelist"),
               ("Leo Tolstoy", "novelist"), ("Virginia Woolf", "novelist"),
               ("Albert Einstein", "physicist"), ("Isaac Newton", "physicist"),
               ("Niels Bohr", "physicist"), ("Max Planck", "physicist"),
               ("Richard Feynman", "physicist"), ("Dmitri Mendeleev", "chemist"),
               ("Antoine Lavoisier", "chemist"), ("Linus Pauling", "chemist"),
               ("Plato", "philosopher"), ("Aristotle", "philosopher"),
               ("Socrates", "philosopher"), ("Immanuel Kant", "philosopher"),
               ("Friedrich Nietzsche", "philosopher")]
SYMBOLS = [("gold", "Au"), ("silver", "Ag"), ("iron", "Fe"), ("copper", "Cu"), ("lead", "Pb"),
           ("tin", "Sn"), ("sodium", "Na"), ("potassium", "K"), ("mercury", "Hg"),
           ("oxygen", "O"), ("hydrogen", "H"), ("carbon", "C"), ("nitrogen", "N"),
           ("helium", "He"), ("neon", "Ne"), ("calcium", "Ca"), ("zinc", "Zn"),
           ("sulfur", "S"), ("chlorine", "Cl"), ("magnesium", "Mg"), ("silicon", "Si"),
           ("uranium", "U"), ("platinum", "Pt"), ("nickel", "Ni"), ("tungsten", "W")]
RELATIONS = {  # relation -> (facts, phrasings); {} is the subject
    "capital": (CAPITALS, ["The capital of {} is", "{}'s capital city is",
                           "The capital city of {} is called"]),
    "language": (LANGUAGES, ["The most widely spoken language in {} is",
                             "In {}, most people speak", "People in {} mostly speak"]),
    "continent": (CONTINENTS, ["{} is a country in", "{} is located on the continent of",
                               "The continent that {} is part of is"]),
    "continent-city": (CITY_CONTINENTS, ["The city of {} is on the continent of",
                                         "{} is a city on the continent of"]),
    "occupation": (OCCUPATIONS, ["{} was a famous", "By profession, {} was a",
                                 "{} is best known as a"]),
    "symbol": (SYMBOLS, ["The chemical symbol for {} is", "On the periodic table, {} is written as",
                         "The element {} has the chemical symbol"]),
}


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def recall_rows() -> list[dict]:
    rows = []
    for rel, (facts, forms) in RELATIONS.items():
        relation = "continent" if rel == "continent-city" else rel
        for subject, attribute in facts:
            for form in forms:
                prompt = form.format(subject)
                rows.append({"subject": subject, "attribute": attribute, "relation": relation,
                             "prompt": _cap(prompt) if form.startswith("{}") else prompt})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", type=Path, default=Path("data/examples"))
    args = ap.parse_args(argv)
    for name, rows in (("ioi-mib.jsonl", ioi_rows()), ("recall.jsonl", recall_rows())):
        write_jsonl(args.out_dir / name, rows)
        print(f"{args.out_dir / name}: {len(rows)} rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
