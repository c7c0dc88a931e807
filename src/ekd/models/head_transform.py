"""The post-head logit transform of each architecture, read off its config (transformers 5.23 source).

ekd applies output heads itself (selected rows, chunks), so it must reproduce what a model's ``forward``
does after ``lm_head``. From the ``*ForCausalLM.forward`` code of the installed transformers:

=====================================================================  ==========================================
model types                                                            logits after ``lm_head``
=====================================================================  ==========================================
granite, granite_swa, granitemoe, granitemoe_swa, granitemoehybrid,    ``logits / config.logits_scaling``
granitemoeshared, granite4_vision, granite_docling
hyperclovax, hyperclovax_vision_v2                                     ``logits * config.logits_scaling``
cohere, cohere2, cohere2_moe, cohere_compass                           ``logits * config.logit_scale``
falcon_h1                                                              ``logits * config.lm_head_multiplier``
muse_glimmer, muse_spark                                               ``c·tanh(logits * output_multiplier / c)``
recurrent_gemma                                                        ``c·tanh(logits / c)``, c = logits_soft_cap
every other type (gemma2, gemma3, gemma3n, gemma4, vaultgemma, ...)    ``c·tanh(logits / c)`` when
                                                                       ``final_logit_softcapping`` is set
=====================================================================  ==========================================

Attributes are read from the text config (``config.get_text_config()``), where composite models keep them.
Whatever this table misses is caught at load time by ``ekd.models.load.check_output_head``, which compares
``forward(...).logits`` with the head applied to the body's hidden states and refuses a mismatch.
"""

from __future__ import annotations

from torch import nn

from ekd.losses.logit_transform import LogitTransform
from ekd.models.text_config import text_config

# model type → ((LogitTransform field, config attribute), ...) in the order forward applies them
_RULES: dict[str, tuple[tuple[str, str], ...]] = {
    **dict.fromkeys(
        (
            "granite",
            "granite_swa",
            "granitemoe",
            "granitemoe_swa",
            "granitemoehybrid",
            "granitemoeshared",
            "granite4_vision",
            "granite_docling",
        ),
        (("divisor", "logits_scaling"),),
    ),
    **dict.fromkeys(("hyperclovax", "hyperclovax_vision_v2"), (("multiplier", "logits_scaling"),)),
    **dict.fromkeys(("cohere", "cohere2", "cohere2_moe", "cohere_compass"), (("multiplier", "logit_scale"),)),
    "falcon_h1": (("multiplier", "lm_head_multiplier"),),
    **dict.fromkeys(
        ("muse_glimmer", "muse_spark"),
        (("multiplier", "output_multiplier"), ("softcap", "final_logit_softcapping")),
    ),
    "recurrent_gemma": (("softcap", "logits_soft_cap"),),
}
_DEFAULT = (("softcap", "final_logit_softcapping"),)


def logit_transform(model: nn.Module) -> LogitTransform:
    """The transform ``model.forward`` applies to ``lm_head``'s output (identity for Llama, Qwen, ...)."""
    return LogitTransform(**{field: value for field, _, value in transform_settings(model)})


def transform_settings(model: nn.Module) -> list[tuple[str, str, float]]:
    """(``LogitTransform`` field, config attribute, value) of every setting :func:`logit_transform` reads off
    ``model``'s config, in the order forward applies them; [] for Llama, Qwen, ... (and a model without config)."""
    config = getattr(model, "config", None)
    if config is None:
        return []
    text = text_config(config)
    out = []
    for field, attribute in _RULES.get(getattr(config, "model_type", ""), _DEFAULT):
        value = getattr(text, attribute, getattr(config, attribute, None))
        if value is not None:
            out.append((field, attribute, float(value)))
    return out


def model_type(model: nn.Module) -> str:
    """The config's model type (``type(model).__name__`` when it has none), for messages."""
    return str(getattr(getattr(model, "config", None), "model_type", "") or type(model).__name__)
