"""Per-slot means of SAE latents and SAE errors, from the clean model's activations.

For every SAE hook h and slot s, over the training tokens of slot s:

    latent_mean[h][s] = mean of a = enc(x)          [n_slots, d_sae]
    error_mean[h][s]  = mean of x - dec(a)          [n_slots, d_in]

plus the global means over every non-BOS token (`global_latent_mean`, `global_error_mean`)
and the token count per slot (`counts`, the same for every hook). x is the *clean* model's
activation at h (no SAE spliced in anywhere). Prompts are streamed in batches of similar
length (memory bounded by one batch) and accumulated as float64 running sums; padding
(slot -1) never counts, BOS (position 0) never enters the global means.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from maskshare.artifacts import save_tensors
from maskshare.errors import UserError
from maskshare.model.activations import pad_slots
from maskshare.model.forward import batches, dtype_for, hook_values

_SEP = "::"


@dataclass
class HookStats:
    latent_mean: Float[Tensor, "n_slots d_sae"]
    error_mean: Float[Tensor, "n_slots d_in"]
    global_latent_mean: Float[Tensor, " d_sae"]
    global_error_mean: Float[Tensor, " d_in"]


@dataclass
class SlotStats:
    """Per-hook slot means; `counts[s]` is the number of training tokens in slot s."""

    hooks: dict[str, HookStats]
    counts: Tensor  # [n_slots] int64

    @property
    def n_slots(self) -> int:
        return int(self.counts.shape[0])

    def __getitem__(self, hook: str) -> HookStats:
        return self.hooks[hook]

    def save(self, path: str | Path) -> None:
        """Write one safetensors file atomically (keys `<hook>::<field>`, plus `counts`)."""
        tensors = {"counts": self.counts.contiguous()}
        for h, st in self.hooks.items():
            for field in ("latent_mean", "error_mean", "global_latent_mean", "global_error_mean"):
                tensors[f"{h}{_SEP}{field}"] = getattr(st, field).float().contiguous()
        order = ",".join(self.hooks)
        save_tensors(tensors, path, metadata={"hooks": order, "format": "maskshare-slot-stats-1"})

    @classmethod
    def load(cls, path: str | Path) -> SlotStats:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise UserError(f"no slot statistics at {path}")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            hooks = [h for h in meta.get("hooks", "").split(",") if h]
            out = {}
            for h in hooks:
                out[h] = HookStats(*(f.get_tensor(f"{h}{_SEP}{k}") for k in (
                    "latent_mean", "error_mean", "global_latent_mean", "global_error_mean")))
            counts = f.get_tensor("counts")
        return cls(hooks=out, counts=counts)


def check_inputs(tokens: list[list[int]], slots: list[np.ndarray], n_slots: int) -> None:
    if len(tokens) != len(slots):
        raise UserError(f"{len(tokens)} prompts but {len(slots)} slot arrays")
    for i, (t, s) in enumerate(zip(tokens, slots, strict=True)):
        if len(t) == 0:
            raise UserError(f"prompt {i} has no tokens")
        if len(s) != len(t):
            raise UserError(f"prompt {i}: {len(t)} tokens but {len(s)} slots")
        s = np.asarray(s)
        if s.min() < 0 or s.max() >= n_slots:
            raise UserError(f"prompt {i}: slot ids must lie in [0, {n_slots}); got "
                            f"{int(s.min())}..{int(s.max())}")


@torch.no_grad()
def compute_slot_stats(model, saes: dict, tokens: list[list[int]], slots: list[np.ndarray],
                       n_slots: int, batch_size: int = 32) -> SlotStats:
    """Per-slot and global means of latents and SAE errors at every hook of `saes`.

    The model runs only as deep as the deepest hook; one pass serves every SAE.
    """
    check_inputs(tokens, slots, n_slots)
    hooks = list(saes)
    lat_sum = {h: torch.zeros(n_slots, saes[h].cfg.d_sae, dtype=torch.float64) for h in hooks}
    err_sum = {h: torch.zeros(n_slots, saes[h].cfg.d_in, dtype=torch.float64) for h in hooks}
    glat = {h: torch.zeros(saes[h].cfg.d_sae, dtype=torch.float64) for h in hooks}
    gerr = {h: torch.zeros(saes[h].cfg.d_in, dtype=torch.float64) for h in hooks}
    counts = torch.zeros(n_slots, dtype=torch.float64)
    n_glob = 0
    # shortest prompts first: the float64 sums accumulate in this batch order
    dtype = dtype_for("stats")
    for batch in batches(model, tokens, batch_size=batch_size, order="shortest", dtype=dtype,
                         pad=0):
        sl = pad_slots(slots, batch.idx, batch.tokens.shape[1])
        cache = hook_values(model, batch.tokens, hooks, batch.attention_mask, dtype)
        valid = sl >= 0
        flat_slot = sl[valid]
        not_bos = (torch.arange(sl.shape[1]) > 0)[None, :].expand_as(sl)[valid]
        n_glob += int(not_bos.sum())
        counts.index_add_(0, flat_slot, torch.ones_like(flat_slot, dtype=torch.float64))
        for h in hooks:
            x = cache[h][valid].float()
            a = saes[h].encode(x)
            err = x - saes[h].decode(a)
            lat_sum[h].index_add_(0, flat_slot, a.double())
            err_sum[h].index_add_(0, flat_slot, err.double())
            glat[h] += a[not_bos].double().sum(0)
            gerr[h] += err[not_bos].double().sum(0)
        del cache
    denom = counts.clamp(min=1)[:, None]
    stats = {h: HookStats(latent_mean=(lat_sum[h] / denom).float(),
                          error_mean=(err_sum[h] / denom).float(),
                          global_latent_mean=(glat[h] / max(n_glob, 1)).float(),
                          global_error_mean=(gerr[h] / max(n_glob, 1)).float())
             for h in hooks}
    return SlotStats(hooks=stats, counts=counts.long())
