"""What the step receives from the teacher for one micro-batch, whichever the source (DESIGN decision 1).

``TeacherSignal`` holds per-token statistics for every position plus a way to produce targets at the rows
the selector picks: from the online teacher's hidden states + head (dense, top-K or RS computed on the
fly), or from sparse targets read from an offline cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

import torch
from torch import Tensor

from ekd.losses.matmul import RowBuffer
from ekd.losses.targets import DenseTarget, Head, SparseTarget, Target


@dataclass(frozen=True)
class TargetSpec:
    """How the teacher's distribution is delivered at the selected rows (METHODS §2)."""

    kind: str = "dense"  # dense | topk | rs
    topk: int = 12
    topk_tail: str = "renormalize"
    rs_samples: int = 50
    rs_proposal_power: float = 1.0
    seed: int = 0


@dataclass
class TeacherSignal:
    """Teacher information for a (B, T) micro-batch.

    Attributes:
        stats: name → (B, T) fp32 teacher statistics at τ=1 (``teacher_entropy``, ``teacher_logp_gold``).
        available: (B, T) bool — positions that have a teacher target (online: all valid; cache: cached).
        hidden: (B, T, Dt) teacher final hidden states (online only).
        head: the teacher head sliced to the shared vocabulary (online only).
        features: (B, T, Dt') teacher hidden states of the feature-branch layer (online, when asked).
        sparse: cached sparse targets at the ``available`` positions in flat order (cache only).
    """

    stats: dict[str, Tensor]
    available: Tensor
    hidden: Tensor | None = None
    head: Head | None = None
    features: Tensor | None = None
    sparse: SparseTarget | None = None
    extra: dict[str, Tensor] = field(default_factory=dict)

    @property
    def has_distribution(self) -> bool:
        return self.hidden is not None

    def target_at(
        self, rows: Tensor, spec: TargetSpec, tau: Tensor, labels: Tensor, sample_ids: Tensor
    ) -> Target:
        """The target at flat rows (M,) of the micro-batch at temperatures tau (M,) (top-K and RS are taken
        from softmax(z_t/τ_i), as dense targets are); labels (B, T).

        M = 0 (nothing selected, or no valid position) gives an empty target of the same kind, whose loss
        is exactly 0. An RS target drawn here carries ``drawn`` (M,), the distinct ids drawn at each row."""
        if self.sparse is not None:
            # cached rows are stored in flat order of `available`: map flat row → its index there
            index_of = torch.cumsum(self.available.reshape(-1).long(), 0) - 1  # (B·T,)
            cached = self.sparse.rows(index_of[rows])  # (M, K) as wide as the widest cached row of the batch
            return cached.narrowed() if spec.kind == "rs" else cached  # as wide as online draws at these rows
        if self.hidden is None or self.head is None:
            raise RuntimeError("this teacher signal has neither a model nor cached targets")
        hidden = self.hidden.reshape(-1, self.hidden.shape[-1])[rows]  # (M, Dt) teacher hidden at the rows
        if spec.kind == "dense":
            return DenseTarget(hidden, self.head)
        from ekd.teacher.targets import position_seeds, rs_target, topk_target

        T = labels.shape[1]
        gold = labels.reshape(-1)[rows]  # (M,)
        parts: list[SparseTarget] = []
        chunk = 1024
        logits_buffer = RowBuffer()  # every chunk's logits in one buffer (targets are new tensors)
        with torch.no_grad():
            for start in range(0, max(rows.numel(), 1), chunk):  # one (empty) chunk when nothing is selected
                sl = slice(start, start + chunk)
                # (m, V) teacher logits, one chunk at a time
                logits = self.head(hidden[sl], logits_buffer).float()
                if spec.kind == "topk":
                    parts.append(topk_target(logits, spec.topk, spec.topk_tail, gold[sl], tau[sl]))
                else:
                    r = rows[sl]
                    seeds = position_seeds(spec.seed, sample_ids[r // T], r % T)  # (m,)
                    sampled = rs_target(
                        logits,
                        spec.rs_samples,
                        seeds=seeds,
                        proposal_power=spec.rs_proposal_power,
                        tau=tau[sl],  # draws from softmax(z_t/τ_i): the distribution q_τ is matched to
                    )
                    # the distinct ids of each row, counted where they are drawn (the step logs their mean)
                    parts.append(replace(sampled.target, drawn=sampled.num_unique))
        return concat_sparse(parts)


def concat_sparse(parts: list[SparseTarget]) -> SparseTarget:
    """Concatenate sparse targets along rows, padding K to the widest part (probability 0 in padding)."""
    k = max(p.ids.shape[1] for p in parts)
    ids = torch.cat([torch.nn.functional.pad(p.ids, (0, k - p.ids.shape[1])) for p in parts])  # (M, K)
    probs = torch.cat([torch.nn.functional.pad(p.probs, (0, k - p.probs.shape[1])) for p in parts])  # (M, K)
    tails, drawn = [p.tail for p in parts], [p.drawn for p in parts]
    tail = None if any(t is None for t in tails) else torch.cat(tails)  # type: ignore[arg-type]
    unique = None if any(d is None for d in drawn) else torch.cat(drawn)  # type: ignore[arg-type]  # (M,)
    return SparseTarget(ids, probs, tail, unique)


class TeacherSource(Protocol):
    """An online teacher model or an offline cache; the step cannot tell them apart."""

    provides_distribution: bool

    def available(self, batch) -> Tensor: ...

    def signal(self, batch, need_stats: set[str], feature_layer: int | None = None) -> TeacherSignal: ...
