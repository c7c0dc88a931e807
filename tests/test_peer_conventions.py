"""The conversions of docs/conventions.md: TRL's and Liger-Kernel's loss values reproduced by ekd's losses.

ekd's KD term is kd_weight · Σ_i w_i·τ²·D_i / N_kd and its CE term ce_weight · Σ −log q(y) / N_ce. A
TRL/Liger setting maps onto ``method.*`` keys; each test computes the peer's number (the installed
package where importable — otherwise skipped — or TRL's formula transcribed from its source) and ekd's
from the mapped settings.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from benchmarks.head_loss import generalized_jsd_loss as trl_gkd_formula

from ekd.losses.divergences import make_divergence
from ekd.losses.head_loss import ce_loss_sum, kd_loss_sum
from ekd.losses.targets import DenseTarget, Head

N, DS, DT, V = 10, 16, 24, 101


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(N, DS, generator=g),  # (N, Ds) student hidden
        torch.randn(V, DS, generator=g) * 0.5,  # (V, Ds) student head
        torch.randn(N, DT, generator=g),  # (N, Dt) teacher hidden
        torch.randn(V, DT, generator=g) * 0.5,  # (V, Dt) teacher head
        torch.randint(0, V, (N,), generator=g),  # (N,) labels
    )


def _ekd_total(h, w, ht, wt, labels, *, beta, tau, scale_by_tau_squared, kd_weight, ce_weight, path):
    """ekd's loss with method.divergence=jsd at every valid position (normalized by the valid count)."""
    valid = labels != -100
    count = int(valid.sum())
    kd = kd_loss_sum(
        h[valid],
        Head(w),
        DenseTarget(ht[valid], Head(wt)),
        tau,
        torch.ones(count),
        make_divergence("jsd", jsd_beta=beta),
        scale_by_tau_squared=scale_by_tau_squared,
        path=path,
    )
    total = kd_weight * kd / count
    if ce_weight:
        total = total + ce_weight * ce_loss_sum(h, Head(w), labels, path=path) / count
    return total


@pytest.mark.parametrize("path", ["chunked", "reference"])
@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_trl_gkd_loss_is_ekd_jsd_at_tau_one(beta, path):
    """TRL GKDTrainer: generalized_jsd_loss(β) never receives the temperature (τ = 1), no τ², 'batchmean'
    over the valid tokens → method.divergence=jsd method.jsd_beta=β method.kd_temperature=1."""
    h, w, ht, wt, labels = _inputs()
    zs, zt = (h @ w.T).unsqueeze(0), (ht @ wt.T).unsqueeze(0)  # (1, N, V)
    if beta in (0.0, 1.0):  # TRL's endpoints: F.kl_div forward / reverse
        a, b = (zs, zt) if beta == 0.0 else (zt, zs)
        la, lb = F.log_softmax(a, -1), F.log_softmax(b, -1)
        trl = F.kl_div(la, lb, reduction="none", log_target=True).sum() / N
    else:
        trl = trl_gkd_formula(zs, zt, beta=beta)
    ekd = _ekd_total(
        h,
        w,
        ht,
        wt,
        labels,
        beta=beta,
        tau=1.0,
        scale_by_tau_squared=True,
        kd_weight=1.0,
        ce_weight=0.0,
        path=path,
    )
    torch.testing.assert_close(ekd, trl, rtol=2e-6, atol=1e-7)


def test_trl_distillation_trainer_temperature_without_tau_squared():
    """TRL's DistillationTrainer passes τ to the softmaxes but never multiplies by τ²
    → method.kd_temperature=τ method.scale_by_tau_squared=false."""
    h, w, ht, wt, labels = _inputs(1)
    zs, zt = (h @ w.T).unsqueeze(0), (ht @ wt.T).unsqueeze(0)
    trl = trl_gkd_formula(zs, zt, beta=0.5, temperature=2.0)
    ekd = _ekd_total(
        h,
        w,
        ht,
        wt,
        labels,
        beta=0.5,
        tau=2.0,
        scale_by_tau_squared=False,
        kd_weight=1.0,
        ce_weight=0.0,
        path="chunked",
    )
    torch.testing.assert_close(ekd, trl, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_liger_fused_linear_jsd_defaults(tau):
    """Liger's LigerFusedLinearJSDLoss(defaults): 0.5·CE + 0.5·JSD(β=0.5), τ divides both logits, no τ², both
    terms over the valid tokens → method.divergence=jsd method.jsd_beta=0.5 method.kd_temperature=τ
    method.scale_by_tau_squared=false method.kd_weight=0.5 method.ce_weight=0.5."""
    chunked_loss = pytest.importorskip("liger_kernel.chunked_loss")
    h, w, ht, wt, labels = _inputs(2)
    labels[[1, 6]] = -100
    liger = chunked_loss.LigerFusedLinearJSDLoss(temperature=tau, compiled=False)(h, w, ht, wt, labels)
    ekd = _ekd_total(
        h,
        w,
        ht,
        wt,
        labels,
        beta=0.5,
        tau=tau,
        scale_by_tau_squared=False,
        kd_weight=0.5,
        ce_weight=0.5,
        path="chunked",
    )
    torch.testing.assert_close(ekd, liger, rtol=2e-6, atol=1e-7)


def test_trl_installed_gkd_loss():
    """The installed TRL's own function, where trl is importable (it is not a dependency of ekd)."""
    pytest.importorskip("trl")
    try:
        from trl.experimental.gkd import GKDTrainer
    except ImportError:
        from trl import GKDTrainer
    h, w, ht, wt, labels = _inputs(3)
    zs, zt = (h @ w.T).unsqueeze(0), (ht @ wt.T).unsqueeze(0)
    trl = GKDTrainer.generalized_jsd_loss(zs, zt, labels=labels.unsqueeze(0), beta=0.5)
    ekd = _ekd_total(
        h,
        w,
        ht,
        wt,
        labels,
        beta=0.5,
        tau=1.0,
        scale_by_tau_squared=True,
        kd_weight=1.0,
        ce_weight=0.0,
        path="chunked",
    )
    torch.testing.assert_close(ekd, trl, rtol=2e-6, atol=1e-7)
