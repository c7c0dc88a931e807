"""Run a model body on a batch with the batch's document attention (every forward of the project uses this).

Isolated documents reach transformers as position ids that restart per document with no 2-D mask
(:func:`ekd.data.collate.model_inputs`). sdpa, eager and flex attention turn them into a block-diagonal causal
mask for any batch size. flash-attention-2/3 runs packed sequences (varlen, ``cu_seqlens`` from the position
ids) only for a batch of one flattened row, so for those the (B, T) batch is run as one (1, B·T) row —
every row starts at position 0, so rows stay apart too — and the outputs are reshaped back to (B, T, D).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ekd.data.collate import model_inputs
from ekd.models.load import model_body


def needs_flat_batch(model: nn.Module) -> bool:
    """Whether the model's attention runs packed sequences only as one flattened row (flash attention)."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", "") or ""
    return "flash" in impl


def body_outputs(model: nn.Module, batch, flatten: bool | None = None, **kwargs: Any):
    """The body's output (``last_hidden_state`` (B, T, D), ``hidden_states`` if asked) for ``batch``.

    Args:
        model: A Hugging Face causal LM (its body is run, not its head).
        batch: Has ``input_ids`` (B, T), ``attention_mask``, and ``position_ids`` (B, T) or None.
        flatten: Run isolated documents as one (1, B·T) row; default: when the attention is flash attention.
        **kwargs: Further body arguments (``output_hidden_states``, ``use_cache``).
    """
    inputs = {**kwargs, **model_inputs(batch)}
    body = model_body(model)
    position_ids = inputs.get("position_ids")
    if flatten is None:
        flatten = needs_flat_batch(model)
    if position_ids is None or not flatten or batch.input_ids.shape[0] == 1:
        return body(**inputs)
    B, T = batch.input_ids.shape
    inputs["input_ids"] = batch.input_ids.reshape(1, B * T)  # (1, B·T)
    inputs["position_ids"] = position_ids.reshape(1, B * T)  # (1, B·T), 0 at every row start
    out = body(**inputs)
    out["last_hidden_state"] = out.last_hidden_state.reshape(B, T, -1)  # (B, T, D)
    if getattr(out, "hidden_states", None) is not None:
        out["hidden_states"] = tuple(h.reshape(B, T, -1) for h in out.hidden_states)  # each (B, T, D)
    return out
