"""Run the ekd benchmarks and write a markdown report (``make bench``).

    python -m benchmarks.run --out docs/benchmarks.md            # the issue's grid: ~20 min on 2 quiet cores
    python -m benchmarks.run --out docs/benchmarks.md --n-max 4096 --skip-step   # ~11 min
    python -m benchmarks.run --out docs/benchmarks.md --quick    # small shapes, ~2 min

Every case runs in a fresh subprocess (``benchmarks.measure``); every figure in the report is a ratio of
cases measured side by side in the same run. Shapes are Qwen2.5-0.5B (student, H=896) and Qwen2.5-1.5B
(teacher, H=1536) heads, fp32 on CPU. Cases whose estimated memory exceeds ``--max-gb`` are skipped and
reported as such. The report replaces the sections it generates in ``--out`` (by "## " heading) and keeps every
other section of that file after them (``merge_report``): numerics, scaling, GPU checks and analyses written by
hand are never lost.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks.head_loss import IMPLS, estimate_gb, gemm_flops
from benchmarks.measure import run_case, use_allocator
from ekd.losses.chunked import auto_chunk_rows

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
    chunk: int  # ekd rows per chunk; 0 = ekd.losses.chunked.auto_chunk_rows(V)
    n_series_vocab: int
    n_series: list[int]
    chunk_sweep: list[int] = field(default_factory=list)  # chunk sizes at (V, N) = chunk_sweep_shape
    chunk_sweep_shape: tuple[int, int] = (151_936, 1024)
    headline: tuple[int, int] = (151_936, 2048)
    recompute_max_n: int = 0  # measure chunked_recompute only up to this N (0 = all N of the grid)

    @classmethod
    def full(cls) -> Plan:
        return cls(
            configs=[(32_768, 1024), (32_768, 2048), (151_936, 1024), (151_936, 2048)],
            impls=IMPLS,
            chunk=0,
            n_series_vocab=151_936,
            n_series=[1024, 2048, 4096, 16_384],
            chunk_sweep=[128, 256, 1024],
            recompute_max_n=1024,
        )

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            configs=[(16_384, 1024)],
            impls=IMPLS,
            chunk=0,
            n_series_vocab=16_384,
            n_series=[
                2048,
                8192,
            ],  # from 2 chunks of 1024 rows: one chunk never touches all of grad_W at its peak
            headline=(16_384, 1024),
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
        from importlib.metadata import version

        import liger_kernel  # noqa: F401

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
    if not a or not b or key not in a or key not in b:
        return None
    return a[key] / b[key] if b[key] else None


def _unavailable(impl: str) -> str | None:
    if impl.startswith("liger"):
        try:
            import liger_kernel.chunked_loss  # noqa: F401
        except Exception as e:  # noqa: BLE001
            return f"not available ({type(e).__name__}; `pip install liger-kernel --no-deps`)"
    return None


def _chunk(plan_chunk: int, v: int) -> int:
    return plan_chunk or auto_chunk_rows(v)


def _measure(impl: str, v: int, ns: list[int], chunk: int, max_gb: float) -> dict[int, dict]:
    """Results of ``impl`` at vocabulary ``v`` for each N (one process; skipped N say why)."""
    why = _unavailable(impl)
    out: dict[int, dict] = {n: {"skipped": why} for n in ns} if why else {}
    todo = []
    for n in ns:
        if why:
            continue
        if estimate_gb(impl, n, v) > max_gb:
            out[n] = {"skipped": f"skipped (est. {estimate_gb(impl, n, v):.1f} GB > --max-gb {max_gb:g})"}
        else:
            todo.append(n)
    if todo:
        est_s = sum(gemm_flops(n, v) for n in todo) / 10e9  # generous: a slow, loaded machine
        t0 = time.perf_counter()
        res = run_case(
            "benchmarks.head_loss",
            {"impl": impl, "v": v, "ns": todo, "chunk": chunk, "min_seconds": 3.0},
            300 + 5 * est_s,
        )
        for n in todo:
            out[n] = res.get(str(n), {"error": res.get("error", "no result")})
        label = f"{impl} V={v} N={','.join(map(str, todo))}" + (
            f" chunk={chunk}" if impl.startswith("ours") else ""
        )
        summary = res.get("error") or "  ".join(
            f"{out[n]['time_s']:.2f}s/{out[n]['peak_mb']:.0f}MB" for n in todo
        )
        print(f"  {label:<52} {summary}  [{time.perf_counter() - t0:.0f} s]", flush=True)
    return out


def bench_head_loss(plan: Plan, max_gb: float) -> tuple[list[str], dict]:
    """The loss-head grid, the N series, the chunk sweep and the targets. Returns (markdown lines, results)."""
    results: dict[tuple, dict] = {}
    print("loss head:", flush=True)
    for v in sorted({v for v, _ in plan.configs}):
        ns = [n for vv, n in plan.configs if vv == v]
        extra = [n for n in plan.n_series if v == plan.n_series_vocab and n not in ns]
        for impl in plan.impls:
            impl_ns = ns + extra if impl == "ours" else ns
            if impl == "ours_recompute" and plan.recompute_max_n:
                impl_ns = [n for n in ns if n <= plan.recompute_max_n]
            for n, r in _measure(impl, v, impl_ns, _chunk(plan.chunk, v), max_gb).items():
                results[(impl, v, n)] = r
    if plan.n_series_vocab not in {v for v, _ in plan.configs}:
        for n, r in _measure(
            "ours", plan.n_series_vocab, plan.n_series, _chunk(plan.chunk, plan.n_series_vocab), max_gb
        ).items():
            results[("ours", plan.n_series_vocab, n)] = r
    lines = [
        "## Loss head: student head + teacher head + JSD(β=0.5), forward + backward",
        "",
        f"fp32, CPU. Student H={896}, teacher H={1536}, no bias. ekd chunk = "
        + (
            f"{plan.chunk} rows"
            if plan.chunk
            else "`auto_chunk_rows(V)` (one fp32 (chunk, V) buffer ≈ 128 MiB: "
            + ", ".join(f"{auto_chunk_rows(v)} rows at V={v:,}" for v in sorted({v for v, _ in plan.configs}))
            + ")"
        )
        + "; Liger chunk = 1024 rows (its default). Time: fastest run (repeated while the total is under 3 s). Peak: resident-set"
        ' high-water mark above the inputs, each implementation in a fresh process; "× (N,V)" = peak over'
        " one fp32 (N, V) buffer.",
        "",
        "| V | N | implementation | time (s) | time / ekd eager | time / bare GEMMs | peak (MB) | peak × (N,V) | peak / ekd eager |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for v, n in plan.configs:
        ours, gemm = results.get(("ours", v, n)), results.get(("gemm", v, n))
        buf_mb = n * v * 4 / 2**20
        for impl in plan.impls:
            r = results.get((impl, v, n))
            if r is None:
                continue
            name = IMPL_NAMES[impl]
            if "time_s" not in r:
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

    series = {n: results[("ours", plan.n_series_vocab, n)] for n in plan.n_series}
    lines += [
        "",
        f"## Loss head memory vs N (ekd chunked, eager, V={plan.n_series_vocab:,},"
        f" chunk {_chunk(plan.chunk, plan.n_series_vocab)})",
        "",
        "Besides one chunk's (chunk, V) buffers and the (V, H) weight gradient, the only memory that grows with N"
        " is the (N, H) hidden-state gradient the head returns (4·N·896 bytes), which every implementation must"
        " produce.",
        "",
        "| N | time (s) | time per row / first | peak (MB) | peak / first | (N, H) gradient (MB) | peak − (N, H) grad / first |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    first_n = plan.n_series[0]
    first = series[first_n]
    for n in plan.n_series:
        r = series[n]
        if "time_s" not in r or "time_s" not in first:
            lines.append(f"| {n:,} | {r.get('error') or r.get('skipped') or 'first N failed'} | | | | | |")
            continue
        grad_mb = 4 * n * 896 / 2**20
        rest = (r["peak_mb"] - grad_mb) / (first["peak_mb"] - 4 * first_n * 896 / 2**20)
        lines.append(
            f"| {n:,} | {_fmt(r['time_s'])} | {_fmt((r['time_s'] / n) / (first['time_s'] / first_n))} | "
            f"{_fmt(r['peak_mb'], 0)} | {_fmt(_ratio(r, first, 'peak_mb'))} | {grad_mb:.0f} | {_fmt(rest)} |"
        )

    if plan.chunk_sweep:
        print("chunk sweep:", flush=True)
        v, n = plan.chunk_sweep_shape
        default = _chunk(plan.chunk, v)
        sweep = {}
        for c in plan.chunk_sweep:
            sweep[c] = (
                results[("ours", v, n)]
                if c == default and ("ours", v, n) in results
                else _measure("ours", v, [n], c, max_gb)[n]
            )
        base = sweep.get(default) or next(iter(sweep.values()))
        lines += [
            "",
            f"## Chunk size (ekd chunked, eager, V={v:,}, N={n:,})",
            "",
            f"| chunk rows | time (s) | time / chunk {default} | peak (MB) | peak / chunk {default} |",
            "|---:|---:|---:|---:|---:|",
        ]
        for c, r in sweep.items():
            if "time_s" not in r:
                lines.append(f"| {c} | {r.get('error') or r.get('skipped')} | | | |")
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
        values = [
            r["loss"]
            for (impl, vv, nn), r in results.items()
            if (vv, nn) == (v, n) and impl != "gemm" and "loss" in r
        ]
        if len(values) > 1:
            spreads.append(max(values) / min(values) - 1 if min(values) > 0 else float("nan"))
    if not spreads:
        return []
    return [
        "",
        f"All implementations agree on the loss value to a relative {max(spreads):.1e} (max over shapes).",
    ]


def _targets(results: dict, series: dict, plan: Plan) -> list[str]:
    v, n = plan.headline
    get = results.get
    ours, comp = get(("ours", v, n)), get(("ours_compiled", v, n))
    naive, liger_c, gemm = get(("naive", v, n)), get(("liger_compiled", v, n)), get(("gemm", v, n))
    note = ""
    if naive is None or "time_s" not in naive:
        # naive memory and time are linear in N: scale the largest measured N at this V
        measured = sorted(
            nn for (impl, vv, nn), r in results.items() if impl == "naive" and vv == v and "time_s" in r
        )
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
            row(
                f"peak memory: ekd {label} / naive",
                _ratio(mine, naive, "peak_mb"),
                "≤ 0.125",
                lambda x: x <= 0.125,
            ),
            row(
                f"peak memory: ekd {label} / Liger compiled",
                _ratio(mine, liger_c, "peak_mb"),
                "≤ 1.2",
                lambda x: x <= 1.2,
            ),
            row(f"time: ekd {label} / naive", _ratio(mine, naive, "time_s"), "≤ 0.6", lambda x: x <= 0.6),
            row(
                f"time: ekd {label} / Liger compiled",
                _ratio(mine, liger_c, "time_s"),
                "≤ 1.2",
                lambda x: x <= 1.2,
            ),
            row(f"time: ekd {label} / bare GEMMs", _ratio(mine, gemm, "time_s"), "≤ 2.5", lambda x: x <= 2.5),
        ]
    peaks = [r["peak_mb"] for r in series.values() if "peak_mb" in r]
    if len(peaks) == len(series) and peaks:
        growth = max(peaks) / peaks[0] - 1
        ns = list(series)
        lines.append(
            row(
                f"peak memory growth, N {ns[0]:,} → {ns[-1]:,} (V={plan.n_series_vocab:,})",
                growth,
                "≤ 0.10",
                lambda x: x <= 0.10,
            )
        )
    return lines


def _sections(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(text before the first "## " heading, [(heading line, its section's text incl. the heading)])."""
    parts = re.split(r"(?m)^(?=## )", text)
    lead = "" if parts[0].startswith("## ") else parts.pop(0)
    return lead, [(p.splitlines()[0].strip(), p) for p in parts]


