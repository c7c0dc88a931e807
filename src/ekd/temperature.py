"""Temperature policies — "at what temperature" each selected token is distilled (METHODS §5).

A policy returns one detached fp32 τ_i per selected row; the step applies it to both models
(p = softmax(z_t/τ_i), q = softmax(z_s/τ_i)) and multiplies the token's loss by τ_i² (Hinton). The scores
it reads (teacher entropy, Hellinger distance) are statistics at τ=1.

    temperature = build_temperature(cfg.method, total_steps)
    tau = temperature(selection, stats, valid, ctx)          # (M,)

Policies: ``constant`` τ; ``schedule`` (hold τ0, then linear to τ1); ``idts`` (AdaKD, verified);
``entropy_map`` (EGAD, unverified form). Every τ_i they can produce lies within
[``TAU_MIN``, ``TAU_MAX``] = [0.1, 100] (``ekd.config.rules.KD_TAU``: why): the config keys that set or bound
τ are declared with that rule, and IDTS's τ_base·e^(±c) is checked against it (:func:`check_idts_range`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ekd.config.rules import KD_TAU, TAU_MAX, TAU_MIN, about
from ekd.errors import ConfigError
from ekd.registry import Registry
from ekd.selection.base import StepContext
from ekd.selection.global_batch import all_gather_1d
from ekd.selection.types import Selection

IDTS_SCORE_FLOOR = 1e-8


def _at_rows(stats: Mapping[str, Tensor], name: str, selection: Selection, policy: str) -> Tensor:
    """stats[name] at the selected rows. (B, T) → (M,) fp32."""
    if name not in stats:
        raise ValueError(
            f"temperature '{policy}' needs the statistic '{name}' (compute temperature_needs(method_cfg))"
        )
    return stats[name].reshape(-1)[selection.rows].float()  # (M,)


class TemperaturePolicy:
    """Base class: ``__call__(selection, stats, valid, ctx) → (M,)`` detached fp32 temperatures."""

    name: str = ""
    needs: frozenset[str] = frozenset()
    """Statistics (τ=1) this policy reads from ``stats``."""

    def __init__(self, cfg: Any, total_steps: int):
        self._last: Tensor | None = None

    def __call__(
        self, selection: Selection, stats: Mapping[str, Tensor], valid: Tensor, ctx: StepContext
    ) -> Tensor:
        with torch.no_grad():
            tau = self.compute(selection, stats, valid, ctx).float().detach()  # (M,)
        self._last = tau
        return tau

    def compute(
        self, selection: Selection, stats: Mapping[str, Tensor], valid: Tensor, ctx: StepContext
    ) -> Tensor:
        raise NotImplementedError

    def diagnostics(self) -> dict[str, float]:
        """Policy-specific values (the step logs τ mean/min/max itself)."""
        return {}

    def state_dict(self) -> dict:
        """Temperature policies are stateless (their inputs are the step and the stats)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None


class ConstantTemperature(TemperaturePolicy):
    """τ_i = ``kd_temperature`` for every selected token (Hinton et al. 2015)."""

    name = "constant"

    def __init__(self, cfg: Any, total_steps: int):
        super().__init__(cfg, total_steps)
        self.tau = float(cfg.kd_temperature)
        KD_TAU.check("method.kd_temperature", self.tau)

    def compute(
        self, selection: Selection, stats: Mapping[str, Tensor], valid: Tensor, ctx: StepContext
    ) -> Tensor:
        return torch.full((selection.count,), self.tau, dtype=torch.float32, device=selection.rows.device)


class ScheduledTemperature(TemperaturePolicy):
    """One τ per step: τ0 = ``kd_temperature`` while u = step/total_steps ≤ h (``temperature_hold_fraction``),
    then linear to τ1 = ``temperature_end`` at u = 1: τ = τ0 + (τ1 − τ0)·(u − h)/(1 − h)."""

    name = "schedule"

    def __init__(self, cfg: Any, total_steps: int):
        super().__init__(cfg, total_steps)
        self.start, self.end = float(cfg.kd_temperature), float(cfg.temperature_end)
        self.hold = float(cfg.temperature_hold_fraction)
        self.total_steps = max(1, int(total_steps))
        KD_TAU.check("method.kd_temperature", self.start)
        KD_TAU.check("method.temperature_end", self.end)  # τ between τ0 and τ1 is then in range too
        if not 0.0 <= self.hold <= 1.0:
            raise ConfigError(
                f"method.temperature_hold_fraction must be in [0, 1], got {self.hold}",
                keys=("method.temperature_hold_fraction",),
            )
        self._tau: float | None = None

    def tau_at(self, step: int) -> float:
        u = min(1.0, max(0.0, step / self.total_steps))
        if u <= self.hold or self.hold >= 1.0:
            return self.start
        return self.start + (self.end - self.start) * (u - self.hold) / (1.0 - self.hold)

    def compute(
        self, selection: Selection, stats: Mapping[str, Tensor], valid: Tensor, ctx: StepContext
    ) -> Tensor:
        self._tau = self.tau_at(ctx.step)
        return torch.full((selection.count,), self._tau, dtype=torch.float32, device=selection.rows.device)

    def diagnostics(self) -> dict[str, float]:
        return {} if self._tau is None else {"select/tau_schedule": self._tau}


