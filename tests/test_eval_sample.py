"""An eval set is ``data.max_eval_blocks`` blocks spread evenly over its packed pool (ekd.data.eval_sample)."""

from __future__ import annotations

import pytest
import torch

from ekd.data import Document, pack_documents, pack_splits
from ekd.data.eval_sample import EVAL_POOL, spread_blocks, spread_indices
from test_data import WORDS, word_tok  # noqa: F401 — the module fixture


@pytest.mark.parametrize("n, k", [(10, 3), (7, 7), (100, 48), (1536, 48), (5, 9), (33, 32), (4, 0)])
def test_spread_indices_take_the_middle_of_k_equal_stretches(n: int, k: int) -> None:
    rows = spread_indices(n, k).tolist()
    if k == 0 or k >= n:
        assert rows == list(range(n))
        return
    assert len(rows) == k and rows == sorted(set(rows)) and rows[0] >= 0 and rows[-1] < n
    for i, r in enumerate(rows):  # the middle of stretch i = [i·n/k, (i+1)·n/k), rounded down
        assert int(i * n / k) <= r < (i + 1) * n / k and r == int((i + 0.5) * n / k)
    assert spread_indices(10, 3).tolist() == [1, 5, 8]


def _docs(lengths: list[int]) -> list[Document]:
    """Documents of the given word counts, each word from WORDS (no EOS inside)."""
    return [
        Document(" ".join(WORDS[(d + j) % len(WORDS)] for j in range(n)), doc_id=str(d))
        for d, n in enumerate(lengths)
    ]


def _documents_by_hand(pool, rows: list[int]) -> int:
    """Documents with a target (not in column 0) in blocks ``rows``, walking the pool's token stream."""
    doc, seen = -1, set()
    for b in range(len(pool)):
        for t in range(pool.block_length):
            doc += int(pool.document_starts[b, t])
            if b in rows and t > 0 and pool.target_mask[b, t]:
                seen.add(doc)
    return len(seen)


def test_a_long_first_document_no_longer_fills_the_eval_budget(word_tok) -> None:  # noqa: F811
    """The demo's case: one long document first (json/encoder.py), then many short ones. The first k blocks
    are the long document alone; k blocks spread over the pool reach the short ones too, and count each
    document once — the long one, seen in several chosen blocks with others between, included."""
    docs = _docs([400] + [23] * 40)  # 401 + 40·24 = 1,361 tokens with their EOS
    k, t = 6, 16
    first = pack_documents(docs, word_tok, t, max_blocks=k)
    assert first.num_documents == 1  # the old rule: the budget is the long document
    pool = pack_documents(docs, word_tok, t, max_blocks=k * EVAL_POOL)
    assert len(pool) == 1361 // t  # all of it: the pool is larger than the set
    rows = spread_indices(len(pool), k).tolist()
    scored = spread_blocks(pool, k, "eval")
    assert len(scored) == k and scored.sample_ids.tolist() == list(range(k))
    assert torch.equal(scored.input_ids, pool.input_ids[rows])
    assert torch.equal(scored.target_mask, pool.target_mask[rows])
    assert scored.num_documents == _documents_by_hand(pool, rows) > 3
    assert (
        sum(1 for r in rows if r < 401 // t) >= 2
    )  # the long document is in two chosen blocks, counted once


def test_pack_splits_spreads_eval_sets_and_keeps_train_whole(word_tok) -> None:  # noqa: F811
    docs = _docs([400] + [23] * 40)
    packed = pack_splits({"train": docs, "eval": docs}, word_tok, 16, max_eval_blocks=6)
    assert len(packed["train"]) == 1361 // 16 and len(packed["eval"]) == 6
    assert packed["eval"].num_documents > 3
    assert len(pack_splits({"eval": docs}, word_tok, 16, max_eval_blocks=0)["eval"]) == 1361 // 16  # 0 = all
    small = pack_splits({"eval": docs[1:3]}, word_tok, 16, max_eval_blocks=6)["eval"]  # under the cap: whole
    assert len(small) == 3 and small.documents is None


def test_a_set_longer_than_its_pool_says_it_goes_on(word_tok, caplog) -> None:  # noqa: F811
    """Try-out 11: a set longer than EVAL_POOL × k blocks is sampled from its first blocks only; the log line
    said 'of its 64 blocks' as if that were the whole set."""
    import logging

    docs = _docs([23] * 200)  # 4,800 tokens: 300 blocks of 16, more than the pool of 2 × 32 = 64
    with caplog.at_level(logging.INFO, logger="ekd.data"):
        pack_splits({"eval": docs}, word_tok, 16, max_eval_blocks=2)
    assert (
        "eval: scoring 2 of its first 64 blocks (the set goes on: 32 × data.max_eval_blocks are read)"
        in caplog.text
    )
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ekd.data"):
        pack_splits({"eval": docs[:20]}, word_tok, 16, max_eval_blocks=2)  # 30 blocks: the whole set
    assert "eval: scoring 2 of its 30 blocks, spread evenly" in caplog.text
