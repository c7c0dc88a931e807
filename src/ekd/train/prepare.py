"""Everything a run needs before its first step: device, tokenizer, packed data, models, teacher source."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch
from torch import nn

from ekd.config import Config, ConfigError
from ekd.config.validate import check_vocab
from ekd.errors import ModelError
from ekd.host_memory import retain_freed_memory
from ekd.models.isolation import check_document_isolation
from ekd.models.load import (
    check_output_head,
    check_same_tokenizer,
    empty_model,
    is_preset,
    load_model,
    load_tokenizer,
    resolve_dtype,
    shared_vocab_size,
)

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """Tokenizer and packed blocks: ``blocks['train']`` plus one entry per eval set."""

    tokenizer: object
    blocks: dict[str, object]  # name → ekd.data.PackedBlocks
    boundary: object | None = None  # ekd.data.DocumentBoundary used to pack the blocks

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def eos_id(self) -> int:
        """The id that ends a document (the boundary's EOS, else the tokenizer's)."""
        eos = getattr(self.boundary, "eos_id", None)
        return int(self.tokenizer.eos_token_id if eos is None else eos)


def resolve_device(name: str) -> torch.device:
    """The device of ``run.device`` ('auto': CUDA when available, else CPU); raises ConfigError for CUDA without one.

    Every command that computes (distill, eval, tasks, cache) resolves its device here, so this is where a process
    that computes on CPU makes glibc keep its freed large blocks for the next step (``ekd.host_memory``); on GPU
    the step's buffers are CUDA memory, already cached by torch, and host memory is left as glibc runs it.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else None
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"run.device={name} but CUDA is not available; use run.device=cpu or auto")
    device = device or torch.device(name)
    if device.type == "cpu":
        retain_freed_memory()
    return device


def autocast_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on GPU ('auto' or 'bf16'), none (fp32) on CPU unless 'bf16' is asked for."""
    p = cfg.train.precision
    if p == "fp32":
        return None
    if p == "bf16" or device.type == "cuda":
        return torch.bfloat16
    return None


def teacher_needed(cfg: Config) -> bool:
    """Whether training needs teacher targets: a KD term against the teacher (not a self-distillation objective)."""
    from ekd.train.method_parts import SELF_OBJECTIVES

    return (
        cfg.method.kd_weight > 0
        and cfg.method.objective not in SELF_OBJECTIVES
        and cfg.teacher.source != "none"
    )


def scores_samples_with_teacher(cfg: Config) -> bool:
    """Whether TopSmp sample selection (``method.sample_fraction`` < 1) scores with the teacher model."""
    from ekd.selection.sample_selection import TEACHER_SCORERS

    return cfg.method.sample_fraction < 1.0 and cfg.method.sample_scorer in TEACHER_SCORERS


def evaluates_teacher(cfg: Config) -> bool:
    """Whether evaluation reports the teacher (KL(t‖s), top-1 agreement, the ``eval/teacher`` row) and so
    needs the teacher model: one rule for the end of training and ``ekd eval``, so both write the same
    eval.json. An online run keeps the teacher it trained with (a preset one included: rebuilt from
    ``run.seed``); any other run loads a real teacher for evaluation only (a preset is not the model that
    built a cache)."""
    if not cfg.eval.teacher or cfg.teacher.source == "none":
        return False
    if cfg.teacher.source == "online" and (teacher_needed(cfg) or scores_samples_with_teacher(cfg)):
        return True
    return not is_preset(cfg.model.teacher)


def prepare_tokenizer(cfg: Config, run_dir: Path, train_texts: list[str] | None):
    """The run's tokenizer (see ``model.tokenizer``); a trained BPE is saved to ``run_dir/tokenizer``."""
    from ekd.data import train_bpe_tokenizer

    spec = cfg.model.tokenizer
    saved = run_dir / "tokenizer"
    if spec == "teacher" and is_preset(cfg.model.teacher):
        spec = "student" if not is_preset(cfg.model.student) else "train_bpe"
    if spec == "student" and is_preset(cfg.model.student):
        spec = "train_bpe"
    if spec == "train_bpe":
        if not (is_preset(cfg.model.student) and (is_preset(cfg.model.teacher) or not teacher_needed(cfg))):
            raise ConfigError(
                "model.tokenizer=train_bpe needs preset models (preset:<name>); real models bring their tokenizer"
            )
        if (saved / "tokenizer.json").is_file():
            return load_tokenizer(str(saved))
        if not train_texts:
            raise ConfigError("model.tokenizer=train_bpe: no training text to train the tokenizer on")
        log.info(
            "training a byte-level BPE tokenizer (vocab %d) on the training split", cfg.model.bpe_vocab_size
        )
        return train_bpe_tokenizer(train_texts, cfg.model.bpe_vocab_size, saved)
    models = {
        "teacher": (cfg.model.teacher, cfg.model.revision),
        "student": (cfg.model.student, cfg.model.revision),
    }
    source, revision = models.get(spec, (spec, cfg.model.revision))
    name = spec if spec in models else f"model.tokenizer={spec}"
    tok = load_tokenizer(
        source,
        revision,
        cfg.model.trust_remote_code,
        f"model.{spec}" if spec in models else "model.tokenizer",
    )
    # whichever tokenizer is named, every real model the run feeds must use it (presets are built for it)
    for role, (model_spec, model_revision) in models.items():
        if role == spec or is_preset(model_spec) or (role == "teacher" and cfg.teacher.source == "none"):
            continue
        other = load_tokenizer(model_spec, model_revision, cfg.model.trust_remote_code, f"model.{role}")
        check_same_tokenizer(tok, other, (name, role))
    return tok


