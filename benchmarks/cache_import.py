"""``ekd cache import``: peak memory and wall time of importing 1× and 10× a synthetic SRC (flat memory).

    python -m benchmarks.cache_import --out /tmp/ekd-cache-import                 # ~5 min on 2 shared cores
    python -m benchmarks.cache_import --out /tmp/ekd-cache-import --src-root /work/main/src   # another ekd

The corpus: ``DOCS`` × scale JSONL documents of 20–140 random words over a word-level vocabulary of 258 ids
(EOS, UNK, 256 words), T=128, ``data.eval_fraction=0``. SRC: one Parquet row per document in the column layout
(``text``, ``input_ids``, ``target_token_ids``, ``logprobs``: K=8 entries per position, the next token among
them), written in row groups of 256 rows by a streaming writer. Each import runs in a fresh process under GNU
``/usr/bin/time -v`` (maximum resident set size, wall clock) with ``MALLOC_MMAP_THRESHOLD_=131072`` (as
``benchmarks.measure``), twice per scale: data in memory (``data.store_dir`` unset: the training documents and
blocks are held as the in-memory data path holds them) and through a token store built beforehand (documents
streamed, blocks memory-mapped), so the second row is the importer's own memory.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

DOCS = 2_000
K = 8
BLOCK_LENGTH = 128
WORDS = [f"w{i}" for i in range(256)]


def make_tokenizer(out: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    path = out / "tokenizer"
    if not (path / "tokenizer.json").exists():
        vocab = {"<eos>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
        backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok = PreTrainedTokenizerFast(
            tokenizer_object=backend, eos_token="<eos>", pad_token="<eos>", unk_token="<unk>"
        )
        tok.save_pretrained(str(path))
    return path


def make_data(out: Path, scale: int) -> tuple[Path, Path]:
    """(corpus JSONL, SRC Parquet) of ``scale`` × DOCS documents, written row group by row group."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus, src = out / f"corpus-{scale}x.jsonl", out / f"src-{scale}x.parquet"
    if corpus.exists() and src.exists():
        return corpus, src
    schema = pa.schema(
        [
            ("text", pa.string()),
            ("input_ids", pa.list_(pa.int64())),
            ("target_token_ids", pa.list_(pa.list_(pa.int64()))),
            ("logprobs", pa.list_(pa.list_(pa.float32()))),
        ]
    )
    rng = np.random.default_rng(scale)
    lps = np.log(0.5 ** np.arange(1, K + 1)).astype(np.float32).tolist()  # Σ p < 1, largest first
    with open(corpus, "w") as f, pq.ParquetWriter(src, schema) as writer:
        rows: list[dict] = []
        for _ in range(scale * DOCS):
            words = rng.integers(0, len(WORDS), rng.integers(20, 141))
            text = " ".join(WORDS[w] for w in words)
            f.write(json.dumps({"text": text}) + "\n")
            tokens = [int(w) + 2 for w in words] + [0]  # word ids, then EOS
            nxt = tokens[1:] + [0]
            ids = [[(t + j) % (len(WORDS) + 2) for j in range(K)] for t in nxt]  # the next token first
            rows.append(
                {"text": text, "input_ids": tokens, "target_token_ids": ids, "logprobs": [lps] * len(tokens)}
            )
            if len(rows) == 256:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                rows = []
        if rows:
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
    return corpus, src


def write_config(out: Path, corpus: Path, tokenizer: Path, scale: int) -> Path:
    import yaml

    cfg = {
        "run": {"output_dir": str(out / "runs")},
        "data": {"source": str(corpus), "block_length": BLOCK_LENGTH, "eval_fraction": 0.0},
        "model": {
            "tokenizer": str(tokenizer),
            "student": "preset:llama-micro",
            "teacher": "preset:llama-tiny",
        },
        "method": {"target": "topk", "topk": K},
        "log": {"progress": False, "tensorboard": False},
    }
    path = out / f"config-{scale}x.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def timed(command: list[str], src_root: str) -> dict:
    """Run ``command`` under ``/usr/bin/time -v``: peak RSS (MiB) and wall (s)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "PYTHONPATH": src_root}
    done = subprocess.run(["/usr/bin/time", "-v", *command], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", done.stderr).group(1)
    seconds = sum(float(p) * 60**i for i, p in enumerate(reversed(wall.split(":"))))
    return {"peak_rss_mib": round(rss / 1024), "wall_s": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--src-root", default=str(Path(__file__).resolve().parents[1] / "src"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer(args.out)
    results = []
    for scale in args.scales:
        corpus, src = make_data(args.out, scale)
        cfg = write_config(args.out, corpus, tokenizer, scale)
        store = args.out / "store"
        for mode, extra in (("memory", []), ("store", [f"data.store_dir={store}"])):
            if mode == "store":  # build the store first, in its own process: the import then only reads it
                prep = "from ekd.config import load_config; from ekd.train.prepare import prepare_data; import sys;"
                prep += f"prepare_data(load_config([{str(cfg)!r}], sys.argv[1:]), __import__('pathlib').Path({str(args.out)!r}))"
                subprocess.run(
                    [sys.executable, "-c", prep, *extra],
                    check=True,
                    env={**os.environ, "PYTHONPATH": args.src_root},
                )
            command = [sys.executable, "-m", "ekd", "-q", "cache", "import", str(src), *extra]
            command += [
                "--config",
                str(cfg),
                "--out",
                str(args.out / f"cache-{scale}x-{mode}"),
                "--overwrite",
            ]
            row = {
                "scale": scale,
                "data": mode,
                "src_mib": round(src.stat().st_size / 2**20, 1),
                **timed(command, args.src_root),
            }
            results.append(row)
            print(json.dumps(row), flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
