"""Offline teacher cache: sparse targets + per-token teacher statistics on disk (no teacher at training time).

The on-disk format:

- ``codes``    — vectorized bit codes (fixed width, Elias–Fano ids, Elias-gamma counts, varints)
- ``format``   — the binary record/index format, ``Layout``, ``CacheError``
- ``manifest`` — signature, ``compare_signatures``, atomic JSON, ``assemble_manifest``
- ``samples``  — padded per-sample rows → one checked ``RecordBatch``
- ``encode``   — ``encode_records``: a batch of records to bytes, one numpy pass per section
- ``writer``   — ``CacheWriter`` (``add_batch``, atomic shards, resume, per-rank shards)
- ``reader``   — ``CacheReader`` (memory-mapped random access, ``batch``, ``verify``, ``info``)
- ``measure``  — ``measure_bytes_per_position`` on synthetic Zipf-like teacher logits

Building it and training from it:

- ``signature`` — what a cache must match (``cache_signature``), which configs can be cached
- ``entries``   — one batch of teacher forwards → per-sample records (statistics + sparse targets)
- ``build``     — ``run_build`` / ``build_cache``: the crash-safe, rank-sharded build driver
- ``source``    — ``CacheTeacher``: the teacher source that reads the cache at training time
- ``command``   — ``ekd cache`` (build | info | verify)
"""

import importlib

# Each public name → its submodule, imported on first access (PEP 562): every `ekd --help` builds `ekd cache`'s
# parser from `command`, which must not pay for the build's torch and transformers (seconds). No name here is
# also a submodule's (importing that submodule would rebind the name to it).
_HOMES = {
    "FORMAT_VERSION": "format",
    "CacheError": "format",
    "Layout": "format",
    "MissingSampleError": "format",
    "CacheTeacher": "source",
    "CacheReader": "reader",
    "CachedSample": "reader",
    "CacheWriter": "writer",
    "assemble_manifest": "manifest",
    "compare_signatures": "manifest",
    "make_signature": "manifest",
    "build_cache": "build",
    "run_build": "build",
    "id_bits_for": "codes",
    "run_cache_command": "command",
}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value  # later reads skip this hook
    return value


__all__ = [
    "FORMAT_VERSION",
    "CacheError",
    "CacheTeacher",
    "CacheReader",
    "CacheWriter",
    "CachedSample",
    "Layout",
    "MissingSampleError",
    "assemble_manifest",
    "build_cache",
    "compare_signatures",
    "id_bits_for",
    "make_signature",
    "run_build",
    "run_cache_command",
]
