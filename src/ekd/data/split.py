"""Deterministic held-out splits by hash: the same key lands on the same side on every machine and run.

Used for the in-distribution eval set of every source: by document content for user data
(:func:`ekd.data.build.load_splits`), by top-level module for the builtin ``pystdlib`` corpus.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable


def stable_unit(key: str) -> float:
    """Map a string to a float in [0, 1), uniformly and identically everywhere (sha256, not ``hash()``)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def held_out_keys(keys: Iterable[str], fraction: float) -> set[str]:
    """The keys whose :func:`stable_unit` is below ``fraction``, adjusted so that the training side is never empty
    and the held-out side only where the copies allow it.

    With ``fraction > 0`` and at least two distinct keys: where every unit is below ``fraction``, the key with the
    largest hash is kept. Where none is, one key is held out: the one with the smallest hash among those whose copies
    (the times it occurs in ``keys``) are at most that fraction of all of them, one at least; none where no key's
    copies fit (try-out 94, F6 and 95, F2: ten copies of one document beside one other were all held out, 10 of 11;
    ten and ten copies, half of them). With ``fraction == 0`` nothing is held out.

    Args:
        keys: Split units (module names, document hashes), one per document: a unit's documents share a side.
        fraction: Target held-out fraction in [0, 1].

    Returns:
        The held-out subset of ``keys``.
    """
    if fraction <= 0:
        return set()
    copies = Counter(keys)
    ranked = sorted(copies, key=lambda k: (stable_unit(k), k))
    if len(ranked) < 2:
        return set()
    held = {k for k in ranked if stable_unit(k) < fraction}
    if held:
        held.discard(ranked[-1])  # all of them below the fraction: the training side keeps one
        return held
    bound = max(1, int(fraction * sum(copies.values())))  # one key of two or more: the other side keeps one
    fits = next((k for k in ranked if copies[k] <= bound), None)
    return set() if fits is None else {fits}
