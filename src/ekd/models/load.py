"""Loading teacher and student: hub id, local directory or architecture preset; vocabulary alignment; saving.

Conventions (DESIGN): teacher and student must share a tokenizer; padded vocabularies (Qwen2.5's
151,936-row heads for a 151,665-token tokenizer) are aligned to the tokenizer length with a log line;
different tokenizers are refused. ``trust_remote_code`` stays off unless configured. Weights are saved
with safetensors.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from ekd.config.paths import absolute, read_as
from ekd.errors import ModelError, first_line
from ekd.hub import hub_kwargs, hub_offline, is_local, model_directory
from ekd.json_words import shown
from ekd.losses.targets import Head
from ekd.models.exact import ieee_fp32
from ekd.models.head_transform import logit_transform, model_type, transform_settings
from ekd.models.presets import architectures, require_preset
from ekd.models.text_config import text_config, token_ids_or_none
from ekd.words import counted

log = logging.getLogger(__name__)

PRESET_PREFIX = "preset:"
T = TypeVar("T")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def is_preset(spec: str) -> bool:
    return spec.startswith(PRESET_PREFIX)


def is_hub_id(spec: str) -> bool:
    """Whether a model spec names a hub model: not ``preset:<name>``, not an existing path (a missing path is a hub
    id to the loaders too) — what ``model.revision`` (and ``model.teacher_revision``) applies to."""
    return not is_preset(spec) and not is_local(spec)


def preset_config(name: str, vocab_size: int | None = None, eos_token_id: int | None = None) -> Any:
    """The transformers config of an architecture preset (``vocab_size`` None: the model type's default).

    Raises:
        ModelError: ``name`` is not a preset.
    """
    require_preset(name)
    values = dict(architectures.get(name))
    model_type = values.pop("model_type")
    if vocab_size is not None:
        values["vocab_size"] = vocab_size
    return AutoConfig.for_model(
        model_type, bos_token_id=eos_token_id, eos_token_id=eos_token_id, pad_token_id=eos_token_id, **values
    )


def build_preset(
    name: str, vocab_size: int, eos_token_id: int | None = None, seed: int = 0, attn_implementation: str = ""
) -> nn.Module:
    """A randomly initialized causal LM from an architecture preset, with ``vocab_size`` rows and the given
    attention implementation (empty: transformers' default)."""
    config = preset_config(name, vocab_size, eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation or None)
    return model


def load_model(
    spec: str,
    *,
    vocab_size: int,
    eos_token_id: int | None = None,
    revision: str = "",
    trust_remote_code: bool = False,
    dtype: torch.dtype | None = None,
    attn_implementation: str = "",
    seed: int = 0,
    role: str = "model",
) -> nn.Module:
    """Load ``spec`` (hub id, local HF directory, or ``preset:<name>``) as a causal LM.

    Raises:
        ModelError: one line for any model that cannot be used: a directory without config.json, an unknown
            preset or ``model_type``, weights that are not valid safetensors or do not match config.json, a
            pickle that ``weights_only`` refuses, remote code with ``trust_remote_code`` off, an unreachable
            hub id, an attention implementation that is not available.
    """
    kwargs: dict = {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if is_preset(spec):
        model = load_or_refuse(
            spec,
            role,
            lambda: build_preset(spec[len(PRESET_PREFIX) :], vocab_size, eos_token_id, seed, **kwargs),
        )
        return model.to(dtype) if dtype is not None else model
    kwargs["trust_remote_code"] = trust_remote_code
    if revision:
        kwargs["revision"] = revision
    if dtype is not None:
        kwargs["dtype"] = dtype
    local = check_model_dir(spec, role, weights=True)
    kwargs.update(hub_kwargs(spec, _key(role), revision=revision))
    source = str(local) if local is not None else spec
    return load_or_refuse(spec, role, lambda: complete_causal_lm(source, spec, role, **kwargs))


def complete_causal_lm(source: str | Path, spec: str, role: str, **kwargs: Any) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained(source, **kwargs)``, refusing a checkpoint that lacks some of the
    model's tensors: transformers initializes those at random and only logs a table (try-out 35: a teacher saved
    as its body alone, ``MistralModel``, taught 3 steps from a random head with exit 0; a BERT encoder loaded as
    ``BertLMHeadModel`` without its prediction head). Tied weights are not missing (transformers ties them).

    Raises:
        ModelError: ``model.<role>: <spec> holds no weights for N of the model's tensors (names): …``.
    """
    model, info = AutoModelForCausalLM.from_pretrained(source, output_loading_info=True, **kwargs)
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        names = ", ".join(missing[:3]) + (", …" if len(missing) > 3 else "")
        raise ModelError(
            f"{_key(role)}: {spec} holds no weights for {len(missing)} of the {type(model).__name__}'s tensors "
            f"({names}), which would start random; save the whole causal LM there (AutoModelForCausalLM … "
            "save_pretrained), not a part of it such as its body without the head"
        )
    check_finite_weights(model, spec, role)
    return model


def check_finite_weights(model: nn.Module, spec: str, role: str, chunk: int = 1 << 24) -> None:
    """Refuse weights holding NaN or inf: every parameter is read once, ``chunk`` elements at a time (a bool mask
    of 16 MB, not one of the embedding's size). The head check's probe of a few tokens misses a bad row of a token
    it does not feed (try-out 38: a NaN in a frequent token's embedding row was 'non-finite loss at step 1 …
    lower train.lr', and an exported student with it was scored ppl null with exit 0).

    Raises:
        ModelError: ``model.<role>: <spec> holds NaN or inf weights (<first tensor>): …``.
    """
    if (name := _first_non_finite(model, chunk)) is not None:
        dtype = model.get_parameter(name).dtype
        raise ModelError(
            f"{_key(role)}: {spec} holds NaN or inf weights ({name}): {_non_finite_cause(dtype, role)}"
        )


def _first_non_finite(model: nn.Module, chunk: int = 1 << 24) -> str | None:
    """The name of the first parameter holding NaN or inf, read ``chunk`` elements at a time; None if none."""
    for name, p in model.named_parameters():
        if p.is_meta:
            continue
        flat = p.detach().reshape(-1)
        if not all(bool(torch.isfinite(part).all()) for part in flat.split(chunk)):
            return name
    return None


def _non_finite_cause(dtype: torch.dtype, role: str, bad_weight: str | None = "") -> str:
    """Why a model's weights or logits are not finite, and the way on. ``bad_weight``: the first non-finite
    parameter's name, None when the logits' check found every weight finite, "" when the weights were not read.
    In float16 the likely cause is its range, which ends at 65,504: a weight cast from a wider checkpoint, or an
    activation, past it is inf (try-out 75, F4: an intact teacher was called 'a corrupt or diverged checkpoint'
    under model.teacher_dtype=float16)."""
    if dtype == torch.float16:
        key = "model.teacher_dtype=bfloat16 or float32" if role == "teacher" else "bfloat16 or float32"
        how = (
            "an activation"
            if bad_weight is None
            else "a weight cast from a wider checkpoint, or an activation,"
        )
        cause = f"in float16, whose range ends at 65,504, {how} past it overflows to inf; load it in {key} (the same range as float32)"
    elif bad_weight is None:
        return (
            "its weights are finite, so its forward overflows (a diverged checkpoint); use another checkpoint"
        )
    else:
        cause = "a corrupt or diverged checkpoint; use another checkpoint"
    if bad_weight is None:
        return f"its weights are finite: {cause}"
    return f"its weights hold NaN or inf ({bad_weight}): {cause}" if bad_weight else cause


def empty_model(
    spec: str,
    *,
    vocab_size: int,
    eos_token_id: int | None = None,
    revision: str = "",
    trust_remote_code: bool = False,
    dtype: torch.dtype | None = None,
    attn_implementation: str = "",
    role: str = "model",
) -> nn.Module:
    """The model :func:`load_model` returns, built on the ``meta`` device: the same modules, parameter names,
    shapes, dtypes and ties, no weight read or allocated (a preset's architecture, or the config.json of a
    directory or hub id). For ranks that receive their shards from rank 0 (``ekd.train.rank0_load``).

    Raises:
        ModelError: as :func:`load_model`, for the config.
    """
    if is_preset(spec):
        with torch.device("meta"):
            return load_model(
                spec,
                vocab_size=vocab_size,
                eos_token_id=eos_token_id,
                dtype=dtype,
                attn_implementation=attn_implementation,
                role=role,
            )
    config = model_config(spec, revision, trust_remote_code, role)
    build: dict = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        build["dtype"] = dtype
    if attn_implementation:
        build["attn_implementation"] = attn_implementation
    with torch.device("meta"):
        return load_or_refuse(spec, role, lambda: AutoModelForCausalLM.from_config(config, **build))


def architecture_config(spec: str, revision: str = "", trust_remote_code: bool = False, role: str = "model"):
    """:func:`model_config`, or for ``preset:<name>`` the preset's (with the model type's default vocabulary:
    for what does not depend on it, such as the maximum sequence length)."""
    if is_preset(spec):
        return preset_config(spec[len(PRESET_PREFIX) :])
    return model_config(spec, revision, trust_remote_code, role)


def model_config(spec: str, revision: str = "", trust_remote_code: bool = False, role: str = "model"):
    """The ``AutoConfig`` of a hub id or local directory (config.json only, no weights); errors as
    :func:`load_or_refuse`."""
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    local = check_model_dir(spec, role)
    kwargs.update(hub_kwargs(spec, _key(role), "config.json", revision))
    source = str(local) if local is not None else spec
    return load_or_refuse(spec, role, lambda: AutoConfig.from_pretrained(source, **kwargs), "a model config")


def declared_dtype(
    spec: str, revision: str = "", trust_remote_code: bool = False, role: str = "model"
) -> torch.dtype | None:
    """The dtype a saved model's config.json declares (``dtype``, or the older ``torch_dtype``), if it is
    float32, bfloat16 or float16; None for a preset, no declaration or another dtype."""
    if is_preset(spec):
        return None
    declared = getattr(model_config(spec, revision, trust_remote_code, role), "dtype", None)
    if isinstance(declared, str):
        return DTYPES.get(declared)
    return declared if declared in DTYPES.values() else None


def has_tokenizer_files(spec: str) -> bool:
    """Whether ``spec`` names a tokenizer: a hub id (checked when it is loaded), or a local directory holding one
    tokenizer file (transformers 5 builds an empty one-token tokenizer from a directory with none)."""
    path = Path(spec).expanduser()
    if not path.is_dir():
        return True
    # tokenizer.json / _config.json / .model, vocab.json / .txt, any SentencePiece (.model) or tiktoken file
    return any(
        f.is_file() and (f.name.startswith(("tokenizer", "vocab.")) or f.suffix in (".model", ".tiktoken"))
        for f in path.iterdir()
    )


def load_tokenizer(
    spec: str, revision: str = "", trust_remote_code: bool = False, role: str = "tokenizer"
) -> PreTrainedTokenizerBase:
    """AutoTokenizer from a hub id or local directory; errors as :func:`load_or_refuse`; a local directory
    without tokenizer files is one ModelError line (try-out 21: it loaded as a one-token tokenizer)."""
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    local = check_model_dir(spec, role, tokenizer_only=True)
    if local is not None and not has_tokenizer_files(spec):
        raise ModelError(
            f"{_key(role)}: {spec} holds no tokenizer files (tokenizer.json, tokenizer_config.json, ...); save the "
            "tokenizer into it (tokenizer.save_pretrained) or name another with model.tokenizer"
        )
    kwargs.update(hub_kwargs(spec, _key(role), "tokenizer_config.json", revision))
    source = str(local) if local is not None else spec
    # offline, a hub id's cached snapshot is read as the directory it is: transformers 5 asks a hub id for its
    # config.json first, which a tokenizer-only repository has not got (try-out 152, F5: refused as not cached)
    offline = local is None and (kwargs.get("local_files_only") or hub_offline())
    if offline and (snapshot := model_directory(spec, revision, "tokenizer_config.json")) is not None:
        source = str(snapshot)
        kwargs = {k: v for k, v in kwargs.items() if k not in ("revision", "local_files_only")}
    tok = load_or_refuse(
        spec,
        role,
        lambda: AutoTokenizer.from_pretrained(source, **kwargs),
        "a tokenizer",
        drop=CONFIG_LOGGERS,  # the model's load says what matters about its config.json
    )
    if local is None and revision:
        _HUB_REVISION[tok] = revision  # its files alone are read at the same revision (file_tokenizer)
    return tok


# tokenizer → the hub revision load_tokenizer read it at: transformers keeps no record of it, and file_tokenizer
# must read the same snapshot (review 106, item 14: the default branch's files could differ)
_HUB_REVISION: weakref.WeakKeyDictionary[PreTrainedTokenizerBase, str] = weakref.WeakKeyDictionary()


CONFIG_LOGGERS = ("transformers.configuration_utils", "transformers.models.auto.configuration_auto")


def _key(role: str) -> str:
    """What a message names: the config key of ``role`` (``model.teacher``), or ``role`` itself when it is a key
    (``data.source``) or a command's argument (``student init: teacher``)."""
    return role if "." in role or ":" in role else f"model.{role}"


# what model.tokenizer takes (a preset is no tokenizer)
TOKENIZER_FIX = (
    "pass a hub id, a directory holding tokenizer files (tokenizer.json, tokenizer_config.json), or teacher, "
    "student or train_bpe"
)
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.index.json", "*.pt", "*.pth")  # what from_pretrained can read


def check_model_dir(
    spec: str, role: str, tokenizer_only: bool = False, weights: bool = False, presets: bool = True
) -> Path | None:
    """The local directory ``spec`` names (None for a hub id), after checking that it holds a model.

    A directory needs config.json (a tokenizer directory may instead hold tokenizer.json or
    tokenizer_config.json), and with ``weights`` a weights file (try-out 29: a directory without one was
    refused only once the model loaded, after the tokenizer checks' warnings, with advice about the network);
    weights only as pickles (``*.bin``) need a torch whose ``weights_only`` load is safe (≥ 2.6) — ekd never
    unpickles otherwise. ``presets``: whether the fix may name ``preset:<name>`` (not where a model must be real,
    as ``ekd student init``'s teacher).
    """
    fix = (
        "pass a hub id, a saved model directory or preset:<name>"
        if presets
        else "pass a hub id or a saved model directory"
    )
    # try-out 51, F6: not a model's words (config.json, preset:)
    named_tokenizer = _key(role) == "model.tokenizer"
    if named_tokenizer:
        fix = TOKENIZER_FIX
    if not spec.strip():  # Path("") would be the current directory
        raise ModelError(f"{_key(role)} is empty; {fix}")
    path = Path(spec).expanduser()
    if not (spec.startswith((".", "/", "~")) or path.exists()):
        return None
    tokenizer_files = ("tokenizer.json", "tokenizer_config.json")
    if not path.exists():
        raise ModelError(f"{_key(role)}: {spec} does not exist{read_as(spec)}; {fix}")
    if not path.is_dir():
        raise ModelError(f"{_key(role)}: {spec} is not a directory; {fix}")
    if not (path / "config.json").is_file() and not (
        tokenizer_only and any((path / f).is_file() for f in tokenizer_files)
    ):
        what = "empty" if not any(path.iterdir()) else "not a Hugging Face model directory"
        if named_tokenizer:
            what = "empty" if what == "empty" else "no tokenizer directory"
        missing = "no tokenizer.json or tokenizer_config.json" if named_tokenizer else "no config.json"
        if (path / "student" / "config.json").is_file():  # an ekd run: its export (try-out 57, F5)
            fix = f"did you mean {Path(spec) / 'student'}, the run's exported student? else {fix}"
        raise ModelError(f"{_key(role)}: {spec} is {what} ({missing}); {fix}")
    if weights and not any(next(path.glob(pattern), None) for pattern in WEIGHT_FILES):
        raise ModelError(
            f"{_key(role)}: {spec} holds a config.json but no weights (model.safetensors, pytorch_model.bin or a "
            "sharded index); save the model into it (model.save_pretrained) or name the directory that holds them"
        )
    pickles = list(path.glob("*.bin"))
    safe_torch = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 6)
    if pickles and not list(path.glob("*.safetensors")) and not tokenizer_only and not safe_torch:
        raise ModelError(
            f"{_key(role)}: {spec} holds only pickled weights ({pickles[0].name}) and torch {torch.__version__} "
            "cannot load them safely (weights_only needs torch ≥ 2.6); convert them to safetensors"
        )
    return path


def load_or_refuse(
    spec: str, role: str, load: Callable[[], T], what: str = "a model", drop: tuple[str, ...] = ()
) -> T:
    """Run ``load`` (a transformers/safetensors loader) and turn any failure into one ModelError line.

    Loading a model the user named can fail in many libraries' ways (SafetensorError, UnpicklingError,
    ValueError for an unknown model_type or remote code, RuntimeError for shapes, OSError for files and the
    network, ImportError for a missing attention backend): each is a problem with the input, reported as
    ``model.<role>: cannot load <what> from '<spec>' (<first line>)<hint>``. The cause stays chained for
    ``ekd --debug``. What transformers logs meanwhile (its load report, a table; warnings about the config) is
    held back and only replayed when the load succeeds, so a refusal is one line (try-out 35: a config of an
    unknown ``model_type`` printed transformers' warning before it); a failure's message names the first
    mismatched tensor instead of the report. Records of the loggers in ``drop`` are not replayed.
    """
    library = logging.getLogger("transformers")  # every transformers logger propagates to it
    handlers, propagate = library.handlers[:], library.propagate
    held = _HoldRecords()
    library.handlers, library.propagate = [held], False  # its own handlers and the root's alike (review 99)
    try:
        result = load()
        if broken := generation_config_problem(spec):  # loaded as if it were absent: refused alike
            raise ModelError(
                f"{_key(role)}: '{spec}': {broken}; replace that file (save_pretrained writes it again), delete it "
                "to use config.json's end-of-sequence id, or name another directory"
            )
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 — every loader failure is an input problem; see the docstring
        # try-out 52, F6: the parser's words named neither file nor fix; try-out 127, F8: a generation config of
        # another shape fails inside transformers
        if broken := broken_json(spec) or generation_config_problem(spec):
            raise ModelError(
                f"{_key(role)}: cannot load {what} from '{spec}': {broken}; replace that file (save_pretrained "
                "writes it again) or name another directory"
            ) from e
        said = _first_line(e, held)
        if isinstance(e, OSError) and not (is_preset(spec) or Path(spec).expanduser().exists()):
            # files not found for a name read as a hub id (offline): it may be a mistyped relative path
            said = f"{said.rstrip('.')}; nor is it a local path: no {absolute(spec)}"
        raise ModelError(
            f"{_key(role)}: cannot load {what} from '{spec}' ({said}){loader_hint(e, role)}"
        ) from e
    finally:
        library.handlers, library.propagate = handlers, propagate
    for record in held.records:
        if record.name not in drop and not any(text in record.getMessage() for text in MISLEADING):
            logging.getLogger(record.name).handle(record)
    return result


SKIPPED_WHEN_BROKEN = "generation_config.json"
"""The file of a model directory that transformers passes over when it does not parse — ``from_pretrained`` loads
the model with a default generation config, ``GenerationConfig.from_pretrained`` says ``OSError`` as for a
missing file —, so that another end-of-sequence id would be taken from ``config.json`` without a word (review
126, R5: ``data.separator=auto`` ended every document with id 2 instead of 5). Checked before it is read."""


def generation_config_problem(spec: str) -> str:
    """What is wrong with the local directory ``spec``'s :data:`SKIPPED_WHEN_BROKEN`, in words — it does not parse,
    is not a JSON object (try-out 127, F8: ``[1]`` was a TypeError traceback inside transformers), or its
    ``eos_token_id`` is not a token id, a list of them or null (``"x"`` was a ValueError in the boundary) —; ""
    when it is fine or absent (a hub id: transformers reads it)."""
    path = Path(spec).expanduser() / SKIPPED_WHEN_BROKEN
    if not path.is_file():
        return ""
    try:  # parsed once: broken_json's words for a file that does not
        saved = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        return f"{SKIPPED_WHEN_BROKEN} is not valid JSON ({first_line(e)})"
    if not isinstance(saved, dict):
        return f"{SKIPPED_WHEN_BROKEN} is not a JSON object"
    eos = saved.get("eos_token_id")
    if not token_ids_or_none(eos):
        return f"{SKIPPED_WHEN_BROKEN}'s eos_token_id is {shown(eos)}, not a token id or a list of them"
    return ""


def broken_json(spec: str) -> str:
    """``"<name> is not valid JSON (<error>)"`` for the first ``*.json`` of the local directory ``spec`` that does
    not parse (a truncated download, a hand edit), else ``""``: a loader's own message says "Expecting value:
    line 1 column 1" without the file (the tokenizers library), or blames the network (transformers)."""
    path = Path(spec).expanduser()
    if not path.is_dir():
        return ""
    for file in sorted(path.glob("*.json")):
        try:
            json.loads(file.read_bytes())
        except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            return f"{file.name} is not valid JSON ({first_line(e)})"
    return ""


MISLEADING = ("as a standalone, add `is_decoder=True",)
"""transformers' advice, logged at load, that ekd's own line replaces: BERT-like encoders loaded by
``AutoModelForCausalLM`` without ``is_decoder`` attend both ways, and :func:`check_output_head` refuses them as no
causal LM (try-out 42: the advice came first, and following it ended in another refusal, their LM head's transform)."""


class _HoldRecords(logging.Handler):
    """Keeps the records that reach it instead of emitting them."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _first_line(e: BaseException, held: _HoldRecords) -> str:
    first = first_line(e)
    if "ignore_mismatched_sizes" in first:  # the details are in the held load report
        lines = [
            ln for r in held.records for ln in r.getMessage().splitlines() if "MISMATCH" in ln and "|" in ln
        ]
        detail = " ".join(lines[0].split()) if lines else ""
        first = (
            f"weights do not match config.json: {detail}" if detail else "weights do not match config.json"
        )
    elif type(e).__name__ == "SafetensorError":
        first = f"not a valid safetensors file: {first}"
    elif type(e).__name__ == "UnpicklingError":
        first = "pickled weights refused by torch.load(weights_only=True): they may contain code"
    return first if len(first) <= 300 else first[:297] + "..."


def loader_hint(e: BaseException, role: str = "") -> str:
    """'; <fix>' for a transformers loader's failure whose cause is known (remote code, an architecture this
    transformers does not know, files or network), '' otherwise. ``role``: who loads it — ``ekd student init``'s
    own flag is named for its teacher (try-out 152, F10: it was told to set a config key it does not read)."""
    text = str(e)
    if "custom code" in text or "trust_remote_code" in text:
        if role.startswith("student init"):
            return "; pass --trust-remote-code only if you trust that code"
        return "; set model.trust_remote_code=true only if you trust that code"
    if "does not recognize this architecture" in text or "model type" in text:
        return "; upgrade transformers or use a supported architecture (ekd list architectures)"
    if isinstance(e, OSError) and type(e).__name__ != "SafetensorError":
        return "; check the id/path, network access or HF_HOME cache"
    return ""


ENCODING_PROBE = (
    "Hello WORLD, it's 2026-12-01: 57 + 12 = 69; 3.14159 × 1,000,000 and 0x1F.",
    "  two  spaces,\ttabs\t\tand\n\n\nnew lines\r\n    indented",
    "café cafe\u0301 naïve Ångström ﬁne ＡＢＣ 中文字符 日本語 한국어 😀👍🏽",
    "def f(x):\n    return x ** 2  # don't, I'll, WE'RE <b>tag</b> https://example.com/a?b=c&d=1",
)
"""Texts two tokenizers with the same vocabulary must encode to the same ids: digits, whitespace runs,
composed and decomposed accents, compatibility forms, CJK, emoji, code — what normalizers and pre-tokenizers
treat differently (Qwen2's splits digits one by one and NFC-normalizes; a plain byte-level one does neither)."""


def check_same_tokenizer(
    a: PreTrainedTokenizerBase,
    b: PreTrainedTokenizerBase,
    names: tuple[str, str] = ("teacher", "student"),
    fix: str = "",
    learns_encoding: bool = False,
) -> None:
    """Refuse different tokenizers: same length, the same id for every token, and the same ids for each text of
    :data:`ENCODING_PROBE` (special tokens left out: each model frames documents its own way, ``data.separator``).
    ``learns_encoding``: ``b`` is the student, which is trained on (and exported with) ``a``'s encodings, so a
    different encoding of the same vocabulary is one warning line, not a refusal (a teacher cannot adapt: every
    KD target would come from text cut as it never saw).

    The error names the ids that differ (counted over both vocabularies, so the count does not depend on
    which is ``a``), the first of them with its token on each side, and both tokenizer classes: the same
    tokenizer.json loads as another class next to another ``model_type`` (Qwen2's adds ``<|endoftext|>``, and
    its normalizer and pre-tokenizer replace the file's: the same vocabulary then encodes "57" as two ids, not
    one) — for an encoding, the first probe text that differs and both encodings of it.
    ``fix``: what to change, where the default for ``names`` (:func:`_tokenizer_fix`) is not it.
    """
    if len(a) != len(b) or a.get_vocab() != b.get_vocab():
        ta, tb = ({i: t for t, i in tok.get_vocab().items()} for tok in (a, b))  # id → token
        differing = sorted(i for i in ta.keys() | tb.keys() if ta.get(i) != tb.get(i))
        first = differing[0] if differing else None

        def side(tokens: dict[int, str], name: str) -> str:
            return f"{tokens[first]!r} in the {name}" if first in tokens else f"none in the {name}"

        where = f"; first id {first}: {side(ta, names[0])}, {side(tb, names[1])}" if differing else ""
        student, teacher = (tb, ta) if names == ("teacher", "student") else (ta, tb)
        extends = len(student) > len(teacher) and all(i in student and i not in teacher for i in differing)
        if not fix and set(names) == {"teacher", "student"} and extends:  # the teacher's plus added tokens
            pair = (a, b) if names == ("teacher", "student") else (b, a)
            fix = _added_tokens_fix(*pair, [student[i] for i in differing])
        raise ModelError(
            f"{names[0]} and {names[1]} tokenizers differ ({len(a)} vs {counted(len(b), 'token')}, "
            f"{counted(len(differing), 'id')} {'differs' if len(differing) == 1 else 'differ'}{where}; "
            f"{type(a).__name__} vs {type(b).__name__}): token-level KD needs a shared "
            f"tokenizer; {fix or _tokenizer_fix(names)}"
        )
    for text in ENCODING_PROBE:
        ids_a, ids_b = (tok.encode(text, add_special_tokens=False) for tok in (a, b))
        if ids_a != ids_b:
            at = next(
                (i for i, (x, y) in enumerate(zip(ids_a, ids_b)) if x != y), min(len(ids_a), len(ids_b))
            )
            difference = (
                f"{names[0]} and {names[1]} tokenizers have the same {counted(len(a), 'token')} but encode text "
                f"differently ({_word_at(a, text, at)!r}: {_ids(ids_a[at:])} vs {_ids(ids_b[at:])}; "
                f"{type(a).__name__} vs {type(b).__name__}: another normalizer or pre-tokenizer)"
            )
            if learns_encoding:
                log.warning(
                    "%s: the %s is trained on, and exported with, the %s tokenizer's encodings (a %s pre-trained "
                    "on %s's would start on text cut otherwise; the export records the class to load it with)",
                    difference,
                    names[1],
                    names[0],
                    names[1],
                    type(b).__name__,
                )
                return
            raise ModelError(
                f"{difference}: token-level KD needs a shared tokenizer; {fix or _tokenizer_fix(names, True)}"
            )


def _added_tokens_fix(
    teacher: PreTrainedTokenizerBase, student: PreTrainedTokenizerBase, added: list[str]
) -> str:
    """What to do about a student tokenizer that is the teacher's plus the ``added`` tokens: where they come
    from (the student's class, which transformers picks by the model_type next to the files, when the classes
    differ and the student's files lack them: try-outs 35, 42; else its files: try-out 44, F5) and the way on."""
    shown = ", ".join(map(repr, added[:4])) + (", …" if len(added) > 4 else "")
    plus = f"the student's is the teacher's plus {counted(len(added), 'added token')} ({shown})"
    if type(student) is type(teacher):
        return f"{plus}: save the teacher's tokenizer files into the student's directory if it does not need them"
    if set(added) <= set(class_added_tokens(student, file_tokenizer(student)).values()):
        return (
            f"{plus}, which its class {type(student).__name__} adds (transformers picks the class by the "
            "model_type next to the files): remove the tokenizer files from the student's directory, so that the "
            "run's tokenizer is the only one"
        )
    return (
        f"{plus}, which its tokenizer files hold: if the student does not need {'it' if len(added) == 1 else 'them'}"
        ", remove the tokenizer files from the student's directory (it then reads the run's tokenizer) or save "
        "the teacher's there"
    )


def _word_at(tok: PreTrainedTokenizerBase, text: str, index: int) -> str:
    """The whitespace-delimited word of ``text`` where token ``index`` of ``tok``'s encoding starts (its
    decoded tokens from there, where the tokenizer gives no character offsets)."""
    try:
        offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        start = offsets[min(index, len(offsets) - 1)][0]
    except (NotImplementedError, ValueError, KeyError, IndexError, TypeError):
        return tok.decode(tok.encode(text, add_special_tokens=False)[index : index + 4])
    while start < len(text) - 1 and text[start].isspace():  # a byte-level token's leading space
        start += 1
    begin = start
    while begin > 0 and not text[begin - 1].isspace():
        begin -= 1
    end = start
    while end < len(text) and not text[end].isspace():
        end += 1
    return text[begin:end] or text[start : start + 8]


def _ids(ids: list[int], most: int = 6) -> str:
    """'[21, 23, 341, ...]': the first ``most`` ids of an encoding."""
    return "[" + ", ".join(map(str, ids[:most])) + (", ...]" if len(ids) > most else "]")


def _tokenizer_fix(names: tuple[str, str], encoding: bool = False) -> str:
    """What to change when the tokenizers of ``names`` (the named one, the model's) differ: a student that does
    not match is the student's problem; a ``model.tokenizer`` the teacher does not match is the setting's. Where
    only the ``encoding`` differs and the teacher is the odd one out, the student can learn the teacher's."""
    if encoding and names[1] == "teacher":
        return "name the teacher's tokenizer (model.tokenizer=teacher): the student then learns its encodings"
    if "student" in names:
        return "pick a student from the teacher's family"
    return "point model.tokenizer at the teacher's tokenizer (model.tokenizer=teacher)"


def check_head_covers(
    role: str, rows: int, tokenizer_length: int, tokenizer: PreTrainedTokenizerBase | None = None
) -> None:
    """Refuse a head of ``rows`` rows shorter than the tokenizer: some token would have no logit.

    ``tokenizer`` (of ``tokenizer_length`` tokens): when the tokens past the head are none of its files' but
    its class's (:func:`class_added_tokens`), the refusal says so and how to name the files alone (try-out 44,
    F6: 'check model.tokenizer' led to a second refusal that pointed back at the first).

    Raises:
        ModelError: ``rows < tokenizer_length``, in one line naming the role and both sizes.
    """
    if rows >= tokenizer_length:
        return
    alone = file_tokenizer(tokenizer) if tokenizer is not None else None
    past = {i: t for i, t in class_added_tokens(tokenizer, alone).items() if i >= rows}
    if past and alone is not None and len(alone) <= rows:
        ids = sorted(past)
        tokens = ", ".join(f"{i} {past[i]!r}" for i in ids[:4]) + (", …" if len(ids) > 4 else "")
        source = tokenizer.name_or_path
        raise ModelError(
            f"{role} head has {rows} rows but the tokenizer has {tokenizer_length} tokens: {tokens} "
            f"{'is' if len(ids) == 1 else 'are'} in none of its files ({source}) but added by its class "
            f"{type(tokenizer).__name__}, which transformers picks by the model_type next to the files; name the "
            f"files alone: PreTrainedTokenizerFast.from_pretrained('{source}').save_pretrained(DIR), then "
            "model.tokenizer=DIR"
        )
    raise ModelError(  # ekd eval reads the run's tokenizer: the model is the one to change there (try-out 51, F5)
        f"{role} head has {rows} rows but the tokenizer has {tokenizer_length} tokens: the model does not cover "
        f"the tokenizer; name a {role} of that vocabulary (model.{role}), or (ekd distill) another model.tokenizer"
    )


def file_tokenizer(tok: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase | None:
    """``tok``'s files (tokenizer.json, tokenizer_config.json) loaded alone, by transformers' generic fast class
    (``PreTrainedTokenizerFast``), not the class ``AutoTokenizer`` picks by the ``model_type`` next to them:
    what a directory holding only those files gives. None where they cannot be read so (no tokenizer.json, a
    hub id not in the local cache). A hub id's files are read at the revision :func:`load_tokenizer` read it at."""
    from transformers import PreTrainedTokenizerFast

    source = getattr(tok, "name_or_path", "")
    if not source:
        return None
    library = logging.getLogger("transformers")
    level = library.level
    library.setLevel(logging.ERROR)  # a second load of files already loaded: nothing to say twice
    try:
        revision = {"revision": _HUB_REVISION[tok]} if tok in _HUB_REVISION else {}
        return PreTrainedTokenizerFast.from_pretrained(source, local_files_only=True, **revision)
    except Exception:  # noqa: BLE001 — the files cannot be read alone: nothing is said of them
        return None
    finally:
        library.setLevel(level)


def class_added_tokens(tok: PreTrainedTokenizerBase, alone: PreTrainedTokenizerBase | None) -> dict[int, str]:
    """id → token of the tokens ``tok`` holds that its files do not: added by its class (transformers 5's
    ``Qwen2Tokenizer`` adds ``<|endoftext|>`` as its unk and pad token to files without it). ``alone``: its files
    loaded alone (:func:`file_tokenizer`, loaded once by the caller, which uses it too); empty when None."""
    if alone is None:
        return {}
    held = alone.get_vocab()
    return {i: t for t, i in tok.get_vocab().items() if t not in held}


def own_tokenizer(tok: PreTrainedTokenizerBase, rows: int | None, role: str) -> PreTrainedTokenizerBase:
    """The tokenizer a model of ``rows`` head rows was trained with, from its directory's ``tok``: ``tok`` itself,
    or its files alone (:func:`file_tokenizer`) where ``tok`` is longer than the head by
    tokens that its class adds and its files lack — no row of the head could have been trained on them (try-out
    44, F6: a tokenizer without ``<|endoftext|>`` beside a Qwen2 config loads as Qwen2Tokenizer, 513 tokens for a
    512-row head; the run's tokenizer named as those files alone was then refused as another tokenizer)."""
    if rows is None or len(tok) <= rows:
        return tok
    alone = file_tokenizer(tok)  # loaded once: what it adds and what is taken
    added = class_added_tokens(tok, alone)
    if not added or alone is None or len(alone) > rows:
        return tok
    log.info(
        "model.%s: its tokenizer loads as %s, which adds %s its %d-row head has no row for; its files alone "
        "(%s, %d tokens) are taken as its tokenizer",
        role,
        type(tok).__name__,
        ", ".join(repr(t) for _, t in sorted(added.items())),
        rows,
        type(alone).__name__,
        len(alone),
    )
    return alone


def declared_head_rows(spec: str, revision: str, trust_remote_code: bool, role: str) -> int | None:
    """The output-head rows a model's config.json declares (``vocab_size`` of its text config), read without
    weights; None when it cannot be read here (loading the model reports why) or the architecture is custom
    code (``auto_map``: its head need not follow ``vocab_size``)."""
    try:
        config = model_config(spec, revision, trust_remote_code, role)
    except Exception:  # noqa: BLE001 — any failure is reported, with its reason, when the model loads
        return None
    if getattr(config, "auto_map", None):
        return None
    text = text_config(config)
    rows = getattr(text, "vocab_size", None)
    return rows if isinstance(rows, int) and rows > 0 else None


def model_tokenizer(
    spec: str, revision: str, trust_remote_code: bool, role: str, key: str = ""
) -> PreTrainedTokenizerBase:
    """The tokenizer a model directory (or hub id) was trained with: :func:`load_tokenizer`'s, or its files alone
    where its class adds tokens its head has no row for (:func:`own_tokenizer`); a directory of tokenizer files
    alone (no config.json) gives :func:`load_tokenizer`'s. ``role``: how the log names it (``teacher``,
    ``student``, ``tokenizer``); ``key``: how load errors name it (default ``model.<role>``)."""
    tok = load_tokenizer(spec, revision, trust_remote_code, key or f"model.{role}")
    return own_tokenizer(tok, declared_head_rows(spec, revision, trust_remote_code, role), role)


def shared_vocab_size(tokenizer_length: int, *models: tuple[str, nn.Module]) -> int:
    """The vocabulary V every head is sliced to: the tokenizer length. Logs padded heads; refuses short ones."""
    for role, model in models:
        rows = model.get_output_embeddings().weight.shape[0]
        check_head_covers(role, rows, tokenizer_length)
        if rows > tokenizer_length:
            log.info(
                "%s head has %d rows (padded), tokenizer %d tokens: aligned to %d",
                role,
                rows,
                tokenizer_length,
                tokenizer_length,
            )
    return tokenizer_length


def output_head(model: nn.Module, vocab_size: int | None = None) -> Head:
    """The model's output head sliced to the shared vocabulary (None: every row): weight (V, D), bias (V,) or
    None."""
    linear = model.get_output_embeddings()
    if linear is None or not hasattr(linear, "weight"):
        raise ModelError(f"{type(model).__name__} has no output embeddings (get_output_embeddings() is None)")
    rows = linear.weight.shape[0]
    vocab_size = rows if vocab_size is None else vocab_size
    if rows < vocab_size:
        raise ModelError(f"vocab_size={vocab_size} is larger than the model's output head ({rows} rows)")
    return _head_rows(model, linear, slice(0, vocab_size))  # (V, D), (V,)


def _head_rows(model: nn.Module, linear: nn.Module, rows: slice) -> Head:
    """Rows ``rows`` of the output linear ``linear`` (weight, bias or None) with the model's logit transform."""
    bias = getattr(linear, "bias", None)
    return Head(linear.weight[rows], None if bias is None else bias[rows], logit_transform(model))


def padded_head(model: nn.Module, vocab_size: int) -> Head | None:
    """The model's output head rows beyond the shared vocabulary, ``[vocab_size, rows)``: weight (R−V, D),
    bias (R−V,) or None, the same logit transform; None when the head has exactly ``vocab_size`` rows. ekd
    never trains or scores them; evaluation reports the probability a full-head softmax gives them."""
    linear = model.get_output_embeddings()
    if linear is None or linear.weight.shape[0] <= vocab_size:
        return None
    return _head_rows(model, linear, slice(vocab_size, None))  # (R−V, D), (R−V,)


def check_output_head(
    model: nn.Module, vocab_size: int | None = None, role: str = "model", tokens: int = 8
) -> None:
    """Refuse a model that is not a causal LM or whose logits ekd's head does not reproduce.

    One forward of two rows of ``tokens`` token ids that differ in their last id only: the logits of the other
    positions must not change (a causal LM's position t sees tokens ≤ t; try-out 38: a BERT encoder, loaded by
    ``AutoModelForCausalLM`` as ``BertLMHeadModel`` without ``is_decoder``, attends both ways), and the first
    row's ``forward(...).logits`` must equal ``output_head`` applied to the body's last hidden states, first
    ``vocab_size`` columns. Where those logits are under :data:`PROBE_LOGIT` (a freshly initialised model's stay
    under 1, where a soft-cap of 30 moves them by < 1e-4: try-out 78, F2; a trained model's under ~50, where a
    clamp at ±100 does nothing: try-out 81, F5), the first row is probed again with the output head's weights
    scaled by the power of two that brings the largest logit nearest :data:`PROBE_LOGIT` — ``forward`` and
    ekd's head read the same weights, which are restored bit for bit after. The tolerance is relative to the
    largest logit: 1e-4, or 4 ulps of a 16-bit model dtype, whose least-squares factor between the two must also
    be 1 within half an ulp (try-out 81, F3: a hidden ×1.02 is within 4 ulps). The probes run in IEEE fp32 without
    autocast (:func:`ekd.models.exact.ieee_fp32`), also in a GPU run that turned TF32 on. This catches any
    post-head transform ``ekd.models.head_transform`` does not know (a scale, a cap, a bias, a custom forward),
    and a config setting ekd applies that the forward does not. ``vocab_size`` None: the head's every row.

    Raises:
        ModelError: one line naming the model type and the problem: logits that are not finite (NaN or +inf:
            weights that hold them), that depend on later tokens, or that the head does not reproduce (with the
            config settings ekd applied, if any).
    """
    head = output_head(model, vocab_size)
    vocab_size = head.weight.shape[0]  # (V, D)
    ids = torch.linspace(0, vocab_size - 1, tokens).long().to(head.weight.device)  # (n,)
    changed = ids.clone()
    changed[-1] = ids[0] if ids[-1] != ids[0] else (ids[0] + 1) % vocab_size  # another last token
    rows = torch.stack([ids, changed])  # (2, n): the same first n−1 tokens
    logits, got = _head_probe(model, head, rows, vocab_size)  # (2, n, V), (n, V)
    expected = logits[0]  # (n, V)
    if logits.isnan().any() or (logits == float("inf")).any() or not torch.isfinite(expected).any():
        raise ModelError(  # try-out 35: a NaN weight ended in a traceback (a max over no finite logit)
            f"{_key(role)}: its logits on {tokens} probe tokens are not finite (NaN or +inf): "
            + _non_finite_cause(head.weight.dtype, role, bad_weight=_first_non_finite(model))
        )
    scale = _logit_scale(expected)
    low = head.weight.dtype in (torch.bfloat16, torch.float16)
    tolerance = 4 * torch.finfo(head.weight.dtype).eps if low else 1e-4
    _refuse_non_causal(logits, scale, tolerance, model, role)
    error = _head_error(got, expected, scale)
    if error <= tolerance and scale < PROBE_LOGIT:  # small logits: probe again where a cap or scale shows
        with _scaled_head(model, PROBE_LOGIT / _logit_scale(expected, floor=1e-30)):  # not floored at 1
            logits, got = _head_probe(model, head, rows[:1], vocab_size)  # (1, n, V), (n, V)
        expected = logits[0]
        if torch.isfinite(expected).any():
            error = _head_error(got, expected, _logit_scale(expected))
    what = f"by {error:.3g} of their scale"
    # a 16-bit model's tolerance (4 ulps of the largest logit) lets a scale of up to ~3% through (try-out 81, F3);
    # rounding leaves the least-squares factor between the two within a few % of an ulp of 1
    if error <= tolerance and low:
        slope, rounding = _slope(got, expected), torch.finfo(head.weight.dtype).eps / 2
        if not abs(slope - 1) <= rounding:
            error = math.inf
            what = f"by a factor of {slope:.4g} (rounding alone leaves it within {rounding:.2g} of 1)"
    if not error <= tolerance:
        raise _not_reproduced(model, role, what)


def _not_reproduced(model: nn.Module, role: str, what: str) -> ModelError:
    """The refusal of a model whose logits ekd's head does not reproduce (``what``: by how much), naming the
    config settings ekd applied (:func:`~ekd.models.head_transform.transform_settings`), if any."""
    applied = ", ".join(f"{attribute}={value:g}" for _, attribute, value in transform_settings(model))
    cause = "a post-head transform ekd does not know"
    if applied:
        cause = (
            f"ekd applies {applied} from its config, as the model types that read it do: a key this model's "
            f"forward does not read — then remove it from config.json — or {cause}"
        )
    return ModelError(
        f"{_key(role)}: ekd cannot reproduce the logits of model type '{model_type(model)}' "
        f"({type(model).__name__}): forward(...).logits differ from its output head applied to the body's hidden "
        f"states {what} ({cause}); use another model"
    )


def _slope(got: torch.Tensor, expected: torch.Tensor) -> float:
    """The least-squares factor s of expected ≈ s·got over the finite logits (1.0 where there are none): a
    scale the model applies and ekd does not, told from rounding, which does not shift it."""
    finite = torch.isfinite(expected) & torch.isfinite(got)
    g, e = got[finite], expected[finite]
    norm = float((g * g).sum())
    return float((g * e).sum()) / norm if norm > 0 else 1.0


# the largest logit of the head probe's second pass (the power of two nearest it: 724–1,448): past the soft-caps in
# use (30, 50) and a custom clamp of trained-model size (try-out 81, F5: at 64 the logits reached 45–90 and a clamp
# at ±100 passed); far inside fp16's range
PROBE_LOGIT = 1024.0


def _head_probe(
    model: nn.Module, head: Head, rows: torch.Tensor, vocab_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``forward(rows).logits`` (b, n, V) and ekd's ``head`` on the first row's last hidden states (n, V), float64."""
    mask = torch.ones_like(rows)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), ieee_fp32(head.weight.device.type):  # not TF32: the model's own arithmetic
            logits = model(input_ids=rows, attention_mask=mask, use_cache=False).logits[:, :, :vocab_size]
            hidden = model_body(model)(input_ids=rows[:1], attention_mask=mask[:1], use_cache=False)
            got = head(hidden.last_hidden_state[0])  # (n, V)
    finally:
        model.train(was_training)
    return logits.double(), got.double()


@contextlib.contextmanager
def _scaled_head(model: nn.Module, factor: float) -> Iterator[None]:
    """The output linear's weight (and bias) multiplied in place by the power of two nearest ``factor`` — exact,
    and exactly undone after (also on error): no copy of the head is made. The power is lowered so that no
    weight can overflow its dtype (a tied head scales the input embedding with it, in both paths alike)."""
    linear = model.get_output_embeddings()
    tensors = [t for t in (linear.weight, getattr(linear, "bias", None)) if isinstance(t, torch.Tensor)]
    power = max(0, round(math.log2(factor)))
    with torch.no_grad():
        for t in tensors:
            largest = float(t.abs().max()) if t.numel() else 0.0
            if largest > 0:
                power = min(power, int(math.log2(torch.finfo(t.dtype).max / 4 / largest)))
        for t in tensors:
            t.mul_(2.0**power)
    try:
        yield
    finally:
        with torch.no_grad():
            for t in tensors:
                t.mul_(2.0**-power)


def _logit_scale(expected: torch.Tensor, floor: float = 1.0) -> float:
    """The largest finite |logit| of ``expected`` (n, V), at least ``floor``."""
    finite = torch.isfinite(expected)
    return max(float(expected[finite].abs().max()) if finite.any() else 0.0, floor)


def _head_error(got: torch.Tensor, expected: torch.Tensor, scale: float) -> float:
    """max |got − expected| / ``scale`` over the finite logits; inf where the two are not finite alike."""
    finite = torch.isfinite(expected)
    if not (torch.equal(finite, torch.isfinite(got)) and expected.shape == got.shape):
        return float("inf")
    return float((got - expected)[finite].abs().max()) / scale


def _refuse_non_causal(
    logits: torch.Tensor, scale: float, tolerance: float, model: nn.Module, role: str
) -> None:
    """Refuse a model whose logits ``(2, n, V)`` of two rows that differ in their last token only differ before
    it, by more than ``tolerance`` of ``scale``: position t of a causal LM sees tokens ≤ t (try-out 38: a BERT
    encoder, which ``AutoModelForCausalLM`` loads as ``BertLMHeadModel``, attends both ways)."""
    earlier = logits[:, :-1]  # (2, n−1, V): positions before the changed token
    same_finite = torch.equal(torch.isfinite(earlier[0]), torch.isfinite(earlier[1]))
    seen = (
        float((earlier[0] - earlier[1])[torch.isfinite(earlier[0])].abs().max()) / scale if same_finite else 1
    )
    if not seen <= tolerance:
        raise ModelError(
            f"{_key(role)}: model type '{model_type(model)}' ({type(model).__name__}) is not a causal LM: its logits "
            f"at a position change with a later token (by {seen:.3g} of their scale; an encoder such as BERT attends "
            "both ways); ekd distills decoder-only causal LMs: use one"
        )


def padded_head_mass(model: nn.Module, vocab_size: int, ids: torch.Tensor) -> float:
    """The mean probability a full-head softmax of ``model`` puts on its rows ≥ ``vocab_size`` (the padding past
    the tokenizer) at the positions of ``ids`` (1, n); 0.0 for a head of ``vocab_size`` rows or fewer (no
    forward then)."""
    if model.get_output_embeddings().weight.shape[0] <= vocab_size:
        return 0.0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            logits = model(input_ids=ids.to(device), use_cache=False).logits[0].double()  # (n, R)
    finally:
        model.train(was_training)
    return float(torch.softmax(logits, -1)[:, vocab_size:].sum(-1).mean())


def model_body(model: nn.Module) -> nn.Module:
    """The transformer body whose ``last_hidden_state`` (after the final norm) feeds the head."""
    prefix = getattr(model, "base_model_prefix", None)
    body = getattr(model, prefix, None) if prefix else None
    if body is None:
        raise ModelError(
            f"{type(model).__name__} has no body at base_model_prefix={prefix!r}: ekd needs a Hugging Face causal LM"
        )
    return body


def hidden_size(model: nn.Module) -> int:
    return int(model.get_output_embeddings().weight.shape[1])


def save_model_dir(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase | None,
    out_dir: str | Path,
    state_dict: dict | None = None,
    dtype: torch.dtype | None = None,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Save a standard HF model directory (safetensors + tokenizer) atomically: temp dir, then rename.
    ``state_dict``: the weights to write instead of the model's own (the full state of a sharded model).
    ``dtype``: write the floating weights in this dtype, and config.json's ``dtype`` says so (None: as they
    are); the model itself is not changed. ``extra_files``: name → text written into the directory with the
    model, in the same rename (a record that must never be missing beside it)."""
    from ekd.io import atomic_dir  # a full disk is one line and leaves neither half a model nor its bytes

    if dtype is not None:
        state_dict = cast_state(model.state_dict() if state_dict is None else state_dict, dtype)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        if dtype is not None:  # save_pretrained wrote the dtype of the model's parameters
            kept = model.config.dtype
            model.config.dtype = dtype_name(dtype)
            try:
                model.config.save_pretrained(tmp)
            finally:
                model.config.dtype = kept
        if tokenizer is not None:
            save_tokenizer(tokenizer, tmp)
        for name, text in (extra_files or {}).items():
            (Path(tmp) / name).write_text(text)
    return Path(out_dir)


LOADER_KWARGS = ("is_local", "local_files_only")
"""What ``from_pretrained`` adds to a tokenizer's init kwargs about where it was loaded from, which its
``save_pretrained`` writes into tokenizer_config.json (try-out 39: a resumed run's export, whose tokenizer was read
back from the run directory, differed from an uninterrupted run's by these two lines)."""


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, directory: str | Path) -> None:
    """``tokenizer.save_pretrained(directory)`` without :data:`LOADER_KWARGS`: the same files whether the
    tokenizer was built in this process or loaded from a directory."""
    kept = {k: tokenizer.init_kwargs.pop(k) for k in LOADER_KWARGS if k in tokenizer.init_kwargs}
    try:
        tokenizer.save_pretrained(directory)
    finally:
        tokenizer.init_kwargs.update(kept)


def cast_state(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """``state`` with every floating tensor in ``dtype``. Names that alias one storage (a tied head and
    embedding) still alias one tensor afterwards, so ``save_pretrained`` stores it once."""
    cast: dict[tuple, torch.Tensor] = {}
    out = {}
    for name, t in state.items():
        if not (isinstance(t, torch.Tensor) and t.is_floating_point()) or t.dtype == dtype:
            out[name] = t
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.device)
        if key not in cast:
            cast[key] = t.detach().to(dtype)
        out[name] = cast[key]
    return out


def dtype_name(dtype: torch.dtype) -> str:
    """'float32', 'bfloat16', … : the name a dtype is written under (config.json, eval.json, ekd-run.json, the
    logs) — :data:`DTYPES`' keys."""
    return str(dtype).removeprefix("torch.")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return DTYPES[name]
    except KeyError:
        raise ModelError(
            f"model.teacher_dtype must be auto, float32, bfloat16 or float16, got '{name}'"
        ) from None
