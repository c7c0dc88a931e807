"""One distillation micro-batch: the data flow of DESIGN.md, top to bottom.

    teacher signal (no grad) → student body (grad) → token stats (no grad, chunked) → scores → selection
    → temperatures → targets at the selected rows → KD sum (head applied at those rows only)
    + CE sum (chunked) [+ feature / objective terms] → each divided by its global count → loss

The selection, temperature, target, divergence and objective are composed from the method config
(``MethodParts``, built in ``ekd.train.method_parts``); no method has a code path of its own here beyond
the objective's per-row loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ekd.losses.head_loss import ce_loss_sum, kd_loss_sum
from ekd.losses.matmul import RowBuffer
from ekd.losses.reduce import normalize
from ekd.losses.targets import SparseTarget
from ekd.models.body import body_outputs
from ekd.models.load import output_head
from ekd.selection.base import StepContext
from ekd.selection.draws import RowDraws
from ekd.selection.types import Selection
from ekd.teacher.signal import TeacherSignal
from ekd.train.method_parts import MethodParts
from ekd.train.objectives import objective_sum
from ekd.train.precision import head_precision
from ekd.train.token_stats import (
    PAIR_STATS,
    STUDENT_STATS,
    TEACHER_STATS,
    StudentStatsObserver,
    token_stats,
)


@dataclass
class StepContextData:
    """Per-micro-batch inputs that are not tensors of the batch."""

    step: int
    total_steps: int
    vocab_size: int
    generator: torch.Generator
    loss_path: str = "chunked"
    chunk_rows: int = 1024
    autocast_dtype: torch.dtype | None = None
    compile: bool = False
    feature_count: float | None = None  # the step's global count of the EGAD feature term's hard rows
    rows: RowDraws | None = None  # per-row random streams (random scorer, pos_rs)


@dataclass
class MicroBatchResult:
    loss: Tensor  # scalar: this micro-batch's share of the step loss (already normalized)
    kd_sum: float
    ce_sum: float
    selection: Selection | None
    metrics: dict[str, float]
    feedback: dict[str, Tensor] | None = None  # what a policy needs after the optimizer step (bandit)
    # the KD term is NaN and the teacher's own outputs are not finite (only looked at on a NaN)
    teacher_not_finite: bool = False


def student_hidden(
    student: nn.Module, batch, autocast_dtype: torch.dtype | None, layer: int | None = None
) -> tuple[Tensor, Tensor | None]:
    """(B, T, Ds) final hidden states of the student body (with grad), and layer ``layer``'s if asked."""
    device = batch.input_ids.device
    with head_precision(device, autocast_dtype):
        out = body_outputs(student, batch, output_hidden_states=layer not in (None, -1))
    features = None
    if layer == -1:
        features = out.last_hidden_state
    elif layer is not None:
        features = out.hidden_states[layer]  # (B, T, Ds)
    return out.last_hidden_state, features


