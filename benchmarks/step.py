"""Step benchmark: one optimizer step of a small real pair through ``ekd.train`` (CE-only, full KD, SE-KD 20%).

Student 2 layers × 256, teacher 4 layers × 512 (Llama architecture, random weights), fp32 on CPU, one
micro-batch of B sequences of T tokens. A step = ``ekd.train.trainer.forward_backward`` (teacher signal,
student body, scores, selection, heads at the selected rows, backward) + AdamW step. Each case runs in a
fresh process (``benchmarks.measure``); time is the fastest of the measured steps after one warm-up step
(which also allocates the optimizer state), peak memory is above the models + optimizer state.

    python -m benchmarks.step '{"method": "sekd", "v": 32768, "t": 512, "b": 4}'

The training step is imported lazily: without ``ekd.train.step`` the report says so instead of failing.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

STUDENT = {"hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 768}
TEACHER = {"hidden_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8, "intermediate_size": 1536}


def _model(shape: dict, vocab: int, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, max_position_embeddings=4096, tie_word_embeddings=False, **shape)
    return LlamaForCausalLM(cfg)


def run(case: dict) -> dict:
    import torch

    from benchmarks.measure import measure_call
    from ekd.config import load_config
    from ekd.data.collate import Batch
    from ekd.teacher.online import OnlineTeacher
    from ekd.train.optim import build_optimizer
    from ekd.train.step import MethodParts
    from ekd.train.trainer import forward_backward

    method, v, t, b = case["method"], case["v"], case["t"], case["b"]
    from ekd.losses.chunked import auto_chunk_rows

    path, chunk = case.get("loss_path", "chunked"), case.get("chunk") or auto_chunk_rows(v)
    cfg = load_config(
        None,
        [
            f"method={method}",
            f"train.loss_path={path}",
            f"train.head_chunk_size={chunk}",
            "train.max_steps=100",
        ],
    )
    parts = MethodParts.build(cfg, total_steps=100)
    student = _model(STUDENT, v, 0).train()
    teacher = OnlineTeacher(_model(TEACHER, v, 1), v, chunk) if parts.needs_teacher else None
    optimizer = build_optimizer(list(student.named_parameters()), cfg)  # the trainer's AdamW (fused)
    g = torch.Generator().manual_seed(2)
    input_ids = torch.randint(0, v, (b, t + 1), generator=g)
    batch = Batch(
        input_ids=input_ids[:, :-1].contiguous(),
        labels=input_ids[:, 1:].contiguous(),  # already shifted: labels[:, i] is the token after input i
        attention_mask=torch.ones(b, t, dtype=torch.long),
        sample_ids=torch.arange(b),
    )
    run_dir = Path(tempfile.mkdtemp(prefix="ekd-bench-"))
    state = {"i": 0, "loss": float("nan")}

    def step():
        loss, *_ = forward_backward([batch], student, teacher, parts, state["i"], cfg, v, None, run_dir)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state["i"] += 1
        state["loss"] = loss

    step()  # warm-up: allocator, optimizer state
    out = measure_call(step, repeats=case.get("repeats", 2), min_seconds=case.get("min_seconds", 3.0))
    return {**out, "loss": state["loss"], "tokens": b * t}


def _available() -> str | None:
    try:
        import ekd.train.step  # noqa: F401
        import ekd.train.trainer  # noqa: F401
    except ImportError as e:
        return f"step benchmark: not available (ekd.train.step missing: {e})"
    return None


def bench_step(quick: bool = False) -> list[str]:
    """Markdown for the step and cost-growth sections (or one line saying why they are missing)."""
    from benchmarks.measure import run_case

    missing = _available()
    if missing:
        return ["## Training step", "", missing]
    if quick:
        v0, t, b0 = 8192, 256, 2
        n_batches, vocabs = [4], []
    else:
        v0, t, b0 = 32_768, 512, 4
        n_batches, vocabs = [8], [131_072]
    print("step:", flush=True)
    results: dict[tuple, dict] = {}

    def case(method: str, v: int, b: int, path: str = "chunked") -> dict:
        key = (method, v, b, path)
        if key not in results:
            r = run_case(
                "benchmarks.step", {"method": method, "v": v, "t": t, "b": b, "loss_path": path}, 900
            )
            results[key] = r
            desc = f"{method} V={v} N={b * t} {path}"
            print(
                f"  {desc:<45} " + (r.get("error") or f"{r['time_s']:.2f} s  {r['peak_mb']:.0f} MB"),
                flush=True,
            )
        return results[key]

    methods = [("ce", "chunked"), ("kd", "reference"), ("kd", "chunked"), ("sekd", "chunked")]
    base = {(m, p): case(m, v0, b0, p) for m, p in methods}
    kd, ce = base[("kd", "chunked")], base[("ce", "chunked")]
    lines = [
        "## Training step (one optimizer step)",
        "",
        f"Student 2×256, teacher 4×512 (Llama, random weights), V={v0:,}, B={b0} × T={t} = N={b0 * t:,} tokens, fp32,"
        " one micro-batch, AdamW, `train.head_chunk_size` = `auto_chunk_rows(V)`. `sekd` = student-entropy top"
        " 20% per sequence, dense forward KL, teacher and student heads applied at the selected rows only.",
        "",
        "| method | loss path | time (s) | time / full KD | time / CE-only | peak (MB) | peak / full KD |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for (m, p), r in base.items():
        if "error" in r:
            lines.append(f"| {m} | {p} | {r['error']} | | | | |")
            continue
        lines.append(
            f"| {m} | {p} | {_f(r['time_s'])} | {_f(_div(r, kd, 'time_s'))} | {_f(_div(r, ce, 'time_s'))} | "
            f"{_f(r['peak_mb'], 0)} | {_f(_div(r, kd, 'peak_mb'))} |"
        )
    sekd = base[("sekd", "chunked")]
    r_time, r_mem = _div(sekd, kd, "time_s"), _div(sekd, kd, "peak_mb")
    if r_time is not None and "error" not in ce:
        gap = (
            (sekd["time_s"] - ce["time_s"]) / (kd["time_s"] - ce["time_s"])
            if kd["time_s"] > ce["time_s"]
            else None
        )
        lines += [
            "",
            f"Target: `sekd` step ≤ 0.6 × full-KD step time → {_f(r_time)} "
            f"({'met' if r_time <= 0.6 else '**missed**'}); peak memory ratio {_f(r_mem)} "
            f"({'lower' if r_mem is not None and r_mem < 1 else '**not lower**'}). "
            f"`sekd` closes {_f(None if gap is None else 1 - gap)} of the gap from full KD to the CE-only floor"
            f" (CE-only = {_f(_div(ce, kd, 'time_s'))} × full KD).",
        ]
    lines += [
        "",
        "## Cost growth of the step (ekd chunked path)",
        "",
        "| method | N (tokens) | V | time (s) | time / base | time per token / base | peak (MB) | peak / base |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in ("sekd",) if quick else ("kd", "sekd"):
        ref = base[(m, "chunked")]
        rows = [(b0, v0)] + [(b, v0) for b in n_batches] + [(b0, v) for v in vocabs]
        for b, v in sorted(set(rows), key=lambda x: (x[1], x[0])):
            r = ref if (b, v) == (b0, v0) else case(m, v, b)
            if "error" in r or "error" in ref:
                lines.append(f"| {m} | {b * t:,} | {v:,} | {r.get('error', '')} | | | | |")
                continue
            per_token = (r["time_s"] / (b * t)) / (ref["time_s"] / (b0 * t))
            lines.append(
                f"| {m} | {b * t:,} | {v:,} | {_f(r['time_s'])} | {_f(_div(r, ref, 'time_s'))} | {_f(per_token)} | "
                f"{_f(r['peak_mb'], 0)} | {_f(_div(r, ref, 'peak_mb'))} |"
            )
    return lines


def _div(a: dict, b: dict, key: str) -> float | None:
    if "error" in a or "error" in b or not b.get(key):
        return None
    return a[key] / b[key]


def _f(x: float | None, digits: int = 2) -> str:
    return "—" if x is None or x != x else f"{x:.{digits}f}"


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))))
