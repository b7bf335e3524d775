"""SAE training activations streamed to disk in shards, resumable, read back one hook at a time.

A store is a folder of `shard-NNNNN.safetensors` files, each holding every hook's
activations ([tokens, d], `dtype`, BOS positions dropped) for `shard_rows` corpus rows,
plus `manifest.json` once all shards are written. Shards are written atomically while
the store is being built in `<folder>.partial/`; a killed collection resumes at the first
missing shard; the finished folder is renamed into place. Memory stays at one shard of
activations while collecting and one hook's activations while training.

Two ways to run the model: transformer_lens (`tl_forward`, any hook, float32), and the
Hugging Face form of the model (`hf_resid_forward`, residual-stream hooks
`blocks.L.hook_resid_post` only, which are the outputs of decoder layer L) in bfloat16,
~4x the float32 throughput on CPUs with bf16 matrix units; `benchmarks/bf16_activations.py`
measures how far its activations are from float32's.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from maskshare.artifacts import is_complete, write_manifest
from maskshare.errors import UserError
from maskshare.model.activations import _flat, run_to_deepest

logger = logging.getLogger(__name__)

Forward = Callable[[Tensor], dict[str, Tensor]]  # token rows [B, P] -> {hook: [B, P, d]}
SHARD_ROWS = 256  # corpus rows a shard (256 x 128 tokens x 576 x 2 bytes = 38 MB a hook)
RESID_POST = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")


def tl_forward(model, hooks: list[str]) -> Forward:
    """transformer_lens model, stopped after the deepest hook."""
    def forward(rows: Tensor) -> dict[str, Tensor]:
        return {h: _flat(a) for h, a in run_to_deepest(model, rows, hooks).items()}
    return forward


class _Stop(Exception):
    pass


def hf_resid_forward(hf_model, hooks: list[str]) -> Forward:
    """Hugging Face causal LM (Llama layout): the outputs of decoder layers, read by forward
    hooks; the pass stops after the deepest one."""
    layers_of = {}
    for h in hooks:
        m = RESID_POST.match(h)
        if m is None:
            raise UserError(f"the fast activation path reads residual-stream hooks only, not {h!r}")
        layers_of[h] = int(m.group(1))
    deepest = max(layers_of.values())
    layers = hf_model.model.layers

    def forward(rows: Tensor) -> dict[str, Tensor]:
        got: dict[int, Tensor] = {}

        def grab(layer: int):
            def hook(_module, _inputs, output):
                got[layer] = output[0] if isinstance(output, tuple) else output
                if layer == deepest:
                    raise _Stop
            return hook
        handles = [layers[i].register_forward_hook(grab(i)) for i in set(layers_of.values())]
        try:
            hf_model.model(input_ids=rows, use_cache=False)
        except _Stop:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return {h: got[layer] for h, layer in layers_of.items()}
    return forward


def _shard_path(folder: Path, i: int) -> Path:
    return folder / f"shard-{i:05d}.safetensors"


def _write_shard(path: Path, acts: dict[str, Tensor]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file({h: a.contiguous() for h, a in acts.items()}, str(tmp))
    os.replace(tmp, path)


@torch.inference_mode()
def _collect_shard(forward: Forward, rows: Tensor, batch_rows: int, dtype: torch.dtype
                   ) -> dict[str, Tensor]:
    parts: dict[str, list[Tensor]] = {}
    for i in range(0, rows.shape[0], batch_rows):
        for h, a in forward(rows[i:i + batch_rows]).items():
            a = a[:, 1:]  # BOS: an attention sink with ~100x the norm of other tokens
            parts.setdefault(h, []).append(a.reshape(-1, a.shape[-1]).to(dtype))
    return {h: torch.cat(v) for h, v in parts.items()}


def build_store(folder: Path, forward: Forward, rows: Tensor, hooks: list[str], *,
                shard_rows: int | None = None, batch_rows: int = 32, dtype: str = "bfloat16",
                describe: dict | None = None) -> Path:
    """Collect (or finish collecting) the store at `folder` for corpus `rows` [n, P]."""
    from tqdm.auto import tqdm

    if is_complete(folder):
        logger.info("using cached activations %s", folder)
        return folder
    if folder.exists():  # damaged: rebuilt, never trusted
        shutil.rmtree(folder)
    shard_rows = shard_rows or SHARD_ROWS
    partial = folder.with_name(folder.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    n_shards = -(-rows.shape[0] // shard_rows)
    todo = [i for i in range(n_shards) if not _shard_path(partial, i).is_file()]
    if len(todo) < n_shards:
        logger.info("resuming activation collection: %d of %d shards done", n_shards - len(todo),
                    n_shards)
    started, made = time.perf_counter(), 0
    bar = tqdm(todo, desc="activations", unit="shard")
    for i in bar:
        chunk = rows[i * shard_rows:(i + 1) * shard_rows]
        _write_shard(_shard_path(partial, i),
                     _collect_shard(forward, chunk, batch_rows, getattr(torch, dtype)))
        made += chunk.numel()
        bar.set_postfix(tokens_per_s=f"{made / (time.perf_counter() - started):.0f}")
    write_manifest(partial, config={"hooks": sorted(hooks), "dtype": dtype,
                                    "shard_rows": shard_rows, "n_shards": n_shards},
                   extra=describe or {})
    os.replace(partial, folder)
    return folder


def load_hook(folder: Path, hook: str) -> Tensor:
    """One hook's activations [tokens, d] from every shard, in stored dtype."""
    from safetensors import safe_open

    parts = []
    for p in sorted(Path(folder).glob("shard-*.safetensors")):
        with safe_open(str(p), framework="pt") as f:
            parts.append(f.get_tensor(hook))
    if not parts:
        raise UserError(f"no activation shards in {folder}")
    return torch.cat(parts)


def outlier_mask(acts: Tensor, factor: float, chunk: int = 1 << 16) -> Tensor:
    """True for rows whose norm is at most `factor` x the median norm (the rest are
    attention-sink-like positions whose squared error would dominate training)."""
    norms = torch.cat([acts[i:i + chunk].float().norm(dim=-1)
                       for i in range(0, acts.shape[0], chunk)])
    return norms <= factor * norms.median()
