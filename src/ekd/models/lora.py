"""LoRA students through ``peft``: wrap the student, say what trains, export it merged or as an adapter.

``model.lora_r > 0`` wraps the student with ``peft.get_peft_model``. peft injects its adapter layers into the
Hugging Face model *in place*, so the rest of ekd keeps working on that same model object
(``wrapper.get_base_model()``): its body, its output head (read by ``ekd.models.load.output_head`` for the
fused chunked head), ``generate``, DDP. The base weights are frozen; the optimizer sees only what
:func:`trainable_names` lists: the adapters, plus the head weight when ``model.lora_train_head`` is set. The
head itself is never given an adapter: ekd applies the head's weight directly, so an adapter there would be
silently skipped.

Checkpoints hold the trained tensors only (the frozen base is rebuilt from ``model.student`` on resume);
the run's ``student/`` directory is the merged model or the adapter (``model.lora_export``); ``ekd_base.json``
beside an adapter names the base (``base_model``, ``revision``; a preset's ``seed`` and ``eos_token_id``) and
records ``tokenizer_tokens`` (V, the rows ekd trained and scored) and ``head_rows`` (the base head's rows).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ekd.config import ConfigError, ModelConfig
from ekd.errors import ModelError
from ekd.io import atomic_dir
from ekd.json_record import read_json_record
from ekd.json_words import is_count
from ekd.models.adapter_dir import BASE_NOTE, is_adapter_dir
from ekd.models.layers import state_dict_name

log = logging.getLogger(__name__)


def require_peft():
    """The ``peft`` module, or one line naming the extra to install."""
    try:
        import peft
    except ImportError:
        raise ConfigError("model.lora_r > 0 needs the peft library: pip install 'ekd[lora]'") from None
    return peft


@dataclass
class LoraStudent:
    """A student with LoRA adapters: ``model`` is the HF model ekd trains (adapters inside), ``wrapper`` the
    ``peft.PeftModel`` around it (for saving the adapter and merging)."""

    model: nn.Module
    wrapper: nn.Module
    train_head: bool

    @classmethod
    def wrap(cls, student: nn.Module, model_cfg: ModelConfig) -> LoraStudent:
        """Inject adapters per ``model.lora_*`` into ``student`` (in place) and freeze its base weights.

        Raises:
            ConfigError: peft is missing, ``model.lora_target_modules`` matches nothing, or names the head.
        """
        peft = require_peft()
        from peft.tuners.tuners_utils import BaseTunerLayer

        targets = model_cfg.lora_target_modules
        config = peft.LoraConfig(
            r=model_cfg.lora_r,
            lora_alpha=model_cfg.lora_alpha,
            lora_dropout=model_cfg.lora_dropout,
            target_modules=targets[0] if targets == ["all-linear"] else list(targets),
            task_type="CAUSAL_LM",
            fan_in_fan_out=_has_conv1d(student),  # GPT-2-style (in, out) weights: peft warned and set it
        )
        head_name = _module_name(student, student.get_output_embeddings())
        if head_name and any(head_name == t or head_name.endswith(f".{t}") for t in targets):
            raise ConfigError(_head_targeted(head_name))
        try:
            with _quiet_peft():
                wrapper = peft.get_peft_model(student, config)
        except ValueError as e:  # peft: "Target modules {...} not found in the base model"
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            # "Target module Qwen2MoeExperts(" — a module's repr cut at its first line (try-out 135, F2) — or
            # "Target module Qwen2MoeTopKRouter() is not supported. …" cut at 200 characters (try-out 139, F8)
            if unsupported := re.match(r"Target module (\w+)\(", first):
                first = f"{unsupported[1]} is no layer peft adapts: it adapts linear layers"
            raise ConfigError(
                f"model.lora_target_modules={list(targets)} does not fit {type(student).__name__} ({first}); "
                "name its linear layers (e.g. [q_proj, v_proj]) or use [all-linear]"
            ) from None
        model = wrapper.get_base_model()  # the same object as ``student``, adapters injected
        if isinstance(model.get_output_embeddings(), BaseTunerLayer):  # a regex or pattern reached it
            raise ConfigError(_head_targeted(head_name or "the output head"))
        if model_cfg.lora_train_head:
            model.get_output_embeddings().weight.requires_grad_(True)
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        log.info(
            "LoRA student: r=%d α=%g on %s; %d of %d parameters train (%.2f%%)%s",
            model_cfg.lora_r,
            model_cfg.lora_alpha,
            ",".join(targets),
            trained,
            total,
            100.0 * trained / max(total, 1),
            " (head included)" if model_cfg.lora_train_head else "",
        )
        if frozen := _frozen_weights_outside_linear_layers(model):
            moe = any(w in name for name in frozen for w in ("Expert", "Router", "Gate"))
            log.warning(
                "LoRA adapts linear layers: %s hold weights outside them that no adapter reaches, which stay "
                "frozen%s; train without LoRA (model.lora_r=0) to update them",
                ", ".join(f"{name} ({n:,} parameters)" for name, n in frozen.items()),
                " (a mixture of experts' fused weights this peft does not adapt)" if moe else "",
            )
        return cls(model, wrapper, model_cfg.lora_train_head)

    def merge(self) -> nn.Module:
        """Fold the adapters into the base weights (``merge_and_unload``, in place): afterwards ``model`` is a
        plain HF model with the same logits (within fp32 rounding). Returns it."""
        return self.wrapper.merge_and_unload()  # the base model, its LoRA layers replaced by merged Linears

    def shipped(self) -> list[torch.Tensor]:
        """The tensors an adapter export writes: the adapters, and the head when it trained."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def save_adapter(
        self, tokenizer, out_dir: str | Path, base: dict, dtype: torch.dtype | None = None
    ) -> Path:
        """Write the adapter directory to ``out_dir`` atomically: peft's ``save_pretrained`` (adapter config +
        weights; the head too when it was trained), the tokenizer and :data:`BASE_NOTE` with ``base`` (how to
        rebuild the base model). ``dtype``: write the trained tensors in it (the model is left as it was)."""
        self._check_exported_adapters()
        trained = self.shipped() if dtype is not None else []
        kept = [p.data for p in trained]
        with atomic_dir(out_dir) as tmp:
            try:
                for p in trained:
                    p.data = p.data.to(dtype)
                # the trained head is saved with the adapter (peft reloads it into the base model)
                self.wrapper.save_pretrained(tmp, save_embedding_layers=self.train_head)
            finally:
                for p, data in zip(trained, kept):
                    p.data = data
            if self.train_head:
                self._drop_untrained_embedding(Path(tmp) / "adapter_model.safetensors")
            if tokenizer is not None:
                from ekd.models.load import save_tokenizer

                save_tokenizer(tokenizer, tmp)
            (Path(tmp) / BASE_NOTE).write_text(json.dumps(base, indent=2) + "\n")
        return Path(out_dir)

    def _drop_untrained_embedding(self, path: Path) -> None:
        """peft's ``save_embedding_layers`` writes the input embedding beside a trained head; of an untied
        student it did not train (the base's own, in fp32 whatever the export dtype: try-out 33, 262 of 420 KB
        here, ~2 GB at 7B). Left out, the base keeps its own on reload: the same model."""
        import safetensors.torch

        embedding = self.model.get_input_embeddings()
        if any(p.requires_grad for p in embedding.parameters()):
            return  # tied to the trained head, or trained itself
        name = next(n for n, m in self.model.named_modules() if m is embedding)  # e.g. model.embed_tokens
        tensors = safetensors.torch.load_file(str(path))
        kept = {k: v for k, v in tensors.items() if not k.endswith(f"{name}.weight")}
        if len(kept) < len(tensors):
            safetensors.torch.save_file(kept, str(path), metadata={"format": "pt"})

    def _check_exported_adapters(self) -> None:
        """Raise ModelError (nothing written) when peft's export would miss adapter tensors that trained: peft
        finds them by module name, so a wrapper left around a layer (activation checkpointing) made it write an
        empty adapter, which loads as the untrained base with only a peft warning."""
        from peft import get_peft_model_state_dict

        exported = sum("lora_" in k for k in get_peft_model_state_dict(self.wrapper))
        trained = sum("lora_" in n for n, p in self.model.named_parameters() if p.requires_grad)
        if exported < trained:
            raise ModelError(
                f"the LoRA adapter export would hold {exported} of the {trained} adapter tensors that trained "
                "(peft did not find them by module name: an ekd bug, please report it); the run's checkpoints "
                "hold them"
            )


