"""The exported student is the model ekd scored: its dtype and its head rows beyond the tokenizer.

At the end of a run, after the final checkpoint (which keeps the fp32 master weights for ``--resume``) and
before the final evaluation, every rank turns its student into the model ``<run>/student`` will hold
(:func:`prepare_shipped`):

- **dtype** (``model.export_dtype``): the shipped weights are rounded in place to the export dtype (the
  student's own by default: a bf16 checkpoint is shipped in bf16, not doubled to fp32). The storage stays
  fp32, so evaluation computes as during training, on exactly the values written
  (:func:`ekd.models.load.save_model_dir` then casts them losslessly).
- **padded head rows**: ekd trains and scores only the first V rows of a head padded past the tokenizer
  (V = tokenizer length; Qwen's 151,936 rows for 151,665 tokens). With ``model.export_head_rows=keep`` the
  rows stay (the architecture's shape; a pre-trained model's rows, trained down in pre-training, are not
  touched) and their ids go into ``generation_config.suppress_tokens``: ``generate`` then samples from
  exactly the distribution ekd scored (masking rows and renormalizing over the other V is that softmax).
  An evaluator that takes the softmax over the whole head still puts some probability on them: the final
  evaluation reports it (``padded_mass``, ``ppl_full_head``; ``ekd.eval.metrics``). With ``trim`` the head
  (and a tied embedding) is cut to V rows, so every evaluator sees the scored model.
- **end of sequence**: a student whose config names another ``eos_token_id`` than the id the run ends
  documents with gets that id first in its config and generation config when it is loaded, its own kept after
  it (:func:`end_documents_with`), so the export stops generating where it was trained to end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch
from torch import nn

from ekd.errors import ModelError
from ekd.models.load import DTYPES, declared_dtype, dtype_name, is_preset

log = logging.getLogger(__name__)


def export_dtype(name: str, student: str, revision: str = "", trust_remote_code: bool = False) -> torch.dtype:
    """The dtype ``model.export_dtype=name`` ships ``student`` (the ``model.student`` spec) in.

    'auto': the dtype the student's config.json declares (a pre-trained model's, the base model's for LoRA),
    float32 for a preset (random init, trained in fp32) or a config that declares none.
    """
    if name != "auto":
        return DTYPES[name]
    if is_preset(student):
        return torch.float32
    return declared_dtype(student, revision, trust_remote_code, "student") or torch.float32


def head_rows(model: nn.Module) -> int:
    """Rows of the model's output head (its ``vocab_size``; more than the tokenizer's V when padded)."""
    return int(model.get_output_embeddings().weight.shape[0])


def _local(t: torch.Tensor) -> torch.Tensor:
    """A sharded parameter's (DTensor's) local shard, else the tensor itself: rounding is elementwise."""
    return t.to_local() if hasattr(t, "to_local") else t


@torch.no_grad()
def overflowing(tensors: Iterable[torch.Tensor], dtype: torch.dtype) -> float:
    """The largest |w| among the finite values that ``dtype`` cannot hold (beyond float16's ±65504); 0.0 when
    every value fits."""
    worst = 0.0
    for t in map(_local, tensors):
        if t.is_floating_point() and t.dtype != dtype and t.numel():
            lost = torch.isfinite(t) & ~torch.isfinite(t.to(dtype))
            if bool(lost.any()):
                worst = max(worst, float(t[lost].abs().max()))
    return worst


@torch.no_grad()
def round_in_place(tensors: Iterable[torch.Tensor], dtype: torch.dtype) -> None:
    """Round every floating tensor to the nearest ``dtype`` value, keeping its own dtype and storage (a tied
    tensor listed twice is rounded once more, which changes nothing: rounding is idempotent)."""
    for t in map(_local, tensors):
        if t.is_floating_point() and t.dtype != dtype:
            t.copy_(t.to(dtype))


def suppress_padded_rows(model: nn.Module, vocab_size: int) -> list[int]:
    """Add the head's rows ≥ ``vocab_size`` to ``model.generation_config.suppress_tokens`` (kept with any
    ids already there); returns the padded ids (empty for a head of V rows)."""
    padded = list(range(vocab_size, head_rows(model)))
    config = getattr(model, "generation_config", None)
    if padded and config is not None:
        config.suppress_tokens = sorted(set(config.suppress_tokens or []) | set(padded))
    return padded


def trim_head(model: nn.Module, vocab_size: int) -> None:
    """Cut the output head (and the input embedding, tied or not) to its first ``vocab_size`` rows, in place:
    ``config.vocab_size`` becomes V; the kept rows are bit-identical."""
    model.resize_token_embeddings(vocab_size)


def prepare_shipped(
    model: nn.Module,
    vocab_size: int,
    dtype: torch.dtype,
    head: str = "keep",
    shipped: Iterable[torch.Tensor] | None = None,
    global_max: Callable[[float], float] = float,
) -> dict:
    """Make ``model`` (in place, on every rank) the model that is exported; returns what changed.

    Args:
        model: the student after its last optimizer step and final checkpoint (LoRA: merged, for a merged export).
        vocab_size: V, the tokenizer length ekd scored over.
        dtype: the export dtype (:func:`export_dtype`).
        head: ``model.export_head_rows``: 'keep' (padded ids suppressed in generation) or 'trim'.
        shipped: the tensors written (a LoRA adapter export: its trained tensors); None = the whole model.
        global_max: the maximum of a float over ranks (under torchrun every rank must refuse alike).

    Returns:
        ``{"padded": [ids suppressed], "trimmed": rows cut, "head_rows": rows of the shipped head}``.

    Raises:
        ModelError: a trained weight does not fit ``dtype`` (float16's ±65504), before any weight is rounded.
    """
    rows, trimmed, padded = head_rows(model), 0, []
    if shipped is None and rows > vocab_size:
        if head == "trim":
            trim_head(model, vocab_size)
            trimmed = rows - vocab_size
        else:
            padded = suppress_padded_rows(model, vocab_size)
    # what save_pretrained writes: parameters and persistent buffers (not RoPE's recomputed inv_freq)
    tensors = list(shipped if shipped is not None else model.state_dict(keep_vars=True).values())
    worst = global_max(overflowing(tensors, dtype))
    if worst:
        raise ModelError(
            f"model.export_dtype={str(dtype).removeprefix('torch.')}: trained weights exceed its range (largest "
            f"|w| {worst:.4g}); the fp32 checkpoint is kept: finish with the same command, --resume and "
            "model.export_dtype=bfloat16 (or float32)"
        )
    round_in_place(tensors, dtype)
    return {"padded": padded, "trimmed": trimmed, "head_rows": head_rows(model)}


def _end_ids(model: nn.Module) -> tuple[list, list[int]]:
    """``model``'s config and generation config (those it has), and the end-of-sequence ids they name, in order,
    each once."""
    configs = [c for c in (getattr(model, "config", None), getattr(model, "generation_config", None)) if c]
    own: list[int] = []
    for config in configs:
        value = getattr(config, "eos_token_id", None)
        for i in [value] if isinstance(value, int) else list(value or []):
            if int(i) not in own:
                own.append(int(i))
    return configs, own


def end_documents_with(model: nn.Module, eos_id: int | None) -> list[int]:
    """Make ``eos_id``, the id the run ends every document with (``data.separator``), the first end-of-sequence
    id of ``model``'s config and generation config, its own ids kept after it; returns the ids written, or []
    when ``eos_id`` is already one of them (or None: ``data.separator=none``).

    A pre-trained student whose ``eos_token_id`` is another id (its family's ``<|endoftext|>``, not the
    teacher's ``</s>``) is taught under ``data.separator=eos``/``bos_eos`` to end documents with the tokenizer's
    EOS; the export then stops ``generate`` at that id, and still at its own, which its pre-training taught
    (try-out 44, F7: the export kept the old id alone, so ``generate`` ran past the end the run trained).
    """
    if eos_id is None:
        return []
    configs, own = _end_ids(model)
    if int(eos_id) in own:
        return []
    ids = [int(eos_id), *own]
    for config in configs:
        config.eos_token_id = ids if len(ids) > 1 else ids[0]
    return ids


def also_stop_at(model: nn.Module, ids: list[int]) -> list[int]:
    """Add ``ids`` (a chat template's end-of-turn tokens) after the end-of-sequence ids of ``model``'s config and
    generation config; returns the ids written, or [] when every one is there already.

    A student distilled on chat data learns to end each assistant turn with the template's end-of-turn token; a
    base student's config names only its EOS, so ``generate`` on a chat prompt ran past the end of the turn it was
    taught (try-out 135, F3). Its own ids stay first.
    """
    configs, own = _end_ids(model)
    added = [int(i) for i in ids if int(i) not in own]
    if not added:
        return []
    for config in configs:
        config.eos_token_id = [*own, *added]
    return [*own, *added]


def export_line(
    where: str, dtype: torch.dtype, vocab_size: int, rows: int, changes: dict, adapter: bool
) -> str:
    """The log line that says what ``where`` holds: dtype, rounding, and what became of padded head rows."""
    name = dtype_name(dtype)
    parts = [f"{where}: {'adapter' if adapter else 'weights'} in {name}"]
    if dtype != torch.float32:
        parts.append("rounded from the fp32 master weights (the checkpoint keeps them) and evaluated so")
    if changes["trimmed"]:
        parts.append(f"head trimmed from {rows} to the tokenizer's {vocab_size} rows")
    elif rows > vocab_size:
        ids = f"ids {vocab_size}–{rows - 1}"
        where_rows = (
            "suppressed in generation_config (generate never emits them)"
            if changes["padded"]
            else "left as the base model has them (an adapter does not change generation_config)"
        )
        trim = "" if adapter else "; model.export_head_rows=trim ships the scored model exactly"
        parts.append(
            f"head keeps {rows} rows for {vocab_size} tokens: {ids} were not trained by ekd, {where_rows}; "
            f"a full-head softmax gives them eval/<set>/padded_mass (ppl_full_head){trim}"
        )
    return "; ".join(parts)
