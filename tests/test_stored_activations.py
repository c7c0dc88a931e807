"""``ekd.models.stored_activations`` (try-out 24, finding 5): the values autograd keeps per token of a decoder
layer, as ``ekd plan`` derives them from the module tree, against what autograd saves when a real layer runs
forward on CPU (SDPA, causal, no mask: the CPU flash kernel, no s² scores)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from ekd.plan import model_shape, shape_of

TINY = dict(vocab_size=128, hidden_size=64, num_attention_heads=4, num_hidden_layers=2)
CONFIGS = {
    # GQA (2 of 4 heads keep k/v), gated SiLU MLP with f = 3h
    "llama": dict(model_type="llama", num_key_value_heads=2, intermediate_size=192, **TINY),
    # Qwen2.5-0.5B's ratios: 7 query heads per k/v head, f = 5.43h (h=896, 14 heads, 2 k/v heads, f=4864)
    "qwen2": dict(
        model_type="qwen2",
        vocab_size=128,
        hidden_size=112,
        num_attention_heads=14,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=608,
        num_hidden_layers=2,
    ),  # fmt: skip
    # fused c_attn, LayerNorm, gelu_new written in Python (4 saved values per input), f = 4h; dropout off
    "gpt2": dict(
        model_type="gpt2",
        vocab_size=128,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=256,
        attn_pdrop=0.0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    ),  # fmt: skip
}


def _config(name: str, layers: int | None = None):
    values = dict(CONFIGS[name])
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    if layers is not None:
        setattr(config, "n_layer" if name == "gpt2" else "num_hidden_layers", layers)
    return config


def _saved_bytes(config, tokens: int, autocast: bool) -> tuple[int, set[str]]:
    """Bytes of the distinct storages autograd saves in a forward of the body (parameters excluded), and the
    names of the autograd nodes that saved them."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}
    nodes: set[str] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
            nodes.add(type(t.grad_fn).__name__)
        return t

    embeds = torch.randn(1, tokens, config.hidden_size, requires_grad=True)  # (1, T, h)
    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), hooks:
        model.base_model(inputs_embeds=embeds, use_cache=False)  # as ekd runs the body: no KV cache
    return sum(seen.values()), nodes


def measured_bytes_per_token(name: str, autocast: bool = False) -> float:
    """Bytes autograd saves per token for one decoder layer: a 2-layer body minus a 1-layer body (the
    embeddings, final norm and RoPE tables cancel), as the slope over 32 and 128 tokens (per-layer constants —
    autocast's bf16 copies of the weights — cancel). The per-token bytes at 32 and 128 tokens are checked
    equal in fp32: no (T, T) score matrix is stored."""
    per_token = {}
    for tokens in (32, 128):
        two, nodes = _saved_bytes(_config(name, 2), tokens, autocast)
        one, _ = _saved_bytes(_config(name, 1), tokens, autocast)
        per_token[tokens] = two - one
        assert "ScaledDotProductFlashAttentionForCpuBackward0" in nodes, nodes  # the flash kernel ran
    if not autocast:
        assert per_token[32] / 32 == per_token[128] / 128, per_token  # linear in T: no s² term
    return (per_token[128] - per_token[32]) / 96


def planned(name: str):
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(_config(name))
    return model_shape(model).layer_activations


@pytest.mark.parametrize("name", list(CONFIGS))
def test_planned_values_match_what_autograd_saves(name):
    """fp32: the plan's values per token and layer are within 15% of the bytes saved / 4 (they match to a few
    values: the remainder is RMSNorm's/LayerNorm's per-row statistics)."""
    stored = planned(name)
    measured = measured_bytes_per_token(name) / 4
    assert stored.recognized
    assert abs(stored.values - measured) <= 0.15 * measured, (stored.values, measured)
    assert stored.values / stored.hidden > 17 * 1.15  # the flat 17·h was low for all three


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_planned_bytes_under_autocast_match(name):
    """bf16 autocast with fp32 parameters: norms keep fp32, projections save their own bf16 copies."""
    stored = planned(name)
    measured = measured_bytes_per_token(name, autocast=True)
    assert abs(stored.bytes_per_token(4, 2) - measured) <= 0.15 * measured, (
        stored.bytes_per_token(4, 2),
        measured,
    )


def test_qwen25_05b_shape_and_fallback():
    """Qwen2.5-0.5B (h=896, 14 heads, 2 k/v heads, head_dim 64, f=4864) from its preset, built on meta: its
    gated MLP 5.4h wide keeps about 30 values per (token, hidden unit), not 17. A layer whose attention is
    not recognized falls back to 17·h."""
    shape = shape_of("preset:qwen2.5-0.5b-shape", 1000)
    stored = shape.layer_activations
    assert (
        stored.hidden == 896
        and stored.values == 4 * 896 + 2 + 2 * 896 + (896 + 128 + 128 + 896 + 14) + 4 * 4864
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(_config("llama"))
    layer = copy.deepcopy(model.model.layers[0])
    layer.self_attn = torch.nn.Identity()
    from ekd.models.stored_activations import layer_activations

    odd = layer_activations(model, layer, 64)
    assert not odd.recognized and odd.bytes_per_token(4, 2) == 17 * 64 * 2


def test_a_checkpointed_layer_keeps_its_input_only():
    """Under ``train.activation_checkpointing`` a layer keeps one tensor until backward, its input (h values
    per token: the plan's L·t·h·r term); the rest is recomputed, the count above once more."""
    from ekd.models.layers import checkpoint_decoder_layers

    def per_token(layers: int, tokens: int) -> float:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(_config("llama", layers), attn_implementation="sdpa").train()
        checkpoint_decoder_layers(model)
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            if t.untyped_storage().data_ptr() not in params:
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        embeds = torch.randn(1, tokens, 64, requires_grad=True)  # (1, T, h)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.base_model(inputs_embeds=embeds, use_cache=False)
        return sum(seen.values()) / tokens / 4  # fp32 values per token

    for tokens in (32, 128):
        assert per_token(2, tokens) - per_token(1, tokens) == 64  # one layer more keeps h more, nothing else
