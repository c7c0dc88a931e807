"""A model that does not keep packed documents apart is refused under data.document_attention=isolated
(ekd.models.isolation), instead of training on documents that silently see their neighbours.

Right values (a tiny random model of each family, fp32, measured by feeding the same document after two
different neighbours, tests/test_document_attention.py's method): Llama, Qwen2, GPT-2, Mistral, Gemma 2/3, Phi-3,
GPT-NeoX, GPT-J, StableLM, Starcoder2 give the same hidden states (difference 0); OPT (positions from the attention
mask), MPT and BLOOM (ALiBi over the whole row) and Falcon do not (0.01–0.4 of their scale).
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    BloomConfig,
    GPT2Config,
    LlamaConfig,
    MptConfig,
    OPTConfig,
    Qwen2Config,
)

from ekd.cli import main
from ekd.errors import ModelError
from ekd.models.isolation import check_document_isolation
from hostile import one_error_line
from tiny import tiny_overrides, write_corpus

V = 320  # the tiny runs' BPE vocabulary

ISOLATING = {
    "llama": lambda: LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
    ),
    "qwen2": lambda: Qwen2Config(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
    ),
    "gpt2": lambda: GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=2, n_positions=128),
}
MIXING = {
    "opt": lambda: OPTConfig(
        vocab_size=V,
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        word_embed_proj_dim=32,
        max_position_embeddings=128,
    ),
    "mpt": lambda: MptConfig(vocab_size=V, d_model=32, n_heads=2, n_layers=2, max_seq_len=128),
    "bloom": lambda: BloomConfig(vocab_size=V, hidden_size=32, n_layer=2, n_head=2),
}


def _model(make, attn: str = "eager") -> torch.nn.Module:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(make(), attn_implementation=attn).eval()


@pytest.mark.parametrize("family", list(ISOLATING))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_families_that_isolate_documents_pass(family: str, dtype: torch.dtype) -> None:
    check_document_isolation(_model(ISOLATING[family], "sdpa").to(dtype), V, "student")


@pytest.mark.parametrize("family", list(MIXING))
def test_families_that_mix_documents_are_one_line(family: str) -> None:
    with pytest.raises(ModelError) as e:
        check_document_isolation(_model(MIXING[family]), V, "teacher")
    message = str(e.value)
    assert message.startswith(f"model.teacher: model type '{family}'") and "\n" not in message
    assert "does not keep packed documents apart" in message
    assert message.endswith(
        "set data.document_attention=packed (documents then attend to the earlier ones in their block)"
    )


def test_distill_refuses_an_opt_student_unless_documents_are_packed(tmp_path, capsys) -> None:
    """From the CLI: the default (isolated) stops before training with one line; packed trains."""
    from ekd.data.tokenizer import train_bpe_tokenizer

    corpus = write_corpus(tmp_path / "corpus", n_docs=12)
    student = tmp_path / "opt-student"
    tokenizer = train_bpe_tokenizer([p.read_text() for p in sorted(corpus.iterdir())], V)
    model = _model(lambda: OPTConfig(**{**MIXING["opt"]().to_dict(), "vocab_size": len(tokenizer)}))
    model.save_pretrained(student)
    tokenizer.save_pretrained(student)
    extra = {"model.student": str(student), "model.tokenizer": "student", "train.max_steps": 1}
    over = tiny_overrides(tmp_path, corpus, "opt", **extra)
    capsys.readouterr()
    rc, err = main(["distill", *over]), capsys.readouterr().err
    line = one_error_line(rc, err)
    assert "model.student: model type 'opt'" in line and "data.document_attention=packed" in line
    assert not (tmp_path / "runs" / "opt" / "student").exists()
    assert main(["-q", "distill", *over, "data.document_attention=packed", "--overwrite"]) == 0
    assert (tmp_path / "runs" / "opt" / "student" / "config.json").is_file()


@pytest.mark.parametrize("positions", [8, 20])
def test_a_model_with_few_positions_is_probed_within_them(positions: int) -> None:
    """The probe's documents (a 32-token neighbour) must fit a model's positions: GPT-2 with n_positions=8 was an
    index error, not a verdict."""
    make = lambda: GPT2Config(vocab_size=V, n_embd=16, n_layer=1, n_head=2, n_positions=positions)  # noqa: E731
    check_document_isolation(_model(make), V, "student")
