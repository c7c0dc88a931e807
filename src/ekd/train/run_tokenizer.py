"""The tokenizer a run trained with, read back from its export — not whatever class ``AutoTokenizer`` picks.

transformers 5 loads a tokenizer by the model's ``model_type`` for some families (``qwen2``, ``phi3``, ...:
its ``MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS``), whatever ``tokenizer_config.json`` names; such a class
builds its own normalizer and pre-tokenizer. A student of such a family trained with another family's
tokenizer (try-out 29: a Qwen2 student with a Llama teacher's byte-level BPE) is exported with the run's
tokenizer files, yet ``AutoTokenizer.from_pretrained(export)`` returns ``Qwen2Tokenizer``, which cut 271 of 300
held-out documents otherwise: ``ekd eval RUN`` then refused the run's own teacher, or scored perplexity 32.3
where the run had scored 3.24, and wrote it over the run's figures.

So a run records the class and the encodings' hash (:func:`~ekd.data.tokenizer.tokenizer_hash`) of its
tokenizer in ``ekd-run.json`` (:func:`tokenizer_facts`); :func:`run_tokenizer` loads the export with that class and
checks the hash, and :func:`say_if_auto_differs` warns at export when ``AutoTokenizer`` would load the files
otherwise.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import transformers
from transformers import PreTrainedTokenizerBase
from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

from ekd.data.tokenizer import tokenizer_hash
from ekd.errors import EkdError, ModelError
from ekd.models.load import load_or_refuse, load_tokenizer
from ekd.train.prepare import tokenizer_role, tokenizer_source

log = logging.getLogger(__name__)


def tokenizer_facts(tokenizer: PreTrainedTokenizerBase) -> dict[str, str]:
    """What ``ekd-run.json`` records of the run's tokenizer: its class name and its encodings' sha256."""
    return {"tokenizer_class": type(tokenizer).__name__, "tokenizer_sha256": tokenizer_hash(tokenizer)}


def run_tokenizer(student_dir: Path, marker: dict | None) -> PreTrainedTokenizerBase:
    """The run's tokenizer from its export ``student_dir``: read with the class the run recorded in its
    ``marker`` (``ekd-run.json``) when ``AutoTokenizer`` picks another, and checked against the recorded sha256.
    A run of an older ekd recorded neither (try-outs 30–32): the class of the tokenizer its saved config names
    (``model.tokenizer``: the teacher's, ...; not an override given to ``ekd eval``) when that still loads and
    reads the export's files to the same encodings; else the class the export's ``tokenizer_config.json`` names —
    ekd saved the run's tokenizer there, and ``AutoTokenizer`` overrides that name for some families.

    Raises:
        ModelError: the export's tokenizer cannot be read, or is not the run's (its recorded sha256): the files
            were changed after the run; a class this transformers does not have.
    """
    marker = marker or {}
    tokenizer = _read(student_dir, None)
    name = marker.get("tokenizer_class")
    if name is None and (named := _named_tokenizer(student_dir.parent)) is not None:
        # an older run: the tokenizer its config names, where the export's files read with its class encode alike
        try:
            same = tokenizer if type(tokenizer) is type(named) else _read(student_dir, type(named))
        except ModelError:  # that class cannot read the export's files: not the run's
            same = None
        if same is not None and tokenizer_hash(same) == tokenizer_hash(named):
            return same
    name = name or _saved_class(student_dir)
    if name and type(tokenizer).__name__ != name:
        cls = tokenizer_class_from_name(name) or tokenizer_class_from_name(name.removesuffix("Fast"))
        if cls is None:
            raise ModelError(
                f"{student_dir.parent} was trained with the tokenizer class {name}, which transformers "
                f"{transformers.__version__} does not have; evaluate it with the transformers version it was "
                "trained with"
            )
        tokenizer = _read(student_dir, cls)
    expected = marker.get("tokenizer_sha256")
    if expected and tokenizer_hash(tokenizer) != expected:
        raise ModelError(
            f"{student_dir}: its tokenizer ({type(tokenizer).__name__}) does not encode as the one the run "
            "trained with (another sha256 than ekd-run.json records); put the run's tokenizer files back"
        )
    return tokenizer


def _saved_class(student_dir: Path) -> str | None:
    """``tokenizer_class`` of the export's ``tokenizer_config.json`` (the class of the tokenizer saved there), or
    None when it names none or cannot be read."""
    try:
        name = json.loads((student_dir / "tokenizer_config.json").read_text()).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) and name else None


def _read(student_dir: Path, cls) -> PreTrainedTokenizerBase:
    """The tokenizer files of a run's export, by ``cls`` (None: ``AutoTokenizer``); one line when they cannot be
    read, naming the export (not ``model.student``: the export is the run's, not the configured student)."""
    missing = [f for f in ("tokenizer.json", "tokenizer_config.json") if not (student_dir / f).is_file()]
    try:
        if cls is None:
            return load_tokenizer(str(student_dir), role="student")
        return load_or_refuse(
            str(student_dir), "student", lambda: cls.from_pretrained(str(student_dir)), "a tokenizer"
        )
    except ModelError as e:
        from ekd.models.load import broken_json

        # a config.json that does not parse (try-out 54, F4: blamed on the tokenizer)
        if not missing and (broken := broken_json(str(student_dir))):
            raise ModelError(
                f"{student_dir}: {broken}; put back the file the run exported, or remove {student_dir} and export it "
                "again from the run's last checkpoint with `ekd distill RUN/config.yaml --resume`"
            ) from e
        why = f"{', '.join(missing)} missing" if missing else str(e).split(" (", 1)[-1].split(":", 1)[0]
        raise ModelError(
            f"{student_dir}: cannot read the run's tokenizer ({why}); put its tokenizer files back "
            "(tokenizer.json, tokenizer_config.json)"
        ) from e


def _named_tokenizer(run_dir: Path) -> PreTrainedTokenizerBase | None:
    """The tokenizer the run's saved config names (``model.tokenizer``; a trained BPE from ``run_dir/tokenizer``),
    or None when the config or the tokenizer cannot be loaded here (moved, offline)."""
    from ekd.train.evaluation import load_run_config

    try:
        cfg = load_run_config(run_dir)
        spec = tokenizer_source(cfg)
        source = {
            "teacher": cfg.model.teacher,
            "student": cfg.model.student,
            "train_bpe": str(run_dir / "tokenizer"),
        }.get(spec, spec)
        revision = cfg.model.revision_of(tokenizer_role(cfg, spec))
        return load_tokenizer(source, revision, cfg.model.trust_remote_code)
    except EkdError:
        return None


def say_if_auto_differs(
    directory: Path, tokenizer: PreTrainedTokenizerBase, sha256: str | None = None
) -> None:
    """Warn when ``AutoTokenizer.from_pretrained(directory)`` (how users load an export) gives a tokenizer that
    encodes otherwise than ``tokenizer``, the run's, whose files were saved there (``sha256``: its
    :func:`~ekd.data.tokenizer.tokenizer_hash` when the caller has it)."""
    try:
        auto = load_tokenizer(str(directory), role="student")
    except ModelError:
        return  # an export AutoTokenizer cannot read: loading it says why
    if tokenizer_hash(auto) == (sha256 or tokenizer_hash(tokenizer)):
        return
    ours = type(tokenizer).__name__
    log.warning(
        "AutoTokenizer.from_pretrained('%s') loads the student's tokenizer files as %s (transformers picks it for "
        "model_type %s), which encodes text otherwise than the tokenizer the run trained with (%s): load it "
        "with transformers.%s.from_pretrained('%s') (ekd eval does)",
        directory,
        type(auto).__name__,
        _model_type(directory),
        ours,
        ours,
        directory,
    )


def _model_type(directory: Path) -> str:
    """``model_type`` of the config.json in ``directory``, '?' when it cannot be read."""
    try:
        return str(json.loads((directory / "config.json").read_text()).get("model_type", "?"))
    except (OSError, ValueError, AttributeError):  # AttributeError: valid JSON, not an object
        return "?"
