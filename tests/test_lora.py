"""LoRA / PEFT students (issue 15 part 3): only the adapters (and the head, if asked) train through the fused
chunked head; the base weights stay bit-identical; checkpoints hold the trained tensors and resume exactly;
the merged export's logits equal the adapter model's; the adapter export reloads with peft."""

from __future__ import annotations

import json
import logging
import sys

import pytest
import safetensors.torch
import torch
from transformers import AutoModelForCausalLM

from ekd.cli import main
from ekd.config import ConfigError, load_config
from ekd.models import lora as lora_mod
from ekd.models.load import build_preset
from ekd.train.trainer import train
from tiny import crash_then_resume, loss_curve, tiny_overrides, write_corpus

peft = pytest.importorskip("peft")

LORA = {"model.lora_r": 4, "model.lora_alpha": 8, "eval.teacher": False}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), n_docs=16)


def _run(tmp_path, corpus, name, monkeypatch=None, **extra):
    """Train a tiny LoRA run; with ``monkeypatch``, also return the LoraStudent it trained."""
    held = []
    if monkeypatch is not None:
        real = lora_mod.LoraStudent.wrap.__func__

        def wrap(cls, student, model_cfg):
            held.append(real(cls, student, model_cfg))
            return held[-1]

        monkeypatch.setattr(lora_mod.LoraStudent, "wrap", classmethod(wrap))
    cfg = load_config(overrides=tiny_overrides(tmp_path, corpus, name, **{**LORA, **extra}))
    return train(cfg), cfg, (held[0] if held else None)


def _base(run_dir, preset: str) -> torch.nn.Module:
    """The student's base model rebuilt from the exported adapter's ``ekd_base.json``."""
    note = json.loads((run_dir / "student" / lora_mod.BASE_NOTE).read_text())
    assert note["base_model"] == f"preset:{preset}"
    return build_preset(preset, note["head_rows"], note["eos_token_id"], note["seed"])


def _ids(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(0))  # (2, 12)


@pytest.mark.parametrize(
    "student, train_head",
    [("llama-micro", False), ("llama-micro-tied", True)],
    ids=["adapters-only", "tied-head-trained"],
)
def test_only_trained_tensors_change_and_the_base_is_bit_identical(
    tmp_path, corpus, monkeypatch, student, train_head
):
    result, cfg, lora = _run(
        tmp_path,
        corpus,
        "only",
        monkeypatch,
        **{
            "model.student": f"preset:{student}",
            "model.lora_train_head": train_head,
            "model.lora_export": "adapter",
        },
    )
    fresh = _base(result.run_dir, student)
    head = {"lm_head.weight", "model.embed_tokens.weight"} if train_head else set()
    trained = lora_mod.trainable_names(lora.model)
    assert {n for n in trained if "lora_" not in n} == head
    base = dict(fresh.named_parameters(remove_duplicate=False))
    changed_lora = 0
    for name, p in lora.model.named_parameters(remove_duplicate=False):
        if "lora_B" in name:
            changed_lora += bool(p.detach().abs().max() > 0)  # B starts at 0: it moved
            continue
        if "lora_A" in name:
            continue
        plain = name.replace(".base_layer", "")
        if name in head:
            assert not torch.equal(p, base[plain]), name  # the head trained
        else:
            assert torch.equal(p, base[plain]), name  # bit-identical base weight
    assert changed_lora == sum("lora_B" in n for n in trained) > 0
    # the checkpoint holds exactly the trained tensors (tied aliases once)
    ckpt = result.run_dir / "checkpoints" / "step-000003" / "student.safetensors"
    saved = set(safetensors.torch.load_file(str(ckpt)))
    assert saved <= trained and {n for n in trained if "lora_" in n} <= saved
    assert bool(saved & head) == train_head


