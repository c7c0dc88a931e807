"""Per-rank memory of DDP vs FSDP2 students and replicated vs sharded teachers: 2 gloo ranks on CPU.

    python -m benchmarks.scaling_memory [--out docs/benchmarks.md]

Four ``torchrun --nproc_per_node=2`` runs of ``ekd distill`` (2 steps, method kd, fp32): a
qwen2.5-0.5b-shape teacher and a llama-base student (random weights, BPE vocabulary of 320), under
``train.parallel`` ∈ {ddp, fsdp} × ``teacher.placement`` ∈ {replicate, shard}. Each rank logs the bytes it
holds after its first step (``ekd.train.memory``: local shards of teacher parameters, student parameters,
gradients, AdamW state) and two peaks of its resident set (VmHWM): up to that line (loading the models and
step 1; a model that ends up sharded is read by rank 0 alone, the other ranks receiving their shards,
``ekd.train.rank0_load``) and after it (reset through ``/proc/self/clear_refs``: steps 2–3, export,
evaluation). Prints a Markdown table; ``--out`` replaces its section in that file (or appends it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = [("ddp", "replicate"), ("ddp", "shard"), ("fsdp", "replicate"), ("fsdp", "shard")]
HELD = re.compile(
    r"rank (\d+) holds: teacher params ([\d.]+) MiB, student params ([\d.]+) MiB, grads ([\d.]+) MiB, "
    r"optimizer state ([\d.]+) MiB"
)


def _vm_hwm_mib() -> float:
    """This process's peak resident set since start or the last reset (Linux VmHWM), MiB."""
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


class _PeakAtFirstStep(logging.Handler):
    """On the trainer's per-rank bytes line (after step 1): note the peak so far, then reset the peak."""

    def __init__(self):
        super().__init__()
        self.setup_peak: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.setup_peak is None and "holds: teacher params" in record.getMessage():
            self.setup_peak = _vm_hwm_mib()
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set


def _rank_main(args: list[str]) -> int:
    """One rank: train, then print its two peak resident sets (MiB) as a JSON line."""
    from ekd.cli import main
    from ekd.train.distributed import in_process_group, start_process_group

    handler = _PeakAtFirstStep()
    logging.getLogger("ekd.train.trainer").addHandler(handler)
    start_process_group("gloo")
    code = in_process_group(main, ["distill", *args])
    peaks = {"rank": int(os.environ["RANK"]), "setup": handler.setup_peak, "train": _vm_hwm_mib()}
    print(json.dumps(peaks), file=sys.stderr, flush=True)
    return code


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_case(tmp: Path, corpus: Path, parallel: str, placement: str) -> dict[int, dict[str, float]]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny import tiny_overrides

    args = tiny_overrides(
        tmp,
        corpus,
        f"{parallel}-{placement}",
        **{
            "model.student": "preset:llama-base",
            "model.teacher": "preset:qwen2.5-0.5b-shape",
            "train.micro_batch_size": 1,
            "train.max_steps": 3,
            "data.max_eval_blocks": 1,
            "eval.teacher": False,
            "eval.teacher_metrics": False,
            "method.preset": "kd",
            "train.parallel": parallel,
            "teacher.placement": placement,
        },
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_port()}",
        __file__,
        "--rank",
        json.dumps(args),
    ]
    # a fixed mmap threshold: freed large buffers (the whole teacher, once sharded) leave the resident set
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MALLOC_MMAP_THRESHOLD_": "131072",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    rows: dict[int, dict[str, float]] = {}
    for line in out.stderr.splitlines():
        if m := HELD.search(line):
            r = int(m.group(1))
            rows.setdefault(r, {}).update(
                zip(("teacher", "params", "grads", "optim"), map(float, m.groups()[1:]))
            )
        elif line.startswith('{"rank"'):
            d = json.loads(line)
            rows.setdefault(d["rank"], {}).update(setup=d["setup"], peak=d["train"])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None)
    a = parser.parse_args()
    if a.rank is not None:
        return _rank_main(json.loads(a.rank))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny import write_corpus

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = write_corpus(Path(tmp) / "corpus", n_docs=24)
        for parallel, placement in CASES:
            results[(parallel, placement)] = _run_case(Path(tmp), corpus, parallel, placement)
    lines = [
        "| train.parallel | teacher.placement | rank | teacher params (MiB) | student params | grads | AdamW state "
        "| student state | peak RSS: load + step 1 (MiB) | peak RSS: steps 2–3 + export + eval (MiB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (parallel, placement), rows in results.items():
        for r, v in sorted(rows.items()):
            state = v["params"] + v["grads"] + v["optim"]
            lines.append(
                f"| {parallel} | {placement} | {r} | {v['teacher']:.1f} | {v['params']:.1f} | {v['grads']:.1f} "
                f"| {v['optim']:.1f} | {state:.1f} | {v['setup']:.0f} | {v['peak']:.0f} |"
            )

    def worst(key, parallel, placement):
        return max(
            (v[key] if key != "state" else v["params"] + v["grads"] + v["optim"])
            for v in results[(parallel, placement)].values()
        )

    teacher_ratio = worst("teacher", "ddp", "shard") / worst("teacher", "ddp", "replicate")
    state_ratio = worst("state", "fsdp", "replicate") / worst("state", "ddp", "replicate")
    peak_ratio = worst("peak", "ddp", "shard") / worst("peak", "ddp", "replicate")
    lines += [
        "",
        f"Largest rank: sharded / replicated teacher bytes = {teacher_ratio:.3f}; FSDP2 / DDP student state "
        f"(params + grads + AdamW) = {state_ratio:.3f}; peak RSS after step 1, sharded / replicated teacher "
        f"(DDP student) = {peak_ratio:.3f}.",
    ]
    table = "\n".join(lines)
    print(table)
    if a.out:
        heading = "## Scaling out: per-rank memory, 2 gloo ranks (CPU, fp32)"
        section = (
            f"{heading}\n\n"
            "qwen2.5-0.5b-shape teacher, llama-base student (random weights, vocabulary 320), method kd, "
            "3 steps, micro-batch 1 × 32 tokens per rank. Bytes: local shards after the first step "
            "(`ekd.train.memory`); peak RSS: the rank process's high-water mark (VmHWM, "
            "`MALLOC_MMAP_THRESHOLD_=131072`; Python, torch and data included), up to the end of step 1 and "
            "after it. A sharded model (FSDP2 student, `teacher.placement=shard`) is read by rank 0 alone; "
            "the other ranks build it on the meta device and receive their shards (`ekd.train.rank0_load`). "
            "Command: `python -m benchmarks.scaling_memory --out docs/benchmarks.md`.\n\n" + table + "\n"
        )
        path = Path(a.out)
        text = path.read_text() if path.is_file() else ""
        if heading in text:  # replace the section, up to the next one
            start = text.index(heading)
            end = text.find("\n## ", start + len(heading))
            text = text[:start] + section + (text[end:] if end >= 0 else "")
        else:
            text += "\n" + section
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
