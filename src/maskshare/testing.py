"""Tiny, seeded random models and SAEs for fast tests (seconds, no downloads).

`tiny_model()` is a 2-layer `HookedSAETransformer` with a small byte-level BPE tokenizer
trained in memory on element names, symbols, digits and task words, so prompts like
"The chemical symbol for gold is" tokenize much as with a real tokenizer and answers such
as " Au" are single tokens. `tiny_saes()` puts a random StandardSAE at each hook.
"""

from __future__ import annotations

import functools

import torch

from maskshare.model.activations import hook_name

TINY_BOS = "<|endoftext|>"
TINY_PAD = "<|pad|>"


@functools.lru_cache(maxsize=1)
def _corpus() -> tuple[str, ...]:
    import periodictable

    lines = []
    for el in periodictable.elements:
        if el.number == 0:
            continue
        lines += [f"The chemical symbol for {el.name} is {el.symbol}",
                  f"Element: {el.name.capitalize()}\nSymbol: {el.symbol}",
                  f"{el.name} {el.symbol} {el.number}"]
    lines += [f"x = [{i}, {i + 1}, {i + 2}]\nprint(x[{i % 3}])" for i in range(10)]
    lines += ["Which symbol stands for the element on the periodic table? Answer:",
              "Q: What is the atomic number of A: Traceback book author wrote by"]
    return tuple(lines)


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    """A deterministic byte-level BPE tokenizer (vocab 600) built in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=[TINY_BOS, TINY_PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(list(_corpus()) * 3, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=TINY_BOS, eos_token=TINY_BOS,
                                   pad_token=TINY_PAD, name_or_path="maskshare-tiny",
                                   add_bos_token=True)
    return fast


def tiny_model(seed: int = 0, n_layers: int = 2, d_model: int = 32, n_heads: int = 4,
               n_ctx: int = 64, n_key_value_heads: int | None = None):
    """A random `HookedSAETransformer` (attn + MLP, RMS norm, rotary), eval mode;
    grouped-query attention (as SmolLM2's) with `n_key_value_heads`."""
    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformerConfig

    tok = tiny_tokenizer()
    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_model // n_heads,
        d_mlp=4 * d_model, d_vocab=len(tok), n_ctx=n_ctx, act_fn="silu",
        normalization_type="RMS", positional_embedding_type="rotary",
        rotary_dim=d_model // n_heads, gated_mlp=True, final_rms=True, seed=seed,
        default_prepend_bos=False, tokenizer_prepends_bos=False, device="cpu",
        n_key_value_heads=n_key_value_heads,
    )
    torch.manual_seed(seed)
    model = HookedSAETransformer(cfg, tokenizer=tok, default_padding_side="right")
    model.cfg.model_name = "tiny"
    return model.eval()


def tiny_saes(model, hooks: list[str] | None = None, d_sae: int = 64, seed: int = 0):
    """Random StandardSAEs (seeded) at `hooks` (default: resid_post of every layer)."""
    from sae_lens import StandardSAE, StandardSAEConfig


    hooks = hooks or [hook_name("resid_post", i) for i in range(model.cfg.n_layers)]
    out = {}
    g = torch.Generator().manual_seed(seed)
    for h in hooks:
        sae = StandardSAE(StandardSAEConfig(d_in=model.cfg.d_model, d_sae=d_sae))
        with torch.no_grad():
            sae.W_enc.copy_(torch.randn(sae.W_enc.shape, generator=g) / model.cfg.d_model**0.5)
            sae.W_dec.copy_(torch.randn(sae.W_dec.shape, generator=g) / d_sae**0.5)
            sae.b_enc.copy_(torch.randn(sae.b_enc.shape, generator=g) * 0.1)
            sae.b_dec.zero_()
        sae.cfg.metadata.hook_name = h
        for p in sae.parameters():
            p.requires_grad_(False)
        out[h] = sae.eval()
    return out


def tiny_task(model, prompts: list[str], slots_for, seed: int = 0):
    """A task for tests of the masked pass that need no dataset: per prompt its token ids
    (BOS first), its slots `slots_for(n_tokens)`, and random answer and counterfactual ids
    (never 0 or 1) drawn with `seed`. Returns (tokens, slots, answer_ids, counterfactual_ids).
    """
    import numpy as np

    tok = model.tokenizer
    tokens = [[tok.bos_token_id] + tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    slots = [slots_for(len(t)) for t in tokens]
    g = np.random.default_rng(seed)
    ans = [int(x) for x in g.integers(2, len(tok), len(tokens))]
    cf = [int(x) for x in g.integers(2, len(tok), len(tokens))]
    return tokens, slots, ans, cf


def write_tiny_run_setup(root, *, dataset: str = "elements-symbol", variant: str = "freeform",
                         steps: int = 6, lambdas: tuple[float, ...] = (0.01, 0.1),
                         overrides: dict | None = None):
    """Save tiny SAEs as sae_lens folders under `root` and write a run config using them
    with the `tiny` model; returns the config path. For end-to-end tests and dry runs.
    `overrides` (nested sections merged key by key) changes the config, e.g.
    `{"masks": {"sweep": {"budget": 1}}}` for a run with a shorter lambda sweep."""
    from pathlib import Path

    import yaml

    root = Path(root)
    model = tiny_model(seed=0)
    paths = []
    for h, sae in tiny_saes(model, seed=0).items():
        d = root / "saes" / h
        d.mkdir(parents=True, exist_ok=True)
        sae.save_model(str(d))
        paths.append(str(d))
    cfg = {
        "name": "tiny", "model": "tiny", "threads": 1,
        "saes": {"source": "local", "paths": paths},
        "dataset": {"name": dataset, "variant": variant, "behaviour_filter": False,
                    "max_items": 60, "min_items": 5},
        "grouping": {"kind": "attention", "n_slots": 6, "clusterer": "kmeans",
                     "batch_size": 16},
        # the sweep adds one lambda per variant, not the default's six: every tiny run
        # still refines its sweep, at a third of the masks (the sweep's own tests set theirs)
        "masks": {"steps": steps, "lambdas": list(lambdas), "batch_size": 16,
                  "checkpoint_every": 3, "sweep": {"budget": 1}},
        "evaluate": {"seeds": [0, 1]},
        "runs_dir": str(root / "runs"),
    }
    cfg = merge_config(cfg, overrides or {})
    p = root / "tiny.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


def merge_config(base: dict, changes: dict) -> dict:
    """`base` with `changes` merged in: nested dicts key by key, anything else replaced."""
    out = dict(base)
    for k, v in changes.items():
        out[k] = merge_config(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) \
            else v
    return out
