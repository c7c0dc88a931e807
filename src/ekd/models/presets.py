"""Small Llama-style architecture presets, for tests, the demo and benchmarks (random init, no download).

``model.student: preset:llama-tiny`` builds a ``transformers.LlamaForCausalLM`` from the preset with the
vocabulary size of the run's tokenizer. The ``qwen2.5-*-shape`` presets reproduce the real models' shapes
(random weights) for performance work. ``llama-micro-tied`` and ``granite-*`` put tied heads and
scaled logits (Granite's ``logits_scaling``) into the test matrix.
"""

from __future__ import annotations

from typing import Any

from ekd.errors import ModelError
from ekd.registry import Registry

architectures: Registry[dict[str, Any]] = Registry("architecture preset")


def _llama(layers: int, hidden: int, heads: int, kv_heads: int, ffn: int, **extra: Any) -> dict[str, Any]:
    return dict(
        model_type="llama",
        num_hidden_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=ffn,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        **extra,
    )


architectures.add("llama-micro", _llama(1, 32, 4, 2, 64), "1 layer, d=32: unit tests")
architectures.add("llama-tiny", _llama(2, 64, 4, 2, 192), "2 layers, d=64: demo student, tests")
architectures.add("llama-small", _llama(4, 128, 4, 2, 384), "4 layers, d=128: demo teacher")
architectures.add("llama-base", _llama(6, 256, 8, 4, 768), "6 layers, d=256: larger CPU experiments")
architectures.add(
    "llama-micro-tied",
    dict(_llama(1, 32, 4, 2, 64), tie_word_embeddings=True),
    "llama-micro with the head tied to the input embedding (Qwen2.5 ≤ 3B, Llama-3.2): tests",
)
architectures.add(
    "granite-micro",
    dict(_llama(1, 32, 4, 2, 64), model_type="granite", logits_scaling=4.0, tie_word_embeddings=True),
    "1 layer, d=32, tied head, logits divided by logits_scaling=4 (Granite): tests",
)
architectures.add(
    "granite-tiny",
    dict(_llama(2, 64, 4, 2, 192), model_type="granite", logits_scaling=4.0),
    "2 layers, d=64, logits divided by logits_scaling=4 (Granite): tests",
)
architectures.add(
    "qwen2.5-0.5b-shape",
    dict(_llama(24, 896, 14, 2, 4864), model_type="qwen2", tie_word_embeddings=True),
    "Qwen2.5-0.5B shapes, random weights (benchmarks)",
)
architectures.add(
    "qwen2.5-1.5b-shape",
    dict(_llama(28, 1536, 12, 2, 8960), model_type="qwen2", tie_word_embeddings=True),
    "Qwen2.5-1.5B shapes, random weights (benchmarks)",
)


def require_preset(name: str, key: str = "model") -> None:
    """Raise ModelError (one line: ``key``, the name, the close matches) unless ``name`` is an architecture preset."""
    if name not in architectures:
        message = architectures.unknown_message(name).replace("unknown architecture preset", "unknown preset")
        raise ModelError(f"{key}: {message}")
