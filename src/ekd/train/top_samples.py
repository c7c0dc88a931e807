"""SE-KD3X's sample selection (TopSmp) in a run: the training blocks kept, scored once by the frozen initial
student, saved beside the run and restored from a checkpoint when the file was edited, deleted or damaged."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ekd.config import Config, ConfigError
from ekd.train.checkpoint import latest_checkpoint
from ekd.train.distributed import Ranks
from ekd.train.prepare import PreparedData, chunk_rows
from ekd.train.rank_work import run_on_main, sharded_sample_scores

log = logging.getLogger(__name__)

SAMPLE_SELECTION = "sample_selection.json"  # TopSmp's kept blocks, scored once by the initial student


def checkpoint_sample_ids(ckpt: Path) -> list[int] | None:
    """TopSmp's kept blocks as checkpoint ``ckpt``'s ``state.pt`` holds them (``weights_only``; not verified here:
    the resume verifies the checkpoint and checks its loader against them); None when it holds none or cannot be
    read (an older ekd's, a damaged one)."""
    from ekd.train.checkpoint import _load_pickle

    try:
        state = _load_pickle(ckpt / "state.pt", "cpu")
    except Exception:  # noqa: BLE001 — a damaged state.pt: the samples are scored as before
        return None
    ids = state.get("sample_ids") if isinstance(state, dict) else None
    return ids if isinstance(ids, list) else None


def selection_note(cfg: Config, samples: int) -> dict[str, Any]:
    """The ``meta`` of ``sample_selection.json``: the scorer, the fraction kept and the training blocks scored."""
    return {"scorer": cfg.method.sample_scorer, "fraction": cfg.method.sample_fraction, "samples": samples}


def restore_sample_selection(
    run_dir: Path, ids: list[int], ckpt: Path, ranks: Ranks, note: dict[str, Any]
) -> torch.Tensor:
    """TopSmp's kept blocks as checkpoint ``ckpt`` trained on them, written back to ``run_dir``'s
    ``sample_selection.json`` with ``note`` (:func:`selection_note`) and the checkpoint it came from: the file holds
    others (edited since, or scored again after it was deleted, where near-ties can rank otherwise on another
    layout: try-out 41, review 99), is gone (try-out 43) or cannot be read (try-out 44). Returns them, (k,) long."""
    from ekd.selection.sample_selection import save_sample_selection

    path = run_dir / SAMPLE_SELECTION
    kept = torch.tensor(ids, dtype=torch.long)
    log.warning(
        "%s keeps other training blocks than checkpoint %s trained on, is gone or cannot be read (edited, "
        "deleted, damaged or scored again since): the run goes on with the checkpoint's, written back to it",
        path,
        ckpt.name,
    )
    note = {**note, "restored_from": ckpt.name}
    run_on_main(ranks, lambda: save_sample_selection(path, kept, note), "restore the sample selection")
    return kept


def sample_selection(
    cfg: Config,
    run_dir: Path,
    data: PreparedData,
    student,
    teacher_model,
    ranks: Ranks,
    amp,
    resume: bool = False,
) -> torch.Tensor:
    """SE-KD3X TopSmp: the kept training-sample indices, scored once by the frozen initial student.

    Each rank scores 1/W of the blocks, streamed (``ekd.train.rank_work.sharded_sample_scores``); every rank
    then selects alike. Rank 0 saves the selection to ``run_dir/sample_selection.json``; it is reused on
    resume (never re-scored with a trained student).
    """
    from ekd.selection.sample_selection import load_sample_selection, save_sample_selection, select_samples

    path = run_dir / SAMPLE_SELECTION
    blocks = data.blocks["train"]
    done = path.exists()  # a directory in its way is refused by the load, not written over (try-out 42)
    ranks.barrier()  # every rank has looked before rank 0 may write it
    ckpt = latest_checkpoint(run_dir) if resume else None
    saved = checkpoint_sample_ids(ckpt) if ckpt is not None else None
    if done:
        try:
            kept, _ = load_sample_selection(path)
            return kept
        except ConfigError:
            if saved is None or path.is_dir():
                raise
    # deleted or damaged since: the checkpoint holds them (try-outs 43, 44: scored again)
    if saved is not None:
        return restore_sample_selection(run_dir, saved, ckpt, ranks, selection_note(cfg, len(blocks)))
    ids, scores = sharded_sample_scores(
        student,
        blocks,
        cfg.method.sample_scorer,
        data.vocab_size,
        ranks,
        teacher_model,
        batch_size=cfg.eval.batch_size,
        seed=cfg.run.seed,
        chunk_rows=chunk_rows(cfg, data.vocab_size, ranks.device),
        autocast_dtype=amp,
    )
    # ids: block indices
    kept = select_samples(scores, ids, cfg.method.sample_fraction, cfg.method.sample_scorer)
    note = selection_note(cfg, len(blocks))
    run_on_main(ranks, lambda: save_sample_selection(path, kept, note), "save the sample selection")
    log.info(
        "sample selection: kept %d of %d training blocks by %s",
        kept.numel(),
        len(blocks),
        cfg.method.sample_scorer,
    )
    return kept
