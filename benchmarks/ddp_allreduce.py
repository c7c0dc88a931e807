"""Step time of torch's DDP (``train.parallel=ddp``) vs the removed hand-written flat all-reduce, 2 gloo ranks.

The same job for both: a full-KD optimizer step (``ekd.train.trainer.forward_backward`` + AdamW) with 2
micro-batches of B rows per rank (T tokens, V vocabulary), student 2×256 and teacher 4×512 (Llama, random
weights, fp32, CPU, one thread per rank). The two contenders hold their own copy of the same student:

- ``ddp``: ``ekd.train.distributed.data_parallel`` — bucketed all-reduce overlapped with the last
  micro-batch's backward, ``no_sync`` on the first;
- ``flat``: the implementation ekd had before (re-created here only): after the last micro-batch every
  gradient is copied into one flat buffer, all-reduced once, and copied back (no overlap, +1 gradient copy).

Steps alternate between the contenders (ABBA order) so background load hits both alike; a step is timed on
rank 0 between two barriers (it includes waiting for the slower rank). The figure is the median of the
per-step ratios ddp / flat; the two students must stay equal (max |Δw| is reported).

    PYTHONPATH=src python -m benchmarks.ddp_allreduce [steps] [V] [T] [B]
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

STUDENT = {"hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 768}
TEACHER = {"hidden_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8, "intermediate_size": 1536}


def flat_all_reduce(params) -> None:
    """The removed ``sum_gradients``: Σ over ranks of every gradient through one flat buffer."""
    import torch
    import torch.distributed as dist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])  # (Σ numel,) the extra copy of the gradients
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def _worker(rank: int, init: str, out: str, steps: int, v: int, t: int, b: int) -> None:
    import torch

    from ekd.train.distributed import in_process_group, start_process_group

    torch.set_num_threads(1)
    start_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    in_process_group(_measure, rank, out, steps, v, t, b)


def _measure(rank: int, out: str, steps: int, v: int, t: int, b: int) -> None:
    import torch
    import torch.distributed as dist

    from benchmarks.step import _model
    from ekd.config import load_config
    from ekd.data.collate import Batch
    from ekd.losses.chunked import auto_chunk_rows
    from ekd.teacher.online import OnlineTeacher
    from ekd.train.distributed import Ranks, data_parallel
    from ekd.train.method_parts import MethodParts
    from ekd.train.trainer import forward_backward

    cfg = load_config(None, ["method=kd", "train.grad_accum_steps=2", "train.max_steps=1000"])
    parts = MethodParts.build(cfg, total_steps=1000)
    teacher = OnlineTeacher(_model(TEACHER, v, 1), v, auto_chunk_rows(v))
    students = {name: _model(STUDENT, v, 0).train() for name in ("ddp", "flat")}
    engine = data_parallel(students["ddp"], {}, Ranks(rank, 2, torch.device("cpu")))
    optimizers = {n: torch.optim.AdamW(s.parameters(), lr=1e-4) for n, s in students.items()}
    run_dir = Path(tempfile.mkdtemp(prefix="ekd-bench-ddp-"))

    def micro_batches(step: int) -> list:
        out = []
        for i in range(2):  # this rank's B rows of each global micro-batch of 2·B rows
            g = torch.Generator().manual_seed(1000 * step + i)
            ids = torch.randint(0, v, (2 * b, t + 1), generator=g)[rank * b : (rank + 1) * b]
            out.append(
                Batch(
                    input_ids=ids[:, :-1].contiguous(),
                    labels=ids[:, 1:].contiguous(),
                    attention_mask=torch.ones(b, t, dtype=torch.long),
                    sample_ids=torch.arange(rank * b, (rank + 1) * b),
                )
            )
        return out

    def step(name: str, i: int) -> float:
        student, opt = students[name], optimizers[name]
        batches = micro_batches(i)
        dist.barrier()
        t0 = time.perf_counter()
        forward_backward(
            batches, student, teacher, parts, i, cfg, v, None, run_dir, engine if name == "ddp" else None
        )
        if name == "flat":
            flat_all_reduce(list(student.parameters()))
        opt.step()
        opt.zero_grad(set_to_none=True)
        dist.barrier()
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {"ddp": [], "flat": []}
    for i in range(steps + 1):  # step 0: warm-up of both (allocator, optimizer state), not timed
        order = ("ddp", "flat") if i % 2 == 0 else ("flat", "ddp")
        for name in order:
            dt = step(name, i)
            if i > 0:
                times[name].append(dt)
    params = zip(students["ddp"].parameters(), students["flat"].parameters())
    max_dw = max(float((a - c).detach().abs().max()) for a, c in params)
    if rank == 0:
        ratios = [d / f for d, f in zip(times["ddp"], times["flat"])]
        result = {
            "steps": steps,
            "v": v,
            "t": t,
            "b": b,
            "ddp_s": statistics.median(times["ddp"]),
            "flat_s": statistics.median(times["flat"]),
            "ratio": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "max_dw": max_dw,
            "grad_numel": sum(p.numel() for p in students["flat"].parameters()),
        }
        Path(out).write_text(json.dumps(result))


def main(steps: int = 10, v: int = 8192, t: int = 128, b: int = 2) -> dict:
    import torch.multiprocessing as mp

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        mp.spawn(_worker, args=(os.path.join(tmp, "init"), out, steps, v, t, b), nprocs=2, join=True)
        result = json.loads(Path(out).read_text())
    print(
        f"DDP vs flat all-reduce, 2 gloo ranks, V={v:,} T={t} B={b}/rank × 2 micro-batches, {steps} steps: "
        f"ddp {result['ddp_s']:.3f} s, flat {result['flat_s']:.3f} s, ratio ddp/flat {result['ratio']:.3f} "
        f"(min {result['ratio_min']:.3f}, max {result['ratio_max']:.3f}); max |Δw| {result['max_dw']:.1e}"
    )
    return result


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
