"""Position scores — "where" the teacher is worth listening to (METHODS §3).

A scorer turns per-token statistics into one (B, T) fp32 score per position. All scores are detached,
computed at τ=1, and 0 at invalid positions (label = -100). The statistics arrive from the training step
as ``stats: dict[str, Tensor]`` of (B, T) fp32 tensors, named

    teacher_entropy  H(p)            teacher_logp_gold  log p(y)
    student_entropy  H(q)            student_logp_gold  log q(y)
    forward_kl       KL(p‖q)         reverse_kl         KL(q‖p)          hellinger  (1/√2)‖√p − √q‖₂

and only the ones the configured scorer declares (``score_needs``) are computed. Statistics that need the
teacher's full distribution at training time (``TEACHER_DISTRIBUTION_STATS``) cannot come from a cache.

    scores = compute_scores(method_cfg, stats, valid, rows, vocab_size)   # (B, T); rows: RowDraws
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ekd.errors import ConfigError
from ekd.registry import Registry
from ekd.selection.draws import RowDraws

STAT_NAMES = (
    "teacher_entropy",
    "teacher_logp_gold",
    "student_entropy",
    "student_logp_gold",
    "forward_kl",
    "reverse_kl",
    "hellinger",
)
TEACHER_DISTRIBUTION_STATS = frozenset({"forward_kl", "reverse_kl", "hellinger"})
"""Statistics that need the teacher's full distribution at every position (an online teacher)."""

CE_RATIO_EPS = 1e-6
NORMALIZATION_EPS = 1e-8


@dataclass(frozen=True)
class ScoreInputs:
    """Everything a scorer function may read.

    Attributes:
        stats: name → (B, T) fp32 statistics (0 at invalid positions).
        valid: (B, T) bool mask, label ≠ -100.
        rows: per-row random streams (the ``random`` scorer); None where no scorer draws.
        vocab_size: V (``ce_ratio_plus_student_entropy`` divides H(q) by log V).
        method_cfg: the ``MethodConfig`` (``composite`` reads its weights and normalization).
    """

    stats: Mapping[str, Tensor]
    valid: Tensor
    rows: RowDraws | None
    vocab_size: int
    method_cfg: Any = None


@dataclass(frozen=True)
class Scorer:
    """A named position score.

    Attributes:
        fn: ScoreInputs → (B, T) score (masking to valid positions is applied by ``compute_scores``).
        needs: the statistic names ``fn`` reads.
        needs_teacher_distribution: True if a needed statistic requires the teacher's full distribution at
            training time (forward_kl, reverse_kl, hellinger); a cached teacher cannot provide those.
    """

    fn: Callable[[ScoreInputs], Tensor]
    needs: tuple[str, ...]
    needs_teacher_distribution: bool


scorers: Registry[Scorer] = Registry("scorer")


def _stat(name: str) -> Callable[[ScoreInputs], Tensor]:
    def fn(inputs: ScoreInputs) -> Tensor:
        return inputs.stats[name]

    return fn


def _add(name: str, description: str, fn: Callable[[ScoreInputs], Tensor], needs: tuple[str, ...]) -> None:
    scorers.add(name, Scorer(fn, needs, bool(set(needs) & TEACHER_DISTRIBUTION_STATS)), description)


def _student_ce(inputs: ScoreInputs) -> Tensor:
    return -inputs.stats["student_logp_gold"]


def _teacher_ce(inputs: ScoreInputs) -> Tensor:
    return -inputs.stats["teacher_logp_gold"]


def _ce_ratio(inputs: ScoreInputs) -> Tensor:
    """CE_s / (CE_t + 1e-6): high where the student is far worse on the gold token than the teacher."""
    return _student_ce(inputs) / (_teacher_ce(inputs) + CE_RATIO_EPS)


def _ce_ratio_plus_student_entropy(inputs: ScoreInputs) -> Tensor:
    """ce_ratio + H(q)/log V (the entropy term in [0, 1])."""
    return _ce_ratio(inputs) + inputs.stats["student_entropy"] / math.log(inputs.vocab_size)


