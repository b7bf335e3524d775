"""Write a subject-verb agreement prompt set in the clean/patch format of Sparse Feature
Circuits (one JSON object per line):

    {"clean_prefix": "The teachers near the desk", "clean_answer": " are",
     "patch_prefix": "The teacher near the desk", "patch_answer": " is", "case": "nounpp"}

Four sentence structures (`case`): `simple` ("The teachers"), `nounpp` (subject + a
prepositional phrase whose noun has the other number: "The teachers near the desk"), `rc`
(subject + an object relative clause whose subject has the other number: "The teachers that
the boy likes") and `subjrc` (subject + a subject relative clause whose object has the other
number: "The teachers that like the boy"; Marvin & Linzen's "across a subject relative
clause"). Four verb pairs (is/are, was/were, has/have, does/do). The patch prefix is the
clean one with the subject's number flipped (in `subjrc` with the clause's verb, which agrees
with it), so clean and patch have the same token length in most rows. Deterministic: the same
arguments write the same bytes (`subjrc` rows come last and draw after the others, so the
first three structures' rows are those of the three-structure file).

    python scripts/make_agreement.py [--rows N] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

NOUNS = [("teacher", "teachers"), ("doctor", "doctors"), ("farmer", "farmers"),
         ("student", "students"), ("author", "authors"), ("pilot", "pilots"),
         ("singer", "singers"), ("lawyer", "lawyers"), ("dancer", "dancers"),
         ("officer", "officers"), ("manager", "managers"), ("painter", "painters"),
         ("senator", "senators"), ("driver", "drivers"), ("baker", "bakers"),
         ("guard", "guards"), ("nurse", "nurses"), ("player", "players"),
         ("customer", "customers"), ("engineer", "engineers")]
ATTRACTORS = [("desk", "desks"), ("window", "windows"), ("tree", "trees"), ("car", "cars"),
              ("house", "houses"), ("bridge", "bridges"), ("garden", "gardens"),
              ("table", "tables"), ("station", "stations"), ("tower", "towers")]
PREPS = ["near", "behind", "beside", "across from", "next to"]
RC_VERBS = [("likes", "like"), ("knows", "know"), ("admires", "admire"), ("meets", "meet"),
            ("hates", "hate")]
RC_PEOPLE = [("boy", "boys"), ("girl", "girls"), ("child", "children"), ("woman", "women"),
             ("man", "men")]
VERBS = [(" is", " are"), (" was", " were"), (" has", " have"), (" does", " do")]


def _row(clean: str, patch: str, plural: bool, verb: tuple[str, str], case: str) -> dict:
    sing, plur = verb
    return {"clean_prefix": clean, "clean_answer": plur if plural else sing,
            "patch_prefix": patch, "patch_answer": sing if plural else plur, "case": case}


def _subjects():
    """(subject, its number-flipped twin, plural, verb pair) for every noun, number and verb
    pair, in the order every structure writes its rows (and draws from the rng)."""
    for s, p in NOUNS:
        for plural in (False, True):
            subj, other = (p, s) if plural else (s, p)
            for verb in VERBS:
                yield subj, other, plural, verb


def simple_rows() -> list[dict]:
    return [_row(f"The {subj}", f"The {other}", plural, verb, "simple")
            for subj, other, plural, verb in _subjects()]


def nounpp_rows(rng: random.Random) -> list[dict]:
    out = []
    for subj, other, plural, verb in _subjects():
        a_s, a_p = rng.choice(ATTRACTORS)
        attr = a_s if plural else a_p  # the attractor has the other number
        prep = rng.choice(PREPS)
        out.append(_row(f"The {subj} {prep} the {attr}", f"The {other} {prep} the {attr}",
                        plural, verb, "nounpp"))
    return out


def rc_rows(rng: random.Random) -> list[dict]:
    out = []
    for subj, other, plural, verb in _subjects():
        (ps, pp), (vs, vp) = rng.choice(RC_PEOPLE), rng.choice(RC_VERBS)
        inner = f"the {ps} {vs}" if plural else f"the {pp} {vp}"
        out.append(_row(f"The {subj} that {inner}", f"The {other} that {inner}",
                        plural, verb, "rc"))
    return out


def subjrc_rows(rng: random.Random) -> list[dict]:
    out = []
    for subj, other, plural, verb in _subjects():
        (os_, op), (vs, vp) = rng.choice(RC_PEOPLE), rng.choice(RC_VERBS)
        obj = os_ if plural else op  # the clause's object has the other number
        clean_v, patch_v = (vp, vs) if plural else (vs, vp)
        out.append(_row(f"The {subj} that {clean_v} the {obj}",
                        f"The {other} that {patch_v} the {obj}", plural, verb, "subjrc"))
    return out


def make(rows: int | None, seed: int) -> list[dict]:
    rng = random.Random(seed)
    allrows = simple_rows() + nounpp_rows(rng) + rc_rows(rng) + subjrc_rows(rng)
    if rows is not None:  # a larger file for timing: more draws of the random structures
        while len(allrows) < rows:
            allrows += nounpp_rows(rng) + rc_rows(rng)
        allrows = allrows[:rows]
    return allrows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=None, help="pad to this many rows (timing)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="data/examples/agreement.jsonl")
    a = ap.parse_args()
    rows = make(a.rows, a.seed)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()