def check_idts_range(base: float, strength: float) -> None:
    """IDTS's τ_i = τ_base·exp(−c·ŝ_i), ŝ_i ∈ (−1, 1), spans τ_base·(e^−c, e^c) (tanh saturates, so both ends
    are reached in fp32): both ends must lie within [``TAU_MIN``, ``TAU_MAX``], the range of every KD τ.

    Raises:
        ConfigError: one line naming ``method.idts_strength``, the τ range it gives and the largest c allowed.
    """
    with about("method.kd_temperature"):
        KD_TAU.check("method.kd_temperature", base)
    lo, hi = base * math.exp(-strength), base * math.exp(strength)
    if not (lo >= TAU_MIN * (1 - 1e-9) and hi <= TAU_MAX * (1 + 1e-9)):  # NaN c fails too
        c_max = math.floor(min(math.log(base / TAU_MIN), math.log(TAU_MAX / base)) * 1000) / 1000
        raise ConfigError(
            f"method.idts_strength={strength:g} with method.kd_temperature={base:g} gives per-token τ from "
            f"{lo:.3g} to {hi:.3g} (τ_base·e^±c), outside {TAU_MIN:g}–{TAU_MAX:g} ({KD_TAU.why}); use "
            f"method.idts_strength ≤ {c_max:g} at this τ_base",
            keys=("method.idts_strength", "method.kd_temperature"),
        )


class InverseDifficultyTemperature(TemperaturePolicy):
    """IDTS — Inverse Difficulty Temperature Scaling (AdaKD, arXiv 2510.11615; verified, paper + code).

    s_i = max(Hellinger_i, 1e-8) at the selected rows (τ=1); ŝ_i = tanh(log(s_i / median(s))) with the
    median over the selected tokens of the micro-batch (``torch.median``: the lower middle value for an even
    count, as in the authors' code) — of the global micro-batch: under torch.distributed the s of every rank
    are gathered (a collective), so W ranks use the median one process would; τ_i = τ_base·exp(−c·ŝ_i), τ_base = ``kd_temperature``,
    c = ``idts_strength``. Hard tokens (s above the median) get τ < τ_base, easy ones τ > τ_base, all within
    τ_base·[e^{−c}, e^{c}].
    """

    name = "idts"
    needs = frozenset({"hellinger"})

    def __init__(self, cfg: Any, total_steps: int):
        super().__init__(cfg, total_steps)
        self.base = float(cfg.kd_temperature)
        self.strength = float(cfg.idts_strength)
        check_idts_range(self.base, self.strength)
        self._median: Tensor | None = None

    def compute(
        self, selection: Selection, stats: Mapping[str, Tensor], valid: Tensor, ctx: StepContext
    ) -> Tensor:
        s = _at_rows(stats, "hellinger", selection, self.name).clamp_min(IDTS_SCORE_FLOOR)  # (M,)
        s_all = all_gather_1d(s)  # (Σ_ranks M,) before any early return: every rank joins
        # the global median, logged by rank 0 even where its own rows are none (review 136, R2: a rank that
        # selected nothing kept an earlier step's); NaN where no rank selected a row
        median = self._median = torch.median(s_all) if s_all.numel() else torch.tensor(float("nan"))
        if s.numel() == 0:
            return s
        s_hat = torch.tanh(torch.log(s / median))  # (M,) in (−1, 1)
        return self.base * torch.exp(-self.strength * s_hat)

    def diagnostics(self) -> dict[str, float]:
        return {} if self._median is None else {"select/idts_median_hellinger": float(self._median)}