def merge_report(generated: str, existing: str) -> str:
    """The new report, then every section of the existing file it does not regenerate (by "## " heading), in
    their order: a run never deletes the hand-written sections (numerics, scaling, GPU checks, analyses)."""
    _, new_sections = _sections(generated)
    _, old_sections = _sections(existing)
    regenerated = {title for title, _ in new_sections}
    kept = [body for title, body in old_sections if title not in regenerated]
    out = generated.rstrip("\n") + "\n"
    for body in kept:
        out += "\n" + body.rstrip("\n") + "\n"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs/benchmarks.md", help="markdown report to write")
    parser.add_argument("--quick", action="store_true", help="small shapes (< 2 minutes)")
    parser.add_argument(
        "--max-gb", type=float, default=16.0, help="skip cases whose estimated memory exceeds this"
    )
    parser.add_argument("--n-max", type=int, default=0, help="cap the N series (e.g. 4096 saves ~5 min)")
    parser.add_argument(
        "--chunk", type=int, default=0, help="ekd rows per chunk (default: auto_chunk_rows(V))"
    )
    parser.add_argument(
        "--skip-step", action="store_true", help="skip the optimizer-step and DKD/AT-KD head benchmarks"
    )
    parser.add_argument("--skip-cache", action="store_true", help="skip the teacher-cache figures")
    parser.add_argument("--skip-e2e", action="store_true", help="skip the whole-step comparison with TRL")
    parser.add_argument("--demo", default="runs/demo", help="demo directory (its teacher cache, if built)")
    args = parser.parse_args(argv)
    use_allocator()  # the in-process sections time as an ekd run on CPU does (the cases: benchmarks.measure)
    plan = Plan.quick() if args.quick else Plan.full()
    plan.chunk = args.chunk
    if args.n_max:
        plan.n_series = [n for n in plan.n_series if n <= args.n_max]
    command = "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])
    started = dt.datetime.now(dt.timezone.utc)
    load_start, t0 = _load(), time.perf_counter()
    print(
        "quick mode: ~2 min"
        if args.quick
        else "full mode: ~20 min on 2 quiet cores (the four GEMMs of the grid alone take ~8 min; N=16,384 ~5 min)",
        flush=True,
    )
    head_lines, _ = bench_head_loss(plan, args.max_gb)
    step_lines: list[str] = []
    if not args.skip_step:
        from benchmarks.step import bench_step

        step_lines = bench_step(quick=args.quick)
        from benchmarks.objectives import section as objectives_section

        step_lines += ["", *objectives_section(quick=args.quick)]
    e2e_lines: list[str] = []
    if not args.skip_e2e:
        from benchmarks.trl_e2e import section as e2e_section

        e2e_lines = e2e_section(quick=args.quick)
    cache_lines: list[str] = []
    if not args.skip_cache:
        from benchmarks.cache import section

        cache_lines = section(Path(args.demo)).splitlines()
    elapsed = time.perf_counter() - t0
    header = [
        "# ekd benchmarks",
        "",
        f"Generated by `{command}` (`make bench`) on {started:%Y-%m-%d %H:%M} UTC in {elapsed / 60:.1f} min"
        + (" — **quick mode: small shapes, not the issue's grid**" if args.quick else "")
        + ".",
        "",
        *describe_machine(),
        f"- load average (1/5/15 min) at start: {load_start}; at end: {_load()} — timings are only comparable"
        " within one run, and noisy when the load exceeds the core count",
        "- every case in two fresh processes (`benchmarks.measure`): time as the `ekd` command runs (OpenMP's"
        " defaults; glibc keeps freed blocks below 1 GiB, `ekd.host_memory`, for every contender alike), memory with"
        " `MALLOC_MMAP_THRESHOLD_=131072` (freed buffers leave the resident set at once)",
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    generated = (
        "\n".join(header + head_lines + [""] + step_lines + [""] + e2e_lines + [""] + cache_lines) + "\n"
    )
    kept = out.read_text() if out.exists() else ""
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(merge_report(generated, kept))
    tmp.replace(out)
    print(f"wrote {out} ({elapsed / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
