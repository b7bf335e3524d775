"""When a mask's training stops before `masks.steps`: `EarlyStop` (the binarised mask has
not changed for `masks.early_stop_patience` steps) and `ValidationStop` (its F on a
validation sample has not improved for `masks.validation_stop.patience` checks). Both are
rebuilt from the training history, so a resumed run stops where it would have."""

from __future__ import annotations

from torch import Tensor

from maskshare.config import MaskConfig
from maskshare.masks.masking import binarize


class EarlyStop:
    """`cfg.early_stop_patience = K`: stop once the binarised mask has not changed for K
    consecutive steps (and at least `cfg.early_stop_min_steps` steps ran). The count of
    unchanged steps is rebuilt from the history, so a resumed run stops where it would
    have."""

    def __init__(self, cfg: MaskConfig, theta: dict[str, Tensor], history: list[dict]):
        self.patience, self.min_steps = cfg.early_stop_patience, cfg.early_stop_min_steps
        self.prev = {h: t.detach() > 0 for h, t in theta.items()} if self.patience else None
        self.unchanged = 0
        for r in reversed(history):
            if not self.patience or r.get("changed", True):
                break
            self.unchanged += 1

    def done(self, start: int) -> bool:
        """The resumed run had already stopped."""
        return (bool(self.patience) and self.unchanged >= self.patience
                and start >= self.min_steps)

    def update(self, theta: dict[str, Tensor], rec: dict, step: int) -> bool:
        """Record in `rec` whether step `step` changed the binarised mask; True to stop."""
        if not self.patience:
            return False
        now = {h: t.detach() > 0 for h, t in theta.items()}
        rec["changed"] = any(bool((now[h] != self.prev[h]).any()) for h in theta)
        self.prev = now
        self.unchanged = 0 if rec["changed"] else self.unchanged + 1
        return self.unchanged >= self.patience and step + 1 >= self.min_steps


class ValidationStop:
    """`cfg.validation_stop.every = N` with a `monitor` (binary masks -> validation F): every
    N steps (from `early_stop_min_steps` on) record `f_validation`; stop after `patience`
    checks without a gain above `min_gain` over the best so far. Rebuilt from the history,
    so a resumed run stops where it would have."""

    def __init__(self, cfg: MaskConfig, monitor, history: list[dict]):
        vs = cfg.validation_stop
        self.every = vs.every if monitor is not None else None
        self.monitor, self.patience, self.gain = monitor, vs.patience, vs.min_gain
        self.min_steps = cfg.early_stop_min_steps
        self.best, self.stale = None, 0
        for r in history:
            if r.get("f_validation") is not None:
                self._see(r["f_validation"])

    def _see(self, f: float) -> None:
        if self.best is None or f > self.best + self.gain:
            self.best, self.stale = f, 0
        else:
            self.stale += 1

    def done(self) -> bool:
        return self.every is not None and self.stale >= self.patience

    def update(self, theta: dict[str, Tensor], rec: dict, step: int) -> bool:
        if self.every is None or step + 1 < self.min_steps or (step + 1) % self.every:
            return False
        f = self.monitor(binarize({h: t.detach() for h, t in theta.items()}))
        rec["f_validation"] = None if f is None else float(f)
        if f is not None:
            self._see(float(f))
        return self.done()
