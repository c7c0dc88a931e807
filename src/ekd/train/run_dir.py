"""The run directory: created, resumed or replaced so that nothing that is not an ekd run is ever deleted.

``runs/<name>/ekd-run.json`` marks a directory as an ekd run (written when the run is created)::

    {"format": "ekd-run", "version": 1, "state": "starting" | "started" | "finished",
     "data_fingerprint": "<sha256 of the packed training blocks>", "train_blocks": 78,
     "eval_blocks": {"eval": "<sha256 of the set's blocks>", ...},
     "held_out_documents": "<sha256 of the held-out split's documents>",
     "tokenizer_tokens": 320, "head_rows": 320, "global_micro_batch": 8, "ranks": 2,
     "segments": [{"ranks": 2, "parallel": "ddp", "micro_batch_size": 4, "autocast": "bf16",
                   "teacher_dtype": "bfloat16"}], "cache_teacher": "safetensors-sha256:…"}

(the last ones once the run has finished: the tokenizer length V its targets and scores spanned, the rows of
the exported student's head, more than V when padded, the rows of one micro-batch over all ranks —
ranks × ``train.micro_batch_size``, which config.yaml alone does not tell —, the ranks of its last segment, each
segment's layout and arithmetic as it ran — ``train.precision`` and ``model.teacher_dtype`` resolved —, and a
cache run's teacher as its cache pins it.)

:class:`RunStart` is the start of a run as one transaction:

0. :meth:`RunStart.open` first takes the run's lock (:func:`ekd.locks.directory_lock`), held
   until :meth:`RunStart.close`: a second ekd process on the same run (``ekd distill``, ``--resume``,
   ``ekd eval RUN``, another torchrun job) is refused in one line naming the pid that holds it. Under
   ``torchrun`` only rank 0 opens the run, so the ranks of one job never lock each other out. The OS releases
   the lock of a killed process: a run whose start did not finish is reclaimed only when its owner is gone.
1. :meth:`RunStart.open` checks the directory: a file in the way, a directory that is not an ekd run, a
   different run (without ``--resume``/``--overwrite``; the refusal offers only what works), a ``--resume``
   whose config changes a key outside ``RESUMABLE_CHANGES``/``SAME_MATH_CHANGES`` (the change of a
   memory/speed knob or of the device layout, ``LAYOUT_CHANGES``, is logged in one line), a finished run. With ``--overwrite`` the old run is *moved aside*
   (``<output_dir>/.<name>.replaced``), never deleted here; only a directory holding ``ekd-run.json`` is
   moved.
2. The trainer loads data and models; :meth:`RunStart.check_data` records the data fingerprint (a new run)
   or refuses a ``--resume`` over different data.
3. :meth:`RunStart.commit` (after the first optimizer step has completed) marks the run started and only then
   deletes the run moved aside.
   :meth:`RunStart.rollback` (any failure before that) removes what this start made and puts the old run
   back. A start killed before either is recognised next time: a run still ``starting`` holds no training
   and is replaced, and a run left aside is restored (:func:`recover_interrupted_replace`, under the run's
   lock: by the next ``ekd distill`` of it, or by ``ekd eval RUN``, which then evaluates the restored run).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shlex
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from glob import has_magic
from pathlib import Path
from typing import TypeVar

import yaml

from ekd.config import READ_ONLY_DATA_KEYS, Config, flat_config, is_reporting_key, with_todays_defaults
from ekd.config.inert import same_pins
from ekd.config.paths import gone_paths, resolve_saved, same_location
from ekd.errors import EkdError, RunDirError
from ekd.io import atomic_write_text, dangling_link, make_dirs, writing
from ekd.locks import INSIDE, FileLock, lock_directory
from ekd.train.checkpoint_dirs import checkpoint_step, latest_checkpoint
from ekd.words import counted

log = logging.getLogger(__name__)
T = TypeVar("T")

MARKER = "ekd-run.json"
FORMAT = "ekd-run"

# How the same computation is laid out on devices (DCP reshards between all of them): a run may change these on
# ``--resume`` as long as its global micro-batch (ranks × train.micro_batch_size, ``global_micro_batch`` in
# ekd-run.json) stays — the checkpoint refuses another — and ``ekd compare`` groups runs on that product.
# Key → what a resume that changes it does (said in the same info line as SAME_MATH_CHANGES; try-out 23: a resume
# from DDP to FSDP2 said nothing while a head_chunk_size change had its line).
LAYOUT_CHANGES = {
    "train.micro_batch_size": (
        "the global micro-batch split otherwise over the ranks: ranks × train.micro_batch_size must stay what it "
        "was, which the checkpoint checks"
    ),
    "train.parallel": "another engine over the same sums of gradients, the checkpoint resharded to it",
    "train.cpu_offload": "the same shards, kept in CPU memory between uses or not",
    "teacher.placement": "the same teacher outputs, its weights sharded or replicated",
}
LAYOUT_KEYS = tuple(LAYOUT_CHANGES)

# What ``--resume`` lets change (README, "What `--resume` may change"): anything else changes what the run computes, so
# the resumed run would not be the run it continues, and is refused. Prefixes end in ".".
RESUMABLE_CHANGES = (
    # the budget, logging, evaluation and where the run lives
    "train.max_steps",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "log.",
    "eval.",
    "data.max_eval_blocks",  # what the evaluations score, not what is trained (try-out 50, F3)
    "data.eval_sources",
    *(f"data.{k}" for k in READ_ONLY_DATA_KEYS),  # how the documents are read, never which blocks
    "run.device",
    "run.output_dir",
    "run.name",
    # what is exported at the end (the checkpoints keep the fp32 master weights whatever these say)
    "model.export_dtype",
    "model.export_head_rows",
    *LAYOUT_KEYS,
)

# memory and speed knobs over the same math (tested equal: tests/test_head_loss.py, test_train.py's chunked =
# reference path through the step): resumable, said in one info line. Key → what may differ from a run that
# kept the saved value.
SAME_MATH_CHANGES = {
    "train.head_chunk_size": "another summation order: losses may differ in the last bits",
    "train.loss_path": "another summation order: losses may differ in the last bits",
    "train.compile": "fused kernels: losses may differ in the last bits",
    "train.activation_checkpointing": "the same activations, recomputed in backward",
}


# what the evaluations score: resumable, said in one info line (try-out 52, F11: the eval curve changed sets
# without a word, where layout and chunking changes had their line)
EVAL_SET_CHANGES = ("data.max_eval_blocks", "data.eval_sources")


def _one_arithmetic(saved: dict, cfg: Config) -> bool:
    """Whether the saved and the current ``train.precision`` compute alike on this run's device: 'auto' and
    'fp32' on CPU (no autocast there: :func:`ekd.train.precision.autocast_for`, and TF32 is a GPU matter);
    on a GPU 'auto' is bf16."""
    from ekd.train.precision import autocast_for

    old, new = (saved.get("train") or {}).get("precision"), cfg.train.precision
    return _on_cpu(cfg) and autocast_for(old, "cpu") is None and autocast_for(new, "cpu") is None


ARITHMETIC = "arithmetic"
"""The ekd-run.json key of the arithmetic the run computes in — ``{"autocast": "bf16", "teacher_dtype":
"bfloat16"}`` (``train.precision`` and, where the teacher takes part in training, ``model.teacher_dtype`` as
resolved on its device) — recorded at its start (:meth:`RunStart.record_arithmetic`): ``--resume`` accepts a
setting that resolves to it here, and refuses one that does not (review of session 34, R7: a run begun on a GPU
in bf16 and resumed on a CPU with fp32 was told nothing changed; on a GPU, auto ↔ bf16 was refused)."""


def resolved_arithmetic(cfg: Config, teacher: bool) -> dict[str, str]:
    """``train.precision`` (and, with ``teacher``, ``model.teacher_dtype``) as they resolve on the device this
    process computes on: :data:`ARITHMETIC`'s form."""
    from ekd.eval.eval_json import precision_name
    from ekd.models.load import dtype_name, resolve_dtype
    from ekd.train.precision import autocast_for
    from ekd.train.prepare import resolve_device

    device = resolve_device(cfg.run.device)
    out = {"autocast": precision_name(autocast_for(cfg.train.precision, device.type))}
    if teacher:
        out["teacher_dtype"] = dtype_name(resolve_dtype(cfg.model.teacher_dtype, device))
    return out


