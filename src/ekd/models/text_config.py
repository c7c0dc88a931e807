"""The part of a model's config that describes its language model."""

from __future__ import annotations

from typing import Any


def token_ids_or_none(value: Any) -> bool:
    """Whether ``value`` is what a config's ``eos_token_id`` may hold: a token id, a list of them, or null."""
    ids = value if isinstance(value, list) else [value]
    return value is None or all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)


def text_config(config: Any) -> Any:
    """``config.get_text_config()`` where the config has one — a composite model (Gemma-3, Qwen2.5-VL, Llava)
    keeps its language model's ``vocab_size``, ``num_hidden_layers``, ``max_position_embeddings`` and
    ``eos_token_id`` there —, else ``config`` itself (a plain causal LM's config is its own text config). None
    stays None."""
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config
