"""What a run's checkpoints hold, in one place for both directions: saved at a step, restored by ``--resume``.

A checkpoint holds the student (or a LoRA student's adapters), AdamW's state, the method's stateful modules, the
data order (the loader's epoch and position, TopSmp's kept blocks), the selection policy's and temperature's state,
and the run's totals so far. ``state.pt``'s keys are written by :meth:`CheckpointedRun.save` and read by
:meth:`CheckpointedRun.restore` side by side, so that a key added to one is seen beside the other.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ekd.config import Config
from ekd.data.loader import blocks_with_targets
from ekd.errors import EkdError
from ekd.train.checkpoint import checkpoint_run, save_checkpoint, unreadable
from ekd.train.distributed import Ranks
from ekd.train.method_parts import MethodParts
from ekd.train.rank_work import run_on_main
from ekd.train.run_dir import RunDirError, RunStart
from ekd.train.sharded_checkpoint import restore_checkpoint, save_sharded_checkpoint, training_state
from ekd.train.top_samples import SAMPLE_SELECTION, restore_sample_selection, selection_note

if TYPE_CHECKING:
    from ekd.data import BlockLoader
    from ekd.data.packing import PackedBlocks

log = logging.getLogger(__name__)


@dataclass
class CheckpointedRun:
    """The state of a training run that its checkpoints hold, and the run's handles on it.

    ``loader`` and ``kept`` (TopSmp's kept training block ids, None for every block) may be replaced by
    :meth:`restore`: a resumed run continues the order its checkpoint recorded. ``saved_tensors`` names a LoRA
    student's trainable tensors (None: the whole student is saved).
    """

    cfg: Config
    ranks: Ranks
    run_dir: Path
    start: RunStart | None
    student: nn.Module
    optimizer: torch.optim.Optimizer
    extra_modules: dict[str, nn.Module]
    parts: MethodParts
    loader: BlockLoader
    kept: torch.Tensor | None
    saved_tensors: list[str] | None
    saved_at: list[int] = field(default_factory=list)  # the steps this process checkpointed

    def save(self, step: int, run_totals: dict) -> Path:
        """Write checkpoint ``step-<step>`` (every rank its shards under torchrun, DCP; rank 0 ``state.pt``), keeping
        the newest ``train.keep_checkpoints``. ``run_totals``: time and KD positions of the run so far
        (:func:`~ekd.train.run_totals.run_totals`), for the final summary of a resumed run."""
        self.saved_at.append(step)
        state = {
            "step": step,
            "loader": self.loader.state_dict(),
            "policy": self.parts.policy.state_dict(),
            "temperature": (
                self.parts.temperature.state_dict() if hasattr(self.parts.temperature, "state_dict") else {}
            ),
            # ranks × micro-batch: a resume must keep the global micro-batch
            "world_size": self.ranks.world_size,
            # the run that wrote it (rank 0 writes state.pt): a checkpoint copied into another run is refused
            "run": {"id": self.start.run_id, "name": self.cfg.run.name} if self.start is not None else None,
            "micro_batch_size": self.cfg.train.micro_batch_size,
            # TopSmp's kept blocks: what a resume trains on whatever became of sample_selection.json
            "sample_ids": self.kept.tolist() if self.kept is not None else None,
            "run_totals": run_totals,
        }
        keep = self.cfg.train.keep_checkpoints
        if self.ranks.world_size > 1:  # DDP or FSDP2: every rank writes its shards (DCP)
            modules = training_state(self.student, self.extra_modules)
            trainable_only = self.saved_tensors is not None
            return save_sharded_checkpoint(
                self.run_dir, step, modules, self.optimizer, state, self.ranks, keep, trainable_only
            )
        return save_checkpoint(
            self.run_dir,
            step,
            self.student,
            self.optimizer,
            state,
            self.extra_modules,
            keep,
            only=self.saved_tensors,
        )

    def restore(
        self, ckpt: Path, train_blocks: PackedBlocks, device: torch.device
    ) -> tuple[int, dict | None]:
        """Load checkpoint ``ckpt`` (verified by rank 0, the same on every rank) into the student, optimizer and
        method parts, and continue its data order; returns (its step, the run's totals before it — None from a
        checkpoint of an older ekd, which kept none).

        Raises:
            RunDirError: a checkpoint of another run, or TopSmp's kept blocks edited since it was written.
            CheckpointError: a ``state.pt`` that loads but does not fit this run (one line naming it).
        """
        # first: a checkpoint of another run is said so, not as weights that do not fit or another policy
        run_on_main(
            self.ranks,
            lambda: self.start.check_checkpoint(ckpt, checkpoint_run(ckpt)),
            "check the checkpoint's run",
        )
        state = restore_checkpoint(
            ckpt,
            self.student,
            self.optimizer,
            self.extra_modules,
            self.ranks,
            self.cfg.train.micro_batch_size,
            device,
            self.saved_tensors,
        )
        try:
            step = int(state["step"])
            earlier = state.get("run_totals")  # absent from checkpoints of older ekd versions
            self._continue_order(state, ckpt, train_blocks)
            self.parts.policy.load_state_dict(state["policy"])
            if hasattr(self.parts.temperature, "load_state_dict"):
                self.parts.temperature.load_state_dict(state.get("temperature", {}))
        except EkdError:
            raise
        except Exception as e:  # a state.pt that loads but does not fit this run
            raise unreadable(ckpt, e) from None
        # every rank resumed from the same checkpoint (verified_on_main); rank 0 says it (said_by_rank0)
        log.info("resumed from %s at step %d", ckpt, step)
        return step, earlier

    def _continue_order(self, state: dict, ckpt: Path, train_blocks: PackedBlocks) -> None:
        """The loader at the checkpoint's place in the order it recorded: TopSmp's kept blocks as saved, and the
        blocks an older ekd drew (those without a target too) where its checkpoint says so."""
        saved_ids = state.get("sample_ids")  # absent from checkpoints of older ekd versions
        if self.kept is not None and saved_ids is not None and self.kept.tolist() != list(saved_ids):
            note = selection_note(self.cfg, len(train_blocks))
            self.kept = restore_sample_selection(self.run_dir, saved_ids, ckpt, self.ranks, note)
            self.loader = self.loader.subset(
                self.kept[torch.isin(self.kept, blocks_with_targets(train_blocks))]
            )
        # the blocks a run drew from before blocks without a target were left out: TopSmp's kept ones, else all
        everything = self.kept if self.kept is not None else torch.arange(len(train_blocks))
        recorded = state["loader"].get("blocks")
        if self.loader.indices.numel() != everything.numel() and recorded in (None, everything.numel()):
            # a run started by an ekd that drew blocks without a target too (its checkpoints record no count, or
            # that one): keep its order, so that it continues exactly
            log.info(
                "this run was started by an ekd that drew every training block, those without a target too: it "
                "keeps doing so, so that its order continues exactly (a new run leaves them out)"
            )
            self.loader = self.loader.subset(everything)
        drawn = state["loader"].get("blocks_sha256")  # absent from checkpoints of older ekd versions
        if self.kept is not None and drawn not in (None, self.loader.indices_sha256()):
            raise RunDirError(  # a checkpoint of an older ekd, which does not hold the kept blocks
                f"{self.run_dir / SAMPLE_SELECTION} keeps other training blocks than checkpoint {ckpt.name} trained "
                "on (edited or damaged since; try-out 41: it trained on them without a word): restore the file "
                "the run wrote, or start the run again with --overwrite"
            )
        self.loader.load_state_dict(state["loader"])
