"""Issue 22, `rc` under pinning: are the tokens a pinned slot gets on new structures out of
distribution for it, in the attention features the grouping clusters on?

    .venv/bin/python benchmarks/pinned_ood.py RUN [--json OUT]

A pinned slot (`pin_final`, `pin_last`) takes a token by its position alone, so the grouping
never measures how far it is from the slot's training tokens (its distance is NaN and it is
never out of distribution). Here, from a finished run's attention grouping: every item's
token features (the grouping's own feature pass), reduced by its fitted scaler and PCA; per
pinned slot but BOS, the centroid of its training tokens and the 99th percentile of their
distances to it (the clustered slots' rule); then per split and group (`phrasing`), per
pinned slot, the share of its tokens beyond that percentile and the most common of them.
Writes nothing into the run.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    from maskshare.grouping.registry import load_grouping
    from maskshare.run.layout import RunLayout
    from maskshare.run.resources import get_model, load_run_config
    from maskshare.run.variants import main_variant

    run = Path(a.run)
    lay = RunLayout(run)
    cfg = load_run_config(run)
    v = main_variant(cfg)
    g = load_grouping(lay.groups(v.grouping))
    items = pl.read_parquet(lay.items).sort("prompt_id")
    f = g.features(get_model(cfg), items)
    r = g.reduce(f.matrix)
    tok = pl.read_parquet(lay.tokens(v.grouping)).sort(["prompt_id", "position"])
    key = pl.DataFrame({"prompt_id": f.prompt_id, "position": f.position, "row": np.arange(len(f))})
    tok = tok.join(key, on=["prompt_id", "position"], how="left").join(
        items.select("prompt_id", "phrasing"), on="prompt_id", how="left")
    rows = tok["row"].to_numpy()
    out: dict = {"run": run.name, "slots": {}}
    for s in range(1, g.n_pinned):
        name = g.slot_names[s]
        mine = tok.filter(pl.col("slot") == s)
        train = mine.filter(pl.col("split") == "train")
        centre = r[train["row"].to_numpy()].mean(axis=0)
        d = np.linalg.norm(r[rows] - centre, axis=1)
        tok = tok.with_columns(pl.Series(f"d{s}", d))
        thr = float(np.percentile(d[(tok["slot"] == s).to_numpy()
                                    & (tok["split"] == "train").to_numpy()], 99))
        per = {}
        for (split, group), grp in tok.filter(pl.col("slot") == s).group_by(
                ["split", "phrasing"], maintain_order=True):
            far = grp[f"d{s}"].to_numpy() > thr
            words = Counter(grp.filter(pl.Series(far))["token"].to_list()).most_common(3)
            per[f"{split}:{group}"] = {"n": grp.height, "ood": float(far.mean()),
                                       "ood_tokens": words}
        out["slots"][name] = {"threshold": thr, "by_split": per}
        print(f"slot {name} (threshold {thr:.2f}):")
        for k, x in sorted(per.items()):
            print(f"  {k:>28}: n {x['n']:>4}  OOD {x['ood']:.2f}  {x['ood_tokens']}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
