"""Sizes with their units on the command line (``ekd plan --gpu-memory 80GiB``): parsed, and the common slip
of writing one as two words named. Apart from :mod:`ekd.plan` so that the CLI checks every command line
for that slip without importing torch."""

from __future__ import annotations

import re

from ekd.errors import EkdError

SIZE_NUMBER = r"[+-]?[0-9]*\.?[0-9]+"  # the number of a size ('80', '1.5', '-5')
SIZE_UNIT = r"[KMGT]i?B?|B"  # its unit, any case ('GiB', 'gb', 'M', 'B')


def split_size(option: str, words: list[str]) -> str | None:
    """The error for a size option written as two words, ``--gpu-memory 80 GiB``: argparse takes '80' as the
    value and 'GiB' as the next positional (``ekd plan``'s: a config file, "config file not found: GiB").

    Args:
        option: the option, e.g. ``--gpu-memory``.
        words: the command-line words after the option (after ``--gpu-memory=80``: the words after that one).

    Returns:
        One line naming the option and the fix, or None when the words are not a number and a unit.
    """
    if len(words) < 2 or not re.fullmatch(SIZE_NUMBER, words[0]):
        return None
    if not re.fullmatch(SIZE_UNIT, words[1], flags=re.IGNORECASE):
        return None
    return (
        f"{option}: '{words[0]} {words[1]}' is one size written as two words; write {option} "
        f"{words[0]}{words[1]} (no space)"
    )


def parse_bytes(text: str) -> int:
    """'80GiB', '80GB', '141 GiB', '81920MiB', '512B': a size with its unit (a bare number is refused: '80'
    is 80 GiB to some and 80 bytes to others).

    Raises:
        EkdError: not a size, no unit, or not positive.
    """
    m = re.fullmatch(rf"\s*({SIZE_NUMBER})\s*({SIZE_UNIT})?\s*", text, flags=re.IGNORECASE)
    if not m:
        raise EkdError(f"--gpu-memory: '{text}' is not a size; write e.g. 80GiB or 141GB")
    number, unit = m.group(1), (m.group(2) or "").upper().rstrip("B") or "B"
    if float(number) > 0 and not m.group(2):
        raise EkdError(f"--gpu-memory: '{text}' has no unit; write {number}GiB (or {number}GB)")
    scale = {"B": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    scale |= {"KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}
    size = int(float(number) * scale[unit])
    if size <= 0:
        raise EkdError(
            f"--gpu-memory must be at least 1 byte, got {text.strip()} ({size:,} bytes); give the memory of one "
            "GPU, e.g. 80GiB"
        )
    return size


__all__ = ["parse_bytes", "split_size"]
