"""Words for messages: a count with its noun in the right number (``1 step``, ``2 steps``); a text kept on one line."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None, fmt: str = "") -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1: '1 step', '3 steps', '2 directories', '1,234 tokens'.

    Args:
        plural: the plural where the rule (``-s``; consonant + ``y`` → ``-ies``; ``-s``/``-x``/``-ch``/``-sh``
            → ``-es``) gets it wrong.
        fmt: format spec of ``n`` (``","``: thousands separated).
    """
    if plural is None:
        if noun.endswith("y") and noun[-2:-1] not in tuple("aeiou"):
            plural = noun[:-1] + "ies"
        elif noun.endswith(("s", "x", "ch", "sh")):
            plural = noun + "es"
        else:
            plural = noun + "s"
    return f"{n:{fmt}} {noun if n == 1 else plural}"


def one_line(message: str) -> str:
    """``message`` with every non-printable character escaped, so a value echoed in an error or a warning (a
    newline, a control character from a file, a chat role ``"\\n"``) cannot break the one-line promise."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
