"""The dropout a Hugging Face model applies in training mode: its config's, and its LoRA adapters'.

Dropout makes every update random: ekd seeds its masks per (run.seed, step, rank), so a resumed run draws the
same ones, but a run split over other ranks or micro-batches draws others and agrees with the first in
distribution, not in value. ``ekd distill`` says so once when the student it trains has dropout on.
"""

from __future__ import annotations

from torch import nn

_UNUSED_HEADS = ("classifier", "summary")  # dropout of heads a causal LM's loss never runs (GPT-2's summary)

LORA_DROPOUT = "model.lora_dropout"
"""The name :func:`active_dropout` gives the dropout of LoRA adapters (peft's, set by ``model.lora_dropout``)."""


def active_dropout(model: nn.Module) -> dict[str, float]:
    """The dropout probabilities that are on: the config's keys naming a dropout (``*dropout*``, ``*pdrop*``,
    e.g. Llama's ``attention_dropout``, GPT-2's ``resid_pdrop``) with a value > 0, except those of heads a
    causal LM does not use; and :data:`LORA_DROPOUT` for the dropout on the input of LoRA adapters injected into
    the model (peft's ``lora_dropout`` modules, the largest p). name → probability, the config's sorted by
    name, then the adapters'; {} for a model without a config or dropout."""
    rates = {}
    config = getattr(model, "config", None)
    for name, value in sorted(vars(config).items()) if config is not None else ():
        named = "dropout" in name or "pdrop" in name
        if not named or any(h in name for h in _UNUSED_HEADS) or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and value > 0:
            rates[name] = float(value)
    lora = [
        d.p
        for m in model.modules()
        if isinstance(adapters := getattr(m, "lora_dropout", None), nn.ModuleDict)
        for d in adapters.values()
        if isinstance(d, nn.Dropout) and d.p > 0
    ]
    if lora:
        rates[LORA_DROPOUT] = float(max(lora))
    return rates


def dropout_fix(rates: dict[str, float]) -> str:
    """What makes a run with dropout ``rates`` exact: 0 in the student's config.json, ``model.lora_dropout=0``."""
    fixes = []
    if any(name != LORA_DROPOUT for name in rates):
        fixes.append("0 in its config.json")
    if LORA_DROPOUT in rates:
        fixes.append(f"{LORA_DROPOUT}=0")
    return " and ".join(fixes)
