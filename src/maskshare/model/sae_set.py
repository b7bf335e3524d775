"""Load a set of SAEs for a model: the embedded default set, local folders, or sae_lens releases.

An SAE set is an ordered mapping hook name -> SAE, shallowest hook first. Any hook point
sae_lens supports works (`blocks.L.hook_resid_post`, `blocks.L.hook_attn_out`,
`blocks.L.hook_mlp_out`, ...); the hook is read from the SAE's own config.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from maskshare.domains import Text, bad
from maskshare.errors import UserError
from maskshare.runtime import data_dir
from maskshare.validation import Strict

logger = logging.getLogger(__name__)

EMBEDDED_SAE_DIR = "saes"
HOOK_RE = r"^blocks\.[0-9]+\.[A-Za-z0-9_.]+$"  # a per-layer hook point


class SAESetConfig(Strict):
    """Which SAEs to splice in.

    - `embedded`: the set maskshare trained for its embedded model (data/saes/<model>/).
    - `local`: sae_lens folders (cfg.json + sae_weights.safetensors) listed in `paths`.
    - `pretrained`: an sae_lens release and its `sae_ids` (needs the hub).
    `hooks` optionally selects a subset by hook name.
    """

    source: Literal["embedded", "local", "pretrained"] = "embedded"
    paths: list[Text] = Field(default_factory=list)
    release: Text | None = None
    sae_ids: list[Text] = Field(default_factory=list)
    hooks: list[Annotated[str, Field(pattern=HOOK_RE)]] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _source_complete(self):
        if self.source == "local" and not self.paths:
            raise bad("source 'local' needs paths: a list of sae_lens SAE folders")
        if self.source == "pretrained" and (not self.release or not self.sae_ids):
            raise bad("source 'pretrained' needs release and sae_ids")
        return self


def hook_layer(hook: str) -> int:
    m = re.match(r"blocks\.(\d+)\.", hook)
    if not m:
        raise UserError(f"hook {hook!r} is not a per-layer hook (blocks.L.<hook>)")
    return int(m.group(1))


def hook_position(hook: str) -> tuple[int, str]:
    """(layer, hook point) of a per-layer hook `blocks.L.<point>`."""
    m = re.match(r"blocks\.(\d+)\.(.+)$", hook)
    if not m:
        raise UserError(f"hook {hook!r} is not a per-layer hook (blocks.L.<hook>)")
    return int(m.group(1)), m.group(2)


def affine_decoder(sae) -> bool:
    """True when sae.decode(a) = f(a) + b_dec with f linear (no output normalisation)."""
    cfg = sae.cfg
    return (getattr(cfg, "normalize_activations", "none") in ("none", None)
            and hasattr(sae, "b_dec") and not sae.hook_sae_recons.fwd_hooks)


def hook_name(sae) -> str:
    name = getattr(sae.cfg.metadata, "hook_name", None)
    if not name:
        raise UserError("an SAE has no hook_name in its config (cfg.metadata.hook_name)")
    return name


def embedded_sae_root(model_name: str) -> Path:
    return data_dir() / EMBEDDED_SAE_DIR / model_name


def _load_local(path: Path, device: str):
    from sae_lens import SAE

    if not (path / "cfg.json").is_file():
        raise UserError(f"{path} is not an sae_lens SAE folder (no cfg.json)")
    return SAE.load_from_disk(str(path), device=device)


def load_saes(cfg: SAESetConfig, model, device: str = "cpu") -> dict[str, object]:
    """Load, validate against `model` and order the SAEs of `cfg` (shallowest first)."""
    saes = []
    if cfg.source == "embedded":
        root = embedded_sae_root(model.cfg.model_name)
        dirs = sorted(p.parent for p in root.glob("*/cfg.json")) if root.is_dir() else []
        if not dirs:
            raise UserError(f"no embedded SAEs for model {model.cfg.model_name!r} in {root}: "
                            "train them with `maskshare train-saes`")
        saes = [_load_local(d, device) for d in dirs]
    elif cfg.source == "local":
        if not cfg.paths:
            raise UserError("saes.source is 'local' but saes.paths is empty")
        saes = [_load_local(Path(p).expanduser(), device) for p in cfg.paths]
    else:
        if not cfg.release or not cfg.sae_ids:
            raise UserError("saes.source is 'pretrained': set saes.release and saes.sae_ids")
        from sae_lens import SAE

        for sid in cfg.sae_ids:
            try:
                saes.append(SAE.from_pretrained(cfg.release, sid, device=device))
            except ValueError as e:
                raise UserError(f"sae_lens release {cfg.release!r} / {sid!r}: {e}") from None
    out: dict[str, object] = {}
    for sae in saes:
        h = hook_name(sae)
        if cfg.hooks is not None and h not in cfg.hooks:
            continue
        check_compatible(sae, model)
        out[h] = sae.eval()
    if cfg.hooks is not None:
        missing = [h for h in cfg.hooks if h not in out]
        if missing:
            raise UserError(f"no SAE found for hook(s) {missing}; available: {sorted(out) or 'none'}")
    if not out:
        raise UserError("the SAE set is empty")
    for sae in out.values():
        for p in sae.parameters():
            p.requires_grad_(False)
    return dict(sorted(out.items(), key=lambda kv: (hook_layer(kv[0]), kv[0])))


def check_compatible(sae, model) -> None:
    """The SAE's hook must exist in the model and its width must match the activation."""
    h = hook_name(sae)
    if h not in model.hook_dict:
        raise UserError(f"SAE hook {h!r} does not exist in model {model.cfg.model_name!r}")
    layer = hook_layer(h)
    if layer >= model.cfg.n_layers:
        raise UserError(f"SAE hook {h!r} is beyond the model's {model.cfg.n_layers} layers")
    expected = model.cfg.d_model
    if any(k in h for k in ("hook_z", "hook_q", "hook_k", "hook_v")):
        expected = model.cfg.n_heads * model.cfg.d_head
    elif "mlp.hook_post" in h or "mlp.hook_pre" in h:
        expected = model.cfg.d_mlp
    if sae.cfg.d_in != expected:
        raise UserError(f"SAE at {h!r} has d_in={sae.cfg.d_in} but the model's activation there "
                        f"has width {expected}")
