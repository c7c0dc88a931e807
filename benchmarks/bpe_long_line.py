"""BPE training time on a corpus holding one long line without whitespace (issue 11 item 8).

    PYTHONPATH=src python -m benchmarks.bpe_long_line

Before pre-tokens were capped at 256 characters, training was quadratic in the length of that line.
"""

from __future__ import annotations

import random
import string
import time

from ekd.data.tokenizer import train_bpe_tokenizer


def main() -> None:
    rng = random.Random(0)
    words = ["def", "return", "self", "value", "x"]
    base = [" ".join(rng.choice(words) for _ in range(200)) for _ in range(20)]
    for n in (50_000, 100_000, 200_000):
        line = "".join(rng.choice(string.ascii_letters) for _ in range(n))
        start = time.perf_counter()
        tok = train_bpe_tokenizer([*base, line], 512)
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        ids = tok(line).input_ids
        print(
            f"{n:>7,} chars: train {train_s:.2f} s, encode {time.perf_counter() - start:.3f} s ({len(ids)} tokens)"
        )


if __name__ == "__main__":
    main()
