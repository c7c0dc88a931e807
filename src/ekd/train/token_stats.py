"""Per-token statistics at τ=1 for scorers and temperature policies, computed chunk-wise under no_grad.

Names (each a (B, T) fp32 tensor, 0 at invalid positions):

- ``teacher_entropy`` H(p), ``teacher_logp_gold`` log p(y)
- ``student_entropy`` H(q), ``student_logp_gold`` log q(y)
- ``forward_kl`` KL(p‖q), ``reverse_kl`` KL(q‖p), ``hellinger`` (1/√2)‖√p − √q‖

Only the requested names are computed, over valid rows only, ``chunk_rows`` rows at a time, so no (B·T, V)
fp32 copy of either model's logits is ever held. ``StudentStatsObserver`` computes the student statistics from
the logits of a pass the step already makes (the fused CE head over all valid rows) instead of a second
student head GEMM; its values are bit-identical to ``token_stats``'s.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ekd.losses.divergences import forward_kl, hellinger, reverse_kl
from ekd.losses.matmul import RowBuffer
from ekd.losses.row_reductions import row_logsumexp_entropy
from ekd.losses.targets import Head

TEACHER_STATS = frozenset({"teacher_entropy", "teacher_logp_gold"})
STUDENT_STATS = frozenset({"student_entropy", "student_logp_gold"})
PAIR_STATS = frozenset({"forward_kl", "reverse_kl", "hellinger"})
ALL_STATS = TEACHER_STATS | STUDENT_STATS | PAIR_STATS


def softmax_entropy(logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """p = softmax(z) (m, V), log Σ_v exp z_v (m,) and H(p) (m,) in fp32 from logits (m, V).

    ``row_logsumexp_entropy`` with its probabilities (``ekd.losses.row_reductions``: one exp pass in cache-sized
    row blocks, pairwise sums; the stock CPU softmax normalizes with a sequential sum that errs by ~2e-5 at
    V = 151,936): lse and H are those of :func:`entropy_and_logp_gold` bit for bit, so the teacher cache stores
    the online teacher's statistics. −inf logits (masked ids) get p = 0; a row of only −inf logits is uniform.
    """
    z = logits.float()
    p = torch.empty_like(z)  # (m, V)
    lse, entropy = row_logsumexp_entropy(z, probs=p)
    return p, lse, entropy


def logp_at(logits: Tensor, lse: Tensor, ids: Tensor) -> Tensor:
    """log softmax(z)[y] = z_y − lse, finite even for a −inf logit. logits (m, V), lse (m,), ids (m,) → (m,)."""
    z_y = logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1).float()
    return (z_y - lse).clamp_min(torch.finfo(torch.float32).min)


def entropy_and_logp_gold(logits: Tensor, gold: Tensor) -> tuple[Tensor, Tensor]:
    """H(softmax(z)) and log softmax(z)[y] in fp32. logits (m, V), gold (m,) → (m,), (m,).

    One exp pass in cache-sized row blocks, no (m, V) probabilities (``row_logsumexp_entropy``): the statistics
    pass of a selective step costs about one elementwise pass over the logits besides its GEMM.
    """
    lse, entropy = row_logsumexp_entropy(logits.float())
    return entropy, logp_at(logits, lse, gold)


@torch.no_grad()
def token_stats(
    needs: set[str] | frozenset[str],
    labels: Tensor,
    student_hidden: Tensor | None = None,
    student_head: Head | None = None,
    teacher_hidden: Tensor | None = None,
    teacher_head: Head | None = None,
    chunk_rows: int = 1024,
) -> dict[str, Tensor]:
    """Compute the requested statistics.

    Args:
        needs: stat names (see module docstring).
        labels: (B, T) shifted labels, -100 = ignored.
        student_hidden: (B, T, Ds) student final hidden states (detached here), if student stats are needed.
        teacher_hidden: (B, T, Dt) teacher final hidden states, if teacher or pair stats are needed.
        chunk_rows: rows per chunk.

    Returns:
        name → (B, T) fp32 tensor, 0 at invalid positions.
    """
    unknown = set(needs) - ALL_STATS
    if unknown:
        raise ValueError(f"unknown token statistics {sorted(unknown)}")
    valid = labels != -100  # (B, T)
    rows = valid.reshape(-1).nonzero().squeeze(-1)  # (N,) flat valid positions
    gold = labels.reshape(-1)[rows]  # (N,)
    out = {name: torch.zeros(labels.shape, dtype=torch.float32, device=labels.device) for name in needs}
    if rows.numel() == 0 or not needs:
        return out
    need_s = bool(needs & (STUDENT_STATS | PAIR_STATS))
    need_t = bool(needs & (TEACHER_STATS | PAIR_STATS))
    if need_s and (student_hidden is None or student_head is None):
        raise ValueError(
            f"statistics {sorted(needs & (STUDENT_STATS | PAIR_STATS))} need the student hidden states"
        )
    if need_t and (teacher_hidden is None or teacher_head is None):
        raise ValueError(f"statistics {sorted(needs & (TEACHER_STATS | PAIR_STATS))} need the teacher model")
    hs = student_hidden.detach().reshape(-1, student_hidden.shape[-1]) if need_s else None  # (B·T, Ds)
    ht = teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1]) if need_t else None  # (B·T, Dt)
    flat = {name: torch.zeros(rows.numel(), dtype=torch.float32, device=labels.device) for name in needs}
    student_buffer, teacher_buffer = RowBuffer(), RowBuffer()  # one (chunk, V) buffer per model, reused
    for start in range(0, rows.numel(), chunk_rows):
        idx = rows[start : start + chunk_rows]  # (m,)
        y = gold[start : start + chunk_rows]
        zs = student_head(hs[idx], student_buffer).float() if need_s else None  # (m, V)
        zt = teacher_head(ht[idx], teacher_buffer).float() if need_t else None  # (m, V)
        sl = slice(start, start + idx.numel())
        if needs & STUDENT_STATS:
            h, lp = entropy_and_logp_gold(zs, y)
            if "student_entropy" in needs:
                flat["student_entropy"][sl] = h
            if "student_logp_gold" in needs:
                flat["student_logp_gold"][sl] = lp
        if needs & TEACHER_STATS:
            h, lp = entropy_and_logp_gold(zt, y)
            if "teacher_entropy" in needs:
                flat["teacher_entropy"][sl] = h
            if "teacher_logp_gold" in needs:
                flat["teacher_logp_gold"][sl] = lp
        if "forward_kl" in needs:
            flat["forward_kl"][sl] = forward_kl(zs, zt)
        if "reverse_kl" in needs:
            flat["reverse_kl"][sl] = reverse_kl(zs, zt)
        if "hellinger" in needs:
            flat["hellinger"][sl] = hellinger(zs, zt)
    for name in needs:
        out[name].view(-1)[rows] = flat[name]
    return out


class StudentStatsObserver:
    """The student statistics (``STUDENT_STATS``) read off another pass's chunk logits, not a second head GEMM.

    The fused head (``ekd.losses.chunked.fused_linear_loss(..., observe=...)``) calls it with each chunk's model
    logits z (m, V) (read-only) and the chunk's row range [start, end) of its N rows. When that pass runs over
    the valid rows of ``labels`` in order, ``chunk_rows`` at a time (the CE term over all valid rows), the
    logits and per-chunk computations are those of ``token_stats``, so ``stats()`` equals its output bit for
    bit (``same_logits`` says when the head's logits are; tests/test_shared_stats.py).

    Args:
        needs: a subset of ``STUDENT_STATS``.
        labels: (B, T) shifted labels, -100 = ignored; the pass's rows are its valid positions, in order.
    """

    def __init__(self, needs: set[str] | frozenset[str], labels: Tensor):
        if not needs or set(needs) - STUDENT_STATS:
            raise ValueError(f"StudentStatsObserver computes {sorted(STUDENT_STATS)}, got {sorted(needs)}")
        self.needs = set(needs)
        self.labels = labels
        self.rows = (labels != -100).reshape(-1).nonzero().squeeze(-1)  # (N,) flat valid positions
        self.gold = labels.reshape(-1)[self.rows]  # (N,)
        self.flat = {
            n: torch.zeros(self.rows.numel(), dtype=torch.float32, device=labels.device) for n in needs
        }

    @torch.no_grad()
    def __call__(self, logits: Tensor, start: int, end: int) -> None:
        """Record rows [start, end) from their logits (m, V); ``logits`` is not modified."""
        h, lp = entropy_and_logp_gold(logits, self.gold[start:end])
        if "student_entropy" in self.needs:
            self.flat["student_entropy"][start:end] = h
        if "student_logp_gold" in self.needs:
            self.flat["student_logp_gold"][start:end] = lp

    def stats(self) -> dict[str, Tensor]:
        """name → (B, T) fp32, 0 at invalid positions (``token_stats``'s layout)."""
        out = {}
        for name, values in self.flat.items():
            out[name] = torch.zeros(self.labels.shape, dtype=torch.float32, device=self.labels.device)
            out[name].view(-1)[self.rows] = values
        return out

    @staticmethod
    def same_logits(hidden: Tensor, head: Head) -> bool:
        """Whether the fused head's logits of ``hidden`` equal ``head(hidden)`` bit for bit: the GEMM operands are
        the same unless a 16-bit CPU weight meets hidden states of another dtype (``Head`` rounds them to the
        weight's dtype, the fused head on CPU casts the weight to fp32)."""
        w = head.weight
        return w.dtype in (torch.float32, hidden.dtype) or w.is_cuda
