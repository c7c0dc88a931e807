"""``ekd cache import``: teacher top-K log-probabilities from another tool → an ekd top-K cache.

    ekd cache import teacher-logprobs.parquet --config run.yaml --out runs/imported-cache
    ekd distill run.yaml teacher.source=cache teacher.cache_dir=runs/imported-cache

The config's data settings decide the training blocks exactly as for ``ekd cache`` (tokenizer, separator,
block length, packing, eval hold-out). Every training document is looked up in SRC by its text (the
``--text-column``); SRC's tokens for it must equal ours — ``[BOS] text [EOS]`` as the config frames a
document, SRC may lack the final EOS — or the import stops with one line naming the SRC row and the first
differing position. Each document's rows (:mod:`ekd.teacher.cache.logprob_rows`) are then laid onto the
packed stream: the target of block position t (a token of document d at offset j) is SRC's row j of d.
Positions SRC has no row for are not cached (training skips them, as with any partial cache).

Targets are those the native top-K cache stores (``ekd.teacher.targets.topk_target``) from the K largest
log-probabilities ℓ_K of the full softmax at τ=1: ``renormalize`` t = softmax(ℓ_K/τ) (exact at any τ: the
top K at τ are the top K at 1, and their ratios need no partition function); ``ghost`` t = exp ℓ_K with tail
1 − Σ_K exp ℓ_K (the mass the K miss); ``to_gold`` that tail added to the gold token. ``ghost`` and
``to_gold`` need τ = 1 (the tail at τ ≠ 1 needs the whole distribution).

Teacher statistics are estimates from the K entries (the full distribution is not in SRC): entropy
−Σ_K p log p − r log r with r = 1 − Σ_K p (the tail as one token: a lower bound of H(p)); log p(gold) exact
when the gold token is in the top K, else log min(r, min_K p) (an upper bound). Methods that select by
teacher statistics use these estimates.

The signature is the one ``ekd cache`` writes for the config, with ``teacher_revision`` =
``import-sha256:<sha256 of SRC>`` in place of a weights hash: training refuses the cache for another
tokenizer, data, block length, target, K, tail or τ exactly as it refuses a native cache.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ekd.config import Config, ConfigError
from ekd.io import file_sha256
from ekd.teacher.cache.format import CacheError
from ekd.teacher.cache.logprob_rows import Columns, first_mismatch, read_table, resolve_columns, source_row
from ekd.teacher.cache.signature import cache_signature, check_cacheable
from ekd.teacher.cache.writer import CacheWriter

log = logging.getLogger(__name__)
WRITE_BATCH = 64  # blocks per add_batch


def check_importable(cfg: Config) -> None:
    """Refuse configs an imported top-K cache cannot serve (one line naming the key)."""
    check_cacheable(cfg)
    m = cfg.method
    if m.target != "topk":
        raise ConfigError(
            f"method.target={m.target}: imported teacher logprobs give top-K targets; set method.target=topk"
        )
    if m.temperature != "constant":
        raise ConfigError(
            f"method.temperature={m.temperature}: an imported cache is made at one τ; use constant"
        )
    if m.topk_tail != "renormalize" and m.kd_temperature != 1.0:
        raise ConfigError(
            f"method.topk_tail={m.topk_tail} at method.kd_temperature={m.kd_temperature}: the tail at τ ≠ 1 needs "
            "the whole distribution; use method.kd_temperature=1 or method.topk_tail=renormalize"
        )
    if cfg.data.prompt_field:
        raise ConfigError("data.prompt_field: ekd cache import reads plain documents (data.text_field) only")


def topk_from_logprobs(
    logprobs: torch.Tensor, ids: torch.Tensor, k: int, tail: str, gold: torch.Tensor, tau: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The native top-K target from the K largest full-softmax log-probabilities.

    Args:
        logprobs: (M, K') fp32 log p at τ=1, largest first; ids (M, K') their token ids; K' ≥ k.
        tail: 'renormalize', 'ghost' or 'to_gold'; gold (M,) the gold ids; tau the KD temperature.

    Returns:
        ids (M, K) or (M, K+1) for to_gold, probs of the same shape, tail (M,) for ghost else None.
    """
    top, top_ids = logprobs[:, :k], ids[:, :k]  # (M, K)
    if tail == "renormalize":
        return top_ids, torch.softmax(top / tau, dim=-1), None
    p_k = top.exp()  # (M, K)
    rest = (1.0 - p_k.sum(-1)).clamp(min=0.0)  # (M,) mass outside the K ids
    if tail == "ghost":
        return top_ids, p_k, rest
    is_gold = top_ids == gold[:, None]  # (M, K)
    probs = p_k + is_gold * rest[:, None]
    extra = torch.where(is_gold.any(-1), torch.zeros_like(rest), rest)  # (M,)
    return torch.cat([top_ids, gold[:, None]], -1), torch.cat([probs, extra[:, None]], -1), None


