"""Names for slots, from what they hold: the dominant role and the most common tokens.

A slot id ("slot 3") means nothing to a reader; "subject: hydrogen, lithium, …" does. For
each slot of a grouping's `tokens.parquet` (columns slot, role, token, split): the role
share among its training tokens (all tokens where the training split has none) and its most
common tokens, shown as text. Every place a slot appears (report, groups page, `maskshare
groups show`, circuit listing) uses `slot_labels` so the names agree.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import polars as pl

TOKENS_FILE = "tokens.parquet"


def display_token(tok: str) -> str:
    """Byte-level BPE display: 'Ġ' -> space, 'Ċ' -> newline mark."""
    return str(tok).replace("Ġ", " ").replace("Ċ", "\\n")


@dataclass(frozen=True)
class SlotLabel:
    slot: int
    roles: tuple[tuple[str, float], ...]   # (role, share of the slot's tokens), largest first
    tokens: tuple[str, ...]                # most common tokens (display form, stripped)
    n_tokens: int

    @property
    def role(self) -> str:
        """The dominant role; "a/b" when no role holds 60% of the slot's tokens."""
        if not self.roles:
            return "empty"
        (r0, s0), rest = self.roles[0], self.roles[1:]
        return r0 if s0 >= 0.6 or not rest else f"{r0}/{rest[0][0]}"

    @property
    def label(self) -> str:
        """Short name: "subject: hydrogen, lithium, …"."""
        if self.slot == 0:
            return "BOS"
        if not self.tokens:
            return self.role
        more = ", …" if self.n_tokens > len(self.tokens) else ""
        return f"{self.role}: {', '.join(self.tokens)}{more}"

    @property
    def title(self) -> str:
        """`slot N (label)`, the form used in headings."""
        return f"slot {self.slot} ({self.label})"

    @property
    def role_text(self) -> str:
        return ", ".join(f"{r} {s:.0%}" for r, s in self.roles)


def slot_labels(tokens: pl.DataFrame, n_tokens: int = 3) -> dict[int, SlotLabel]:
    """{slot: SlotLabel} for every slot (>= 0) present in a tokens table."""
    t = tokens.filter(pl.col("slot") >= 0)
    if "split" in t.columns and (t["split"] == "train").any():
        t = t.filter(pl.col("split") == "train")
    out: dict[int, SlotLabel] = {}
    for (slot,), sub in t.sort("slot").group_by("slot", maintain_order=True):
        roles = Counter(sub["role"].to_list()) if "role" in sub.columns else Counter()
        n = sub.height
        # sorted by count, then name: the same table gives the same label
        role_shares = tuple((r, c / n) for r, c in sorted(roles.items(), key=lambda x: (-x[1], x[0])))
        words = Counter(w for w in (display_token(x).strip() for x in sub["token"].to_list()) if w)
        top = tuple(w for w, _ in sorted(words.items(), key=lambda x: (-x[1], x[0]))[:n_tokens])
        out[int(slot)] = SlotLabel(int(slot), role_shares, top, len(words))
    return out


def load_slot_labels(group_dir: str | Path, n_tokens: int = 3) -> dict[int, SlotLabel]:
    """Slot labels of a `RUN/groups/<kind>/` folder ({} when it holds no tokens table)."""
    p = Path(group_dir) / TOKENS_FILE
    if not p.is_file():
        return {}
    return slot_labels(pl.read_parquet(p, columns=["slot", "role", "token", "split"]), n_tokens)


def slot_title(labels: dict[int, SlotLabel], slot: int) -> str:
    """`slot N (label)`, or `slot N` when the slot has no label."""
    lab = labels.get(int(slot))
    return lab.title if lab is not None else f"slot {slot}"
