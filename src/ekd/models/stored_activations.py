"""What autograd keeps for backward per token of one decoder layer, read off the layer's module tree.

``ekd plan`` multiplies this by the tokens and layers of a micro-batch. Counted as SDPA/flash attention runs a
causal batch without a mask, with dropout off and without a KV cache (as ekd trains): no s² attention scores.
Per token, in values (``h`` hidden size, ``q``/``k``/``v`` the attention's projection widths = heads ×
head_dim, ``f`` the MLP's intermediate size):

- each norm of the layer: what it saves itself (probed: RMSNorm written in Python keeps its input and the
  normalized values, 2·h; ``nn.LayerNorm`` its input, h) — kept in the residual stream's dtype;
- the normalized input of the attention and of the MLP, h each (saved by the projections reading it; under
  autocast each projection saves its own cast copy: 3 for separate q/k/v, 2 for separate gate/up);
- attention: q and k after RoPE, v and the attention output (``q + k + v + q``), plus the log-sum-exp (one per
  head); a fused projection (GPT-2's ``c_attn``, NeoX's ``query_key_value``, Phi-3's ``qkv_proj``) keeps its
  whole output alive through the views of it, plus q and k again when rotated;
- MLP: gated (``gate_proj``/``up_proj``, Phi-3's ``gate_up_proj``): gate, up, act(gate) and the product, 4·f
  with SiLU; plain 2-matrix (``c_fc``/``c_proj``, ``fc1``/``fc2``, ``dense_h_to_4h``): the activation's
  input and output, 2·f with a fused GeLU. An activation written in Python keeps more: its count is probed
  (GPT-2's ``gelu_new`` keeps 4·f for 1·f of input, so its MLP keeps 5·f = 20·h).

Measured against the tensors autograd saves (``tests/test_stored_activations.py``: Llama with GQA, a Qwen2
scaled down from Qwen2.5-0.5B's ratios, GPT-2, within 15%). A layer whose attention or MLP is not recognized
falls back to :data:`FALLBACK_VALUES` ·h (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
Transformer Models", eq. 1: 34·s·b·h bytes at 16 bit for a GPT block with a 4h GeLU MLP, without the s² score
term), all in the compute dtype.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

FALLBACK_VALUES = 17
"""Stored values per (token, hidden unit) of a layer whose structure is not recognized (Korthikanti et al.)."""

ATTENTIONS = ("self_attn", "attn", "attention", "self_attention")
MLPS = ("mlp", "feed_forward", "ffn")
SEPARATE_QKV = ("q_proj", "k_proj", "v_proj")
FUSED_QKV = ("qkv_proj", "c_attn", "query_key_value", "Wqkv")
OUTPUT_PROJ = ("o_proj", "c_proj", "dense", "out_proj")
PLAIN_MLP = (("c_fc", "c_proj"), ("fc1", "fc2"), ("dense_h_to_4h", "dense_4h_to_h"), ("fc_in", "fc_out"))
ACTIVATIONS = ("act_fn", "act", "activation_fn", "activation")


@dataclass(frozen=True)
class LayerActivations:
    """Values autograd keeps per token of one decoder layer for its backward.

    ``residual`` + ``inputs`` + ``compute`` values without autocast (all in one dtype); under autocast with
    fp32 parameters, ``residual`` stays fp32 and each of the ``readers`` projections reading a normalized
    input saves its own copy in the autocast dtype.
    """

    residual: int  # kept by the norms themselves (their inputs, normalized values), residual-stream dtype
    inputs: int  # the normalized inputs of the attention and of the MLP (h each), saved once without autocast
    readers: int  # projections reading those inputs (5 for Llama: q, k, v, gate, up; 2 for GPT-2)
    hidden: int
    compute: int  # attention (q, k, v, output, log-sum-exp) and MLP tensors, in the compute dtype
    backward: int  # gradients alive at once during the layer's backward (its MLP's), compute dtype
    recognized: bool = True

    @property
    def values(self) -> int:
        """Stored values per token without autocast."""
        return self.residual + self.inputs + self.compute

    def bytes_per_token(self, residual_bytes: int, compute_bytes: int) -> int:
        """Bytes per token of the stored values: ``residual_bytes`` for the residual stream's dtype (the
        parameters', or FSDP2's compute dtype), ``compute_bytes`` for the autocast dtype; when they differ the
        projections' inputs are cast copies, one per projection."""
        copies = self.readers * self.hidden if compute_bytes != residual_bytes else self.inputs
        return self.residual * residual_bytes + (copies + self.compute) * compute_bytes


def fallback(hidden: int) -> LayerActivations:
    """Korthikanti et al.'s 17·h values, all in the compute dtype (a layer this module does not recognize)."""
    return LayerActivations(0, 0, 0, hidden, FALLBACK_VALUES * hidden, 0, recognized=False)


