"""Cost of isolated document attention vs packed: one full-KD optimizer step on the demo-size models.

Student ``preset:llama-tiny``, teacher ``preset:llama-small`` (the demo's shapes, random weights), BPE 2048,
the builtin corpus packed into B=16 blocks of T=128 tokens (the demo's micro-batch), fp32 on the default
device. The two modes run on the same batches, interleaved step by step so that background load hits both
alike; the figure is the median of the per-step time ratios isolated / packed.

    PYTHONPATH=src python -m benchmarks.document_attention [steps] [attn_implementation]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path


def main(steps: int = 20, attn: str = "sdpa") -> dict:
    import torch

    from ekd.config import load_config
    from ekd.data import BlockLoader
    from ekd.teacher.online import OnlineTeacher
    from ekd.train.method_parts import MethodParts
    from ekd.train.prepare import load_student, load_teacher, prepare_data, resolve_device
    from ekd.train.trainer import forward_backward

    run_dir = Path(tempfile.mkdtemp(prefix="ekd-docattn-"))
    overrides = [
        "model.student=preset:llama-tiny",
        "model.teacher=preset:llama-small",
        "model.tokenizer=train_bpe",
        "model.bpe_vocab_size=2048",
        f"model.attn_implementation={attn}",
        "data.max_chars=400000",
        "data.block_length=128",
        "train.micro_batch_size=16",
        "method=kd",
        f"train.max_steps={steps}",
        "train.warmup_steps=0",
    ]
    cfg = load_config(None, overrides)
    device = resolve_device("auto")
    data = prepare_data(cfg, run_dir)
    student = load_student(cfg, data, device).train()
    teacher = OnlineTeacher(load_teacher(cfg, data, device), data.vocab_size)
    parts = MethodParts.build(cfg, total_steps=steps)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    blocks = data.blocks["train"]
    loader = BlockLoader(blocks, cfg.train.micro_batch_size, seed=0)
    times: dict[str, list[float]] = {"isolated": [], "packed": []}

    def step(batch, i: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        forward_backward([batch], student, teacher, parts, i, cfg, data.vocab_size, None, run_dir)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for i in range(steps + 1):
        isolated = loader.next_batch()
        packed = replace(isolated, position_ids=None)  # same rows, attention across documents
        order = [("isolated", isolated), ("packed", packed)]
        for mode, batch in order if i % 2 else order[::-1]:
            t = step(batch.to(device), i)
            if i > 0:  # step 0 warms up both paths
                times[mode].append(t)
    ratios = [a / b for a, b in zip(times["isolated"], times["packed"])]
    return {
        "device": str(device),
        "attn": attn,
        "steps": steps,
        "isolated_s": statistics.median(times["isolated"]),
        "packed_s": statistics.median(times["packed"]),
        "ratio_median": statistics.median(ratios),
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    print(main(int(args[0]) if args else 20, args[1] if len(args) > 1 else "sdpa"))
