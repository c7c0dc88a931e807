"""Teacher-cache figures for docs/benchmarks.md: storage per position and per training token, gradient
fidelity of sparse targets (the RS-KD paper's Table 3 on synthetic peaked logits), and — when the demo has
run — the demo teacher's cache and its build throughput relative to a forward-only teacher pass.

    python -m benchmarks.cache                          # print the markdown section
    python -m benchmarks.cache --append docs/benchmarks.md

Every ratio is measured in this run, side by side.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from ekd.losses.divergences import forward_kl
from ekd.teacher.cache.measure import measure_bytes_per_position
from ekd.teacher.targets import position_seeds, rs_target, topk_target


def zipf_logits(rows: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """Peaked LM-like teacher logits: rank r gets −s·ln r with s ~ U(1.3, 2.4), ids permuted per row."""
    g = torch.Generator().manual_seed(seed)
    s = torch.empty(rows).uniform_(1.3, 2.4, generator=g)
    perm = torch.argsort(torch.rand(rows, vocab, generator=g), -1)  # (M, V) id of each rank
    log_rank = torch.log(torch.arange(1, vocab + 1, dtype=torch.float32))
    return torch.empty(rows, vocab).scatter_(1, perm, -s[:, None] * log_rank[None, :])


def _angle(a: torch.Tensor, b: torch.Tensor) -> float:
    cos = (a.double() * b.double()).sum() / (a.double().norm() * b.double().norm())
    return math.degrees(math.acos(float(cos.clamp(-1, 1))))


def gradient_fidelity(rows: int = 64, vocab: int = 2048, draws: int = 400, samples: int = 50) -> list[tuple]:
    """Angle and norm ratio between the full-KD gradient w.r.t. student logits, (q − p), and the sparse ones.

    The student is near its teacher (z_s = z_t + 0.25·ε). For RS the gradient q·Σt̂ − t̂ is averaged over
    ``draws`` independent draws of N=``samples``; top-12 is deterministic.
    """
    zt = zipf_logits(rows, vocab, seed=11)
    zs = zt + 0.25 * torch.randn(rows, vocab, generator=torch.Generator().manual_seed(12))
    q, p = torch.softmax(zs, -1), torch.softmax(zt, -1)
    g_full = (q - p).double()  # ∂ KL(p‖q) / ∂ z_s per row
    out = []
    acc = torch.zeros_like(g_full)
    unique = 0.0
    checkpoints = {1, 25, draws}
    for done, d in enumerate(range(draws), start=1):
        seeds = position_seeds(d + 1, torch.zeros(rows, dtype=torch.long), torch.arange(rows))
        t = rs_target(zt, samples, seeds=seeds).target
        g = q * t.probs.sum(-1, keepdim=True) - torch.zeros_like(q).scatter_add_(1, t.ids, t.probs)  # (M, V)
        acc += g.double()
        unique += float((t.probs > 0).sum()) / rows
        if done in checkpoints:
            mean = acc / done
            out.append(
                (
                    f"RS N={samples}, mean of {done} draw{'s' if done > 1 else ''}",
                    _angle(mean, g_full),
                    float(mean.norm() / g_full.norm()),
                )
            )
    for tail in ("renormalize", "ghost"):
        z = zs.clone().requires_grad_(True)
        from ekd.losses.sparse import sparse_forward_kl

        sparse_forward_kl(z, topk_target(zt, 12, tail)).sum().backward()
        out.append((f"top-12 {tail}", _angle(z.grad, g_full), float(z.grad.double().norm() / g_full.norm())))
    z = zs.clone().requires_grad_(True)
    forward_kl(z, zt).sum().backward()
    assert _angle(z.grad, g_full) < 1e-3  # the closed form above is the autograd gradient
    out.insert(0, ("(unique ids per position at N=50)", unique / draws, float("nan")))
    return out


def storage_rows() -> list[tuple[str, float, str]]:
    """(setting, bytes, unit) at N=50 on synthetic Zipf teacher logits, with the fixed-size alternatives."""
    rows = []
    for v in (151_936, 262_144):
        m = measure_bytes_per_position(vocab_size=v, rs_samples=50)
        rows.append(
            (
                f"RS N=50, all positions, V={v:,} (ids/position {m['entries_per_position']:.1f})",
                m["bytes_per_position"],
                "B/position",
            )
        )
    m = measure_bytes_per_position(vocab_size=151_936, rs_samples=50, position_fraction=0.2)
    rows.append(
        ("RS N=50, teacher-entropy top-20% positions, V=151,936", m["bytes_per_token"], "B/training token")
    )
    rows.append(("full fp16 logits, V=151,936", 2 * 151_936, "B/position"))
    rows.append(("top-64 (int32 id + fp16 prob)", 64 * 6, "B/position"))
    return rows


def demo_cache_rows(demo: Path) -> list[tuple[str, float, str]]:
    cache = demo / "cache"
    if not (cache / "manifest.json").is_file():
        return []
    from ekd.teacher.cache.reader import CacheReader

    info = CacheReader(cache).info()
    return [
        (
            f"demo teacher cache ({info['samples']} blocks, V={info['signature'].get('vocab_size')})",
            info["bytes_per_position"],
            "B/position",
        ),
        ("demo teacher cache, ids per position", info["entries_per_position"], "ids"),
    ]


def demo_build_throughput(demo: Path) -> float | None:
    """Cache build throughput / forward-only throughput of the demo teacher on the demo data (fresh build)."""
    if not (demo / "teacher" / "config.json").is_file():
        return None
    import tempfile

    from ekd.demo import FULL, student_config
    from ekd.teacher.cache_build import run_build

    with tempfile.TemporaryDirectory() as tmp:
        cfg = student_config(demo, FULL, "sekd3x", 100)
        cfg.teacher.cache_dir = tmp
        cfg.data.max_chars = 600_000  # a few hundred blocks are enough for a throughput ratio
        result = run_build(cfg, overwrite=True)
        return float(result.throughput_ratio)


def section(demo: Path) -> str:
    lines = ["## Teacher cache: storage and gradient fidelity", ""]
    lines += [
        "Storage at N=50 draws (synthetic Zipf teacher logits, mean entropy ≈ 2.2 nats; `ekd.teacher.cache.measure`):",
        "",
    ]
    lines += ["| setting | bytes | unit |", "|---|---:|---|"]
    for name, value, unit in storage_rows() + demo_cache_rows(demo):
        lines.append(f"| {name} | {value:,.1f} | {unit} |")
    ratio = demo_build_throughput(demo)
    if ratio is not None:
        lines += [
            "",
            f"Cache build throughput / teacher forward-only throughput (demo teacher, same data): **{ratio:.2f}**.",
        ]
    lines += [
        "",
        "Gradient fidelity w.r.t. student logits vs full KD (V=2,048, 64 positions, student near its teacher):",
        "",
    ]
    lines += ["| target | angle (°) | norm ratio |", "|---|---:|---:|"]
    for name, angle, norm in gradient_fidelity():
        if name.startswith("("):
            lines.append(f"| {name} | {angle:.1f} | |")
        else:
            lines.append(f"| {name} | {angle:.1f} | {norm:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--append", default="", help="append the section to this markdown file")
    parser.add_argument("--demo", default="runs/demo", help="demo directory (for the demo teacher's cache)")
    args = parser.parse_args()
    text = section(Path(args.demo))
    if args.append:
        path = Path(args.append)
        path.write_text(path.read_text().rstrip() + "\n\n" + text if path.is_file() else text)
    print(text)


if __name__ == "__main__":
    main()
