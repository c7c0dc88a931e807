"""Build a student directory from a teacher, as practitioners do (``ekd student init``).

Two ways, both writing a standard Hugging Face directory (safetensors, the teacher's tokenizer) plus
``ekd_student_init.json``, the record of how it was made:

- **layer dropping** (``layers=L`` or ``keep_layers=[i, ...]``): keep L decoder layers of the teacher,
  evenly spaced with the first and the last kept (DistilBERT / "shrink and fine-tune" practice), copying the
  embeddings, every norm and the head. Per-layer config lists (``layer_types`` of Qwen2/3, Gemma-2/3) are
  sliced with the layers. Works for every architecture whose body holds its decoder layers in
  ``<body>.layers`` (Llama, Qwen2/3, Mistral, Gemma 1–3, Phi-3, GPT-NeoX, ...) or ``<body>.h`` (GPT-2);
  others are refused.
- **from config** (``overrides={"num_hidden_layers": 4, "hidden_size": 256, ...}``): the teacher's config
  with the overrides, randomly initialized (seeded).

Either way ``tie_word_embeddings`` may be set; an untied teacher cannot be cut into a tied student (its head
and embeddings differ, so tying would silently discard one of them).

    ekd student init Qwen/Qwen2.5-1.5B runs/students/qwen-8l --layers 8
    ekd student init runs/teacher runs/students/small --from-config num_hidden_layers=4 hidden_size=256
"""

from __future__ import annotations

import copy
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from ekd import __version__
from ekd.errors import ModelError, first_line
from ekd.hub import hub_kwargs
from ekd.io import make_dirs
from ekd.models.layers import decoder_layers
from ekd.models.load import (
    check_model_dir,
    check_output_head,
    generation_config_problem,
    is_preset,
    load_model,
    load_or_refuse,
    model_tokenizer,
    save_model_dir,
)
from ekd.nearest import did_you_mean
from ekd.words import counted

log = logging.getLogger(__name__)

RECORD = "ekd_student_init.json"


@dataclass
class StudentPlan:
    """What to build. Exactly one of ``layers`` / ``keep_layers`` / ``overrides`` selects the mode."""

    teacher: str
    out: str
    layers: int = 0
    keep_layers: list[int] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)
    tie_word_embeddings: bool | None = None  # None: as the teacher
    revision: str = ""
    trust_remote_code: bool = False
    seed: int = 0

    @property
    def mode(self) -> str:
        return "from_config" if self.overrides else "layer_drop"


def evenly_spaced_layers(num_teacher_layers: int, num_keep: int) -> list[int]:
    """``num_keep`` indices in [0, num_teacher_layers), evenly spaced, first and last kept (one: layer 0).

    >>> evenly_spaced_layers(12, 4)
    [0, 4, 7, 11]
    """
    if not 1 <= num_keep <= num_teacher_layers:
        raise ModelError(
            "student init: --layers must be between 1 and the teacher's "
            f"{counted(num_teacher_layers, 'layer')}, got {num_keep}"
        )
    if num_keep == 1:
        return [0]
    return [round(i * (num_teacher_layers - 1) / (num_keep - 1)) for i in range(num_keep)]


def layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(state-dict prefix of the layer list, the list): :func:`ekd.models.layers.decoder_layers`
    (``<base_model_prefix>.layers``, or GPT-2's ``transformer.h``).

    Raises:
        ModelError: the architecture keeps its decoder layers elsewhere (not supported for layer dropping).
    """
    try:
        layers = decoder_layers(model)
    except ModelError:
        model_type = getattr(model.config, "model_type", type(model).__name__)
        raise ModelError(
            f"student init: cannot drop layers of model type '{model_type}' (no decoder layer list at "
            f"{model.base_model_prefix}.layers or .h); use --from-config num_hidden_layers=N instead"
        ) from None
    name = next(n for n, m in model.named_modules() if m is layers)
    return name, layers


def _per_layer_fields(config: PretrainedConfig, num_layers: int) -> list[str]:
    """Config attributes that hold one entry per decoder layer (e.g. ``layer_types``)."""
    return [
        k
        for k, v in config.to_dict().items()
        if isinstance(v, (list, tuple)) and len(v) == num_layers and k != "architectures"
    ]


def cut_config(config: PretrainedConfig, keep: list[int]) -> PretrainedConfig:
    """The teacher's config for ``len(keep)`` layers, per-layer lists sliced to ``keep``."""
    num_teacher = int(config.num_hidden_layers)
    new = copy.deepcopy(config)
    for name in _per_layer_fields(config, num_teacher):
        values = getattr(config, name)
        setattr(new, name, type(values)(values[i] for i in keep))
    new.num_hidden_layers = len(keep)
    if isinstance(getattr(new, "max_window_layers", None), int):  # Qwen2: layers ≥ this use sliding windows
        new.max_window_layers = sum(1 for i in keep if i < config.max_window_layers)
    return new


def cut_state_dict(state: dict[str, torch.Tensor], prefix: str, keep: list[int]) -> dict[str, torch.Tensor]:
    """Rename ``{prefix}.{keep[i]}.*`` to ``{prefix}.{i}.*``; drop the other layers; keep every other key."""
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.(.*)$")
    new_index = {old: new for new, old in enumerate(keep)}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = pattern.match(key)
        if m is None:
            out[key] = value
        elif int(m.group(1)) in new_index:
            out[f"{prefix}.{new_index[int(m.group(1))]}.{m.group(2)}"] = value
    return out


def _seeded_from_config(config: PretrainedConfig, seed: int, dtype: torch.dtype) -> nn.Module:
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return AutoModelForCausalLM.from_config(config, dtype=dtype)
    except (ValueError, TypeError, RuntimeError, AttributeError) as e:
        raise ModelError(
            f"student init: cannot build a '{config.model_type}' model from that config ({first_line(e)}); "
            "check the overrides"
        ) from None


def drop_layers(teacher: nn.Module, keep: list[int], tie_word_embeddings: bool | None = None) -> nn.Module:
    """A student with the teacher's layers ``keep`` (increasing indices), embeddings, norms and head copied.

    Raises:
        ModelError: unsupported architecture, indices out of range, repeated or out of order (a student
            keeps the teacher's layer order; reordering layers is refused, not silently sorted), or tying an
            untied teacher.
    """
    prefix, layers = layer_list(teacher)
    n = len(layers)
    if not keep or any(not 0 <= i < n for i in keep) or len(set(keep)) != len(keep):
        raise ModelError(
            f"student init: --keep-layers must be distinct indices in [0, {n - 1}], got {','.join(map(str, keep))}"
        )
    _require_increasing(keep)
    config = cut_config(teacher.config, keep)
    teacher_tied = bool(getattr(teacher.config, "tie_word_embeddings", False))
    if tie_word_embeddings is not None and tie_word_embeddings != teacher_tied:
        if tie_word_embeddings:
            raise ModelError(
                "student init: the teacher's head and input embeddings are separate matrices; a tied student "
                "would discard one of them (drop --tie-embeddings, or use --from-config for a new tied model)"
            )
        config.tie_word_embeddings = False
    dtype = next(teacher.parameters()).dtype
    student = _seeded_from_config(config, seed=0, dtype=dtype)
    state = cut_state_dict(teacher.state_dict(), prefix, keep)
    missing, unexpected = student.load_state_dict(state, strict=False)
    missing = [k for k in missing if not _is_tied_head(student, k)]
    if missing or unexpected:
        raise ModelError(
            f"student init: the cut state does not fit the cut architecture (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); this model type is not supported for layer dropping"
        )
    return student


def _require_increasing(keep: list[int]) -> None:
    """Refuse layers out of order ('3,1'): the student keeps the teacher's layer order; reordering is refused,
    not silently sorted."""
    if keep != sorted(keep):
        raise ModelError(
            f"student init: --keep-layers must be increasing (the student keeps the teacher's layer order), got "
            f"{','.join(map(str, keep))}; write {','.join(map(str, sorted(set(keep))))}"
        )


def _is_tied_head(model: nn.Module, key: str) -> bool:
    """A tied head's weight may be absent from a state dict: it is the input embedding."""
    head = model.get_output_embeddings()
    return (
        bool(getattr(model.config, "tie_word_embeddings", False))
        and head is not None
        and key.endswith("weight")
        and head.weight is model.get_input_embeddings().weight
    )


POSITIVE_KEYS = (
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
)


def from_config(
    teacher_config: PretrainedConfig,
    overrides: dict[str, Any],
    tie_word_embeddings: bool | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """A randomly initialized model of the teacher's type with ``overrides`` applied to its config.

    ``head_dim`` follows ``hidden_size / num_attention_heads`` when an override changes either, unless it is
    overridden too or the teacher's own is not that ratio (Qwen3, Gemma: kept, with a log line).

    Raises:
        ModelError: an override names a key the config does not have, sets a size below 1, or the result
            cannot be built (the library's reason in full).
    """
    known = teacher_config.to_dict()
    config = copy.deepcopy(teacher_config)
    aliases = getattr(teacher_config, "attribute_map", {}) or {}  # GPT-2: num_hidden_layers is n_layer
    for key, value in overrides.items():
        if key not in known and aliases.get(key) not in known:
            hint = did_you_mean(key, known)
            raise ModelError(
                f"student init: '{key}' is not a key of the teacher's {teacher_config.model_type} config{hint}"
            )
        if key in POSITIVE_KEYS and isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise ModelError(f"student init: {key} must be ≥ 1, got {value}")
        try:  # transformers' configs validate field types on assignment
            setattr(config, key, value)
        except Exception as e:  # noqa: BLE001  (its validation errors have no common base class)
            raise ModelError(
                f"student init: {key}={value!r} makes an invalid {teacher_config.model_type} config "
                f"({first_line(e, last=True)})"
            ) from None
    _follow_head_dim(teacher_config, config, overrides)
    if "num_hidden_layers" in overrides:
        n_old, n_new = int(teacher_config.num_hidden_layers), int(config.num_hidden_layers)
        for name in _per_layer_fields(teacher_config, n_old):
            if name not in overrides:
                values = getattr(teacher_config, name)
                setattr(config, name, type(values)(values[i % n_old] for i in range(n_new)))
    if tie_word_embeddings is not None:
        config.tie_word_embeddings = tie_word_embeddings
    try:  # transformers validates field types and shapes when a config is (re)built or saved
        config = type(config).from_dict(config.to_dict())
        config.to_json_string()
    except Exception as e:  # noqa: BLE001  (its validation errors have no common base class)
        raise ModelError(
            f"student init: the overrides make an invalid {config.model_type} config ({first_line(e)})"
        ) from None
    heads, groups = getattr(config, "num_attention_heads", None), getattr(config, "num_key_value_heads", None)
    hidden, head_dim = getattr(config, "hidden_size", None), getattr(config, "head_dim", None)
    # a config without head_dim of its own divides hidden_size by the heads (try-out 57, F3: a tensor-size error)
    if (
        isinstance(heads, int)
        and heads > 0
        and isinstance(hidden, int)
        and head_dim is None
        and hidden % heads
    ):
        raise _indivisible_width(hidden, heads)
    if isinstance(heads, int) and isinstance(groups, int) and groups > 0 and heads % groups:  # try-out 33
        raise ModelError(
            f"student init: num_attention_heads={heads} is not a multiple of num_key_value_heads={groups} (each "
            "key/value head serves a whole group of query heads); choose sizes that divide"
        )
    student = _seeded_from_config(config, seed, dtype)
    try:  # a config that builds may still not run
        with torch.no_grad():
            student(input_ids=torch.zeros(1, 2, dtype=torch.long))
    except Exception as e:  # noqa: BLE001  (any failure of the model's own forward)
        raise ModelError(
            f"student init: the overrides make a {config.model_type} model that does not run ({first_line(e)}); "
            "check that the sizes they set fit together"
        ) from None
    return student


def _follow_head_dim(teacher: PretrainedConfig, config: PretrainedConfig, overrides: dict[str, Any]) -> None:
    """Set ``config.head_dim`` to hidden_size / num_attention_heads again after an override of either, when
    the teacher's head_dim was that ratio: transformers 5 writes head_dim into every config.json, so the
    teacher's would silently stay (4 heads × 24 on a 32-wide model). An overridden head_dim, or a teacher
    whose head_dim is its own, is kept."""
    head_dim = getattr(teacher, "head_dim", None)
    if "head_dim" in overrides or not isinstance(head_dim, int) or isinstance(head_dim, bool):
        return
    if not {"hidden_size", "num_attention_heads"} & set(overrides):
        return
    hidden, heads = int(config.hidden_size), int(config.num_attention_heads)
    if head_dim * int(teacher.num_attention_heads) != int(teacher.hidden_size):
        log.info(
            "student init: head_dim stays %d as in the teacher, whose head_dim is not hidden_size / "
            "num_attention_heads; add head_dim=N to change it",
            head_dim,
        )
    elif hidden % heads == 0:
        config.head_dim = hidden // heads
    else:  # try-out 56, F5: a forward shape error, blamed on the key/value heads
        raise _indivisible_width(hidden, heads)


def _indivisible_width(hidden: int, heads: int) -> ModelError:
    """The refusal of a width the attention heads do not divide, where head_dim follows from it."""
    return ModelError(
        f"student init: hidden_size={hidden} is not a multiple of num_attention_heads={heads} (head_dim = "
        "hidden_size / num_attention_heads); choose sizes that divide, or set head_dim=N"
    )


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``['num_hidden_layers=4', 'hidden_size=256']`` → typed dict (values parsed as YAML scalars)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ModelError(f"student init: --from-config items look like key=value, got '{item}'")
        try:
            out[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            out[key.strip()] = text
    return out


def build_student(plan: StudentPlan, overwrite: bool = False) -> Path:
    """Build the student described by ``plan`` and write it to ``plan.out``; returns the directory.

    Raises:
        ModelError: bad teacher, bad layers/overrides, or an output directory that exists (without
            ``overwrite``) or is the teacher's own directory.
    """
    out = Path(plan.out).expanduser()
    if is_preset(plan.teacher):
        raise ModelError(
            "student init: the teacher must be a hub id or a saved model directory, not a preset (presets are random)"
        )
    check_model_dir(plan.teacher, "student init: teacher", weights=plan.mode != "from_config", presets=False)
    if plan.mode != "from_config" and not Path(plan.teacher).expanduser().exists():
        from ekd.hub import check_model_spec

        # a hub teacher's download cut short, said before anything is built (try-out 154, N7)
        check_model_spec(plan.teacher, "student init: teacher", plan.revision)
    if (
        Path(plan.teacher).expanduser().exists()
        and out.resolve() == Path(plan.teacher).expanduser().resolve()
    ):
        raise ModelError("student init: the output directory is the teacher's directory; choose another")
    # an empty directory (made beforehand) is written into; one that holds something else is never offered
    # --overwrite, which replaces only what this command wrote (try-out 138, F5: offered, then refused)
    empty = out.is_dir() and not any(out.iterdir())
    if out.exists() and not empty and not (out / RECORD).is_file():
        raise ModelError(
            f"student init: {out} exists and was not written by ekd student init; choose another directory "
            "(--overwrite replaces only a student this command wrote)"
        )
    if out.exists() and not empty and not overwrite:
        raise ModelError(
            f"student init: {out} exists{_what_it_holds(out)}; choose another directory or pass --overwrite"
        )
    if plan.overrides and (plan.layers or plan.keep_layers):
        raise ModelError("student init: give either --layers/--keep-layers or --from-config, not both")
    if plan.layers and plan.keep_layers:
        raise ModelError("student init: give either --layers N or --keep-layers i,j,..., not both")
    if plan.layers < 0 or plan.seed < 0:
        raise ModelError(
            f"student init: --layers and --seed must be ≥ 0 (got --layers {plan.layers}, --seed {plan.seed})"
        )
    if not plan.overrides and not plan.layers and not plan.keep_layers:
        raise ModelError(
            "student init: say what to build: --layers N, --keep-layers 0,5,11 or --from-config k=v ..."
        )
    _require_increasing(plan.keep_layers)  # before the teacher is loaded

    if plan.mode == "from_config":
        try:
            source = _resolved(plan.teacher)
            hub = hub_kwargs(source, "student init", revision=plan.revision)
            teacher_config = AutoConfig.from_pretrained(
                source, revision=plan.revision or None, trust_remote_code=plan.trust_remote_code, **hub
            )
        except (OSError, ValueError) as e:
            first = first_line(e)
            raise ModelError(
                f"student init: cannot read the teacher's config from '{plan.teacher}' ({first})"
            ) from None
        student = (
            load_or_refuse(  # transformers' messages while it builds: as for a load (one line on refusal)
                plan.teacher,
                "student init: teacher",
                lambda: from_config(teacher_config, plan.overrides, plan.tie_word_embeddings, plan.seed),
                "a student from the teacher's config",
            )
        )
        check_output_head(student, role="student init: teacher")  # its architecture's, every head row
        record: dict[str, Any] = {"overrides": plan.overrides}
        teacher_layers = int(teacher_config.num_hidden_layers)
        model_type = teacher_config.model_type
        generation = _teacher_generation_config(plan, source, hub)
    else:
        teacher = load_model(
            _resolved(plan.teacher),
            vocab_size=0,
            revision=plan.revision,
            trust_remote_code=plan.trust_remote_code,
            role="student init: teacher",  # its argument, not a config key (try-out 38)
        )
        check_output_head(teacher, role="student init: teacher")  # a causal LM ekd can train on
        teacher_layers = len(layer_list(teacher)[1])
        keep = list(plan.keep_layers) or evenly_spaced_layers(teacher_layers, plan.layers)
        student = drop_layers(teacher, keep, plan.tie_word_embeddings)
        record = {"kept_layers": keep}
        model_type = teacher.config.model_type
        generation = teacher.generation_config  # its generation_config.json, checked by the load
        del teacher
    # the teacher's stop ids and decoding defaults (an instruct model's end-of-turn id, its sampling settings):
    # a model built from a config gets ones implied by config.json (try-out 135, F1: the export of a distilled
    # chat student never stopped at its end of turn)
    if generation is not None:
        student.generation_config = copy.deepcopy(generation)

    tokenizer = None
    try:
        teacher_dir = _resolved(plan.teacher)
        # the teacher's own tokenizer, as a run reads it (try-out 56, F2: saved as its class loads it, the
        # student's tokenizer.json held a token the class adds and neither head has a row for)
        tokenizer = model_tokenizer(
            teacher_dir, plan.revision, plan.trust_remote_code, "teacher", key="teacher tokenizer"
        )
    except ModelError as e:
        log.warning("%s: the student directory gets no tokenizer", e)
    rows = getattr(student.get_output_embeddings(), "out_features", None)
    # a teacher's own head short of its tokenizer is not ours to refuse
    shrunk = "vocab_size" in plan.overrides
    if shrunk and tokenizer is not None and rows is not None and rows < len(tokenizer):  # try-out 33
        raise ModelError(
            f"student init: the student's head has {rows} rows, fewer than the teacher tokenizer's {len(tokenizer)} "
            "tokens; set vocab_size ≥ that (or leave it at the teacher's)"
        )
    record = {
        "ekd_version": __version__,
        "teacher": _resolved(plan.teacher),  # an absolute path for a directory: valid from anywhere
        "teacher_revision": plan.revision,
        "model_type": model_type,
        "mode": plan.mode,
        "teacher_layers": teacher_layers,
        "student_layers": int(student.config.num_hidden_layers),
        "tie_word_embeddings": bool(getattr(student.config, "tie_word_embeddings", False)),
        "parameters": sum(p.numel() for p in student.parameters()),
        "seed": plan.seed,
        **record,
    }
    make_dirs(out.parent)
    # the record in the same rename as the model (try-out 36: a kill between the two left a model without it,
    # which neither a rerun nor --overwrite would replace)
    save_model_dir(student, tokenizer, out, extra_files={RECORD: json.dumps(record, indent=2) + "\n"})
    return out


def _what_it_holds(out: Path) -> str:
    """What an existing output directory is, for the refusal to write over it: a finished student of ``ekd
    student init`` (its record, written in the same rename as the model) is named with its teacher and layers, so
    a rerun after an interrupt that landed once it was written does not read as a failed one (try-out 105, F3:
    "interrupted", then "exists; ... pass --overwrite" of a complete student); '' otherwise."""
    from ekd.errors import EkdError
    from ekd.json_record import read_json_record

    try:  # the one reader of ekd's records (a byte-order mark read past: try-out 139, F9)
        record = read_json_record(out / RECORD, "")
        layers, teacher = int(record["student_layers"]), str(record["teacher"])
    except (EkdError, ValueError, KeyError, TypeError):  # none, or not one this command wrote
        return ""
    return (
        f" and holds a finished student of ekd student init ({counted(layers, 'layer')}, from {teacher}): use it as "
        "model.student"
    )


def _teacher_generation_config(plan: StudentPlan, source: str, hub: dict[str, Any]) -> Any:
    """The teacher's ``GenerationConfig`` (its ``generation_config.json``), None where it has none.

    Raises:
        ModelError: a local teacher's generation_config.json does not parse or names no token ids
            (:func:`~ekd.models.load.generation_config_problem`: transformers reads it as absent).
    """
    from transformers import GenerationConfig

    if broken := generation_config_problem(source):
        raise ModelError(f"student init: teacher '{plan.teacher}': {broken}; fix it there, or remove it")
    try:
        return GenerationConfig.from_pretrained(source, revision=plan.revision or None, **hub)
    except OSError:  # none there (or none reachable on the hub): the student's own, from its config
        return None


def _resolved(spec: str) -> str:
    """An existing directory as an absolute path; a hub id as given."""
    path = Path(spec).expanduser()
    # Path("") is the current directory
    return str(path.resolve()) if spec.strip() and path.exists() else spec


__all__ = [
    "RECORD",
    "StudentPlan",
    "build_student",
    "cut_config",
    "cut_state_dict",
    "drop_layers",
    "evenly_spaced_layers",
    "from_config",
    "layer_list",
    "parse_overrides",
]
