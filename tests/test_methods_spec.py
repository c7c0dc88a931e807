"""The presets and defaults METHODS.md states, copied from its text (§§1–8) — not from ``ekd.methods``.

``test_config.test_every_preset_applies_its_values_and_validates`` checks that a preset's values reach the
config; it compares ``ekd.methods`` with itself, so a mistyped value there (sekd at 30% of positions, EKD's
coverage ending at 0.6) passed every test (try-out 107). Here each preset is loaded as the CLI loads
``method=NAME`` and its resolved config is compared with the composition METHODS §8 gives it, with every
setting the spec does not name at the defaults METHODS §§1–7 state.
"""

from __future__ import annotations

import pytest
import torch

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


# ---------------------------------------------------------------------------------------------------------
# §1 divergences, through the fused head, against formulas written from the spec in float64
# ---------------------------------------------------------------------------------------------------------


def _log_softmax64(z: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    z = z.double() / tau.double().unsqueeze(-1)  # (M, V) at each row's τ
    return z - torch.logsumexp(z, -1, keepdim=True)


def _spec_divergence(name: str, zs: torch.Tensor, zt: torch.Tensor, tau: torch.Tensor, **par: float):
    """METHODS §1, per position: p = teacher, q = student, both at τ; (M,) float64."""
    lp, lq = _log_softmax64(zt, tau), _log_softmax64(zs, tau)
    p, q = lp.exp(), lq.exp()
    kl = lambda a, la, lb: (a * (la - lb)).sum(-1)  # noqa: E731 KL(a‖b)
    if name == "forward_kl":
        return kl(p, lp, lq)
    if name == "reverse_kl":
        return kl(q, lq, lp)
    if name == "jsd":  # generalized JSD(β) = β·KL(p‖m) + (1−β)·KL(q‖m), m = βp + (1−β)q; β=0 → FKL, β=1 → RKL
        b = par["beta"]
        if b == 0:
            return kl(p, lp, lq)
        if b == 1:
            return kl(q, lq, lp)
        lm = (b * p + (1 - b) * q).log()
        return b * kl(p, lp, lm) + (1 - b) * kl(q, lq, lm)
    if name == "skew_forward_kl":  # KL(p ‖ αp + (1−α)q)
        a = par["alpha"]
        return kl(p, lp, (a * p + (1 - a) * q).log())
    if name == "skew_reverse_kl":  # KL(q ‖ (1−α)p + αq)
        a = par["alpha"]
        return kl(q, lq, ((1 - a) * p + a * q).log())
    assert name == "tvd"
    return 0.5 * (p - q).abs().sum(-1)


@pytest.mark.parametrize("path", ["chunked", "chunked_recompute", "reference"])
@pytest.mark.parametrize(
    ("name", "par"),
    [
        ("forward_kl", {}),
        ("reverse_kl", {}),
        ("jsd", {"beta": 0.0}),
        ("jsd", {"beta": 0.27}),
        ("jsd", {"beta": 0.5}),
        ("jsd", {"beta": 1.0}),
        ("skew_forward_kl", {"alpha": 0.35}),
        ("skew_reverse_kl", {"alpha": 0.6}),
        ("tvd", {}),
    ],
)
def test_head_loss_is_the_spec_sum_with_a_temperature_per_row(name, par, path):
    """Σ_i w_i·τ_i²·D(p_i^τ, q_i^τ) and its gradient, with a different τ in every row and chunks of 3 rows
    (7 rows: the last chunk is short), against the spec's formula in float64 (try-out 107's script)."""
    from ekd.losses.divergences import make_divergence
    from ekd.losses.head_loss import kd_loss_sum
    from ekd.losses.targets import DenseTarget, Head

    gen = torch.Generator().manual_seed(len(name) + int(10 * sum(par.values())))
    M, V = 7, 173
    zs, zt = 3 * torch.randn(M, V, generator=gen), 3 * torch.randn(M, V, generator=gen)  # (M, V) logits
    tau = 0.3 + 3 * torch.rand(M, generator=gen)  # (M,)
    w = 0.5 + torch.rand(M, generator=gen)  # (M,)
    fn = make_divergence(name, jsd_beta=par.get("beta", 0.5), skew_alpha=par.get("alpha", 0.1))
    h = zs.clone().requires_grad_(True)  # identity heads: the hidden states are the logits
    loss = kd_loss_sum(
        h, Head(torch.eye(V)), DenseTarget(zt, Head(torch.eye(V))), tau, w, fn, path=path, chunk_size=3
    )
    (grad,) = torch.autograd.grad(loss, h)

    z64 = zs.double().requires_grad_(True)
    want = (w.double() * tau.double() ** 2 * _spec_divergence(name, z64, zt, tau, **par)).sum()
    (want_grad,) = torch.autograd.grad(want, z64)
    assert loss.item() == pytest.approx(want.item(), rel=2e-5, abs=1e-7)
    torch.testing.assert_close(grad.double(), want_grad, rtol=1e-4, atol=2e-6)