@pytest.mark.parametrize(
    "train_head, checkpointing",
    [(False, False), (True, False), (False, True)],
    ids=["adapters", "adapters+head", "activation-checkpointing"],
)
def test_merged_export_equals_the_adapter_model_and_the_adapter_reloads(
    tmp_path, corpus, train_head, checkpointing
):
    """Try-out 15: with train.activation_checkpointing (on in the README's Qwen config) the adapter export held no
    tensor — peft finds adapters by module name, and the layers' wrappers renamed them — and reloaded as the
    untrained base, which `ekd eval RUN` then scored."""
    extra = {
        "model.lora_train_head": train_head,
        "model.lora_dropout": 0.1,
        "train.activation_checkpointing": checkpointing,
    }
    adapter, cfg, _ = _run(tmp_path, corpus, "adapter", **extra, **{"model.lora_export": "adapter"})
    merged, _, _ = _run(tmp_path, corpus, "merged", **extra, **{"model.lora_export": "merged"})
    assert loss_curve(adapter.run_dir) == loss_curve(merged.run_dir)  # one training, two exports

    shipped = safetensors.torch.load_file(str(adapter.run_dir / "student" / "adapter_model.safetensors"))
    ckpt = safetensors.torch.load_file(
        str(adapter.run_dir / "checkpoints" / "step-000003" / "student.safetensors")
    )
    assert sum("lora_" in k for k in shipped) == sum("lora_" in k for k in ckpt) > 0  # every trained adapter
    assert not any("embed_tokens" in k for k in shipped), list(
        shipped
    )  # try-out 33: untrained, fp32, 2 GB at 7B
    assert any("lm_head" in k for k in shipped) == train_head
    reloaded = peft.PeftModel.from_pretrained(
        _base(adapter.run_dir, "llama-micro"), adapter.run_dir / "student"
    )
    plain = AutoModelForCausalLM.from_pretrained(merged.run_dir / "student")
    assert not any("lora" in k for k in plain.state_dict())  # a plain HF directory
    reloaded.eval(), plain.eval()
    ids = _ids(plain.config.vocab_size)
    with torch.no_grad():
        a = reloaded(input_ids=ids).logits.double()
        m = plain(input_ids=ids).logits.double()
        base = _base(adapter.run_dir, "llama-micro").eval()(input_ids=ids).logits.double()
    assert (a - base).abs().max() > 1e-4  # the adapter changes the logits
    torch.testing.assert_close(m, a, atol=1e-5, rtol=0)
    # ekd eval reloads either export: the adapter onto its rebuilt base
    for run in (adapter, merged):
        assert main(["eval", str(run.run_dir)]) == 0
        again = json.loads((run.run_dir / "eval.json").read_text())["eval"]
        assert again["ppl"] == pytest.approx(run.eval["eval"]["ppl"], rel=1e-5)


