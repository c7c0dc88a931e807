"""Run the ekd benchmarks and write a markdown report (``make bench``).

    python -m benchmarks.run --out docs/benchmarks.md            # full: about 10 minutes on 2 CPU cores
    python -m benchmarks.run --out docs/benchmarks.md --quick    # smaller shapes, under 2 minutes

Every case runs in a fresh subprocess (``benchmarks.measure``); every figure in the report is a ratio of
cases measured side by side in the same run. Shapes are Qwen2.5-0.5B (student, H=896) and Qwen2.5-1.5B
(teacher, H=1536) heads, fp32 on CPU. Cases whose estimated memory exceeds ``--max-gb`` are skipped and
reported as such.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks.head_loss import IMPLS, gemm_flops, naive_estimate_gb
from benchmarks.measure import run_case

IMPL_NAMES = {
    "gemm": "bare GEMMs (floor)",
    "ours": "ekd chunked (eager)",
    "ours_compiled": "ekd chunked (compiled)",
    "ours_recompute": "ekd chunked_recompute",
    "naive": "naive full logits (TRL GJSD)",
    "liger": "Liger fused JSD (eager)",
    "liger_compiled": "Liger fused JSD (compiled)",
}


@dataclass
class Plan:
    """What to measure. ``full`` is the issue's grid; ``quick`` keeps every section at smaller shapes."""

    configs: list[tuple[int, int]]  # (V, N)
    impls: tuple[str, ...]
    chunk: int
    n_series_vocab: int
    n_series: list[int]
    chunk_sweep: list[int] = field(default_factory=list)  # chunk sizes at (V, N) = chunk_sweep_shape
    chunk_sweep_shape: tuple[int, int] = (151_936, 1024)
    headline: tuple[int, int] = (151_936, 2048)

    @classmethod
    def full(cls) -> Plan:
        return cls(
            configs=[(32_768, 1024), (32_768, 2048), (151_936, 1024), (151_936, 2048)],
            impls=IMPLS,
            chunk=256,
            n_series_vocab=151_936,
            n_series=[1024, 2048, 4096, 16_384],
            chunk_sweep=[128, 256, 1024],
        )

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            configs=[(32_768, 1024)],
            impls=IMPLS,
            chunk=256,
            n_series_vocab=32_768,
            n_series=[1024, 4096],
            headline=(32_768, 1024),
        )


def describe_machine() -> list[str]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{mem_kb / 2**20:.1f} GiB RAM"
    except (OSError, ValueError, IndexError):
        mem = "RAM unknown"
    try:
        import liger_kernel  # noqa: F401
        from importlib.metadata import version

        liger = f"liger-kernel {version('liger-kernel')}"
    except Exception:  # noqa: BLE001
        liger = "liger-kernel not installed"
    return [
        f"- CPU: {cpu}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}, {mem}",
        f"- Python {platform.python_version()}, torch {torch.__version__}, {liger}, {platform.system()} {platform.release()}",
    ]


def _load() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _fmt(x: float | None, digits: int = 2) -> str:
    if x is None or x != x:
        return "—"
    return f"{x:.{digits}f}"


def _ratio(a: dict | None, b: dict | None, key: str) -> float | None:
    if not a or not b or "error" in a or "error" in b:
        return None
    return a[key] / b[key] if b[key] else None


def _case(impl: str, v: int, n: int, chunk: int, max_gb: float) -> dict:
    if impl == "naive" and naive_estimate_gb(n, v) > max_gb:
        return {"skipped": f"skipped (est. {naive_estimate_gb(n, v):.1f} GB > --max-gb {max_gb:g})"}
    if impl.startswith("liger"):
        try:
            import liger_kernel.chunked_loss  # noqa: F401
        except Exception as e:  # noqa: BLE001
            return {"skipped": f"not available ({type(e).__name__}: pip install liger-kernel --no-deps)"}
    est_s = gemm_flops(n, v) / 20e9  # a slow machine's GEMM rate, ×(fwd+bwd overheads) below
    result = run_case("benchmarks.head_loss", {"impl": impl, "n": n, "v": v, "chunk": chunk, "min_seconds": 3.0}, 300 + 10 * est_s)
    label = f"{impl} V={v} N={n}" + (f" chunk={chunk}" if impl.startswith("ours") else "")
    print(f"  {label:<45} " + (result.get("error") or f"{result['time_s']:.2f} s  {result['peak_mb']:.0f} MB"), flush=True)
    return result