def base_identity(spec: str, revision: str = "") -> dict | None:
    """What identifies a base model's weights — a local directory's, or a hub id's cached snapshot of
    ``revision`` (:func:`ekd.hub.model_directory`; try-out 152, F8: an adapter on a hub base was evaluated and
    resumed on whatever ``main`` held later): ``{"files": {name: [size, mtime_ns, ctime_ns, inode]}, "revision":
    "safetensors-sha256:…"}`` (:func:`ekd.teacher.cache.signature.weights_revision`); None for a hub id not cached,
    a preset or pickled weights; a hub id's also names its ``commit`` (the snapshot's), which a refused ``--resume``
    names as the pin that resumes it (try-out 164, F5). A LoRA run records it: its adapters apply to that base
    only."""
    from ekd.hub import is_local, model_directory
    from ekd.teacher.cache.signature import is_commit, teacher_files, weights_revision

    directory = model_directory(spec, revision)
    files = teacher_files(str(directory)) if directory is not None else None
    if files is None:
        return None
    commit = {"commit": directory.name} if not is_local(spec) and is_commit(directory.name) else {}
    return {"files": files, "revision": weights_revision(str(directory)), **commit}


def base_changed(recorded: dict, spec: str, revision: str = "") -> bool:
    """Whether the base ``spec`` (at ``revision``, a hub id's) is not the one :func:`base_identity` recorded: its
    files' sizes and times first (a ``stat`` each: a file written in place has a new ctime, whatever its mtime),
    their sha256 only when those differ (a base copied elsewhere is the same base). A hub id not cached here
    cannot be told (False: the loader fetches or refuses it)."""
    from ekd.hub import model_directory
    from ekd.teacher.cache.signature import weights_changed

    directory = model_directory(spec, revision)
    if directory is None:
        return False
    return weights_changed(recorded.get("files"), recorded.get("revision"), str(directory))


