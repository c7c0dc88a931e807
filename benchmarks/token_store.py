"""Token store (``data.store_dir``): peak memory and wall time of preparing 1× and 10× the demo corpus, with
the store and in memory, and the speed of reading training batches from the store vs from memory.

    python -m benchmarks.token_store --out /tmp/ekd-token-store          # ~10 min on 2 shared cores
    python -m benchmarks.token_store --out /tmp/ekd-token-store --scales 1 2   # quicker
    MALLOC_MMAP_THRESHOLD_=131072 /usr/bin/time -v python -m benchmarks.token_store tokenize \
        --corpus /tmp/ekd-token-store/corpus-10x.jsonl --tokenizer /tmp/ekd-token-store/tokenizer  # tokenizer alone

The demo corpus is the demo's training text (``pystdlib``, ``data.max_chars=4,000,000``) written to a JSONL
file; 10× is ten copies of it (each document prefixed with its copy number, so no two are equal). Both are
tokenized with one byte-level BPE (vocab 2,048, trained on 1×) and packed as the demo packs (T=128,
``data.max_eval_blocks=48``). Every prepare runs in a fresh subprocess under GNU ``/usr/bin/time -v``
(maximum resident set size, wall clock) with ``MALLOC_MMAP_THRESHOLD_=131072``, as every case of
``benchmarks.measure`` (large freed buffers leave the resident set at once instead of fragmenting the heap). Reading: ``BlockLoader.next_batch`` (shuffled, 16 × 128 tokens:
gather, shift, position ids) over the 1× training blocks, memory-mapped from the store (warm page cache)
vs the same blocks as in-memory tensors, alternated in one process; tokens/s of the best of 21 rounds of
100 batches each (and the ratio of the medians).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEMO_CHARS = 4_000_000
BLOCK_LENGTH = 128
MAX_EVAL_BLOCKS = 48


def make_corpora(out: Path, scales: list[int]) -> tuple[dict[int, Path], Path]:
    """The JSONL corpora (scale → path) and the saved tokenizer directory."""
    from ekd.data import pystdlib_splits, train_bpe_tokenizer

    docs = pystdlib_splits(max_chars=DEMO_CHARS, names=["train"])["train"]
    corpora = {}
    for scale in scales:
        path = out / f"corpus-{scale}x.jsonl"
        if not path.exists():
            with open(path, "w") as f:
                for copy in range(scale):
                    for doc in docs:
                        f.write(json.dumps({"text": f"# copy {copy}\n{doc.text}"}) + "\n")
        corpora[scale] = path
    tokenizer = out / "tokenizer"
    if not (tokenizer / "tokenizer.json").exists():
        train_bpe_tokenizer((d.text for d in docs), 2048, tokenizer)
    return corpora, tokenizer


def overrides(corpus: Path, tokenizer: Path, store: Path | None, run_dir: Path) -> list[str]:
    return [
        f"data.source={corpus}",
        f"data.block_length={BLOCK_LENGTH}",
        f"data.max_eval_blocks={MAX_EVAL_BLOCKS}",
        f"data.store_dir={store or ''}",
        f"model.tokenizer={tokenizer}",
        "model.student=preset:llama-micro",
        "model.teacher=preset:llama-tiny",
        f"run.output_dir={run_dir.parent}",
        f"run.name={run_dir.name}",
    ]


def prepare(args: argparse.Namespace) -> None:
    """Child: prepare the data once and print the training tokens."""
    from ekd.config import load_config
    from ekd.train.prepare import prepare_data

    store = Path(args.store) if args.store else None
    cfg = load_config(overrides=overrides(Path(args.corpus), Path(args.tokenizer), store, Path(args.run_dir)))
    data = prepare_data(cfg, cfg.run_dir)
    train = data.blocks["train"]
    print(json.dumps({"blocks": len(train), "tokens": len(train) * train.block_length}))


def tokenize_only(args: argparse.Namespace) -> None:
    """Child: tokenize the corpus and keep nothing (the tokenizer's own memory footprint); print the tokens."""
    from ekd.config import DataConfig
    from ekd.data.boundary import DocumentBoundary
    from ekd.data.documents import iter_documents
    from ekd.data.packing import token_chunks
    from ekd.models.load import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    boundary = DocumentBoundary("eos", None, tokenizer.eos_token_id, tokenizer.eos_token_id)
    tokens = sum(len(c) for c in token_chunks(iter_documents(args.corpus, DataConfig()), tokenizer, boundary))
    print(json.dumps({"blocks": 0, "tokens": tokens}))


def timed_prepare(corpus: Path, tokenizer: Path, store: Path | None, run_dir: Path) -> dict:
    """Run :func:`prepare` in a subprocess under ``/usr/bin/time -v``: peak RSS (MiB), wall (s), tokens."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "benchmarks.token_store", "prepare"]
    cmd += ["--corpus", str(corpus), "--tokenizer", str(tokenizer), "--run-dir", str(run_dir)]
    cmd += ["--store", str(store or "")]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}  # as benchmarks.measure: freed buffers leave RSS
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", done.stderr).group(1)
    seconds = sum(float(x) * 60**i for i, x in enumerate(reversed(wall.split(":"))))
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"rss_mib": rss / 1024, "wall_s": seconds, **result}


def read_speed(
    corpus: Path, tokenizer: Path, store: Path, run_dir: Path, batches: int = 100, rounds: int = 21
) -> dict:
    """Tokens/s of ``BlockLoader.next_batch`` over the stored blocks vs the same blocks in memory: rounds of
    ``batches`` batches, alternated; the best round of each (the least disturbed by other processes)."""
    import torch

    from ekd.config import load_config
    from ekd.data import BlockLoader, PackedBlocks
    from ekd.train.prepare import prepare_data

    cfg = load_config(overrides=overrides(corpus, tokenizer, store, run_dir))
    stored = prepare_data(cfg, cfg.run_dir).blocks["train"]
    rows = torch.arange(len(stored))
    memory = PackedBlocks(
        input_ids=stored.input_ids[rows],
        target_mask=stored.target_mask[rows],
        sample_ids=stored.sample_ids.clone(),
        document_starts=stored.document_starts[rows],
        boundary_mask=stored.boundary_mask[rows],
        document_attention=stored.document_attention,
        boundary=stored.boundary,
    )
    assert memory.fingerprint() == stored.fingerprint()
    speeds: dict[str, list[float]] = {"store": [], "memory": []}
    for _ in range(rounds):
        for name, blocks in (("store", stored), ("memory", memory)):
            loader = BlockLoader(blocks, 16, seed=0)
            t0 = time.perf_counter()
            for _ in range(batches):
                loader.next_batch()
            speeds[name].append(batches * 16 * BLOCK_LENGTH / (time.perf_counter() - t0))
    best = {k: max(v) for k, v in speeds.items()}
    median = {k: statistics.median(v) for k, v in speeds.items()}
    return {
        **{f"{k}_tokens_per_s": v for k, v in best.items()},
        "ratio": best["store"] / best["memory"],
        "median_ratio": median["store"] / median["memory"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    for command in ("prepare", "tokenize"):
        child = sub.add_parser(command)
        for flag in ("--corpus", "--tokenizer", "--run-dir", "--store"):
            child.add_argument(flag, default="")
    parser.add_argument("--out", default="/tmp/ekd-token-store")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    args = parser.parse_args()
    if args.command in ("prepare", "tokenize"):
        (prepare if args.command == "prepare" else tokenize_only)(args)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpora, tokenizer = make_corpora(out, args.scales)
    rows = []
    for scale, corpus in corpora.items():
        store = out / f"store-{scale}x"
        for mode, where in (("memory", None), ("store: build", store), ("store: reuse", store)):
            figures = timed_prepare(corpus, tokenizer, where, out / "runs" / f"{scale}x-{mode[:5]}")
            rows.append({"scale": scale, "mode": mode, "chars": os.path.getsize(corpus), **figures})
            print(json.dumps(rows[-1]), flush=True)
    speed = read_speed(
        corpora[min(corpora)], tokenizer, out / f"store-{min(corpora)}x", out / "runs" / "read"
    )
    print(json.dumps(speed), flush=True)
    print("\n| corpus | path | JSONL size | train tokens | peak RSS | wall |\n|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['scale']}× | {r['mode']} | {r['chars'] / 1e6:.1f} MB | {r['tokens']:,} | "
            f"{r['rss_mib']:.0f} MiB | {r['wall_s']:.1f} s |"
        )
    print(
        f"\nreading batches: store {speed['store_tokens_per_s']:,.0f} tokens/s, in memory "
        f"{speed['memory_tokens_per_s']:,.0f} tokens/s, ratio {speed['ratio']:.2f} (of medians: "
        f"{speed['median_ratio']:.2f})"
    )


if __name__ == "__main__":
    main()
