"""The offline teacher: a ``TeacherSource`` that reads targets and statistics from an ``ekd cache``.

    ekd distill CONFIG teacher.source=cache teacher.cache_dir=runs/cache-demo method=rskd

No teacher model is loaded. Per micro-batch the cache gives the teacher entropy and log p(gold) at the
cached positions and the sparse target (RS counts/N or top-K probabilities) there; selection then runs on
the cached positions only (``available``). Student-side scores work as online; scores and objectives that
need the teacher's full distribution are refused when the method is built (``MethodParts``).

The cache must match the training config: its signature is recomputed from the config and the prepared
data (teacher id, tokenizer hash, data fingerprint, block length, packing, vocabulary, target and its
parameters, RS seed) and any difference is one error naming each field. The teacher's weights hash and the
cached-position rule are taken from the cache (they cannot be, or need not be, recomputed) — unless
``model.teacher`` names another path than the cache's ``teacher_id``: then a local teacher's hash is computed
from its safetensors files, and equal weights make it the same teacher (:func:`training_signature`).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ekd.config import Config, ConfigError
from ekd.hub import is_local, model_directory
from ekd.losses.targets import SparseTarget
from ekd.models.load import is_preset
from ekd.teacher.cache.format import CacheError, CacheMismatch
from ekd.teacher.cache.manifest import (
    BUILT_WITH,
    CONTENT_REVISIONS,
    DATA_SETTINGS,
    TEACHER_FILES,
    cache_teacher_parts,
    compare_signatures,
    computed_with,
    diff_summary,
    is_imported,
    make_signature,
    rebuild_advice,
    refuse_a_file,
    same_directory,
)
from ekd.teacher.cache.mismatch import CONFIG_KEYS, PACKING, changed_settings, name_config_keys, trains_bpe
from ekd.teacher.cache.reader import CacheReader
from ekd.teacher.cache.readers import reading
from ekd.teacher.cache.signature import (
    PACKING_RULE,
    TEMPLATE_FILE,
    cache_signature,
    check_cacheable,
    data_settings,
    same_files,
    target_settings,
    teacher_files,
    weights_changed,
    weights_revision,
)
from ekd.teacher.signal import TeacherSignal
from ekd.temperature import fixed_tau, varying_tau

log = logging.getLogger(__name__)

# taken from the cache: not recomputable without the teacher (weights). The positions rule is compared (try-out
# 27: an `all`-positions method trained from a teacher-entropy top-20% cache became a 20% selection, while its
# config.yaml said teacher.cache_positions=all), so a run's config says which positions it could train on.
FROM_CACHE = ("teacher_revision",)


def check_cache_dir(directory: str) -> dict:
    """Refuse a ``teacher.cache_dir`` that holds no finished cache this ekd reads, before any data is read
    (reading, tokenizing and packing a real corpus takes minutes); the signature, which needs the prepared
    data, is checked when :class:`CacheTeacher` opens the cache.

    Returns:
        The manifest's signature.

    Raises:
        CacheError: one line naming the key, the path and the fix (build it with ``ekd cache CONFIG``).
    """
    path = Path(directory)
    refuse_a_file(path)
    if not path.exists():
        raise CacheError(
            f"teacher.cache_dir {path} does not exist: build the cache first with `ekd cache CONFIG` "
            "(this config), or set teacher.cache_dir to a built cache"
        )
    try:  # the manifest: its format version, that the build finished; every shard file there, of its size
        reader = CacheReader(path)
        reader.check_files()  # try-out 85, F2: a missing shard was found when training reached it
        return reader.signature
    except CacheError as e:  # named once (try-out 47: 'teacher.cache_dir: teacher.cache_dir=…')
        said = str(e)
        raise CacheError(
            said if said.startswith("teacher.cache_dir") else f"teacher.cache_dir: {said}"
        ) from None


def check_cache_settings(cfg: Config, found: dict) -> None:
    """Refuse a cache whose settings are not the config's — the target, its K, tail, τ, N and β, the positions
    rule, the RS seed and the block length (with the data keys that differ from the build's) — before any data
    is read, at ``ekd distill``'s start and by ``ekd plan`` (try-out 85, F3: an RS run from a top-K cache was
    said to fit, and distill refused it only once the data was packed); the fields that need the data, the
    tokenizer or the teacher are compared when :class:`CacheTeacher` opens the cache, with the same line.

    Raises:
        CacheError: :func:`check_signature`'s line, naming each differing field and its config key.
    """
    check_cacheable(cfg)
    settings = target_settings(cfg)
    own = make_signature(  # the identity fields are placeholders: only the settings are read from it
        teacher_id="",
        teacher_revision="",
        tokenizer_hash="",
        data_fingerprint="",
        block_length=cfg.data.block_length,  # the blocks' T (PackedBlocks.block_length)
        packing=PACKING_RULE,
        vocab_size=2,
        **settings,
    )
    fields = [*settings, "rs_sampler"]  # as make_signature normalised them; the sampler follows the target
    expected = _seed_unread_by_topk({**found, **{k: own[k] for k in fields}}, found)
    if found.get("block_length") != cfg.data.block_length:  # other blocks (try-out 86, F1: plan said "fits"):
        # their fingerprint differs too, explained by the data keys that differ from the build's (try-out 64, F12)
        expected.update(block_length=cfg.data.block_length, data_fingerprint=OTHER_BLOCKS)
        expected[DATA_SETTINGS] = data_settings(cfg)
    check_signature(Path(cfg.teacher.cache_dir), expected, found)


STATE_DICT = "state-dict-sha256:"
"""The prefix of a ``teacher_revision`` pinning the loaded weights (a hub id's, a preset's):
:func:`~ekd.teacher.cache.signature.teacher_revision`."""

OTHER_BLOCKS = "(other blocks: another block length)"
"""The data fingerprint :func:`check_cache_settings` expects where the block length differs (the data unread)."""


def check_cache_pin(cfg: Config, found: dict, cache_dir: str) -> None:
    """A hub teacher pinned by the run to a commit (``model.teacher_revision``, else ``model.revision``) other than
    the one the cache at ``cache_dir`` (signature ``found``) was built from is refused at the start (try-out 160,
    F4: it trained from the other commit's targets and, at its end, blamed a branch that had not moved), as another
    local teacher directory is. A branch or tag may have moved since the build: its run trains from the cache and
    its teacher is compared when loaded to evaluate. Nothing to compare where the cache pins content.

    Raises:
        CacheError: one line naming both commits and the pin that trains from this cache.
    """
    from ekd.teacher.cache.signature import hub_commit, is_commit

    spec, revision, key = cfg.model.teacher, cfg.model.teacher_hub_revision, cfg.model.teacher_revision_key
    cached = hub_commit(found.get("teacher_revision"))
    if is_commit(revision) and cached and revision != cached and not (is_preset(spec) or is_local(spec)):
        from ekd.models.identity import weights_fingerprint

        if (ours := weights_fingerprint(spec, revision)) is not None and ours == weights_fingerprint(
            spec, cached
        ):
            return  # the same files under another commit (try-out 164, F3): the same teacher
        raise CacheError(
            f"{key}={revision[:12]}… pins model.teacher {spec} at another commit than the cache at {cache_dir} was "
            f"built from ({cached[:12]}…): set model.teacher_revision={cached} to train from this cache (and "
            "evaluate its teacher), or build a cache at your pin"
        )


def absent_teacher(spec: str, found: dict, cache_dir: str, revision: str = "") -> bool:
    """Whether ``model.teacher`` (``spec``) is a local directory that is not on this machine, and so stands for
    the teacher of the cache at ``cache_dir`` (signature ``found``) — which it must name: its recorded path
    however spelled, or the config's relative spelling of it (:func:`_names_cached_teacher`). One rule for the
    check at a run's start (``ekd distill``, ``ekd plan``: :func:`ekd.train.prepare.check_cache_run`) and the
    signature's (:func:`training_signature`). ``revision``: the teacher's (``model.teacher_revision``, else
    ``model.revision``), at which a hub id is looked up in the hub cache.

    Raises:
        CacheError: an absent path that is not the cache's teacher (try-out 65, F1: any missing path was taken,
            the content-pinning hash copied from the cache making it "the same weights").
    """
    cached_id = str(found.get("teacher_id", ""))
    if not _absent_path(spec, cached_id, revision):
        return False
    if not _names_cached_teacher(spec, cached_id):
        raise CacheError(
            f"model.teacher {spec} is not there and is not the teacher of the cache at {cache_dir} "
            f"({cached_id}); set model.teacher={cached_id} to train from the cache without its teacher, or "
            "set model.teacher to where the teacher is"
        )
    return True


def training_signature(cfg: Config, data, found: dict) -> dict:
    """The signature the training config expects, with the fields it cannot decide copied from ``found``.

    The teacher's weights hash is copied too when ``model.teacher`` is a local path that is not there and names
    the cache's teacher (:func:`_names_cached_teacher`: a cache copied to a machine without its teacher; another
    absent path is refused, CacheError), or names the cache's teacher directory
    (however spelled) and its safetensors files have the sizes, times and inodes the build recorded
    (:data:`~ekd.teacher.cache.manifest.TEACHER_FILES`; caches built before that record are trusted). When it
    names another path while the cache pins its teacher by the weights' content (a cache built from another
    working directory, before config paths were resolved), or when those files changed (a teacher retrained or
    copied over in place), the hash is computed from ``model.teacher``'s safetensors files instead — equal
    weights accept the cache, others are refused.
    """
    expected = cache_signature(cfg, data, str(found.get("teacher_revision", "")))
    for key in FROM_CACHE:
        expected[key] = found.get(key)
    revision = str(found.get("teacher_revision", ""))
    cached_id = str(found.get("teacher_id", ""))
    spec = cfg.model.teacher
    if absent_teacher(spec, found, cfg.teacher.cache_dir, cfg.model.teacher_hub_revision):
        # not on this machine (a cache copied without its teacher; try-out 64, F13): the ids decide, and the
        # weights' hash is the cache's
        expected["teacher_id"] = cached_id
        here = os.path.normpath(os.path.abspath(os.path.expanduser(spec)))
        by_end = (
            "" if here == os.path.normpath(cached_id) else f", by the end of its path (here it is {here})"
        )
        log.info(  # try-out 67, F7: a relative spelling matched by its end is said so
            "teacher cache: model.teacher %s is not on this machine; taken as the cache's teacher %s%s (%s)",
            spec,
            cached_id,
            by_end,
            "its import pinned by the source file's hash"
            if is_imported(found)
            else "its weights pinned by the cache's teacher_revision",
        )
    elif revision.startswith(STATE_DICT) and spec != cached_id and not same_directory(spec, cached_id):
        # a hub teacher's (or a preset's) pin is its loaded weights' hash, which no file hash equals: the cache's
        # teacher at another name (its snapshot, a saved copy) is compared when loaded to evaluate it
        # (loaded_teacher_changed; try-out 154, N3: the very same weights were refused here)
        log.info(
            "teacher cache: model.teacher %s is not the cache's teacher_id %s; its loaded weights are compared with "
            "the cache's when the run loads it to evaluate it",
            spec,
            cached_id,
        )
    elif revision.startswith(CONTENT_REVISIONS) and spec != cached_id and not same_directory(spec, cached_id):
        log.info(
            "teacher cache: model.teacher %s is not the cache's teacher_id %s; comparing the weights' hash",
            spec,
            cached_id,
        )
        # a hub id by its cached snapshot's files (the same bytes as a local copy); "": cannot tell, the ids decide
        directory = model_directory(spec, cfg.model.teacher_hub_revision)
        expected["teacher_revision"] = weights_revision(str(directory or spec)) or ""
    elif (
        revision.startswith("safetensors-sha256:")
        and found.get(TEACHER_FILES) is not None
        and not same_files(found.get(TEACHER_FILES), spec)
    ):
        # try-out 66, F6: an empty mount point, a directory of configs only (a stat, not a hash of the weights);
        # try-out 67, F6: a weights file cut short (a half-copied teacher), named before its hash is compared
        damaged = "holds no safetensors weights" if teacher_files(spec) is None else _unreadable_weights(spec)
        if damaged:
            raise CacheError(
                f"model.teacher {spec} {damaged} to check against the cache's teacher ({cached_id}): point "
                "model.teacher at the teacher's directory, or, to train without the teacher, leave no directory at "
                "that path (an unmounted or half-synced teacher?)"
            )
        log.info(
            "teacher cache: %s's safetensors files changed (size, times or inode) since the cache was built; "
            "comparing the weights' hash (equal weights use the cache; `ekd cache CONFIG` then records the files' "
            "new times, so that later runs skip this hash)",
            spec,
        )
        expected["teacher_revision"] = weights_revision(spec) or ""  # retrained in place: refused by name
    return _seed_unread_by_topk(expected, found)


def teacher_changed_since(spec: str, signature: dict, revision: str = "") -> str:
    """Why the teacher directory ``spec`` no longer holds the teacher a cache of ``signature`` was built from —
    checked when a run trained from the cache loads the teacher again to evaluate it at its end (try-out 130, F1: a
    teacher replaced while the run trained gave it another model's KL and agreement, while ekd-run.json recorded
    the cache's); "" when it holds it, or when that cannot be told here (a hub id, a preset, an import, a cache
    that pins no weights). The files' sizes, times and inodes as the build recorded them first; their weights
    hashed only when those differ; a directory gone since is said so (try-out 131: the run failed at its end)."""
    pinned = str(signature.get("teacher_revision", ""))
    if not pinned.startswith("safetensors-sha256:") or is_preset(spec):
        return ""
    # a hub id holding the cache's teacher: its cached snapshot's files at the teacher's revision (try-out 154, N8)
    directory = model_directory(spec, revision)
    # moved away while the run trained: said, not a failed end
    if directory is None or not directory.is_dir():
        return f"{spec} is no longer there (moved or deleted while the run trained?)"
    if not weights_changed(signature.get(TEACHER_FILES), pinned, str(directory)):
        return ""
    held = (
        "holds no safetensors weights" if weights_revision(str(directory)) is None else "holds other weights"
    )
    return f"{spec} {held} than the cache's teacher now (replaced while the run trained?)"


def loaded_teacher_changed(cfg, model, recorded: str | None, built_dtype: str | None = None) -> str:
    """Why the teacher loaded to evaluate a run trained from a cache (``model``) is not the one the cache pinned as
    ``recorded`` (its ``teacher_revision``, or the run's ``cache_teacher`` teacher part); "" where it is, or where
    it cannot be told here (a local directory's files: :func:`teacher_changed_since` checked those before
    loading). A pin of the loaded weights (``state-dict-sha256:``: a hub id's, a preset's) is compared with the
    weights loaded now, cast to ``built_dtype`` (the dtype the cache's teacher ran in: a build in bfloat16 and an
    evaluation in float32 hold the same weights); a commit (``commit:<sha>`` as transformers 4 recorded it, or a
    commit a branch resolved to) with the snapshot the teacher's revision resolves to now (``model.teacher_revision``,
    else ``model.revision``)."""
    from ekd.teacher.cache.signature import hub_commit, state_dict_sha256

    # a run's cache_teacher: '<teacher id>@<revision>'
    if recorded and not recorded.startswith(CONTENT_REVISIONS):
        recorded = recorded.rpartition("@")[2]
    spec = cfg.model.teacher
    if recorded and recorded.startswith(STATE_DICT):  # whatever model.teacher names now: its loaded weights
        built = getattr(torch, built_dtype, None) if built_dtype else None
        loaded = next(model.parameters()).dtype
        if isinstance(built, torch.dtype) and built.itemsize > loaded.itemsize:
            return ""  # loaded narrower than built: the build's values are not recoverable, cannot be told
        cast = built if isinstance(built, torch.dtype) and built != loaded else None
        current = f"{STATE_DICT}{state_dict_sha256(model, cast)}"
    elif recorded and hub_commit(recorded) and not is_preset(spec) and not is_local(spec):
        # a hub id's commit: the snapshot loaded now
        if (snapshot := model_directory(spec, cfg.model.teacher_hub_revision)) is None:
            return ""
        current = f"commit:{snapshot.name}" if recorded.startswith("commit:") else snapshot.name
    else:
        return ""
    if current == recorded:
        return ""
    moved = ""
    if not is_local(spec):  # the commit that holds the cache's teacher, named (try-out 162, F6)
        revision, key = cfg.model.teacher_hub_revision, cfg.model.teacher_revision_key
        at = f"{key}={revision}" if revision else "its default branch"
        moved = (
            f"; {at} reads another commit now: model.teacher_revision={commit} names the cache's"
            if (commit := hub_commit(recorded))
            else "; a newer download under the hub id's branch?"
        )
    return (
        f"{spec} now loads other weights than the cache was built from ({current[:30]}… against "
        f"{recorded[:30]}…{moved})"
    )


def evaluation_dtype_note(cfg: Config, signature: dict, device: torch.device) -> str:
    """A warning where a run from a cache evaluates its teacher in another dtype than the cache's targets were
    computed in (``built_with``): ``model.teacher_dtype`` reaches the teacher loaded at the end for KL and agreement,
    not the targets the run trains from (try-out 158, F3: said nowhere, the KL measured against a bfloat16 teacher of
    a run taught by a float32 one); "" otherwise (no teacher evaluated, the same dtype, a cache recording none).
    ``device``: the run's, which resolves ``model.teacher_dtype=auto``."""
    from ekd.models.load import dtype_name, resolve_dtype
    from ekd.train.prepare import evaluates_teacher

    built = signature.get(BUILT_WITH)
    if not isinstance(built, dict) or not evaluates_teacher(cfg):
        return ""
    evaluated = dtype_name(resolve_dtype(cfg.model.teacher_dtype, device))
    if built.get("teacher_dtype") in (None, evaluated):
        return ""
    return (
        f"model.teacher_dtype={cfg.model.teacher_dtype} ({evaluated} here) applies to the teacher loaded at the end to "
        f"evaluate (its KL and agreement), not to the targets this run trains from: the cache's were computed by "
        f"{computed_with(built.get('teacher_dtype'), built.get('autocast'))} (its built_with); "
        f"model.teacher_dtype={built.get('teacher_dtype')} evaluates against the teacher as the cache computed it"
    )