def _as_it_ran(ran: dict, key: str, cfg: Config) -> bool:
    """Whether this config computes here what the run recorded it ran in (``ran``: :data:`ARITHMETIC`) for
    ``key`` ('autocast', 'teacher_dtype'); False where the run records none for it."""
    return key in ran and resolved_arithmetic(cfg, teacher=True).get(key) == ran[key]


def _arithmetic_moved(ran: dict, cfg: Config) -> tuple[str, str, str] | None:
    """(what the run recorded it computed in, what ``cfg`` computes in on this device, the settings that keep the
    former) where they differ — a run resumed on a GPU after a CPU with ``auto`` settings —, else None."""
    now = resolved_arithmetic(cfg, teacher="teacher_dtype" in ran)
    if all(now.get(k) == v for k, v in ran.items()):
        return None
    keep = {"autocast": "train.precision", "teacher_dtype": "model.teacher_dtype"}

    def said(a: dict) -> str:
        return " with a ".join(
            [a["autocast"], *([f"{a['teacher_dtype']} teacher"] if "teacher_dtype" in a else [])]
        )

    settings = " ".join(f"{keep[k]}={v}" for k, v in ran.items() if now.get(k) != v)
    return said(ran), said(now), settings


def _one_teacher_dtype(saved: dict, cfg: Config) -> bool:
    """Whether the saved and the current ``model.teacher_dtype`` load the teacher alike on this run's device:
    'auto' and 'float32' on CPU (:func:`ekd.models.load.resolve_dtype`), as :func:`_one_arithmetic` for the
    precision."""
    import torch

    from ekd.models.load import DTYPES, resolve_dtype

    old = str((saved.get("model") or {}).get("teacher_dtype"))
    if not _on_cpu(cfg) or old not in {*DTYPES, "auto"}:
        return False
    cpu = torch.device("cpu")
    return resolve_dtype(old, cpu) == resolve_dtype(cfg.model.teacher_dtype, cpu)


def _on_cpu(cfg: Config) -> bool:
    """Whether the run computes on the CPU (``run.device``, 'auto' without a GPU)."""
    import torch

    return cfg.run.device == "cpu" or (cfg.run.device == "auto" and not torch.cuda.is_available())


# why a refused key cannot change, where the generic "changes what the run computes" says too little
REFUSED_BECAUSE = {
    "train.grad_accum_steps": (
        "train.micro_batch_size × train.grad_accum_steps is the optimizer step's batch, and batch-scoped rules "
        "(select_per=batch, gls, adakd, atkd, egad's hard split) rank the rows of one micro-batch together, so "
        "another split changes the result"
    ),
    "train.precision": "bf16 and fp32 are different arithmetic",
}


# keys that leave what a run trains and scores as it is (``ekd compare`` groups runs over them, try-out 21: runs of
# one method split into kd and kd#2 over train.checkpoint_every): when it checkpoints, how it batches and plots its
# evaluation, the device layout, and the same math in another summation order
SAME_RUN_KEYS = (
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "eval.batch_size",
    "eval.plots",
    "eval.every",  # evaluations between steps: the global RNG is seeded anew each step (try-out 51, F4)
    "eval.student_init",  # the evaluation before the first step (the same reason)
    *(f"data.{k}" for k in READ_ONLY_DATA_KEYS),  # the same blocks (or a run refused)
    *LAYOUT_KEYS,
    *SAME_MATH_CHANGES,
)


def changes_training(key: str) -> bool:
    """Whether a different value of the config key ``key`` (section.field) makes another run: not when it only
    reports (``log.*``) or is one of :data:`SAME_RUN_KEYS`."""
    return not is_reporting_key(key) and key not in SAME_RUN_KEYS


def _models_as_recorded(blocking: list[str], saved: dict, cfg: Config, marker: dict) -> dict[str, str]:
    """The keys of ``blocking`` that choose how the run's models are found or evaluated, not which models it trains
    with, key → why: a run from a cache trains from its targets, so its teacher's pin and dtype decide only the
    teacher it evaluates (try-out 160, F2); a pin that reads the weights the run recorded (``teacher_weights``,
    ``student_weights``) names the same models (F3: the commit the run was taught by, named after ``main`` moved,
    was refused while the refusal asked for it) — where those weights are not on this machine yet, the pin is taken
    and the weights are compared once fetched (:meth:`RunStart.check_teacher`, :meth:`RunStart.check_student_base`).

    Raises:
        RunDirError: a teacher pin that reads other weights than the run was taught by (:func:`other_teacher`).
    """
    from ekd.config.inert import own_hub_tokenizer, revision_reads_beside_teacher
    from ekd.models.identity import same_weights

    keys = [k for k in blocking if k in ("model.revision", "model.teacher_revision", "model.teacher_dtype")]
    if not keys:
        return {}
    from_cache = cfg.teacher.source == "cache" and (saved.get("teacher") or {}).get("source") == "cache"
    cached_teacher = (
        "the run trains from its cache: its teacher's pin and dtype decide only the teacher it evaluates"
    )

    def as_recorded(field: str, spec: str, revision: str) -> str:
        """Why the pin reads the model the run recorded in ``field``, "" where it does not (or nothing is recorded)."""
        recorded = marker.get(field)
        if not recorded:
            return ""
        same = same_weights(recorded, spec, revision)
        if same is False and field == "teacher_weights":
            raise RunDirError(other_teacher(spec, commit=marker.get("teacher_commit")))
        if same is None and field == "teacher_weights":  # not on this machine yet: compared once fetched
            return "the teacher's weights are compared with the run's teacher_weights once fetched, before a step"
        if same is None:  # the student trains on from its checkpoint; its pin reaches only a LoRA base
            return "the student trains on from its checkpoint (a LoRA base is compared once fetched)"
        return f"it reads the weights the run recorded ({field})" if same else ""

    teacher = (
        cached_teacher
        if from_cache
        else as_recorded("teacher_weights", cfg.model.teacher, cfg.model.teacher_hub_revision)
    )
    model = cfg.to_dict()["model"]
    if not revision_reads_beside_teacher(model):
        beside = "it reaches no hub id beside the teacher"
    elif own_hub_tokenizer(model):
        beside = ""  # a tokenizer of its own at another revision: other encodings
    else:
        beside = as_recorded("student_weights", cfg.model.student, cfg.model.revision)
    accepted = {}
    for key in keys:
        if key == "model.teacher_dtype":
            why = cached_teacher if from_cache else ""
        elif key == "model.teacher_revision":
            why = teacher
        else:  # model.revision: the teacher's too where no teacher_revision is set
            why = beside if (cfg.model.teacher_revision or teacher) else ""
            why = (
                f"{why}; the teacher: {teacher}"
                if why and teacher and not cfg.model.teacher_revision
                else why
            )
        if why:
            accepted[key] = why
    return accepted


def resumable(key: str) -> bool:
    """Whether ``--resume`` accepts a change of the config key ``key`` (section.field)."""
    return key in SAME_MATH_CHANGES or key.startswith(RESUMABLE_CHANGES)


class RunFinished(EkdError):
    """``--resume`` of a run that has already trained all of ``train.max_steps``: nothing to do."""


def _unread_by_both(saved: dict | None, cfg: Config) -> set[str]:
    """Keys neither the saved run's config nor ``cfg`` reads (:func:`ekd.config.inert.unread_keys`); empty when the
    saved config no longer builds under today's rules."""
    from ekd.config import config_from_dict
    from ekd.config.inert import unread_keys

    try:
        before = config_from_dict(saved or {})
    except EkdError:
        return set()
    return unread_keys(before) & unread_keys(cfg)


def config_differences(saved: dict, current: dict) -> list[str]:
    a, b = flat_config(saved), flat_config(current)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