def test_resume_is_exact(tmp_path, corpus, monkeypatch):
    extra = {
        **LORA,
        "train.max_steps": 6,
        "train.checkpoint_every": 3,
        "model.lora_train_head": True,
        "model.lora_dropout": 0.1,
        "model.lora_export": "adapter",
    }
    expected = train(load_config(overrides=tiny_overrides(tmp_path, corpus, "full", **extra)))
    cfg = load_config(overrides=tiny_overrides(tmp_path, corpus, "crash", **extra))
    got = crash_then_resume(cfg, monkeypatch)
    assert loss_curve(got.run_dir) == loss_curve(expected.run_dir)
    a = safetensors.torch.load_file(str(expected.run_dir / "student" / "adapter_model.safetensors"))
    b = safetensors.torch.load_file(str(got.run_dir / "student" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_full_checkpoint_does_not_resume_as_lora(tmp_path, corpus, capsys):
    overrides = tiny_overrides(tmp_path, corpus, "switch", **{"eval.teacher": False, "train.max_steps": 2})
    assert main(["distill", *overrides]) == 0
    capsys.readouterr()
    assert main(["distill", "--resume", *overrides, "model.lora_r=4", "train.max_steps=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ekd: error: "), err


@pytest.mark.parametrize(
    "override, words",
    [
        ("model.lora_target_modules=[lm_head]", "reaches the output head"),
        ("model.lora_target_modules=[no_such_proj]", "does not fit"),
        ("model.lora_train_head=true", "model.lora_r > 0"),
    ],
)
def test_bad_lora_settings_are_one_line(tmp_path, corpus, capsys, override, words):
    lora = [] if override.startswith("model.lora_train_head") else ["model.lora_r=4"]
    overrides = tiny_overrides(tmp_path, corpus, "bad", **{"train.max_steps": 1})
    assert main(["distill", *overrides, *lora, override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def test_missing_peft_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft → ImportError
    cfg = load_config(overrides=["model.lora_r=4"])
    with pytest.raises(ConfigError, match=r"pip install 'ekd\[lora\]'"):
        lora_mod.LoraStudent.wrap(build_preset("llama-micro", 64), cfg.model)


def test_an_adapter_export_missing_trained_tensors_is_refused_and_writes_nothing(tmp_path):
    """The guard behind the fix above: if peft's export would miss adapters that trained (here the layers are left
    wrapped for activation checkpointing), save_adapter raises one ModelError line and writes no directory."""
    from ekd.config import ModelConfig
    from ekd.errors import ModelError
    from ekd.models.layers import checkpoint_decoder_layers, uncheckpoint_decoder_layers

    student = build_preset("llama-micro", 64, 0, 0)
    lora = lora_mod.LoraStudent.wrap(student, ModelConfig(lora_r=4, lora_alpha=8))
    checkpoint_decoder_layers(student)
    with pytest.raises(ModelError, match=r"would hold 0 of the 14 adapter tensors") as e:
        lora.save_adapter(None, tmp_path / "student", {})
    assert "\n" not in str(e.value) and not (tmp_path / "student").exists()
    assert uncheckpoint_decoder_layers(student) == 1
    lora.save_adapter(None, tmp_path / "student", {})
    shipped = safetensors.torch.load_file(str(tmp_path / "student" / "adapter_model.safetensors"))
    assert sum("lora_" in k for k in shipped) == 14


def test_a_gpt2_student_gets_fan_in_fan_out_without_peft_warning():
    """Try-out 17: peft warned 'fan_in_fan_out is set to False but the target module is Conv1D' on every GPT-2
    LoRA run (and set it itself); ekd sets it for Conv1D layers, and the adapters start as the identity."""
    import warnings

    from transformers import AutoConfig

    from ekd.config import ModelConfig

    config = AutoConfig.for_model("gpt2", vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=32)
    student = AutoModelForCausalLM.from_config(config).eval()
    ids = _ids(64)
    with torch.no_grad():
        before = student(input_ids=ids).logits
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        lora = lora_mod.LoraStudent.wrap(student, ModelConfig(lora_r=4, lora_alpha=8))
    assert lora.wrapper.peft_config["default"].fan_in_fan_out
    with torch.no_grad():
        torch.testing.assert_close(student(input_ids=ids).logits, before)  # B = 0: the base model's logits


def test_a_base_changed_in_place_is_refused_by_resume_and_eval(tmp_path, corpus, capsys):
    """try-out 33: a LoRA run's base rebuilt in place (`ekd student init … --overwrite`) was resumed on without a
    word, and `ekd eval` applied the run's adapter to it: ppl 477 for the run's 3.13, written over eval.json. The
    run records its base's identity; both refuse another base in one line, nothing written."""
    from transformers import AutoTokenizer

    first, _, _ = _run(tmp_path, corpus, "tok")  # a run of a preset student: its trained tokenizer
    tokenizer = AutoTokenizer.from_pretrained(first.run_dir / "tokenizer")
    base = tmp_path / "base"
    build_preset("llama-micro", len(tokenizer), tokenizer.eos_token_id, 0).save_pretrained(base)
    tokenizer.save_pretrained(base)
    extra = {
        "model.student": base,
        "model.tokenizer": first.run_dir / "tokenizer",
        "model.lora_export": "adapter",
        "train.checkpoint_every": 1,
    }
    run, _, _ = _run(tmp_path, corpus, "on-base", **extra)
    marker = json.loads((run.run_dir / "ekd-run.json").read_text())
    assert marker["student_base"]["revision"].startswith("safetensors-sha256:")
    assert main(["-q", "eval", str(run.run_dir)]) == 0, capsys.readouterr().err  # the same base: evaluated
    before = (run.run_dir / "eval.json").read_bytes()
    build_preset("llama-micro", len(tokenizer), tokenizer.eos_token_id, 1).save_pretrained(base)  # rebuilt
    assert main(["eval", str(run.run_dir)]) == 2
    err = capsys.readouterr().err
    assert "is a LoRA adapter on" in err and "whose weights changed since the run trained it" in err, err
    assert "was damaged" not in err  # re-exporting the adapter cannot help (try-out 138, F3)
    assert (run.run_dir / "eval.json").read_bytes() == before
    base.rename(tmp_path / "base-moved")  # gone, not changed: said so (try-out 138, F3)
    assert main(["eval", str(run.run_dir)]) == 2
    err = capsys.readouterr().err
    assert f"is a LoRA adapter on {base}, which is not there any more" in err and "was damaged" not in err, (
        err
    )
    (tmp_path / "base-moved").rename(base)
    overrides = tiny_overrides(tmp_path, corpus, "on-base", **{**LORA, **extra, "train.max_steps": 5})
    assert main(["distill", *overrides, "--resume"]) == 2
    assert "is not the base this LoRA run trained its adapters on" in capsys.readouterr().err


def _tiny_moe():
    from transformers import AutoConfig

    config = AutoConfig.for_model(
        "qwen2_moe", vocab_size=64, hidden_size=16, intermediate_size=32, moe_intermediate_size=8,
        shared_expert_intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        num_experts=4, num_experts_per_tok=2,
    )  # fmt: skip
    return AutoModelForCausalLM.from_config(config)


def test_lora_on_experts_peft_adapts_does_not_say_they_stay_frozen(caplog):
    """Try-out 145, F2: peft 0.21 adapts Mixtral's fused experts and router (its ParamWrapper: the export's expert
    weights change), yet the warning said they stay frozen and told the user to give up LoRA to train them."""
    pytest.importorskip("peft")
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = MixtralForCausalLM(config)
    with caplog.at_level(logging.WARNING, logger="ekd.models.lora"):
        lora_mod.LoraStudent.wrap(model, load_config(overrides=["model.lora_r=4"]).model)
    assert not [r.getMessage() for r in caplog.records if "LoRA adapts" in r.getMessage()]
    experts = [n for n, p in model.named_parameters() if p.requires_grad and ".experts." in n]
    assert experts, "the experts' adapters train"


def test_lora_on_a_mixture_of_experts_says_its_experts_stay_frozen(caplog):
    """Try-out 135, F2: `all-linear` cannot reach transformers 5's fused experts (3-D parameters) and router, so LoRA
    on a MoE student left them frozen — 46% of its parameters — while the log read as for a dense model; naming
    them was refused with a cut module repr for a reason."""
    pytest.importorskip("peft")
    cfg = load_config(overrides=["model.lora_r=4"])
    with caplog.at_level(logging.WARNING, logger="ekd.models.lora"):
        lora_mod.LoraStudent.wrap(_tiny_moe(), cfg.model)
    said = [r.getMessage() for r in caplog.records if "LoRA adapts linear layers" in r.getMessage()]
    assert len(said) == 1 and "Qwen2MoeExperts (" in said[0] and "stay frozen" in said[0], said
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ekd.models.lora"):
        lora_mod.LoraStudent.wrap(build_preset("llama-micro", 64), cfg.model)  # a dense model: nothing said
    assert not [r for r in caplog.records if "LoRA adapts" in r.getMessage()]
    named = load_config(overrides=["model.lora_r=4", "model.lora_target_modules=[experts]"])
    with pytest.raises(ConfigError) as e:
        lora_mod.LoraStudent.wrap(_tiny_moe(), named.model)
    assert (
        "(Qwen2MoeExperts is no layer peft adapts: it adapts linear layers); name its linear layers"
        in str(e.value)
    ), e.value
    router = load_config(overrides=["model.lora_r=4", "model.lora_target_modules=[gate]"])
    with pytest.raises(ConfigError) as e:  # a module without children: its repr on one line (try-out 139, F8)
        lora_mod.LoraStudent.wrap(_tiny_moe(), router.model)
    assert "(Qwen2MoeTopKRouter is no layer peft adapts: it adapts linear layers)" in str(e.value), e.value
