"""How many positions a Hugging Face causal LM takes, and whether a run's blocks fit them.

A model with a learned table of absolute positions (GPT-2's ``wpe``, OPT's ``embed_positions``) has no position
past its table: a block longer than ``n_positions`` raised ``IndexError`` deep in the first forward (a device
assert on a GPU). A rotary or relative model runs past ``max_position_embeddings`` but was never trained there.
"""

from __future__ import annotations

import logging

from torch import nn

from ekd.errors import ModelError
from ekd.models.text_config import text_config

log = logging.getLogger(__name__)

POSITION_KEYS = ("n_positions", "max_position_embeddings", "n_ctx")
"""Config keys of a model's position limit, in the order Hugging Face families use them (GPT-2 first)."""
LEARNED_TABLES = ("wpe", "embed_positions", "position_embeddings")
"""Names of learned absolute-position tables (GPT-2 / GPT-J style, OPT / BART, BERT-style bodies)."""


def position_limit(model: nn.Module) -> tuple[str, int] | None:
    """(config key, positions) of the model's limit — the first of :data:`POSITION_KEYS` its config sets to a
    positive whole number — or None when it names none."""
    # a composite model's: its language model's (review 126, S2)
    config = text_config(getattr(model, "config", None))
    for key in POSITION_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return key, value
    return None


def has_learned_positions(model: nn.Module) -> bool:
    """Whether the model looks positions up in a learned table (an ``nn.Embedding`` named as in
    :data:`LEARNED_TABLES`): then no position exists past the limit."""
    return any(
        isinstance(m, nn.Embedding) and name.rpartition(".")[2] in LEARNED_TABLES
        for name, m in model.named_modules()
    )


def check_block_fits_positions(model: nn.Module, block_length: int, role: str) -> None:
    """Refuse a ``data.block_length`` longer than a learned position table, warn when it is longer than the
    positions a rotary or relative model was trained on.

    Args:
        block_length: tokens per packed block (``data.block_length``): the longest sequence the run feeds.
        role: ``student`` or ``teacher``, for the message.

    Raises:
        ModelError: one line naming the limit, the block length and the fix.
    """
    limit = position_limit(model)
    if limit is None or block_length <= limit[1]:
        return
    key, positions = limit
    what = f"model.{role}: {type(model).__name__} has {positions} positions ({key}={positions})"
    if has_learned_positions(model):
        raise ModelError(
            f"{what}, learned: a block of data.block_length={block_length} tokens runs past them; "
            f"set data.block_length ≤ {positions}"
        )
    log.warning(
        "%s and data.block_length=%d: it never saw positions past %d in training (its positions extrapolate, "
        "which usually degrades it); set data.block_length ≤ %d unless it is meant to run that long",
        what,
        block_length,
        positions,
        positions,
    )


__all__ = ["check_block_fits_positions", "has_learned_positions", "position_limit"]