def _random(inputs: ScoreInputs) -> Tensor:
    """U[0, 1) per position: position t of a row is draw t of the row's stream (keyed by its sample id)."""
    if inputs.rows is None:
        raise ValueError("scorer 'random' draws per row: pass rows=RowDraws(key, sample_ids)")
    t = inputs.valid.shape[-1]
    return inputs.rows.uniforms("random_scorer", t, inputs.valid.device).float()  # (B, T)


_add(
    "teacher_entropy", "H(p): teacher uncertainty (EKD, EGAD)", _stat("teacher_entropy"), ("teacher_entropy",)
)
_add("student_entropy", "H(q): student uncertainty (SE-KD)", _stat("student_entropy"), ("student_entropy",))
_add(
    "student_ce",
    "−log q(y): student loss on the gold token (selective KD)",
    _student_ce,
    ("student_logp_gold",),
)
_add("teacher_ce", "−log p(y): teacher loss on the gold token", _teacher_ce, ("teacher_logp_gold",))
_add("forward_kl", "KL(p‖q) at τ=1", _stat("forward_kl"), ("forward_kl",))
_add("reverse_kl", "KL(q‖p) at τ=1", _stat("reverse_kl"), ("reverse_kl",))
_add("hellinger", "Hellinger distance (AdaKD difficulty)", _stat("hellinger"), ("hellinger",))
_add("ce_ratio", "CE_s / (CE_t + 1e-6)", _ce_ratio, ("student_logp_gold", "teacher_logp_gold"))
_add(
    "ce_ratio_plus_student_entropy",
    "ce_ratio + H(q)/log V",
    _ce_ratio_plus_student_entropy,
    ("student_logp_gold", "teacher_logp_gold", "student_entropy"),
)
_add("random", "uniform random (random_pos baseline)", _random, ())


def normalize_per_sequence(x: Tensor, valid: Tensor, kind: str) -> Tensor:
    """Per-sequence normalization over the VALID positions only; 0 at invalid positions.

    ``zscore``: (x − μ_i)/max(σ_i, 1e-8) with μ, σ the mean and population std of row i's valid scores.
    ``minmax``: (x − min_i)/max(max_i − min_i, 1e-8). A constant row (or a single valid token) gives 0.

    Args:
        x: (B, T) scores (garbage at invalid positions is ignored).
        valid: (B, T) bool.
        kind: 'zscore' or 'minmax'.

    Returns:
        (B, T) fp32.
    """
    x = x.float().masked_fill(~valid, 0.0)
    if kind == "zscore":
        n = valid.sum(-1, keepdim=True).clamp(min=1)  # (B, 1)
        mean = x.sum(-1, keepdim=True) / n  # (B, 1)
        var = ((x - mean).masked_fill(~valid, 0.0).pow(2)).sum(-1, keepdim=True) / n  # (B, 1)
        out = (x - mean) / var.sqrt().clamp_min(NORMALIZATION_EPS)
    elif kind == "minmax":
        has = valid.any(-1, keepdim=True)  # (B, 1)
        lo = x.masked_fill(~valid, float("inf")).amin(-1, keepdim=True)  # (B, 1)
        hi = x.masked_fill(~valid, float("-inf")).amax(-1, keepdim=True)  # (B, 1)
        lo = torch.where(has, lo, torch.zeros_like(lo))
        hi = torch.where(has, hi, torch.zeros_like(hi))
        out = (x - lo) / (hi - lo).clamp_min(NORMALIZATION_EPS)
    else:
        raise ConfigError(f"method.scorer_normalization must be 'zscore' or 'minmax', got '{kind}'")
    return out.masked_fill(~valid, 0.0)


