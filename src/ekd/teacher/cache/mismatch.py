"""What a difference between a teacher cache's signature and a config means, in config keys: each differing
signature field named by the key that decides it (``data_fingerprint [data.max_chars=2000, built with 0]``), for
the refusal of a run from the cache (:mod:`ekd.teacher.cache.source`) and of a build over it
(:func:`ekd.teacher.cache.manifest.check_compatible`)."""

from __future__ import annotations

import json
from typing import Any

from ekd.teacher.cache.manifest import DATA_SETTINGS
from ekd.teacher.cache.signature import BPE_VOCAB_SIZE

# signature field → the config key that decides it (named in mismatch errors)
CONFIG_KEYS = {
    "teacher_id": "model.teacher",
    "teacher_revision": "model.teacher",
    "tokenizer_hash": "model.tokenizer",
    "data_fingerprint": "data.*",
    "block_length": "data.block_length",
    "vocab_size": "model.tokenizer",
    "target": "method.target",
    "topk": "method.topk",
    "topk_tail": "method.topk_tail",
    "target_temperature": "method.kd_temperature",
    "rs_samples": "method.rs_samples",
    "rs_proposal_power": "method.rs_proposal_power",
    "seed": "run.seed",
    "document_attention": "data.document_attention",
    "separator": "data.separator",
    "positions": "teacher.cache_positions",
    "position_fraction": "teacher.cache_fraction",
}
PACKING = ("block_length", "separator", "document_attention")  # settings that change the packed blocks


def name_config_keys(diffs: list[str], expected: dict, found: dict) -> list[str]:
    """``diffs`` (:func:`~ekd.teacher.cache.manifest.compare_signatures`' lines ``field: expected X, found Y``)
    with the config key that decides each field, or what explains it, after the field: ``field [key]: ...``."""
    fields = [d.split(":", 1)[0] for d in diffs]
    named = []
    for field, line in zip(fields, diffs):
        key = config_key(field, expected, found, fields)
        named.append(f"{field} [{key}]{line[len(field) :]}" if key else line)
    return named


def config_key(field: str, expected: dict, found: dict, fields: list[str]) -> str | None:
    """The config key that decides a differing signature ``field`` (``fields``: all that differ), or what
    explains it: for ``data_fingerprint``, :func:`data_keys`; for the tokenizer's hash and vocabulary size when the
    tokenizer is a BPE trained on the training split, the data too (try-out 64, F3: an edited corpus was blamed
    on model.tokenizer, which no one had changed)."""
    if field == "data_fingerprint":
        return data_keys(expected, found, fields)
    if field in ("tokenizer_hash", "vocab_size") and trains_bpe(expected):
        if "data_fingerprint" in fields:
            return "model.tokenizer: a BPE trained on the training data, see data_fingerprint"
        return f"model.tokenizer: a BPE trained on the training data, {data_keys(expected, found, fields)}"
    from ekd.teacher.cache.signature import hub_commit

    if field == "teacher_revision" and all(hub_commit(x.get(field)) for x in (expected, found)):
        return (
            "model.teacher_revision, else model.revision"  # a hub teacher at another commit (try-out 162, F4)
        )
    return CONFIG_KEYS.get(field)


def changed_settings(expected: dict, found: dict) -> dict[str, Any]:
    """The recorded data settings (:data:`~ekd.teacher.cache.manifest.DATA_SETTINGS`) that differ, by key, with
    the build's values; {} when none do or either signature records none."""
    now, built = expected.get(DATA_SETTINGS), found.get(DATA_SETTINGS)
    if not isinstance(now, dict) or not isinstance(built, dict):
        return {}
    return {k: built.get(k) for k in sorted(set(now) | set(built)) if now.get(k) != built.get(k)}


def trains_bpe(expected: dict) -> bool:
    """Whether the config's tokenizer is a BPE trained on the training data (its settings record its size)."""
    settings = expected.get(DATA_SETTINGS)
    return isinstance(settings, dict) and BPE_VOCAB_SIZE in settings


def data_keys(expected: dict, found: dict, fields: list[str]) -> str:
    """What explains a differing ``data_fingerprint`` (``fields``: the differing signature fields): the
    settings whose values differ from the build's (``data.max_documents=200, built with 100``), else the packing
    or tokenizer keys that differ too, else the data itself, changed under the same settings; ``data.*`` for a
    cache built before ekd recorded them (:data:`~ekd.teacher.cache.manifest.DATA_SETTINGS`)."""
    now, built = expected.get(DATA_SETTINGS), found.get(DATA_SETTINGS)
    if not isinstance(now, dict) or not isinstance(built, dict):
        return CONFIG_KEYS["data_fingerprint"]
    if changed := changed_settings(expected, found):
        return ", ".join(f"{k}={_setting(now.get(k))}, built with {_setting(v)}" for k, v in changed.items())
    trained = trains_bpe(expected)  # its tokens follow the data: not a cause of their own
    causes = [*PACKING, *(() if trained else ("tokenizer_hash",))]
    packing = [CONFIG_KEYS[f] for f in causes if f in fields]
    if packing:
        return f"from {', '.join(dict.fromkeys(packing))}"
    return f"the same data settings: the data at data.source={now.get('data.source')} changed since the build"


def _setting(value: Any) -> str:
    """A data setting as JSON, cut to 100 characters (a chat template can be pages long; a path is whole)."""
    text = json.dumps(value)
    return text if len(text) <= 100 else text[:99] + "…"
