"""Self-distillation objectives (METHODS §7): an EMA teacher and token-level uncertainty-aware training.

- ``EmaTeacher`` + ``ema_self_distill_sum``: the student distils from an exponential moving average of
  its own weights, Σ_i w_i·KL(q_ema,i ‖ q_i).
- ``uncertainty_split`` + ``uncertainty_loss_sum``: masked MLE on the highest-loss tokens, and
  self-distillation from the frozen initial student on the rest (Liu et al. 2025a, arXiv 2503.16511 —
  the paper was not reachable; the split rule, the KL direction and the weight λ are our reading of its
  abstract, i.e. unverified, and are config knobs ``method.uncertainty_fraction`` / ``uncertainty_weight``).

Loss functions return sums over rows; the step divides by the global count once (STYLE 3–4).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ekd.errors import ConfigError
from ekd.losses.decoupled import top_fraction_mask
from ekd.losses.divergences import forward_kl, log_probs_at


class EmaTeacher:
    """A frozen exponential-moving-average copy of a student module.

    θ_ema ← decay·θ_ema + (1 − decay)·θ after each optimizer step (``method.ema_decay``, default 0.999).
    The copy is made with ``copy.deepcopy``, so tied parameters (e.g. ``tie_word_embeddings``) stay one
    tensor in the copy and are updated once; buffers are copied from the student, not averaged. The copy
    keeps the student's dtype and device: with bf16 weights a decay of 0.999 loses most updates to
    rounding, so keep fp32 master weights (the trainer's default) when using it.

    Attributes:
        module: the EMA model, ``requires_grad=False``, in eval mode; call it under ``torch.no_grad()``.
    """

    def __init__(self, student: nn.Module):
        self.module = copy.deepcopy(student)
        self.module.requires_grad_(False)
        self.module.eval()

    @torch.no_grad()
    def update(self, student: nn.Module, decay: float) -> None:
        """In place: θ_ema ← decay·θ_ema + (1 − decay)·θ; buffers ← student buffers.

        decay = 0 copies the student exactly, decay = 1 leaves the EMA unchanged exactly (``lerp`` is exact
        at both ends).
        """
        if not 0.0 <= decay <= 1.0:
            raise ConfigError(f"method.ema_decay must be in [0, 1], got {decay}")
        # named_parameters() lists each shared (tied) tensor once, under the same name in both models.
        ema_params = dict(self.module.named_parameters())
        for name, param in student.named_parameters():
            if name not in ema_params:
                raise KeyError(
                    f"EMA model has no parameter '{name}': update() needs the module it was made from"
                )
            ema = ema_params[name]
            ema.lerp_(param.detach().to(device=ema.device, dtype=ema.dtype), 1.0 - decay)
        ema_buffers = dict(self.module.named_buffers())
        for name, buffer in student.named_buffers():
            if name in ema_buffers:
                ema_buffers[name].copy_(buffer)

    def state_dict(self) -> dict[str, Tensor]:
        """The EMA weights and persistent buffers as plain tensors (tied weights appear under each name)."""
        return {k: v.detach() for k, v in self.module.state_dict().items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.module.load_state_dict(state)


def ema_self_distill_sum(
    student_logits: Tensor, ema_logits: Tensor, tau: Tensor | float, weights: Tensor
) -> Tensor:
    """Σ_i w_i·KL(q_ema,i ‖ q_i): forward KL from the EMA student's distribution to the student's.

    Args:
        student_logits: (M, V) student logits (with grad).
        ema_logits: (M, V) EMA-model logits (detached here).
        tau: scalar or (M,) temperature applied to both.
        weights: (M,) per-row weight (fold τ² in here if wanted; ``method.ema_weight`` is applied outside).

    Returns:
        Scalar fp32 sum.
    """
    per_row = forward_kl(student_logits, ema_logits.detach(), tau)  # (M,)
    return (weights.float() * per_row).sum()


def uncertainty_split(token_nll: Tensor, fraction: float) -> Tensor:
    """(N,) bool: the ⌈ρ·N⌉ tokens with the highest student loss −log q(y) (the "MLE" tokens).

    Args:
        token_nll: (N,) detached per-token NLL at the valid tokens.
        fraction: ρ ∈ [0, 1] (``method.uncertainty_fraction``); ties broken by the lower index.
    """
    return top_fraction_mask(token_nll, fraction)


def uncertainty_loss_sum(
    student_logits: Tensor,
    initial_logits: Tensor,
    gold: Tensor,
    mle_mask: Tensor,
    lam: float = 1.0,
) -> Tensor:
    """Σ_{i ∈ MLE} −log q_i(y_i) + λ·Σ_{i ∉ MLE} KL(p_init,i ‖ q_i), at τ = 1 (Liu et al. 2025a, unverified).

    The high-loss (uncertain) tokens get the plain MLE gradient; the others are held near the frozen
    initial student's distribution p_init, which regularizes against overconfidence on tokens already fit.

    Args:
        student_logits: (N, V) student logits (with grad).
        initial_logits: (N, V) logits of the frozen initial student (detached here).
        gold: (N,) gold ids.
        mle_mask: (N,) bool from ``uncertainty_split``.
        lam: λ (``method.uncertainty_weight``).

    Returns:
        Scalar fp32 sum.
    """
    log_q = log_probs_at(student_logits, 1.0)  # (N, V)
    nll = -log_q.gather(-1, gold.long().reshape(-1, 1)).squeeze(-1)  # (N,)
    kl = forward_kl(student_logits, initial_logits.detach(), 1.0)  # (N,)
    mle = mle_mask.to(device=nll.device, dtype=torch.bool)
    per_row = torch.where(mle, nll, lam * kl)  # (N,)
    return per_row.sum()


__all__ = ["EmaTeacher", "ema_self_distill_sum", "uncertainty_split", "uncertainty_loss_sum"]
