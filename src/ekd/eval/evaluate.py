"""Evaluate a student (and its agreement with a teacher) on batches of tokens, without (B, T, V) logits.

Each model runs its body once per batch (final hidden states, post final norm); the output head is applied
only at the valid rows (label ≠ −100), ``chunk_rows`` rows at a time, and every chunk goes straight into
``StreamingMetrics``. Peak memory is O(chunk_rows · V) per model, not O(B · T · V).

    metrics, bins = evaluate(student, batches, teacher, vocab_size=len(tokenizer))
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ekd.eval.metrics import IGNORE_INDEX, StreamingMetrics
from ekd.losses.matmul import RowBuffer
from ekd.models.body import body_outputs
from ekd.models.load import model_body, output_head, padded_head  # noqa: F401  (re-exported by ekd.eval)

log = logging.getLogger(__name__)


class EvalBatch(Protocol):
    """What ``evaluate`` reads from a batch (``ekd.data.collate.Batch`` has these fields)."""

    input_ids: Tensor  # (B, T)
    labels: Tensor  # (B, T), already shifted, −100 = ignored
    attention_mask: Tensor  # (B, T)

    def to(self, device: Any) -> EvalBatch: ...


def _final_hidden(model: nn.Module, batch: EvalBatch) -> Tensor:
    """(B, T, D) final hidden states (post final norm) of the model body."""
    out = body_outputs(model, batch, use_cache=False)
    return out.last_hidden_state


@contextlib.contextmanager
def _eval_mode(*models: nn.Module | None) -> Iterator[None]:
    """Put models in eval mode, restoring each one's previous mode afterwards (evaluation during training)."""
    present = [m for m in models if m is not None]
    was_training = [m.training for m in present]
    try:
        for m in present:
            m.eval()
        yield
    finally:
        for m, mode in zip(present, was_training):
            m.train(mode)