def estimated_stats(logprobs: torch.Tensor, gold_logprob: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(entropy, log p(gold)) (M,) at τ=1 from the top-K log-probabilities (M, K) (see the module docstring).

    ``gold_logprob`` (M,): the gold token's log p where SRC lists it (NaN elsewhere; then the bound
    log min(r, min_K p) is used)."""
    lp = logprobs.double()
    p = lp.exp()  # (M, K) 0 at padding (−inf)
    rest = (1.0 - p.sum(-1)).clamp(min=0.0)  # (M,) the tail
    entropy = -torch.where(p > 0, p * lp, torch.zeros_like(p)).sum(-1)
    entropy = entropy - torch.where(rest > 0, rest * rest.clamp(min=1e-300).log(), torch.zeros_like(rest))
    smallest = torch.where(torch.isfinite(lp), lp, torch.zeros_like(lp)).min(-1).values  # (M,)
    bound = torch.minimum(smallest, rest.clamp(min=1e-300).log())
    known = ~torch.isnan(gold_logprob)
    return entropy.float(), torch.where(known, gold_logprob.double(), bound).float()


def _document_tokens(docs, tokenizer, boundary) -> list[list[int]]:
    """``[BOS] text [EOS]`` of every document as the packer frames it (empty documents are skipped there)."""
    bos = [] if boundary.bos_id is None else [boundary.bos_id]
    eos = [] if boundary.eos_id is None else [boundary.eos_id]
    texts = (
        tokenizer([d.text for d in docs], add_special_tokens=False, verbose=False)["input_ids"]
        if docs
        else []
    )
    return [bos + t + eos if t else [] for t in texts]


def import_cache(cfg: Config, src: str | Path, columns: Columns, overwrite: bool = False) -> Path:
    """Write the top-K cache of ``cfg`` (in ``teacher.cache_dir``) from SRC's teacher log-probabilities.

    Raises:
        ConfigError: a config an imported cache cannot serve (:func:`check_importable`).
        CacheError: SRC unreadable or malformed (one line naming row and position), a training document
            missing from SRC, or SRC's tokens differing from ours (row and first differing position named).
    """
    from ekd.data import load_splits
    from ekd.data.collate import shift_labels
    from ekd.teacher.cache.build import _prepare_data

    check_importable(cfg)
    src = Path(src)
    if not src.is_file():
        raise CacheError(f"{src} does not exist; give the Parquet/JSONL file of teacher logprobs")
    directory = Path(cfg.teacher.cache_dir)
    directory.mkdir(parents=True, exist_ok=True)
    data = _prepare_data(cfg, directory)
    blocks = data.blocks["train"]
    n_blocks, T = blocks.input_ids.shape
    k, tail, tau = cfg.method.topk, cfg.method.topk_tail, cfg.method.kd_temperature

    rows = read_table(src)
    layout, columns = resolve_columns(src, set(rows[0]) if rows else set(), columns)
    by_text: dict[str, int] = {}
    for i, row in enumerate(rows):
        by_text.setdefault(row.get(columns.text), i)

    docs = load_splits(cfg, max_chars=cfg.data.max_chars or None)["train"]
    stream_ids = blocks.input_ids.reshape(-1)  # (S,) the training stream, S = N·T
    ids_grid = np.zeros((stream_ids.numel(), k), dtype=np.int64)  # (S, K) top-K ids, largest first
    lp_grid = np.full((stream_ids.numel(), k), -np.inf, dtype=np.float32)  # (S, K) their log p
    gold_lp = np.full(stream_ids.numel(), np.nan, dtype=np.float32)  # (S,) log p(next token) if SRC has it
    has = np.zeros(stream_ids.numel(), dtype=bool)  # (S,) positions SRC gives a row for
    at = 0
    for doc, ours in zip(docs, _document_tokens(docs, data.tokenizer, data.boundary)):
        if not ours or at >= stream_ids.numel():
            continue
        n_in = min(len(ours), stream_ids.numel() - at)
        if not torch.equal(stream_ids[at : at + n_in], torch.tensor(ours[:n_in])):
            raise CacheError(
                f"ekd cache import: the documents do not pack like the training data at {doc.doc_id}"
            )
        if doc.text not in by_text:
            raise CacheError(
                f"{src} has no row whose '{columns.text}' is the training document {doc.doc_id}: "
                "SRC must hold every training document of the config's data"
            )
        r = by_text[doc.text]
        where = f"{src} row {r}"
        row = source_row(rows[r], layout, columns, k, where)
        bad = first_mismatch(ours, row.tokens)
        if bad is not None:
            theirs = int(row.tokens[bad]) if bad < len(row.tokens) else "<end>"
            mine = ours[bad] if bad < len(ours) else "<end>"
            raise CacheError(
                f"{where}: token {bad} is {theirs} in SRC but {mine} in our tokenization of its text "
                f"(model.tokenizer={cfg.model.tokenizer}, data.separator={cfg.data.separator}); tokenize SRC "
                "as the config does"
            )
        n = min(len(row.ids), n_in, len(ours) - 1)  # row j → stream position at + j, over token j + 1
        s = slice(at, at + n)
        ids_grid[s], lp_grid[s], has[s] = row.ids[:n, :k], row.logprobs[:n, :k], True
        hit = row.ids[:n] == np.asarray(ours[1 : n + 1])[:, None]  # (n, K') the next token among the entries
        gold_lp[s] = np.where(hit.any(1), np.where(hit, row.logprobs[:n], 0).sum(1), np.nan)
        at += len(ours)

    labels = shift_labels(blocks.input_ids, blocks.target_mask).reshape(
        -1
    )  # (S,) token each position predicts
    cached = has & (labels != -100).numpy()  # (S,)
    revision = f"import-sha256:{file_sha256(src)}"
    signature = cache_signature(cfg, data, revision)
    signature.update(positions="all", position_fraction=None)
    writer = CacheWriter(
        directory,
        signature,
        n_blocks,
        cfg.teacher.cache_shard_samples,
        stat_format=cfg.teacher.cache_stat_format,
        overwrite=overwrite,
    )
    valid = (labels != -100).view(n_blocks, T).sum(1).tolist()
    hits = 0
    for start in range(0, n_blocks, WRITE_BATCH):
        batch = []
        for b in range(start, min(start + WRITE_BATCH, n_blocks)):
            rows_b = np.flatnonzero(cached[b * T : (b + 1) * T]) + b * T  # (P,) flat positions
            gold = labels[rows_b]  # (P,)
            lp, ids = torch.from_numpy(lp_grid[rows_b]), torch.from_numpy(ids_grid[rows_b])
            t_ids, t_probs, t_tail = topk_from_logprobs(lp, ids, k, tail, gold, tau)
            entropy, logp_gold = estimated_stats(lp, torch.from_numpy(gold_lp[rows_b]))
            hits += int((ids[:, :k] == gold[:, None]).any(-1).sum())
            batch.append(
                dict(
                    sample_id=b,
                    positions=rows_b - b * T,
                    stats={"entropy": entropy, "logp_gold": logp_gold},
                    ids=t_ids,
                    values=t_probs,
                    tail=t_tail,
                    num_tokens=int(valid[b]),
                )
            )
        writer.add_batch(batch)
    writer.close()
    total = int(cached.sum())
    log.info(
        "imported %s: %d of %d target positions cached; gold token in the top-%d at %.1f%% of them",
        src,
        total,
        int((labels != -100).sum()),
        k,
        100.0 * hits / max(total, 1),
    )
    return directory


__all__ = ["check_importable", "estimated_stats", "import_cache", "topk_from_logprobs"]