def distill_micro_batch(
    batch,
    student: nn.Module,
    teacher,  # TeacherSource | None
    parts: MethodParts,
    kd_count: float,
    ce_count: float,
    ctx: StepContextData,
) -> MicroBatchResult:
    """Loss of one micro-batch, normalized by the step's global counts, plus diagnostics (sums).

    ``kd_count``, ``ce_count`` and ``ctx.feature_count`` are the global counts of each term's own rows
    (DESIGN decision 4; ``ekd.train.term_counts``); ``ctx.feature_count`` is needed only with the EGAD feature
    branch.
    """
    labels = batch.labels  # (B, T), already shifted
    valid = labels != -100  # (B, T)
    B, T = labels.shape
    head_s = output_head(student, ctx.vocab_size)
    metrics: dict[str, float] = {"valid": float(valid.sum())}

    # 1. teacher signal (no grad)
    signal: TeacherSignal | None = None
    if parts.needs_teacher:
        signal = teacher.signal(batch, parts.stat_needs & TEACHER_STATS, parts.teacher_feature_layer)

    # 2. student body (grad)
    h_s, f_s = student_hidden(student, batch, ctx.autocast_dtype, parts.student_feature_layer)  # (B, T, Ds)
    h_s_flat = h_s.reshape(B * T, -1)  # (B·T, Ds)
    total = h_s.sum() * 0.0  # keeps the graph connected when every term is empty
    kd_sum_value, selection, feedback, teacher_not_finite = 0.0, None, None, False
    student_needs = parts.stat_needs & (STUDENT_STATS | PAIR_STATS) if parts.selects else set()

    # 7a. CE over all valid rows first when its chunk logits can give the student statistics (no second GEMM)
    ce_sum, shared = None, None
    if _ce_gives_student_stats(parts, ctx, student_needs, h_s, head_s):
        shared = StudentStatsObserver(student_needs, labels)
        ce_sum = _ce_sum(h_s_flat, head_s, labels, shared.rows, ctx, observe=shared)  # (N,) valid rows

    if parts.selects:
        # 3. statistics and scores (detached, τ=1, chunked)
        stats = dict(signal.stats) if signal is not None else {}
        if shared is not None:
            stats.update(shared.stats())
        elif student_needs:
            with head_precision(h_s.device, ctx.autocast_dtype):
                student_stats = token_stats(
                    student_needs,
                    labels,
                    student_hidden=h_s,
                    student_head=head_s,
                    teacher_hidden=signal.hidden if signal is not None else None,
                    teacher_head=signal.head if signal is not None else None,
                    chunk_rows=ctx.chunk_rows,
                )
            stats.update(student_stats)
        candidates = valid & signal.available if signal is not None else valid  # (B, T) may receive KD
        policy_ctx = StepContext(ctx.step, ctx.total_steps, ctx.generator, ctx.vocab_size, stats, ctx.rows)
        scores = (
            parts.scores(stats, candidates, ctx.rows, ctx.vocab_size) if parts.policy.needs_scores else None
        )
        # 4. selection → temperatures
        selection = parts.policy.select(scores, candidates, policy_ctx)
        tau = parts.temperature(selection, stats, candidates, policy_ctx).float()  # (M,)
        rows = selection.rows  # (M,) flat positions
        # 5. the KD term: heads applied at the M selected rows only
        heads = head_precision(h_s.device, ctx.autocast_dtype)
        if parts.objective == "kd":
            with heads:
                target = signal.target_at(rows, parts.target, tau, labels, batch.sample_ids)
                if isinstance(target, SparseTarget) and target.drawn is not None:  # online RS: what it drew
                    metrics["rs_unique"] = float(target.drawn.sum())  # Σ distinct ids over the M rows
                kd_sum = kd_loss_sum(
                    h_s_flat[rows],  # (M, Ds)
                    head_s,
                    target,
                    tau,
                    selection.weights.float(),
                    parts.divergence,
                    parts.scale_by_tau_squared,
                    ctx.loss_path,
                    ctx.chunk_rows,
                    compile=ctx.compile,
                )
        else:
            with heads:
                kd_sum = objective_sum(
                    parts, batch, rows, selection.weights.float(), tau, h_s_flat, head_s, signal, stats, ctx
                )
        # the bandit's reward, KL(p‖q) at τ=1 before/after the step, whatever the target
        if parts.wants_feedback:
            feedback = {
                "rows": rows,
                "teacher_hidden": signal.hidden.reshape(-1, signal.hidden.shape[-1])[rows],  # (M, Dt)
                "kl_before": stats["forward_kl"].reshape(-1)[rows],
            }
        # a teacher not finite where the selection did not look still stops the run (0 otherwise: the same bits)
        kd_sum = kd_sum + _nan_of_teacher(stats, signal, valid)
        total = total + parts.kd_weight * normalize(kd_sum, kd_count)
        kd_sum_value = float(kd_sum.detach())
        # only on a NaN (a sync): whether the stop names the teacher (try-out 112, F4), from what the teacher
        # alone gives — a KL or Hellinger to the student is NaN for a NaN student too
        if math.isnan(kd_sum_value):
            own = _nan_of_teacher(stats, signal, valid, keys=TEACHER_STATS)
            teacher_not_finite = bool(torch.as_tensor(own).isnan())
        # 6. EGAD feature branch on the hard (high teacher entropy) selected tokens
        if parts.feature_weight > 0:
            feat_sum, n_hard = parts.feature_sum(rows, stats, f_s, signal)
            if ctx.feature_count is None:
                raise ValueError(
                    "the feature branch needs ctx.feature_count, the step's global count of hard rows"
                )
            total = total + parts.feature_weight * normalize(feat_sum, ctx.feature_count)
            metrics["feature_sum"] = float(feat_sum.detach())
            metrics["hard"] = float(n_hard)
        metrics.update(_selection_metrics(selection, tau, stats, candidates))
        metrics.update(parts.policy.micro_batch_sums())

    # 7. CE on all valid tokens (chunked) or on the selected ones
    ce_sum_value = 0.0
    if ce_sum is None and parts.ce_weight > 0:  # (else CE ran first, in 7a)
        if parts.ce_on == "selected" and selection is not None:
            ce_rows = selection.rows  # (M,) the selection's rows; a position pos_rs drew twice counts twice
        else:
            ce_rows = valid.reshape(-1).nonzero().squeeze(-1)  # (N,)
        ce_sum = _ce_sum(h_s_flat, head_s, labels, ce_rows, ctx)
    if ce_sum is not None:
        total = total + parts.ce_weight * normalize(ce_sum, ce_count)
        ce_sum_value = float(ce_sum.detach())
    return MicroBatchResult(
        total, kd_sum_value, ce_sum_value, selection, metrics, feedback, teacher_not_finite
    )


