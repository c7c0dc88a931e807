"""Data: sources → documents → tokens packed into blocks → shifted-label batches.

Typical use:

    splits = load_splits(cfg)  # name → list[Document]
    boundary = document_boundary(cfg.data, tokenizer, models)  # BOS/EOS convention (data.separator)
    blocks = pack_splits(splits, tokenizer, cfg.data.block_length, cfg.data.max_eval_blocks, boundary,
                         cfg.data.document_attention)
    loader = BlockLoader(blocks["train"], cfg.train.micro_batch_size, seed=cfg.run.seed)
    batch = loader.next_batch()  # Batch: input_ids, labels (already shifted), attention_mask, sample_ids
"""

from ekd.data.boundary import DocumentBoundary, resolve_boundary
from ekd.data.build import cap_chars, document_boundary, load_splits, pack_splits
from ekd.data.collate import IGNORE_INDEX, Batch, collate, shift_labels
from ekd.data.document import Document
from ekd.data.documents import filter_documents, load_documents
from ekd.data.loader import BlockLoader, iter_eval
from ekd.data.packing import PackedBlocks, pack_documents
from ekd.data.pystdlib import PYSTDLIB_SPLITS, pystdlib_splits
from ekd.data.split import held_out_keys, stable_unit
from ekd.data.tokenizer import EOS_TOKEN, tokenizer_hash, train_bpe_tokenizer

__all__ = [
    "EOS_TOKEN",
    "IGNORE_INDEX",
    "PYSTDLIB_SPLITS",
    "Batch",
    "BlockLoader",
    "Document",
    "DocumentBoundary",
    "PackedBlocks",
    "cap_chars",
    "collate",
    "document_boundary",
    "filter_documents",
    "held_out_keys",
    "iter_eval",
    "load_documents",
    "load_splits",
    "pack_documents",
    "pack_splits",
    "pystdlib_splits",
    "resolve_boundary",
    "shift_labels",
    "stable_unit",
    "tokenizer_hash",
    "train_bpe_tokenizer",
]
