"""Everything a run needs before its first step: device, tokenizer, packed data, models, teacher source."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ekd.config import Config, ConfigError
from ekd.config.paths import same_location
from ekd.config.validate import check_vocab
from ekd.errors import ModelError
from ekd.host_memory import retain_freed_memory
from ekd.models.isolation import check_document_isolation
from ekd.models.load import (
    check_head_covers,
    check_output_head,
    check_same_tokenizer,
    class_added_tokens,
    declared_head_rows,
    empty_model,
    file_tokenizer,
    has_tokenizer_files,
    is_preset,
    load_model,
    load_tokenizer,
    model_tokenizer,
    own_tokenizer,
    padded_head_mass,
    resolve_dtype,
    shared_vocab_size,
)
from ekd.models.positions import check_block_fits_positions
from ekd.train.precision import autocast_for, check_forward_under_autocast
from ekd.words import counted

if TYPE_CHECKING:
    from ekd.data.document import Document

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """Tokenizer and packed blocks: ``blocks['train']`` plus one entry per eval set."""

    tokenizer: object
    blocks: dict[str, object]  # name → ekd.data.PackedBlocks
    boundary: object | None = None  # ekd.data.DocumentBoundary used to pack the blocks
    # the held-out eval split's documents (ekd.data.build.held_out_fingerprint); through the token store, the
    # source files and eval fraction that decide it (ekd.data.store_build.held_out_source_key)
    held_out: str | None = None

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def eos_id(self) -> int | None:
        """The id that ends a document (the boundary's EOS, else the tokenizer's); None when neither has one
        (``data.separator=none`` with a tokenizer without EOS: :func:`check_run_tokenizer`)."""
        eos = getattr(self.boundary, "eos_id", None)
        eos = self.tokenizer.eos_token_id if eos is None else eos
        return None if eos is None else int(eos)


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
    """bf16 autocast on GPU ('auto' or 'bf16'), none (fp32) on CPU unless 'bf16' is asked for
    (:func:`ekd.train.precision.autocast_for`)."""
    return autocast_for(cfg.train.precision, device.type)


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


def loads_teacher_model(cfg: Config) -> bool:
    """Whether a run loads the teacher model at its start, and holds it through training: for its targets (an
    online source), TopSmp's teacher scores, or the evaluation's teacher figures of an online run (a CE-only run's
    KL too). A cache run's evaluation loads its teacher after training (:func:`evaluates_teacher`); a
    self-distillation objective teaches with a copy of the student, no teacher model."""
    if cfg.teacher.source != "online":
        return False
    return teacher_needed(cfg) or scores_samples_with_teacher(cfg) or evaluates_teacher(cfg)


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


def tokenizer_source(cfg: Config) -> str:
    """``model.tokenizer`` resolved for preset models: ``teacher`` / ``student`` name a preset's tokenizer,
    which does not exist, so they fall back to the other, real model's, else to ``train_bpe`` (either way round:
    try-out 52, F4 — ``student`` of a preset beside a real teacher was refused as ``train_bpe``)."""
    spec = cfg.model.tokenizer
    if spec == "teacher" and is_preset(cfg.model.teacher):
        spec = "student" if not is_preset(cfg.model.student) else "train_bpe"
    elif spec == "student" and is_preset(cfg.model.student):
        spec = "teacher" if not is_preset(cfg.model.teacher) else "train_bpe"
    return spec


def needs_training_text(cfg: Config, run_dir: Path) -> bool:
    """Whether the tokenizer is trained on the training split (``train_bpe``, not yet saved in ``run_dir``):
    otherwise it, and every check against it, comes before any data is read."""
    return tokenizer_source(cfg) == "train_bpe" and not (run_dir / "tokenizer" / "tokenizer.json").is_file()


def prepare_tokenizer(cfg: Config, run_dir: Path, train_docs: Iterable[Document] | None):
    """The run's tokenizer (see ``model.tokenizer``); a trained BPE is saved to ``run_dir/tokenizer``, trained on
    the ``full_text`` of ``train_docs`` (each checked against ``data.max_document_chars`` first, as packing checks
    it: try-out 98 F1's refusal came after the BPE had trained on the whole document, 4.6 GB and 2 minutes later).

    Every real model the run feeds is checked against it here, from its tokenizer and config.json files
    (:func:`check_models_fit_tokenizer`): with a named tokenizer, before any data is read.
    """
    from ekd.data import train_bpe_tokenizer

    spec = tokenizer_source(cfg)
    saved = run_dir / "tokenizer"
    if spec == "train_bpe":
        if not (is_preset(cfg.model.student) and (is_preset(cfg.model.teacher) or not teacher_needed(cfg))):
            raise ConfigError(
                "model.tokenizer=train_bpe needs preset models (preset:<name>); real models bring their tokenizer"
            )
        if (saved / "tokenizer.json").is_file():
            return load_tokenizer(str(saved))
        if not train_docs:
            raise ConfigError("model.tokenizer=train_bpe: no training text to train the tokenizer on")
        log.info(
            "training a byte-level BPE tokenizer (vocab %d) on the training split", cfg.model.bpe_vocab_size
        )
        texts = _checked_texts(train_docs, cfg.data.max_document_chars)
        return train_bpe_tokenizer(texts, cfg.model.bpe_vocab_size, saved)
    models = {"teacher": teacher_config_source(cfg), "student": (cfg.model.student, cfg.model.revision)}
    source, revision = models.get(spec, (spec, cfg.model.revision))
    if spec not in models and names_teacher(cfg, spec):  # the teacher's directory by its path: read where
        source, revision = models["teacher"]  # the teacher's files are (a cache's copy)
    name = spec if spec in models else f"model.tokenizer={spec}"
    # a model directory's own tokenizer (try-out 56, F1: model.tokenizer naming the teacher's directory, or
    # `teacher`, was read with the tokens its class adds and its head has no row for, unlike the teacher itself)
    tok = model_tokenizer(
        source, revision, cfg.model.trust_remote_code, spec if spec in models else "tokenizer"
    )
    # whichever tokenizer is named, every real model the run feeds must use it (presets are built for it)
    fed = {r: m for r, m in models.items() if not (r == "teacher" and cfg.teacher.source == "none")}
    check_models_fit_tokenizer(tok, name, fed, cfg.model.trust_remote_code, own=spec)
    check_declared_positions(fed, cfg.data.block_length, cfg.model.trust_remote_code)
    return tok


def check_declared_positions(
    models: dict[str, tuple[str, str]], block_length: int, trust_remote_code: bool
) -> None:
    """A learned position table shorter than ``block_length`` in a real model of ``models`` (role → (spec,
    revision)), from its config.json — built on the meta device, no weights, only where the block passes the limit
    the config names —, before any data is read (try-out 135, F4: a GPT-2 student's 128 positions were refused
    after the whole corpus was tokenized). Loading the model checks it again (and warns of a rotary one's).

    Raises:
        ModelError: :func:`~ekd.models.positions.check_block_fits_positions`'s line.
    """
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    from ekd.models.load import model_config
    from ekd.models.positions import has_learned_positions, position_limit

    for role, (spec, revision) in models.items():
        if is_preset(spec):
            continue
        try:
            config = model_config(spec, revision, trust_remote_code, role)
            limit = position_limit(SimpleNamespace(config=config))
            if limit is None or block_length <= limit[1]:
                continue
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
        except Exception:  # noqa: BLE001 — any failure is reported, with its reason, when the model loads
            continue
        if has_learned_positions(model):
            check_block_fits_positions(model, block_length, role)


def check_models_fit_tokenizer(
    tok, name: str, models: dict[str, tuple[str, str]], trust_remote_code: bool, own: str = "", fix: str = ""
) -> None:
    """Each real (non-preset) model of ``models`` (role → (spec, revision)) against the tokenizer ``tok``
    (``name``: how errors call it), from small files only (no weights, no data): its own tokenizer must be the
    same (:func:`check_same_tokenizer`; not for ``own``, the role ``tok`` was read from), and the output head
    its config.json declares must cover ``tok`` (:func:`check_head_covers`). Loading a model checks its real
    head again (:func:`shared_vocab_size`), the authority where config.json says nothing. ``fix``: the way on
    named when the tokenizers differ (default: :func:`check_same_tokenizer`'s).

    Raises:
        ModelError: different tokenizers, or a head shorter than the tokenizer, in one line.
    """
    for role, (spec, revision) in models.items():
        if is_preset(spec):
            continue
        rows = declared_head_rows(spec, revision, trust_remote_code, role)
        if role != own and not has_tokenizer_files(spec):  # a model saved without one: it takes the run's
            named = name if "=" in name else f"model.tokenizer={name}"
            log.info(
                "model.%s: %s holds no tokenizer files; it reads the run's tokenizer (%s)", role, spec, named
            )
        elif role != own:
            other = own_tokenizer(
                load_tokenizer(spec, revision, trust_remote_code, f"model.{role}"), rows, role
            )
            try:
                check_same_tokenizer(tok, other, (name, role), fix, learns_encoding=role == "student")
            except ModelError:
                # its class adds tokens its files lack, which a padded head has rows for: its files alone may be
                # the run's tokenizer (try-out 53, F4: refused as 'pick a student from the teacher's family')
                alone = file_tokenizer(other)
                added = class_added_tokens(other, alone)
                if alone is None or not added:
                    raise
                check_same_tokenizer(tok, alone, (name, role), fix, learns_encoding=role == "student")
                log.info(
                    "model.%s: its tokenizer loads as %s, which adds %s beyond its files; its files alone (%s, %d "
                    "tokens) are the run's tokenizer and are taken",
                    role,
                    type(other).__name__,
                    ", ".join(repr(t) for _, t in sorted(added.items())),
                    type(alone).__name__,
                    len(alone),
                )
        if rows is not None:
            check_head_covers(role, rows, len(tok), tok)


def prepare_data(cfg: Config, run_dir: Path) -> PreparedData:
    """Load documents, build/load the tokenizer, pack every split into blocks (in memory, or through the
    token store of ``data.store_dir``)."""
    from ekd.data import load_splits
    from ekd.data.chat_template import check_declared_template, check_tokenizer_template

    check_declared_template(cfg)  # a missing template file is found before the corpus and the tokenizer
    if cfg.data.store_dir:
        return prepare_stored_data(cfg, run_dir)
    # a named tokenizer, and the models' tokenizers and heads checked against it, before the corpus is read
    tokenizer = None if needs_training_text(cfg, run_dir) else _run_tokenizer(cfg, run_dir, None)
    if tokenizer is not None:
        check_tokenizer_template(cfg, tokenizer)  # the template it renders with, before the corpus is read
    splits = load_splits(cfg, max_chars=cfg.data.max_chars or None)
    if tokenizer is None:
        tokenizer = _run_tokenizer(cfg, run_dir, splits["train"])
    if cfg.data.format == "chat":
        from ekd.data.chat_template import settle_chat_template

        settle_chat_template(cfg, tokenizer, splits["train"], model_tokenizers(cfg))
    return pack_run_splits(cfg, splits, tokenizer)


def _checked_texts(docs: Iterable[Document], limit: int) -> Iterator[str]:
    """``full_text`` of each of ``docs``, each refused first when over ``limit`` characters (the BPE trainer holds
    a document whole, as the tokenizer does: :func:`ekd.data.packing.check_document_length`)."""
    from ekd.data.packing import check_document_length

    for doc in docs:
        check_document_length(doc, limit, "train")
        yield doc.full_text


def _run_tokenizer(cfg: Config, run_dir: Path, train_docs: Iterable[Document] | None):
    """:func:`prepare_tokenizer`, then :func:`check_run_tokenizer`."""
    tokenizer = prepare_tokenizer(cfg, run_dir, train_docs)
    check_run_tokenizer(cfg, tokenizer)
    return tokenizer


def check_run_tokenizer(cfg: Config, tokenizer) -> None:
    """The checks the run's settings make on its tokenizer: an EOS token where the run uses one
    (:func:`eos_use`), and ``check_vocab``.

    Raises:
        ModelError: no EOS token where the run needs one, in one line naming what needs it and where to set one.
        ConfigError: as ``check_vocab``.
    """
    if tokenizer.eos_token_id is None:
        models_end = cfg.data.separator == "auto" and _models_end_documents(cfg)
        use = eos_use(cfg.data.separator, cfg.method.student_data_fraction, models_end)
        if use:
            other = (
                [] if cfg.data.separator == "none" else ["data.separator=none (no end-of-document target)"]
            )
            if cfg.method.student_data_fraction > 0:  # none alone would be refused next (review 106)
                other.append("method.student_data_fraction=0 (no sampled continuations)")
            other = "set " + " and ".join(other)
            raise ModelError(
                f"the tokenizer (model.tokenizer={cfg.model.tokenizer}) has no EOS token, which {use}; give it one "
                '("eos_token" in its tokenizer_config.json, or set tokenizer.eos_token and save_pretrained), name a '
                f"tokenizer that has one, or {other}"
            )
    check_vocab(cfg, len(tokenizer))


def eos_use(separator: str, student_data_fraction: float, models_end: bool) -> str:
    """What in a run uses the tokenizer's EOS token, in words; '' when nothing does.

    Args:
        separator: ``data.separator``: ``eos`` and ``bos_eos`` end every document with the tokenizer's EOS;
            ``auto`` with it only when no model's config sets ``eos_token_id`` (``models_end`` False); ``none``
            adds nothing (try-out 46: a tokenizer without EOS was refused under ``none``, for a reason that
            was false there).
        student_data_fraction: ``method.student_data_fraction``; above 0, the student's sampled continuations
            stop at, and are padded with, the end-of-document id (the tokenizer's under ``none``).
        models_end: Under ``auto``, whether a model's config names the end-of-document id.
    """
    if separator in ("eos", "bos_eos"):
        return f"data.separator={separator} ends each packed document with"
    if separator == "auto" and not models_end:
        return "data.separator=auto ends each packed document with, as no model's config sets eos_token_id"
    if separator == "none" and student_data_fraction > 0:
        return (
            f"method.student_data_fraction={student_data_fraction:g} stops and pads the student's sampled "
            "continuations with"
        )
    return ""


def _models_end_documents(cfg: Config) -> bool:
    """Whether a real model of the run names an ``eos_token_id`` (``data.separator=auto`` ends documents with
    it); True when a config cannot be read here, so that the document boundary, resolved next, says why."""
    from ekd.data.boundary import read_model_eos

    for role, (spec, revision) in boundary_models(cfg).items():
        try:
            eos = read_model_eos(spec, revision, cfg.model.trust_remote_code, key=f"model.{role}")
        except ConfigError:
            return True
        if eos not in (None, []):
            return True
    return False


def model_tokenizers(cfg: Config) -> dict:
    """Role → own tokenizer of each real (non-preset) model the run loads (its chat template counts)."""
    return {
        role: load_tokenizer(spec, revision, cfg.model.trust_remote_code, f"model.{role}")
        for role, (spec, revision) in boundary_models(cfg).items()
        if has_tokenizer_files(spec)  # a model saved without one reads the run's (check_models_fit_tokenizer)
    }


def run_boundary(cfg: Config, tokenizer, recorded: dict | None = None):
    """The document boundary of ``cfg`` (``data.separator`` resolved for the tokenizer and the models' own EOS:
    :func:`ekd.data.document_boundary`), or, for ``ekd eval`` of a finished run, the one it trained with
    (``recorded``: ekd-run.json's ``document_boundary``) while ``data.separator`` is the run's — no model's
    config is read then, so a teacher moved or deleted since does not stop the student's evaluation. A record
    that lacks one of the boundary's fields (another ekd's) is not used; one with more keeps the fields it has
    (review of session 31: ``DocumentBoundary(**recorded)`` of such a record ended ``ekd eval`` in a TypeError)."""
    from ekd.data import DocumentBoundary, document_boundary

    names = [f.name for f in fields(DocumentBoundary)]
    if recorded and recorded.get("separator") == cfg.data.separator and set(names) <= set(recorded):
        return DocumentBoundary(**{name: recorded[name] for name in names})
    return document_boundary(cfg.data, tokenizer, boundary_models(cfg), cfg.model.trust_remote_code)


def pack_run_splits(cfg: Config, splits: dict, tokenizer, boundary=None) -> PreparedData:
    """Pack ``splits`` with the run's document convention (BOS/EOS of its models, or ``boundary``:
    :func:`run_boundary`) and attention mode — the one packing rule of training, cache building and ``ekd
    eval``."""
    from ekd.data import pack_splits

    boundary = boundary or run_boundary(cfg, tokenizer)
    blocks = pack_splits(
        splits,
        tokenizer,
        cfg.data.block_length,
        cfg.data.max_eval_blocks,
        boundary,
        cfg.data.document_attention,
        cfg.data.max_tokens,
        cfg.data.max_document_chars,
    )
    from ekd.data.build import held_out_fingerprint

    held = splits.get("eval") if cfg.data.source != "pystdlib" else None  # user data's held-out documents
    return PreparedData(tokenizer, blocks, boundary, held_out_fingerprint(held) if held else None)


def prepare_stored_data(cfg: Config, run_dir: Path, tokenizer=None, boundary=None) -> PreparedData:
    """:func:`prepare_data` through the token store (``data.store_dir``): documents are streamed, and
    tokenized and packed only when no store for this data, tokenizer and packing exists yet; the blocks are
    memory-mapped. ``tokenizer``: use this one (``ekd eval``: the saved student's) instead of preparing it;
    ``boundary``: likewise (:func:`run_boundary`)."""
    from ekd.data.store_build import held_out_source_key, stored_blocks, train_documents

    if tokenizer is None:
        tokenizer = prepare_tokenizer(cfg, run_dir, train_documents(cfg))
        if cfg.data.format == "chat":  # before the store's key, which signs the settled template
            from ekd.data.chat_template import AGREEMENT_ROWS, check_tokenizer_template, settle_chat_template

            check_tokenizer_template(cfg, tokenizer)  # as in memory: before a row is read
            rows = list(islice(train_documents(cfg), AGREEMENT_ROWS))
            settle_chat_template(cfg, tokenizer, rows, model_tokenizers(cfg))
    check_run_tokenizer(cfg, tokenizer)
    boundary = boundary or run_boundary(cfg, tokenizer)
    blocks = stored_blocks(cfg, tokenizer, boundary)
    return PreparedData(tokenizer, blocks, boundary, held_out_source_key(cfg))


def _end_documents_as_trained(student: nn.Module, data: PreparedData, adapter: bool) -> None:
    """The student's config and generation config end sequences first with the id its documents end with
    (:func:`ekd.models.export.end_documents_with`), said in one line when that changes them — and what the export
    holds: a full model ends there too; an adapter export (``adapter``) ships no config, so its base keeps its own
    ids and the line gives the ones to pass to ``generate`` (review 106)."""
    from ekd.models.export import end_documents_with

    eos = getattr(data.boundary, "eos_id", None)
    ids = end_documents_with(student, eos)
    if ids:
        log.info(
            "student: documents end with id %d (%r, data.separator=%s), which its config does not name: its "
            "config and generation_config now end sequences with %s (its own after it), %s",
            eos,
            data.tokenizer.convert_ids_to_tokens(eos),
            data.boundary.separator,
            ids,
            f"but an adapter export keeps its base's: pass eos_token_id={ids} to generate"
            if adapter
            else "and the export does",
        )


def _end_turns_as_trained(student: nn.Module, data: PreparedData, adapter: bool) -> None:
    """On chat data, the student's config and generation config also end sequences with the template's end-of-turn
    token, which its assistant turns are taught to end with (:func:`ekd.models.export.also_stop_at`), said in one
    line when that changes them (an adapter export ships no config: the line gives the ids to pass)."""
    from ekd.data.chat import ChatRenderer
    from ekd.models.export import also_stop_at

    turn_ends = ChatRenderer(data.tokenizer).end_of_turn_ids()
    if ids := also_stop_at(student, turn_ends):
        log.info(
            "student: its chat turns end with %s, which its config does not name: its config and generation_config "
            "now end sequences with %s, %s",
            ", ".join(repr(t) for t in data.tokenizer.convert_ids_to_tokens(turn_ends)),
            ids,
            f"but an adapter export keeps its base's: pass eos_token_id={ids} to generate"
            if adapter
            else "and the export does",
        )


def boundary_models(cfg: Config) -> dict[str, tuple[str, str]]:
    """Role → (spec, revision) of the real (non-preset) models whose document convention counts; the teacher's
    files as :func:`teacher_config_source` finds them."""
    models = {}
    if not is_preset(cfg.model.student):
        models["student"] = (cfg.model.student, cfg.model.revision)
    if teacher_needed(cfg) and not is_preset(cfg.model.teacher):
        models["teacher"] = teacher_config_source(cfg)
    return models


def teacher_config_source(cfg: Config) -> tuple[str, str]:
    """(spec, revision) the run reads the teacher's small files from (config, generation config, tokenizer; no
    weights): a run from a cache reads the copy the cache keeps (:mod:`ekd.teacher.cache.kept_teacher`), so
    the teacher's directory need not exist there (try-out 64, F13); any other run reads ``model.teacher``.

    Raises:
        CacheError: the cache's copy is damaged, or it keeps none (made by an older ekd) while the
            ``model.teacher`` directory is not there (:func:`~ekd.teacher.cache.kept_teacher.teacher_files_in_cache`).
    """
    spec, revision = cfg.model.teacher, cfg.model.teacher_hub_revision
    if cfg.teacher.source != "cache" or is_preset(spec) or not cfg.teacher.cache_dir:
        return spec, revision
    from ekd.teacher.cache.kept_teacher import teacher_files_in_cache

    kept = teacher_files_in_cache(cfg.teacher.cache_dir, spec)
    return (str(kept), "") if kept is not None else (spec, revision)


def check_cache_run(cfg: Config) -> None:
    """What a run from a teacher cache (``teacher.source=cache``) is refused for before any data is read — at
    ``ekd distill``'s start and by ``ekd plan`` (try-out 66, F8: plan said "fits" for both refusals below): the
    cached targets' temperature, ``teacher.cache_dir`` (a finished cache, every shard file there), the target
    settings it was built with (:func:`~ekd.teacher.cache.source.check_cache_settings`), ``model.teacher`` (a path not on this
    machine must name the cache's teacher: :func:`~ekd.teacher.cache.source.absent_teacher`), the cache's copy of
    the teacher's files (:func:`teacher_config_source`) and a teacher the evaluation at the end would load
    (:func:`check_evaluation_teacher`).

    Raises:
        CacheError, ConfigError, ModelError: one line naming the key and its fix.
    """
    if teacher_needed(cfg):
        from ekd.teacher.cache.source import (
            absent_teacher,
            check_cache_dir,
            check_cache_pin,
            check_cache_settings,
            check_cache_temperature,
        )

        check_cache_temperature(cfg.method, cfg.train.max_steps)
        found = check_cache_dir(cfg.teacher.cache_dir)
        absent_teacher(cfg.model.teacher, found, cfg.teacher.cache_dir, cfg.model.teacher_hub_revision)
        check_cache_pin(cfg, found, cfg.teacher.cache_dir)
        check_cache_settings(cfg, found)
        teacher_config_source(cfg)
    check_evaluation_teacher(cfg)


def check_evaluation_teacher(cfg: Config) -> None:
    """A run from a cache reads no teacher to train (the cache keeps its files: :func:`teacher_config_source`)
    but loads it at the end to evaluate it — for its eval-set figures and task scores: a teacher that is not
    there is refused at the start, not after the training, naming the keys that train and evaluate without it.

    Raises:
        ModelError: ``model.teacher`` cannot be loaded here while ``eval.teacher`` or ``eval.tasks_teacher`` is
            on.
    """
    from ekd.errors import EkdError
    from ekd.hub import check_model_spec

    if cfg.teacher.source != "cache":
        return
    tasks = bool(cfg.eval.tasks) and cfg.eval.tasks_teacher and not is_preset(cfg.model.teacher)
    uses = [k for k, on in (("eval.teacher", evaluates_teacher(cfg)), ("eval.tasks_teacher", tasks)) if on]
    if not uses:
        return
    try:
        check_model_spec(cfg.model.teacher, "model.teacher", cfg.model.teacher_hub_revision)
    except EkdError as e:
        keys = " and ".join(f"{k}=false" for k in uses)
        raise type(e)(
            f"{e} (with teacher.source=cache the teacher is loaded only to evaluate it at the end: set {keys} to "
            "train and evaluate without it)"
        ) from None


def tokenizer_role(cfg: Config, spec: str) -> str:
    """Whose files ``model.tokenizer`` (``spec``, as :func:`tokenizer_source` resolves it) reads: 'teacher' for
    ``teacher`` or the teacher's directory or hub id however spelled (read at the teacher's revision), 'student',
    else 'tokenizer' (a tokenizer of its own, read at ``model.revision``)."""
    if spec in ("teacher", "student"):
        return spec
    return "teacher" if names_teacher(cfg, spec) else "tokenizer"


def names_teacher(cfg: Config, spec: str) -> bool:
    """Whether ``spec`` (``model.tokenizer``) names ``model.teacher``'s directory, however spelled (relative,
    absolute, a trailing '/'), whether or not it exists here."""
    teacher = cfg.model.teacher
    if is_preset(teacher) or not spec.strip() or not teacher.strip():
        return False
    return same_location(spec, teacher)


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
        revision=cfg.model.revision_of(role),
        trust_remote_code=cfg.model.trust_remote_code,
        dtype=dtype,
        attn_implementation=cfg.model.attn_implementation,
        role=role,
    )
    model = empty_model(spec, **common) if empty else load_model(spec, seed=seed, **common)
    shared_vocab_size(data.vocab_size, (role, model))
    if role == "student":
        adapter = cfg.model.lora_r > 0 and cfg.model.lora_export == "adapter"
        _end_documents_as_trained(model, data, adapter)
        if cfg.data.format == "chat":
            _end_turns_as_trained(model, data, adapter)
    if empty:  # shapes only: rank 0 checks the head of the real weights
        return model
    model = model.to(device)
    check_block_fits_positions(model, cfg.data.block_length, role)  # before any forward of a block's length
    check_output_head(model, data.vocab_size, role)
    if role == "teacher":
        warn_padded_teacher(model, data)
    if cfg.data.document_attention == "isolated":
        check_document_isolation(model, data.vocab_size, role)
    check_forward_under_autocast(model, data.vocab_size, role, device, autocast_dtype(cfg, device))
    return model


def warn_smaller_teacher(teacher: nn.Module, student: nn.Module) -> None:
    """One warning when the teacher has fewer parameters than the student (try-out 21: model.teacher and
    model.student swapped trained without a word); a smaller teacher is sometimes meant, so it is not refused."""
    t, s = (sum(p.numel() for n, p in m.named_parameters() if "lora_" not in n) for m in (teacher, student))
    if t < s:
        log.warning(
            "model.teacher has fewer parameters than model.student (%s vs %s): are model.teacher and "
            "model.student swapped?",
            f"{t:,}",
            f"{s:,}",
        )


PADDED_MASS_WARNING = 0.01
"""A teacher putting more than this share of its probability on head rows past the tokenizer is named in a
warning at load: a trained model gives those rows ~0 (Qwen2.5: < 1e-6); a large share usually means a teacher
trained with another tokenizer, whose targets ekd would take over the wrong ids."""
PADDED_MASS_TOKENS = 64
"""Tokens of the data the padded-mass check runs the teacher on (one forward, at load)."""


def warn_padded_teacher(teacher: nn.Module, data: PreparedData) -> None:
    """One warning line when ``teacher`` puts more than :data:`PADDED_MASS_WARNING` of its probability on its
    head rows past the tokenizer, over the first :data:`PADDED_MASS_TOKENS` tokens of the first block of the run's first
    set (``train``; ``ekd eval``: its first eval set), named in the line (ekd's
    targets and scores leave those rows out, so nothing else would show it but the full-head eval column)."""
    name, blocks = next(((n, b) for n, b in data.blocks.items() if len(b.input_ids)), (None, None))
    if blocks is None:
        return
    ids = blocks.input_ids[:1, :PADDED_MASS_TOKENS]  # (1, ≤ PADDED_MASS_TOKENS)
    mass = padded_head_mass(teacher, data.vocab_size, ids)
    if mass > PADDED_MASS_WARNING:
        log.warning(
            "model.teacher puts %.1f%% of its probability on its head rows past the tokenizer's %s (mean over "
            "the first %d tokens of the %s set): ekd's targets leave those rows out — was the teacher trained "
            "with another tokenizer? check model.teacher and model.tokenizer",
            100 * mass,
            counted(data.vocab_size, "token"),
            ids.shape[1],
            name,
        )


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
        teacher, data.vocab_size, chunk_rows(cfg, data.vocab_size, device), autocast_dtype(cfg, device), shard
    )


def chunk_rows(cfg: Config, vocab_size: int, device: torch.device) -> int:
    """``train.head_chunk_size``, or the automatic size for this vocabulary on ``device`` when it is 0
    (:func:`ekd.losses.chunked.auto_chunk_rows`: 4× more rows on a GPU than on CPU)."""
    from ekd.losses.chunked import auto_chunk_rows

    return cfg.train.head_chunk_size or auto_chunk_rows(vocab_size, device.type)
