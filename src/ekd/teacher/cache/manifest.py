"""The cache manifest: the signature that ties a cache to its teacher, data and target, and the shard list.

``manifest.json`` (JSON only, written atomically: temp file + ``os.replace``)::

    {"format": "ekd-teacher-cache", "format_version": 1, "complete": true,
     "signature": {...}, "layout": {...}, "num_samples": S, "shard_samples": n, "num_shards": k,
     "counts": {"samples", "positions", "entries", "tokens"},
     "shards": [{"index", "name", "first_sample", "end_sample", "samples", "positions", "entries",
                 "tokens", "bin_bytes", "idx_bytes", "bin_sha256", "idx_sha256"}, ...],
     "manifest_sha256": "<sha256 of the manifest's canonical JSON without this field>"}

During a build the manifest lists the shards completed so far (``complete: false``). Under data
parallelism each rank writes ``manifest.rank{r}.json`` and :func:`assemble_manifest` merges them into the
same ``manifest.json`` a single process writes. The content is a pure function of the signature, the
layout and the shards (no timestamps), so an interrupted-and-resumed build ends byte-identical.

The manifest protects itself: ``manifest_sha256`` covers every other field, so an edited signature or
shard checksum is refused on read (:func:`read_manifest`), which also checks every field's type (a
manifest missing ``shards`` is one line, not a ``KeyError``). Manifests of caches built before the field
existed are read without it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from ekd.config.paths import read_as
from ekd.io import atomic_write_text
from ekd.json_record import canonical_json, seal_sha256
from ekd.teacher.cache.format import FORMAT_NAME, FORMAT_VERSION, CacheError, Layout

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SIGNATURE_FIELDS = (
    "format_version",
    "teacher_id",
    "teacher_revision",
    "tokenizer_hash",
    "data_fingerprint",
    "block_length",
    "packing",
    "vocab_size",
    "target",
    "topk",
    "topk_tail",
    "target_temperature",
    "rs_samples",
    "rs_proposal_power",
    "rs_sampler",
    "positions",
    "position_fraction",
    "seed",
)
POSITION_RULES = ("all", "teacher_entropy_topk")
# How RS draws are made: position_seeds' splitmix64 hash (ekd.teacher.targets) and the blockwise inverse CDF
# (ekd.teacher.sampling). Rename it whenever a change could alter a single draw: old caches then refuse to
# mix with new online draws, naming this field.
RS_SAMPLER = "splitmix64-inverse-cdf-blocked-v1"
REBUILD = "rebuild with `ekd cache CONFIG --overwrite`"
# a cache of other settings (not a damaged one): it may be a good cache of those; keeping it is a way too
REBUILD_ELSEWHERE = "rebuild with `ekd cache CONFIG --overwrite` (deleting it), or set teacher.cache_dir to another directory to keep it"
# a damaged shard (missing, wrong size or sha256) is not listed as done, so a plain rerun rebuilds it alone
REBUILD_SHARDS = "run `ekd cache CONFIG` again to rebuild the damaged shard(s)"
# the same two ways for a cache `ekd cache import` wrote: `ekd cache CONFIG` refuses to build into an import (or
# deletes it with --overwrite and needs the teacher the importer may not have), so its refusals name the import
REIMPORT = "import it again with `ekd cache import SRC --config CONFIG --out DIR --overwrite`"
REIMPORT_SHARDS = "run `ekd cache import SRC --config CONFIG --out DIR` again to rebuild the damaged shard(s)"


def make_signature(
    *,
    teacher_id: str,
    teacher_revision: str,
    tokenizer_hash: str,
    data_fingerprint: str,
    block_length: int,
    packing: str | bool,
    vocab_size: int,
    target: str,
    topk: int | None = None,
    topk_tail: str | None = None,
    target_temperature: float = 1.0,
    rs_samples: int | None = None,
    rs_proposal_power: float | None = 1.0,
    positions: str = "all",
    position_fraction: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The signature dict of a cache; fields that do not apply to the target kind are stored as None.

    Args:
        teacher_id: hub id, local directory (absolute: the config resolves it) or preset of the teacher.
        teacher_revision: hub revision, or a hash of the weights for a local teacher.
        tokenizer_hash: hash of the tokenizer (vocabulary + merges + special tokens).
        data_fingerprint: hash of the data source and its preprocessing.
        block_length: T, tokens per sample.
        packing: the packing rule (e.g. True/False or a name).
        vocab_size: V, the shared tokenizer length (ids are stored with ⌈log2 V⌉ bits).
        target: 'rs' or 'topk'.
        topk, topk_tail, target_temperature: K, tail mode and τ of top-K targets.
        rs_samples, rs_proposal_power: N (≤ 63) and β of RS targets; RS caches also record
            :data:`RS_SAMPLER`, the draw algorithm.
        positions: 'all' valid positions or 'teacher_entropy_topk'.
        position_fraction: fraction of valid positions per sequence with 'teacher_entropy_topk'.
        seed: seed of the RS draws (``position_seeds``).
    """
    if target not in ("rs", "topk"):
        raise ValueError(f"cache target must be 'rs' or 'topk', got {target!r}")
    if positions not in POSITION_RULES:
        raise ValueError(f"cache positions must be one of {POSITION_RULES}, got {positions!r}")
    if int(vocab_size) < 2 or int(block_length) < 1:
        raise ValueError(f"vocab_size must be ≥ 2 and block_length ≥ 1, got {vocab_size}, {block_length}")
    if target == "rs":
        if rs_samples is None or not 1 <= int(rs_samples) <= 63:
            raise ValueError(f"cache rs_samples must be in [1, 63] (6-bit counts), got {rs_samples}")
        if rs_proposal_power is None or not float(rs_proposal_power) > 0:
            raise ValueError(f"cache rs_proposal_power must be > 0, got {rs_proposal_power}")
        topk = topk_tail = target_temperature = None
        rs_samples, rs_proposal_power = int(rs_samples), float(rs_proposal_power)
        rs_sampler = RS_SAMPLER
    else:
        if topk is None or int(topk) < 1 or topk_tail not in ("renormalize", "ghost", "to_gold"):
            raise ValueError(
                f"cache top-K needs topk ≥ 1 and a tail mode, got topk={topk}, topk_tail={topk_tail}"
            )
        topk, target_temperature = int(topk), float(target_temperature)
        rs_samples = rs_proposal_power = rs_sampler = None
    if positions == "all":
        position_fraction = None
    elif position_fraction is None or not 0 < float(position_fraction) <= 1:
        raise ValueError(f"cache position_fraction must be in (0, 1], got {position_fraction}")
    else:
        position_fraction = float(position_fraction)
    return {
        "format_version": FORMAT_VERSION,
        "teacher_id": str(teacher_id),
        "teacher_revision": str(teacher_revision),
        "tokenizer_hash": str(tokenizer_hash),
        "data_fingerprint": str(data_fingerprint),
        "block_length": int(block_length),
        "packing": packing,
        "vocab_size": int(vocab_size),
        "target": target,
        "topk": topk,
        "topk_tail": topk_tail,
        "target_temperature": target_temperature,
        "rs_samples": rs_samples,
        "rs_proposal_power": rs_proposal_power,
        "rs_sampler": rs_sampler,
        "positions": positions,
        "position_fraction": position_fraction,
        "seed": int(seed),
    }


