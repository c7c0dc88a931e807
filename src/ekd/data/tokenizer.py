"""A byte-level BPE tokenizer trained on the training split (``model.tokenizer=train_bpe``), and a stable
hash of any tokenizer (part of the teacher-cache signature).

The trained tokenizer has one special token, ``<|endoftext|>``, used as eos, bos and pad. It is a standard
``transformers`` fast tokenizer: ``save_pretrained(dir)`` then ``AutoTokenizer.from_pretrained(dir)``
reloads it with identical encodings and an identical :func:`tokenizer_hash`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from ekd.config import ConfigError

logger = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
MIN_BPE_VOCAB = 257  # 256 byte symbols + <|endoftext|>


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    save_dir: Path | str | None = None,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (GPT-2 style pre-tokenization, no prefix space).

    Args:
        texts: Training texts (e.g. ``doc.full_text`` of the training documents).
        vocab_size: Target vocabulary size including the 256 byte symbols and ``<|endoftext|>``; the
            result is smaller when the texts support fewer merges.
        save_dir: If given, the tokenizer is written there with ``save_pretrained`` (atomically).

    Returns:
        A fast tokenizer with ``eos_token = bos_token = pad_token = "<|endoftext|>"`` (id 0). It adds no
        special tokens when encoding.

    Raises:
        ConfigError: ``vocab_size`` below 257.
    """
    if vocab_size < MIN_BPE_VOCAB:
        raise ConfigError(
            f"model.bpe_vocab_size must be ≥ {MIN_BPE_VOCAB} (256 bytes + {EOS_TOKEN}), got {vocab_size}"
        )
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_batches(texts), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, pad_token=EOS_TOKEN
    )
    logger.info("trained a byte-level BPE tokenizer: %d tokens (asked for %d)", len(tokenizer), vocab_size)
    if save_dir is not None:  # atomically: a full disk or a kill never leaves a half tokenizer to reload
        from ekd.io import atomic_dir

        with atomic_dir(save_dir) as staging:
            tokenizer.save_pretrained(str(staging))
    return tokenizer


def _batches(texts: Iterable[str], size: int = 256) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        for piece in cap_pretokens(text):
            batch.append(piece)
            if len(batch) == size:
                yield batch
                batch = []
    if batch:
        yield batch


MAX_PRETOKEN_CHARS = 256


def cap_pretokens(text: str, limit: int = MAX_PRETOKEN_CHARS) -> Iterator[str]:
    """``text`` cut so that no run of non-whitespace is longer than ``limit`` characters (training only).

    BPE training is quadratic in the length of one pre-token: a 200k-character line without whitespace took
    7.6 s and a 5 MB one hours. Cutting runs into ``limit``-character pieces (each trained as its own text)
    bounds that; merges longer than ``limit`` characters are never useful, and encoding is unchanged.
    """
    start = 0
    for m in re.finditer(rf"\S{{{limit + 1},}}", text):
        if m.start() > start:
            yield text[start : m.start()]
        for i in range(m.start(), m.end(), limit):
            yield text[i : min(i + limit, m.end())]
        start = m.end()
    if start < len(text) or not text:
        yield text[start:]


def tokenizer_hash(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 hex of what decides a tokenizer's encodings: vocabulary, merges, pipeline, special tokens.

    Covers the sorted vocabulary (added tokens included), the model type and merges, the normalizer,
    pre-tokenizer and post-processor, and the eos/bos/pad/unk tokens. Stable across
    ``save_pretrained``/``from_pretrained``; padding/truncation settings and ``model_max_length`` are
    left out because they do not change token ids.
    """
    parts: dict[str, Any] = {
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": {
            name: getattr(tokenizer, name, None)
            for name in ("eos_token", "bos_token", "pad_token", "unk_token")
        },
    }
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        model = spec.get("model") or {}
        merges = model.get("merges") or []
        parts["model_type"] = model.get("type")
        parts["merges"] = [m.split(" ", 1) if isinstance(m, str) else list(m) for m in merges]
        for key in ("normalizer", "pre_tokenizer", "post_processor"):
            parts[key] = spec.get(key)
    payload = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
