"""Train the embedded SAE set with sae_lens's own trainer, from activations cached once.

The model runs once over the corpus (`maskshare.saes.corpus`), only up to the deepest hook
(`stop_at_layer`), caching every hook's activations (fp16) in memory and on disk under
`cache_dir()/activations/<hash>/`. Each SAE is then trained from its cached activations
with `sae_lens.SAETrainer` fed by a seeded, shuffling data provider, converted to its
inference form (`save_inference_model`) and saved as an sae_lens folder
(`cfg.json` + `sae_weights.safetensors`, weights stored in `save_dtype`) that
`SAE.load_from_disk` reads. BOS positions are excluded from training: the residual at
BOS is an attention sink with a norm ~100x any other token's, and maskshare never
splices or ablates BOS.

Output: `data/saes/<model>/<hook>/` for each hook, `manifest.json` (recipe, corpus
description + sha256, seed, timings, quality), `quality.json`, `quality.md`; the whole
folder is replaced atomically.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from maskshare.artifacts import (
    _fsync_dir,
    apply_umask_modes,
    hash_config,
    make_temp_dir,
    stage_lock,
    write_manifest,
)
from maskshare.errors import UserError
from maskshare.model.models import load_hf_form, load_model
from maskshare.model.sae_set import embedded_sae_root, hook_layer
from maskshare.runtime import cache_dir, configure_threads
from maskshare.saes.activation_store import (
    build_store,
    hf_resid_forward,
    load_hook,
    outlier_mask,
    tl_forward,
)
from maskshare.saes.corpus import Corpus, CorpusConfig, build_corpus
from maskshare.saes.corpus_sampling import model_sampler
from maskshare.saes.quality import load_sae_dir, measure_quality, quality_summary, write_quality
from maskshare.validation import Strict

logger = logging.getLogger(__name__)

# written out, not via activations.hook_name: importing transformer_lens for a constant
# would cost every importer of this module seconds
DEFAULT_HOOKS = [f"blocks.{layer}.hook_resid_post" for layer in (6, 12, 18, 24)]


class SAETrainingConfig(Strict):
    """The recipe of an SAE set: hooks, architecture, optimisation, corpus, seed."""

    model: str = "smollm2-135m"
    hooks: list[str] = Field(default_factory=lambda: list(DEFAULT_HOOKS))
    architecture: Literal["topk", "batchtopk", "standard"] = "topk"
    d_sae: int = Field(default=2304, ge=1)
    k: int = Field(default=64, ge=1, description="active latents per token (topk/batchtopk)")
    l1_coefficient: float = Field(default=5.0, ge=0, description="standard SAEs only")
    epochs: float = Field(default=1.0, gt=0, description="passes over the cached activations")
    batch_size: int = Field(default=4096, ge=1, description="tokens per training step")
    lr: float = Field(default=2e-3, gt=0)
    lr_warm_up_steps: int = Field(default=50, ge=0)
    lr_end_fraction: float = Field(default=0.1, ge=0, le=1,
                                   description="cosine decay to lr * this")
    forward_batch_rows: int = Field(default=16, ge=1)
    activations: Literal["hf-bfloat16", "model"] = Field(
        default="hf-bfloat16", description="hf-bfloat16: the HF form of the model in bfloat16 "
        "(residual hooks only, ~4x faster); model: transformer_lens in float32")
    outlier_factor: float | None = Field(
        default=10.0, gt=1, description="train without positions whose norm is over this x "
        "the median (attention sinks); None keeps all")
    save_dtype: Literal["float32", "float16", "bfloat16"] = "float16"
    autocast: bool = Field(default=True, description="train in bfloat16 autocast "
                           "(sae_lens's option; fast on CPUs with bf16 matrix units)")
    seed: int = 0
    threads: int | None = None
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)




def activation_store(model, corpus: Corpus, cfg: SAETrainingConfig, hf_model=None) -> Path:
    """The training activations as a store (`maskshare.saes.activation_store`): read from the
    disk cache or collected once, streamed to disk, resumable; keyed by model, corpus hash,
    hooks and how the model was run."""
    hooks = sorted(cfg.hooks)
    key = hash_config(model.cfg.model_name, corpus.sha256, hooks, cfg.activations)
    folder = cache_dir() / "activations" / key
    if cfg.activations == "hf-bfloat16":
        forward = hf_resid_forward(hf_model.to(torch.bfloat16), hooks)
    else:
        forward = tl_forward(model, hooks)
    return build_store(folder, forward, corpus.train, hooks,
                       batch_rows=cfg.forward_batch_rows,
                       dtype="bfloat16" if cfg.activations == "hf-bfloat16" else "float16",
                       describe={"model": model.cfg.model_name, "corpus_sha256": corpus.sha256,
                                 "activations": cfg.activations})


def training_activations(store: Path, hook: str, cfg: SAETrainingConfig
                         ) -> tuple[Tensor, dict[str, float]]:
    """One hook's activations, outlier positions removed (`cfg.outlier_factor`)."""
    acts = load_hook(store, hook)
    info = {"tokens": float(acts.shape[0])}
    if cfg.outlier_factor is not None:
        keep = outlier_mask(acts, cfg.outlier_factor)
        info["outliers_dropped"] = float((~keep).sum())
        acts = acts[keep]
    return acts, info


