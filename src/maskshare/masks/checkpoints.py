"""What a mask training leaves on disk, and the key that says which run it belongs to.

- `TrainResult`: a finished mask (theta per hook, lambda, seed, history), saved as
  `masks.safetensors` + `summary.json` in its lambda's folder.
- The checkpoint (`checkpoint.safetensors`: theta, Adam state, history; written atomically)
  that lets an interrupted training resume and end with the masks an uninterrupted one
  would have.
- `run_key`: a hash of everything that determines a training's result; a checkpoint or a
  saved result with another key belongs to another run and is not reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from maskshare.artifacts import hash_config, save_tensors, write_json_atomic
from maskshare.config import NOT_IN_MASK_KEY, MaskConfig, hash_excluded
from maskshare.masks.masking import MaskedModel, Masks, binarize

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.safetensors"


@dataclass
class TrainResult:
    theta: dict[str, Tensor]
    lam: float
    seed: int
    history: list[dict] = field(default_factory=list)
    key: str | None = None  # hash of everything that determines the result (see run_key)

    def masks(self) -> Masks:
        return binarize(self.theta)

    def kept(self) -> dict[str, int]:
        return {h: int((t > 0).sum()) for h, t in self.theta.items()}

    def save(self, directory: str | Path, extra: dict | None = None) -> None:
        """masks.safetensors (theta per hook) and summary.json."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_tensors(self.theta, directory / "masks.safetensors",
                     metadata={"hooks": ",".join(self.theta), "lambda": repr(self.lam),
                               "seed": str(self.seed)})
        last = self.history[-1] if self.history else {}
        write_json_atomic(directory / "summary.json", {
            "lambda": self.lam, "seed": self.seed, "steps": len(self.history),
            "kept_per_hook": self.kept(), "kept_total": sum(self.kept().values()),
            "final": last, "history": self.history, "key": self.key, **(extra or {})})

    @classmethod
    def load(cls, directory: str | Path) -> TrainResult:
        from safetensors import safe_open

        directory = Path(directory)
        with safe_open(str(directory / "masks.safetensors"), framework="pt") as f:
            meta = f.metadata() or {}
            hooks = [h for h in meta.get("hooks", "").split(",") if h]
            theta = {h: f.get_tensor(h) for h in hooks}
        summary = json.loads((directory / "summary.json").read_text())
        return cls(theta=theta, lam=float(summary["lambda"]), seed=int(summary["seed"]),
                   history=summary.get("history", []), key=summary.get("key"))


def run_key(cfg: MaskConfig, lam: float, seed: int, mm: MaskedModel, n_prompts: int,
            init: dict[str, Tensor] | None) -> str:
    """Hash of the settings, model side and inputs that determine a training's result."""
    init_h = None if init is None else hash_config(
        {h: hashlib.sha256(t.detach().float().contiguous().numpy().tobytes()).hexdigest()
         for h, t in init.items()})
    # where training starts is `init` itself (hashed below); the settings choosing it, and
    # the steps of warm-started runs (passed in as `steps`), are not the run's own
    exclude = set(hash_excluded(cfg, NOT_IN_MASK_KEY))
    if cfg.early_stop_patience is None:  # off: keys stay those of runs before the option
        exclude |= {"early_stop_patience", "early_stop_min_steps"}
    return hash_config(cfg.model_dump(mode="json", exclude=exclude), lam, seed,
                       str(mm.ablation), str(mm.error), mm.hooks, mm.n_slots, n_prompts, init_h)


def save_checkpoint(path: Path, step: int, theta: dict[str, Tensor], opt: torch.optim.Adam,
                    history: list[dict], key: str) -> None:
    """theta, Adam's moments and step counts, and the history after `step` steps."""
    tensors, steps = {}, {}
    params = list(theta.values())
    for h, p in zip(theta, params, strict=True):
        tensors[f"theta::{h}"] = p.detach().clone().contiguous()
        st = opt.state.get(p, {})
        if st:
            tensors[f"exp_avg::{h}"] = st["exp_avg"].contiguous()
            tensors[f"exp_avg_sq::{h}"] = st["exp_avg_sq"].contiguous()
            steps[h] = float(st["step"])
    meta = {"step": str(step), "key": key, "history": json.dumps(history),
            "adam_steps": json.dumps(steps), "hooks": json.dumps(list(theta))}
    save_tensors(tensors, path, metadata=meta)


def load_checkpoint(path: Path, theta: dict[str, Tensor], opt: torch.optim.Adam,
                    key: str) -> tuple[int, list[dict]] | None:
    """Restore theta and Adam's state in place: (steps done, history), or None when there
    is no checkpoint or it belongs to another run (another `key`)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("key") != key:
            logger.warning("ignoring checkpoint %s: it belongs to a different run", path)
            return None
        steps = json.loads(meta["adam_steps"])
        with torch.no_grad():
            for h, p in theta.items():
                p.copy_(f.get_tensor(f"theta::{h}"))
                if h in steps:
                    opt.state[p] = {"step": torch.tensor(steps[h]),
                                    "exp_avg": f.get_tensor(f"exp_avg::{h}"),
                                    "exp_avg_sq": f.get_tensor(f"exp_avg_sq::{h}")}
        return int(meta["step"]), json.loads(meta["history"])
