"""What some architectures do to the logits after the output GEMM, and its derivative (pure math).

transformers computes ``a = h·Wᵀ (+ b)`` and then, for some models, returns

    z = a · multiplier / divisor                          (Granite: divisor = logits_scaling; Cohere:
                                                           multiplier = logit_scale; FalconH1: lm_head_multiplier)
    z = c · tanh((a · multiplier / divisor) / c)          (Gemma-2/3 final_logit_softcapping c)

``LogitTransform`` applies that map in the order transformers does (``ekd.models.head_transform`` reads it
off a model's config) and gives ∂z/∂a for the fused head's closed-form gradients:

    ∂z/∂a = (multiplier / divisor) · (1 − (z / c)²)       (the second factor only with soft-capping)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class LogitTransform:
    """The post-GEMM logit map z = softcap(a · multiplier / divisor) (see the module docstring).

    Attributes:
        multiplier: logits are multiplied by it (Cohere ``logit_scale``, FalconH1 ``lm_head_multiplier``).
        divisor: logits are divided by it (Granite ``logits_scaling``).
        softcap: c of z = c·tanh(z/c) (Gemma-2 ``final_logit_softcapping``), or None.
    """

    multiplier: float = 1.0
    divisor: float = 1.0
    softcap: float | None = None

    @property
    def is_identity(self) -> bool:
        return self.multiplier == 1.0 and self.divisor == 1.0 and self.softcap is None

    @property
    def slope(self) -> float:
        """∂z/∂a of the linear part: multiplier / divisor."""
        return self.multiplier / self.divisor

    def __call__(self, a: Tensor) -> Tensor:
        """(..., V) raw logits → (..., V) model logits, in a's dtype, with the operations transformers uses."""
        z = a
        if self.multiplier != 1.0:
            z = z * self.multiplier
        if self.divisor != 1.0:
            z = z / self.divisor
        if self.softcap is not None:
            z = torch.tanh(z / self.softcap) * self.softcap
        return z

    def chain_(self, grad: Tensor, a: Tensor) -> Tensor:
        """∂loss/∂a = ∂loss/∂z · ∂z/∂a, in place on ``grad`` (m, V); ``a`` (m, V) raw logits is overwritten."""
        if self.softcap is not None:
            t = a.mul_(self.slope / self.softcap).tanh_()  # (m, V) tanh of the soft-cap argument
            grad.mul_(t.square_().neg_().add_(1.0))  # · (1 − tanh²)
        if self.slope != 1.0:
            grad.mul_(self.slope)
        return grad


IDENTITY = LogitTransform()

ChunkLoss = Callable[[Tensor, int, int], tuple[Tensor, Tensor]]


def transformed_chunk_loss(chunk_loss: ChunkLoss, transform: LogitTransform) -> ChunkLoss:
    """A fused-head chunk loss on raw logits a = h·Wᵀ (+ b) from one on the model's logits z = transform(a).

    The wrapped loss sees z; the returned gradient is ∂loss/∂a (the chain-rule factor folded in), which is
    what the fused head multiplies into W and h. Without soft-capping z is made in place on a (no extra
    buffer); with it, one extra (m, V) fp32 buffer is alive during the chunk.
    """
    if transform.is_identity:
        return chunk_loss

    def chunk(a: Tensor, start: int, end: int) -> tuple[Tensor, Tensor]:
        if transform.softcap is None:
            loss, grad = chunk_loss(a.mul_(transform.slope), start, end)  # (m, V) z made in place
            return loss, grad.mul_(transform.slope) if transform.slope != 1.0 else grad
        loss, grad = chunk_loss(transform(a), start, end)  # (m, V), a kept for the derivative
        return loss, transform.chain_(grad, a)

    return chunk
