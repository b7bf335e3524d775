"""Shared pieces of benchmarks/bench.py: timing, machine info, the benchmark's model, SAEs
and prompts, slot arrays, and the measure of memory kept for backward."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RANDOM_HOOKS = [f"blocks.{layer}.hook_resid_post" for layer in (6, 12, 18, 24)]
FALLBACK_ELEMENTS = ["gold", "silver", "iron", "copper", "oxygen", "carbon", "helium", "sodium"]
FALLBACK_PHRASINGS = [
    "The chemical symbol for {} is",
    "Which symbol stands for {} on the periodic table? It is",
    "Q: What is the chemical symbol of the element {}?\nA:",
    "In chemistry, the element {} is written with the symbol",
]


# ----------------------------------------------------------------------------- helpers
def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> tuple[float, float]:
    """(wall s, process CPU s) of fn(), synchronised on CUDA."""
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def med(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def machine_info(device: str) -> dict:
    from maskshare.runtime import available_cores

    info = {"cpu_count": os.cpu_count(), "available_cores": available_cores(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "device": device, "load_average": list(os.getloadavg())}
    try:
        mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
        info["memory_gb"] = round(int(mem) / 2**20, 1)
    except OSError:  # pragma: no cover - non-Linux
        pass
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def load_setup(device: str, n_prompts: int | None = None):
    """The embedded model, its SAEs (or random stand-ins, said so) and real prompts."""
    from maskshare.model.models import load_model
    from maskshare.model.sae_set import SAESetConfig, load_saes
    from maskshare.testing import tiny_saes

    model = load_model("smollm2-135m")  # on the CPU first: slot stats run there
    try:
        saes = load_saes(SAESetConfig(), model)
        source = "embedded set: " + ", ".join(f"{h} ({s.cfg.d_sae})" for h, s in saes.items())
    except Exception as e:  # noqa: BLE001 - the set may not be trained yet: say so
        saes = tiny_saes(model, hooks=RANDOM_HOOKS, d_sae=2304, seed=0)
        source = f"random StandardSAEs d_sae=2304 at {RANDOM_HOOKS} (embedded set unavailable: {e})"
    prompts = real_prompts(model)
    if n_prompts is not None:
        prompts = {k: v[:n_prompts] for k, v in prompts.items()}
    return model, saes, source, prompts


def real_prompts(model) -> dict:
    """tokens / answer / counterfactual ids of the built default dataset (elements-symbol,
    free-form; all splits), in a seeded shuffled order; a small fallback set if unavailable."""
    from maskshare.model.models import tokenize_prompt

    try:
        from maskshare.config import DatasetRef
        from maskshare.datasets import build_dataset

        items = build_dataset(DatasetRef(name="elements-symbol", variant="freeform"), model,
                              progress=False).items.sample(fraction=1.0, shuffle=True, seed=0)
        return {"tokens": [list(t) for t in items["tokens"].to_list()],
                "answer": items["answer_id"].to_list(),
                "counterfactual": items["counterfactual_id"].to_list(),
                "source": "built dataset elements-symbol/freeform"}
    except Exception as e:  # noqa: BLE001
        texts = [p.format(e_) for e_ in FALLBACK_ELEMENTS for p in FALLBACK_PHRASINGS]
        toks = [tokenize_prompt(model, t) for t in texts]
        a, c = tokenize_prompt(model, " Au")[-1], tokenize_prompt(model, " Ag")[-1]
        return {"tokens": toks, "answer": [a] * len(toks), "counterfactual": [c] * len(toks),
                "source": f"fallback elements prompts ({e})"}


def from_end_slots(tokens: list[list[int]], n_slots: int) -> list[np.ndarray]:
    """BOS -> 0; the last n_slots-2 positions own a slot each; the rest share slot 1."""
    out = []
    for t in tokens:
        s = np.ones(len(t), dtype=np.int64)
        s[0] = 0
        for k in range(1, min(n_slots - 2, len(t) - 1) + 1):
            s[-k] = 1 + k
        out.append(s)
    return out


def _to_device(mm, batches, device: str) -> None:
    if device == "cpu":
        return
    for d in (mm.abl, mm.err_mean):
        for h, v in d.items():
            if v is not None:
                d[h] = v.to(device)
    for b in batches:
        for name, v in vars(b).items():
            if isinstance(v, torch.Tensor):
                setattr(b, name, v.to(device))


def saved_for_backward_mb(fn, modules=()) -> float:
    """MB of distinct tensors autograd keeps for backward while fn() runs: the activation
    memory of a step. Storages of the parameters and buffers of `modules` (the weights, also
    when saved as views such as W.T) are left out."""
    weights = {t.untyped_storage().data_ptr() for m in modules
               for t in [*m.parameters(), *m.buffers()]}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in weights:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values()) / 2**20



def default_error() -> str:
    """The SAE error term of configs/default.yaml (what the default pipeline trains with)."""
    from maskshare.config import load_config

    return str(load_config(ROOT / "configs" / "default.yaml").masks.error)
