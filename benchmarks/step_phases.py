"""Phase-by-phase times of the `kd`, `sekd` and `sekd3x` steps, measured side by side in one process.

The step benchmark's shapes (``benchmarks.step``: student 2 × 256, teacher 4 × 512, Llama, random weights, fp32,
one micro-batch of B × T tokens with B·(T−1) labels, the trainer's AdamW). Every contender gets its own copy of the same student and its own
optimizer; ``sekd3x`` reads RS N=50 targets from a cache written once beforehand from the same teacher (its
step holds no teacher model: the teacher's phases are the cache's decoding). The contenders' steps alternate in
ABBA order (kd, sekd, sekd3x, sekd3x, sekd, kd) for ``rounds`` rounds after one warm-up step each, so the load of
a shared machine falls alike on all of them; ratios are taken per round and reported as median [min, max].

Phases are timed by wrapping the functions the step calls (wall time, inclusive; "KD head" excludes the teacher
head it calls, "step rest" is selection, scores, bookkeeping and everything not wrapped):

    teacher body       ekd.teacher.online.body_outputs (no grad)
    teacher stats      token_stats in the online teacher (teacher-side statistics over all N rows)
    cache read         CacheTeacher.signal (sekd3x: decoding the cached rows)
    student body fwd   ekd.train.step.student_hidden
    student stats      token_stats in the step (one N-row student head GEMM + entropy)
    teacher head       DenseTarget.logits (teacher head at the KD rows)
    KD head            kd_loss_sum minus the teacher head: student logits, closed-form gradient, both GEMMs
    CE head            ce_loss_sum
    backward           loss.backward() (student body; the heads' gradients were computed in their forward)
    optimizer          AdamW step + zero_grad

    PYTHONPATH=src:. python -m benchmarks.step_phases --v 32768 --b 4 --t 512 --rounds 3 [--threads 1]

On a machine shared with other jobs, ``--threads 1`` keeps OpenMP barriers from stalling a step whenever one
of its threads is preempted, so the ratios scatter far less than with every core.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

from benchmarks.measure import allocator_option, use_allocator

ORDER = ("kd", "sekd", "sekd3x")
PHASES = (
    "teacher body",
    "teacher stats",
    "cache read",
    "student body fwd",
    "student stats",
    "teacher head",
    "KD head",
    "CE head",
    "backward",
    "optimizer",
    "step rest",
)


@contextmanager
def phase_timers(acc: dict[str, float]):
    """Wrap the step's phases with wall-clock timers adding into ``acc`` (seconds, inclusive)."""
    import torch

    import ekd.teacher.online as online
    import ekd.train.step as step
    from ekd.losses.targets import DenseTarget
    from ekd.teacher.cache.source import CacheTeacher

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                acc[name] += time.perf_counter() - t0

        return wrapper

    patches = [
        (online, "body_outputs", "teacher body"),
        (online, "token_stats", "teacher stats"),
        (CacheTeacher, "signal", "cache read"),
        (step, "student_hidden", "student body fwd"),
        (step, "token_stats", "student stats"),
        (DenseTarget, "logits", "teacher head"),
        (step, "kd_loss_sum", "KD head"),
        (step, "ce_loss_sum", "CE head"),
        (torch.Tensor, "backward", "backward"),
    ]
    saved = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in patches]
    try:
        for obj, attr, name in patches:
            setattr(obj, attr, timed(name, getattr(obj, attr)))
        yield
    finally:
        for obj, attr, fn in saved:
            setattr(obj, attr, fn)


