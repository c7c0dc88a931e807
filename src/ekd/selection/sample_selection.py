"""Sample selection before training — SE-KD3X "TopSmp" (Rethinking Selective KD, arXiv 2602.01395).

Before the first step, the frozen initial student scores every training sample; only the top ℓ% are
trained on. The selection is saved with the run (JSON, never pickle) and reused on resume — never re-scored
with a trained student.

    ids, scores = score_samples_by_id(student, batches, "student_entropy", vocab_size, device)
    keep = select_samples(scores, ids, fraction=0.2)
    save_sample_selection(run_dir / "sample_selection.json", keep, {"scorer": "student_entropy", ...})

Sample scores (means over the sample's valid tokens, τ=1): ``student_entropy`` H(q) (the SE-KD3X default),
``forward_kl`` KL(p‖q) and ``ce_ratio`` CE_s/(CE_t + 1e-6) (both need the teacher), ``random`` (U[0,1)
from ``seed``, assigned in ascending sample-id order, so it does not depend on the batch order). Token
statistics are computed by the same chunked code as training (``ekd.train.token_stats``): no (B·T, V) fp32
logits are held. A sample without valid tokens scores −inf (kept last).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ekd.errors import ConfigError
from ekd.io import make_dirs
from ekd.json_record import read_json_record
from ekd.selection.base import COUNT_SLACK
from ekd.selection.scores import CE_RATIO_EPS

SAMPLE_SCORERS = ("student_entropy", "forward_kl", "ce_ratio", "random")
TEACHER_SCORERS = ("forward_kl", "ce_ratio")
"""The sample scorers that need the teacher model."""
FORMAT = "ekd-sample-selection"
VERSION = 1
_STATS = {
    "student_entropy": {"student_entropy"},
    "forward_kl": {"forward_kl"},
    "ce_ratio": {"student_logp_gold", "teacher_logp_gold"},
    "random": set(),
}


def _inputs(batch: Any, device: torch.device | str) -> SimpleNamespace:
    """The forward inputs of ``batch`` (an object or a dict) on ``device``: input_ids, attention_mask,
    position_ids (None = packed attention)."""
    names = ("input_ids", "attention_mask", "position_ids")
    get = batch.get if isinstance(batch, dict) else lambda n: getattr(batch, n, None)
    return SimpleNamespace(**{n: None if get(n) is None else get(n).to(device) for n in names})


def _field(batch: Any, name: str) -> Tensor:
    return batch[name] if isinstance(batch, dict) else getattr(batch, name)


def _token_scores(stats: dict[str, Tensor], scorer: str) -> Tensor:
    if scorer == "student_entropy":
        return stats["student_entropy"]
    if scorer == "forward_kl":
        return stats["forward_kl"]
    return -stats["student_logp_gold"] / (-stats["teacher_logp_gold"] + CE_RATIO_EPS)  # ce_ratio


@torch.no_grad()
def _hidden(model: nn.Module, batch: Any) -> Tensor:
    from ekd.models.body import body_outputs

    return body_outputs(model, batch).last_hidden_state  # (B, T, D)


@torch.no_grad()
def sample_sums(
    model: nn.Module,
    batches: Iterable[Any],
    scorer: str,
    vocab_size: int,
    device: torch.device | str,
    teacher: nn.Module | None = None,
    *,
    chunk_rows: int = 1024,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample sums of the token scores over ``batches``, streamed (one batch on ``device`` at a time).

    The additive part of ``score_samples_by_id``: sums from disjoint shards of the samples (one per rank)
    concatenate into the sums of the whole set, which ``scores_from_sums`` turns into scores.

    Returns:
        (ids, sums, counts): (N,) long sample ids in ascending order, (N,) float64 sums of the per-token
        scores and (N,) float64 counts of valid tokens (0 sums for ``random``).
    """
    from ekd.models.load import output_head
    from ekd.train.token_stats import token_stats

    if scorer not in SAMPLE_SCORERS:
        raise ConfigError(f"method.sample_scorer must be one of {', '.join(SAMPLE_SCORERS)}, got '{scorer}'")
    needs = _STATS[scorer]
    if scorer in TEACHER_SCORERS and teacher is None:
        raise ConfigError(
            f"method.sample_scorer={scorer} needs the teacher model; use student_entropy or random"
        )
    models = [m for m in (model, teacher) if m is not None]
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    ids_parts, sum_parts, count_parts = [], [], []
    device_type = torch.device(device).type
    try:
        for batch in tqdm(batches, desc="scoring samples", disable=not progress):
            labels = _field(batch, "labels").to(device)  # (B, T)
            valid = labels != -100  # (B, T)
            ids_parts.append(_field(batch, "sample_ids").reshape(-1).long().cpu())  # (B,)
            count_parts.append(valid.sum(-1).double().cpu())  # (B,)
            if scorer == "random":
                sum_parts.append(torch.zeros(labels.shape[0], dtype=torch.float64))
                continue
            inputs = _inputs(batch, device)
            student_needs = needs - {"teacher_logp_gold"}
            teacher_needs = needs & {"teacher_logp_gold", "forward_kl"}
            with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                stats = token_stats(
                    needs,
                    labels,
                    student_hidden=_hidden(model, inputs) if student_needs else None,
                    student_head=output_head(model, vocab_size) if student_needs else None,
                    teacher_hidden=_hidden(teacher, inputs) if teacher_needs else None,
                    teacher_head=output_head(teacher, vocab_size) if teacher_needs else None,
                    chunk_rows=chunk_rows,
                )
            per_token = _token_scores(stats, scorer).double().masked_fill(~valid, 0.0)  # (B, T)
            sum_parts.append(per_token.sum(-1).cpu())  # (B,)
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    if not ids_parts:
        empty = torch.zeros(0, dtype=torch.float64)
        return torch.zeros(0, dtype=torch.long), empty, empty
    return pool_by_id(torch.cat(ids_parts), torch.cat(sum_parts), torch.cat(count_parts))