class EntropyMappedTemperature(TemperaturePolicy):
    """Entropy-mapped τ (EGAD, arXiv 2605.01732 — UNVERIFIED FORM: only the abstract was reachable, so the
    map, its direction and its range are our choice and are config knobs).

    Ĥ_i = clamp(H(p_i)/log V, 0, 1) (teacher entropy at τ=1); τ_i = τ_min + (τ_max − τ_min)·g(Ĥ_i) with
    g(Ĥ) = Ĥ (``entropy_direction=increasing``, default: a confident teacher gives a sharp target) or 1 − Ĥ
    (``decreasing``); τ_min = ``entropy_tau_min``, τ_max = ``entropy_tau_max``.
    """

    name = "entropy_map"
    needs = frozenset({"teacher_entropy"})

    def __init__(self, cfg: Any, total_steps: int):
        super().__init__(cfg, total_steps)
        self.tau_min, self.tau_max = float(cfg.entropy_tau_min), float(cfg.entropy_tau_max)
        self.direction = cfg.entropy_direction
        KD_TAU.check("method.entropy_tau_min", self.tau_min)
        KD_TAU.check("method.entropy_tau_max", self.tau_max)
        if self.tau_min > self.tau_max:
            raise ConfigError(
                f"method.entropy_tau_min must be ≤ method.entropy_tau_max ({self.tau_min} > {self.tau_max})",
                keys=("method.entropy_tau_min", "method.entropy_tau_max"),
            )
        if self.direction not in ("increasing", "decreasing"):
            raise ConfigError(
                f"method.entropy_direction must be increasing or decreasing, got '{self.direction}'",
                keys=("method.entropy_direction",),
            )

    def compute(
        self, selection: Selection, stats: Mapping[str, Tensor], valid: Tensor, ctx: StepContext
    ) -> Tensor:
        h = _at_rows(stats, "teacher_entropy", selection, self.name) / math.log(ctx.vocab_size)  # (M,)
        h = h.clamp(0.0, 1.0)
        g = h if self.direction == "increasing" else 1.0 - h
        return self.tau_min + (self.tau_max - self.tau_min) * g


temperatures: Registry[type[TemperaturePolicy]] = Registry("temperature")
temperatures.add("constant", ConstantTemperature, "one τ for every token (method.kd_temperature)")
temperatures.add("schedule", ScheduledTemperature, "hold τ0, then linear to τ1")
temperatures.add("idts", InverseDifficultyTemperature, "AdaKD IDTS: τ_base·exp(−c·tanh(log(s/median s)))")
temperatures.add(
    "entropy_map", EntropyMappedTemperature, "EGAD: τ_min + (τ_max − τ_min)·g(H(p)/log V) (unverified)"
)


def build_temperature(method_cfg: Any, total_steps: int) -> TemperaturePolicy:
    """The temperature policy of ``method_cfg`` for a run of ``total_steps`` optimizer steps."""
    name = method_cfg.temperature
    if name not in temperatures:
        raise ConfigError(
            f"method.temperature: {temperatures.unknown_message(name)}", keys=("method.temperature",)
        )
    return temperatures.get(name)(method_cfg, total_steps)


def temperature_needs(method_cfg: Any) -> set[str]:
    """Statistic names the configured temperature policy reads."""
    name = method_cfg.temperature
    if name not in temperatures:
        raise ConfigError(
            f"method.temperature: {temperatures.unknown_message(name)}", keys=("method.temperature",)
        )
    return set(temperatures.get(name).needs)


def fixed_tau(method_cfg: Any, total_steps: int | None = None) -> float | None:
    """The one τ that every token of every step gets under the configured policy, or None when τ varies.

    ``constant`` gives ``kd_temperature``; ``schedule`` gives it too when it never leaves τ0
    (``temperature_end`` = ``kd_temperature``, ``temperature_hold_fraction`` = 1, or — over a run of
    ``total_steps`` — a hold that outlasts the run's last step); the per-token policies (``idts``,
    ``entropy_map``) give None. Cached targets are made at one τ, so only a fixed τ can train from them.
    """
    tau0 = float(method_cfg.kd_temperature)
    if method_cfg.temperature == "constant":
        return tau0
    if method_cfg.temperature == "schedule":
        if float(method_cfg.temperature_end) == tau0 or float(method_cfg.temperature_hold_fraction) >= 1.0:
            return tau0
        if total_steps and ScheduledTemperature(method_cfg, total_steps).tau_at(total_steps - 1) == tau0:
            return tau0  # τ moves from τ0 only after the run's last step (0-based: u ≤ (T − 1)/T)
    return None


def varying_tau(method_cfg: Any, total_steps: int | None = None) -> str:
    """How the configured policy varies τ, for a refusal: '… changes τ per token' or '… over the steps' (of a
    run of ``total_steps``, named: a schedule held past a shorter run's end does not, :func:`fixed_tau`)."""
    name = method_cfg.temperature
    if name == "schedule":
        run = f" of train.max_steps={total_steps}" if total_steps else ""
        hold = float(method_cfg.temperature_hold_fraction)
        # τ stays τ0 while the last step's u = (T − 1)/T ≤ hold, i.e. for T ≤ 1/(1 − hold) (try-out 32)
        held = (
            f"; it holds τ0 in runs of at most {math.floor(1 / (1 - hold) + 1e-9)} steps"
            if 0 < hold < 1
            else ""
        )
        return (
            f"method.temperature=schedule changes τ over the steps{run} ({method_cfg.kd_temperature} → "
            f"{method_cfg.temperature_end}{held})"
        )
    return f"method.temperature={name} changes τ per token"
