"""Named method presets (METHODS §8): each paper method is a composition of config values, not a code path.

A preset is a dict of ``method.*`` values. ``method=<preset>`` on the command line (or ``method.preset``
in YAML) applies it; keys set explicitly in the file or on the command line win, so
``method=adakd method.divergence=jsd`` is AdaKD as a plug-in over JSD.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ekd.registry import Registry


@dataclass(frozen=True)
class Preset:
    values: dict[str, Any]  # method.* key → value
    paper: str = ""  # source, shown by `ekd list presets`


presets: Registry[Preset] = Registry("preset")


def _add(name: str, description: str, paper: str, **values: Any) -> None:
    presets.add(name, Preset(values=values, paper=paper), description)


# -- baselines: dense targets on all positions ------------------------------------------------------------
_add("ce", "cross-entropy only, no teacher", "—", kd_weight=0.0, ce_weight=1.0)
_add(
    "kd", "Full KD: forward KL on all positions, dense targets", "Hinton et al. 2015", divergence="forward_kl"
)
_add("rkl", "token-level reverse KL on all positions", "MiniLLM (Gu et al. 2024)", divergence="reverse_kl")
_add(
    "jsd", "generalized JSD(β=0.5) on all positions", "GKD (arXiv 2306.13649)", divergence="jsd", jsd_beta=0.5
)
_add(
    "skl",
    "skew forward KL (α=0.1)",
    "DistiLLM (arXiv 2402.03898)",
    divergence="skew_forward_kl",
    skew_alpha=0.1,
)
_add(
    "srkl",
    "skew reverse KL (α=0.1)",
    "DistiLLM (arXiv 2402.03898)",
    divergence="skew_reverse_kl",
    skew_alpha=0.1,
)
_add("tvd", "total variation distance on all positions", "—", divergence="tvd")

# -- how: sparse teacher targets (METHODS §2) --------------------------------------------------------------
_add(
    "topk",
    "top-K=12 targets, renormalized (biased)",
    "DistillKit / sparse logits",
    target="topk",
    topk=12,
    topk_tail="renormalize",
)
_add(
    "topk_ghost",
    "top-K=12 targets + one tail bucket",
    "sparse logits, ghost token",
    target="topk",
    topk=12,
    topk_tail="ghost",
)
_add(
    "topk_gold",
    "top-K=12 targets, tail mass on the gold token",
    "sparse logits",
    target="topk",
    topk=12,
    topk_tail="to_gold",
)
_add(
    "rskd",
    "Random-Sampling KD: N=50 draws, unbiased sparse targets",
    "RS-KD (arXiv 2503.16870)",
    target="rs",
    rs_samples=50,
)

# -- where: token selection (METHODS §3–4) -----------------------------------------------------------------
_add(
    "selective_kd",
    "student-CE top 50% per batch, CE on all tokens",
    "Wang et al. 2021 (arXiv 2105.12967)",
    scorer="student_ce",
    policy="topk",
    select_per="batch",
    select_fraction=0.5,
    ce_weight=1.0,
)
_add(
    "gls",
    "Global-Level Selection: student-CE above the queue's 50% quantile, CE on all",
    "Wang et al. 2021 (arXiv 2105.12967)",
    scorer="student_ce",
    policy="gls",
    select_fraction=0.5,
    gls_queue_size=30000,
    ce_weight=1.0,
)
_add(
    "sekd",
    "SE-KD: student-entropy top 20% per sequence, dense forward KL, no CE",
    "SE-KD (arXiv 2602.01395)",
    scorer="student_entropy",
    policy="topk",
    select_per="sequence",
    select_fraction=0.2,
    ce_weight=0.0,
)
_add(
    "sekd3x",
    "SE-KD3X: sekd positions + RS targets (cache) + sample selection ℓ=20%",
    "SE-KD3X (arXiv 2602.01395)",
    scorer="student_entropy",
    policy="topk",
    select_per="sequence",
    select_fraction=0.2,
    ce_weight=0.0,
    target="rs",
    rs_samples=50,
    sample_fraction=0.2,
    sample_scorer="student_entropy",
)
_add(
    "ekd",
    "EKD: teacher-entropy top-k with coverage 0.1→0.5, RS targets, CE on all",
    "EKD draft → arXiv 2602.01395",
    scorer="teacher_entropy",
    policy="coverage_schedule",
    coverage_start=0.1,
    coverage_end=0.5,
    target="rs",
    rs_samples=50,
    ce_weight=1.0,
)
_add(
    "egad",
    "EGAD: teacher-entropy curriculum (low→high), entropy-mapped τ, feature KD on hard tokens",
    "EGAD (arXiv 2605.01732)",
    scorer="teacher_entropy",
    policy="curriculum",
    select_fraction=0.5,
    temperature="entropy_map",
    feature_weight=0.1,
    feature_hard_fraction=0.5,
    ce_weight=0.0,
)
_add(
    "adakd",
    "AdaKD: LATF (Hellinger, batch top-r) + IDTS temperature, over reverse KL",
    "AdaKD (arXiv 2510.11615)",
    scorer="hellinger",
    policy="latf",
    select_per="batch",
    temperature="idts",
    divergence="reverse_kl",
)
_add(
    "random_pos",
    "uniformly random 20% of positions per sequence",
    "SE-KD baseline",
    scorer="random",
    policy="topk",
    select_fraction=0.2,
)
_add(
    "pos_rs",
    "positional RS: 20% of positions sampled ∝ student entropy, unbiased weights",
    "SE-KD3x positional RS-KD",
    scorer="student_entropy",
    policy="pos_rs",
    select_fraction=0.2,
    pos_rs_power=1.0,
)
_add(
    "bandit",
    "LinUCB bandit over token features, reward = KL drop after the step",
    "EKD draft (bandit budget)",
    policy="bandit",
    bandit_kind="linucb",
    select_fraction=0.2,
    bandit_max_fraction=0.2,  # the budget is the most it selects (at 0.5, UCB > 0 kept 50% at 2.5× weight)
)

_add(
    "gkd",
    "on-policy GKD: half the batches continued by the student, JSD(β=0.5) to the teacher",
    "GKD (arXiv 2306.13649)",
    divergence="jsd",
    jsd_beta=0.5,
    student_data_fraction=0.5,
    sampling_temperature=1.0,
)

# -- objectives (METHODS §7) -------------------------------------------------------------------------------
_add(
    "dkd",
    "Decoupled KD: TCKD + β·NCKD on all positions",
    "Zhao et al. 2022 (DKD)",
    objective="dkd",
    dkd_beta=8.0,
)
_add(
    "atkd",
    "AT-KD: hard tokens TCKD+NCKD, easy tokens NCKD, λ=0.2",
    "Zhong et al. 2024 (AT-KD)",
    objective="atkd",
    atkd_lambda=0.2,
)
_add(
    "ema_self_distill",
    "CE + KL(q_ema ‖ q) from an EMA copy of the student",
    "EKD draft (EMA self-distillation)",
    objective="ema_self_distill",
    ce_weight=1.0,
    ema_weight=1.0,
)
_add(
    "uncertainty",
    "masked MLE on the top-ρ loss tokens + self-distillation from the initial student",
    "Liu et al. 2025a (arXiv 2503.16511)",
    objective="uncertainty",
    uncertainty_fraction=0.5,
    uncertainty_weight=1.0,
)


def preset_values(name: str) -> dict[str, Any]:
    """The ``method.*`` values of preset ``name`` (empty for an unknown name: validation reports it)."""
    if name not in presets:
        return {}
    return dict(presets.get(name).values)