def pool_by_id(row_ids: Tensor, sums: Tensor, counts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Rows sharing a sample id pooled: (R,) ids, sums, counts → (N,) ascending ids and their totals."""
    ids, inverse = torch.unique(row_ids, sorted=True, return_inverse=True)  # (N,), (R,)
    pooled_sums = torch.zeros(ids.numel(), dtype=torch.float64).index_add_(0, inverse, sums.double())
    pooled_counts = torch.zeros(ids.numel(), dtype=torch.float64).index_add_(0, inverse, counts.double())
    return ids, pooled_sums, pooled_counts


def scores_from_sums(sums: Tensor, counts: Tensor, scorer: str, seed: int = 0) -> Tensor:
    """(N,) fp32 sample scores from ``sample_sums`` of the whole set (ids ascending): the mean token score,
    U[0,1) from ``seed`` in id order for ``random``, −inf for a sample without valid tokens."""
    if scorer == "random":
        scores = torch.rand(sums.numel(), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    else:
        scores = sums / counts.clamp(min=1)
    return torch.where(counts > 0, scores, torch.full_like(scores, -math.inf)).float()


def score_samples_by_id(
    model: nn.Module,
    batches: Iterable[Any],
    scorer: str,
    vocab_size: int,
    device: torch.device | str,
    teacher: nn.Module | None = None,
    *,
    seed: int = 0,
    chunk_rows: int = 1024,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """Score every sample seen in ``batches`` with the frozen model(s).

    Args:
        model: the initial student (HF causal LM); put in eval mode for scoring, its mode restored after.
        batches: iterable of batches with ``input_ids, labels`` (already shifted, -100 ignored),
            ``attention_mask`` (B, T) and ``sample_ids`` (B,) — objects or dicts; each is moved to ``device``
            when it is scored. Rows sharing a sample id are pooled (mean over all their valid tokens).
        scorer: one of ``SAMPLE_SCORERS``.
        vocab_size: V shared by the models (heads are sliced to it).
        device: where the models run.
        teacher: the teacher model, required by ``forward_kl`` and ``ce_ratio``.
        seed: seed of the ``random`` scorer.
        chunk_rows: rows per chunk of the token statistics.
        autocast_dtype: the run's autocast dtype (``train.precision``), None for fp32.
        progress: show a progress bar.

    Returns:
        (ids, scores): (N,) long sample ids in ascending order and their (N,) fp32 scores.
    """
    ids, sums, counts = sample_sums(
        model,
        batches,
        scorer,
        vocab_size,
        device,
        teacher,
        chunk_rows=chunk_rows,
        autocast_dtype=autocast_dtype,
        progress=progress,
    )
    return ids, scores_from_sums(sums, counts, scorer, seed)


def score_samples(
    model: nn.Module,
    batches: Iterable[Any],
    scorer: str,
    vocab_size: int,
    device: torch.device | str,
    teacher: nn.Module | None = None,
    **kwargs: Any,
) -> Tensor:
    """(N,) fp32 scores of the samples in ``batches``, in ascending sample-id order (the ids are
    ``torch.unique`` of the batches' ``sample_ids``; ``score_samples_by_id`` returns them too)."""
    return score_samples_by_id(model, batches, scorer, vocab_size, device, teacher, **kwargs)[1]


def select_samples(scores: Tensor, sample_ids: Tensor, fraction: float, scorer: str = "") -> Tensor:
    """The ids of the ⌈ℓ·N⌉ highest-scoring samples (at least 1 when N > 0), ascending.

    Deterministic: ties go to the smaller sample id. scores (N,), sample_ids (N,) → (⌈ℓ·N⌉,) long. ``scorer``
    (``method.sample_scorer``) names the models a NaN score can come from (empty: either).

    Raises:
        ConfigError: ``fraction`` outside (0, 1], or a NaN score (a descending sort would keep it first).
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"method.sample_fraction must be in (0, 1], got {fraction}")
    scores, sample_ids = scores.reshape(-1), sample_ids.reshape(-1).long()
    if scores.numel() != sample_ids.numel():
        raise ValueError(f"{scores.numel()} scores for {sample_ids.numel()} sample ids")
    n = sample_ids.numel()
    if n == 0:
        return sample_ids.clone()
    # a descending sort puts NaN first: it would be kept (review, session 32)
    if bad := int(scores.isnan().sum()):
        # try-out 116, F8: 'a model's logits' said nothing of which, and a student scorer reads no teacher
        which = (
            "the student's logits are not finite: check its weights"
            if scorer and scorer not in TEACHER_SCORERS
            else "the student's or the teacher's logits are not finite: check their weights, and a 16-bit "
            "model.teacher_dtype or train.precision overflowing"
        )
        raise ConfigError(
            f"sample selection: {bad} of {n} sample scores are NaN ({which}); nothing is selected"
        )
    keep = min(n, max(1, math.ceil(fraction * n - COUNT_SLACK)))
    by_id = torch.argsort(sample_ids, stable=True)  # (N,) ascending ids
    order = torch.argsort(scores[by_id].double(), descending=True, stable=True)  # (N,) ties → smaller id
    return torch.sort(sample_ids[by_id][order[:keep]]).values


def save_sample_selection(path: str | Path, ids: Tensor | list[int], meta: dict[str, Any]) -> Path:
    """Write the kept sample ids and ``meta`` (scorer, fraction, counts, ...) as JSON, atomically."""
    path = Path(path)
    ids_list = [int(i) for i in (ids.tolist() if isinstance(ids, Tensor) else ids)]
    payload = {"format": FORMAT, "version": VERSION, "sample_ids": ids_list, "meta": meta}
    text = json.dumps(payload, indent=1)
    make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


DELETE_FIX = "delete it: --resume takes the kept blocks from the checkpoint (a run not started yet scores the samples again)"


def load_sample_selection(path: str | Path) -> tuple[Tensor, dict[str, Any]]:
    """(ids (N,) long, meta) from a file written by ``save_sample_selection``."""
    path = Path(path)
    # a directory in its way, bytes that are no UTF-8 or no JSON (try-out 42): one line
    payload = read_json_record(path, DELETE_FIX, ConfigError)
    if payload is None:
        raise ConfigError(f"the sample selection {path} is gone; {DELETE_FIX}")
    ids = payload.get("sample_ids") if isinstance(payload, dict) else None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or not isinstance(ids, list):
        raise ConfigError(f"{path} is not an ekd sample selection file; {DELETE_FIX}")
    if payload.get("version") != VERSION:
        raise ConfigError(
            f"{path}: sample selection version {payload.get('version')} is not supported (expected {VERSION})"
        )
    try:
        kept = torch.tensor(ids, dtype=torch.long)  # (k,)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"{path}: its sample_ids are not block indices; {DELETE_FIX}") from None
    return kept, dict(payload.get("meta") or {})
