"""Quality and cost of the groupings on the embedded model (elements-symbol).

    MASKSHARE_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/groups_quality.py [--sweep]

Prints, for the default `GroupingConfig` (and with `--sweep` for a few feature / clusterer
options): templated ARI against template positions; free-form purity and ARI against roles
on the training phrasings, ARI and OOD fraction on the held-out phrasings; stability (ARI
between fits with different seeds). The cost for 20,000 tokens: benchmarks/groups_speed.py.

Items come from `maskshare.datasets.build_dataset` when the `elements-symbol` spec is
available; otherwise from a stand-in built here (`--standin` forces it): periodic-table
elements, 6 phrasings (the last held out), entities split 80/20, roles from character
spans (subject = the element name, relation = the marked words, final = the last token),
and no behaviour filter.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np
import polars as pl

from maskshare.config import DatasetRef, GroupingConfig
from maskshare.grouping import grouping_quality, make_grouping

# (template, relation words); {X} is the element name
PHRASINGS = [
    ("The chemical symbol for {X} is", "chemical symbol"),
    ("Which symbol stands for {X} on the periodic table? Answer:", "symbol stands for"),
    ("{X}'s chemical symbol is", "chemical symbol"),
    ("Q: What is the symbol of the element {X}?\nA:", "symbol of"),
    ("In chemistry, {X} is written with the symbol", "written with the symbol"),
    ("Element: {X}\nSymbol:", "Symbol"),  # held out
]
TEMPLATED = [PHRASINGS[0]]


def _row(model, pid, tpl, rel, name, k, split, variant):
    from maskshare.model.models import tokenize_prompt

    tok = model.tokenizer
    text = tpl.replace("{X}", name)
    a = tpl.index("{X}")
    r0 = text.index(rel, a + len(name)) if rel in text[a + len(name):] else text.index(rel)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, roles = [tokenize_prompt(model, "")[0]], ["bos"]
    for i, (s, e) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        mid = (s + e) / 2
        ids.append(i)
        roles.append("subject" if a <= mid < a + len(name) else
                     "relation" if r0 <= mid < r0 + len(rel) else "other")
    roles[-1] = "final"
    return {"prompt_id": pid, "prompt": text, "tokens": ids,
            "token_strs": tok.convert_ids_to_tokens(ids), "roles": roles, "entity": name,
            "phrasing_id": k, "split": split, "variant": variant}


def standin_items(model, variant: str, n_entities: int) -> pl.DataFrame:
    import periodictable

    names = [el.name.capitalize() if False else el.name for el in periodictable.elements
             if el.number > 0][:n_entities]
    rng = np.random.default_rng(0)
    test_ent = set(rng.choice(len(names), max(1, len(names) // 5), replace=False).tolist())
    phr = TEMPLATED if variant == "templated" else PHRASINGS
    rows = []
    for k, (tpl, rel) in enumerate(phr):
        held = variant == "freeform" and k == len(phr) - 1
        for j, n in enumerate(names):
            split = {(False, False): "train", (False, True): "test_entity",
                     (True, False): "test_phrasing", (True, True): "test_both"}[
                (held, j in test_ent)]
            rows.append(_row(model, len(rows), tpl, rel, n, k, split, variant))
    return pl.DataFrame(rows)


def load_items(model, variant: str, n_entities: int, standin: bool) -> tuple[pl.DataFrame, str]:
    if not standin:
        try:
            from maskshare.datasets import build_dataset

            b = build_dataset(DatasetRef(name="elements-symbol", variant=variant), model,
                              progress=False)
            return b.items, "maskshare.datasets elements-symbol"
        except Exception as e:  # noqa: BLE001 - report and fall back
            logging.warning("datasets unavailable (%s): using the stand-in items", e)
    return standin_items(model, variant, n_entities), "stand-in (benchmarks/groups_quality.py)"


def evaluate(cfg: GroupingConfig, model, items, features) -> dict:
    train = items.filter(pl.col("split") == "train")
    idx = np.asarray(items["split"].to_list()) == "train"
    rows = np.repeat(idx, items["tokens"].list.len().to_numpy())
    ftrain = _subset(features, rows)
    t0 = time.perf_counter()
    g = make_grouping(cfg, seed=0).fit(model, train, features=ftrain)
    a = g.assign(model, items, features=features)
    fit_s = time.perf_counter() - t0
    q = grouping_quality(g, a, items)
    q["fit_assign_s"] = fit_s
    return q


def _subset(f, mask):
    from maskshare.grouping.features import TokenFeatures

    return TokenFeatures(f.matrix[mask], f.prompt_id[mask], f.position[mask], f.length[mask],
                         f.names)


def summary(q: dict) -> dict:
    bs = q.get("by_split", {})
    held = [k for k in ("test_phrasing", "test_both") if k in bs]
    out = {"n_slots": q["n_slots"]}
    if "ari_template" in q:
        out["ari_template"] = q["ari_template"]
    if "train" in bs:
        out.update(train_purity=bs["train"].get("purity_roles"),
                   train_ari=bs["train"].get("ari_roles"))
    for h in held:
        out[f"{h}_ari"] = bs[h].get("ari_roles")
        out[f"{h}_purity"] = bs[h].get("purity_roles")
        out[f"{h}_ood"] = bs[h].get("ood_fraction")
    out["fit_assign_s"] = q["fit_assign_s"]
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}


def sweep_configs(base: GroupingConfig, n_layers: int) -> dict[str, GroupingConfig]:
    f = base.features
    half = list(range(n_layers // 2))
    out = {
        "default": base,
        "no_position": base.model_copy(update={"features": f.model_copy(
            update={"position_from_end": False})}),
        "with_position": base.model_copy(update={"features": f.model_copy(
            update={"position_from_end": True})}),
        "early_layers": base.model_copy(update={"features": f.model_copy(
            update={"layers": half})}),
        "plus_to_bos_self_prev": base.model_copy(update={"features": f.model_copy(
            update={"to_bos": True, "to_self": True, "to_prev": True})}),
    }
    for c in ("gmm", "hdbscan"):
        out[c] = base.model_copy(update={"clusterer": c})
    for n in (6, 7, 8, 12):
        out[f"n_slots={n}"] = base.model_copy(update={"n_slots": n})
    out["pca=0.95"] = base.model_copy(update={"pca_components": 0.95})
    out["kmeans"] = base.model_copy(update={"clusterer": "kmeans"})
    out["every_layer"] = base.model_copy(update={"features": f.model_copy(
        update={"layer_start_fraction": 0.0})})
    out["every_feature_every_layer_n12_pca95 (previous default)"] = base.model_copy(update={
        "n_slots": 12, "pca_components": 0.95, "features": f.model_copy(update={
            "layer_start_fraction": 0.0, "to_bos": True, "to_self": True, "to_prev": True})})
    out["float32"] = base.model_copy(update={"features": f.model_copy(
        update={"dtype": "float32"})})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", action="store_true", help="also try other feature/clusterer options")
    ap.add_argument("--standin", action="store_true", help="use the stand-in items")
    ap.add_argument("--entities", type=int, default=60, help="stand-in: number of elements")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from maskshare.grouping.features import items_features
    from maskshare.model.models import load_model

    model = load_model("smollm2-135m")
    base = GroupingConfig()
    results = {}
    for variant in ("templated", "freeform"):
        items, source = load_items(model, variant, args.entities, args.standin)
        n_tok = int(items["tokens"].list.len().sum())
        configs = sweep_configs(base, model.cfg.n_layers) if args.sweep else {"default": base}
        if variant == "templated":
            configs = {k: v for k, v in configs.items() if k in ("default", "with_position")}
        feats: dict[str, object] = {}
        for name, cfg in configs.items():
            key = json.dumps(cfg.features.model_dump(mode="json"), sort_keys=True)
            t0 = time.perf_counter()
            if key not in feats:
                feats[key] = items_features(model, items, cfg.features, batch_size=cfg.batch_size)
            feat_s = time.perf_counter() - t0
            q = evaluate(cfg, model, items, feats[key])
            s = summary(q)
            s["features_s"] = round(feat_s, 2)
            results[f"{variant}/{name}"] = s
            print(json.dumps({"variant": variant, "config": name, "source": source,
                              "prompts": items.height, "tokens": n_tok, **s}), flush=True)
        if variant == "freeform":  # stability: ARI between fits with other seeds
            from maskshare.grouping import stability

            key = json.dumps(base.features.model_dump(mode="json"), sort_keys=True)
            f = feats[key]
            train = items.filter(pl.col("split") == "train")
            rows = np.repeat(items["split"].to_numpy() == "train",
                             items["tokens"].list.len().to_numpy())
            stab = {f"{a}-{b}": round(stability(base, model, train, seeds=(a, b),
                                                features=_subset(f, rows)), 3)
                    for a, b in ((0, 1), (0, 2), (1, 2))}
            print(json.dumps({"variant": variant, "config": "default",
                              "stability_ari_between_seeds": stab}), flush=True)

if __name__ == "__main__":
    main()
