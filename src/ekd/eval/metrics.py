"""Streaming evaluation metrics over valid tokens (METHODS §9).

``StreamingMetrics`` takes (N, V) student logits (and optionally teacher logits) at valid rows, one call at a
time, and keeps only O(bins) running sums — no logits are stored — so any number of eval tokens costs the
same memory. Per-row math is fp32 at τ=1; the running sums are float64 so millions of tokens add up exactly
enough. Rows are processed ``chunk_rows`` at a time, so an fp32 copy of a large bf16 batch is never made
whole.

Metrics (``compute()``):

- ``tokens``, ``loss`` (mean NLL), ``ppl`` = exp(loss), ``acc`` (top-1), over every target, the
  end-of-document targets included,
- ``boundary_tokens`` (end-of-document targets, marked by ``update(..., boundary=...)``), and
  ``loss_no_boundary``, ``ppl_no_boundary``: the same over the other targets (text only),
- ``ece`` in %: top-1 confidence, ``ece_bins`` equal-width bins (lo, hi], weighted by count, pooled over all
  tokens (Guo et al. 2017); ``reliability()`` returns the bins for a reliability diagram,
- with a teacher: ``kl`` = mean KL(p‖q) (p teacher, q student), ``agree`` (top-1 agreement),
  ``teacher_entropy`` (mean H(p), nats), ``teacher_tokens``, and per bucket b of the normalized teacher
  entropy Ĥ = H(p)/log V (``entropy_buckets`` equal-width buckets [b/B, (b+1)/B), the last one closed):
  ``kl@H{b}``, ``acc@H{b}``, ``agree@H{b}``, ``tokens@H{b}``. An empty bucket reports NaN for its means.
- for a student head padded past the tokenizer (rows ≥ V, never trained or scored by ekd; ``update(...,
  padded_logsumexp=...)``): ``padded_mass``, the mean probability a softmax over the *whole* head puts on
  those rows, and ``loss_full_head`` / ``ppl_full_head``, the NLL and perplexity under that softmax — what an
  evaluator of the exported model that does not slice its logits to V (lm-eval, a plain ``log_softmax``)
  computes. Per row, with d = logsumexp(padded logits) − logsumexp(V logits): mass = σ(d) and
  NLL_full = NLL + softplus(d).

Per block (``block_sums()``, when ``update(..., block=...)`` names each row's block, a row of the packed eval
batches): the same sums of :data:`BLOCK_SUMS` — scored tokens, NLL (nats), correct top-1 predictions, and the
end-of-document targets' count and NLL — so that ``ekd compare`` can tell how much of a difference the fixed
sample of eval text could make (a cluster standard error over blocks: the tokens of a document are correlated).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor

IGNORE_INDEX = -100
BLOCK_SUMS = ("tokens", "nll", "correct", "boundary_tokens", "boundary_nll")
"""The per-block sums (:meth:`StreamingMetrics.block_sums`): scored targets, their summed NLL (nats), correct
top-1 predictions, and of those the end-of-document targets and their summed NLL — each the block's share of the
set's ``tokens``, ``loss``·``tokens``, ``acc``·``tokens``, ``boundary_tokens``."""


def _xlogy_terms(p: Tensor, log_p: Tensor, log_q: Tensor) -> Tensor:
    """Σ_v p·(log p − log q) per row, with 0·(anything) = 0 (guards −inf teacher logits); a NaN p gives NaN.
    (m, V) → (m,)."""
    terms = p * (log_p - log_q)  # (m, V)
    return torch.where(p == 0, terms.new_zeros(()), terms).sum(-1)  # a NaN p stays NaN


