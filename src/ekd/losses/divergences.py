"""Per-token divergences between teacher and student next-token distributions (METHODS §1).

Every function here is pure math on rows of logits::

    fn(student_logits (M, V), teacher_logits (M, V), tau (M,) or float, **params) -> (M,) per-token loss

Both distributions are taken at the same temperature ``tau`` (p = softmax(z_t/τ), q = softmax(z_s/τ)) and
computed in fp32. The Hinton τ² factor, per-token weights, selection and normalization are applied once,
outside, by the step (STYLE 3: math apart from machinery). ``-inf`` logits (masked vocabulary entries) are
handled: terms with zero probability contribute exactly zero, never NaN, and a KL whose first argument puts
mass where the second has none (p_v > 0 = q_v) is +inf, as on the chunked path (``ekd.losses.logit_grads``).
A NaN or +inf logit makes its row NaN on every path (terms are dropped where p == 0, so a NaN p is kept).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from ekd.losses.row_reductions import log_softmax
from ekd.registry import Registry

Divergence = Callable[[Tensor, Tensor, "Tensor | float"], Tensor]
LOG_ZERO = torch.finfo(torch.float32).min
"""What ``log_probs_at`` returns for a probability that is exactly 0 (a -inf logit)."""
divergences: Registry[Callable[..., Tensor]] = Registry("divergence")


def log_probs_at(logits: Tensor, tau: Tensor | float) -> Tensor:
    """log softmax(logits / τ) in fp32. logits (M, V), tau scalar or (M,) → (M, V).

    -inf (masked) entries come out as the most negative finite fp32 value: their probability is exactly 0
    and differences such as log p − log q stay finite, so gradients never see ∞ − ∞.
    """
    logits = logits.float()
    if isinstance(tau, Tensor):
        tau = tau.float().reshape(-1, 1)  # (M, 1) broadcast over the vocabulary
    return log_softmax(logits / tau).clamp_min(LOG_ZERO)  # pairwise row sums: accurate at any V


def _kl_from_log(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p‖q) = Σ_v p (log p − log q) per row, with 0·log 0 = 0. (M, V) → (M,).

    Rows where some p_v > 0 meets q_v = 0 exactly (log q at ``LOG_ZERO``, i.e. -inf) are +inf: the floor
    keeps the arithmetic (and gradients) finite, but the floored value itself is not the KL.
    """
    p = log_p.exp()
    terms = p * (log_p - log_q)
    kl = torch.where(p == 0, torch.zeros_like(terms), terms).sum(-1)  # (M,) a NaN p (NaN teacher) stays NaN
    outside_support = ((p > 0) & (log_q <= LOG_ZERO)).any(-1)  # (M,) p has mass where q has none
    return kl.masked_fill(outside_support, float("inf"))


def check_temperature(tau: Tensor | float, caller: str) -> None:
    """A float τ (or a 0-dim tensor: one τ) must be finite and > 0: τ = 0 gave NaN top-K targets and a 0 KL, τ < 0
    the targets and KL of −z (try-out 109, F4). A per-row (M,) τ tensor is not checked (a device sync per call);
    ``ekd.temperature`` keeps it in the config's range.

    Raises:
        ValueError: naming ``caller`` and τ.
    """
    one = not isinstance(tau, Tensor) or tau.dim() == 0  # a 0-dim tensor is one τ, as a float
    if one and not 0 < float(tau) < float("inf"):
        raise ValueError(f"{caller}: the temperature τ must be finite and > 0, got {float(tau)}")


@divergences.register("forward_kl", "KL(p‖q): Hinton KD, 'Full KD'")
def forward_kl(student_logits: Tensor, teacher_logits: Tensor, tau: Tensor | float = 1.0) -> Tensor:
    """Forward KL(p‖q) = Σ p (log p − log q) (Hinton et al. 2015). (M, V) × 2 → (M,)."""
    return _kl_from_log(log_probs_at(teacher_logits, tau), log_probs_at(student_logits, tau))


@divergences.register("reverse_kl", "KL(q‖p): MiniLLM-style token-level reverse KL")
def reverse_kl(student_logits: Tensor, teacher_logits: Tensor, tau: Tensor | float = 1.0) -> Tensor:
    """Reverse KL(q‖p) = Σ q (log q − log p) (Gu et al. 2024, MiniLLM, token level). (M, V) × 2 → (M,)."""
    return _kl_from_log(log_probs_at(student_logits, tau), log_probs_at(teacher_logits, tau))


