"""CPU ``torch.exp`` time by input range: inputs below log(smallest normal fp32) ≈ −87.34 take a slow path.

Relevant wherever the losses and statistics exponentiate log-probabilities of a very peaked distribution (a
confident teacher, a low τ): every entry with log p < −87.3 then costs several normal exps. The random-weight
models of the benchmarks stay far above that range (log p ≥ −40), so their figures do not show it. 256 × 32,768 fp32, 1 thread, ranges alternated ABBA, median of 10:

    PYTHONPATH=src python -m benchmarks.exp_range
"""

from __future__ import annotations

import statistics
import time

RANGES = {
    "[-20, -5]": (-20.0, -5.0),
    "[-87, -80]": (-87.0, -80.0),
    "[-100, -88]": (-100.0, -88.0),
    "[-200, -110]": (-200.0, -110.0),
}


def main(rows: int = 256, vocab: int = 32_768, rounds: int = 5) -> list[str]:
    import torch

    torch.set_num_threads(1)
    xs = {k: torch.empty(rows, vocab).uniform_(*r) for k, r in RANGES.items()}
    times: dict[str, list[float]] = {k: [] for k in RANGES}
    for _ in range(rounds):
        for k in (*RANGES, *reversed(RANGES)):
            t0 = time.perf_counter()
            xs[k].exp()
            times[k].append(time.perf_counter() - t0)
    base = statistics.median(times["[-20, -5]"])
    lines = ["| input range | exp (ms) | / [-20, -5] |", "|---|---:|---:|"]
    for k, v in times.items():
        lines.append(f"| {k} | {1e3 * statistics.median(v):.1f} | {statistics.median(v) / base:.1f} |")
    return lines


if __name__ == "__main__":
    print("\n".join(main()))
