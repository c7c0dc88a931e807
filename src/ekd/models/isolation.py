"""Check that a model keeps packed documents apart (``data.document_attention=isolated``).

ekd isolates packed documents by passing position ids that restart at every document and no 2-D attention
mask (:func:`ekd.data.collate.model_inputs`, :mod:`ekd.models.body`); transformers turns that into a
block-diagonal causal mask. A model whose forward does not — OPT takes its positions from the attention mask,
BLOOM and MPT add ALiBi biases over the whole row — silently lets every document see the ones before it in its
block and shifts its positions. :func:`check_document_isolation` runs the model once on two rows holding the same
document after different neighbours and refuses it when that document's hidden states differ.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from ekd.data.collate import document_positions
from ekd.errors import ModelError
from ekd.models.body import body_outputs
from ekd.models.exact import ieee_fp32
from ekd.models.load import model_type
from ekd.models.positions import position_limit

PROBE_LENGTH = 16  # tokens of the probed document
SHIFT = 32  # its offset in the second row: a multiple of 32, so kernels reduce it in the same lanes


def check_document_isolation(model: nn.Module, vocab_size: int, role: str = "model") -> None:
    """Refuse a model for which ekd's isolated inputs do not isolate documents.

    Probe: one batch of two rows of ``SHIFT + 2·PROBE_LENGTH`` token ids, the same document D (``PROBE_LENGTH``
    ids) at offset 0 in row 0 and at offset ``SHIFT`` in row 1 after another document, each followed by a filler
    document; positions restart per document. D's last hidden states must agree between the rows within 1e-3
    of their largest magnitude (4 ulps of a 16-bit model dtype), computed in IEEE fp32 without autocast
    (:func:`ekd.models.exact.ieee_fp32`). Measured on CPU: 0 for every isolating family
    in fp32, bf16 and fp16; 0.01–0.4 for the others (tests/test_isolation_check.py).

    Raises:
        ModelError: one line naming the model type and the fix (``data.document_attention=packed``); also when
            the forward raises on these inputs.
    """
    device = next(model.parameters()).device
    positions = (position_limit(model) or ("", SHIFT))[1]
    shift = min(SHIFT, positions)  # no probe document longer than the model's positions
    length = min(PROBE_LENGTH, shift)
    ids = torch.arange(shift + 2 * length, device=device) * 7919 % vocab_size  # (L,) spread ids
    doc = ids[:length]
    # (2, L)
    rows = torch.stack(
        [
            # D, then a filler document (≤ shift + length tokens: two documents)
            torch.cat([doc, ids[length:]]),
            torch.cat([ids.flip(0)[:shift], doc, ids[:length]]),  # a neighbour, D, a filler
        ]
    )
    starts = torch.zeros_like(rows, dtype=torch.bool)
    starts[:, 0] = True
    starts[0, [length, length + shift]] = True
    starts[1, [shift, shift + length]] = True
    batch = SimpleNamespace(
        input_ids=rows, attention_mask=torch.ones_like(rows), position_ids=document_positions(starts)
    )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), ieee_fp32(device.type):  # not TF32: the model's own arithmetic
            hidden = body_outputs(model, batch, use_cache=False).last_hidden_state  # (2, L, D)
    except (RuntimeError, ValueError, TypeError) as e:  # a forward that cannot take packed inputs at all
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(
            f"model.{role}: model type '{model_type(model)}' ({type(model).__name__}) cannot run packed documents "
            f"with position ids ({first}); set data.document_attention=packed"
        ) from None
    finally:
        model.train(was_training)
    alone, after = hidden[0, :length].double(), hidden[1, shift : shift + length].double()
    scale = max(float(alone.abs().max()), 1e-30)
    error = float((after - alone).abs().max()) / scale
    low = hidden.dtype in (torch.bfloat16, torch.float16)
    # fp32: the two rows' kernels may tile and sum in another order
    tolerance = 4 * torch.finfo(hidden.dtype).eps if low else 1e-3
    if not error <= tolerance:
        raise ModelError(
            f"model.{role}: model type '{model_type(model)}' ({type(model).__name__}) does not keep packed documents "
            f"apart: a document's hidden states change by {error:.3g} of their scale with the document before it "
            "(its attention does not follow the restarted position ids: e.g. positions taken from the attention mask, "
            "a mask built without them, or ALiBi over the whole row); "
            "set data.document_attention=packed (documents then attend to the earlier ones in their block)"
        )


__all__ = ["check_document_isolation"]
