"""The "did you mean" of every error about an unknown name: config keys and sections, choice values
(``method.divergence=kll``), registry entries (presets, scorers, ...) and command-line options (``--o``).

One matcher, so every such error suggests alike. A name spelled in another case is the answer; otherwise three
tries, case ignored, the first that finds something wins:

1. ``word`` starts a name (an abbreviation: ``--o`` → ``--overwrite``, ``forward`` → ``forward_kl``); every
   name it starts is returned, so an ambiguous prefix names all of them;
2. the whole names by similarity (``difflib``; a typo: ``forward_kll`` → ``forward_kl``);
3. the parts of compound names (split at ``.`` and ``_``; ``kll`` → ``forward_kl``, ``max_steps`` →
   ``train.max_steps``), every name holding the best part, in the order given.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from pathlib import Path

PART_CUTOFF = 0.75  # a part must be this similar: 'kll' ~ 'kl' (0.8), not 'tvd' ~ 'kl'
SHOWN = 3  # at most this many names in one hint


def close_names(word: str, names: Iterable[str], cutoff: float = 0.6) -> list[str]:
    """The names ``word`` most likely meant, best first (at most ``SHOWN``); [] if none is close."""
    names = [n for n in dict.fromkeys(names) if n != word]
    if not word.strip("-_."):
        return []
    # a name in another case: 'FORWARD_KL', 'KD' (try-out 108, F11)
    same = [n for n in names if n.lower() == word.lower()]
    if same:
        return same[:SHOWN]
    word = word.lower()  # the tries below ignore case
    lowered = {n.lower(): n for n in reversed(names)}  # lower-case name → the first name spelled so
    started = [n for n in names if n.lower().startswith(word)]
    if started:
        return started[:SHOWN]
    close = [lowered[c] for c in difflib.get_close_matches(word, list(lowered), n=1, cutoff=cutoff)]
    if close:
        return close
    leaf = word.lstrip("-").rsplit(".", 1)[-1]
    scores = {n: max((_similarity(leaf, part) for part in _parts(n.lower())), default=0.0) for n in names}
    best = max(scores.values(), default=0.0)
    return [n for n, s in scores.items() if s == best][:SHOWN] if best >= PART_CUTOFF else []


def did_you_mean(word: str, names: Iterable[str], cutoff: float = 0.6) -> str:
    """ "; did you mean 'a'?" (or "'a' or 'b'?") for an error line, or "" when nothing is close."""
    close = [f"'{n}'" for n in close_names(word, names, cutoff)]
    return f"; did you mean {either(close)}?" if close else ""


def either(names: Iterable[str]) -> str:
    """'a', 'a or b', 'a, b or c'."""
    names = list(names)
    if not names:
        return ""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _parts(name: str) -> set[str]:
    """'train.max_steps' → {'train', 'max_steps', 'max', 'steps'}; '--keep-layers' → {'keep', 'layers', ...}."""
    dotted = [p for p in name.lstrip("-").split(".") if p]
    return {*dotted, *(p for d in dotted for p in re.split(r"[_-]+", d) if p)}


def _similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b).ratio()


def close_paths(path: Path, accept: Callable[[Path], bool] = Path.exists) -> list[Path]:
    """The existing paths a mistyped ``path`` most likely meant, best first (at most ``SHOWN``): its first
    component that does not exist replaced by the close names (:func:`close_names`) of the directories beside it,
    the components after it kept, and only those ``accept`` takes (try-out 52, F8: ``run.output_dir=rusn`` with
    ``--resume``, ``ekd eval runs/kd-s00``). [] when ``path`` exists or nothing is close."""
    parts = path.parts
    for i in range(len(parts)):
        head = Path(*parts[: i + 1])
        if head.exists():
            continue
        parent = Path(*parts[:i]) if i else Path()
        try:
            names = [p.name for p in parent.iterdir() if p.is_dir()]
        except OSError:
            return []
        rest = parts[i + 1 :]
        return [c for n in close_names(parts[i], names) if accept(c := parent.joinpath(n, *rest))][:SHOWN]
    return []