RECORDED_CONTENT = {
    "model.teacher": ("teacher_weights", "the same weights"),
    "data.source": ("data_fingerprint", "the same training blocks"),
    "model.tokenizer": ("data_fingerprint", "the same encodings of the training blocks"),
    "teacher.cache_dir": (None, "a cache built for this run: its signature is checked"),
}
"""Config key → (``ekd-run.json`` record of what it holds, what ``--resume`` checks): paths a resumed run may name
anew, since it checks their content (a teacher or training data moved: try-out 44 was told to pass 'a hub id, a
saved model directory or preset:<name>'). A teacher cache needs no record: the run refuses a cache whose
signature — the data, the teacher's weights, the targets — is not its config's before the first step."""


def name_it_now(key: str) -> str:
    """``name where it is now with --resume model.teacher=PATH (the run checks that it holds the same weights)``."""
    return f"name where it is now with --resume {key}=PATH (the run checks that it holds {RECORDED_CONTENT[key][1]})"


def moved_teacher(spec: str, tokenizer: str = "") -> str:
    """``model.teacher=/old/t no longer exists: put it back, or`` :func:`name_it_now`; with ``tokenizer``, the
    ``model.tokenizer`` that names the same directory, both keys named (try-out 138, F4: the tokenizer kept in the
    teacher's directory was refused on the next try)."""
    if tokenizer and Path(tokenizer).expanduser() == Path(spec).expanduser():
        return (
            f"model.teacher={spec} (and model.tokenizer, the same directory) no longer exists: put it back, or name "
            "where it is now with --resume model.teacher=PATH model.tokenizer=PATH (the run checks that they hold "
            "the same weights and encodings)"
        )
    return f"model.teacher={spec} no longer exists: put it back, or {name_it_now('model.teacher')}"


def _gone_data_source(cfg: Config, marker: dict) -> str:
    """The ``--resume`` refusal of a training data path, named as the run saved it, that is gone while the run
    records its blocks' sha256 (:func:`name_it_now`); "" when it is there."""
    value = str(cfg.data.source)
    path = Path(value).expanduser()
    if marker.get("data_fingerprint") and path.is_absolute() and not has_magic(value) and not path.exists():
        return f"--resume: data.source={value} no longer exists: put it back, or {name_it_now('data.source')}"
    return ""


def read_marker(run_dir: Path, otherwise: str = "choose another run.name") -> dict | None:
    """The run's ``ekd-run.json``, or None if there is none; ``otherwise``: the way out a refusal names beside
    restoring the file (``ekd compare``: leave the run out; ``ekd eval``, which reads no run.name: none).

    Raises:
        RunDirError: the marker exists but is not a file, cannot be read, is not an ekd-run marker or holds a field
            of another type than ekd writes (:func:`ekd.train.run_marker.marker_problem`).
    """
    from ekd.json_record import read_json_record
    from ekd.train.run_marker import marker_problem

    path = run_dir / MARKER
    example = '{"format": "ekd-run", "version": 1, "state": "started"}'
    # a stub record is offered only where the file is gone: over a damaged one it would turn a finished run into
    # one that has not finished, its recorded figures dropped (try-out 131, F5: a trailing comma)
    alternative = f", or {otherwise}" if otherwise else ""
    fix = f"fix it there, or restore it from a copy of the run{alternative}"
    back = f"put the run's record back (a stub such as {example} marks the run unfinished){alternative}"
    marker = read_json_record(path, fix, RunDirError, not_a_file=back)
    if marker is None:
        return None
    if not isinstance(marker, dict) or marker.get("format") != FORMAT:
        raise RunDirError(f"{path} is not an ekd run record; restore it from a copy of the run{alternative}")
    if problem := marker_problem(marker):
        raise RunDirError(f"{path} is corrupt: its {problem}; restore it{alternative}")
    return marker


def _another_path(blocking: list[str], key: str, saved: dict, now: str, why: str) -> None:
    """A ``--resume`` whose ``key`` names another path holding what the run read (a copy, a moved directory): no
    longer ``blocking``, said in one line with ``why`` it is the same."""
    blocking.remove(key)
    log.info("--resume with %s at another path (%s → %s): %s", key, flat_config(saved).get(key), now, why)


def some_of(keys: list[str], shown: int = 5) -> str:
    """``a, b, c, d, e and 2 more``: the first ``shown`` of ``keys`` and how many are left out (try-out 120, F7: a
    sixth blocking key was dropped without a word)."""
    rest = len(keys) - shown
    return ", ".join(keys[:shown]) + (f" and {rest} more" if rest > 0 else "")


def _reads_cache(key: str, saved: dict, cfg: Config) -> bool:
    """Whether ``key`` is ``teacher.cache_dir`` of a run that trains from a cache, saved and now."""
    return (
        key == "teacher.cache_dir"
        and cfg.teacher.source == "cache"
        and ((saved.get("teacher") or {}).get("source") == "cache")
    )


def other_teacher(spec: str, named_otherwise: bool = False, commit: str | None = None) -> str:
    """The refusal of a ``--resume`` whose ``model.teacher`` holds other weights than the run's teacher:
    ``named_otherwise``, a model named instead of the run's (try-out 154, N10: said as "retrained or replaced
    since"), else the run's own teacher changed where it is. ``commit``: the hub commit the run was taught by
    (``teacher_commit``), named as the pin that resumes it (try-out 162, F5)."""
    why = "another model" if named_otherwise else "retrained, replaced or a newer download since"
    where = ""
    if commit:
        from ekd.hub import model_directory

        here = (
            ""
            if model_directory(spec, commit) is not None
            else ", once downloaded to this machine's hub cache"
        )
        where = f" (model.teacher_revision={commit}, the commit it was taught by{here})"
    return (
        f"--resume: model.teacher {spec} holds other weights than the teacher this run was taught by ({why}); name "
        f"where those weights are{where}, or start a new run under another run.name"
    )


def _saved_source(run_dir: Path) -> object:
    """``data.source`` of the run's saved config.yaml, or '?' when it holds none."""
    return ((saved_config(run_dir) or {}).get("data") or {}).get("source", "?")


def _saved_max_steps(saved: dict) -> object:
    """``train.max_steps`` of a saved config (as a nested dict), or '?' when it holds none."""
    return (saved.get("train") or {}).get("max_steps", "?")


