"""One distillation micro-batch: the data flow of DESIGN.md, top to bottom.

    teacher signal (no grad) → student body (grad) → token stats (no grad, chunked) → scores → selection
    → temperatures → targets at the selected rows → KD sum (head applied at those rows only)
    + CE sum (chunked) [+ feature / objective terms] → each divided by its global count → loss

The selection, temperature, target and divergence are composed from the method config (``MethodParts``);
no method has a code path of its own here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ekd.config import Config, MethodConfig
from ekd.losses.divergences import Divergence, make_divergence
from ekd.losses.head_loss import ce_loss_sum, kd_loss_sum
from ekd.losses.reduce import normalize
from ekd.models.load import model_body, output_head
from ekd.selection.types import Selection
from ekd.teacher.signal import TargetSpec, TeacherSignal
from ekd.train.token_stats import PAIR_STATS, STUDENT_STATS, TEACHER_STATS, token_stats


@dataclass
class MethodParts:
    """The composed method: what the step needs, built once from the config."""

    divergence: Divergence
    policy: object  # ekd.selection.policies.SelectionPolicy
    temperature: object  # ekd.temperature.TemperaturePolicy
    target: TargetSpec
    stat_needs: set[str]
    kd_weight: float
    ce_weight: float
    ce_on: str
    scale_by_tau_squared: bool
    needs_teacher: bool
    method_cfg: MethodConfig
    extras: dict[str, object] = field(default_factory=dict)  # feature projection, EMA model, ...

    @classmethod
    def build(cls, cfg: Config, total_steps: int) -> MethodParts:
        from ekd.methods import presets
        from ekd.selection.policies import build_policy
        from ekd.selection.scores import score_needs
        from ekd.temperature import build_temperature, temperature_needs

        m = cfg.method
        policy = build_policy(m, total_steps)
        needs = set(temperature_needs(m))
        if policy.needs_scores:
            needs |= set(score_needs(m))
        needs_teacher = m.kd_weight > 0 and presets.get(m.preset).needs_teacher
        return cls(
            divergence=make_divergence(m.divergence, m.jsd_beta, m.skew_alpha),
            policy=policy,
            temperature=build_temperature(m, total_steps),
            target=TargetSpec(m.target, m.topk, m.topk_tail, m.rs_samples, m.rs_proposal_power, cfg.run.seed),
            stat_needs=needs,
            kd_weight=m.kd_weight if needs_teacher else 0.0,
            ce_weight=m.ce_weight,
            ce_on=m.ce_on,
            scale_by_tau_squared=m.scale_by_tau_squared,
            needs_teacher=needs_teacher,
            method_cfg=m,
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


@dataclass
class MicroBatchResult:
    loss: Tensor  # scalar: this micro-batch's share of the step loss (already normalized)
    kd_sum: float
    ce_sum: float
    selection: Selection | None
    metrics: dict[str, float]


def student_hidden(student: nn.Module, batch, autocast_dtype: torch.dtype | None) -> Tensor:
    """(B, T, Ds) final hidden states of the student body (with grad)."""
    device = batch.input_ids.device
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        out = model_body(student)(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return out.last_hidden_state


def distill_micro_batch(
    batch,
    student: nn.Module,
    teacher,  # TeacherSource | None
    parts: MethodParts,
    kd_count: float,
    ce_count: float,
    ctx: StepContextData,
) -> MicroBatchResult:
    """Loss of one micro-batch, normalized by the step's global counts, plus diagnostics (sums)."""
    from ekd.selection.policies import StepContext

    labels = batch.labels  # (B, T), already shifted
    valid = labels != -100  # (B, T)
    B, T = labels.shape
    head_s = output_head(student, ctx.vocab_size)
    metrics: dict[str, float] = {"valid": float(valid.sum())}

    # 1. teacher signal (no grad)
    signal: TeacherSignal | None = None
    if parts.kd_weight > 0:
        signal = teacher.signal(batch, parts.stat_needs & TEACHER_STATS)

    # 2. student body (grad)
    h_s = student_hidden(student, batch, ctx.autocast_dtype)  # (B, T, Ds)
    h_s_flat = h_s.reshape(B * T, -1)  # (B·T, Ds)

    total = h_s.sum() * 0.0  # keeps the graph connected when every term is empty
    kd_sum_value = 0.0
    selection = None
    if parts.kd_weight > 0:
        assert signal is not None
        # 3. statistics and scores (detached, τ=1, chunked)
        stats = dict(signal.stats)
        student_needs = parts.stat_needs & (STUDENT_STATS | PAIR_STATS)
        if student_needs:
            stats.update(
                token_stats(
                    student_needs,
                    labels,
                    student_hidden=h_s,
                    student_head=head_s,
                    teacher_hidden=signal.hidden,
                    teacher_head=signal.head,
                    chunk_rows=ctx.chunk_rows,
                )
            )
        candidates = valid & signal.available  # (B, T) positions that can receive KD
        policy_ctx = StepContext(ctx.step, ctx.total_steps, ctx.generator, ctx.vocab_size, stats)
        scores = compute_scores_for(parts, stats, candidates, ctx) if parts.policy.needs_scores else None
        # 4. selection → temperatures → targets at the selected rows
        selection = parts.policy.select(scores, candidates, policy_ctx)
        tau = parts.temperature(selection, stats, candidates, policy_ctx).float()  # (M,)
        target = signal.target_at(selection.rows, parts.target, tau, labels, batch.sample_ids)
        # 5. KD: heads applied at the M selected rows only
        kd_sum = kd_loss_sum(
            h_s_flat[selection.rows],  # (M, Ds)
            head_s,
            target,
            tau,
            selection.weights.float(),
            parts.divergence,
            parts.scale_by_tau_squared,
            ctx.loss_path,
            ctx.chunk_rows,
        )
        total = total + parts.kd_weight * normalize(kd_sum, kd_count)
        kd_sum_value = float(kd_sum.detach())
        metrics.update(_selection_metrics(selection, tau, stats, candidates))

    # 6. CE on all valid tokens (chunked) or on the selected ones
    ce_sum_value = 0.0
    if parts.ce_weight > 0:
        if parts.ce_on == "selected" and selection is not None:
            ce_rows = selection.rows.unique()
        else:
            ce_rows = valid.reshape(-1).nonzero().squeeze(-1)  # (N,)
        ce_sum = ce_loss_sum(h_s_flat[ce_rows], head_s, labels.reshape(-1)[ce_rows], ctx.loss_path, ctx.chunk_rows)
        total = total + parts.ce_weight * normalize(ce_sum, ce_count)
        ce_sum_value = float(ce_sum.detach())
    return MicroBatchResult(total, kd_sum_value, ce_sum_value, selection, metrics)


def compute_scores_for(parts: MethodParts, stats: dict[str, Tensor], candidates: Tensor, ctx: StepContextData) -> Tensor:
    from ekd.selection.scores import compute_scores

    return compute_scores(parts.method_cfg, stats, candidates, ctx.generator, ctx.vocab_size)


def _selection_metrics(sel: Selection, tau: Tensor, stats: dict[str, Tensor], candidates: Tensor) -> dict[str, float]:
    """Sums and extremes for the step's diagnostics (aggregated over micro-batches by the trainer)."""
    out = {
        "selected": float(sel.count),
        "candidates": float(candidates.sum()),
        "tau_sum": float(tau.sum()) if tau.numel() else 0.0,
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