def evaluate(
    student: nn.Module,
    batches: Iterable[EvalBatch],
    teacher: nn.Module | None = None,
    *,
    vocab_size: int,
    ece_bins: int = 15,
    entropy_buckets: int = 4,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
    chunk_rows: int = 1024,
    progress: bool = False,
    rank: int = 0,
    world_size: int = 1,
    block_sums: dict[str, list[float]] | None = None,
) -> tuple[dict[str, float], list[tuple[float, float, int, float, float]]]:
    """Streaming evaluation of ``student`` (and KL/agreement to ``teacher``) over valid tokens.

    Args:
        student: Hugging Face causal LM, already on ``device``.
        batches: batches with ``input_ids`` (B, T), shifted ``labels`` (B, T) (−100 ignored),
            ``attention_mask`` (B, T) and ``.to(device)``.
        teacher: optional Hugging Face causal LM sharing the tokenizer, already on ``device``.
        vocab_size: V, the tokenizer length; heads with more (padded) rows are sliced to V, and the student's
            rows beyond V give ``padded_mass`` / ``ppl_full_head`` (``ekd.eval.metrics``).
        ece_bins: equal-width ECE bins (lo, hi].
        entropy_buckets: equal-width buckets of normalized teacher entropy H/log V (0 = off).
        device: where batches are moved.
        autocast_dtype: e.g. ``torch.bfloat16`` to run the forward passes under autocast; metrics stay fp32.
        chunk_rows: valid rows per head application.
        progress: show a progress bar.
        rank, world_size: under ``torch.distributed`` with ``world_size`` > 1, this process evaluates the
            batches i ≡ rank (mod world_size) and the sums are all-reduced over the default group: every
            rank returns the metrics of all batches (a collective: all ranks call it).
        block_sums: a dict this fills with the per-block sums (:meth:`StreamingMetrics.block_sums`): block i is
            row i of the batches in order, counted over every rank's batches (all-reduced like the metrics).

    Returns:
        (metrics, reliability bins): see ``StreamingMetrics.compute`` and ``StreamingMetrics.reliability``.
    """
    device = torch.device(device)
    metrics = StreamingMetrics(
        vocab_size, ece_bins=ece_bins, entropy_buckets=entropy_buckets, chunk_rows=chunk_rows
    )
    s_head = output_head(student, vocab_size)  # applies the model's logit transform (scale, soft-cap)
    s_padded = padded_head(student, vocab_size)  # rows ≥ V of a padded head (None: none), for padded_mass
    t_head = output_head(teacher, vocab_size) if teacher is not None else None
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    blocks = 0  # rows of the batches so far, every rank's: the index of the next batch's first block

    def share() -> Iterator[tuple[int, EvalBatch]]:  # this rank's batches i ≡ rank (mod world_size), streamed
        nonlocal blocks
        for i, batch in enumerate(batches):
            if i % world_size == rank:
                yield blocks, batch
            blocks += batch.labels.shape[0]

    mine: Iterable[tuple[int, EvalBatch]] = share()
    if progress:
        from tqdm.auto import tqdm

        total = len(range(rank, len(batches), world_size)) if hasattr(batches, "__len__") else None
        mine = tqdm(mine, total=total, desc="eval", unit="batch", leave=False)
    s_buffer, t_buffer = RowBuffer(), RowBuffer()  # every chunk's (m, V) logits, reused
    with _eval_mode(student, teacher), torch.no_grad(), autocast:
        for first, batch in mine:
            batch = batch.to(device)
            valid = batch.labels != IGNORE_INDEX  # (B, T)
            labels = batch.labels[valid]  # (M,)
            if labels.numel() == 0:
                continue
            boundary = getattr(batch, "boundary", None)
            boundary = boundary[valid] if boundary is not None else None  # (M,) end-of-document targets
            rows = first + torch.arange(valid.shape[0], device=device)  # (B,) global block index of each row
            block = rows[:, None].expand_as(valid)[valid]  # (M,) the block of each target
            s_hidden = _final_hidden(student, batch)[valid]  # (M, Ds) at valid rows
            t_hidden = _final_hidden(teacher, batch)[valid] if teacher is not None else None  # (M, Dt)
            for start in range(0, labels.shape[0], chunk_rows):
                end = start + chunk_rows
                s_logits = s_head(s_hidden[start:end], s_buffer)  # (m, V)
                t_logits = t_head(t_hidden[start:end], t_buffer) if t_hidden is not None else None  # (m, V)
                # (m,) over the R−V padded rows
                padded = s_padded(s_hidden[start:end]).logsumexp(dim=-1) if s_padded is not None else None
                metrics.update(
                    s_logits,
                    labels[start:end],
                    t_logits,
                    None if boundary is None else boundary[start:end],
                    padded,
                    block[start:end],
                )
    if world_size > 1:
        metrics.all_reduce(device, blocks)
    if block_sums is not None:
        block_sums.update(metrics.block_sums(blocks))
    result = metrics.compute()
    log.debug("eval: %d tokens, loss %.4f", int(result["tokens"]), result["loss"])
    return result, metrics.reliability()


def evaluate_sets(
    student: nn.Module,
    sets: dict[str, Callable[[], Iterable[EvalBatch]] | Iterable[EvalBatch]],
    teacher: nn.Module | None = None,
    *,
    plots_dir: str | Path | None = None,
    **kwargs: Any,
) -> dict[str, dict[str, float]]:
    """``evaluate`` on each named eval set (in-distribution and shifted sets are kept apart, METHODS §9).

    Args:
        student: Hugging Face causal LM.
        sets: set name → a zero-argument factory returning fresh batches (or an iterable, used once).
        teacher: optional teacher model.
        plots_dir: when given, a reliability diagram per set is written to ``plots_dir/reliability_<set>.png``.
        **kwargs: keyword arguments of ``evaluate`` (``vocab_size`` is required).

    Returns:
        set name → metrics dict.
    """
    results: dict[str, dict[str, float]] = {}
    for name, source in sets.items():
        batches = source() if callable(source) else source
        metrics, bins = evaluate(student, batches, teacher, **kwargs)
        results[name] = metrics
        log.info(
            "eval/%s: loss %.4f  ppl %.3f  acc %.4f  ece %.2f%%",
            name,
            metrics["loss"],
            metrics["ppl"],
            metrics["acc"],
            metrics["ece"],
        )
        if plots_dir is not None:
            from ekd.eval.report import plot_reliability

            safe = re.sub(r"[^\w.-]", "_", name)
            plot_reliability(bins, Path(plots_dir) / f"reliability_{safe}.png", title=name)
    return results