def prepare_data(cfg: Config, run_dir: Path) -> PreparedData:
    """Load documents, build/load the tokenizer, pack every split into blocks (in memory, or through the
    token store of ``data.store_dir``)."""
    from ekd.data import load_splits
    from ekd.data.chat_template import check_declared_template

    check_declared_template(cfg)  # a missing template file is found before the corpus and the tokenizer
    if cfg.data.store_dir:
        return prepare_stored_data(cfg, run_dir)
    splits = load_splits(cfg, max_chars=cfg.data.max_chars or None)
    tokenizer = prepare_tokenizer(cfg, run_dir, [d.full_text for d in splits["train"]])
    if tokenizer.eos_token_id is None:
        raise ModelError("the tokenizer has no EOS token: ekd separates packed documents with EOS; set one")
    check_vocab(cfg, len(tokenizer))
    if cfg.data.format == "chat":
        from ekd.data.chat_template import settle_chat_template

        settle_chat_template(cfg, tokenizer, splits["train"], model_tokenizers(cfg))
    return pack_run_splits(cfg, splits, tokenizer)


def model_tokenizers(cfg: Config) -> dict:
    """Role → own tokenizer of each real (non-preset) model the run loads (its chat template counts)."""
    return {
        role: load_tokenizer(spec, revision, cfg.model.trust_remote_code, f"model.{role}")
        for role, (spec, revision) in boundary_models(cfg).items()
    }


def pack_run_splits(cfg: Config, splits: dict, tokenizer) -> PreparedData:
    """Pack ``splits`` with the run's document convention (BOS/EOS of its models) and attention mode —
    the one packing rule of training, cache building and ``ekd eval``."""
    from ekd.data import document_boundary, pack_splits

    boundary = document_boundary(cfg.data, tokenizer, boundary_models(cfg), cfg.model.trust_remote_code)
    blocks = pack_splits(
        splits,
        tokenizer,
        cfg.data.block_length,
        cfg.data.max_eval_blocks,
        boundary,
        cfg.data.document_attention,
        cfg.data.max_tokens,
    )
    return PreparedData(tokenizer, blocks, boundary)