def _contenders(v: int, b: int, t: int, out: str) -> dict:
    """method → (step function, phase accumulator); the same student weights, teacher and batch for all."""
    import torch

    from benchmarks.step import STUDENT, TEACHER, _model
    from benchmarks.trl_e2e import _blocks, _cache, _cache_teacher
    from ekd.config import load_config
    from ekd.data.collate import Batch
    from ekd.losses.chunked import auto_chunk_rows
    from ekd.teacher.online import OnlineTeacher
    from ekd.train.method_parts import MethodParts
    from ekd.train.optim import build_optimizer
    from ekd.train.trainer import forward_backward

    chunk = auto_chunk_rows(v)
    student0, teacher_model = _model(STUDENT, v, 0).train(), _model(TEACHER, v, 1)
    ids, labels = _blocks(v, b, t)  # (B, T); the last position has no label (the cache has no row there)
    batch = Batch(
        input_ids=ids, labels=labels, attention_mask=torch.ones_like(ids), sample_ids=torch.arange(b)
    )
    out_dir = Path(out)
    contenders = {}
    for method in ORDER:
        cached = method == "sekd3x"
        overrides = [f"method={method}", f"train.head_chunk_size={chunk}", "train.max_steps=100"]
        if cached:
            overrides += ["teacher.source=cache", f"teacher.cache_dir={out}/cache"]
        cfg = load_config(None, overrides)
        parts = MethodParts.build(cfg, total_steps=100)
        if cached:
            _cache(cfg, teacher_model, v, b, t, f"{out}/cache")  # RS N=50 rows of the same blocks
            source = _cache_teacher(f"{out}/cache")
        else:
            source = OnlineTeacher(teacher_model, v, chunk)
        student = copy.deepcopy(student0)
        optimizer = build_optimizer(list(student.named_parameters()), cfg)  # the trainer's AdamW (fused)
        acc: dict[str, float] = defaultdict(float)
        state = {"i": 0}

        def step(
            student=student, optimizer=optimizer, source=source, parts=parts, cfg=cfg, acc=acc, state=state
        ):
            if hasattr(source, "_memo"):
                source._memo.clear()  # every step decodes its rows from the cache, as a new batch would
            t0 = time.perf_counter()
            with phase_timers(acc):
                loss, *_ = forward_backward(
                    [batch], student, source, parts, state["i"], cfg, v, None, out_dir
                )
            t1 = time.perf_counter()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            t2 = time.perf_counter()
            acc["optimizer"] += t2 - t1
            state["i"] += 1
            return t2 - t0, float(loss)

        contenders[method] = (step, acc)
    return contenders


def measure(v: int, b: int, t: int, rounds: int) -> dict:
    """{'times': method → [step s per round], 'phases': method → {phase: mean s}, 'loss': method → first loss}."""
    import torch

    with tempfile.TemporaryDirectory(prefix="ekd-phases-") as out:
        contenders = _contenders(v, b, t, out)
        first = {m: contenders[m][0]()[1] for m in ORDER}  # warm-up: allocator, optimizer state
        for _, acc in contenders.values():
            acc.clear()
        times: dict[str, list[float]] = {m: [0.0] * rounds for m in ORDER}
        for r in range(rounds):
            for m in (*ORDER, *reversed(ORDER)):
                times[m][r] += contenders[m][0]()[0] / 2  # each round: the mean of its two ABBA steps
        phases = {}
        for m, (_, acc) in contenders.items():
            p = {k: acc.get(k, 0.0) / (2 * rounds) for k in PHASES if k != "step rest"}
            p["KD head"] -= p["teacher head"]
            p["step rest"] = statistics.mean(times[m]) - sum(p.values())
            phases[m] = p
    return {"times": times, "phases": phases, "loss": first, "threads": torch.get_num_threads()}


def report(res: dict, v: int, b: int, t: int) -> list[str]:
    """Markdown: per-method step time, ratios to kd (median [min, max] over rounds) and the phase table."""
    times, phases = res["times"], res["phases"]
    rounds = len(times["kd"])

    def ratio(m: str) -> str:
        rs = [a / k for a, k in zip(times[m], times["kd"], strict=True)]
        return f"**{statistics.median(rs):.2f}** [{min(rs):.2f}, {max(rs):.2f}]"

    lines = [
        f"V={v:,}, B={b} × T={t} = N={b * t:,} tokens, {rounds} ABBA rounds (2 steps of each method per round), "
        f"torch threads {res['threads']}.",
        "",
        "| phase (s per step) | " + " | ".join(ORDER) + " |",
        "|---|" + "---:|" * len(ORDER),
    ]
    for k in PHASES:
        if all(phases[m][k] == 0 for m in ORDER):  # a phase none of the steps runs
            continue
        lines.append(f"| {k} | " + " | ".join(f"{phases[m][k]:.3f}" for m in ORDER) + " |")
    lines += [
        "| **step** (median over rounds) | "
        + " | ".join(f"**{statistics.median(times[m]):.3f}**" for m in ORDER)
        + " |",
        "| step / kd, median [min, max] | " + " | ".join(ratio(m) for m in ORDER) + " |",
        "| first loss | " + " | ".join(f"{res['loss'][m]:.6f}" for m in ORDER) + " |",
    ]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--v", type=int, default=32_768)
    ap.add_argument("--b", type=int, default=4)
    ap.add_argument("--t", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    allocator_option(ap)
    args = ap.parse_args()
    use_allocator(args.default_malloc)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    res = measure(args.v, args.b, args.t, args.rounds)
    print("\n".join(report(res, args.v, args.b, args.t)))


if __name__ == "__main__":
    main()
