"""Fused output head + loss: logits one chunk of rows at a time, the gradient computed during the forward.

For each chunk of m rows, ``_FusedHeadLoss`` computes the student logits z = h·Wᵀ (+ b) (m, V), hands them
to a *chunk loss* — a function returning the chunk's loss sum and ∂loss/∂z in closed form
(``ekd.losses.logit_grads``) — and immediately folds that (m, V) gradient into

    grad_hidden[rows] = g·W   (m, D)      grad_W += gᵀ·h   (V, D)      grad_b += Σ_rows g   (V,)

so only one chunk's logits are alive at a time and no autograd graph is kept: peak memory is the (M, D) and
(V, D) gradients plus a few (chunk, V) fp32 buffers, independent of M. Backward only scales the stored
gradients by the incoming grad_output (in place, so they can be handed to ``.grad`` without a copy — a
second backward through the same loss therefore raises). A tied head (weight shared with the input
embedding) needs nothing special: autograd adds the returned weight gradient into the shared Parameter.

The chunk-loss builders here bind the per-row data (target, τ, weights) and pick the closed form for a
divergence from ``ekd.losses.divergences`` (a plain function or ``make_divergence``'s partial); any other
divergence callable falls back to autograd on the chunk's logits only. With ``compile=True`` the per-chunk
math (not the GEMMs) runs under ``torch.compile``; if compiling fails the eager version is used, with one
warning.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import Callable

import torch
from torch import Tensor

from ekd.losses import divergences as div
from ekd.losses.logit_grads import autograd_chunk, ce_chunk, dense_kd_chunk, sparse_kd_chunk
from ekd.losses.logit_transform import transformed_chunk_loss
from ekd.losses.matmul import (
    RowBuffer,
    addmm_fp32_,
    compute_dtype,
    contract_vocab_fp32,
    gemm_operand,
    matmul_fp32,
    mm_fp32_into_,
)
from ekd.losses.targets import DenseTarget, Head, SparseTarget, Target

logger = logging.getLogger(__name__)

ChunkLoss = Callable[[Tensor, int, int], tuple[Tensor, Tensor]]
"""(student logits (m, V) fp32, consumed; start; end) → (loss sum (), ∂loss/∂logits (m, V) fp32)."""

Observer = Callable[[Tensor, int, int], None]
"""(model logits (m, V) fp32, read-only; start; end) → None: called once per chunk, before the chunk loss."""


class _FusedHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, chunk_loss, chunk_size, track):  # type: ignore[override]
        need_h, need_w, need_b = (track and n for n in ctx.needs_input_grad[:3])
        # Operands in the weight's dtype, or autocast's (``compute_dtype``): 16-bit operands stay 16-bit on
        # CUDA (fp32 output, ``ekd.losses.matmul``); CPU has no such GEMM, so the rounded weight is widened to
        # fp32 once per call (+4·V·D bytes while the loss runs). Products and sums stay fp32 either way.
        op = compute_dtype(weight)
        w = gemm_operand(weight, op)  # (V, D)
        grad_h = torch.empty_like(hidden) if need_h else None  # (M, D)
        grad_w = torch.empty(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        # (V, D) fp32 accumulator: +2·V·D bytes over a 16-bit one
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None  # (V,)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        logits_buffer = RowBuffer()  # one (chunk, V) fp32 buffer for every chunk's logits
        for start in range(0, hidden.shape[0], chunk_size):
            end = min(start + chunk_size, hidden.shape[0])
            h = gemm_operand(hidden[start:end], op)  # (m, D)
            into = logits_buffer.take(end - start, w.shape[0], h.device)  # (m, V) fp32, reused
            logits = matmul_fp32(h, w.t(), into)
            if bias is not None:
                logits += bias
            loss, grad = chunk_loss(logits, start, end)  # (), (m, V) fp32
            del logits
            total += loss
            if need_h or need_w:
                grad_op = gemm_operand(grad, op)  # (m, V) GEMM operand in the operand dtype (fp32: no copy)
                if need_h:
                    grad_h[start:end] = contract_vocab_fp32(grad_op, w)  # (m, D): V in blocks, rounded once
                if need_w and start == 0 and w.dtype == torch.float32:
                    mm_fp32_into_(grad_w, grad_op.t(), h)  # (V, D) = (V, m)·(m, D): no zero-fill pass
                elif need_w:
                    if start == 0:
                        grad_w.zero_()
                    addmm_fp32_(grad_w, grad_op.t(), h)  # (V, D) += (V, m)·(m, D), accumulated in fp32
                del grad_op
            if need_b:
                grad_b += grad.sum(0)  # (V,)
            del grad
        if grad_w is not None and hidden.shape[0] == 0:
            grad_w.zero_()
        if grad_w is not None and grad_w.dtype != weight.dtype:
            grad_w = grad_w.to(weight.dtype)  # rounded once, after the fp32 sum over all chunks
        ctx.grads = (grad_h, grad_w, None if grad_b is None else grad_b.to(bias.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        grads = ctx.grads
        if grads is None:
            raise RuntimeError(
                "the fused chunked loss was already backpropagated (its gradients are computed in the forward "
                "and handed over once); recompute the loss, or use path='chunked_recompute' or 'reference'"
            )
        ctx.grads = None
        scaled = tuple(None if g is None else g.mul_(grad_output) for g in grads)
        return (*scaled, None, None, None)


def fused_linear_loss(
    hidden: Tensor, head: Head, chunk_loss: ChunkLoss, chunk_size: int, observe: Observer | None = None
) -> Tensor:
    """Σ over rows of ``chunk_loss`` applied to head(hidden), with gradients to hidden, head weight and bias.

    Args:
        hidden: (M, D) hidden states (any float dtype; the logits are cast to fp32 per chunk).
        head: output head, weight (V, D), optional bias (V,) and its logit transform (scale, soft-cap).
        chunk_loss: see ``ChunkLoss``.
        chunk_size: rows per chunk.
        observe: see ``Observer``: sees each chunk's model logits (= head(hidden[start:end])) before the loss,
            so statistics of the same logits need no second GEMM (``ekd.train.token_stats.StudentStatsObserver``).

    Returns:
        Scalar fp32 loss sum.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    track = torch.is_grad_enabled()
    # model logits; ∂/∂(h·Wᵀ) by the chain rule
    chunk_loss = transformed_chunk_loss(chunk_loss, head.transform)
    if observe is not None:
        chunk_loss = _observed(chunk_loss, observe, head.transform)
    return _FusedHeadLoss.apply(hidden, head.weight, head.bias, chunk_loss, chunk_size, track)


