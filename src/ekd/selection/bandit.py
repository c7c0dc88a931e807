"""Bandit allocation of the KD budget (EKD draft, "bandit variants for allocating KD budget"; the draft
gives the idea, not the algorithmic details — every detail below is our choice and marked as such).

``method.policy=bandit`` with ``method.bandit_kind``:

- ``linucb`` (contextual, per token): LinUCB (Li et al. 2010) with A = λI + Σ x xᵀ, b = Σ r·x,
  θ = A⁻¹b and UCB(x) = θᵀx + α·√(xᵀA⁻¹x) over token features
  x = [teacher entropy H(p), student CE −log q(y), forward KL(p‖q) (0 when not computed), t/(T−1)].
  Per sequence, the valid tokens with UCB > ``bandit_threshold`` are selected, their count clamped to
  [⌈min·n_i⌉, ⌈max·n_i⌉] (``bandit_min_fraction``, ``bandit_max_fraction``) by taking the top tokens by UCB.
  The reward of a selected token is r = clip(KL_before − KL_after, −5, 5), the drop of its KL after the
  optimizer step, fed through ``observe(kl_before=..., kl_after=...)``.
- ``exp3`` (non-contextual, per step): EXP3 (Auer et al. 2002) over the budgets ``bandit_budgets``. One budget
  k is drawn per optimizer step from p = (1−γ)·w/Σw + γ/K; the step selects the top-k positions by the
  configured scorer (``select_per`` scope). Reward (our choice): the relative drop of the mean KL at the
  selected tokens, ρ = clip((KL̄_before − KL̄_after)/KL̄_before, −1, 1), mapped to [0, 1] as (1 + ρ)/2; then
  log w_k += γ·(reward/p_k)/K.

Both keep their statistics in ``state_dict`` (checkpointed). Under torch.distributed the per-step statistic
updates are summed over ranks, so every rank holds the same A, b and weights (``observe`` is collective).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ekd.errors import ConfigError
from ekd.selection.base import (
    COUNT_SLACK,
    SelectionPolicy,
    StepContext,
    check_state_name,
    finite_only,
    rank_within_rows,
    topk_mask,
    topk_planned,
)
from ekd.selection.global_batch import all_reduce_sum
from ekd.selection.types import Selection

FEATURE_NAMES = ("teacher_entropy", "student_ce", "forward_kl", "position")
REWARD_CLIP = 5.0


def _fraction_count(fraction: float, n: Tensor) -> Tensor:
    """⌈fraction·n⌉ clamped to [0, n] (no minimum of 1: a 0 fraction selects nothing). (B,) → (B,)."""
    return torch.ceil(n.double() * fraction - COUNT_SLACK).long().clamp(min=0).minimum(n)


class LinUCBBandit(SelectionPolicy):
    """Contextual LinUCB over per-token features; see the module docstring for the rule."""

    name = "bandit"
    needs_scores = False

    def __init__(self, cfg: Any, total_steps: int):
        super().__init__()
        self.alpha = float(cfg.bandit_alpha)
        self.ridge = float(cfg.bandit_ridge)
        self.min_fraction = float(cfg.bandit_min_fraction)
        self.max_fraction = float(cfg.bandit_max_fraction)
        self.threshold = float(cfg.bandit_threshold)
        self.target_fraction = min(max(float(cfg.select_fraction), self.min_fraction), self.max_fraction)
        if self.ridge <= 0:
            raise ConfigError(f"method.bandit_ridge must be > 0, got {self.ridge}")
        if not 0.0 <= self.min_fraction <= self.max_fraction <= 1.0:
            raise ConfigError("method.bandit_min_fraction ≤ method.bandit_max_fraction must lie in [0, 1]")
        d = len(FEATURE_NAMES)
        self.A = self.ridge * torch.eye(d, dtype=torch.float64)  # (d, d)
        self.b = torch.zeros(d, dtype=torch.float64)  # (d,)
        self.tokens_observed = 0
        self.last_reward = math.nan
        self._pending: list[Tensor] = []  # (M_j, d) features of rows selected since the last observe
        self._above: Tensor | None = None

    @staticmethod
    def features(valid: Tensor, stats: dict[str, Tensor]) -> Tensor:
        """(B, T, d) float64 token features [H(p), −log q(y), KL(p‖q) or 0, t/(T−1)]."""
        missing = [n for n in ("teacher_entropy", "student_logp_gold") if n not in stats]
        if missing:
            raise ValueError(
                f"bandit (linucb) reads token features {missing} from ctx.features; "
                "pass the step's stats dict (score_needs(method_cfg) lists them)"
            )
        b, t = valid.shape
        kl = stats.get("forward_kl")
        position = torch.arange(t, device=valid.device, dtype=torch.float64) / max(t - 1, 1)  # (T,)
        # (B, T, d)
        x = torch.stack(
            [
                stats["teacher_entropy"].double(),
                -stats["student_logp_gold"].double(),
                kl.double()
                if kl is not None
                else torch.zeros(b, t, dtype=torch.float64, device=valid.device),
                position.expand(b, t),
            ],
            dim=-1,
        )
        return x.masked_fill(~valid[..., None], 0.0)

    def ucb(self, x: Tensor) -> Tensor:
        """θᵀx + α·√(xᵀA⁻¹x). x (N, d) → (N,) float64."""
        a_inv = torch.linalg.inv(self.A.to(x.device))  # (d, d)
        theta = a_inv @ self.b.to(x.device)  # (d,)
        bonus = ((x @ a_inv) * x).sum(-1).clamp_min(0.0).sqrt()  # (N,)
        return x @ theta + self.alpha * bonus

    def select(self, scores: Tensor | None, valid: Tensor, ctx: StepContext) -> Selection:
        b, t = valid.shape
        x = self.features(valid, ctx.features)  # (B, T, d)
        u = self.ucb(x.reshape(-1, x.shape[-1])).reshape(b, t)  # (B, T)
        n = valid.sum(-1)  # (B,)
        above = (valid & (u > self.threshold)).sum(-1)  # (B,)
        lo = _fraction_count(self.min_fraction, n)  # (B,)
        hi = torch.maximum(_fraction_count(self.max_fraction, n), lo)  # (B,)
        k = torch.minimum(torch.maximum(above, lo), hi)  # (B,)
        mask = valid & (rank_within_rows(u, valid, descending=True) < k[:, None])  # (B, T)
        selection = Selection.from_mask(mask)
        self._pending.append(x.reshape(-1, x.shape[-1])[selection.rows])  # (M, d)
        self._above = above.sum()
        return selection

    def planned_count(self, valid: Tensor, ctx: StepContext) -> float:
        """The target k·N, k = select_fraction clamped to [min, max] fraction (the count varies per batch)."""
        return self.target_fraction * float(valid.sum())

    def observe(self, kd_loss: float | None = None, **feedback: Tensor | float) -> None:
        """Update A and b with the selected tokens of the step.

        Args:
            kd_loss: unused.
            **feedback: ``kl_before``, ``kl_after``: (M,) KL at the rows selected since the last ``observe``,
                micro-batches concatenated in selection order, before and after the optimizer step. Without
                them the pending tokens are dropped (no update).
        """
        d = len(FEATURE_NAMES)
        pending, self._pending = self._pending, []
        before, after = feedback.get("kl_before"), feedback.get("kl_after")
        if before is None or after is None:
            return
        x = torch.cat(pending) if pending else self.A.new_zeros(0, d)  # (M, d)
        before = torch.as_tensor(before, dtype=torch.float64, device=x.device).reshape(-1)
        after = torch.as_tensor(after, dtype=torch.float64, device=x.device).reshape(-1)
        if before.numel() != x.shape[0] or after.numel() != x.shape[0]:
            raise ValueError(
                f"bandit feedback has {before.numel()}/{after.numel()} values for {x.shape[0]} selected tokens; "
                "pass kl_before/kl_after at every row selected since the last observe, in selection order"
            )
        reward = (before - after).clamp(-REWARD_CLIP, REWARD_CLIP)  # (M,)
        delta = torch.cat(
            [(x.T @ x).reshape(-1), x.T @ reward, reward.sum()[None], x.new_tensor([x.shape[0]])]
        )
        delta = all_reduce_sum(delta)  # (d·d + d + 2,) summed over ranks
        self.A = self.A.to(x.device) + delta[: d * d].reshape(d, d)
        self.b = self.b.to(x.device) + delta[d * d : d * d + d]
        count = int(delta[-1])
        self.tokens_observed += count
        if count:
            self.last_reward = float(delta[-2]) / count

    def theta(self) -> Tensor:
        return torch.linalg.solve(self.A, self.b)

    def state_dict(self) -> dict:
        return {
            "policy": self.name,
            "kind": "linucb",
            "A": self.A.detach().cpu().clone(),
            "b": self.b.detach().cpu().clone(),
            "tokens_observed": self.tokens_observed,
            "last_reward": self.last_reward,
        }

    def load_state_dict(self, state: dict) -> None:
        check_state_name(state, self.name)
        if state.get("kind") != "linucb":
            raise ConfigError(f"bandit state is '{state.get('kind')}' but method.bandit_kind is 'linucb'")
        self.A = state["A"].detach().double().clone()
        self.b = state["b"].detach().double().clone()
        self.tokens_observed = int(state["tokens_observed"])
        self.last_reward = float(state["last_reward"])
        self._pending = []

    def diagnostics(self) -> dict[str, float]:
        out = super().diagnostics()
        out["select/bandit_tokens_observed"] = float(self.tokens_observed)
        out["select/bandit_reward"] = self.last_reward
        for name, value in zip(FEATURE_NAMES, self.theta().tolist()):
            out[f"select/bandit_theta_{name}"] = value
        return finite_only(out)

    def micro_batch_sums(self) -> dict[str, float]:
        """``bandit_above``: the micro-batch's candidates whose UCB exceeded ``bandit_threshold`` (before the clamp)."""
        return {"bandit_above": float(self._above)} if self._above is not None else {}