TEACHER_FILES = "teacher_files"
"""Signature key of the teacher's safetensors files' sizes and mtimes (``signature.teacher_files``): a hint
that tells a run when to hash the weights again, not part of what the cache is (never compared: a teacher copied
elsewhere has other mtimes and the same weights)."""

DATA_SETTINGS = "data_settings"
"""Signature key of the build's ``data.*`` settings that decide the training blocks besides the fields of their
own (:func:`ekd.teacher.cache.signature.data_settings`): when ``data_fingerprint`` differs, they name the key
that changed, or say that the data itself did. Never compared: the fingerprint is what the cache depends on
(a corpus path spelled otherwise packs the same blocks)."""

KEPT_FILES = "kept_teacher_files"
"""Signature key of {file name: sha256} of the teacher's small files the cache keeps a copy of
(:mod:`ekd.teacher.cache.kept_teacher`), sealed with the manifest: a cache copied without its ``teacher/``
directory is told so, not taken for an older ekd's (try-out 66, F4); never compared."""
BUILT_WITH = "built_with"
"""Signature key of the arithmetic the build ran its teacher in: ``{"teacher_dtype": "bfloat16", "autocast":
"bf16"}`` (``model.teacher_dtype`` and ``train.precision`` as resolved on its device). Never compared — the cache
serves any run of its settings —, but what its targets are: a run records it with the teacher
(``cache_teacher`` in ekd-run.json), ``--resume`` refuses a cache computed otherwise, and ``ekd compare`` tells
caches apart by it (review of session 34, R3: a GPU's bfloat16 cache and a CPU's float32 one were one)."""
UNCOMPARED = (TEACHER_FILES, DATA_SETTINGS, KEPT_FILES, BUILT_WITH)
"""Signature keys that describe a build without deciding what the cache is: never compared."""