def _observed(chunk_loss: ChunkLoss, observe: Observer, transform) -> ChunkLoss:
    """``chunk_loss`` on raw logits a, with ``observe`` shown the model logits transform(a) first (a itself when
    the transform is the identity: the observer must not modify it; else one extra (m, V) buffer)."""

    def chunk(a: Tensor, start: int, end: int) -> tuple[Tensor, Tensor]:
        observe(a if transform.is_identity else transform(a), start, end)
        return chunk_loss(a, start, end)

    return chunk


def auto_chunk_rows(vocab_size: int, device_type: str = "cpu") -> int:
    """Rows per chunk such that one fp32 (rows, V) buffer is about 128 MiB on CPU, 512 MiB on a GPU.

    A power of two in [64, 1024]: on CPU 1024 rows up to V=32,768, 256 at V=151,936; on a GPU ('cuda') 1024
    rows up to V≈185k (Qwen2.5/3: 151,936), 512 above it (Gemma: 256,000). The fused head holds about four such buffers at its peak (plus the (V, D) weight
    gradient), two for forward KL, reverse KL, JSD, skew reverse KL and TVD on CPU (``ekd.losses.dense_kd_blocks``);
    fewer rows save memory, more rows keep the GEMMs efficient and launch fewer kernels. On an H200 at
    V=151,936, N=8,192 (bf16, JSD), 1024 rows took 0.49–0.64× the time of 256 for 3.4× the head's peak (5.1 vs
    1.5 GB); on CPU 256 rows are as fast as 1024 (docs/benchmarks.md: "GPU checks", "Chunk size").
    """
    buffer_mib = 512.0 if device_type == "cuda" else 128.0
    rows = buffer_mib * 2**20 / (4 * max(vocab_size, 1))
    return int(min(1024, max(64, 2 ** round(math.log2(rows)))))


# ---------------------------------------------------------------------------------------------------------
# torch.compile of the per-chunk math


