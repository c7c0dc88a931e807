"""A model's own ``generation_config`` set aside while ekd generates (lm-eval tasks, on-policy sampling).

``model.generate`` fills every argument its caller leaves unset from ``model.generation_config``, which
``from_pretrained`` reads from the checkpoint's ``generation_config.json``: a ``max_new_tokens`` there
overrides the ``max_length`` lm-eval passes (a task's 5-token budget becomes 20, with transformers' "Both
max_new_tokens and max_length" warning every batch), and ``repetition_penalty``, ``no_repeat_ngram_size``,
``num_beams``, ``min_new_tokens``, ``bad_words_ids`` or sampling fields (Qwen's ``do_sample``, ``top_k=20``,
``top_p``) reshape what is decoded. Scores and on-policy samples must not depend on them: for the call the
config is transformers' defaults with only the special-token ids kept (what the model's tokens mean, not
how to decode), and the checkpoint's own config is put back afterwards, untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from ekd.models.text_config import text_config

TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "suppress_tokens")
"""The fields of a generation config kept for ekd's generation: they name tokens, they do not steer decoding
(``suppress_tokens``: ids that are no tokens, e.g. the padded head rows an export suppresses,
:mod:`ekd.models.export`)."""


def stop_ids(model: nn.Module, eos_id: int) -> list[int]:
    """``eos_id`` first, then every end-of-sequence id the model's ``generation_config`` or ``config`` names.

    Instruct checkpoints list their end-of-turn tokens there beside the tokenizer's EOS (Qwen2.5 ``<|im_end|>``,
    Llama-3 ``<|eot_id|>``, Gemma ``<end_of_turn>``, Phi-3 ``<|end|>``): a sampled turn ends at any of them, as
    ``model.generate`` would end it (try-out 18: stopping at the one document EOS, Gemma-3, Phi-3 and Llama-3
    students generated past their end of turn to the token budget)."""
    ids = [int(eos_id)]
    # a composite model names them in its language model's config (review 126, S3)
    for source in (getattr(model, "generation_config", None), text_config(getattr(model, "config", None))):
        value = getattr(source, "eos_token_id", None)
        for i in [value] if isinstance(value, int) else list(value or []):
            if isinstance(i, int) and not isinstance(i, bool) and i not in ids:
                ids.append(i)
    return ids


@contextmanager
def neutral_generation_config(model: nn.Module) -> Iterator[None]:
    """For the block, every ``generation_config`` ``model`` holds (its own and those of the modules it wraps:
    a PEFT model's base, whose ``generate`` reads its own) is replaced by a default one keeping only
    :data:`TOKEN_IDS`; each is restored afterwards, also on error.
    """
    from transformers import GenerationConfig

    saved = [(m, vars(m)["generation_config"]) for m in model.modules() if "generation_config" in vars(m)]
    try:
        for module, config in saved:
            ids = {k: getattr(config, k, None) for k in TOKEN_IDS} if config is not None else {}
            module.generation_config = GenerationConfig(**{k: v for k, v in ids.items() if v is not None})
        yield
    finally:
        for module, config in saved:
            module.generation_config = config
