"""The dropout a Hugging Face model applies in training mode, read from its config.

Dropout makes every update random: ekd seeds its masks per (run.seed, step, rank), so a resumed run draws the
same ones, but a run split over other ranks or micro-batches draws others and agrees with the first in
distribution, not in value. ``ekd distill`` says so once when the student it trains has dropout on.
"""

from __future__ import annotations

from torch import nn

_UNUSED_HEADS = ("classifier", "summary")  # dropout of heads a causal LM's loss never runs (GPT-2's summary)


def active_dropout(model: nn.Module) -> dict[str, float]:
    """The config's dropout probabilities that are on: keys naming a dropout (``*dropout*``, ``*pdrop*``,
    e.g. Llama's ``attention_dropout``, GPT-2's ``resid_pdrop``) with a value > 0, except those of heads a
    causal LM does not use. name → probability, sorted by name; {} for a model without a config."""
    config = getattr(model, "config", None)
    if config is None:
        return {}
    rates = {}
    for name, value in sorted(vars(config).items()):
        named = "dropout" in name or "pdrop" in name
        if not named or any(h in name for h in _UNUSED_HEADS) or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and value > 0:
            rates[name] = float(value)
    return rates