def _child(module: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    return next((getattr(module, n) for n in names if isinstance(getattr(module, n, None), nn.Module)), None)


def _out_features(m: nn.Module) -> int:
    """Output width of a linear map: ``nn.Linear`` weights are (out, in); transformers' ``Conv1D`` (in, out)."""
    w = m.weight
    return int(w.shape[-1] if type(m).__name__ == "Conv1D" else w.shape[0])


def _in_features(m: nn.Module) -> int:
    w = m.weight
    return int(w.shape[0] if type(m).__name__ == "Conv1D" else w.shape[-1])


def _saved_per_element(module: nn.Module, width: int) -> float:
    """Values ``module`` saves for backward per element of its input (a (rows, width) CPU input, the slope over
    2 and 4 rows so that per-call constants drop out); its parameters are not counted."""
    probe = copy.deepcopy(module).to_empty(device="cpu")
    with torch.no_grad():
        for p in probe.parameters():
            p.fill_(1.0)
    params = {p.untyped_storage().data_ptr() for p in probe.parameters()}
    counts = [_saved_values(probe, torch.randn(rows, width, requires_grad=True), params) for rows in (2, 4)]
    return (counts[1] - counts[0]) / (2 * width)


def _saved_values(module: nn.Module, x: torch.Tensor, params: set[int]) -> int:
    """Elements of the distinct storages autograd saves in ``module(x)``, those in ``params`` excluded."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes() // t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return sum(seen.values())


def layer_activations(model: nn.Module, layer: nn.Module, hidden: int) -> LayerActivations:
    """The stored values per token of ``layer`` (built on any device, the meta device included), or
    :func:`fallback` when its attention, MLP or norms are not recognized (module docstring)."""
    attn, mlp = _child(layer, ATTENTIONS), _child(layer, MLPS)
    norms = [m for m in layer.children() if "norm" in type(m).__name__.lower()]
    out = _child(attn, OUTPUT_PROJ) if attn is not None else None
    if attn is None or mlp is None or out is None or not norms:
        return fallback(hidden)
    o = _in_features(out)  # attention output width, heads × head_dim
    rotary = any("rotary" in name for name, _ in model.named_modules())
    if all(isinstance(getattr(attn, n, None), nn.Module) for n in SEPARATE_QKV):
        q, k, v = (_out_features(getattr(attn, n)) for n in SEPARATE_QKV)
        attention, attention_readers = q + k + v + o, 3
    elif (fused := _child(attn, FUSED_QKV)) is not None:
        width = _out_features(fused)  # q + k + v, one storage
        rotated = (o + (width - o) // 2) if rotary else 0  # q and k again, rotated copies
        attention, attention_readers = width + rotated + o, 1
    else:
        return fallback(hidden)
    heads = int(getattr(model.config, "num_attention_heads", 0) or getattr(model.config, "n_head", 0) or 0)
    attention += heads  # log-sum-exp, one per head (fp32, counted with the rest)
    act = _child(mlp, ACTIVATIONS)
    if act is None:
        return fallback(hidden)
    if isinstance(getattr(mlp, "gate_proj", None), nn.Module) and isinstance(
        getattr(mlp, "up_proj", None), nn.Module
    ):
        f, mlp_readers, gated = _out_features(mlp.up_proj), 2, True
    elif isinstance(getattr(mlp, "gate_up_proj", None), nn.Module):
        f, mlp_readers, gated = _out_features(mlp.gate_up_proj) // 2, 1, True
    elif (pair := next((p for p in PLAIN_MLP if all(_child(mlp, (n,)) for n in p)), None)) is not None:
        f, mlp_readers, gated = _out_features(getattr(mlp, pair[0])), 1, False
    else:
        return fallback(hidden)
    try:  # a module that cannot run on a small CPU input is a structure not recognized
        # values the activation keeps per input value (1 for SiLU, GeLU)
        act_saved = _saved_per_element(act, 8)
        norm_saved = sum(_saved_per_element(norm, hidden) for norm in norms)  # per hidden unit, all norms
    except (RuntimeError, TypeError, ValueError):
        return fallback(hidden)
    # gated: gate and up (2f, separate or one fused storage), act's own beyond its input, act(gate), the product
    # plain: act's input and its own, act's output (saved by the down projection)
    feed_forward = round((act_saved + 3) * f) if gated else round((act_saved + 1) * f)
    residual = round(norm_saved * hidden)
    return LayerActivations(
        residual=residual,
        inputs=2 * hidden,
        readers=attention_readers + mlp_readers,
        hidden=hidden,
        compute=attention + feed_forward,
        backward=(3 if gated else 2) * f,
    )
