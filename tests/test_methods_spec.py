"""The presets and defaults METHODS.md states, copied from its text (§§1–8) — not from ``ekd.methods``.

``test_config.test_every_preset_applies_its_values_and_validates`` checks that a preset's values reach the
config; it compares ``ekd.methods`` with itself, so a mistyped value there (sekd at 30% of positions, EKD's
coverage ending at 0.6) passed every test (try-out 107). Here each preset is loaded as the CLI loads
``method=NAME`` and its resolved config is compared with the composition METHODS §8 gives it, with every
setting the spec does not name at the defaults METHODS §§1–7 state.
"""

from __future__ import annotations

import pytest

from ekd.config import load_config
from ekd.methods import presets

# METHODS §1–7: the defaults the spec states (a preset that names none of these keeps them).
SPEC_DEFAULTS = {
    "divergence": "forward_kl",  # §8 kd: "all positions, dense, forward_kl, τ=1"
    "kd_temperature": 1.0,  # §5 constant τ (default 1.0)
    "temperature": "constant",
    "scale_by_tau_squared": True,  # README: τ² scaling
    "jsd_beta": 0.5,  # §1 generalized JSD(β), β=0.5
    "skew_alpha": 0.1,  # §1 skew KL α=0.1
    "target": "dense",
    "topk": 12,  # §8 topk K=12
    "topk_tail": "renormalize",
    "rs_samples": 50,  # §2 RS N=50
    "rs_proposal_power": 1.0,  # §2 proposal β=1 (the teacher's own distribution)
    "policy": "all",
    "gls_queue_size": 30000,  # §4 gls queue=30000
    "curriculum_start": 0.0,  # §4 curriculum start=0, end=1, power=1
    "curriculum_end": 1.0,
    "curriculum_power": 1.0,
    "latf_warmup_fraction": 0.05,  # §4 latf: warm-up 0.05 of steps, EMA β=0.99, ε=δ=0.05, floor 0.1
    "latf_ema_decay": 0.99,
    "latf_tolerance": 0.05,
    "latf_step": 0.05,
    "latf_min_ratio": 0.1,
    "idts_strength": 0.5,  # §5 idts c=0.5
    "entropy_tau_min": 1.0,  # §5 entropy_map τ_min=1.0, τ_max=2.0, g increasing
    "entropy_tau_max": 2.0,
    "entropy_direction": "increasing",
    "feature_hard_fraction": 0.5,  # §6 hard = top 50% of selected by Ĥ
    "feature_student_layer": -1,  # §6 layer map default: last hidden layer of each
    "feature_teacher_layer": -1,
    "objective": "kd",
    "atkd_lambda": 0.2,  # §7 atkd λ=0.2
    "ema_decay": 0.999,  # §7 EMA decay 0.999
    "sample_fraction": 1.0,  # §4 sample selection off unless a preset keeps ℓ%
}