def saved_config(run_dir: Path) -> dict | None:
    """The run's saved ``config.yaml`` as a dict, or None if absent or not an ekd config."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    try:
        saved = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    if not (isinstance(saved, dict) and {"run", "model", "train"} <= set(saved)):
        return None
    return with_todays_defaults(saved)  # a run of an older ekd: the keys added since, at their defaults


def is_ekd_run(run_dir: Path) -> bool:
    """A directory ekd may replace: it holds ``ekd-run.json``, or (runs of ekd before the marker) an ekd
    ``config.yaml`` beside ``checkpoints/`` or ``metrics.jsonl``."""
    if (run_dir / MARKER).is_file():
        return True
    return saved_config(run_dir) is not None and (
        (run_dir / "checkpoints").is_dir() or (run_dir / "metrics.jsonl").is_file()
    )


def aside_of(run_dir: Path) -> Path:
    """Where ``--overwrite`` keeps the run it replaces until the new one has started: ``.<name>.replaced``
    beside it."""
    run_dir = Path(run_dir)
    return run_dir.with_name(f".{run_dir.name}.replaced")


def recover_interrupted_replace(run_dir: Path) -> bool:
    """A run left aside (:func:`aside_of`) by a ``--overwrite`` whose start was killed (``kill -9``, a lost node)
    goes back to ``run_dir`` unless the new run did start; True when it was put back. Call it holding the run's
    lock (:func:`lock_run`): no live process is then starting the run (``ekd distill`` through
    :class:`RunStart`, ``ekd eval RUN`` through :func:`using_run`). Only an ekd run is moved, and a run
    directory that holds what is not an ekd run's start is left alone, as is the run aside.
    """
    given = Path(run_dir)
    # an older ekd moved a linked run's link itself aside (try-out 137, F3): it is found beside the link; else a
    # link's run is beside where it leads, even while nothing is there (the run moved aside: try-out 142, F1)
    run_dir = given if aside_of(given).is_symlink() else real_run_dir(given)
    aside = aside_of(run_dir)
    if not aside.is_dir() or not is_ekd_run(aside):
        return False
    marker = read_marker(run_dir) if run_dir.is_dir() else None
    if marker is not None and marker.get("state") in ("started", "finished"):
        # the replacement started; this is the leftover of its commit (a link: removed, not what it leads to —
        # rmtree of a link was a traceback in every later command of the run)
        if aside.is_symlink():
            aside.unlink()
        else:
            shutil.rmtree(aside)
        return False
    if run_dir.is_dir() and any(p.name != INSIDE for p in run_dir.iterdir()) and marker is None:
        return False  # something else is in the way; leave both alone
    shutil.rmtree(run_dir, ignore_errors=True)
    aside.rename(run_dir)
    log.warning("restored %s, which an interrupted --overwrite had moved aside", given)
    return True


def real_run_dir(run_dir: Path) -> Path:
    """``run_dir``, or the directory it links to when it is a symbolic link (a run kept on another disk, linked into
    ``runs/``): where a replacement moves the run aside and makes the new one, so the link still leads to the run
    (try-out 137, F3: the link itself was moved aside — a traceback in every later command of the run — and the
    new run made on ``runs/``'s disk) — also while nothing is there (the run it leads to moved aside by a killed
    ``--overwrite``, to be put back: try-out 142, F1; a link to nothing else is refused: :class:`RunStart`)."""
    path = Path(run_dir)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _runs_beside(run_dir: Path) -> str:
    """The way on for ``--resume`` of a run directory that holds none: the runs beside it whose name is close to
    its (try-out 50, F4: 'drop --resume' for a mistyped run.name started a new run under the typo), else
    '; drop --resume to start it'."""
    from ekd.nearest import close_names, close_paths

    out = run_dir.parent
    if not out.exists():  # try-out 52, F8: 'drop --resume' would start the run under a mistyped directory
        meant = " or ".join(f"run.output_dir={p.parent}" for p in close_paths(run_dir, is_ekd_run))
        return (
            f" (run.output_dir {out} does not exist{f'; did you mean {meant}?' if meant else ''}); drop --resume "
            "to start a new run there"
        )
    runs = [p.name for p in out.iterdir() if p.is_dir() and is_ekd_run(p)] if out.is_dir() else []
    if close := close_names(run_dir.name, runs):
        names = " or ".join(f"run.name={n}" for n in close[:3])
        return f"; did you mean {names}? (drop --resume to start a new run named {run_dir.name})"
    return "; drop --resume to start it"


def new_run_id() -> str:
    """A run's identity (``run_id`` in ekd-run.json, recorded by its checkpoints): 32 random hex digits."""
    import uuid

    return uuid.uuid4().hex


def _write_marker(run_dir: Path, **fields: object) -> None:
    marker = (read_marker(run_dir) if (run_dir / MARKER).is_file() else None) or {
        "format": FORMAT,
        "version": 1,
    }
    marker.update(fields)
    atomic_write_text(run_dir / MARKER, json.dumps(marker, indent=2, sort_keys=True) + "\n")


def lock_run(run_dir: Path, fix: str) -> FileLock:
    """Take ``run_dir``'s lock without waiting (:func:`ekd.locks.lock_directory`: where it lives, and when it is
    returned not held).

    Raises:
        RunDirError: another ekd process holds it: one line naming the directory, the pid and ``fix``.
        DiskError: the lock file cannot be written.
    """
    return lock_directory(run_dir, fix, RunDirError)


@contextmanager
def using_run(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block: what writes into a finished run (``ekd eval RUN``: ``eval.json``,
    plots, task results) never writes while a ``--resume`` or another evaluation of it runs. A directory that
    does not exist holds nothing to guard (the block says what is wrong with it). A run that a killed
    ``--overwrite`` left aside is first put back, as ``ekd distill`` does (:func:`recover_interrupted_replace`).

    Raises:
        RunDirError: another ekd process is using the run, or the run cannot be written (a read-only mount:
            checked before anything is evaluated).
    """
    real = Path(run_dir).resolve()
    # a run an --overwrite killed before its new run started left aside (put back below)
    left_aside = bool(real.name) and aside_of(real).is_dir()
    if real in _USING or not (real.is_dir() or left_aside):  # held here already (nested), or nothing to guard
        yield
        return
    lock = lock_run(run_dir, "wait for it to end, then run the same command again")
    if not lock.held:  # writable neither beside nor inside (ekd.locks.lock_directory)
        raise RunDirError(
            f"{run_dir} is read-only: ekd eval writes eval.json, plots and task results into the run; copy it to "
            "a writable directory (cp -r) and evaluate the copy"
        )
    with lock:
        if left_aside:  # as the next `ekd distill` would: the run its killed --overwrite had not yet replaced
            with writing(real.parent):
                recover_interrupted_replace(run_dir if Path(run_dir).name else real)  # (named as given)
        _USING.add(real)
        try:
            yield
        finally:
            _USING.discard(real)


_USING: set[Path] = set()
"""Run directories this process holds through :func:`using_run`: ``ekd eval RUN`` holds its run across the eval
sets and the tasks (no other process between them), and the two functions it calls nest inside."""


def writes_into_run(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate a function whose first argument is a run directory it writes into: it runs under
    :func:`using_run` (the function then also raises RunDirError when another ekd process uses the run)."""

    @functools.wraps(fn)
    def wrapper(run_dir: Path, *args, **kwargs) -> T:
        with using_run(run_dir):
            return fn(run_dir, *args, **kwargs)

    return wrapper


def override_arg(key: str, value: object) -> str:
    """``key=value`` as typed on the command line (a list comma-separated, a mapping in YAML's flow style:
    ``data.eval_sources={held: h.txt}``), quoted for a shell if needed."""
    if isinstance(value, dict):
        text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20).strip()
    elif isinstance(value, list | tuple):
        text = ",".join(str(v) for v in value)
    elif isinstance(value, bool):
        text = str(value).lower()
    else:
        text = str(value)
    return shlex.quote(f"{key}={text}")


def _existing_run_advice(
    run_dir: Path,
    diffs: list[str],
    blocking: list[str],
    ckpt: Path | None,
    finished: bool,
    current: dict,
    unread: list[str],
) -> str:
    """The refusal of a start (no flag) on a directory that holds a run: what it holds and the ways on that work
    with this config (``--resume`` only where it would accept it). ``unread``: the keys of ``diffs`` neither config
    reads, which make no other run (try-out 113, F2: a run differing only in one was called "a different run")."""
    read = [k for k in diffs if k not in unread]
    idle = f"{some_of(unread)}, which neither config reads" if unread else ""
    if read:
        what = f"a different run (differs in {some_of(read)}{'; also in ' + idle if idle else ''})"
    else:
        what = f"a run (differing in {idle})" if idle else "a run"
    if ckpt is None:  # stopped before its first checkpoint: --resume cannot help
        return (
            f"{run_dir} already holds {what} that saved no checkpoint (nothing to resume); pass "
            "--overwrite to start it again, or set run.name"
        )
    if blocking:  # --resume would refuse these changes
        return (
            f"{run_dir} already holds a different run (differs in {some_of(blocking)}, which --resume "
            f"cannot change{'; also in ' + idle if idle else ''}); pass --overwrite to replace it, or set run.name"
        )
    if finished:  # --resume would have nothing to do
        flat = flat_config(current)
        # what ekd eval takes: eval.* and the eval sets (try-out 93, F2: a new data.eval_sources was left out)
        evals = " ".join(
            override_arg(k, flat[k])
            for k in read
            if (k.startswith("eval.") or k in EVAL_SET_CHANGES) and k in flat
        )
        again = f"`ekd eval {shlex.quote(str(run_dir))}{' ' + evals if evals else ''}` evaluates it" + (
            " with the new eval settings" if evals else " again"
        )
        return (
            f"{run_dir} already holds {what}, finished ({counted(checkpoint_step(ckpt), 'step')}): {again}; "
            "raise train.max_steps and pass --resume to train it further, pass --overwrite to replace it, or set "
            "run.name"
        )
    # a checkpoint past this config's length: --resume alone would be refused next (try-out 138, F8)
    steps = (current.get("train") or {}).get("max_steps")
    longer = (
        f" with train.max_steps ≥ {checkpoint_step(ckpt)}"
        if isinstance(steps, int) and checkpoint_step(ckpt) > steps
        else ""
    )
    return (
        f"{run_dir} already holds {what}; pass --resume{longer} to continue it, --overwrite to replace it, or set "
        "run.name"
    )


