"""Offline teacher cache: sparse targets + per-token teacher statistics on disk (no teacher at training time).

- ``codes``    — vectorized bit codes (fixed width, Elias–Fano ids, Elias-gamma counts, varints)
- ``format``   — the binary record/index format, ``Layout``, ``CacheError``
- ``manifest`` — signature, ``compare_signatures``, atomic JSON, ``assemble_manifest``
- ``writer``   — ``CacheWriter`` (atomic shards, resume, per-rank shards)
- ``reader``   — ``CacheReader`` (memory-mapped random access, ``batch``, ``verify``, ``info``)
- ``measure``  — ``measure_bytes_per_position`` on synthetic Zipf-like teacher logits
"""

from ekd.teacher.cache.codes import id_bits_for
from ekd.teacher.cache.format import FORMAT_VERSION, CacheError, Layout, MissingSampleError
from ekd.teacher.cache.manifest import assemble_manifest, compare_signatures, make_signature
from ekd.teacher.cache.reader import CachedSample, CacheReader
from ekd.teacher.cache.writer import CacheWriter

__all__ = [
    "FORMAT_VERSION",
    "CacheError",
    "CacheReader",
    "CacheWriter",
    "CachedSample",
    "Layout",
    "MissingSampleError",
    "assemble_manifest",
    "compare_signatures",
    "id_bits_for",
    "make_signature",
]