CONTENT_REVISIONS = ("safetensors-sha256:", "state-dict-sha256:")
"""``teacher_revision`` prefixes that pin a teacher by its weights' bytes (a local directory, a preset), not by
a name (a hub commit or ``model.revision``): two signatures with one such revision hold the same teacher."""


def computed_with(teacher_dtype: object, autocast: object) -> str:
    """How a teacher's outputs were computed, in words: "a float32 teacher in fp32" (no autocast), "a float32
    teacher under bf16 autocast" (try-out 124, F3: "under fp32 autocast" named an autocast that is its absence)."""
    return f"a {teacher_dtype} teacher " + (
        f"in {autocast}" if autocast == "fp32" else f"under {autocast} autocast"
    )


def cache_teacher_parts(pinned: str) -> tuple[str, str, str]:
    """(teacher, dtype, autocast) of a :func:`cache_teacher` string ('?' where a part is missing)."""
    teacher, dtype, autocast = (pinned.split("|") + ["?", "?"])[:3]
    return teacher, dtype, autocast


def cache_teacher(signature: dict) -> str | None:
    """What the targets of the cache of ``signature`` were computed by: its teacher as the signature pins it — the
    sha256 of its weights (a local directory, a preset: ``teacher_revision``), else its id at its hub revision —
    and the arithmetic its build ran it in (``built_with``), as ``<teacher>|<dtype>|<autocast>``; None for a cache
    that records no arithmetic (an older ekd's, an import)."""
    revision, built = str(signature.get("teacher_revision") or ""), signature.get(BUILT_WITH)
    if not revision or not isinstance(built, dict):
        return None
    pinned = (
        revision
        if revision.startswith(CONTENT_REVISIONS)
        else f"{signature.get('teacher_id', '')}@{revision}"
    )
    return f"{pinned}|{built.get('teacher_dtype')}|{built.get('autocast')}"


