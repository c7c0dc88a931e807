"""The decoupled objectives' head (DKD, AT-KD): closed form on the fused head vs autograd per chunk, side by side.

``train.loss_path=chunked`` runs DKD and AT-KD through the fused head with the gradient of TCKD + NCKD in closed
form (``ekd.losses.decoupled_grads``); ``reference`` (and ``chunked_recompute``) keep the autograd path, chunk by
chunk with activation checkpointing (``ekd.losses.rowwise``). One process, the same student/teacher head rows
for both, forward + backward of the loss over M rows, the two paths alternating in ABBA order for ``rounds``
rounds; the ratio is taken per round and reported as median [min, max]. Loss values of both paths are printed
next to it (a benchmark of two different losses is worthless).

    PYTHONPATH=src:. python -m benchmarks.objectives --rounds 3
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

from benchmarks.measure import allocator_option, use_allocator


def measure(
    v: int = 32_768, m: int = 1024, ds: int = 896, dt: int = 1536, chunk: int = 0, rounds: int = 3
) -> dict:
    """objective → {'times': path → [s per round], 'loss': path → value}; see the module docstring."""
    import torch

    from ekd.losses.chunked import auto_chunk_rows, fused_linear_loss
    from ekd.losses.decoupled import atkd_hard_mask, atkd_loss_sum, dkd
    from ekd.losses.decoupled_grads import decoupled_kd_chunk
    from ekd.losses.rowwise import rowwise_loss_sum
    from ekd.losses.targets import Head

    chunk = chunk or auto_chunk_rows(v)
    g = torch.Generator().manual_seed(0)
    h_s, h_t = torch.randn(m, ds, generator=g), torch.randn(m, dt, generator=g)  # (M, Ds), (M, Dt)
    w_s = (torch.randn(v, ds, generator=g) * ds**-0.5).requires_grad_(True)  # (V, Ds)
    head_s, head_t = Head(w_s, None), Head(torch.randn(v, dt, generator=g) * dt**-0.5, None)
    gold = torch.randint(0, v, (m,), generator=g)
    tau, w = torch.full((m,), 2.0), torch.ones(m)
    hard = atkd_hard_mask(torch.rand(m, generator=g), 0.5)
    lam, beta = 0.2, 8.0
    coefs = {
        "dkd": (w, beta * w),
        "atkd": (torch.where(hard, (1 - lam) * w, 0.0), torch.where(hard, 1 - lam, lam) * w),
    }

    def autograd(objective: str) -> float:
        def loss(zs, sl):
            with torch.no_grad():
                zt = head_t(h_t[sl]).float()
            if objective == "dkd":
                return (w[sl] * dkd(zs, zt, gold[sl], tau[sl], beta)).sum()
            return atkd_loss_sum(zs, zt, gold[sl], tau[sl], hard[sl], lam, weights=w[sl])

        h = h_s.clone().requires_grad_(True)
        out = rowwise_loss_sum(h, head_s, loss, chunk)
        out.backward()
        return float(out.detach())

    def closed_form(objective: str) -> float:
        c_t, c_n = coefs[objective]

        def loss(logits, start, end):
            with torch.no_grad():
                zt = head_t(h_t[start:end]).float()
            s = slice(start, end)
            return decoupled_kd_chunk(logits, zt, gold[s], tau[s], c_t[s], c_n[s])

        h = h_s.clone().requires_grad_(True)
        out = fused_linear_loss(h, head_s, loss, chunk)
        out.backward()
        return float(out.detach())

    paths = {"autograd": autograd, "closed form": closed_form}
    res = {}
    for objective in coefs:
        times: dict[str, list[float]] = {p: [] for p in paths}
        loss = {p: fn(objective) for p, fn in paths.items()}  # warm-up, and the values compared
        if not math.isclose(loss["autograd"], loss["closed form"], rel_tol=1e-4):
            raise RuntimeError(f"{objective}: the two paths give different losses {loss}: nothing to compare")
        for _ in range(rounds):
            for p in (*paths, *reversed(paths)):
                t0 = time.perf_counter()
                paths[p](objective)
                times[p].append(time.perf_counter() - t0)
        res[objective] = {"times": times, "loss": loss}
    return {"objectives": res, "shape": (v, m, ds, dt, chunk), "threads": torch.get_num_threads()}


def report(res: dict) -> list[str]:
    v, m, ds, dt, chunk = res["shape"]
    lines = [
        "## Decoupled objectives (DKD, AT-KD): closed form vs autograd",
        "",
        f"_`PYTHONPATH=src:. python -m benchmarks.objectives` (`benchmarks/objectives.py`): the loss head only,"
        f" forward + backward over M={m:,} rows, V={v:,}, student H={ds}, teacher H={dt}, fp32, {chunk} rows per"
        f" chunk, torch threads {res['threads']}; ABBA rounds, ratio per round._",
        "",
        "| objective | autograd (s) | closed form (s) | closed form / autograd, median [min, max] | loss autograd | loss closed form |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for objective, r in res["objectives"].items():
        a, c = r["times"]["autograd"], r["times"]["closed form"]
        ratios = sorted((c[2 * i] + c[2 * i + 1]) / (a[2 * i] + a[2 * i + 1]) for i in range(len(a) // 2))
        lines.append(
            f"| `{objective}` | {statistics.median(a):.3f} | {statistics.median(c):.3f} |"
            f" **{statistics.median(ratios):.2f}** [{ratios[0]:.2f}, {ratios[-1]:.2f}] |"
            f" {r['loss']['autograd']:.6g} | {r['loss']['closed form']:.6g} |"
        )
    return lines


def section(quick: bool = False) -> list[str]:
    """The markdown section for ``make bench`` (smaller rows with ``quick``)."""
    return report(measure(m=256 if quick else 1024, rounds=1 if quick else 3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--v", type=int, default=32_768)
    ap.add_argument("--m", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    allocator_option(ap)
    args = ap.parse_args()
    use_allocator(args.default_malloc)
    print("\n".join(report(measure(v=args.v, m=args.m, rounds=args.rounds))))


if __name__ == "__main__":
    main()
