"""Text sampled from the model itself: the most in-distribution SAE training text there is.

Rows of `context_size` tokens start with a start token (`start_token`) and an *opening* (a genre template filled
with a topic: encyclopedic, question-answer in the model's chat format, stories, code,
lists, element facts), and the model writes the rest: temperature sampling restricted to
the `top_k` most likely tokens, batched, with the model's KV cache. Training and held-out
rows use disjoint opening templates and different seeds.

Sampling runs the Hugging Face form of the model (the same weights transformer_lens
uses) in `dtype` (bfloat16 by default: ~3x a float32 step on CPUs with bf16 matrix
units). Rows are written in shards of `batch_rows` rows under a content-addressed folder;
each shard has its own seed (from the config, the split and the shard index), so a killed
collection resumes at its first missing shard and gives the same rows, given the same
torch build and thread count (recorded in the manifest).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import time
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from maskshare.artifacts import hash_config
from maskshare.errors import UserError
from maskshare.model.models import load_hf_form
from maskshare.runtime import cache_dir
from maskshare.validation import Strict

logger = logging.getLogger(__name__)

Split = Literal["train", "heldout"]

TOPICS = (
    "the Roman Empire", "photosynthesis", "the Pacific Ocean", "volcanoes", "the human heart",
    "jazz music", "the printing press", "black holes", "honey bees", "the French Revolution",
    "climate change", "the Amazon rainforest", "electricity", "ancient Egypt", "chess",
    "the immune system", "Mount Everest", "the internet", "dinosaurs", "the Moon",
    "coffee", "the Great Wall of China", "earthquakes", "vaccines", "the Renaissance",
    "penguins", "the stock market", "rainbows", "the solar system", "bread baking",
    "the Olympic Games", "glaciers", "World War II", "the piano", "democracy", "tigers",
    "the periodic table", "DNA", "Shakespeare", "the Industrial Revolution", "gravity",
    "football", "the Sahara desert", "bicycles", "tea", "the brain", "airplanes",
    "the Nile", "recycling", "the Byzantine Empire", "mathematics", "the violin",
    "sharks", "the Silk Road", "trains", "the United Nations", "Antarctica", "algebra",
    "the Eiffel Tower", "mushrooms", "Vincent van Gogh", "the Arctic fox", "sleep",
    "the Beatles", "oxygen", "gold", "iron", "copper", "hydrogen", "carbon", "silver",
    "the novel Pride and Prejudice", "Leo Tolstoy", "Jane Austen", "Charles Dickens",
    "Agatha Christie", "Mark Twain", "Toni Morrison", "Gabriel Garcia Marquez",
    "sorting algorithms", "binary search", "linked lists", "recursion", "HTTP", "SQL",
    "machine learning", "neural networks", "the Python language", "unit testing",
    "a small village", "a lost dog", "a rainy afternoon", "a birthday party", "a dragon",
    "a robot", "an old lighthouse", "a train journey", "a detective", "a garden",
)

TRAIN_OPENINGS = (
    "{Topic}",
    "{Topic} is",
    "The history of {topic}",
    "Introduction\n\n{Topic} has",
    "# {Topic}\n\n",
    "Here are some facts about {topic}:\n1.",
    "<|im_start|>user\nTell me about {topic}.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWhat is the most interesting thing about {topic}?<|im_end|>\n"
    "<|im_start|>assistant\n",
    "<|im_start|>user\nWrite a short story about {topic}.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nExplain {topic} to a child.<|im_end|>\n<|im_start|>assistant\n",
    "Q: What do you know about {topic}?\nA:",
    "Once upon a time, there was",
    "She opened the letter and read:",
    "def ",
    "import ",
    "class ",
    "# A Python function about {topic}\ndef",
    "The chemical symbol for",
    "Which element has the symbol",
    "The author of",
    "In this article, we will discuss {topic}.",
    "Student notes on {topic}:\n-",
)
HELDOUT_OPENINGS = (
    "An essay on {topic}\n\n",
    "<|im_start|>user\nGive me three facts about {topic}.<|im_end|>\n<|im_start|>assistant\n",
    "It was a cold morning when",
    "from collections import",
    "Encyclopedia entry: {Topic}.",
    "Did you know that {topic}",
)


class SamplingConfig(Strict):
    """How the model writes its own training text."""

    temperature: float = Field(default=1.0, gt=0)
    top_k: int = Field(default=200, ge=1)
    batch_rows: int = Field(default=256, ge=1, description="rows sampled together (one shard)")
    dtype: Literal["bfloat16", "float32"] = "bfloat16"
    start_token: str | None = Field(
        default="<|im_start|>", description="the token every sampled row starts with (its "
        "activations are never used): the embedded model's chat-turn start, so chat openings "
        "are exactly its chat format; None: the tokenizer's BOS")


def start_id(tokenizer, cfg: SamplingConfig) -> int:
    if cfg.start_token is None:
        return tokenizer.bos_token_id
    tid = tokenizer.convert_tokens_to_ids(cfg.start_token)
    if tid is None or tid == tokenizer.unk_token_id:
        raise UserError(f"corpus.sampling.start_token {cfg.start_token!r} is not a token of "
                        "this tokenizer: set it to one, or to null for the BOS token")
    return tid


def _fill(template: str, topic: str) -> str:
    return template.format(topic=topic, Topic=topic[:1].upper() + topic[1:])


def openings(split: Split, n: int, seed: int) -> list[str]:
    """`n` openings for `split`, a seeded draw of (template, topic) pairs."""
    templates = TRAIN_OPENINGS if split == "train" else HELDOUT_OPENINGS
    rng = random.Random(f"openings-{split}-{seed}")
    return [_fill(rng.choice(templates), rng.choice(TOPICS)) for _ in range(n)]


def _encode(tokenizer, texts: list[str], bos: int, ctx: int) -> list[list[int]]:
    out = []
    for t in texts:
        ids = tokenizer(t, add_special_tokens=False)["input_ids"][: ctx // 2]
        out.append(ids if ids[:1] == [bos] else [bos] + ids)  # chat openings start with BOS
    return out


@torch.inference_mode()
def sample_batch(hf_model, prompts: list[list[int]], ctx: int, cfg: SamplingConfig,
                 generator: torch.Generator, pad_id: int = 0) -> torch.Tensor:
    """Rows [len(prompts), ctx]: each prompt continued by the model to `ctx` tokens.

    Prompts are left-padded (attention mask + explicit positions), so every row's tokens
    see exactly what they would see alone; sampling draws from the top_k logits."""
    n, longest, shortest = len(prompts), max(map(len, prompts)), min(map(len, prompts))
    ids = torch.full((n, longest), pad_id, dtype=torch.long)
    attn = torch.zeros((n, longest), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, longest - len(p):] = torch.tensor(p)
        attn[i, longest - len(p):] = 1
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    out = hf_model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True,
                   logits_to_keep=1)
    new: list[torch.Tensor] = []
    for _ in range(ctx - shortest):
        logits = out.logits[:, -1].float() / cfg.temperature
        val, idx = logits.topk(min(cfg.top_k, logits.shape[-1]))
        nxt = idx.gather(1, val.softmax(-1).multinomial(1, generator=generator))
        new.append(nxt)
        attn = torch.cat([attn, torch.ones((n, 1), dtype=torch.long)], dim=1)
        pos = pos[:, -1:] + 1
        out = hf_model(input_ids=nxt, attention_mask=attn, position_ids=pos,
                       cache=out.cache, use_cache=True, logits_to_keep=1)
    gen = torch.cat(new, dim=1) if new else torch.zeros((n, 0), dtype=torch.long)
    rows = [torch.cat([torch.tensor(p), gen[i]])[:ctx] for i, p in enumerate(prompts)]
    return torch.stack(rows)


def _shard_seed(seed: int, split: str, index: int) -> int:
    digest = hashlib.sha256(f"sampled-{split}-{seed}-{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _write_shard(path: Path, rows: torch.Tensor) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file({"tokens": rows.to(torch.int32).contiguous()}, str(tmp))
    os.replace(tmp, path)


def _read_shard(path: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(path))["tokens"].long()


def sampled_rows(hf_model, tokenizer, split: Split, n_rows: int, ctx: int, seed: int,
                 cfg: SamplingConfig, folder: Path, worker: int = 0, workers: int = 1
                 ) -> torch.Tensor | None:
    """`n_rows` sampled rows of `split`, read from or written to shards under `folder`.

    With `workers` > 1, this process writes only the shards `i % workers == worker` and
    returns None unless every shard is then present (several processes of one thread
    each sample faster than one process of several threads on a shared machine)."""
    from tqdm.auto import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    bos = start_id(tokenizer, cfg)
    n_shards = -(-n_rows // cfg.batch_rows)
    texts = openings(split, n_shards * cfg.batch_rows, seed)
    started, made = time.perf_counter(), 0
    paths = [folder / f"{split}-{i:05d}.safetensors" for i in range(n_shards)]
    mine = [i for i in range(n_shards) if i % workers == worker and not paths[i].is_file()]
    bar = tqdm(mine, desc=f"sampling {split} text", unit="shard")
    for i in bar:
        prompts = _encode(tokenizer, texts[i * cfg.batch_rows:(i + 1) * cfg.batch_rows],
                          bos, ctx)
        g = torch.Generator().manual_seed(_shard_seed(seed, split, i))
        _write_shard(paths[i], sample_batch(hf_model, prompts, ctx, cfg, g,
                                            pad_id=tokenizer.pad_token_id or 0))
        made += cfg.batch_rows * ctx
        bar.set_postfix(tokens_per_s=f"{made / (time.perf_counter() - started):.0f}")
    if not all(p.is_file() for p in paths):
        return None
    return torch.cat([_read_shard(p) for p in paths])[:n_rows]


def sampling_folder(root: Path, model_name: str, ctx: int, seed: int,
                    cfg: SamplingConfig) -> Path:
    """Content-addressed shard folder: changes with anything that changes the rows."""
    key = hash_config(model_name, ctx, seed, cfg.model_dump(mode="json"),
                      list(TRAIN_OPENINGS), list(HELDOUT_OPENINGS), list(TOPICS))
    return root / "sampled" / key


def model_sampler(model_name: str, corpus_cfg, tokenizer, hf_model=None, worker: int = 0,
                  workers: int = 1):
    """`sampler(split, n_rows)` for `build_corpus`, or None when the mix has no sampled text.
    Shards live in the cache (`sampling_folder`), so a second build reads them back. As
    one of several `workers`, it samples only its shards and returns placeholder rows while
    others' shards are missing (`maskshare train-saes --sample-worker I/N`)."""
    if corpus_cfg.mix.get("sampled", 0) <= 0:
        return None
    folder = sampling_folder(cache_dir(), model_name, corpus_cfg.context_size, corpus_cfg.seed,
                             corpus_cfg.sampling)
    state: dict = {}

    def sample(split: str, n_rows: int) -> torch.Tensor:
        if "model" not in state:  # loaded only if some shard is missing
            state["model"] = (hf_model or load_hf_form(model_name)).to(
                getattr(torch, corpus_cfg.sampling.dtype))
        rows = sampled_rows(state["model"], tokenizer, split, n_rows, corpus_cfg.context_size,
                            corpus_cfg.seed, corpus_cfg.sampling, folder, worker, workers)
        if rows is None:
            return torch.zeros((n_rows, corpus_cfg.context_size), dtype=torch.long)
        return rows
    return sample


def sampling_recipe() -> dict:
    """What the sampled text is made from, for the corpus description."""
    return {"what": __doc__.split("\n\n")[1].replace("\n", " "),
            "train_openings": list(TRAIN_OPENINGS), "heldout_openings": list(HELDOUT_OPENINGS),
            "topics": list(TOPICS), "torch": torch.__version__}