def activation_batches(acts: Tensor, batch_size: int, seed: int) -> Iterator[Tensor]:
    """Endless float32 batches of rows of `acts`, reshuffled every epoch (seeded)."""
    g = torch.Generator().manual_seed(seed)
    n = acts.shape[0]
    if n < batch_size:
        raise UserError(f"only {n} activations for a batch of {batch_size}: "
                        "lower batch_size or add corpus tokens")
    while True:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - batch_size + 1, batch_size):
            yield acts[perm[i:i + batch_size]].float()


def _training_sae(cfg: SAETrainingConfig, d_in: int, hook: str):
    from sae_lens import (
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        StandardTrainingSAE,
        StandardTrainingSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )

    common = dict(d_in=d_in, d_sae=cfg.d_sae, normalize_activations="expected_average_only_in",
                  reshape_activations="hook_z" if hook.endswith("hook_z") else "none")
    if cfg.architecture == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(k=cfg.k, **common))
    elif cfg.architecture == "batchtopk":
        sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(k=cfg.k, **common))
    else:
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(l1_coefficient=cfg.l1_coefficient,
                                                            **common))
    sae.cfg.metadata.hook_name = hook
    sae.cfg.metadata.model_name = cfg.model
    sae.cfg.metadata.context_size = cfg.corpus.context_size
    sae.cfg.metadata.prepend_bos = True
    return sae