class _MaybeCompiled:
    """``fn`` under torch.compile, built on first use; any compile failure → warn once, run eager from then."""

    def __init__(self, fn: Callable[..., tuple[Tensor, Tensor]]):
        self.fn = fn
        self.compiled: Callable[..., tuple[Tensor, Tensor]] | None = None
        self.failed = False

    def __call__(self, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self.failed:
            try:
                if self.compiled is None:
                    self.compiled = torch.compile(self.fn)
                return self.compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 — any backend/toolchain failure means "use eager"
                self.failed = True
                logger.warning(
                    "torch.compile of %s failed (%s: %s); using the eager per-chunk function",
                    self.fn.__name__,
                    type(e).__name__,
                    str(e).splitlines()[0] if str(e) else "",
                )
        return self.fn(*args, **kwargs)


_COMPILED = {fn: _MaybeCompiled(fn) for fn in (dense_kd_chunk, sparse_kd_chunk, ce_chunk)}


def _maybe_compiled(
    fn: Callable[..., tuple[Tensor, Tensor]], compile: bool
) -> Callable[..., tuple[Tensor, Tensor]]:
    return _COMPILED[fn] if compile else fn


# ---------------------------------------------------------------------------------------------------------
# chunk losses


_CLOSED_FORMS: dict[Callable[..., Tensor], tuple[str, str | None]] = {
    div.forward_kl: ("forward_kl", None),
    div.reverse_kl: ("reverse_kl", None),
    div.jsd: ("jsd", "beta"),
    div.skew_forward_kl: ("skew_forward_kl", "alpha"),
    div.skew_reverse_kl: ("skew_reverse_kl", "alpha"),
    div.tvd: ("tvd", None),
}


def closed_form_of(divergence: div.Divergence) -> tuple[str, float] | None:
    """(kind, parameter) when ``divergence`` has a closed-form gradient here, else None.

    Recognizes the functions of ``ekd.losses.divergences`` and ``functools.partial`` of them binding only
    their parameter (what ``make_divergence`` returns). Parameter ranges are checked as the functions do.
    """
    fn, kwargs = divergence, {}
    if isinstance(divergence, functools.partial) and not divergence.args:
        fn, kwargs = divergence.func, dict(divergence.keywords)
    entry = _CLOSED_FORMS.get(fn)  # type: ignore[arg-type]
    if entry is None:
        return None
    kind, param_name = entry
    if set(kwargs) - {param_name}:
        return None
    if param_name is None:
        return kind, 0.0
    param = float(kwargs.get(param_name, inspect.signature(fn).parameters[param_name].default))
    if kind == "jsd" and not 0.0 <= param <= 1.0:
        raise ValueError(f"jsd beta must be in [0, 1], got {param}")
    if kind != "jsd" and not 0.0 <= param < 1.0:
        raise ValueError(f"skew alpha must be in [0, 1), got {param}")
    return kind, param


def kd_chunk_loss(
    target: Target,
    tau: Tensor,
    coef: Tensor,
    divergence: div.Divergence,
    compile: bool = False,
) -> ChunkLoss:
    """The chunk loss Σ_rows coef·D(target ‖ student@τ) for ``fused_linear_loss``.

    Args:
        target: DenseTarget (teacher logits made per chunk, no grad) or SparseTarget (sparse forward KL;
            ``divergence`` is not used, as on the reference path).
        tau: (M,) temperatures.
        coef: (M,) row coefficients w·τ² (or w).
        divergence: dense divergence; closed form when recognized (``closed_form_of``), else autograd on the
            chunk's logits.
        compile: run the per-chunk math under torch.compile.
    """
    tau = tau.detach().float()
    coef = coef.detach().float()
    if isinstance(target, SparseTarget):
        sparse_fn = _maybe_compiled(sparse_kd_chunk, compile)

        def sparse_chunk(logits: Tensor, start: int, end: int) -> tuple[Tensor, Tensor]:
            tail = None if target.tail is None else target.tail[start:end]
            return sparse_fn(
                logits, target.ids[start:end], target.probs[start:end], tail, tau[start:end], coef[start:end]
            )

        return sparse_chunk
    if not isinstance(target, DenseTarget):
        raise TypeError(f"target must be a DenseTarget or SparseTarget, got {type(target).__name__}")
    form = closed_form_of(divergence)
    dense_fn = _maybe_compiled(dense_kd_chunk, compile)
    teacher_buffer = RowBuffer()  # the teacher logits of every chunk (consumed within the chunk)

    def dense_chunk(logits: Tensor, start: int, end: int) -> tuple[Tensor, Tensor]:
        teacher = target.logits(start, end, teacher_buffer).float()  # (m, V), no grad
        if form is None:
            return autograd_chunk(logits, teacher, tau[start:end], coef[start:end], divergence)
        return dense_fn(logits, teacher, tau[start:end], coef[start:end], form[0], form[1])

    return dense_chunk


def ce_chunk_loss(labels: Tensor, compile: bool = False) -> ChunkLoss:
    """The chunk loss Σ_rows −log q(y) (rows labelled −100 contribute nothing). labels (M,)."""
    fn = _maybe_compiled(ce_chunk, compile)

    def chunk(logits: Tensor, start: int, end: int) -> tuple[Tensor, Tensor]:
        return fn(logits, labels[start:end])

    return chunk