def prepare_stored_data(cfg: Config, run_dir: Path, tokenizer=None) -> PreparedData:
    """:func:`prepare_data` through the token store (``data.store_dir``): documents are streamed, and
    tokenized and packed only when no store for this data, tokenizer and packing exists yet; the blocks are
    memory-mapped. ``tokenizer``: use this one (``ekd eval``: the saved student's) instead of preparing it."""
    from ekd.data import document_boundary
    from ekd.data.store_build import stored_blocks, train_documents, train_texts

    if tokenizer is None:
        tokenizer = prepare_tokenizer(cfg, run_dir, train_texts(cfg))
        if cfg.data.format == "chat":  # before the store's key, which signs the settled template
            from ekd.data.chat_template import AGREEMENT_ROWS, settle_chat_template

            rows = list(islice(train_documents(cfg), AGREEMENT_ROWS))
            settle_chat_template(cfg, tokenizer, rows, model_tokenizers(cfg))
    if tokenizer.eos_token_id is None:
        raise ModelError("the tokenizer has no EOS token: ekd separates packed documents with EOS; set one")
    check_vocab(cfg, len(tokenizer))
    boundary = document_boundary(cfg.data, tokenizer, boundary_models(cfg), cfg.model.trust_remote_code)
    return PreparedData(tokenizer, stored_blocks(cfg, tokenizer, boundary), boundary)


def boundary_models(cfg: Config) -> dict[str, tuple[str, str]]:
    """Role → (spec, revision) of the real (non-preset) models whose document convention counts."""
    models = {}
    if not is_preset(cfg.model.student):
        models["student"] = (cfg.model.student, cfg.model.revision)
    if teacher_needed(cfg) and not is_preset(cfg.model.teacher):
        models["teacher"] = (cfg.model.teacher, cfg.model.revision)
    return models


def load_student(cfg: Config, data: PreparedData, device: torch.device, empty: bool = False) -> nn.Module:
    """The student in fp32 on ``device``; ``empty``: on the meta device, no weight read (a rank that receives
    its shards from rank 0, ``ekd.train.rank0_load``)."""
    return _load_role(cfg, data, device, "student", torch.float32, cfg.run.seed, empty)


def load_teacher(cfg: Config, data: PreparedData, device: torch.device, empty: bool = False) -> nn.Module:
    """The frozen teacher (eval mode, no gradients) in ``model.teacher_dtype``; ``empty`` as in
    :func:`load_student`."""
    dtype = resolve_dtype(cfg.model.teacher_dtype, device)
    teacher = _load_role(cfg, data, device, "teacher", dtype, cfg.run.seed + 1, empty)
    return teacher.eval().requires_grad_(False)


def _load_role(
    cfg: Config, data: PreparedData, device, role: str, dtype, seed: int, empty: bool
) -> nn.Module:
    spec = cfg.model.student if role == "student" else cfg.model.teacher
    common = dict(
        vocab_size=data.vocab_size,
        eos_token_id=data.eos_id,
        revision=cfg.model.revision,
        trust_remote_code=cfg.model.trust_remote_code,
        dtype=dtype,
        attn_implementation=cfg.model.attn_implementation,
        role=role,
    )
    model = empty_model(spec, **common) if empty else load_model(spec, seed=seed, **common)
    shared_vocab_size(data.vocab_size, (role, model))
    if empty:  # shapes only: rank 0 checks the head of the real weights
        return model
    model = model.to(device)
    check_output_head(model, data.vocab_size, role)
    if cfg.data.document_attention == "isolated":
        check_document_isolation(model, data.vocab_size, role)
    return model


def build_teacher_source(
    cfg: Config,
    data: PreparedData,
    device: torch.device,
    teacher: nn.Module | None,
    shard: nn.Module | None = None,
):
    """OnlineTeacher around a model (``shard``: its FSDP2 root when sharded), a cache reader, or None when the
    method needs no teacher."""
    if not teacher_needed(cfg):
        return None
    if cfg.teacher.source == "cache":
        from ekd.teacher.cache import CacheTeacher

        return CacheTeacher(cfg, data, device)
    from ekd.teacher.online import OnlineTeacher

    assert teacher is not None
    return OnlineTeacher(
        teacher, data.vocab_size, chunk_rows(cfg, data.vocab_size), autocast_dtype(cfg, device), shard
    )


def chunk_rows(cfg: Config, vocab_size: int) -> int:
    """``train.head_chunk_size``, or the automatic size for this vocabulary when it is 0."""
    from ekd.losses.chunked import auto_chunk_rows

    return cfg.train.head_chunk_size or auto_chunk_rows(vocab_size)