def load_exported_student(
    path: str | Path, trust_remote_code: bool = False, recorded_base: dict | None = None
) -> nn.Module:
    """A run's exported ``student/`` as one HF model: a full model directory as saved, or an adapter applied to
    the base model its :data:`BASE_NOTE` names and merged (what ``ekd eval`` evaluates).

    ``recorded_base``: the base's :func:`base_identity` as the run recorded it (``ekd-run.json``), checked
    before an adapter is applied (try-out 33: a base rebuilt in place gave ppl 477 for the run's 3.13).

    Raises:
        ConfigError: peft is missing for an adapter directory.
        ModelError: the model or its base cannot be loaded, or the base is not the run's.
    """
    from ekd.models.load import complete_causal_lm, is_preset, load_model, load_or_refuse

    path = Path(path)
    if not is_adapter_dir(path):
        # in fp32 whatever dtype it was shipped in: as the run's final evaluation computed on those values
        return load_or_refuse(
            str(path), "student", lambda: complete_causal_lm(path, str(path), "student", dtype=torch.float32)
        )
    peft = require_peft()
    note = base_note(path)
    base_dir = Path(str(note["base_model"])).expanduser()
    if base_dir.is_absolute() and not base_dir.exists():  # gone, not changed (try-out 138, F3)
        raise AdapterBaseError(
            f"{path} is a LoRA adapter on {note['base_model']}, which is not there any more (moved or deleted since "
            "the run trained it); put the run's base back there"
        )
    base_spec, base_revision = str(note["base_model"]), str(note.get("revision") or "")
    if not recorded_base and not base_revision and not is_preset(base_spec) and not Path(base_spec).exists():
        # an older ekd's export on a hub base: neither its weights nor its commit recorded (try-out 157, N2)
        log.warning(
            "%s is a LoRA adapter on the hub id %s, recorded without the commit it trained on (an older ekd's "
            "export): it is scored on what that id's main holds here now, which cannot be told from the run's",
            path,
            base_spec,
        )
    if recorded_base and base_changed(recorded_base, base_spec, base_revision):
        raise AdapterBaseError(
            f"{path} is a LoRA adapter on {note['base_model']}, whose weights changed since the run trained it "
            "(another sha256 than ekd-run.json records); put the run's base back there"
        )
    base = load_model(
        note["base_model"],
        # a preset's head rows (= its tokenizer length); notes of older ekd versions call them vocab_size
        vocab_size=int(note.get("head_rows", note.get("vocab_size"))),
        eos_token_id=note.get("eos_token_id"),
        revision=note.get("revision", ""),
        trust_remote_code=trust_remote_code,
        seed=int(note.get("seed", 0)),
        dtype=torch.float32,  # as the student trained (ekd.train.prepare.load_student)
        role="student",
    )
    with _quiet_peft():
        wrapped = load_or_refuse(
            str(path), "student", lambda: peft.PeftModel.from_pretrained(base, path), "an adapter"
        )
    return wrapped.merge_and_unload()