class StreamingMetrics:
    """Running sums for perplexity, accuracy, ECE and teacher agreement over valid tokens.

    Args:
        vocab_size: V, the number of logit columns every ``update`` passes (the tokenizer length).
        ece_bins: equal-width confidence bins (lo, hi] of ECE and the reliability diagram.
        entropy_buckets: equal-width buckets of normalized teacher entropy Ĥ = H/log V for the per-bucket
            metrics; 0 turns them off.
        chunk_rows: rows converted to fp32 and processed at a time.
    """

    def __init__(self, vocab_size: int, ece_bins: int = 15, entropy_buckets: int = 4, chunk_rows: int = 1024):
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be ≥ 2, got {vocab_size}")
        if ece_bins < 1:
            raise ValueError(f"ece_bins must be ≥ 1, got {ece_bins}")
        if entropy_buckets < 0:
            raise ValueError(f"entropy_buckets must be ≥ 0 (0 = off), got {entropy_buckets}")
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be ≥ 1, got {chunk_rows}")
        self.vocab_size = vocab_size
        self.ece_bins = ece_bins
        self.entropy_buckets = entropy_buckets
        self.chunk_rows = chunk_rows
        self._device: torch.device | None = None
        self._sums: dict[str, Tensor] = {}
        self._blocks: dict[str, Tensor] = {}  # name → (capacity,) per-block sums (BLOCK_SUMS)
        self._block_count = 0  # blocks seen: 1 + the largest block index passed

    # ---------------------------------------------------------------- state

    def _init(self, device: torch.device) -> None:
        # float64 accumulators on the logits' device: no host sync per update (MPS has no float64).
        acc_dtype = torch.float32 if device.type == "mps" else torch.float64
        b, h = self.ece_bins, max(self.entropy_buckets, 1)
        self._device = device
        self._sums = {
            "tokens": torch.zeros((), dtype=acc_dtype, device=device),
            "nll": torch.zeros((), dtype=acc_dtype, device=device),
            "boundary_tokens": torch.zeros((), dtype=acc_dtype, device=device),
            "boundary_nll": torch.zeros((), dtype=acc_dtype, device=device),
            "correct": torch.zeros((), dtype=acc_dtype, device=device),
            "bin_count": torch.zeros(b, dtype=acc_dtype, device=device),  # (bins,)
            "bin_conf": torch.zeros(b, dtype=acc_dtype, device=device),  # (bins,)
            "bin_correct": torch.zeros(b, dtype=acc_dtype, device=device),  # (bins,)
            "teacher_tokens": torch.zeros((), dtype=acc_dtype, device=device),
            "kl": torch.zeros((), dtype=acc_dtype, device=device),
            "agree": torch.zeros((), dtype=acc_dtype, device=device),
            "entropy": torch.zeros((), dtype=acc_dtype, device=device),
            "h_count": torch.zeros(h, dtype=acc_dtype, device=device),  # (buckets,)
            "h_kl": torch.zeros(h, dtype=acc_dtype, device=device),
            "h_correct": torch.zeros(h, dtype=acc_dtype, device=device),
            "h_agree": torch.zeros(h, dtype=acc_dtype, device=device),
            "padded_tokens": torch.zeros((), dtype=acc_dtype, device=device),
            "padded_mass": torch.zeros((), dtype=acc_dtype, device=device),
            "nll_full_head": torch.zeros((), dtype=acc_dtype, device=device),
        }
        # Inner bin edges k/B in fp32 (correctly rounded), compared against fp32 confidences.
        self._ece_edges = torch.arange(1, b, dtype=torch.float32, device=device) / b  # (bins − 1,)

    def reset(self) -> None:
        """Forget everything seen so far."""
        self._device = None
        self._sums = {}
        self._blocks = {}
        self._block_count = 0

    def _reserve_blocks(self, count: int) -> None:
        """Room for blocks [0, ``count``) in the per-block sums (capacity doubled: batches add a few blocks each)."""
        capacity = next(iter(self._blocks.values())).shape[0] if self._blocks else 0
        if count <= capacity:
            return
        size = max(count, 2 * capacity)
        for name in BLOCK_SUMS:
            grown = torch.zeros(size, dtype=self._sums["tokens"].dtype, device=self._device)  # (size,)
            if name in self._blocks:
                grown[:capacity] = self._blocks[name]
            self._blocks[name] = grown

    # ---------------------------------------------------------------- update

    @torch.no_grad()
    def update(
        self,
        student_logits: Tensor,
        labels: Tensor,
        teacher_logits: Tensor | None = None,
        boundary: Tensor | None = None,
        padded_logsumexp: Tensor | None = None,
        block: Tensor | None = None,
    ) -> None:
        """Add N rows.

        Args:
            student_logits: (N, V) student logits, any float dtype.
            labels: (N,) gold next-token ids; rows with label −100 are skipped.
            teacher_logits: (N, V) teacher logits at the same rows, or None.
            boundary: (N,) bool, True where the target is an end-of-document token, or None (none are).
            padded_logsumexp: (N,) logsumexp of the student's logits at its head rows ≥ V (a padded head), or
                None (no such rows).
            block: (N,) int64, the index of the block (a row of the packed eval batches, numbered over the
                whole set) each row belongs to, or None (no per-block sums).
        """
        if student_logits.dim() != 2 or student_logits.shape[1] != self.vocab_size:
            raise ValueError(
                f"student_logits must be (N, {self.vocab_size}), got {tuple(student_logits.shape)}"
            )
        if labels.shape != student_logits.shape[:1]:
            raise ValueError(f"labels must be ({student_logits.shape[0]},), got {tuple(labels.shape)}")
        if teacher_logits is not None and teacher_logits.shape != student_logits.shape:
            raise ValueError(
                f"teacher_logits must match student_logits {tuple(student_logits.shape)}, "
                f"got {tuple(teacher_logits.shape)}"
            )
        if self._device is None:
            self._init(student_logits.device)
        valid = labels != IGNORE_INDEX  # (N,)
        if boundary is None:
            boundary = torch.zeros_like(labels, dtype=torch.bool)
        if boundary.shape != labels.shape:
            raise ValueError(f"boundary must be ({labels.shape[0]},), got {tuple(boundary.shape)}")
        if padded_logsumexp is not None and padded_logsumexp.shape != labels.shape:
            raise ValueError(
                f"padded_logsumexp must be ({labels.shape[0]},), got {tuple(padded_logsumexp.shape)}"
            )
        if block is not None and block.shape != labels.shape:
            raise ValueError(f"block must be ({labels.shape[0]},), got {tuple(block.shape)}")
        if not bool(valid.all()):
            student_logits, labels = student_logits[valid], labels[valid]  # (n, V), (n,)
            teacher_logits = None if teacher_logits is None else teacher_logits[valid]
            boundary = boundary[valid]  # (n,)
            padded_logsumexp = None if padded_logsumexp is None else padded_logsumexp[valid]  # (n,)
            block = None if block is None else block[valid]  # (n,)
        if block is not None and block.numel():
            if int(block.min()) < 0:
                raise ValueError(f"block indices must be ≥ 0, got {int(block.min())}")
            self._block_count = max(self._block_count, int(block.max()) + 1)
            self._reserve_blocks(self._block_count)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.vocab_size):
            raise ValueError(
                f"labels must be in [0, {self.vocab_size}) or −100, got [{int(labels.min())}, {int(labels.max())}]"
            )
        for start in range(0, labels.shape[0], self.chunk_rows):
            end = start + self.chunk_rows
            self._update_chunk(
                student_logits[start:end],
                labels[start:end],
                None if teacher_logits is None else teacher_logits[start:end],
                boundary[start:end],
                None if padded_logsumexp is None else padded_logsumexp[start:end],
                None if block is None else block[start:end],
            )

    def _update_chunk(
        self,
        student_logits: Tensor,
        labels: Tensor,
        teacher_logits: Tensor | None,
        boundary: Tensor,
        padded_logsumexp: Tensor | None = None,
        block: Tensor | None = None,
    ) -> None:
        s = self._sums
        acc = s["tokens"].dtype
        z = student_logits.float()  # (m, V) fp32
        log_q = torch.log_softmax(z, dim=-1)  # (m, V)
        nll = -log_q.gather(1, labels[:, None]).squeeze(1)  # (m,)
        # softmax (not exp(log_softmax)) so that e.g. uniform logits give exactly 1/V: bin edges are exact.
        conf, pred = torch.softmax(z, dim=-1).max(dim=-1)  # (m,), (m,)
        correct = (pred == labels).to(acc)  # (m,)
        correct = correct.masked_fill(nll.isnan(), math.nan)  # a NaN row's argmax is no prediction: acc NaN
        s["tokens"] += labels.shape[0]
        s["nll"] += nll.to(acc).sum()
        s["boundary_tokens"] += boundary.sum().to(acc)
        s["boundary_nll"] += torch.where(boundary, nll, nll.new_zeros(())).to(acc).sum()
        s["correct"] += correct.sum()
        # bucketize(right=False): edges[i−1] < conf ≤ edges[i] → bin i, i.e. bins are (lo, hi].
        b = torch.bucketize(conf, self._ece_edges)  # (m,) in [0, bins)
        s["bin_count"].index_add_(0, b, torch.ones_like(correct))
        s["bin_conf"].index_add_(0, b, conf.to(acc))
        s["bin_correct"].index_add_(0, b, correct)
        if block is not None:  # the same sums per block (the packed row each target is in)
            per = self._blocks
            boundary_nll = torch.where(boundary, nll, nll.new_zeros(())).to(acc)  # (m,)
            per["tokens"].index_add_(0, block, torch.ones_like(correct))
            per["nll"].index_add_(0, block, nll.to(acc))
            per["correct"].index_add_(0, block, correct)
            per["boundary_tokens"].index_add_(0, block, boundary.to(acc))
            per["boundary_nll"].index_add_(0, block, boundary_nll)
        if padded_logsumexp is not None:
            gap = padded_logsumexp.float() - torch.logsumexp(z, dim=-1)  # (m,) log(padded mass / V-row mass)
            s["padded_tokens"] += labels.shape[0]
            s["padded_mass"] += torch.sigmoid(gap).to(acc).sum()
            s["nll_full_head"] += (nll + torch.nn.functional.softplus(gap)).to(acc).sum()
        if teacher_logits is None:
            return
        log_p = torch.log_softmax(teacher_logits.float(), dim=-1)  # (m, V)
        p = log_p.exp()  # (m, V)
        kl = _xlogy_terms(p, log_p, log_q)  # (m,)
        entropy = -torch.where(p == 0, p.new_zeros(()), p * log_p).sum(-1)  # (m,)
        # (m,) NaN: no answer
        agree = (log_p.argmax(dim=-1) == pred).to(acc).masked_fill(kl.isnan(), math.nan)
        s["teacher_tokens"] += labels.shape[0]
        s["kl"] += kl.to(acc).sum()
        s["agree"] += agree.sum()
        s["entropy"] += entropy.to(acc).sum()
        if self.entropy_buckets:
            h_norm = entropy / math.log(self.vocab_size)  # (m,) Ĥ in [0, 1] up to rounding
            h = (h_norm * self.entropy_buckets).floor().long().clamp_(0, self.entropy_buckets - 1)  # (m,)
            s["h_count"].index_add_(0, h, torch.ones_like(correct))
            # a NaN row (a non-finite teacher or student) has no bucket, or its KL none: every bucket's figures are
            # NaN, as the set's (no sync: added to all)
            s["h_count"] += torch.where((entropy.isnan() | kl.isnan()).any(), math.nan, 0.0).to(acc)
            s["h_kl"].index_add_(0, h, kl.to(acc))
            s["h_correct"].index_add_(0, h, correct)
            s["h_agree"].index_add_(0, h, agree)

    def all_reduce(self, device: torch.device, blocks: int = 0) -> None:
        """Sum every accumulator over the ranks of the default process group (a collective; each rank must
        call it once, also a rank that saw no rows). Afterwards every rank holds the metrics of all rows.

        Args:
            device: where a rank that saw no rows makes its (zero) accumulators.
            blocks: the blocks of the whole set (every rank passes the same count): the per-block sums of blocks
                [0, ``blocks``), each rank's zero where another rank scored the block, are summed too.
        """
        if not self._sums:
            self._init(torch.device(device))
        for t in self._sums.values():
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        if blocks:
            for name, t in self._per_block(blocks).items():
                dist.all_reduce(t, op=dist.ReduceOp.SUM)
                self._blocks[name] = t

    def _per_block(self, blocks: int) -> dict[str, Tensor]:
        """The per-block sums of blocks [0, ``blocks``), zero for a block no row was passed for: name → (blocks,)."""
        if self._block_count > blocks:
            raise ValueError(
                f"rows of block {self._block_count - 1} were passed, but the set has {blocks} blocks"
            )
        if not self._sums:
            self._init(torch.device("cpu"))
        self._reserve_blocks(blocks)
        return {name: self._blocks[name][:blocks].clone() for name in BLOCK_SUMS}  # (blocks,) each

    # ---------------------------------------------------------------- results

    def _host(self) -> dict[str, list[float] | float]:
        if not self._sums:
            self._init(torch.device("cpu"))
        return {k: (v.tolist() if v.dim() else float(v)) for k, v in self._sums.items()}

    def compute(self) -> dict[str, float]:
        """The metrics so far (see the module docstring). Means over zero tokens are NaN."""
        s = self._host()
        n = s["tokens"]
        nan = float("nan")

        def mean(total: float, count: float) -> float:
            return total / count if count > 0 else nan

        loss = mean(s["nll"], n)
        ece = sum(abs(c - f) for c, f in zip(s["bin_correct"], s["bin_conf"])) / n * 100.0 if n > 0 else nan
        out = {
            "tokens": n,
            "loss": loss,
            "ppl": _exp(loss),
            "boundary_tokens": s["boundary_tokens"],
            "loss_no_boundary": mean(s["nll"] - s["boundary_nll"], n - s["boundary_tokens"]),
            "acc": mean(s["correct"], n),
            "ece": ece,
        }
        out["ppl_no_boundary"] = _exp(out["loss_no_boundary"])
        if s["padded_tokens"] > 0:
            out["padded_mass"] = mean(s["padded_mass"], s["padded_tokens"])
            out["loss_full_head"] = mean(s["nll_full_head"], s["padded_tokens"])
            out["ppl_full_head"] = _exp(out["loss_full_head"])
        nt = s["teacher_tokens"]
        if nt > 0:
            out.update(
                teacher_tokens=nt,
                kl=mean(s["kl"], nt),
                agree=mean(s["agree"], nt),
                teacher_entropy=mean(s["entropy"], nt),
            )
            for b in range(self.entropy_buckets):
                c = s["h_count"][b]
                out[f"kl@H{b}"] = mean(s["h_kl"][b], c)
                out[f"acc@H{b}"] = mean(s["h_correct"][b], c)
                out[f"agree@H{b}"] = mean(s["h_agree"][b], c)
                out[f"tokens@H{b}"] = c
        return out

    def block_sums(self, blocks: int | None = None) -> dict[str, list[float]]:
        """The sums of :data:`BLOCK_SUMS` per block: name → ``blocks`` values (None: as many as the largest block
        index passed + 1), block i's at position i, 0 for a block no row was passed for. They add up to the
        set's totals: Σ tokens = ``tokens``, Σ nll = ``loss``·``tokens``, Σ correct = ``acc``·``tokens``."""
        count = self._block_count if blocks is None else blocks
        return {name: t.tolist() for name, t in self._per_block(count).items()}

    def reliability(self) -> list[tuple[float, float, int, float, float]]:
        """Reliability-diagram bins: (lo, hi, count, mean confidence, accuracy) per bin (lo, hi].

        Empty bins have count 0 and NaN mean confidence and accuracy.
        """
        s = self._host()
        bins = []
        for i in range(self.ece_bins):
            c = s["bin_count"][i]
            conf = s["bin_conf"][i] / c if c > 0 else float("nan")
            acc = s["bin_correct"][i] / c if c > 0 else float("nan")
            bins.append((i / self.ece_bins, (i + 1) / self.ece_bins, int(c), conf, acc))
        return bins


def _exp(x: float) -> float:
    try:
        return math.exp(x)  # NaN stays NaN
    except OverflowError:
        return math.inf


def expected_calibration_error(bins: list[tuple[float, float, int, float, float]]) -> float:
    """ECE in % from ``reliability()`` bins: Σ_b (n_b/N)·|acc_b − conf_b|·100 (NaN when empty)."""
    n = sum(b[2] for b in bins)
    if n == 0:
        return float("nan")
    return sum(c * abs(acc - conf) for _, _, c, conf, acc in bins if c > 0) / n * 100.0
