"""LATF — Loss-driven Adaptive Token Focusing (AdaKD, Xie et al., AAAI-26, arXiv 2510.11615; verified
against the paper and the authors' code).

Select the top ⌈r·N⌉ valid positions of the micro-batch by the configured score (the ``adakd`` preset uses
the Hellinger distance), batch-global. The ratio r adapts to the distillation loss:

- r = 1 during warm-up (the first ``latf_warmup_fraction`` of the optimizer steps);
- an EMA L̄ ← β·L̄ + (1−β)·L of the all-reduced mean KD loss (β = ``latf_ema_decay``; L̄ starts at the
  first loss) is kept from the first step;
- the reference L_ref is set to L̄ at the first step after warm-up and reset to L̄ whenever r is adjusted;
- after that, each step: if L̄ < L_ref·(1−ε): r ← max(r_min, r·(1−δ)); if L̄ > L_ref·(1+ε): r ← min(1, r·(1+δ)).

As in the authors' code, the reference is also reset when the adjustment is clamped at r_min or 1, the
comparison is not made on the step the reference is first set, and the EMA is kept during warm-up.
Differences from that code: the count is ⌈r·N⌉ (theirs ⌊r·N⌋, at least 1), one rule shared with ``topk``.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from ekd.errors import ConfigError
from ekd.selection.base import (
    SelectionPolicy,
    StepContext,
    check_state_name,
    finite_only,
    topk_mask,
    topk_planned,
)
from ekd.selection.types import Selection


class LossAdaptiveTokenFocusing(SelectionPolicy):
    """AdaKD LATF: top r of the batch by score, r driven by the KD-loss EMA (see the module docstring)."""

    name = "latf"

    def __init__(self, cfg: Any, total_steps: int):
        super().__init__()
        self.warmup_steps = float(cfg.latf_warmup_fraction) * max(1, int(total_steps))
        self.decay = float(cfg.latf_ema_decay)
        self.tolerance = float(cfg.latf_tolerance)
        self.step_size = float(cfg.latf_step)
        self.min_ratio = float(cfg.latf_min_ratio)
        if not 0.0 < self.min_ratio <= 1.0:
            raise ConfigError(f"method.latf_min_ratio must be in (0, 1], got {self.min_ratio}")
        if not 0.0 <= self.decay < 1.0:
            raise ConfigError(f"method.latf_ema_decay must be in [0, 1), got {self.decay}")
        self.ratio = 1.0
        self.loss_ema = math.nan  # L̄ (nan until the first loss)
        self.reference = math.nan  # L_ref (nan until the end of warm-up)
        self.steps_observed = 0
        self.changes = 0
        self._threshold: Tensor | None = None

    def select(self, scores: Tensor | None, valid: Tensor, ctx: StepContext) -> Selection:
        scores = self._require_scores(scores, valid)
        mask = topk_mask(scores, valid, self.ratio, "batch")  # (B, T)
        self._threshold = scores[mask].min() if bool(mask.any()) else None  # 0-d: lowest selected score
        return Selection.from_mask(mask)

    def planned_count(self, valid: Tensor, ctx: StepContext) -> float:
        return topk_planned(valid, self.ratio, "batch")

    def observe(self, kd_loss: float | None = None, **feedback: Tensor | float) -> None:
        """One optimizer step done; ``kd_loss`` is the mean KD loss of the step, all-reduced over ranks."""
        self.steps_observed += 1
        if kd_loss is None:
            return
        loss = float(kd_loss)
        if not math.isfinite(loss):
            return
        if math.isnan(self.loss_ema):
            self.loss_ema = loss
        else:
            self.loss_ema = self.decay * self.loss_ema + (1.0 - self.decay) * loss
        if math.isnan(self.reference):
            if self.steps_observed > self.warmup_steps:
                self.reference = self.loss_ema  # end of warm-up
            return
        if self.loss_ema < self.reference * (1.0 - self.tolerance):
            self.ratio = max(self.min_ratio, self.ratio * (1.0 - self.step_size))
        elif self.loss_ema > self.reference * (1.0 + self.tolerance):
            self.ratio = min(1.0, self.ratio * (1.0 + self.step_size))
        else:
            return
        self.reference = self.loss_ema
        self.changes += 1

    @property
    def in_warmup(self) -> bool:
        return math.isnan(self.reference)

    def state_dict(self) -> dict:
        return {
            "policy": self.name,
            "ratio": self.ratio,
            "loss_ema": self.loss_ema,
            "reference": self.reference,
            "steps_observed": self.steps_observed,
            "changes": self.changes,
        }

    def load_state_dict(self, state: dict) -> None:
        check_state_name(state, self.name)
        self.ratio = float(state["ratio"])
        self.loss_ema = float(state["loss_ema"])
        self.reference = float(state["reference"])
        self.steps_observed = int(state["steps_observed"])
        self.changes = int(state["changes"])

    def diagnostics(self) -> dict[str, float]:
        out = super().diagnostics()
        out["select/k"] = self.ratio
        out["select/loss_ema"] = self.loss_ema
        out["select/loss_ref"] = self.reference
        out["select/ratio_changes"] = float(self.changes)
        return finite_only(out)

    def micro_batch_sums(self) -> dict[str, float]:
        """``threshold_min``: the lowest score selected in the micro-batch (NaN when it selected none)."""
        return {"threshold_min": float(self._threshold) if self._threshold is not None else math.nan}