@divergences.register("jsd", "generalized JSD(β): β·KL(p‖m) + (1−β)·KL(q‖m), m = βp + (1−β)q (GKD)")
def jsd(
    student_logits: Tensor, teacher_logits: Tensor, tau: Tensor | float = 1.0, beta: float = 0.5
) -> Tensor:
    """Generalized Jensen–Shannon divergence (Agarwal et al. 2024, GKD, arXiv 2306.13649).

    JSD_β = β·KL(p‖m) + (1−β)·KL(q‖m), with m = β·p + (1−β)·q and log m computed by logsumexp.
    The formula is identically 0 at β ∈ {0, 1}; following TRL's convention, β=0 is forward KL and β=1 is
    reverse KL exactly.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"jsd beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return forward_kl(student_logits, teacher_logits, tau)
    if beta == 1.0:
        return reverse_kl(student_logits, teacher_logits, tau)
    log_p = log_probs_at(teacher_logits, tau)
    log_q = log_probs_at(student_logits, tau)
    log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log(1.0 - beta)]), dim=0)
    return beta * _kl_from_log(log_p, log_m) + (1.0 - beta) * _kl_from_log(log_q, log_m)


@divergences.register("skew_forward_kl", "DistiLLM SKL: KL(p ‖ αp + (1−α)q), α=0.1")
def skew_forward_kl(
    student_logits: Tensor, teacher_logits: Tensor, tau: Tensor | float = 1.0, alpha: float = 0.1
) -> Tensor:
    """Skew forward KL (Ko et al. 2024, DistiLLM, arXiv 2402.03898): KL(p ‖ α·p + (1−α)·q)."""
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"skew alpha must be in [0, 1), got {alpha}")
    log_p = log_probs_at(teacher_logits, tau)
    log_q = log_probs_at(student_logits, tau)
    if alpha == 0.0:
        return _kl_from_log(log_p, log_q)
    log_mix = torch.logsumexp(torch.stack([log_p + math.log(alpha), log_q + math.log(1.0 - alpha)]), dim=0)
    return _kl_from_log(log_p, log_mix)


@divergences.register("skew_reverse_kl", "DistiLLM SRKL: KL(q ‖ (1−α)p + αq), α=0.1")
def skew_reverse_kl(
    student_logits: Tensor, teacher_logits: Tensor, tau: Tensor | float = 1.0, alpha: float = 0.1
) -> Tensor:
    """Skew reverse KL (DistiLLM): KL(q ‖ (1−α)·p + α·q)."""
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"skew alpha must be in [0, 1), got {alpha}")
    log_p = log_probs_at(teacher_logits, tau)
    log_q = log_probs_at(student_logits, tau)
    if alpha == 0.0:
        return _kl_from_log(log_q, log_p)
    log_mix = torch.logsumexp(torch.stack([log_p + math.log(1.0 - alpha), log_q + math.log(alpha)]), dim=0)
    return _kl_from_log(log_q, log_mix)


TVD_TIE_RTOL = 2.0**-19
"""p_v and q_v within this relative distance count as equal in TVD (fp32 rounding of exp(log p) is ~1e-6)."""


@divergences.register("tvd", "total variation ½Σ|p−q|")
def tvd(student_logits: Tensor, teacher_logits: Tensor, tau: Tensor | float = 1.0) -> Tensor:
    """Total variation distance ½ Σ_v |p_v − q_v|. (M, V) × 2 → (M,).

    Subgradient convention: |p_v − q_v| is not differentiable at p_v = q_v; there ekd takes the subgradient
    0 (the minimum-norm one), for ties up to rounding: |p_v − q_v| ≤ ``TVD_TIE_RTOL``·max(p_v, q_v) counts
    as p_v = q_v (its term, below 2⁻¹⁹·p_v, is left out of the value too). Without the tolerance the sign of
    the fp32 difference of two equal probabilities — hence the gradient — would be decided by rounding.
    """
    p = log_probs_at(teacher_logits, tau).exp()
    q = log_probs_at(student_logits, tau).exp()
    diff = p - q
    tie = diff.detach().abs() <= TVD_TIE_RTOL * torch.maximum(p, q).detach()  # (M, V)
    return 0.5 * torch.where(tie, torch.zeros_like(diff), diff.abs()).sum(-1)


@divergences.register(
    "hellinger",
    "Hellinger distance (1/√2)‖√p − √q‖₂: AdaKD's difficulty score (method.scorer=hellinger), not a method.divergence",
)
def hellinger(student_logits: Tensor, teacher_logits: Tensor, tau: Tensor | float = 1.0) -> Tensor:
    """Hellinger distance H(p, q) = (1/√2)·‖√p − √q‖₂ ∈ [0, 1] (used by AdaKD, arXiv 2510.11615)."""
    sqrt_p = (0.5 * log_probs_at(teacher_logits, tau)).exp()
    sqrt_q = (0.5 * log_probs_at(student_logits, tau)).exp()
    # clamp: the derivative of √x is infinite at 0 (p = q); 1e-24 changes the value by ≤ 1e-12
    return (sqrt_p - sqrt_q).pow(2).sum(-1).clamp_min(1e-24).sqrt() / math.sqrt(2.0)


def make_divergence(name: str, jsd_beta: float = 0.5, skew_alpha: float = 0.1) -> Divergence:
    """The per-token divergence ``name`` with its parameter bound: (student, teacher, tau) → (M,)."""
    fn = divergences.get(name)
    if name == "jsd":
        return partial(fn, beta=jsd_beta)
    if name in ("skew_forward_kl", "skew_reverse_kl"):
        return partial(fn, alpha=skew_alpha)
    return fn
