"""The decoder layers of a Hugging Face causal LM, and torch's activation checkpointing on each of them.

FSDP2 shards per decoder layer, activation checkpointing recomputes per decoder layer and ``ekd plan`` counts
memory per decoder layer, so all of them find the layers here (``model.<base_model_prefix>.layers``, or ``.h``
for GPT-2-style bodies): never read ``.layers`` of a body directly.
"""

from __future__ import annotations

from functools import partial

from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    ActivationWrapper,
    CheckpointImpl,
    apply_activation_checkpointing,
    checkpoint_wrapper,
)

from ekd.errors import ModelError
from ekd.models.load import model_body

LAYER_LISTS = ("layers", "h")
"""Attribute names of the decoder-layer list in a Hugging Face body: Llama-style ``layers``, GPT-2-style ``h``."""


def decoder_layers(
    model: nn.Module, needed_by: str = "train.parallel=fsdp and train.activation_checkpointing need one"
) -> nn.ModuleList:
    """The body's list of decoder layers.

    Args:
        needed_by: what needs the list, for the error (the end of its one line).

    Raises:
        ModelError: the body has no ``layers``/``h`` ModuleList (not a Hugging Face decoder-only LM, or one
            whose layers sit deeper, e.g. OPT's ``decoder.layers``).
    """
    body = model_body(model)
    for name in LAYER_LISTS:
        layers = getattr(body, name, None)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return layers
    raise ModelError(
        f"{type(model).__name__} has no list of decoder layers (.layers or .h) in its body: {needed_by}"
    )


def checkpoint_decoder_layers(model: nn.Module) -> int:
    """Wrap every decoder layer in torch's non-reentrant ``checkpoint_wrapper`` (in place): its activations
    are recomputed in backward instead of stored. Returns the number of layers wrapped.

    Non-reentrant: works with parameters a micro-batch leaves unused (DDP), with FSDP2's hooks around the
    wrapped layer (apply before ``fully_shard``), and keeps dropout's RNG state for the recomputation. State
    dict keys are unchanged (the wrapper strips its prefix).
    """
    layers = set(decoder_layers(model))
    apply_activation_checkpointing(
        model,
        checkpoint_wrapper_fn=partial(checkpoint_wrapper, checkpoint_impl=CheckpointImpl.NO_REENTRANT),
        check_fn=lambda m: m in layers,
    )
    return len(layers)


def uncheckpoint_decoder_layers(model: nn.Module) -> int:
    """Undo :func:`checkpoint_decoder_layers` (in place): every wrapped decoder layer is put back in its list, so
    module names are the model's own again (``layers.0.mlp``, not ``layers.0._checkpoint_wrapped_module.mlp``).
    State dicts never see the wrapper, but code that walks module names does — peft's adapter export finds its
    tensors by them and wrote an empty adapter. Not for a model sharded by FSDP2 (its hooks sit on the wrappers).
    Returns the number of layers unwrapped."""
    layers = decoder_layers(model)
    wrapped = [i for i, layer in enumerate(layers) if isinstance(layer, ActivationWrapper)]
    for i in wrapped:
        layers[i] = layers[i]._checkpoint_wrapped_module
    return len(wrapped)


# modules that wrap a layer without changing its state-dict keys: activation checkpointing, torch.compile
WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_orig_mod.")


def state_dict_name(name: str) -> str:
    """A parameter's name (``named_parameters``) as state dicts and ``get_state_dict``'s optimizer keys spell
    it: without the prefixes of wrappers (``layers.0._checkpoint_wrapped_module.mlp.w`` → ``layers.0.mlp.w``).
    Compare names with state-dict keys only through this."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name