class Exp3Budget(SelectionPolicy):
    """EXP3 over KD budgets, one draw per optimizer step; see the module docstring for the rule."""

    name = "bandit"

    def __init__(self, cfg: Any, total_steps: int):
        super().__init__()
        self.budgets = [float(k) for k in cfg.bandit_budgets]
        self.gamma = float(cfg.bandit_gamma)
        self.per = cfg.select_per
        if not self.budgets or not all(0.0 < k <= 1.0 for k in self.budgets):
            raise ConfigError(
                f"method.bandit_budgets must be a non-empty list of fractions in (0, 1], got {self.budgets}"
            )
        if not 0.0 < self.gamma <= 1.0:
            raise ConfigError(f"method.bandit_gamma must be in (0, 1], got {self.gamma}")
        self.log_weights = torch.zeros(len(self.budgets), dtype=torch.float64)  # (K,)
        self.pulls = torch.zeros(len(self.budgets), dtype=torch.long)  # (K,)
        self.arm = -1
        self.arm_step = -1
        self.last_reward = math.nan

    def probabilities(self) -> Tensor:
        """p = (1−γ)·w/Σw + γ/K. → (K,) float64."""
        k = len(self.budgets)
        return (1.0 - self.gamma) * torch.softmax(self.log_weights, 0) + self.gamma / k

    def _arm_for(self, ctx: StepContext) -> int:
        """The budget index of this optimizer step, drawn once (by whichever of planned_count/select is first)."""
        if self.arm_step != ctx.step:
            g = ctx.generator
            p = self.probabilities().to(device=g.device, dtype=torch.float32)
            self.arm = int(torch.multinomial(p, 1, generator=g))
            self.arm_step = ctx.step
            self.pulls[self.arm] += 1
        return self.arm

    def select(self, scores: Tensor | None, valid: Tensor, ctx: StepContext) -> Selection:
        scores = self._require_scores(scores, valid)
        mask = topk_mask(scores, valid, self.budgets[self._arm_for(ctx)], self.per)  # (B, T)
        return Selection.from_mask(mask)

    def planned_count(self, valid: Tensor, ctx: StepContext) -> float:
        return topk_planned(valid, self.budgets[self._arm_for(ctx)], self.per)

    def observe(self, kd_loss: float | None = None, **feedback: Tensor | float) -> None:
        """Reward the budget of the step: ``kl_before``/``kl_after`` at the selected rows (tensors (M,), or
        their means as floats). Collective under torch.distributed."""
        before, after = feedback.get("kl_before"), feedback.get("kl_after")
        if before is None or after is None or self.arm < 0:
            return
        before = torch.as_tensor(before, dtype=torch.float64).reshape(-1)
        after = torch.as_tensor(after, dtype=torch.float64, device=before.device).reshape(-1)
        sums = torch.stack([before.sum(), after.sum(), before.new_tensor(float(before.numel()))])
        sums = all_reduce_sum(sums)  # (3,) over ranks
        if float(sums[2]) == 0:
            return
        mean_before, mean_after = float(sums[0] / sums[2]), float(sums[1] / sums[2])
        if not (math.isfinite(mean_before) and math.isfinite(mean_after)):  # max/min would make NaN the best
            self.last_reward = math.nan  # reward (review 128, S2); the step's non-finite loss stops the run
            return
        rel = max(-1.0, min(1.0, (mean_before - mean_after) / max(mean_before, 1e-8)))
        reward = 0.5 * (1.0 + rel)
        p = float(self.probabilities()[self.arm])
        self.log_weights[self.arm] += self.gamma * (reward / p) / len(self.budgets)
        self.log_weights -= self.log_weights.max()  # keep exp() finite; p is unchanged
        self.last_reward = reward

    def state_dict(self) -> dict:
        return {
            "policy": self.name,
            "kind": "exp3",
            "log_weights": self.log_weights.clone(),
            "pulls": self.pulls.clone(),
            "arm": self.arm,
            "arm_step": self.arm_step,
            "last_reward": self.last_reward,
        }

    def load_state_dict(self, state: dict) -> None:
        check_state_name(state, self.name)
        if state.get("kind") != "exp3":
            raise ConfigError(f"bandit state is '{state.get('kind')}' but method.bandit_kind is 'exp3'")
        if state["log_weights"].numel() != len(self.budgets):
            raise ConfigError("bandit state has a different number of budgets than method.bandit_budgets")
        self.log_weights = state["log_weights"].detach().double().clone()
        self.pulls = state["pulls"].detach().long().clone()
        self.arm, self.arm_step = int(state["arm"]), int(state["arm_step"])
        self.last_reward = float(state["last_reward"])

    def diagnostics(self) -> dict[str, float]:
        out = super().diagnostics()
        if self.arm >= 0:
            out["select/k"] = self.budgets[self.arm]
        out["select/bandit_reward"] = self.last_reward
        for k, p in zip(self.budgets, self.probabilities().tolist()):
            out[f"select/bandit_p_k{k:g}"] = p
        return finite_only(out)