# METHODS §8, row by row: what each preset is made of (every other key at SPEC_DEFAULTS).
SPEC_PRESETS = {
    "ce": {"kd_weight": 0.0, "ce_weight": 1.0},
    "kd": {"divergence": "forward_kl", "policy": "all", "target": "dense", "kd_temperature": 1.0},
    "rkl": {"divergence": "reverse_kl"},
    "jsd": {"divergence": "jsd"},
    "skl": {"divergence": "skew_forward_kl"},
    "srkl": {"divergence": "skew_reverse_kl"},
    "tvd": {"divergence": "tvd"},
    "topk": {"target": "topk", "topk": 12, "topk_tail": "renormalize"},
    "topk_ghost": {"target": "topk", "topk": 12, "topk_tail": "ghost"},
    "topk_gold": {"target": "topk", "topk": 12, "topk_tail": "to_gold"},
    "rskd": {"target": "rs", "rs_samples": 50},
    "selective_kd": {
        "scorer": "student_ce",
        "policy": "topk",
        "select_fraction": 0.5,
        "select_per": "batch",
        "ce_weight": 1.0,
    },
    "gls": {"scorer": "student_ce", "policy": "gls", "gls_queue_size": 30000, "ce_weight": 1.0},
    "sekd": {
        "scorer": "student_entropy",
        "policy": "topk",
        "select_fraction": 0.2,
        "select_per": "sequence",
        "target": "dense",
        "divergence": "forward_kl",
        "ce_weight": 0.0,
    },
    "sekd3x": {
        "scorer": "student_entropy",
        "policy": "topk",
        "select_fraction": 0.2,
        "select_per": "sequence",
        "divergence": "forward_kl",
        "ce_weight": 0.0,
        "target": "rs",
        "sample_fraction": 0.2,
    },
    "ekd": {
        "scorer": "teacher_entropy",
        "policy": "coverage_schedule",
        "coverage_start": 0.1,
        "coverage_end": 0.5,
        "target": "rs",
        "ce_weight": 1.0,
    },
    "egad": {"scorer": "teacher_entropy", "policy": "curriculum", "temperature": "entropy_map"},
    "adakd": {
        "scorer": "hellinger",
        "policy": "latf",
        "select_per": "batch",
        "temperature": "idts",
        "divergence": "reverse_kl",
    },
    "atkd": {"objective": "atkd"},
    "dkd": {"objective": "dkd"},
    "uncertainty": {"objective": "uncertainty"},
    "random_pos": {"scorer": "random", "policy": "topk"},  # §3 random score, its top k = uniform positions
    "pos_rs": {"policy": "pos_rs"},
    "bandit": {"policy": "bandit"},
    "gkd": {"divergence": "jsd", "jsd_beta": 0.5},
}

# Keys a preset sets that the spec's row leaves to "as defined above" or to the paper: not compared with
# SPEC_DEFAULTS (each is checked where the spec gives a value: egad's feature branch, gkd's λ, …).
_FREE = {
    "select_fraction",
    "scorer",
    "ce_weight",
    "select_per",
    "pos_rs_power",
    "bandit_kind",
    "bandit_max_fraction",
    "student_data_fraction",
    "sampling_temperature",
    "dkd_beta",
    "ema_weight",
    "uncertainty_fraction",
    "uncertainty_weight",
    "feature_weight",
    "sample_scorer",
}


def test_the_spec_table_names_every_preset_and_nothing_else():
    assert set(SPEC_PRESETS) == set(presets.names()) - {"ema_self_distill"}  # §7's objective, named there


@pytest.mark.parametrize("name", sorted(SPEC_PRESETS))
def test_preset_composition_is_the_one_methods_md_gives(name):
    cfg = load_config(None, [f"method={name}"]).method
    spec = SPEC_PRESETS[name]
    for key, value in spec.items():
        assert getattr(cfg, key) == value, (
            f"{name}: method.{key} is {getattr(cfg, key)!r}, METHODS §8 {value!r}"
        )
    for key, value in SPEC_DEFAULTS.items():
        if key in spec or key in _FREE:
            continue
        assert getattr(cfg, key) == value, f"{name}: method.{key} is {getattr(cfg, key)!r}, METHODS {value!r}"


def test_feature_branch_is_on_in_egad_only():
    """§6: EGAD's dual branch runs feature KD on hard tokens; no other preset computes hidden-state MSE."""
    for name in SPEC_PRESETS:
        weight = load_config(None, [f"method={name}"]).method.feature_weight
        assert (weight > 0) == (name == "egad"), name


def test_gkd_generates_with_the_student_and_sekd3x_keeps_a_fifth_of_the_samples():
    gkd = load_config(None, ["method=gkd"]).method
    assert 0 < gkd.student_data_fraction <= 1  # §7 on_policy: a batch is the student's with probability λ
    sekd3x = load_config(None, ["method=sekd3x"]).method
    assert sekd3x.sample_fraction == 0.2 and sekd3x.sample_scorer == "student_entropy"  # §4 TopSmp, ℓ=20%


def test_defaults_are_the_ones_methods_md_states():
    cfg = load_config(None, []).method
    for key, value in SPEC_DEFAULTS.items():
        assert getattr(cfg, key) == value, (
            f"method.{key} defaults to {getattr(cfg, key)!r}, METHODS {value!r}"
        )
