"""Method keys a run sets that its method never reads.

A ``method.*`` knob belongs to one component — a temperature, a target, a divergence, a policy, an objective — and
only that component reads it: ``method=egad method.kd_temperature=3`` trained at EGAD's entropy-mapped τ (from
``method.entropy_tau_min``/``max``) with no word, and its config.yaml recorded τ = 3 (try-out 53, F5). A key whose
value differs from what the preset gives it, while the resolved method never reads it, is refused at the start of
a run (:func:`refuse_inert_keys`); a resumed run's saved config is only warned about.

:data:`READ_WHEN` says, per key, when it is read; ``tests/test_inert_keys.py`` checks it against the keys every
registered policy and temperature reads as it is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ekd.errors import ConfigError


@dataclass(frozen=True)
class ReadWhen:
    """When a method key is read: ``reads(method_cfg)``, said as ``when`` ("under method.target=rs")."""

    reads: Callable[[Any], bool]
    when: str


def _under(key: str, *values: str) -> ReadWhen:
    """Read only while ``method.<key>`` is one of ``values``."""
    return ReadWhen(lambda m: getattr(m, key) in values, f"under method.{key}={' or '.join(values)}")


_SELECT_FRACTION_POLICIES = ("topk", "gls", "curriculum", "pos_rs")  # coverage_schedule: k from coverage_*
_LINUCB = ReadWhen(
    lambda m: m.policy == "bandit" and m.bandit_kind == "linucb",
    "under method.policy=bandit with method.bandit_kind=linucb",
)
_EXP3 = ReadWhen(
    lambda m: m.policy == "bandit" and m.bandit_kind == "exp3",
    "under method.policy=bandit with method.bandit_kind=exp3",
)
_FEATURES = ReadWhen(lambda m: m.feature_weight > 0, "with method.feature_weight > 0 (the feature branch)")
_ON_POLICY = ReadWhen(
    lambda m: m.student_data_fraction > 0, "with method.student_data_fraction > 0 (student-generated data)"
)

READ_WHEN: dict[str, ReadWhen] = {
    # the temperature (ekd.temperature): each kind reads its own knobs
    "kd_temperature": _under("temperature", "constant", "schedule", "idts"),
    "temperature_end": _under("temperature", "schedule"),
    "temperature_hold_fraction": _under("temperature", "schedule"),
    "idts_strength": _under("temperature", "idts"),
    "entropy_tau_min": _under("temperature", "entropy_map"),
    "entropy_tau_max": _under("temperature", "entropy_map"),
    "entropy_direction": _under("temperature", "entropy_map"),
    # the teacher's targets and the divergence
    "topk": _under("target", "topk"),
    "topk_tail": _under("target", "topk"),
    "rs_samples": _under("target", "rs"),
    "rs_proposal_power": _under("target", "rs"),
    "jsd_beta": _under("divergence", "jsd"),
    "skew_alpha": _under("divergence", "skew_forward_kl", "skew_reverse_kl"),
    "ce_on": ReadWhen(lambda m: m.ce_weight > 0, "with method.ce_weight > 0"),
    # where the KD goes: the scorer and the policy (ekd.selection)
    "scorer_weights": _under("scorer", "composite"),
    "scorer_normalization": _under("scorer", "composite"),
    "select_fraction": ReadWhen(
        lambda m: (
            m.policy in _SELECT_FRACTION_POLICIES or (m.policy == "bandit" and m.bandit_kind == "linucb")
        ),
        f"under method.policy={' or '.join(_SELECT_FRACTION_POLICIES)} (or bandit with method.bandit_kind=linucb)",
    ),
    "select_per": ReadWhen(
        lambda m: (
            m.policy in ("topk", "coverage_schedule") or (m.policy == "bandit" and m.bandit_kind == "exp3")
        ),
        "under method.policy=topk or coverage_schedule (or bandit with method.bandit_kind=exp3)",
    ),
    "gls_queue_size": _under("policy", "gls"),
    "curriculum_steps": _under("policy", "curriculum"),
    "curriculum_start": _under("policy", "curriculum"),
    "curriculum_end": _under("policy", "curriculum"),
    "curriculum_power": _under("policy", "curriculum"),
    "coverage_start": _under("policy", "coverage_schedule"),
    "coverage_end": _under("policy", "coverage_schedule"),
    "coverage_shape": _under("policy", "coverage_schedule"),
    "bucket_low": _under("policy", "bucket"),
    "bucket_high": _under("policy", "bucket"),
    "pos_rs_power": _under("policy", "pos_rs"),
    "pos_rs_self_normalized": _under("policy", "pos_rs"),
    "latf_warmup_fraction": _under("policy", "latf"),
    "latf_ema_decay": _under("policy", "latf"),
    "latf_tolerance": _under("policy", "latf"),
    "latf_step": _under("policy", "latf"),
    "latf_min_ratio": _under("policy", "latf"),
    "bandit_kind": _under("policy", "bandit"),
    "bandit_alpha": _LINUCB,
    "bandit_ridge": _LINUCB,
    "bandit_min_fraction": _LINUCB,
    "bandit_max_fraction": _LINUCB,
    "bandit_threshold": _LINUCB,
    "bandit_budgets": _EXP3,
    "bandit_gamma": _EXP3,
    "sample_scorer": ReadWhen(lambda m: m.sample_fraction < 1, "with method.sample_fraction < 1"),
    # the objective and its branches
    "dkd_beta": _under("objective", "dkd"),
    "atkd_lambda": _under("objective", "atkd"),
    "feature_hard_fraction": _FEATURES,
    "feature_loss": _FEATURES,
    "feature_student_layer": _FEATURES,
    "feature_teacher_layer": _FEATURES,
    "sampling_temperature": _ON_POLICY,
    "max_new_tokens": _ON_POLICY,
    "prompt_tokens": _ON_POLICY,
}


def inert_keys(method_cfg: Any) -> list[tuple[str, Any, str]]:
    """``[("kd_temperature", 3.0, "under method.temperature=constant or schedule or idts"), ...]``: the keys of
    :data:`READ_WHEN` whose value differs from the one the preset gives them (the user set them) while the
    resolved method does not read them, with their value and when they are read; [] when there is none."""
    from ekd.methods import preset_values

    preset, defaults = preset_values(method_cfg.preset), type(method_cfg)()
    out = []
    for key, rule in READ_WHEN.items():
        value = getattr(method_cfg, key)
        if value != preset.get(key, getattr(defaults, key)) and not rule.reads(method_cfg):
            out.append((key, value, rule.when))
    return out


def inert_message(method_cfg: Any) -> str:
    """The line naming every inert key (:func:`inert_keys`) and the resolved method; "" when there is none."""
    inert = inert_keys(method_cfg)
    if not inert:
        return ""
    m, one = method_cfg, len(inert) == 1
    named = "; ".join(f"method.{key}={value} is read only {when}" for key, value, when in inert)
    return (
        f"{named}: {'it has' if one else 'they have'} no effect on this run (method.preset={m.preset}: "
        f"temperature={m.temperature}, target={m.target}, divergence={m.divergence}, policy={m.policy}, "
        f"objective={m.objective}); drop {'it' if one else 'them'}, or choose what reads {'it' if one else 'them'}"
    )


def refuse_inert_keys(method_cfg: Any) -> None:
    """Refuse a run whose config sets method keys its method never reads (:func:`inert_keys`).

    Raises:
        ConfigError: one line naming each such key, when it is read, and the resolved method's choices.
    """
    if message := inert_message(method_cfg):
        raise ConfigError(message, keys=tuple(f"method.{key}" for key, _, _ in inert_keys(method_cfg)))
