"""What ties a teacher cache to its config: the signature (teacher, tokenizer, data, target, seed) and the
checks that a config can be cached at all.

The signature is stored in the cache manifest; training from a cache recomputes it from the training config
(:mod:`ekd.teacher.cache.source`) and names every field that differs.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ekd.config import Config, ConfigError
from ekd.models.load import is_preset
from ekd.teacher.cache.manifest import DATA_SETTINGS, make_signature
from ekd.teacher.signal import TargetSpec

# ekd.data.packing: documents framed by the document boundary (BOS/EOS), concatenated, cut into
# non-overlapping T-token blocks; v2 added document starts (isolated attention) and the boundary rule
PACKING_RULE = "concat-documents-blocks-v2"


# data.* keys that do not decide the training blocks (eval sets), or are fields of the signature of their own
# (data.store_dir stays: the token store splits eval documents by its own rule, try-out 64 F4)
NOT_DATA_SETTINGS = (
    "max_document_chars",  # refuses a document, never changes the blocks
    "eval_sources",
    "max_eval_blocks",
    "block_length",
    "document_attention",
    "separator",
)
BPE_VOCAB_SIZE = "model.bpe_vocab_size"  # recorded when the tokenizer is a BPE trained on the training split
TEMPLATE_FILE = "data.chat_template (the file's text)"  # recorded when data.chat_template names a file


def data_settings(cfg: Config) -> dict[str, Any]:
    """The settings recorded beside ``data_fingerprint`` (:data:`~ekd.teacher.cache.manifest.DATA_SETTINGS`),
    by config key: every ``data.*`` key but :data:`NOT_DATA_SETTINGS`, :data:`BPE_VOCAB_SIZE` when the
    tokenizer is trained on the training split (``train_bpe``: its tokens follow the data), and the sha256 of
    the chat template's text (:data:`TEMPLATE_FILE`) when ``data.chat_template`` names a file."""
    from ekd.data.chat import read_template_option
    from ekd.train.prepare import tokenizer_source

    settings = {
        f"data.{f.name}": getattr(cfg.data, f.name)
        for f in dataclasses.fields(cfg.data)
        if f.name not in NOT_DATA_SETTINGS
    }
    if tokenizer_source(cfg) == "train_bpe":
        settings[BPE_VOCAB_SIZE] = cfg.model.bpe_vocab_size
    # a file's path (the option's own rule tells it from template text): its text may change under it (F6)
    try:
        text = read_template_option(cfg.data.chat_template) if cfg.data.chat_template else ""
    except ConfigError:  # no readable file: a chat run refused it already; another format never reads it
        text = ""
    if text and text != cfg.data.chat_template:
        settings[TEMPLATE_FILE] = f"sha256:{hashlib.sha256(text.encode('utf-8')).hexdigest()}"
    return settings


def check_cacheable(cfg: Config) -> None:
    """Refuse configs whose target a cache cannot hold; each error names the key and the fix."""
    if not cfg.teacher.cache_dir:
        raise ConfigError(
            "teacher.cache_dir must be set: it is the directory `ekd cache` writes the cache to"
        )
    named = f"method={cfg.method.preset} (method.{{}})" if cfg.method.preset else "method.{}"
    if cfg.method.kd_weight <= 0:  # try-out 85: `method=ce` was told its target, not that it has no teacher
        raise ConfigError(
            f"{named.format(f'kd_weight={cfg.method.kd_weight:g}')} trains without a teacher term: there are "
            "no teacher targets to cache; a cache is for a KD method with sparse targets, e.g. method=rskd"
        )
    if cfg.method.target not in ("rs", "topk"):
        raise ConfigError(
            f"{named.format(f'target={cfg.method.target}')}: a teacher cache stores sparse targets; "
            "set method.target=rs (e.g. method=rskd) or method.target=topk"
        )