def _nan_of_teacher(
    stats: dict[str, Tensor],
    signal: TeacherSignal | None = None,
    valid: Tensor | None = None,
    keys: frozenset[str] | set[str] = TEACHER_STATS | PAIR_STATS,
) -> Tensor | float:
    """NaN when the teacher is not finite somewhere in the batch — a statistic of ``keys`` it enters (its entropy,
    log p(gold), a KL or Hellinger to the student) NaN at some position, or its final hidden states (online) NaN or
    ±inf at a position with a target (``valid`` (B, T); a padded row a model leaves NaN is not the teacher's fault)
    — else 0, to add to the KD term: a selection that passed over those positions still stops the run on its
    non-finite loss (try-out 110, F5: EGAD's curriculum sorts NaN scores last and trained 30 steps on such a
    teacher; try-out 111, F1: SE-KD scores by the student and computed no teacher statistic at all). One pass over
    the teacher's (B, T, Dt) hidden states, no device sync. A 16-bit overflow in the head at rows nobody selects is
    not seen: no figure of the run reads those logits. ``keys=TEACHER_STATS`` asks of the teacher alone."""
    flags = [v.isnan().any() for k, v in stats.items() if k in keys]
    if signal is not None and signal.hidden is not None and valid is not None:
        finite = torch.isfinite(signal.hidden).all(-1)  # (B, T)
        flags.append(~(finite | ~valid).all())
    if not flags:
        return 0.0
    return torch.where(torch.stack(flags).any(), float("nan"), 0.0)


def _ce_sum(
    h_s_flat: Tensor, head_s, labels: Tensor, rows: Tensor, ctx: StepContextData, observe=None
) -> Tensor:
    """Σ CE over the flat positions ``rows`` (M,) through the fused head, under the head precision;
    ``observe`` receives each chunk's logits (the student statistics of 7a)."""
    with head_precision(h_s_flat.device, ctx.autocast_dtype):
        return ce_loss_sum(
            h_s_flat[rows],  # (M, Ds)
            head_s,
            labels.reshape(-1)[rows],  # (M,)
            ctx.loss_path,
            ctx.chunk_rows,
            compile=ctx.compile,
            observe=observe,
        )


def _ce_gives_student_stats(
    parts: MethodParts, ctx: StepContextData, student_needs: set[str], h_s: Tensor, head_s
) -> bool:
    """Whether the CE pass (fused head over all valid rows) can supply the selection's student statistics:
    only student-side ones are needed and its logits equal ``token_stats``'s (same rows, chunks and GEMM)."""
    return (
        bool(student_needs)
        and student_needs <= STUDENT_STATS
        and parts.ce_weight > 0
        and parts.ce_on != "selected"
        and ctx.loss_path == "chunked"
        and StudentStatsObserver.same_logits(h_s, head_s)
    )


def _selection_metrics(
    sel: Selection, tau: Tensor, stats: dict[str, Tensor], candidates: Tensor
) -> dict[str, float]:
    """Sums and extremes for the step's diagnostics (aggregated over micro-batches by the trainer)."""
    out = {
        "selected": float(sel.count),  # rows: pos_rs's draws, a position drawn twice counted twice
        "positions": float(sel.positions),  # the distinct positions that receive KD (try-out 58, F4)
        "candidates": float(candidates.sum()),
        "tau_sum": float(tau.sum(dtype=torch.float64)) if tau.numel() else 0.0,  # fp32 would drift below min
        "tau_min": float(tau.min()) if tau.numel() else float("nan"),
        "tau_max": float(tau.max()) if tau.numel() else float("nan"),
    }
    if "teacher_entropy" in stats:
        h = stats["teacher_entropy"]
        chosen = sel.mask(tuple(candidates.shape)) & candidates
        rest = candidates & ~chosen
        out["h_sel_sum"] = float(h[chosen].sum())
        out["h_sel_n"] = float(chosen.sum())
        out["h_unsel_sum"] = float(h[rest].sum())
        out["h_unsel_n"] = float(rest.sum())
    return out


@torch.no_grad()
def kl_at_rows(
    student: nn.Module, batch, rows: Tensor, teacher_hidden: Tensor, teacher_head, vocab_size: int, amp
) -> Tensor:
    """KL(p‖q) at flat rows after an optimizer step (the bandit's reward). → (M,)."""
    from ekd.losses.divergences import forward_kl

    h_s, _ = student_hidden(student, batch, amp)
    h = h_s.reshape(-1, h_s.shape[-1])[rows]  # (M, Ds)
    head = output_head(student, vocab_size)
    out = torch.empty(rows.numel(), device=rows.device)
    s_buffer, t_buffer = RowBuffer(), RowBuffer()  # every chunk's (m, V) logits, reused
    with head_precision(h.device, amp):
        for start in range(0, rows.numel(), 1024):
            sl = slice(start, start + 1024)
            out[sl] = forward_kl(
                head(h[sl], s_buffer).float(), teacher_head(teacher_hidden[sl], t_buffer).float()
            )
    return out
