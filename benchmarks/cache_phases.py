"""Where a cache build's time goes for a cheap teacher: the forward pass vs the build's own per-position work.

One process, the demo teacher shape (``llama-small``, 4 × 128, V=2,048, final norm scaled to a mean entropy of
2.5 nats as in ``benchmarks.cache``), one batch of B × T random ids; each phase is timed alone, the phases in
ABBA order for ``rounds`` rounds (median per phase):

    body          teacher body (no grad)
    head GEMM     the head at every position (the forward-only reference also makes it)
    statistics    softmax, entropy, log p(gold) per work slice (``softmax_entropy`` + ``logp_at``)
    RS draws      seeds, counter uniforms, blockwise inverse CDF, unique ids and counts (N=50)
    entries       ``batch_entries`` as the build runs it (head GEMM + statistics + draws + numpy hand-off)
    encoding      ``encode_records`` of the batch's records (the writer thread's numpy work)

    PYTHONPATH=src:. python -m benchmarks.cache_phases --rounds 5
    PYTHONPATH=src:. python -m benchmarks.cache_phases --rounds 5 --device cuda   # a GPU: the build's own slicing

On a GPU each phase is timed to a ``torch.cuda.synchronize``; the encoding phase runs on the host either way.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from benchmarks.measure import allocator_option, use_allocator


def measure(
    preset: str = "llama-small",
    vocab: int = 2048,
    b: int = 16,
    t: int = 128,
    rounds: int = 5,
    device: str = "cpu",
) -> dict:
    """phase → [seconds per round]; see the module docstring."""
    import torch

    from benchmarks.cache import _peak_teacher
    from ekd.data.collate import collate
    from ekd.data.packing import PackedBlocks
    from ekd.models.body import body_outputs
    from ekd.models.load import build_preset, model_body, output_head
    from ekd.teacher.cache import CacheWriter, make_signature
    from ekd.teacher.cache.encode import encode_records
    from ekd.teacher.cache.entries import batch_entries, build_chunk_rows, work_rows_for
    from ekd.teacher.cache.samples import make_record_batch
    from ekd.teacher.cache.signature import PACKING_RULE
    from ekd.teacher.signal import TargetSpec
    from ekd.teacher.targets import position_seeds, rs_target_from_probs
    from ekd.train.token_stats import logp_at, softmax_entropy

    dev = torch.device(device)
    teacher = build_preset(preset, vocab, eos_token_id=0, seed=0).to(dev).eval()
    head = output_head(teacher, vocab)
    g = torch.Generator().manual_seed(0)
    blocks = PackedBlocks(
        torch.randint(1, vocab, (b, t), generator=g), torch.ones(b, t, dtype=torch.bool), torch.arange(b)
    )
    batch = collate(blocks, torch.arange(b)).to(dev)
    with torch.no_grad():
        pre = model_body(teacher)(input_ids=batch.input_ids[:1]).last_hidden_state[0]  # (T, D) pre-norm
        _peak_teacher(teacher, head, pre.float(), target_entropy=2.5)
        hidden = body_outputs(teacher, batch).last_hidden_state  # (B, T, D)
    spec = TargetSpec("rs", 0, "renormalize", 50, 1.0, 0)
    labels = batch.labels
    rows = (labels != -100).reshape(-1).nonzero().squeeze(-1)  # (N,)
    gold = labels.reshape(-1)[rows]
    h = hidden.reshape(-1, hidden.shape[-1])[rows]  # (N, D)
    work = (
        work_rows_for(dev, vocab) or h.shape[0]
    )  # the build's slices on this device (whole chunks on a GPU)
    with torch.no_grad():  # as the build runs (no autograd graph, the statistics' blocked path)
        logits = head(h).float()  # (N, V)
        probs = [softmax_entropy(logits[s : s + work])[0] for s in range(0, h.shape[0], work)]
    seeds = position_seeds(0, batch.sample_ids[rows // t], rows % t)  # (N,)
    entries = batch_entries(
        hidden, head, labels, batch.sample_ids, spec, chunk_rows=build_chunk_rows(vocab), work_rows=work
    )

    def body():
        with torch.no_grad():
            body_outputs(teacher, batch)

    def stats():
        for s in range(0, h.shape[0], work):
            z = logits[s : s + work]
            _, lse, _ = softmax_entropy(z)
            logp_at(z, lse, gold[s : s + work])

    def draws():
        for i, s in enumerate(range(0, h.shape[0], work)):
            seeds_s = position_seeds(0, batch.sample_ids[rows[s : s + work] // t], rows[s : s + work] % t)
            rs_target_from_probs(probs[i], 50, seeds=seeds_s)

    def all_entries():
        batch_entries(
            hidden, head, labels, batch.sample_ids, spec, chunk_rows=build_chunk_rows(vocab), work_rows=work
        )

    signature = make_signature(
        teacher_id=f"preset:{preset}",
        teacher_revision="random",
        tokenizer_hash="random-ids",
        data_fingerprint=blocks.fingerprint(),
        block_length=t,
        packing=PACKING_RULE,
        vocab_size=vocab,
        target="rs",
        rs_samples=50,
    )
    with tempfile.TemporaryDirectory() as tmp:
        layout = CacheWriter(tmp, signature, b, shard_samples=b).layout

    def encoding():
        encode_records(layout, make_record_batch(layout, vocab, entries))

    del seeds
    phases = {
        "body": body,
        "head GEMM": lambda: head(h),
        "statistics": stats,
        "RS draws": draws,
        "entries": all_entries,
        "encoding": encoding,
    }
    times: dict[str, list[float]] = {k: [] for k in phases}

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    with torch.no_grad():
        for _ in range(rounds):
            for k in (*phases, *reversed(phases)):
                sync()
                t0 = time.perf_counter()
                phases[k]()
                sync()
                times[k].append(time.perf_counter() - t0)
    return {"times": times, "threads": torch.get_num_threads(), "tokens": b * t, "device": str(dev)}


def report(res: dict) -> list[str]:
    med = {k: statistics.median(v) for k, v in res["times"].items()}
    forward = med["body"] + med["head GEMM"]
    lines = [
        f"{res['tokens']:,} tokens per batch on {res['device']}, torch threads {res['threads']}, median of"
        f" {len(res['times']['body'])} runs per phase ({len(res['times']['body']) // 2} ABBA rounds).",
        "",
        "| phase | ms per batch | / forward (body + head GEMM) |",
        "|---|---:|---:|",
    ]
    lines += [f"| {k} | {1e3 * v:.1f} | {v / forward:.2f} |" for k, v in med.items()]
    bound = forward / (med["body"] + med["entries"])
    lines += [
        "",
        f"build / forward with encoding fully hidden ≤ {bound:.2f}; with encoding on the same cores"
        f" {forward / (med['body'] + med['entries'] + med['encoding']):.2f}",
    ]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    allocator_option(ap)
    args = ap.parse_args()
    use_allocator(args.default_malloc)
    print("\n".join(report(measure(rounds=args.rounds, device=args.device))))


if __name__ == "__main__":
    main()