def recorded_teacher_changed(spec: str, cache_dir: str, pinned: str | None, revision: str = "") -> str:
    """:func:`teacher_changed_since` for ``ekd eval`` of a run trained from a cache: against the teacher the run
    recorded (``cache_teacher`` in ekd-run.json, ``pinned``) — the cache itself may have been rebuilt since, or be
    gone —, the cache's file stats used where it still holds that teacher (try-out 131, F1: ``ekd eval`` wrote
    another model's KL into eval.json). "" where the run records none (an older ekd's) or it cannot be told."""
    if not pinned:
        return ""
    revision = cache_teacher_parts(pinned)[0]
    try:
        signature = CacheReader(Path(cache_dir)).signature
    except CacheError:
        signature = {}
    if signature.get("teacher_revision") != revision:
        signature = {"teacher_revision": revision}  # no file stats to go by: the weights' hash decides
    return teacher_changed_since(spec, signature, revision)


def _seed_unread_by_topk(expected: dict, found: dict) -> dict:
    """``expected`` with the cache's own seed where the target is top-K: top-K targets do not depend on it."""
    if expected["target"] == "topk":
        expected["seed"] = found.get("seed")
    return expected


def _unreadable_weights(spec: str) -> str:
    """'has NAME, which safetensors cannot read (its error)' for the first safetensors file of the local
    directory ``spec`` whose header or length is wrong (safetensors' own check: no tensor is read); ''."""
    from safetensors import safe_open

    from ekd.errors import first_line

    for path in sorted(Path(spec).expanduser().glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as e:  # safetensors raises its own SafetensorError, or OSError
            return f"has {path.name}, which safetensors cannot read ({first_line(e)})"
    return ""


def _absent_path(spec: str, cached_id: str, revision: str = "") -> bool:
    """Whether ``model.teacher`` names a local directory that is not on this machine: a path (or, beside a cache
    whose teacher was a local directory, a relative name) that does not exist — not a hub id cached here at
    ``revision``."""
    if is_preset(spec) or not spec.strip() or Path(spec).expanduser().exists():
        return False
    if not spec.startswith((".", "/", "~")) and model_directory(spec, revision) is not None:
        return False  # a hub id cached here (try-out 154, N8: said to be "not there")
    return spec.startswith((".", "/", "~")) or cached_id.startswith("/")


def _names_cached_teacher(spec: str, cached_id: str) -> bool:
    """Whether ``spec`` names the cache's teacher directory ``cached_id`` (an absolute path, as the build
    resolved it): the same path however spelled (from the working directory: ``../w/teacher``, try-out 66 F1),
    or a relative path whose end is its end once leading ``..`` are dropped — the config's own spelling in
    another copy of the project tree (configs/cache-demo.yaml: ``runs/demo/teacher``; ``../models/teacher`` from
    a sibling directory; try-out 65, F2). A symlink is not followed (the build recorded its target)."""
    cached = Path(os.path.normpath(cached_id))
    if Path(os.path.normpath(os.path.abspath(os.path.expanduser(spec)))) == cached:
        return True
    path = Path(os.path.normpath(os.path.expanduser(spec)))
    if path.is_absolute():
        return False
    parts = path.parts[next((i for i, p in enumerate(path.parts) if p != ".."), len(path.parts)) :]
    return bool(parts) and cached.parts[-len(parts) :] == parts


def build_keys_note(teacher_cfg: Any, reader: CacheReader) -> str:
    """The warning for a run from a cache whose config sets ``teacher.cache_stat_format`` or
    ``cache_shard_samples`` other than the cache was written with: how ``ekd cache`` writes a cache, which the
    run does not read — it reads the cache as written (try-out 108, F8: config.yaml said fp16 of a q8 cache) —
    else ""."""
    defaults = type(teacher_cfg)()
    written = {"cache_stat_format": reader.layout.stat_format, "cache_shard_samples": reader.shard_samples}
    named = [
        f"teacher.{key}={getattr(teacher_cfg, key)} (the cache's: {value})"
        for key, value in written.items()
        if getattr(teacher_cfg, key) != value and getattr(teacher_cfg, key) != getattr(defaults, key)
    ]
    if not named:
        return ""
    return (
        f"{', '.join(named)}: how `ekd cache` writes a cache, not how a run reads one; this run reads the cache at "
        f"{reader.directory} as it was written"
    )


def check_signature(directory: Path, expected: dict, found: dict) -> None:
    """Raise CacheError naming each differing field (and its config key) in one line."""
    diffs = compare_signatures(expected, found)
    if diffs:
        named = name_config_keys(diffs, expected, found)
        if is_imported(found) and expected.get("target") != found.get("target"):
            # try-out 63, F2: "import it again" cannot help, an import holds top-K targets only
            way = (
                f"an imported cache holds top-K targets (K={found.get('topk')}): train with method.target=topk "
                f"method.topk={found.get('topk')}, or build an {expected.get('target')} cache from the teacher "
                "with `ekd cache CONFIG` in another teacher.cache_dir"
            )
        else:
            way = f"{_train_as_built(diffs, found, expected)}{_anew(found)}, or set teacher.cache_dir to a matching cache"
        summary = diff_summary(named)
        raise CacheMismatch(
            f"teacher cache at {directory} does not match the training config ({summary}): {way}",
            directory,
            summary,
        )


# signature fields a run can simply be set to (teacher, tokenizer and data are what they are)
SETTABLE = ("block_length", "target", "topk", "topk_tail", "target_temperature", "rs_samples")
SETTABLE += ("rs_proposal_power", "seed", "document_attention", "separator", "positions", "position_fraction")


def _anew(found: dict) -> str:
    """How to make the config's cache: beside this one (it is good for the settings it was built with; try-out
    64, F8), or in its place; an import is imported again (:func:`rebuild_advice`)."""
    if is_imported(found):
        return rebuild_advice(found)
    return (
        "build this config's cache in another teacher.cache_dir with `ekd cache CONFIG` (keeping this one), or "
        "rebuild it here with `ekd cache CONFIG --overwrite`"
    )


def _config_value(field: str, recorded: Any) -> Any:
    """The config value that gives a signature field's recorded value: ``separator`` records the resolved
    boundary (``eos:bos=-,eos=0``), of which ``data.separator`` takes the mode (try-out 64, F1)."""
    if field == "separator" and isinstance(recorded, str):
        return recorded.split(":", 1)[0]
    return recorded


def _train_as_built(diffs: list[str], found: dict, expected: dict) -> str:
    """'train as it was built (KEY=VALUE ...), or ' where every differing field is a setting the run can take
    from the cache — the way on that keeps a good cache (try-out 50, F6: a teacher-entropy top-20% cache was
    told to be rebuilt, deleting it, where teacher.cache_positions=teacher_entropy_topk trains on it); ''
    otherwise. Other blocks come back with the build's packing and data settings (try-out 52, F3; try-out 64,
    F12: a data key that differed beside data.block_length was left out, and following the advice was refused
    again); a BPE trained on the training data comes back with them."""
    fields = [d.split(":", 1)[0] for d in diffs]
    values: dict[str, Any] = {}
    if "data_fingerprint" in fields:
        changed = changed_settings(expected, found)
        if TEMPLATE_FILE in changed:
            return ""  # a template file's text: not a value a run can be set to
        if changed or set(fields) & set(PACKING):
            fields.remove("data_fingerprint")
            values.update(changed)
            if trains_bpe(expected):  # its tokens follow the data
                fields = [f for f in fields if f not in ("tokenizer_hash", "vocab_size")]
    if (not fields and not values) or any(f not in SETTABLE for f in fields):
        return ""
    if any(_config_value(f, found.get(f)) == _config_value(f, expected.get(f)) for f in fields):
        return ""  # the run has that setting already (try-out 65, F7: separator auto → auto, other ids)
    values |= {CONFIG_KEYS[f]: _config_value(f, found.get(f)) for f in fields if found.get(f) is not None}
    shown = " ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in values.items())
    return f"train as it was built ({shown}), or " if shown else ""


def check_cache_temperature(method, total_steps: int | None = None) -> None:
    """Refuse a KD temperature the cached targets were not made at (one line naming the fix).

    ``total_steps``: the run's length (a τ schedule whose hold outlasts it is one τ in that run;
    :func:`ekd.temperature.fixed_tau`). Cached top-K targets are stored at τ = ``method.kd_temperature``,
    cached RS targets are drawn at τ = 1;
    training compares the student with the teacher at its own τ_i, so a per-token temperature policy, or
    RS with τ ≠ 1, would train toward the wrong distribution (RS: toward p^τ instead of p_τ).

    Raises:
        ConfigError: ``target=topk`` with a policy whose τ varies (:func:`ekd.temperature.fixed_tau`);
            ``target=rs`` with one whose τ varies or is not 1.
    """
    tau = fixed_tau(method, total_steps)
    if method.target == "topk" and tau is None:
        raise ConfigError(
            f"{varying_tau(method, total_steps)}, but cached top-K targets are stored at one τ (method.kd_temperature); "
            "use method.temperature=constant or teacher.source=online"
        )
    if method.target == "rs" and tau != 1.0:
        what = (
            varying_tau(method, total_steps)
            if tau is None
            else f"method.kd_temperature={method.kd_temperature}"
        )
        raise ConfigError(
            f"{what}, but cached RS targets are drawn at τ=1; use method.temperature=constant with "
            "method.kd_temperature=1, or teacher.source=online (which draws RS targets at each token's τ)"
        )


def check_trains_from_cache(cfg: Config) -> None:
    """Refuse, before a cache is built, a config that ``ekd distill`` would refuse to train from that cache.

    ``ekd distill CONFIG teacher.source=cache`` refuses a config by the config rules
    (:func:`ekd.config.validate`: e.g. on-policy data, DKD/AT-KD, TopSmp scored by the teacher), the method's
    needs (:meth:`~ekd.train.method_parts.MethodParts.build`: a score or the feature branch that needs the
    teacher's full distribution) and the cached targets' temperature (:func:`check_cache_temperature`: RS
    targets are drawn at τ=1). This runs those same functions on ``cfg`` with ``teacher.source=cache``, so a
    config ``ekd cache`` accepts builds a cache the same config trains from (``ekd cache`` ignores
    ``teacher.source``: it always runs the teacher).

    Raises:
        ConfigError: one line: distill's refusal (the key and its fix), said to stop the build.
    """
    from dataclasses import replace

    from ekd.config import validate
    from ekd.train.method_parts import MethodParts
    from ekd.train.prepare import teacher_needed

    cached = replace(cfg, teacher=replace(cfg.teacher, source="cache"))
    try:
        validate(cached)
        MethodParts.build(cached, cached.train.max_steps)
        if teacher_needed(cached):
            check_cache_temperature(cached.method, cached.train.max_steps)
    except ConfigError as e:
        raise ConfigError(
            f"not building a cache this config cannot train from (ekd distill with teacher.source=cache "
            f"would refuse it): {e}"
        ) from None


def candidates_note(signature: dict, method_cfg) -> str:
    """The line saying that a method trained from a teacher-entropy top-f cache distills only the cached positions,
    and a selecting method's fractions apply to them, not to all (try-out 56, F8: EKD's coverage 0.1 → 0.5 over a
    top-20% cache trained KD on 2–10% of the tokens, 6.8% over the run, against 29.8% online, said only by the
    final 'KD positions'); "" for an all-positions cache."""
    if signature.get("positions") != "teacher_entropy_topk":
        return ""
    fraction = float(signature.get("position_fraction") or 1.0)
    head = (
        f"teacher cache: the KD candidates are the cached {fraction:.0%} of each sequence's positions (its "
        f"teacher-entropy top {fraction:g}); "
    )
    if method_cfg.policy == "all":  # try-out 57, F4: kd trained on the cached 30% without a word
        return head + f"method.policy=all distills every one of them: about {fraction:.0%} of the tokens"
    return head + (
        f"method.policy={method_cfg.policy} selects its fraction of those, so about {fraction:g}× that fraction "
        "of all tokens"
    )


class CacheTeacher:
    """A teacher cache as a ``TeacherSource`` (no model in memory).

    Args:
        cfg: the training config (``teacher.cache_dir``; the fields of the signature).
        data: the prepared data (tokenizer and training blocks) the signature is checked against.
        device: where the signal's tensors go.
        memo_batches: micro-batches whose decoded cache rows are kept (``available`` then ``signal`` of
            the same batch read the cache once).

    Raises:
        CacheError: no cache, an unfinished one, or one built for another config (each field named).
        ConfigError: a temperature the cached targets were not made at (``check_cache_temperature``).
    """

    provides_distribution = False

    def __init__(self, cfg: Config, data, device: torch.device, memo_batches: int = 16) -> None:
        directory = Path(cfg.teacher.cache_dir)
        check_cache_temperature(cfg.method, cfg.train.max_steps)
        # held until close(): an --overwrite of the cache is refused meanwhile
        self._reading = reading(directory)
        try:  # taken before the check, so that what is checked is what is read; given back if refused
            self.reader = CacheReader(directory)
            check_signature(
                directory, training_signature(cfg, data, self.reader.signature), self.reader.signature
            )
        except BaseException:
            self._reading.release()
            raise
        if note := candidates_note(self.reader.signature, cfg.method):
            log.info("%s", note)
        if note := build_keys_note(cfg.teacher, self.reader):
            log.warning("%s", note)
        self.device = device
        self._memo: OrderedDict[tuple[int, ...], tuple[dict[str, Tensor], Tensor, SparseTarget]] = (
            OrderedDict()
        )
        self._memo_size = memo_batches

    def close(self) -> None:
        """Give back the cache's readers' lock (:mod:`ekd.teacher.cache.readers`): this process reads no more."""
        self._reading.release()

    def _read(self, batch) -> tuple[dict[str, Tensor], Tensor, SparseTarget]:
        """(stats {(B, T)}, cached (B, T) bool, SparseTarget in flat order of cached), on ``device``."""
        key = tuple(int(s) for s in batch.sample_ids.tolist())
        if key in self._memo:
            self._memo.move_to_end(key)
            return self._memo[key]
        stats, cached, target = self.reader.batch(list(key), int(batch.labels.shape[1]))
        d = self.device
        out = (
            {k: v.to(d) for k, v in stats.items()},
            cached.to(d),
            SparseTarget(
                target.ids.to(d), target.probs.to(d), None if target.tail is None else target.tail.to(d)
            ),
        )
        self._memo[key] = out
        if len(self._memo) > self._memo_size:
            self._memo.popitem(last=False)
        return out

    def available(self, batch) -> Tensor:
        """(B, T) bool: valid positions the cache holds a target for."""
        _, cached, _ = self._read(batch)
        return cached & (batch.labels != -100)

    @torch.no_grad()
    def signal(self, batch, need_stats: set[str], feature_layer: int | None = None) -> TeacherSignal:
        """Cached statistics (0 where nothing is cached) and targets; ``sparse`` in flat order of ``available``."""
        if feature_layer is not None:
            raise ConfigError(
                "the feature branch needs teacher hidden states, which a cache does not hold; use teacher.source=online"
            )
        stats, cached, target = self._read(batch)
        available = cached & (batch.labels != -100)  # (B, T)
        if not torch.equal(available, cached):  # a cached position without a label: drop its row
            keep = available.reshape(-1)[cached.reshape(-1)].nonzero().squeeze(-1)  # (M,) of the cached rows
            target = target.rows(keep)
        return TeacherSignal(
            stats={
                "teacher_entropy": stats["entropy"].masked_fill(~available, 0.0),  # (B, T)
                "teacher_logp_gold": stats["logp_gold"].masked_fill(~available, 0.0),
            },
            available=available,
            sparse=target,
        )


__all__ = [
    "CONFIG_KEYS",
    "CacheTeacher",
    "absent_teacher",
    "check_cache_dir",
    "check_cache_temperature",
    "check_signature",
    "check_trains_from_cache",
    "training_signature",
]