class RunStart:
    """Open, then commit or roll back, the run directory of ``cfg`` (see the module docstring); :meth:`close`
    releases it."""

    def __init__(self, cfg: Config, resume: bool, overwrite: bool) -> None:
        self.cfg, self.resume, self.overwrite = cfg, resume, overwrite
        self.run_dir: Path = cfg.run_dir
        # what a replacement moves: the linked directory, not a link
        self.real_dir = real_run_dir(self.run_dir)
        self.aside = aside_of(self.real_dir)
        self.fresh = False  # this start creates the run (new, replacing, or re-making an unstarted one)
        self.existed = False  # the directory existed before (empty, or moved aside)
        self.moved = False  # the previous content is at ``self.aside``
        self.committed = False
        self.student_recorded = (
            False  # check_student wrote student_weights (it runs before and after the load)
        )
        self.made_output = False  # this start created run.output_dir
        self.lock: FileLock | None = None  # the run's lock, held from open() to close()
        self.run_id = ""  # ekd-run.json's run_id (open()): what the run's checkpoints record
        self.saved_max_steps: object = None  # --resume with another train.max_steps: the saved one (open())
        self.eval_sets_reset = False  # --resume with other eval-set settings (said in open())

    # ------------------------------------------------------------ open

    def open(self) -> Path:
        """Check and prepare the run directory; returns it. Nothing is deleted here.

        Raises:
            RunDirError: the directory cannot hold this run (one line naming it and the fix), or another ekd
                process is using it.
            RunFinished: ``--resume`` of a run that has already trained ``train.max_steps`` steps.
            DiskError: the output directory is not writable.
        """
        run_dir, out = self.run_dir, self.run_dir.parent
        # a disk not mounted: never written into its empty mount point — unless what it leads to was moved aside by
        # a killed --overwrite, which the recovery below puts back (try-out 142, F1)
        dangling = dangling_link(run_dir)
        if dangling and not is_ekd_run(aside_of(real_run_dir(run_dir))):
            raise RunDirError(f"{dangling}, or remove the link")
        if self.resume and self.overwrite:  # one continues the run, the other deletes it: never guess
            raise RunDirError(
                "--resume continues a run and --overwrite replaces it; pass one of them, not both"
            )
        with writing(out):
            if out.exists() and not out.is_dir():
                raise RunDirError(f"run.output_dir {out} is a file, not a directory; set run.output_dir")
            if run_dir.exists() and not run_dir.is_dir():
                raise RunDirError(f"{run_dir} is a file, not a run directory; choose another run.name")
            if self.resume and not out.exists():  # refused before anything is made there
                raise RunDirError(f"--resume: {run_dir} holds no run to resume{_runs_beside(run_dir)}")
            self.made_output = not out.exists()
            make_dirs(out)  # the lock file lives here, beside the run directory
            # first of all: nothing below may judge (or reclaim) a directory that a live process is writing
            self.lock = lock_run(run_dir, self._in_use_fix())
            recover_interrupted_replace(run_dir)
            # a link the recovery put back leads elsewhere: what a replacement moves now (try-out 141, F1)
            self.real_dir = real_run_dir(run_dir)
            self.aside = aside_of(self.real_dir)
            holds = run_dir.is_dir() and any(p.name != INSIDE for p in run_dir.iterdir())  # not our lock
            marker = read_marker(run_dir) if holds else None
            # a start that did not finish, and whose process is gone (it would hold the lock we hold)
            if marker is not None and marker.get("state") == "starting":
                log.info("%s is a run whose start did not finish; starting it afresh", run_dir)
                self._move_aside()
            elif holds and self.overwrite:
                if not is_ekd_run(run_dir):
                    raise RunDirError(
                        f"--overwrite: {run_dir} is not an ekd run directory (no {MARKER}); ekd replaces only its "
                        "own runs: choose another run.name or run.output_dir, or remove it yourself"
                    )
                self._move_aside()
            elif holds:
                self._check_existing(marker)
                if self.resume and not os.access(run_dir, os.W_OK):  # checked before data and models load
                    raise RunDirError(
                        f"--resume: {run_dir} is read-only: the run writes checkpoints, metrics and the model into "
                        "it; copy it to a writable directory (cp -r) and resume the copy there "
                        "(run.output_dir=DIR --resume)"
                    )
            elif self.resume:
                raise RunDirError(f"--resume: {run_dir} holds no run to resume{_runs_beside(run_dir)}")
            self.fresh = self.moved or not holds
            self.existed = self.moved or run_dir.is_dir()
            make_dirs(self.real_dir)
            if self.fresh:  # a resumed run's files change only once it has started (commit)
                self.run_id = new_run_id()
                _write_marker(run_dir, state="starting", run_id=self.run_id)
                atomic_write_text(run_dir / "config.yaml", self.cfg.to_yaml())
            else:  # "" for a run of an ekd that recorded none: its checkpoint's, or a new one, at commit
                self.run_id = str((marker or {}).get("run_id") or "")
        return run_dir

    def check_checkpoint(self, path: Path, recorded: object) -> None:
        """Refuse to resume from checkpoint ``path`` of another run: ``recorded`` is what it records of the run
        that wrote it (``{'id', 'name'}``; None for a checkpoint of an older ekd, which is taken). A checkpoint
        copied from another run into this one's ``checkpoints/`` resumed without a word (try-out 50, F1: a kd
        run's step-000010 continued as an rkl run, a seed-1 run's as seed 0); a whole run copied (``cp -r``)
        keeps its id and resumes. A run that records no id (an older ekd's) takes the checkpoint's.

        Raises:
            CheckpointError: one line naming the checkpoint, the run that wrote it and the way on.
        """
        if not isinstance(recorded, dict) or not recorded.get("id") or recorded.get("id") == self.run_id:
            return
        if not self.run_id:  # nothing to tell it by: the run is the checkpoint's
            self.run_id = str(recorded["id"])
            return
        from ekd.train.checkpoint import CheckpointError, checkpoint_dirs, checkpoint_run

        # every checkpoint of another run, named at once (try-out 52, F12: refused one at a time)
        foreign, own = {path.name: recorded}, []
        for other in checkpoint_dirs(path.parent):
            if other.name != path.name:
                run = checkpoint_run(other)
                if isinstance(run, dict) and run.get("id") and run.get("id") != self.run_id:
                    foreign[other.name] = run
                else:
                    own.append(other.name)
        named = ", ".join(
            f"{name} ({run.get('name') or 'unnamed'}, run id {str(run['id'])[:8]})"
            for name, run in sorted(foreign.items())
        )
        one = len(foreign) == 1
        then = (
            f"this run then resumes from its own newest, {own[-1]}"
            if own
            else "this run has no checkpoint of its own: start it again with --overwrite"
        )
        raise CheckpointError(
            f"--resume: {'checkpoint' if one else 'checkpoints'} {named} in {path.parent} "
            f"{'was' if one else 'were'} written by another run (this run's id is {self.run_id[:8]} in "
            f"{self.run_dir / MARKER}): resuming would continue that run's weights and state as this one; move "
            f"{'it' if one else 'them'} out of checkpoints/ ({then}), or resume the run "
            f"{'it belongs' if one else 'they belong'} to"
        )

    def _check_existing(self, marker: dict | None) -> None:
        run_dir = self.run_dir
        saved = saved_config(run_dir)
        if marker is None and saved is None:
            raise RunDirError(
                f"{run_dir} exists and is not an ekd run directory; choose another run.name or run.output_dir"
            )
        current = self.cfg.to_dict()
        # paths as the config's are: resolved (a run saved before they were), under a moved project's new root —
        # or as saved, where those still exist (try-out 25: a run copied elsewhere, resumed with its own
        # config.yaml, had its paths rebased onto look-alike copies and then "differed")
        as_saved = resolve_saved(saved or {})
        saved = resolve_saved(saved or {}, self.cfg.run.output_dir)
        diffs = sorted(set(config_differences(saved, current)) & set(config_differences(as_saved, current)))
        diffs = [k for k in diffs if not is_reporting_key(k)]  # the same run, reported otherwise
        ran = (marker or {}).get(ARITHMETIC)  # as the run computed, where it records it (since 2026-12-05)
        # what the settings compute here decides, not their spelling: checked below (_arithmetic_moved)
        if ran:
            recorded = ["train.precision", *(["model.teacher_dtype"] if "teacher_dtype" in ran else [])]
            diffs = [k for k in diffs if k not in recorded]
        if "train.precision" in diffs and (
            _as_it_ran(ran, "autocast", self.cfg) if ran else _one_arithmetic(saved or {}, self.cfg)
        ):
            # 'auto' is fp32 on CPU, bf16 on a GPU: nothing the run computes changes
            diffs.remove("train.precision")
        if "model.teacher_dtype" in diffs and (
            _as_it_ran(ran, "teacher_dtype", self.cfg)
            if ran and "teacher_dtype" in ran  # (none where the teacher only evaluates)
            else _one_teacher_dtype(saved or {}, self.cfg)
        ):
            diffs.remove("model.teacher_dtype")  # likewise: 'auto' loads a float32 teacher on CPU
        pins = ("model.revision", "model.teacher_revision")
        if set(pins) & set(diffs) and same_pins(
            (saved or {}).get("model") or {}, self.cfg.to_dict()["model"]
        ):
            diffs = [k for k in diffs if k not in pins]  # the same revisions, the pins spelled otherwise
        blocking = [k for k in diffs if not resumable(k)]
        # try-out 112, F1: a key neither config reads was warned of as without effect, then refused as a change
        unread_diffs = sorted(_unread_by_both(saved, self.cfg) & set(diffs))
        unread = [k for k in blocking if k in unread_diffs]
        blocking = [k for k in blocking if k not in unread]
        ckpt = latest_checkpoint(run_dir)
        from ekd.train.run_state import is_finished_run

        finished = (
            marker is not None
            and marker.get("state") == "finished"
            and ckpt is not None
            and checkpoint_step(ckpt) >= self.cfg.train.max_steps
            # its student/ removed since: --resume exports it again (try-out 52, F10)
            and is_finished_run(run_dir)
        )
        if not self.resume:
            raise RunDirError(
                _existing_run_advice(run_dir, diffs, blocking, ckpt, finished, current, unread_diffs)
            )
        if ran and (moved := _arithmetic_moved(ran, self.cfg)):
            # its settings, changed or not, compute otherwise here (a run begun on a GPU resumed on a CPU): refused
            # as any change of arithmetic, with the settings that keep it (try-out 123, F1/F4: a warning, and the
            # record rewritten before a step; train.precision=fp32 refused while auto, the same fp32 here, passed)
            raise RunDirError(
                f"--resume: this run computed in {moved[0]}; this config computes in {moved[1]} here: pass "
                f"{moved[2]} to continue it as it was, or start a new run under another run.name"
            )
        if unread:
            one = len(unread) == 1
            log.info(
                "--resume: %s %s from the saved run, but neither the run nor this config reads %s: nothing it "
                "computes changes",
                ", ".join(unread),
                "differs" if one else "differ",
                "it" if one else "them",
            )
        if gone := gone_paths(flat_config(saved), flat_config(current), blocking):
            movable = [
                k
                for k, (record, _) in RECORDED_CONTENT.items()
                if k in blocking and (record in (marker or {}) or _reads_cache(k, saved, self.cfg))
            ]
            raise RunDirError(  # try-out 23: was "the config differs in data.source" (it did not)
                f"--resume: no such file or directory: {'; '.join(gone)}; put it back where the run read it and "
                "rerun with --resume" + "".join(f", or {name_it_now(k)}" for k in movable)
            )
        if "data.source" in blocking and (marker or {}).get("data_fingerprint"):
            # the data at another path (a copy on another node): the run's blocks' sha256 decides, once read
            _another_path(blocking, "data.source", saved, self.cfg.data.source, "the training blocks must be the "
                          "run's (their sha256 is checked once they are read)")  # fmt: skip
        if "model.tokenizer" in blocking and (marker or {}).get("data_fingerprint"):
            # the tokenizer moved with its teacher (try-out 120, F3: configs/demo.yaml names the teacher's
            # directory): the blocks it encodes must be the run's, as for data.source
            _another_path(blocking, "model.tokenizer", saved, self.cfg.model.tokenizer, "the training blocks it "
                          "encodes must be the run's (their sha256 is checked once they are read)")  # fmt: skip
        if "model.teacher" in blocking and (recorded := (marker or {}).get("teacher_weights")):
            from ekd.models.identity import same_weights

            same = same_weights(recorded, self.cfg.model.teacher, self.cfg.model.teacher_hub_revision)
            if same:  # the teacher copied or moved (try-out 43: refused as another run)
                _another_path(blocking, "model.teacher", saved, self.cfg.model.teacher,
                              "the same weights (their fingerprint is the run's)")  # fmt: skip
            elif same is not None:
                raise RunDirError(other_teacher(self.cfg.model.teacher, named_otherwise=True))
        if "teacher.cache_dir" in blocking and _reads_cache("teacher.cache_dir", saved, self.cfg):
            # the cache copied or moved (a node's local disk): try-out 119's was refused as another run
            # try-out 122, F10
            unchecked = (
                ""
                if (marker or {}).get("cache_teacher")
                else (
                    "; the run records no cache arithmetic (an older ekd's), so the teacher dtype and autocast the cache "
                    "was built in are not checked"
                )
            )
            _another_path(blocking, "teacher.cache_dir", saved, self.cfg.teacher.cache_dir,
                          "a cache built for this run (its signature — the data, the teacher's weights, the "
                          f"targets — is checked before the first step){unchecked}")  # fmt: skip
        if accepted := _models_as_recorded(blocking, saved or {}, self.cfg, marker or {}):
            blocking = [k for k in blocking if k not in accepted]
            for key, why in accepted.items():
                log.info("--resume with %s changed: %s", key, why)
        if blocking:
            why = [f"{k}: {REFUSED_BECAUSE[k]}" for k in blocking if k in REFUSED_BECAUSE]
            raise RunDirError(
                f"--resume: the config differs from the saved run in {some_of(blocking)}, which "
                f"{'changes' if len(blocking) == 1 else 'change'} what "
                f"the run computes{' (' + '; '.join(why) + ')' if why else ''}; resume with the settings in "
                f"{run_dir / 'config.yaml'}, or start a new run under another run.name"
            )
        if moved := _gone_data_source(self.cfg, marker or {}):
            raise RunDirError(moved)
        if ckpt is None:  # resuming would train from step 0 and rewrite the run's metrics and plots
            raise RunDirError(
                f"--resume: {run_dir / 'checkpoints'} holds no checkpoint to resume from; start the run again "
                "with --overwrite (this replaces it) or under another run.name"
            )
        # try-out 23: a checkpoint named step-000005 then held step 10's weights
        if not finished and checkpoint_step(ckpt) > self.cfg.train.max_steps:
            raise RunDirError(
                f"--resume: {run_dir}'s newest checkpoint {ckpt.name} is past train.max_steps="
                f"{self.cfg.train.max_steps}; resume with train.max_steps ≥ {checkpoint_step(ckpt)} (the run's "
                f"saved value: {_saved_max_steps(saved)})"
            )
        if finished:
            raise RunFinished(
                f"run {run_dir} is already finished ({counted(checkpoint_step(ckpt), 'step')}); nothing to "
                "resume (raise train.max_steps to train further, or `ekd eval` it; a student/ that no longer loads is "
                "exported again from the last checkpoint once moved away)"
            )
        if "train.max_steps" in diffs:  # said once the checkpoint it resumes from is known (say_new_length)
            self.saved_max_steps = _saved_max_steps(saved)
        said = {**LAYOUT_CHANGES, **SAME_MATH_CHANGES}
        if knobs := [k for k in diffs if k in said]:
            flat = flat_config(saved or {})
            changes = ", ".join(f"{k} {flat.get(k)} → {flat_config(current).get(k)}" for k in knobs)
            notes = "; ".join(dict.fromkeys(said[k] for k in knobs))
            log.info("--resume with %s: the same math with other memory and speed (%s)", changes, notes)
        if eval_keys := [k for k in diffs if k in EVAL_SET_CHANGES]:
            self.eval_sets_reset = True
            flat, now = flat_config(saved or {}), flat_config(current)
            changes = ", ".join(f"{k} {flat.get(k)} → {now.get(k)}" for k in eval_keys)
            log.info(
                "--resume with %s: the evaluations from step %d on score other eval sets, so the eval curves in "
                "metrics.jsonl change sets there (eval/<set>/tokens and documents say which)",
                changes,
                checkpoint_step(ckpt) + 1,
            )

    def say_new_length(self, resumed_step: int) -> None:
        """One line when ``--resume`` changed ``train.max_steps`` (try-out 28: EGAD's curriculum phase went 0.95 →
        0.67 without a word), at the step the run resumed from — a corrupt newest checkpoint is skipped for an
        earlier one, which the line names (try-out 75, F3: it named the skipped one's step)."""
        if self.saved_max_steps is None:
            return
        new = self.cfg.train.max_steps
        log.info(
            "--resume with train.max_steps %s → %s: what is scheduled over the run's length — the learning "
            "rate, and a curriculum, coverage or τ schedule or LATF's warm-up — follows the new length from "
            "step %d on (a schedule at step %d of %s is at %.0f%% of the new one)",
            self.saved_max_steps,
            new,
            resumed_step + 1,
            resumed_step,
            self.saved_max_steps,
            100 * resumed_step / new,
        )

    def _in_use_fix(self) -> str:
        """The way on when another process holds the run's lock: another run.name starts a new run, which is no
        way to continue (``--resume``) or replace (``--overwrite``, ``ekd demo``) this one: the same command once it
        has ended (try-out 130, F4: `ekd demo` was told to "rerun with --overwrite", a flag it does not have)."""
        if self.resume or self.overwrite:
            return "wait for it to end, then run the same command again"
        return "wait for it to end, or choose another run.name"

    def _move_aside(self) -> None:
        """Move the run aside (``.<name>.replaced`` beside it) until the new one has started.

        Raises:
            RunDirError: something is in the way, or the parent is not writable (a read-only ``runs/`` holding a
                writable run: the run can be resumed in place, but not replaced).
        """
        if self.aside.exists():  # not ours to delete (ekd's own leftovers were handled by the recovery)
            raise RunDirError(f"{self.aside} is in the way of --overwrite; move or remove it and rerun")
        out = self.real_dir.parent
        if not os.access(out, os.W_OK):  # the rename below would fail with a bare "read-only file system"
            what = (
                f"--overwrite cannot replace {self.run_dir}"
                if self.overwrite
                else f"cannot start {self.run_dir} afresh (a start of it did not finish)"
            )
            raise RunDirError(
                f"{what}: replacing a run directory moves it aside within its parent, and {out} is not "
                "writable; set run.output_dir to a writable directory and rerun"
            )
        self.real_dir.rename(self.aside)
        self.moved = True

    # ------------------------------------------------------------ data, commit, rollback

    def check_data(self, fingerprint: str, train_blocks: int) -> None:
        """Record the training data's fingerprint (a new run) or check it (``--resume``).

        Raises:
            RunDirError: ``--resume`` over training data that differ from the run's.
        """
        marker = read_marker(self.run_dir) or {}
        saved = marker.get("data_fingerprint")
        if not self.fresh and saved is not None and saved != fingerprint:
            from ekd.data.documents import text_split_note

            raise RunDirError(
                f"--resume: the training data of data.source={self.cfg.data.source} differ from the run's "
                f"({counted(marker.get('train_blocks'), 'block')}, fingerprint {str(saved)[:12]}; now "
                f"{counted(train_blocks, 'block')}, {fingerprint[:12]})"
                f"{text_split_note(self.cfg.data.source, marker.get('text_split'))}; "
                "name the data the run read "
                f"({_saved_source(self.run_dir)}) as it was, or start a new run under another run.name"
            )
        from ekd.data.documents import TEXT_SPLIT_RULE

        if saved is None:
            with writing(self.run_dir):  # the split rule of a text file named alone the blocks were read with
                _write_marker(
                    self.run_dir,
                    data_fingerprint=fingerprint,
                    train_blocks=int(train_blocks),
                    text_split=TEXT_SPLIT_RULE,
                )
        elif "text_split" not in marker:
            # an older ekd's run whose data today's rule reads alike: recorded now
            with writing(self.run_dir):
                _write_marker(self.run_dir, text_split=TEXT_SPLIT_RULE)

    def check_eval_sets(self, fingerprints: dict[str, str], held_out: str | None = None) -> None:
        """Record the eval sets' blocks (name → sha256), and on ``--resume`` say a set whose blocks differ from
        those recorded while its settings did not change: its file was edited, and the run's eval curve of that
        name goes on over other text (try-out 74, F3: 274 targets, then 153, under one name, without a word).
        ``held_out``: the held-out split's documents (:func:`ekd.data.build.held_out_fingerprint`), recorded once
        for ``ekd eval RUN`` (:func:`ekd.train.evaluation.check_held_out`)."""
        marker = read_marker(self.run_dir) or {}
        saved = marker.get("eval_blocks") or {}
        if held_out is not None and marker.get("held_out_documents") is None:
            with writing(self.run_dir):
                _write_marker(self.run_dir, held_out_documents=held_out)
        if not self.fresh and not self.eval_sets_reset:
            for name in [n for n, sha in fingerprints.items() if saved.get(n) not in (None, sha)]:
                log.warning(
                    "eval set '%s': its blocks differ from those the run scored before this --resume (its text "
                    "changed; blocks_sha256 %s, now %s): its eval curve in metrics.jsonl scores other text from "
                    "here on, and this line is the record of it (its rows do not mark the change)",
                    name,
                    str(saved[name])[:12],
                    fingerprints[name][:12],
                )
        if saved != fingerprints:
            with writing(self.run_dir):
                _write_marker(self.run_dir, eval_blocks=fingerprints)

    def check_student_base(self) -> None:
        """A LoRA run (``model.lora_r > 0``) trains adapters on the base ``model.student`` names and reloads that
        base on ``--resume`` and for an adapter export: a new run records the base's identity
        (:func:`ekd.models.lora.base_identity`), ``--resume`` refuses another (try-out 33: a base rebuilt in place
        was resumed on, and evaluated at ppl 409 and 477 for the run's 3.13).

        Raises:
            RunDirError: ``--resume`` on a base whose weights differ from the run's.
        """
        from ekd.models.lora import base_changed, base_identity

        spec, revision = self.cfg.model.student, self.cfg.model.revision
        if not self.cfg.model.lora_r:
            return
        saved = (read_marker(self.run_dir) or {}).get("student_base")
        if not self.fresh and saved is not None and base_changed(saved, spec, revision):
            commit = saved.get("commit")
            pin = (
                f" (model.revision={commit}, the commit it trained on — a hub teacher then pinned by "
                "model.teacher_revision)"
                if commit
                else ""
            )
            raise RunDirError(
                f"--resume: model.student {spec} is not the base this LoRA run trained its adapters on (its "
                f"weights' sha256 differs from the run's); put that base back{pin}, or start a new run under another "
                "run.name"
            )
        # a hub base fetched only after the first start is recorded at a later --resume
        if saved is None and (identity := base_identity(spec, revision)) is not None:
            with writing(self.run_dir):
                _write_marker(self.run_dir, student_base=identity)

    def check_student(self) -> None:
        """A new run from a local student directory records its weights (:func:`ekd.models.identity.weights_fingerprint`,
        ``student_weights``), so that ``ekd compare`` tells apart runs whose starting students differ at one path
        (try-out 70, F1: two students written to one path by ``ekd student init --overwrite`` were averaged as
        seeds). A resume trains on from its checkpoint, whatever that path holds now."""
        from ekd.models.identity import weights_fingerprint

        student, revision = self.cfg.model.student, self.cfg.model.revision
        if self.fresh and not self.student_recorded and (current := weights_fingerprint(student, revision)):
            with writing(self.run_dir):
                _write_marker(self.run_dir, student_weights=current)
            self.student_recorded = True

    def record_arithmetic(self, ran: dict[str, str]) -> None:
        """Record the arithmetic this segment computes in (:data:`ARITHMETIC`; the resume checks read it)."""
        with writing(self.run_dir):
            _write_marker(self.run_dir, **{ARITHMETIC: ran})

    def check_tokenizer(self, sha256: str) -> None:
        """The run's tokenizer (:func:`ekd.data.tokenizer.tokenizer_hash`: vocabulary with added tokens, merges,
        pipeline, special tokens): a new run records it (``tokenizer_sha256``, as a finished run always has), a
        ``--resume`` refuses another — the training blocks' sha256 does not see added tokens the text never uses,
        and a tokenizer named at another path is checked by both (review of session 34, R8).

        Raises:
            RunDirError: ``--resume`` with a tokenizer that is not the run's.
        """
        saved = (read_marker(self.run_dir) or {}).get("tokenizer_sha256")
        if saved and not self.fresh and saved != sha256:
            raise RunDirError(
                f"--resume: model.tokenizer={self.cfg.model.tokenizer} is not the run's tokenizer (its vocabulary, "
                f"merges or special tokens differ: tokenizer_sha256 {sha256[:12]}, the run's {saved[:12]}); name the "
                "run's tokenizer, or start a new run under another run.name"
            )
        if not saved:
            with writing(self.run_dir):
                _write_marker(self.run_dir, tokenizer_sha256=sha256)

    def check_cache_teacher(self, pinned: str | None, bytes_per_token: float | None = None) -> None:
        """A run from a teacher cache: a new run records what its cache's targets were computed by
        (:func:`ekd.teacher.cache.manifest.cache_teacher`: the teacher and the arithmetic of the build; ``cache_teacher``,
        which ``ekd compare`` tells cache runs apart by), ``--resume`` refuses a cache computed otherwise — a copy
        built on a GPU in bfloat16 for a run begun from a CPU's float32 cache matches the config's signature all
        the same (review of session 34, R3). None (a cache that records no arithmetic): nothing to record. A new
        run also records the cache's measured ``bytes_per_token`` (``cache_bytes_per_token``), which ``ekd
        compare`` reports once the cache is deleted or moved (review 126, R2: it fell back to the online formula,
        37% lower, without a word).

        Raises:
            RunDirError: ``--resume`` with a cache whose targets another teacher or arithmetic computed.
        """
        from ekd.teacher.cache.manifest import cache_teacher_parts, computed_with

        saved = (read_marker(self.run_dir) or {}).get("cache_teacher")
        if pinned is not None and saved is not None and not self.fresh and saved != pinned:
            now, then = cache_teacher_parts(pinned), cache_teacher_parts(saved)
            other = ", another teacher" if now[0] != then[0] else ""
            way = "name the run's cache or a copy of it"
            own = (saved_config(self.run_dir) or {}).get("teacher", {}).get("cache_dir")
            if own and same_location(own, self.cfg.teacher.cache_dir):
                # the run's own cache, rebuilt since (try-out 122, F6: "name the run's cache" named this one)
                way = (
                    f"it is the run's, rebuilt since: rebuild it as it was with `ekd cache "
                    f"{self.run_dir / 'config.yaml'} --overwrite model.teacher_dtype={then[1]}` on a device where "
                    f"that computes in {then[2]}, or name a copy of the run's cache"
                )
            raise RunDirError(
                f"--resume: the teacher cache at {self.cfg.teacher.cache_dir} was computed otherwise than the "
                f"run's ({computed_with(now[1], now[2])}; the run's: {computed_with(then[1], then[2])}{other}); "
                f"{way}"
            )
        facts = {
            **({"cache_teacher": pinned} if pinned is not None and saved is None else {}),
            **({"cache_bytes_per_token": bytes_per_token} if bytes_per_token is not None else {}),
        }
        if facts and self.fresh:  # a resumed run that recorded none: not known for its first steps (t123, F6)
            with writing(self.run_dir):
                _write_marker(self.run_dir, **facts)

    def check_teacher(self) -> None:
        """A run taught online by a local teacher directory or a cached hub id: a new run records its weights
        (:func:`ekd.models.identity.weights_fingerprint`, ``teacher_weights``), ``--resume`` refuses other weights
        at that path (try-out 42: a teacher retrained in place between a kill and ``--resume`` taught the run's
        first steps and the others another model, without a word; a cache checks its own teacher).

        Raises:
            RunDirError: ``--resume`` with a teacher whose weights differ from the run's.
        """
        from ekd.models.identity import SAMPLED, same_weights, weights_fingerprint

        if self.cfg.teacher.source != "online":
            return
        spec, revision = self.cfg.model.teacher, self.cfg.model.teacher_hub_revision
        saved = (read_marker(self.run_dir) or {}).get("teacher_weights")
        if saved is not None and not self.fresh:
            # an older ekd's sampled fingerprint: checked its way, ...
            same = same_weights(saved, spec, revision)
            if same is False:
                raise RunDirError(
                    other_teacher(spec, commit=(read_marker(self.run_dir) or {}).get("teacher_commit"))
                )
            if same and saved.startswith(SAMPLED):  # ... then recorded by every byte (ekd compare reads it)
                saved = None
        if saved is None and (current := weights_fingerprint(spec, revision)) is not None:
            from ekd.hub import is_local, model_directory
            from ekd.teacher.cache.signature import is_commit

            snapshot = None if is_local(spec) else model_directory(spec, revision)
            commit = (
                {"teacher_commit": snapshot.name} if snapshot is not None and is_commit(snapshot.name) else {}
            )
            with writing(self.run_dir):
                _write_marker(self.run_dir, teacher_weights=current, **commit)

    def commit(self) -> None:
        """The run has started: mark it so and delete the run it replaces."""
        with writing(self.run_dir):
            self.run_id = self.run_id or new_run_id()  # a run of an older ekd, which recorded none
            _write_marker(self.run_dir, state="started", run_id=self.run_id)
            if not self.fresh:
                atomic_write_text(self.run_dir / "config.yaml", self.cfg.to_yaml())
        self.committed = True  # (if the marker could not be written, the start is rolled back)
        if self.aside.exists() or self.aside.is_symlink():
            if self.aside.is_symlink():  # a link (an older ekd's): removed, not what it leads to
                self.aside.unlink()
            else:
                shutil.rmtree(self.aside, ignore_errors=True)
            why = "--overwrite" if self.overwrite else "its start had not finished"
            log.info("removed the previous run of %s (%s)", self.run_dir, why)

    def rollback(self) -> None:
        """The start failed: remove what it made and put back the run it was to replace (a no-op after
        :meth:`commit`: a run that has started keeps its directory for ``--resume``)."""
        if self.committed or not self.fresh:
            return
        if self.lock is not None and self.lock.path.parent == self.run_dir.resolve():  # the lock is INSIDE
            for entry in self.run_dir.iterdir():  # empty the run but keep the held lock file
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                elif entry.name != INSIDE:
                    entry.unlink(missing_ok=True)
        else:
            shutil.rmtree(self.real_dir, ignore_errors=True)
        if self.aside.is_dir():
            self.aside.rename(self.real_dir)
        elif self.existed:
            make_dirs(self.real_dir)  # it was an empty directory before

    def close(self) -> None:
        """Release the run's lock (after :meth:`finish`, :meth:`rollback` or a refusal); an output directory
        this start made is removed again if the run did not start and it is empty."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if self.made_output and not self.committed:
            with suppress(OSError):
                self.run_dir.parent.rmdir()  # only if empty

    def finish(self, **facts: object) -> None:
        """The run trained all its steps and wrote its final evaluation; ``facts`` about it are recorded with
        the state (``tokenizer_tokens``: V, ``head_rows``: the exported head's rows)."""
        with writing(self.run_dir):
            _write_marker(self.run_dir, state="finished", **facts)