def bench_head_loss(plan: Plan, max_gb: float) -> tuple[list[str], dict]:
    """The loss-head grid, the N series, the chunk sweep and the targets. Returns (markdown lines, results)."""
    results: dict[tuple, dict] = {}
    print("loss head:", flush=True)
    for v, n in plan.configs:
        for impl in plan.impls:
            results[(impl, v, n)] = _case(impl, v, n, plan.chunk, max_gb)
    lines = [
        "## Loss head: student head + teacher head + JSD(β=0.5), forward + backward",
        "",
        f"fp32, CPU. Student H={896}, teacher H={1536}, no bias. ekd chunk = {plan.chunk} rows; Liger chunk = 1024"
        " rows (its default). Time: fastest of ≥1 runs (repeated while under 3 s in total). Peak: resident-set"
        " high-water mark above the inputs, in a fresh process; \"× (N,V)\" = peak over one fp32 (N, V) buffer.",
        "",
        "| V | N | implementation | time (s) | time / ekd eager | time / bare GEMMs | peak (MB) | peak × (N,V) | peak / ekd eager |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for v, n in plan.configs:
        ours, gemm = results.get(("ours", v, n)), results.get(("gemm", v, n))
        buf_mb = n * v * 4 / 2**20
        for impl in plan.impls:
            r = results[(impl, v, n)]
            name = IMPL_NAMES[impl]
            if "skipped" in r or "error" in r:
                lines.append(f"| {v:,} | {n:,} | {name} | {r.get('skipped') or r.get('error')} | | | | | |")
                continue
            mem = "—" if impl == "gemm" else _fmt(r["peak_mb"], 0)
            mem_x = "—" if impl == "gemm" else _fmt(r["peak_mb"] / buf_mb)
            mem_rel = "—" if impl == "gemm" else _fmt(_ratio(r, ours, "peak_mb"))
            lines.append(
                f"| {v:,} | {n:,} | {name} | {_fmt(r['time_s'])} | {_fmt(_ratio(r, ours, 'time_s'))} | "
                f"{_fmt(_ratio(r, gemm, 'time_s'))} | {mem} | {mem_x} | {mem_rel} |"
            )
    lines += _loss_check(results, plan)

    # memory flat in N (ekd eager alone)
    print("N series:", flush=True)
    series = {}
    for n in plan.n_series:
        key = ("ours", plan.n_series_vocab, n)
        series[n] = results[key] if key in results else _case("ours", plan.n_series_vocab, n, plan.chunk, max_gb)
    lines += [
        "",
        f"## Loss head memory vs N (ekd chunked, eager, V={plan.n_series_vocab:,}, chunk {plan.chunk})",
        "",
        "The (N, H) hidden-state gradient the head must return grows with N (4·N·896 bytes); everything else is"
        " one chunk's buffers plus the (V, H) weight gradient.",
        "",
        "| N | time (s) | time / N vs first | peak (MB) | peak / first | of which (N,H) grad (MB) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    first = series[plan.n_series[0]]
    for n in plan.n_series:
        r = series[n]
        if "error" in r or "skipped" in r:
            lines.append(f"| {n:,} | {r.get('error') or r.get('skipped')} | | | | |")
            continue
        per_n = (r["time_s"] / n) / (first["time_s"] / plan.n_series[0]) if "time_s" in first else None
        lines.append(
            f"| {n:,} | {_fmt(r['time_s'])} | {_fmt(per_n)} | {_fmt(r['peak_mb'], 0)} | "
            f"{_fmt(_ratio(r, first, 'peak_mb'))} | {4 * n * 896 / 2**20:.0f} |"
        )

    if plan.chunk_sweep:
        print("chunk sweep:", flush=True)
        v, n = plan.chunk_sweep_shape
        sweep = {
            c: results.get(("ours", v, n)) if c == plan.chunk and ("ours", v, n) in results else _case("ours", v, n, c, max_gb)
            for c in plan.chunk_sweep
        }
        base = sweep.get(plan.chunk) or next(iter(sweep.values()))
        lines += [
            "",
            f"## Chunk size (ekd chunked, eager, V={v:,}, N={n:,})",
            "",
            "| chunk rows | time (s) | time / chunk " + str(plan.chunk) + " | peak (MB) | peak / chunk " + str(plan.chunk) + " |",
            "|---:|---:|---:|---:|---:|",
        ]
        for c, r in sweep.items():
            if "error" in r:
                lines.append(f"| {c} | {r['error']} | | | |")
                continue
            lines.append(
                f"| {c} | {_fmt(r['time_s'])} | {_fmt(_ratio(r, base, 'time_s'))} | {_fmt(r['peak_mb'], 0)} | "
                f"{_fmt(_ratio(r, base, 'peak_mb'))} |"
            )
    lines += _targets(results, series, plan)
    return lines, {"grid": results, "series": series}


def _loss_check(results: dict, plan: Plan) -> list[str]:
    """All implementations must compute the same JSD: the largest relative spread of the loss values."""
    spreads = []
    for v, n in plan.configs:
        values = [r["loss"] for (impl, vv, nn), r in results.items() if (vv, nn) == (v, n) and impl != "gemm" and "loss" in r]
        if len(values) > 1:
            spreads.append(max(values) / min(values) - 1 if min(values) > 0 else float("nan"))
    if not spreads:
        return []
    return ["", f"All implementations agree on the loss value to a relative {max(spreads):.1e} (max over shapes)."]


def _targets(results: dict, series: dict, plan: Plan) -> list[str]:
    v, n = plan.headline
    get = results.get
    ours, comp = get(("ours", v, n)), get(("ours_compiled", v, n))
    naive, liger_c, gemm = get(("naive", v, n)), get(("liger_compiled", v, n)), get(("gemm", v, n))
    note = ""
    if naive is None or "skipped" in naive or "error" in naive:
        # naive memory and time are linear in N: scale the largest measured N at this V
        measured = sorted(nn for (impl, vv, nn), r in results.items() if impl == "naive" and vv == v and "time_s" in r)
        if measured:
            src = results[("naive", v, measured[-1])]
            f = n / measured[-1]
            naive = {"time_s": src["time_s"] * f, "peak_mb": src["peak_mb"] * f}
            note = f" (naive at N={n:,} skipped for memory: extrapolated linearly from N={measured[-1]:,})"
        else:
            naive = None

    def row(what: str, value: float | None, target: str, ok) -> str:
        met = "—" if value is None else ("met" if ok(value) else "**missed**")
        return f"| {what} | {_fmt(value)} | {target} | {met} |"

    lines = [
        "",
        f"## Targets (issue 5) at V={v:,}, N={n:,}{note}",
        "",
        "| ratio | measured | target | |",
        "|---|---:|---:|---|",
    ]
    for label, mine in (("eager", ours), ("compiled", comp)):
        lines += [
            row(f"peak memory: ekd {label} / naive", _ratio(mine, naive, "peak_mb"), "≤ 0.125", lambda x: x <= 0.125),
            row(f"peak memory: ekd {label} / Liger compiled", _ratio(mine, liger_c, "peak_mb"), "≤ 1.2", lambda x: x <= 1.2),
            row(f"time: ekd {label} / naive", _ratio(mine, naive, "time_s"), "≤ 0.6", lambda x: x <= 0.6),
            row(f"time: ekd {label} / Liger compiled", _ratio(mine, liger_c, "time_s"), "≤ 1.2", lambda x: x <= 1.2),
            row(f"time: ekd {label} / bare GEMMs", _ratio(mine, gemm, "time_s"), "≤ 2.5", lambda x: x <= 2.5),
        ]
    peaks = [r["peak_mb"] for r in series.values() if "peak_mb" in r]
    if len(peaks) == len(series) and peaks:
        growth = max(peaks) / peaks[0] - 1
        ns = list(series)
        lines.append(row(f"peak memory growth, N {ns[0]:,} → {ns[-1]:,} (V={plan.n_series_vocab:,})", growth, "≤ 0.10", lambda x: x <= 0.10))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs/benchmarks.md", help="markdown report to write")
    parser.add_argument("--quick", action="store_true", help="small shapes (< 2 minutes)")
    parser.add_argument("--max-gb", type=float, default=16.0, help="skip cases whose estimated memory exceeds this")
    parser.add_argument("--skip-step", action="store_true", help="only the loss-head benchmarks")
    args = parser.parse_args(argv)
    plan = Plan.quick() if args.quick else Plan.full()
    command = "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])
    started = dt.datetime.now(dt.timezone.utc)
    load_start, t0 = _load(), time.perf_counter()
    head_lines, _ = bench_head_loss(plan, args.max_gb)
    step_lines: list[str] = []
    if not args.skip_step:
        from benchmarks.step import bench_step

        step_lines = bench_step(quick=args.quick)
    elapsed = time.perf_counter() - t0
    header = [
        "# ekd benchmarks",
        "",
        f"Generated by `{command}` (`make bench`) on {started:%Y-%m-%d %H:%M} UTC in {elapsed / 60:.1f} min"
        + (" — **quick mode: small shapes, not the issue's grid**" if args.quick else "") + ".",
        "",
        *describe_machine(),
        f"- load average (1/5/15 min) at start: {load_start}; at end: {_load()} — timings are only comparable"
        " within one run, and noisy when the load exceeds the core count",
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text("\n".join(header + head_lines + [""] + step_lines) + "\n")
    tmp.replace(out)
    print(f"wrote {out} ({elapsed / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
