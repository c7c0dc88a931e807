"""Loading teacher and student: hub id, local directory or architecture preset; vocabulary alignment; saving.

Conventions (DESIGN): teacher and student must share a tokenizer; padded vocabularies (Qwen2.5's
151,936-row heads for a 151,665-token tokenizer) are aligned to the tokenizer length with a log line;
different tokenizers are refused. ``trust_remote_code`` stays off unless configured. Weights are saved
with safetensors.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from ekd.errors import ModelError
from ekd.losses.targets import Head
from ekd.models.head_transform import logit_transform, model_type
from ekd.models.presets import architectures

log = logging.getLogger(__name__)

PRESET_PREFIX = "preset:"


def is_preset(spec: str) -> bool:
    return spec.startswith(PRESET_PREFIX)


def build_preset(name: str, vocab_size: int, eos_token_id: int | None = None, seed: int = 0) -> nn.Module:
    """A randomly initialized causal LM from an architecture preset, with ``vocab_size`` rows."""
    if name not in architectures:
        raise ModelError(
            architectures.unknown_message(name).replace(
                "unknown architecture preset", "model: unknown preset"
            )
        )
    values = dict(architectures.get(name))
    model_type = values.pop("model_type")
    config = AutoConfig.for_model(
        model_type,
        vocab_size=vocab_size,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
        **values,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
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
        ModelError: missing local directory, unknown preset, a hub id that cannot be reached offline.
    """
    if is_preset(spec):
        model = build_preset(spec[len(PRESET_PREFIX) :], vocab_size, eos_token_id, seed)
        return model.to(dtype) if dtype is not None else model
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    if dtype is not None:
        kwargs["dtype"] = dtype
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if (spec.startswith((".", "/", "~")) or Path(spec).exists()) and not (
        Path(spec).expanduser() / "config.json"
    ).is_file():
        raise ModelError(
            f"model.{role}: {spec} is not a Hugging Face model directory (no config.json); pass a hub id, a saved model directory or preset:<name>"
        )
    try:
        return AutoModelForCausalLM.from_pretrained(
            str(Path(spec).expanduser()) if Path(spec).expanduser().exists() else spec, **kwargs
        )
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(
            f"model.{role}: cannot load '{spec}' ({first}); check the id/path, network access or HF_HOME cache"
        ) from None


def load_tokenizer(
    spec: str, revision: str = "", trust_remote_code: bool = False, role: str = "tokenizer"
) -> PreTrainedTokenizerBase:
    """AutoTokenizer from a hub id or local directory, with a clear error."""
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    try:
        return AutoTokenizer.from_pretrained(spec, **kwargs)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{role}: cannot load a tokenizer from '{spec}' ({first})") from None


def check_same_tokenizer(
    a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase, names: tuple[str, str] = ("teacher", "student")
) -> None:
    """Refuse different tokenizers: same length and the same id for every token."""
    if len(a) != len(b) or a.get_vocab() != b.get_vocab():
        va, vb = a.get_vocab(), b.get_vocab()
        differing = sum(1 for tok, i in va.items() if vb.get(tok) != i)
        raise ModelError(
            f"{names[0]} and {names[1]} tokenizers differ ({len(a)} vs {len(b)} tokens, {differing} ids disagree): "
            "token-level KD needs a shared tokenizer; pick a student from the teacher's family"
        )


def shared_vocab_size(tokenizer_length: int, *models: tuple[str, nn.Module]) -> int:
    """The vocabulary V every head is sliced to: the tokenizer length. Logs padded heads; refuses short ones."""
    for role, model in models:
        rows = model.get_output_embeddings().weight.shape[0]
        if rows < tokenizer_length:
            raise ModelError(
                f"{role} head has {rows} rows but the tokenizer has {tokenizer_length} tokens: "
                "the model does not cover the tokenizer; check model.tokenizer"
            )
        if rows > tokenizer_length:
            log.info(
                "%s head has %d rows (padded), tokenizer %d tokens: aligned to %d",
                role,
                rows,
                tokenizer_length,
                tokenizer_length,
            )
    return tokenizer_length


def output_head(model: nn.Module, vocab_size: int) -> Head:
    """The model's output head sliced to the shared vocabulary: weight (V, D), bias (V,) or None."""
    linear = model.get_output_embeddings()
    if linear is None or not hasattr(linear, "weight"):
        raise ModelError(f"{type(model).__name__} has no output embeddings (get_output_embeddings() is None)")
    rows = linear.weight.shape[0]
    if rows < vocab_size:
        raise ModelError(f"vocab_size={vocab_size} is larger than the model's output head ({rows} rows)")
    bias = getattr(linear, "bias", None)
    return Head(
        linear.weight[:vocab_size],  # (V, D)
        None if bias is None else bias[:vocab_size],  # (V,)
        logit_transform(model),
    )


def check_output_head(model: nn.Module, vocab_size: int, role: str = "model", tokens: int = 8) -> None:
    """Refuse a model whose logits ekd's head does not reproduce: ``forward(...).logits`` on ``tokens``
    token ids vs ``output_head`` applied to the body's last hidden states, first ``vocab_size`` columns.

    The tolerance is relative to the largest logit: 1e-4, or 4 ulps of a 16-bit model dtype. This catches any
    post-head transform ``ekd.models.head_transform`` does not know (a scale, a cap, a bias, a custom forward).

    Raises:
        ModelError: one line naming the model type and the mismatch.
    """
    head = output_head(model, vocab_size)
    ids = torch.linspace(0, vocab_size - 1, tokens).long().unsqueeze(0).to(head.weight.device)  # (1, n)
    mask = torch.ones_like(ids)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[0, :, :vocab_size]
            hidden = model_body(model)(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            got = head(hidden[0])  # (n, V)
    finally:
        model.train(was_training)
    expected, got = expected.double(), got.double()  # (n, V)
    finite = torch.isfinite(expected)
    scale = max(float(expected[finite].abs().max()) if finite.any() else 0.0, 1.0)
    error = (
        float((got - expected)[finite].abs().max()) / scale
        if torch.equal(finite, torch.isfinite(got)) and expected.shape == got.shape
        else float("inf")
    )
    low = head.weight.dtype in (torch.bfloat16, torch.float16)
    tolerance = 4 * torch.finfo(head.weight.dtype).eps if low else 1e-4
    if not error <= tolerance:
        raise ModelError(
            f"model.{role}: ekd cannot reproduce the logits of model type '{model_type(model)}' "
            f"({type(model).__name__}): forward(...).logits differ from its output head applied to the body's "
            f"hidden states by {error:.3g} of their scale (a post-head transform ekd does not know); use another model"
        )


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


def save_model_dir(model: nn.Module, tokenizer: PreTrainedTokenizerBase | None, out_dir: str | Path) -> Path:
    """Save a standard HF model directory (safetensors + tokenizer) atomically: temp dir, then rename."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    old = out_dir.with_name(out_dir.name + ".old")
    if out_dir.exists():
        if old.exists():
            shutil.rmtree(old)
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old.exists():
        shutil.rmtree(old)
    return out_dir


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ModelError(
            f"model.teacher_dtype must be auto, float32, bfloat16 or float16, got '{name}'"
        ) from None
