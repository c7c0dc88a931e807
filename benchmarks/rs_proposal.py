"""The online RS target's softmax: ``torch.softmax`` (one fused pass) vs ``row_softmax`` (the cache's p).

``ekd.teacher.targets.rs_target`` draws from p = ``row_softmax(z)``, the p of the cache builder's statistics pass,
so online and cached draws are equal; this times what that costs against the stock kernel it replaced, side by
side in one process: ``rs_target`` with either softmax (N=50 draws) and the softmax alone, ABBA for ``rounds``
rounds, median per contender, 2 torch threads, logits N(0, 2²):

    PYTHONPATH=src:. python -m benchmarks.rs_proposal --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks.measure import allocator_option, use_allocator

SHAPES = ((2048, 2048), (409, 32_768), (1024, 151_936))  # rows × V: demo teacher, a sekd step's M rows, Qwen


def measure(rounds: int = 5) -> list[str]:
    import torch

    import ekd.teacher.targets as targets
    from ekd.losses.row_reductions import row_softmax
    from ekd.teacher.targets import position_seeds, rs_target

    torch.set_num_threads(2)
    softmaxes = {"torch.softmax": lambda z: torch.softmax(z, -1), "row_softmax": row_softmax}
    lines = [
        "| rows × V | rs_target, torch.softmax (ms) | rs_target, row_softmax (ms) | ratio "
        "| torch.softmax alone (ms) | row_softmax alone (ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for rows, vocab in SHAPES:
        z = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(0)) * 2  # (rows, V)
        seeds = position_seeds(0, torch.zeros(rows, dtype=torch.long), torch.arange(rows))
        times: dict[str, list[float]] = {}
        try:
            for r in range(rounds + 1):  # round 0 warms up
                for name in (*softmaxes, *reversed(softmaxes)):
                    targets.row_softmax = softmaxes[name]
                    t0 = time.perf_counter()
                    rs_target(z, 50, seeds=seeds)
                    t1 = time.perf_counter()
                    targets.row_softmax(z)
                    t2 = time.perf_counter()
                    if r:
                        times.setdefault(f"target {name}", []).append(t1 - t0)
                        times.setdefault(f"alone {name}", []).append(t2 - t1)
        finally:
            targets.row_softmax = row_softmax
        med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        lines.append(
            f"| {rows:,} × {vocab:,} | {med['target torch.softmax']:.1f} | {med['target row_softmax']:.1f} "
            f"| {med['target row_softmax'] / med['target torch.softmax']:.2f} | {med['alone torch.softmax']:.1f} "
            f"| {med['alone row_softmax']:.1f} |"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    allocator_option(ap)
    args = ap.parse_args()
    use_allocator(args.default_malloc)
    print("\n".join(measure(args.rounds)))


if __name__ == "__main__":
    main()
