"""``train.activation_checkpointing``: torch's checkpoint_wrapper on every decoder layer changes memory, not
results — equal loss and gradients with and without, the same state dict keys (FSDP2 and DDP: test_fsdp)."""

from __future__ import annotations

import copy

import pytest
import torch

from ekd.errors import ModelError
from ekd.models.layers import checkpoint_decoder_layers, decoder_layers


def _model(dropout: float = 0.0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        attention_dropout=dropout,
    )
    return LlamaForCausalLM(cfg).train()


def _loss_and_grads(model, ids, seed: int = 3):
    torch.manual_seed(seed)  # the same dropout draws in both runs (the recomputation replays them)
    loss = torch.nn.functional.cross_entropy(
        model(input_ids=ids).logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()
    )
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_checkpointed_layers_give_equal_loss_and_grads(dropout):
    plain = _model(dropout)
    wrapped = copy.deepcopy(plain)
    assert checkpoint_decoder_layers(wrapped) == 3
    assert all(type(m).__name__ == "CheckpointWrapper" for m in decoder_layers(wrapped))
    assert sorted(wrapped.state_dict()) == sorted(plain.state_dict())  # the wrapper strips its prefix
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))  # (B, T)
    calls = []
    inner = decoder_layers(wrapped)[0]._checkpoint_wrapped_module
    inner.register_forward_pre_hook(lambda *_: calls.append(1))  # recomputation may stop early: pre-hook
    loss_a, grads_a = _loss_and_grads(plain, ids)
    loss_b, grads_b = _loss_and_grads(wrapped, ids)
    assert len(calls) == 2  # the layer ran in forward and again in backward (recomputed, not stored)
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=0)
    names = {n.replace("._checkpoint_wrapped_module", ""): g for n, g in grads_b.items()}
    assert sorted(names) == sorted(grads_a)
    for n, g in grads_a.items():
        torch.testing.assert_close(names[n], g, rtol=1e-6, atol=1e-7)


def test_no_decoder_layers_is_one_line():
    model = torch.nn.Module()
    model.base_model_prefix = "body"
    model.body = torch.nn.Linear(2, 2)
    with pytest.raises(ModelError, match="no list of decoder layers"):
        decoder_layers(model)
