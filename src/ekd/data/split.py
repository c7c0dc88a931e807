"""Deterministic held-out splits by hash: the same key lands on the same side on every machine and run.

Used for the in-distribution eval set of every source: by document content for user data
(:func:`ekd.data.build.load_splits`), by top-level module for the builtin ``pystdlib`` corpus.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def stable_unit(key: str) -> float:
    """Map a string to a float in [0, 1), uniformly and identically everywhere (sha256, not ``hash()``)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def held_out_keys(keys: Iterable[str], fraction: float) -> set[str]:
    """The keys whose :func:`stable_unit` is below ``fraction``, adjusted so that neither side is empty.

    With ``fraction > 0`` and at least two distinct keys, at least one key is held out (the one with the
    smallest hash) and at least one is kept (the one with the largest hash). With ``fraction == 0``
    nothing is held out.

    Args:
        keys: Split units (module names, document hashes); duplicates count once.
        fraction: Target held-out fraction in [0, 1].

    Returns:
        The held-out subset of ``keys``.
    """
    if fraction <= 0:
        return set()
    ranked = sorted(set(keys), key=lambda k: (stable_unit(k), k))
    if len(ranked) < 2:
        return set()
    held = {k for k in ranked if stable_unit(k) < fraction}
    if not held:
        held = {ranked[0]}
    held.discard(ranked[-1])
    return held
