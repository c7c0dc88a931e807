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

# Below the format: these import the config, models and losses (never the other way round).
from ekd.teacher.cache.build import build_cache, run_build  # noqa: E402
from ekd.teacher.cache.codes import id_bits_for
from ekd.teacher.cache.command import run_cache_command  # noqa: E402
from ekd.teacher.cache.format import FORMAT_VERSION, CacheError, Layout, MissingSampleError
from ekd.teacher.cache.manifest import assemble_manifest, compare_signatures, make_signature
from ekd.teacher.cache.reader import CachedSample, CacheReader
from ekd.teacher.cache.source import CacheTeacher  # noqa: E402
from ekd.teacher.cache.writer import CacheWriter

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
