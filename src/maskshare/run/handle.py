"""A finished run from Python (a notebook, a script): `maskshare.open_run(RUN_DIR)`.

    run = maskshare.open_run("data/runs/recall-<hash>")
    run.circuit()                               # polars: one row per kept (slot, SAE, latent)
    run.slots(["The capital of Peru is"])       # polars: one row per token, with its slot
    res = run.evaluate([{"prompt": "The capital of Peru is", "answer": " Lima",
                         "counterfactual": " Paris"}])   # what `maskshare eval --json` prints
    with run.applied(model, ablation="slot-mean"):
        logits = model("The capital of Peru is")        # the circuit's forward pass

Every method takes the circuit the CLI takes by default (the run's main variant at its chosen
lambda, first seed) or `variant=`, `lam=`, `seed=`. `circuit()` has the columns of the
report's circuit listing (`masks.circuit.circuit_summary`, ranked as `report.circuit` ranks them):
`slot`, `slot_name` (report/slot_names.py), `hook`, `layer`, `latent`, `theta` (the mask logit; kept
where > 0), `mean_activation` (the latent's mean over the slot's training tokens),
`neuronpedia` (a URL where the SAE release has one, else null), plus `n_slot_tokens`.
`maskshare export` writes this table (docs/export.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import polars as pl

from maskshare.errors import UserError
from maskshare.evaluation.applied import AppliedCircuit, check_ablation
from maskshare.evaluation.apply import evaluate_prompts, read_prompts, resolve_circuit
from maskshare.grouping import load_grouping
from maskshare.masks.checkpoints import TrainResult
from maskshare.masks.circuit import circuit_summary
from maskshare.masks.masking import MaskedModel, binarize
from maskshare.masks.slot_stats import SlotStats
from maskshare.model.models import bos_id, tokenize_prompt
from maskshare.report.slot_names import load_slot_labels
from maskshare.run.layout import RunLayout
from maskshare.run.resources import get_model, get_saes, load_run_config

CIRCUIT_SCHEMA = {"slot": pl.Int64, "slot_name": pl.String, "hook": pl.String,
                  "layer": pl.Int64, "latent": pl.Int64, "theta": pl.Float64,
                  "mean_activation": pl.Float64, "neuronpedia": pl.String,
                  "n_slot_tokens": pl.Int64}
SLOTS_SCHEMA = {"prompt_index": pl.Int64, "prompt": pl.String, "position": pl.Int64,
                "token_id": pl.Int64, "token": pl.String, "slot": pl.Int64,
                "slot_name": pl.String}


class Run:
    """A run directory (config.yaml, its stages; see `open_run`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not RunLayout(self.path).config.is_file():
            raise UserError(f"{self.path} is not a run directory (no config.yaml)")
        self.config = load_run_config(self.path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    # ---- what the circuit is ----
    def resolve(self, variant: str | None = None, lam: float | None = None,
                seed: int | None = None):
        """(config, Variant, lambda, seed, masks dir) of the circuit (apply.resolve_circuit)."""
        return resolve_circuit(self.path, variant, lam, seed)

    def slot_labels(self, variant: str | None = None) -> dict:
        _, v, *_ = self.resolve(variant)
        return load_slot_labels(RunLayout(self.path).groups(v.grouping))

    def circuit(self, variant: str | None = None, lam: float | None = None,
                seed: int | None = None) -> pl.DataFrame:
        """One row per kept (slot, SAE, latent), BOS left out (it is never ablated); by slot,
        then hook (shallow to deep), then theta (largest first), then latent."""
        cfg, v, lam, seed, mdir = self.resolve(variant, lam, seed)
        layout = RunLayout(self.path)
        theta = TrainResult.load(mdir).theta
        stats = SlotStats.load(layout.slot_stats(v.grouping))
        labels = load_slot_labels(layout.groups(v.grouping))
        summary = circuit_summary(binarize(theta), get_saes(cfg), stats)
        rows = []
        for s in summary["slots"]:
            name = labels[s["slot"]].label if s["slot"] in labels else f"slot {s['slot']}"
            for r in s["latents"]:
                rows.append({"slot": s["slot"], "slot_name": name, "hook": r["hook"],
                             "layer": r["layer"], "latent": r["latent"],
                             "theta": float(theta[r["hook"]][s["slot"], r["latent"]]),
                             "mean_activation": r["mean_activation"],
                             "neuronpedia": r["neuronpedia"],
                             "n_slot_tokens": s.get("n_train_tokens")})
        order = {h: i for i, h in enumerate(summary["hooks"])}
        df = pl.DataFrame(rows, schema=CIRCUIT_SCHEMA)
        return (df.with_columns(pl.col("hook").replace_strict(order, return_dtype=pl.Int64)
                                .alias("_h"))
                .sort(["slot", "_h", "theta", "latent"], descending=[False, False, True, False])
                .drop("_h"))

    def slot_table(self, variant: str | None = None, lam: float | None = None,
                   seed: int | None = None) -> pl.DataFrame:
        """One row per slot of the circuit's grouping (BOS is slot 0): `slot`, `slot_name`,
        `role` (the dominant role of its training tokens), `top_tokens`, `n_train_tokens`
        (tokens of the training split in the slot), `n_kept` (latents kept there)."""
        _, v, lam, seed, _ = self.resolve(variant, lam, seed)
        labels = self.slot_labels(variant)
        counts = SlotStats.load(RunLayout(self.path).slot_stats(v.grouping)).counts
        kept = self.circuit(variant, lam, seed).group_by("slot").len()
        n_kept = dict(zip(kept["slot"], kept["len"], strict=True))
        rows = [{"slot": s, "slot_name": labels[s].label if s in labels else f"slot {s}",
                 "role": "bos" if s == 0 else labels[s].role if s in labels else None,
                 "top_tokens": list(labels[s].tokens) if s in labels else [],
                 "n_train_tokens": int(counts[s]), "n_kept": int(n_kept.get(s, 0))}
                for s in range(len(counts))]
        return pl.DataFrame(rows, schema={"slot": pl.Int64, "slot_name": pl.String,
                                          "role": pl.String, "top_tokens": pl.List(pl.String),
                                          "n_train_tokens": pl.Int64, "n_kept": pl.Int64})

    # ---- new prompts ----
    def model(self):
        """The run's model (a HookedSAETransformer without SAEs attached; loaded once per
        process), the one `applied` splices the circuit into."""
        return get_model(self.config)

    def tokens(self, prompt: str):
        """Token ids [1, P] of `prompt` as the run tokenises prompts (one BOS first)."""
        import torch

        return torch.as_tensor([tokenize_prompt(get_model(self.config), prompt)])

    def slots(self, prompts: str | Iterable[str], variant: str | None = None) -> pl.DataFrame:
        """The slot of every token (BOS included, slot 0) of each prompt, from the run's
        fitted grouping without refitting (what `maskshare eval` and `groups show` use)."""
        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not texts:
            return pl.DataFrame(schema=SLOTS_SCHEMA)
        cfg, v, *_ = self.resolve(variant)
        model = get_model(cfg)
        grouping = load_grouping(RunLayout(self.path).groups(v.grouping))
        toks = [tokenize_prompt(model, t) for t in texts]
        slots = grouping.assign_tokens(model, toks)
        labels = self.slot_labels(variant)
        rows = []
        for i, (text, ids, sl) in enumerate(zip(texts, toks, slots, strict=True)):
            for pos, (t, s) in enumerate(zip(ids, sl, strict=True)):
                rows.append({"prompt_index": i, "prompt": text, "position": pos,
                             "token_id": int(t), "token": model.tokenizer.decode([int(t)]),
                             "slot": int(s), "slot_name": labels[int(s)].label
                             if int(s) in labels else f"slot {int(s)}"})
        return pl.DataFrame(rows, schema=SLOTS_SCHEMA)

    def evaluate(self, prompts, variant: str | None = None, lam: float | None = None,
                 seed: int | None = None, own_latents: bool = True) -> dict:
        """The circuit on `prompts` (dicts with prompt, answer, optional counterfactual and
        entity; or a JSON-lines path): F, sizes and per-prompt logit differences
        (`per_prompt`), the dict `maskshare eval --json` prints (apply.evaluate_prompts;
        `own_latents=False`: the learned part only, where the run keeps the subject's own)."""
        skipped = []
        if isinstance(prompts, (str, Path)):
            prompts, skipped = read_prompts(prompts)
        return evaluate_prompts(self.path, prompts, variant=variant, lam=lam, seed=seed,
                                skipped=skipped, own_latents=own_latents)

    def applied(self, model=None, ablation: str | None = None, variant: str | None = None,
                lam: float | None = None, seed: int | None = None,
                entity: str | list[str] | None = None):
        """A context manager: inside it, `model`'s forward passes run with the circuit
        (maskshare.evaluation.applied). `model` defaults to the run's own (cached) model.
        `entity`: where the run keeps the subject's own latents (`evaluate.own_latents`),
        the entity whose mention in each row keeps them (one string, or one per row)."""
        cfg, v, lam, seed, mdir = self.resolve(variant, lam, seed)
        own = cfg.evaluate.own_latents
        if entity is not None and not own.k:
            raise UserError("entity= marks the subject's own latents, and this run keeps none "
                            "(evaluate.own_latents.k is 0): leave entity out")
        if entity is not None and not (isinstance(entity, str) or (
                isinstance(entity, (list, tuple)) and all(isinstance(e, str) for e in entity))):
            raise UserError("entity must be a string or a list of strings (one per row)")
        abl = check_ablation(ablation if ablation is not None else v.ablation)
        layout = RunLayout(self.path)
        model = model if model is not None else get_model(cfg)
        grouping = load_grouping(layout.groups(v.grouping))
        stats = SlotStats.load(layout.slot_stats(v.grouping))
        mm = MaskedModel(model, get_saes(cfg), stats, grouping.n_slots, ablation=abl,
                         error=cfg.masks.error)
        return AppliedCircuit(model, mm, TrainResult.load(mdir).masks(), grouping,
                              v.grouping.value, bos_id(model),
                              own=(own.k, list(own.roles), own.by),
                              entity=entity if entity is None or isinstance(entity, str)
                              else list(entity))


def open_run(path: str | Path) -> Run:
    """A finished run directory as a `Run`; UserError if it is not one."""
    return Run(path)


__all__ = ["CIRCUIT_SCHEMA", "Run", "SLOTS_SCHEMA", "open_run"]