def same_directory(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` name one existing local directory (relative paths from the working directory)."""
    try:
        pa, pb = Path(a).expanduser(), Path(b).expanduser()
        return bool(a.strip() and b.strip()) and pa.is_dir() and pb.is_dir() and pa.resolve() == pb.resolve()
    except (OSError, ValueError):
        return False


def same_teacher(expected: dict, found: dict) -> bool:
    """Whether two signatures name one teacher: the same ``teacher_id``, one local directory however spelled
    (relative or absolute, a trailing '/'; a cache built before config paths were resolved holds the path as
    typed), or the same weights (an equal content-pinning ``teacher_revision``, :data:`CONTENT_REVISIONS`)."""
    a, b = str(expected.get("teacher_id", "")), str(found.get("teacher_id", ""))
    if a == b or same_directory(a, b):
        return True
    revision = expected.get("teacher_revision")
    return (
        isinstance(revision, str)
        and revision.startswith(CONTENT_REVISIONS)
        and revision == found.get("teacher_revision")
    )


def same_boundary(a: Any, b: Any) -> bool:
    """Whether two recorded document boundaries (``MODE:bos=ID,eos=ID``,
    :meth:`ekd.data.boundary.Boundary.describe`) frame documents alike: the same ids, whichever
    ``data.separator`` chose them (try-out 64, F2: ``auto`` resolving to the ``eos`` rule's ids packs the same
    blocks, and was refused)."""
    if not (isinstance(a, str) and isinstance(b, str) and ":" in a and ":" in b):
        return a == b
    return a.split(":", 1)[1] == b.split(":", 1)[1]


def compare_signatures(expected: dict, found: dict) -> list[str]:
    """One line per differing field: 'field: expected X, found Y' (known fields first, then extras sorted).
    ``teacher_id`` differs only when the teacher does (:func:`same_teacher`), not its spelling; ``separator``
    only when the boundary ids do (:func:`same_boundary`); the :data:`UNCOMPARED` descriptions are never
    compared."""
    keys = [k for k in SIGNATURE_FIELDS if k in expected or k in found]
    keys += sorted((set(expected) | set(found)) - set(SIGNATURE_FIELDS) - set(UNCOMPARED))
    missing = object()
    diffs = []
    for key in keys:
        a, b = expected.get(key, missing), found.get(key, missing)
        if key == "teacher_id" and same_teacher(expected, found):
            continue
        if key == "separator" and same_boundary(a, b):
            continue
        if a != b:
            fmt = lambda v: "<absent>" if v is missing else _short(v)  # noqa: E731
            diffs.append(f"{key}: expected {fmt(a)}, found {fmt(b)}")
    return diffs


VALUE_CHARS = 40
"""A differing value is shown up to this many characters (a hash: enough of it to tell two apart)."""
DIFFS_SHOWN = 4
"""Differing fields shown with their values in one line; the others are named."""


def _short(value: Any) -> str:
    """``value`` as JSON, cut to about :data:`VALUE_CHARS` (a 64-digit hash: its start, in its quotes)."""
    text = json.dumps(value)
    if len(text) <= VALUE_CHARS:
        return text
    if isinstance(value, str):
        return json.dumps(value[: VALUE_CHARS - 3])[:-1] + '…"'
    return text[: VALUE_CHARS - 1] + "…"


def diff_summary(diffs: list[str]) -> str:
    """Lines ``field: expected X, found Y`` as one short clause: the first :data:`DIFFS_SHOWN` in full, then
    the other fields by name."""
    rest = [
        d.split(":", 1)[0].split(" [", 1)[0] for d in diffs[DIFFS_SHOWN:]
    ]  # the field, its config key left out
    return "; ".join(diffs[:DIFFS_SHOWN]) + (f"; also {', '.join(rest)}" if rest else "")


dumps = canonical_json
"""Canonical JSON (:func:`ekd.json_record.canonical_json`): equal content gives equal bytes."""
manifest_sha256 = seal_sha256
"""sha256 hex of the canonical JSON of a manifest without its ``manifest_sha256`` field
(:func:`ekd.json_record.seal_sha256`)."""


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write a manifest to ``path`` atomically (:func:`ekd.io.atomic_write_text`), sealed with its own
    ``manifest_sha256`` (set on ``obj`` too, so the caller's dict equals what is on disk)."""
    obj["manifest_sha256"] = manifest_sha256(obj)
    atomic_write_text(Path(path), dumps(obj))


def read_json(path: Path, fix: str = REBUILD) -> Any:
    """``path``'s JSON value (any JSON type: the caller checks its shape, :func:`_manifest_problem`).

    Args:
        fix: the way out named in the error (another command than ``ekd cache`` writes some caches).

    Raises:
        CacheError: one line naming the file, the problem and ``fix``.
    """
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CacheError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}): {fix}") from None
    except UnicodeDecodeError:
        raise CacheError(f"{path} is not UTF-8 text: {fix}") from None
    except OSError as e:
        raise CacheError(f"{path} cannot be read ({e.strerror or e}): {fix}") from None


_INT, _STR = (int,), (str,)
_SHARD_FIELDS = {
    **dict.fromkeys(
        ("index", "first_sample", "end_sample", "samples", "positions", "entries", "tokens"), _INT
    ),
    **dict.fromkeys(("bin_bytes", "idx_bytes"), _INT),
    **dict.fromkeys(("name", "bin_sha256", "idx_sha256"), _STR),
}
_FIELDS = {
    "format": _STR,
    "format_version": _INT,
    "complete": (bool,),
    "signature": (dict,),
    "layout": (dict,),
    "num_samples": _INT,
    "shard_samples": _INT,
    "num_shards": _INT,
    "counts": (dict,),
    "shards": (list,),
}


def read_manifest(path: Path, fix: str = REBUILD) -> dict:
    """Read and check a manifest: valid JSON, its own ``manifest_sha256``, every field present and typed.

    Args:
        fix: the way out named in the error (:func:`read_json`); the default, :data:`REBUILD`, becomes
            :data:`REIMPORT` for a manifest whose text names an imported cache's teacher revision (try-outs 104 F2,
            106 F2: an edited or cut import's manifest was told to be rebuilt from the teacher).

    Raises:
        CacheError: one line naming the file, the problem and ``fix``.
    """
    try:
        return _checked_manifest(path, fix)
    except CacheError:  # its text is read again only here: a readable manifest is read once
        if fix != REBUILD or not _written_by_import(path):
            raise
    return _checked_manifest(path, REIMPORT)  # raises the same error, naming the import


def _checked_manifest(path: Path, fix: str) -> dict:
    """:func:`read_manifest`'s checks, ``fix`` named in their error."""
    manifest = read_json(path, fix)
    problem = _manifest_problem(manifest)
    if problem:
        raise CacheError(f"{path} is not a valid cache manifest ({problem}): {fix}")
    if "manifest_sha256" not in manifest:
        log.info(
            "%s has no manifest_sha256 (built by an older ekd); its fields are checked, not its hash", path
        )
    elif manifest["manifest_sha256"] != manifest_sha256(manifest):
        raise CacheError(
            f"{path} was edited or is corrupt (its content does not match its manifest_sha256): {fix}"
        )
    return manifest


def _written_by_import(path: Path) -> bool:
    """Whether the manifest at ``path`` names an imported cache's teacher revision (:data:`IMPORTED`), read in its
    raw text: so that one cut short or edited is still told to be imported again (try-out 106, F2)."""
    try:
        return f'"{IMPORTED}' in Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def _manifest_problem(m: Any) -> str | None:
    """What is wrong with a manifest's structure, or None."""
    if not isinstance(m, dict):
        return "not a JSON object"
    for key, types in _FIELDS.items():
        if key not in m:
            return f"'{key}' is missing"
        if not isinstance(m[key], types) or (types is _INT and isinstance(m[key], bool)):
            return f"'{key}' has the wrong type"
    if (
        m["num_samples"] < 1
        or m["shard_samples"] < 1
        or m["num_shards"] != -(-m["num_samples"] // m["shard_samples"])
    ):
        return "num_samples, shard_samples and num_shards disagree"
    try:
        Layout.from_dict(m["layout"])
    except ValueError as e:
        return f"invalid layout: {e}"
    if any(not isinstance(m["counts"].get(k), int) for k in ("samples", "positions", "entries", "tokens")):
        return "'counts' lacks a count"
    for entry in m["shards"]:
        if not isinstance(entry, dict):
            return "a shard entry is not an object"
        for key, types in _SHARD_FIELDS.items():
            if not isinstance(entry.get(key), types) or isinstance(entry.get(key), bool):
                return f"a shard entry lacks '{key}'"
        k = entry["index"]
        if not 0 <= k < m["num_shards"] or entry["name"] != f"shard-{k:05d}":
            return f"shard entry {k} has a bad index or name"
        if (entry["first_sample"], entry["end_sample"]) != (
            k * m["shard_samples"],
            min((k + 1) * m["shard_samples"], m["num_samples"]),
        ) or entry["samples"] != entry["end_sample"] - entry["first_sample"]:
            return f"shard entry {k} has a bad sample range"
        if min(entry[f] for f in ("positions", "entries", "tokens", "bin_bytes", "idx_bytes")) < 0:
            return f"shard entry {k} has a negative size"
        if not all(re.fullmatch(r"[0-9a-f]{64}", entry[f]) for f in ("bin_sha256", "idx_sha256")):
            return f"shard entry {k} has a bad sha256"
    if len({e["index"] for e in m["shards"]}) != len(m["shards"]):
        return "a shard is listed twice"
    if m["complete"] and len(m["shards"]) != m["num_shards"]:
        return "complete, but shards are missing"
    return None


def build_manifest(
    signature: dict,
    layout: dict,
    num_samples: int,
    shard_samples: int,
    shards: list[dict],
    complete: bool,
) -> dict:
    """The manifest dict; counts are summed from the shard entries, shards sorted by index."""
    shards = sorted(shards, key=lambda s: s["index"])
    counts = {key: sum(int(s[key]) for s in shards) for key in ("samples", "positions", "entries", "tokens")}
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "complete": complete,
        "signature": signature,
        "layout": layout,
        "num_samples": int(num_samples),
        "shard_samples": int(shard_samples),
        "num_shards": -(-int(num_samples) // int(shard_samples)),
        "counts": counts,
        "shards": shards,
    }


def rank_manifest_path(directory: Path, rank: int) -> Path:
    return Path(directory) / f"manifest.rank{rank}.json"


def manifest_paths(directory: Path) -> list[Path]:
    """``manifest.json`` and the per-rank manifests of a torchrun build, in that order (existing or not)."""
    directory = Path(directory)
    return [directory / MANIFEST, *sorted(directory.glob("manifest.rank*.json"))]


_MANIFEST_NAME = r"manifest(\.rank\d+)?\.json"
# what a cache build or import writes in its directory (``.tmp``: an atomic write or a kill mid-way)
_CACHE_ENTRY = re.compile(
    rf"({_MANIFEST_NAME}|shard-\d+\.(bin|idx)|tokenizer|teacher|\.staging|\.teacher-staging|\.ekd\.lock"
    r"|\.ekd-probe-[0-9a-f]+(-\d+)?)(\.tmp)?"  # a torchrun start's probe a kill left (ekd.train.rank_work)
)


def refuse_a_file(directory: Path, option: str = "teacher.cache_dir") -> None:
    """Raise CacheError when ``directory`` is no directory (a file, a device such as /dev/null) or lies under a
    file: its manifest, named for the cache (try-out 46: "manifest.json missing" of the manifest itself), names
    the directory holding it; a path under a file was told to build the cache there (try-out 48). ``option``:
    the setting that names it, or "" for a command's argument (``ekd cache info DIR``: the path alone)."""
    named = lambda path: f"{option}={path}" if option else str(path)  # noqa: E731
    above = next((p for p in directory.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise CacheError(f"{named(directory)} lies under {above}, which is a file; name a directory")
    if not directory.exists() or directory.is_dir():
        return
    fix = (
        f"name the directory that holds it ({named(directory.parent)})"
        if directory.name == MANIFEST
        else "name the directory `ekd cache CONFIG` writes the cache to"
    )
    what = "a file" if directory.is_file() else "no directory"  # /dev/null is a device (try-out 49)
    raise CacheError(f"{named(directory)} is {what}, not a teacher cache directory; {fix}")


def refuse_missing_cache(directory: Path) -> None:
    """Raise CacheError when ``directory`` does not exist (try-out 52: 'manifest.json missing' of a path that is
    not there). Here, apart from the reader, so that ``ekd cache info|verify`` of a mistyped path answers without
    importing torch (try-out 76, F4)."""
    if not directory.exists():
        raise CacheError(
            f"no teacher cache at {directory}: it does not exist{read_as(str(directory))}; check the path, or build "
            "it with `ekd cache CONFIG` (or `ekd cache import SRC --config CONFIG --out DIR`)"
        )


def check_cache_directory(directory: Path, option: str = "teacher.cache_dir") -> None:
    """Raise CacheError unless ``directory`` may hold a cache: absent, empty, a cache (it has a manifest) or
    an unfinished one (only files a build writes). Checked before anything is written, ``--overwrite`` or
    not: a ``teacher.cache_dir`` mistyped as a run or data directory must not get cache files mixed in.

    Args:
        option: what names the directory on the command line, for the error (``--out`` of ``ekd cache import``).
    """
    directory = Path(directory)
    refuse_a_file(directory, option)
    if not directory.is_dir():
        return
    names = [p.name for p in directory.iterdir()]
    if any(re.fullmatch(_MANIFEST_NAME, n) for n in names):
        return
    foreign = sorted(n for n in names if not _CACHE_ENTRY.fullmatch(n))
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        error = CacheError(
            f"{option} {directory} is not empty and holds no teacher cache ({shown}): "
            f"set {option} to a new or empty directory"
        )
        error.same_on_every_rank = (
            True  # every rank checks the same directory: said once per node (try-out 37)
        )
        raise error


IMPORTED = "import-sha256:"
"""``teacher_revision`` prefix of a cache written by ``ekd cache import`` (then the sha256 of its SRC file)."""


def is_imported(signature: dict | None) -> bool:
    """Whether ``ekd cache import`` wrote the cache of ``signature`` (its ``teacher_revision`` starts with
    :data:`IMPORTED`)."""
    return str((signature or {}).get("teacher_revision", "")).startswith(IMPORTED)


def rebuild_advice(signature: dict | None, shards: bool = False) -> str:
    """How to make the cache of ``signature`` anew: :data:`REBUILD` (``shards``: :data:`REBUILD_SHARDS`), or for
    an imported cache (:func:`is_imported`) the import again (:data:`REIMPORT`, :data:`REIMPORT_SHARDS`;
    try-out 62)."""
    if is_imported(signature):
        return REIMPORT_SHARDS if shards else REIMPORT
    return REBUILD_SHARDS if shards else REBUILD


def check_cache_kind(directory: Path, imported: bool, overwrite: bool) -> None:
    """Refuse, unless ``overwrite``, a cache in ``directory`` (finished or not) that the other command made: an
    import into a cache ``ekd cache`` built from the teacher, or a build into an import. Their signatures differ
    in most fields; the line says what the directory holds instead, and that ``--overwrite`` deletes it.

    Args:
        imported: the command is ``ekd cache import`` (else ``ekd cache``).

    Raises:
        CacheError: one line naming the directory, what it holds and the ways on.
    """
    directory = Path(directory)
    paths = manifest_paths(directory) if directory.is_dir() else []
    path = next((p for p in paths if p.is_file()), None)
    if overwrite or path is None:
        return
    try:
        record = read_json(path)
    except CacheError:
        return  # the writer names what is wrong with it
    signature = record.get("signature") if isinstance(record, dict) else None
    if not isinstance(signature, dict):
        return  # valid JSON of another shape: the writer names it too (try-out 159, F1's class)
    revision = str(signature.get("teacher_revision", ""))
    if is_imported(signature) == imported:
        return  # the same kind: the writer compares the fields
    target = signature.get("target")
    what = f"target {target}, " + (
        f"K={signature.get('topk')}" if target == "topk" else f"{signature.get('rs_samples')} samples"
    )
    if imported:
        raise CacheError(
            f"--out {directory} is a teacher cache built by `ekd cache` ({what}, teacher {signature.get('teacher_id')}); "
            "choose another --out for the import, or pass --overwrite to delete that cache and import in its place"
        )
    raise CacheError(
        f"teacher.cache_dir {directory} is a cache imported by `ekd cache import` ({what}, from a file with sha256 "
        f"{revision[len(IMPORTED) :][:12]}…); choose another teacher.cache_dir, or pass --overwrite to delete that "
        "import and build from the teacher in its place"
    )


def check_compatible(expected: dict, found: dict, where: str, fix: str = REBUILD) -> None:
    """Raise CacheError if ``found`` (a manifest) was built for another signature, layout or sample split, each
    signature field named by its config key (:mod:`ekd.teacher.cache.mismatch`; try-out 64, F7); the error ends
    with ``fix``."""
    from ekd.teacher.cache.mismatch import name_config_keys
    from ekd.teacher.cache.signature import hub_commit

    signatures = expected["signature"], found.get("signature", {})
    diffs = name_config_keys(compare_signatures(*signatures), *signatures)
    for key in ("layout", "num_samples", "shard_samples"):
        a, b = expected[key], found.get(key)
        named = f"{key} [teacher.cache_shard_samples]" if key == "shard_samples" else key
        if a != b and isinstance(a, dict) and isinstance(b, dict):  # the fields, not two whole dicts
            fields = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            diffs.append(f"{named}: {', '.join(fields)} differ{'s' if len(fields) == 1 else ''}")
        elif a != b:
            diffs.append(f"{named}: expected {_short(a)}, found {_short(b)}")
    if found.get("format") != FORMAT_NAME:
        diffs.append(f"format: expected {FORMAT_NAME!r}, found {found.get('format')!r}")
    if (
        len(diffs) == 1
        and diffs[0].startswith("shard_samples")
        and isinstance(found.get("shard_samples"), int)
    ):
        # only the shard size: the cache (or the build so far) is kept by asking for its size (try-out 138, F6:
        # only deleting it was offered — 27 finished shards of an interrupted build)
        fix = f"keep it with teacher.cache_shard_samples={found['shard_samples']} (the size it was built with), or {fix}"
    elif (
        len(diffs) == 1
        and diffs[0].startswith("teacher_revision")
        and (commit := hub_commit(signatures[1].get("teacher_revision")))
    ):
        # only the teacher's commit: a pinned branch that moved since the build keeps the cache by its commit
        # (try-out 162, F4: only deleting a valid cache was offered)
        fix = f"keep it with model.teacher_revision={commit} (the commit it was built from), or {fix}"
    if diffs:
        raise CacheError(f"{where} was built differently ({diff_summary(diffs)}): {fix}")


def assemble_manifest(directory: str | os.PathLike, world_size: int) -> dict:
    """Merge the per-rank partial manifests of a distributed build into ``manifest.json``.

    Call once, on one rank, after every rank's ``CacheWriter.close()`` (e.g. after a barrier). Checks that
    all ranks agree on signature and layout and that every shard is present with the recorded size; the
    result equals the manifest of a single-process build. The partial manifests are removed afterwards.
    """
    directory = Path(directory)
    partials = []
    for rank in range(world_size):
        path = rank_manifest_path(directory, rank)
        if not path.exists():
            raise CacheError(
                f"{path.name} is missing in {directory}: rank {rank} has not run; rerun the cache build"
            )
        partials.append(read_manifest(path))
    first = partials[0]
    shards: dict[int, dict] = {}
    for rank, part in enumerate(partials):
        check_compatible(first, part, f"{rank_manifest_path(directory, rank).name}")
        for entry in part["shards"]:
            if shards.setdefault(entry["index"], entry) != entry:
                raise CacheError(f"shard {entry['index']} is listed differently by two ranks: {REBUILD}")
    missing = [k for k in range(first["num_shards"]) if k not in shards]
    if missing:
        raise CacheError(
            f"cache build in {directory} is unfinished: shards {missing[:8]}{'…' if len(missing) > 8 else ''} "
            "missing; rerun the cache build (finished shards are skipped)"
        )
    for entry in shards.values():
        for ext in ("bin", "idx"):
            path = directory / f"{entry['name']}.{ext}"
            if not path.exists() or path.stat().st_size != entry[f"{ext}_bytes"]:
                raise CacheError(f"{path.name} is missing or has the wrong size: {REBUILD}")
    manifest = build_manifest(
        first["signature"],
        first["layout"],
        first["num_samples"],
        first["shard_samples"],
        list(shards.values()),
        True,
    )
    write_json_atomic(directory / MANIFEST, manifest)
    remove_rank_manifests(directory)
    return manifest


def remove_rank_manifests(directory: str | Path) -> None:
    """Remove every ``manifest.rank*.json`` of a cache whose ``manifest.json`` is complete: those of this build,
    and those a build on more ranks, killed, left behind (try-out 37: a 2-rank build killed, then finished in one
    process, kept both partial manifests). A read-only mount keeps them; they are never read once complete."""
    for path in Path(directory).glob("manifest.rank*.json"):
        with contextlib.suppress(OSError):
            path.unlink()