def state_dict_sha256(model: nn.Module, dtype: torch.dtype | None = None) -> str:
    """sha256 over the model's parameters and buffers (names, dtypes, shapes and bytes, in name order); with
    ``dtype``, its floating tensors as cast to it (a teacher loaded in float32 hashed as the bfloat16 one a cache
    was built from: the same cast loading makes)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach()
        t = (t.to(dtype) if dtype is not None and t.is_floating_point() else t).cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def files_sha256(files: list[Path]) -> str:
    """sha256 over the names and bytes of ``files`` (in the given order)."""
    h = hashlib.sha256()
    for path in files:
        h.update(f"{path.name};".encode())
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
    return h.hexdigest()


def teacher_revision(cfg: Config, model: nn.Module) -> str:
    """What pins the teacher's weights: its revision (``model.teacher_revision``, else ``model.revision``) if set — a hub id's branch or tag as the commit it
    resolves to in the hub cache (a branch is no identity; try-out 154, N1: a build resumed after the branch moved
    finished with another teacher's targets), written as a commit given alike; else a hash of a local directory's
    safetensors files, the hub commit transformers resolved, or (hub ids, presets) a hash of the state dict."""
    spec = cfg.model.teacher
    if cfg.model.teacher_hub_revision:
        revision = cfg.model.teacher_hub_revision
        if not is_preset(spec) and not Path(spec).expanduser().exists() and not is_commit(revision):
            from ekd.hub import model_directory

            if (snapshot := model_directory(spec, revision)) is not None and is_commit(snapshot.name):
                return snapshot.name
        return revision
    if not is_preset(spec):
        if Path(spec).expanduser().is_dir():
            if revision := weights_revision(spec):
                return revision
        elif commit := getattr(model.config, "_commit_hash", None):
            return f"commit:{commit}"
    return f"state-dict-sha256:{state_dict_sha256(model)}"


def hub_commit(revision: object) -> str | None:
    """The hub commit a recorded revision names — 40 hex digits, or transformers 4's ``commit:<sha>`` — else None
    (a branch, a tag, a content pin, nothing)."""
    text = str(revision or "").removeprefix("commit:")
    return text if is_commit(text) else None


def is_commit(revision: str) -> bool:
    """Whether ``revision`` is a full git commit (40 hex digits), which pins a hub repository's files."""
    return len(revision) == 40 and all(c in "0123456789abcdef" for c in revision)


def _safetensors(spec: str) -> list[Path]:
    """The safetensors files of a local model directory, sorted; [] for a hub id, a preset or an empty spec."""
    path = Path(spec).expanduser()
    if is_preset(spec) or not spec.strip() or not path.is_dir():
        return []
    return sorted(path.glob("*.safetensors"))


def weights_revision(spec: str) -> str | None:
    """:func:`teacher_revision` of a local directory of safetensors files, from the files alone (no model
    loaded): ``safetensors-sha256:<hex>``; None for anything else (a hub id, a preset, pickled weights)."""
    files = _safetensors(spec)
    return f"safetensors-sha256:{files_sha256(files)}" if files else None


def weights_changed(files: dict | None, revision: str | None, spec: str) -> bool:
    """Whether the safetensors weights at ``spec`` are not those recorded as ``files`` (:func:`teacher_files`) and
    ``revision`` (:func:`weights_revision`): the files' sizes, times and inodes first (a ``stat`` each), their
    sha256 only when those differ (a copy elsewhere, or rewritten in place with the same bytes, is the same)."""
    return not (files is not None and same_files(files, spec)) and weights_revision(spec) != revision


def teacher_files(spec: str) -> dict[str, list[int]] | None:
    """{file name: [size in bytes, mtime in ns, ctime in ns, inode]} of a local teacher directory's safetensors
    files; None for anything else. Recorded by ``ekd cache`` beside the weights' hash (signature key
    :data:`TEACHER_FILES`): a run from the cache compares it with the directory (a ``stat`` per file) and hashes
    the weights again only when it differs, so a teacher retrained in place is caught without reading the whole
    teacher every run. The change time and inode catch a file written in place with its mtime put back (``cp
    -p``, ``rsync -a``, tools that stamp one fixed mtime; try-out 44): the kernel sets ctime on every write and
    ``utime``. Records of an older ekd ([size, mtime]) are compared as far as they go (:func:`same_files`)."""
    stats = {f.name: f.stat() for f in _safetensors(spec)}  # one stat per file: one moment
    return {
        name: [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino] for name, st in stats.items()
    } or None


def same_files(recorded: Any, spec: str) -> bool:
    """Whether ``spec``'s safetensors files are in the state :func:`teacher_files` recorded: each file's
    [size, mtime, ctime, inode], or the [size, mtime] an older ekd recorded (compared as far as it goes, so its
    caches and LoRA runs are not hashed again at every run; review 106)."""
    current = teacher_files(spec)
    if not isinstance(recorded, dict) or current is None or set(recorded) != set(current):
        return False
    return all(isinstance(v, list) and current[k][: len(v)] == v for k, v in recorded.items())


def cache_signature(cfg: Config, data: Any, revision: str) -> dict:
    """The signature of the cache that ``cfg`` builds from ``data`` (a PreparedData).

    Besides :func:`~ekd.teacher.cache.manifest.make_signature`'s fields it records ``document_attention``
    (isolated or packed: the teacher's targets differ) and ``separator`` (the resolved document boundary,
    e.g. ``auto:bos=-,eos=0``), so a run with another choice is refused by name.
    """
    from ekd.data import tokenizer_hash

    check_cacheable(cfg)
    blocks = data.blocks["train"]
    boundary = getattr(data, "boundary", None) or blocks.boundary
    signature = make_signature(
        teacher_id=cfg.model.teacher,
        teacher_revision=revision,
        tokenizer_hash=tokenizer_hash(data.tokenizer),
        data_fingerprint=blocks.fingerprint(),
        block_length=blocks.block_length,
        packing=PACKING_RULE,
        vocab_size=data.vocab_size,
        **target_settings(cfg),
    )
    signature["document_attention"] = blocks.document_attention
    signature["separator"] = boundary.describe() if boundary is not None else "eos"
    signature[DATA_SETTINGS] = data_settings(cfg)  # names the key when data_fingerprint differs
    return signature


def target_settings(cfg: Config) -> dict[str, Any]:
    """The :func:`~ekd.teacher.cache.manifest.make_signature` arguments the config alone decides: the target, its
    K, tail, τ, N and β, the positions rule and fraction, and the RS seed."""
    m = cfg.method
    return {
        "target": m.target,
        "topk": m.topk,
        "topk_tail": m.topk_tail,
        "target_temperature": m.kd_temperature,
        "rs_samples": m.rs_samples,
        "rs_proposal_power": m.rs_proposal_power,
        "positions": cfg.teacher.cache_positions,
        "position_fraction": cfg.teacher.cache_fraction,
        "seed": cfg.run.seed,
    }


def target_spec(cfg: Config) -> TargetSpec:
    """The sparse target of ``cfg`` (kind, K, tail, N, β) with the RS seed ``run.seed``."""
    m = cfg.method
    return TargetSpec(m.target, m.topk, m.topk_tail, m.rs_samples, m.rs_proposal_power, cfg.run.seed)


__all__ = [
    "BPE_VOCAB_SIZE",
    "PACKING_RULE",
    "cache_signature",
    "target_settings",
    "check_cacheable",
    "data_settings",
    "files_sha256",
    "state_dict_sha256",
    "target_spec",
    "same_files",
    "teacher_files",
    "teacher_revision",
    "weights_revision",
]
