"""EGAD's feature branch reads the hidden state ``method.feature_student_layer`` / ``feature_teacher_layer``
names: an index into transformers' ``hidden_states`` (0 the embeddings, k decoder layer k's output, −1 the final
hidden state after the last norm; docs/methods.md §7). Try-out 58, F1/F2: an index past the model's depth was an
IndexError traceback at the first step, and what an index means was unsaid."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ekd.data.collate import Batch
from ekd.errors import ConfigError
from ekd.losses.features import check_hidden_state_index
from ekd.train.step import student_hidden
from hostile import cli, one_error_line
from tiny import tiny_overrides, write_corpus


def _tiny_llama(layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return LlamaForCausalLM(config).eval()


def test_a_feature_layer_is_an_index_into_hidden_states():
    """0 is the embedding output, k the output of decoder layer k (before the final norm), −1 (= L) the final
    hidden state after the norm — what `student_hidden` hands the feature loss for each index."""
    model = _tiny_llama(layers=2)
    ids = torch.randint(0, 64, (2, 8))
    batch = Batch(
        input_ids=ids,
        labels=ids.clone(),
        attention_mask=torch.ones_like(ids),
        position_ids=torch.arange(8).expand(2, 8),
        sample_ids=torch.arange(2),
    )
    outputs = []  # each decoder layer's own output, caught by a hook
    hooks = [
        layer.register_forward_hook(
            lambda _m, _i, out: outputs.append(out[0] if isinstance(out, tuple) else out)
        )
        for layer in model.model.layers
    ]
    with torch.no_grad():
        model(input_ids=ids, position_ids=batch.position_ids)
        for hook in hooks:
            hook.remove()
        embeddings = model.get_input_embeddings()(ids)
        final = model.model.norm(outputs[-1])
        expected = {0: embeddings, 1: outputs[0], 2: final, -1: final, -2: outputs[0], -3: embeddings}
        for index, want in expected.items():
            last, features = student_hidden(model, batch, None, layer=index)
            torch.testing.assert_close(features, want, rtol=1e-5, atol=1e-6, msg=f"index {index}")
            torch.testing.assert_close(last, final, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(outputs[-1], final)  # the last layer's pre-norm output is no index of them


@pytest.mark.parametrize("index", [-3, -1, 0, 2])
def test_indices_inside_the_hidden_states_pass(index):
    check_hidden_state_index(_tiny_llama(layers=2), index, "method.feature_student_layer", "student")


@pytest.mark.parametrize("index", [3, -4, 50])
def test_indices_outside_the_hidden_states_are_refused_naming_the_range(index):
    with pytest.raises(ConfigError) as e:
        check_hidden_state_index(_tiny_llama(layers=2), index, "method.feature_teacher_layer", "teacher")
    said = str(e.value)
    assert f"method.feature_teacher_layer={index}" in said and "teacher" in said
    assert "2 decoder layers, so 0…2" in said and "-3…-1" in said, said


@pytest.mark.parametrize(
    "key, index, role", [("feature_student_layer", 5, "student"), ("feature_teacher_layer", -10, "teacher")]
)
def test_distill_with_a_feature_layer_past_the_model_is_one_line(tmp_path, capsys, key, index, role):
    """From the CLI: one error line before the first step (the 1-layer student has hidden states 0…1, the
    2-layer teacher 0…2); no traceback."""
    corpus = write_corpus(tmp_path / "corpus")
    over = tiny_overrides(tmp_path, corpus, "egad", **{"method.preset": "egad", f"method.{key}": index})
    line = one_error_line(*cli(capsys, "distill", *over)[::2])
    depth = "1 decoder layer, so 0…1" if role == "student" else "2 decoder layers, so 0…2"
    assert f"method.{key}={index} is outside the {role}'s hidden states" in line, line
    assert f"it has {depth}" in line, line


def test_distill_with_an_intermediate_feature_layer_trains(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus")
    over = tiny_overrides(
        tmp_path,
        corpus,
        "egad",
        **{"method.preset": "egad", "method.feature_student_layer": 0, "method.feature_teacher_layer": 1},
    )
    rc, _, err = cli(capsys, "distill", *over)
    assert rc == 0, err