def train_sae(acts: Tensor, hook: str, cfg: SAETrainingConfig, seed: int | None = None):
    """Train one SAE on cached activations [n, d_in] with sae_lens's `SAETrainer`."""
    from sae_lens import LoggingConfig, SAETrainer
    from sae_lens.config import SAETrainerConfig

    seed = cfg.seed if seed is None else seed
    torch.manual_seed(seed)
    sae = _training_sae(cfg, acts.shape[-1], hook)
    total = int(cfg.epochs * acts.shape[0]) // cfg.batch_size * cfg.batch_size
    total = max(total, cfg.batch_size)
    steps = total // cfg.batch_size
    tcfg = SAETrainerConfig(
        total_training_samples=total, train_batch_size_samples=cfg.batch_size, lr=cfg.lr,
        lr_end=cfg.lr * cfg.lr_end_fraction, lr_scheduler_name="cosineannealing",
        lr_warm_up_steps=min(cfg.lr_warm_up_steps, steps // 2),
        lr_decay_steps=0, device="cpu", autocast=cfg.autocast, dead_feature_window=min(1000, max(10, steps // 5)),
        feature_sampling_window=max(steps + 1, 2), logger=LoggingConfig(log_to_wandb=False),
        n_batches_for_norm_estimate=min(50, max(1, acts.shape[0] // cfg.batch_size)),
    )
    provider = activation_batches(acts, cfg.batch_size, seed)
    with torch.enable_grad():  # whatever the caller's grad mode
        return SAETrainer(cfg=tcfg, sae=sae, data_provider=provider).fit()


def save_inference_sae(sae, path: str | Path, dtype: str = "float16") -> Path:
    """Save `sae` (training or inference) as an inference sae_lens folder, weights in `dtype`."""
    from safetensors.torch import load_file, save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if hasattr(sae, "save_inference_model"):
        weights, _ = sae.save_inference_model(path)
    else:
        weights, _ = sae.save_model(path)
    if dtype != "float32":
        sd = load_file(str(weights))
        save_file({k: v.to(getattr(torch, dtype)).contiguous() for k, v in sd.items()},
                  str(weights))
    return path


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished `tmp` into `final`, replacing an older `final` (swap, then delete)."""
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
        os.replace(final, old / "x")
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def hook_dirname(hook: str) -> str:
    return hook


def _check_hooks(cfg: SAETrainingConfig, model) -> None:
    for h in cfg.hooks:
        hook_layer(h)
        if h not in model.hook_dict:
            raise UserError(f"hook {h!r} does not exist in model {cfg.model!r}")


def _train_each(tmp: Path, store: Path, cfg: SAETrainingConfig,
                timings: dict[str, float]) -> dict[str, dict[str, float]]:
    """One SAE a hook (seed `cfg.seed + i`), saved for inference under `tmp`; one hook's
    activations in memory at a time."""
    data: dict[str, dict[str, float]] = {}
    for i, h in enumerate(cfg.hooks):
        t = time.perf_counter()
        logger.info("training SAE %d/%d at %s", i + 1, len(cfg.hooks), h)
        acts, data[h] = training_activations(store, h, cfg)
        trained = train_sae(acts, h, cfg, seed=cfg.seed + i)
        del acts
        save_inference_sae(trained, tmp / hook_dirname(h), cfg.save_dtype)
        timings[f"train_{h}_s"] = time.perf_counter() - t
    return data


def _measure_set_quality(tmp: Path, model, corpus: Corpus, timings: dict[str, float]) -> dict:
    """Quality of the saved set on the held-out corpus, written next to it."""
    t = time.perf_counter()
    q = measure_quality(model, load_sae_dir(tmp, model), corpus.heldout)
    q["corpus_sha256"] = corpus.sha256
    write_quality(tmp, q)
    timings["quality_s"] = time.perf_counter() - t
    return q


@dataclass
class TrainingData:
    """What SAE training reads: the model (and its HF form), the corpus, the activations."""

    model: Any
    hf_model: Any
    corpus: Corpus
    store: Path


def prepare_training(cfg: SAETrainingConfig, model=None, hf_model=None,
                     timings: dict[str, float] | None = None) -> TrainingData:
    """Load the model, assemble the corpus (sampling what is missing), collect the
    activations (what is missing): every step is cached and resumable."""
    if not cfg.hooks:
        raise UserError("no hooks to train SAEs for: set hooks")
    if len(set(cfg.hooks)) != len(cfg.hooks):
        raise UserError(f"hooks are repeated: {cfg.hooks}")
    configure_threads(cfg.threads)
    timings = {} if timings is None else timings
    t = time.perf_counter()
    if model is None:
        model = load_model(cfg.model, threads=cfg.threads)
    if hf_model is None and (cfg.activations == "hf-bfloat16"
                             or cfg.corpus.mix.get("sampled", 0) > 0):
        hf_model = load_hf_form(cfg.model)
    timings["load_model_s"] = time.perf_counter() - t
    _check_hooks(cfg, model)

    t = time.perf_counter()
    corpus = build_corpus(model.tokenizer, cfg.corpus,
                          model_sampler(cfg.model, cfg.corpus, model.tokenizer, hf_model))
    timings["corpus_s"] = time.perf_counter() - t
    logger.info("corpus: %d train rows, %d held-out rows (sha256 %s)", corpus.train.shape[0],
                corpus.heldout.shape[0], corpus.sha256[:12])
    t = time.perf_counter()
    store = activation_store(model, corpus, cfg, hf_model)
    timings["activations_s"] = time.perf_counter() - t
    return TrainingData(model, hf_model, corpus, store)


def train_saes(cfg: SAETrainingConfig | None = None, out_dir: str | Path | None = None,
               model=None, quality: bool = True, hf_model=None) -> Path:
    """Train the SAE set of `cfg` and write it (plus manifest and quality) to `out_dir`.

    `out_dir` defaults to the embedded set's folder `data/saes/<model>/`. `model` (and its
    HF form `hf_model`) may be passed in (tests); otherwise `cfg.model` is loaded.
    """
    cfg = cfg or SAETrainingConfig()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data = prepare_training(cfg, model, hf_model, timings)
    out_dir = Path(out_dir) if out_dir is not None else embedded_sae_root(cfg.model)
    tmp = make_temp_dir(out_dir)
    try:
        positions = _train_each(tmp, data.store, cfg, timings)
        q = (_measure_set_quality(tmp, data.model, data.corpus, timings) if quality else None)
        timings["total_s"] = time.perf_counter() - t0
        write_set_manifest(tmp, cfg, {**data.corpus.description,
                                      "training_positions": positions}, timings, q)
        apply_umask_modes(tmp)  # sae_lens saves its files private
        with stage_lock(out_dir):
            _replace_dir(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("wrote %s", out_dir)
    return out_dir


def write_set_manifest(directory: Path, cfg: SAETrainingConfig, corpus_description: dict,
                       timings: dict[str, float], quality: dict[str, Any] | None) -> dict:
    return write_manifest(
        directory,
        inputs={"model": cfg.model, "corpus_sha256": corpus_description["sha256"]},
        config=cfg.model_dump(mode="json"), seed=cfg.seed, timings=timings,
        extra={"recipe": recipe_text(cfg), "corpus": corpus_description,
               "quality": quality_summary(quality) if quality else None},
    )


def recipe_text(cfg: SAETrainingConfig) -> str:
    return (f"{cfg.architecture} SAEs (sae_lens SAETrainer), d_sae={cfg.d_sae}"
            + (f", k={cfg.k}" if cfg.architecture != "standard" else "")
            + f", {cfg.epochs:g} epochs over {cfg.corpus.train_tokens} corpus tokens "
            f"(BOS excluded"
            + (f", positions over {cfg.outlier_factor:g}x the median norm excluded"
               if cfg.outlier_factor else "")
            + f"), activations from {cfg.activations}, batch {cfg.batch_size} tokens, Adam lr {cfg.lr:g} "
            f"(warm-up {cfg.lr_warm_up_steps} steps, cosine to {cfg.lr * cfg.lr_end_fraction:g}), "
            f"activations normalised by their expected norm (folded into the weights), "
            f"weights saved as {cfg.save_dtype}, seed {cfg.seed}")