class AdapterBaseError(ModelError):
    """An exported adapter's base model is not the one the run trained on (gone, or other weights): the export itself
    is sound, and exporting it again does not help (:func:`ekd.train.run_state.damaged_export`)."""


def base_note(path: Path) -> dict:
    """The :data:`BASE_NOTE` of the adapter export in ``path``: the base model it applies to.

    Raises:
        ModelError: the note cannot be read, is not JSON, or names no base model or head size (a traceback
            before: a damaged note ended ``ekd eval`` in a JSONDecodeError or KeyError).
    """
    file = path / BASE_NOTE
    fix = 'restore it from a copy of the run (it holds e.g. {"base_model": "Qwen/Qwen2.5-0.5B", "head_rows": 151936})'
    note = read_json_record(file, fix, ModelError)
    rows = note.get("head_rows", note.get("vocab_size")) if isinstance(note, dict) else None
    if (
        not isinstance(note, dict)
        or not isinstance(note.get("base_model"), str)
        or not (is_count(rows) and rows)
    ):
        raise ModelError(f"{file} names no base model and head size; {fix}")
    return note


def _frozen_weights_outside_linear_layers(model: nn.Module) -> dict[str, int]:
    """Class name → frozen parameters of the modules holding matrices (or 3-D expert stacks) that are no linear
    layer, embedding or adapter and that no adapter reaches — what ``all-linear`` left out: transformers 5's fused
    MoE experts and routers where peft does not adapt them (try-out 135, F2: 46% of a Qwen2-MoE student frozen,
    said nowhere); {} for a dense model. A parameter peft wraps (its ``ParamWrapper``: Mixtral's experts and router
    under peft 0.21) trains through its adapter and is not counted (try-out 145, F2: they were said to stay frozen,
    and the user told to give up LoRA to train them)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from transformers.pytorch_utils import Conv1D

    reached = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, Conv1D, BaseTunerLayer)  # what peft adapts
    adapted: set[int] = set()  # ids of the parameters an adapter reaches
    for tuner in model.modules():
        if isinstance(tuner, BaseTunerLayer):
            base = tuner.get_base_layer()
            wrapped = getattr(tuner, "parameter_name", None)  # a ParamWrapper adapts one named parameter
            adapted |= {id(p) for n, p in base.named_parameters(recurse=False) if wrapped in (None, n)}
    out: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, reached):
            continue
        own = [
            p
            for p in module.parameters(recurse=False)
            if p.dim() >= 2 and not p.requires_grad and id(p) not in adapted
        ]
        if own:
            name = type(module).__name__
            out[name] = out.get(name, 0) + sum(p.numel() for p in own)
    return out


def _has_conv1d(model: nn.Module) -> bool:
    """Whether the model's linear layers are transformers' ``Conv1D`` (GPT-2 family: weights stored (in, out))."""
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(m, Conv1D) for m in model.modules())


@contextlib.contextmanager
def _quiet_peft():
    """peft 0.21 calls transformers' deprecated ``is_gradient_checkpointing``: not the user's concern."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        yield


def trainable_names(model: nn.Module) -> set[str]:
    """State-dict names of the parameters that train (every alias of a tied parameter)."""
    return {state_dict_name(n) for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}


def _module_name(model: nn.Module, module: nn.Module | None) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    return ""


def _head_targeted(name: str) -> str:
    return (
        f"model.lora_target_modules reaches the output head ({name}): ekd applies the head's weight itself "
        "(in chunks), so an adapter there would be skipped; drop it, and set model.lora_train_head=true to "
        "train the head"
    )