def _composite(inputs: ScoreInputs) -> Tensor:
    """Σ_k w_k·norm(score_k) with per-sequence normalization over valid positions."""
    cfg = inputs.method_cfg
    total = torch.zeros(inputs.valid.shape, dtype=torch.float32, device=inputs.valid.device)
    for name, weight in _composite_weights(cfg).items():
        raw = scorers.get(name).fn(inputs)  # (B, T)
        total = total + float(weight) * normalize_per_sequence(raw, inputs.valid, cfg.scorer_normalization)
    return total


scorers.add(
    "composite",
    Scorer(_composite, (), False),
    "Σ_k w_k·norm(score_k), per-sequence zscore/minmax over valid positions (method.scorer_weights)",
)


def _composite_weights(cfg: Any) -> dict[str, float]:
    weights = dict(cfg.scorer_weights)
    if not weights:
        raise ConfigError("method.scorer=composite needs method.scorer_weights (score name → weight)")
    for name in weights:
        if name == "composite" or name not in scorers:
            choices = ", ".join(n for n in scorers.names() if n != "composite")
            raise ConfigError(
                f"method.scorer_weights: '{name}' is not a component score (choices: {choices})"
            )
    return weights


def _get_scorer(name: str) -> Scorer:
    if name not in scorers:
        raise ConfigError(f"method.scorer: {scorers.unknown_message(name)}")
    return scorers.get(name)


def score_needs(method_cfg: Any) -> set[str]:
    """Statistic names the selection of ``method_cfg`` reads: its scorer's (composite components included)
    plus the LinUCB bandit's token features (teacher_entropy, student_logp_gold; its KL feature is read
    when ``forward_kl`` is present, e.g. with ``method.scorer=forward_kl``)."""
    needs: set[str] = set()
    name = method_cfg.scorer
    if name == "composite":
        for component in _composite_weights(method_cfg):
            needs |= set(scorers.get(component).needs)
    elif name != "none":
        needs |= set(_get_scorer(name).needs)
    if method_cfg.policy == "bandit" and method_cfg.bandit_kind == "linucb":
        needs |= {"teacher_entropy", "student_logp_gold"}
    return needs


def needs_teacher_distribution(stat_names: Iterable[str]) -> bool:
    """True if any of these statistics needs the teacher's full distribution (not available from a cache)."""
    return bool(set(stat_names) & TEACHER_DISTRIBUTION_STATS)


def compute_scores(
    method_cfg: Any,
    stats: Mapping[str, Tensor],
    valid: Tensor,
    rows: RowDraws | None,
    vocab_size: int,
) -> Tensor:
    """The configured position score.

    Args:
        method_cfg: ``MethodConfig`` (reads ``scorer``, ``scorer_weights``, ``scorer_normalization``).
        stats: name → (B, T) fp32 statistics at τ=1; must hold ``score_needs(method_cfg)``.
        valid: (B, T) bool, label ≠ -100.
        rows: per-row random streams of the micro-batch (the ``random`` scorer); may be None otherwise.
        vocab_size: V.

    Returns:
        (B, T) fp32 detached scores, 0 at invalid positions.
    """
    name = method_cfg.scorer
    if name == "none":
        raise ConfigError("method.scorer is 'none' but the selection policy needs scores; set method.scorer")
    scorer = _get_scorer(name)
    missing = sorted(_direct_needs(method_cfg) - set(stats))
    if missing:
        raise ValueError(
            f"scorer '{name}' needs statistics {missing} that the step did not compute "
            "(compute every name in score_needs(method_cfg))"
        )
    inputs = ScoreInputs(stats, valid, rows, vocab_size, method_cfg)
    with torch.no_grad():
        out = scorer.fn(inputs).float()
    return out.detach().masked_fill(~valid, 0.0)


def _direct_needs(method_cfg: Any) -> set[str]:
    """Statistics the scorer itself reads (without the bandit features)."""
    if method_cfg.scorer == "composite":
        return {n for c in _composite_weights(method_cfg) for n in scorers.get(c).needs}
    return set(_get_scorer(method_cfg.scorer).needs)
