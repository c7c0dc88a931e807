"""Heads whose logits are not h·Wᵀ (Granite's scaling, Cohere's scale, Gemma-2's soft-cap): ekd's head, KD,
CE, token statistics and evaluation all equal a float64 reference built from ``model(...).logits``; a model
whose head ekd cannot reproduce is refused in one line."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    CohereConfig,
    CohereForCausalLM,
    FalconH1Config,
    FalconH1ForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    GraniteConfig,
    GraniteForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

from ekd.data.collate import Batch, shift_labels
from ekd.errors import ModelError
from ekd.eval import evaluate
from ekd.losses.divergences import forward_kl
from ekd.losses.head_loss import ce_loss_sum, kd_loss_sum
from ekd.losses.logit_transform import LogitTransform, transformed_chunk_loss
from ekd.losses.targets import DenseTarget
from ekd.models.load import check_output_head, model_body, output_head
from ekd.train.token_stats import token_stats

V, B, T = 61, 2, 9
COMMON = dict(
    vocab_size=V,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)


def _granite(seed=0):
    torch.manual_seed(seed)
    return GraniteForCausalLM(GraniteConfig(**COMMON, logits_scaling=4.0)).eval()


def _cohere(seed=1):
    torch.manual_seed(seed)
    return CohereForCausalLM(CohereConfig(**COMMON, logit_scale=0.3)).eval()


def _gemma2(seed=2):
    torch.manual_seed(seed)
    model = Gemma2ForCausalLM(Gemma2Config(**COMMON, head_dim=8, final_logit_softcapping=3.0)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)  # logits of ±10: the cap bends them (tanh(10/3) ≈ 1)
    return model


def _falcon_h1(seed=3):
    torch.manual_seed(seed)
    config = FalconH1Config(
        **COMMON,
        lm_head_multiplier=0.5,
        mamba_d_ssm=32,
        mamba_n_heads=4,
        mamba_d_head=8,
        mamba_n_groups=1,
        mamba_d_state=8,
        mamba_chunk_size=8,
        eos_token_id=0,
        pad_token_id=0,
        bos_token_id=0,
    )
    return FalconH1ForCausalLM(config).eval()


BUILDERS = {"granite": _granite, "cohere": _cohere, "gemma2": _gemma2, "falcon_h1": _falcon_h1}


def _ids(seed=0) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))  # (B, T)


def _hidden(model, ids) -> torch.Tensor:
    return model_body(model)(
        input_ids=ids, attention_mask=torch.ones_like(ids)
    ).last_hidden_state  # (B, T, D)


@pytest.mark.parametrize("arch", list(BUILDERS))
def test_head_reproduces_forward_logits(arch):
    model = BUILDERS[arch]()
    ids = _ids()
    with torch.no_grad():
        want = model(input_ids=ids).logits  # (B, T, V)
        got = output_head(model, V)(_hidden(model, ids))  # (B, T, V)
    assert not output_head(model, V).transform.is_identity
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    check_output_head(model, V, "teacher")  # accepted


def _reference_loss(student64, teacher64, ids, labels, tau: float, ce_weight: float) -> torch.Tensor:
    """τ²·Σ KL(p_t‖q_s) at τ + ce_weight·Σ CE, from model(...).logits in float64 (no ekd code)."""
    zs = student64(input_ids=ids).logits.reshape(-1, V)  # (B·T, V)
    with torch.no_grad():
        zt = teacher64(input_ids=ids).logits.reshape(-1, V)
    log_p = torch.log_softmax(zt / tau, -1)
    log_q = torch.log_softmax(zs / tau, -1)
    kd = tau**2 * (log_p.exp() * (log_p - log_q)).sum()
    return kd + ce_weight * F.cross_entropy(zs, labels.reshape(-1), reduction="sum")


@pytest.mark.parametrize("path", ["chunked", "reference"])
@pytest.mark.parametrize(
    "student_arch, teacher_arch",
    [("granite", "cohere"), ("cohere", "gemma2"), ("gemma2", "granite"), ("falcon_h1", "granite")],
)
def test_kd_and_ce_values_and_gradients_equal_float64_reference(student_arch, teacher_arch, path):
    student, teacher = BUILDERS[student_arch](), BUILDERS[teacher_arch]()
    ids = _ids(1)
    labels = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(2))
    tau, ce_weight = 2.0, 0.5

    student64, teacher64 = copy.deepcopy(student).double(), copy.deepcopy(teacher).double()
    want = _reference_loss(student64, teacher64, ids, labels, tau, ce_weight)
    want.backward()

    h_s = _hidden(student, ids).reshape(B * T, -1)  # (M, Ds)
    with torch.no_grad():
        h_t = _hidden(teacher, ids).reshape(B * T, -1)  # (M, Dt)
    head = output_head(student, V)
    target = DenseTarget(h_t, output_head(teacher, V))
    kd = kd_loss_sum(h_s, head, target, tau, torch.ones(B * T), forward_kl, path=path, chunk_size=7)
    ce = ce_loss_sum(h_s, head, labels.reshape(-1), path=path, chunk_size=7)
    got = kd + ce_weight * ce
    got.backward()

    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    ref_grads = dict(student64.named_parameters())
    for name, p in student.named_parameters():
        if ref_grads[name].grad is None:
            continue
        want_grad = ref_grads[name].grad
        error = float((p.grad.double() - want_grad).norm() / want_grad.norm().clamp_min(1e-12))
        assert error < 1e-4, (name, error)  # fp32 body and head vs float64: relative Frobenius error


def test_softcap_chain_rule_matches_autograd():
    """The fused head's gradient on raw logits a: ∂loss/∂z·(multiplier/divisor)·(1 − tanh²), vs autograd."""
    g = torch.Generator().manual_seed(0)
    a = (torch.randn(5, 13, generator=g, dtype=torch.float64) * 20).requires_grad_()
    transform = LogitTransform(multiplier=1.5, divisor=2.0, softcap=4.0)
    weights = torch.randn(5, 13, generator=g, dtype=torch.float64)

    def loss_on_z(z, start, end):  # Σ w·z and its gradient w
        return (weights * z).sum(), weights.clone()

    loss, grad = transformed_chunk_loss(loss_on_z, transform)(a.detach().clone(), 0, 5)
    want = (weights * 4.0 * torch.tanh(a * 1.5 / 2.0 / 4.0)).sum()
    want.backward()
    assert float(loss) == pytest.approx(float(want.detach()), rel=1e-12)
    torch.testing.assert_close(grad, a.grad, rtol=1e-12, atol=1e-12)


def test_token_stats_and_eval_equal_float64_reference():
    """Teacher entropy / log p(gold), eval loss, perplexity and KL(t‖s) on Granite-style heads."""
    student, teacher = _cohere(), _granite()
    ids = _ids(3)
    target = torch.ones_like(ids, dtype=torch.bool)
    target[:, 0] = False
    labels = shift_labels(ids, target)  # (B, T), −100 at the last position
    keep = labels != -100
    with torch.no_grad():
        zt = teacher.double()(input_ids=ids).logits[keep]  # (N, V) float64 reference
        zs = student.double()(input_ids=ids).logits[keep]
    teacher.float(), student.float()
    log_p, log_q = torch.log_softmax(zt, -1), torch.log_softmax(zs, -1)
    gold = labels[keep]

    with torch.no_grad():
        stats = token_stats(
            {"teacher_entropy", "teacher_logp_gold"},
            labels,
            teacher_hidden=_hidden(teacher, ids),
            teacher_head=output_head(teacher, V),
            chunk_rows=4,
        )
    torch.testing.assert_close(
        stats["teacher_entropy"][keep].double(), -(log_p.exp() * log_p).sum(-1), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        stats["teacher_logp_gold"][keep].double(), log_p.gather(-1, gold[:, None])[:, 0], rtol=1e-5, atol=1e-5
    )

    batch = Batch(ids, labels, torch.ones_like(ids), torch.arange(B))
    got, _ = evaluate(student, [batch], teacher, vocab_size=V, chunk_rows=5)
    nll = -log_q.gather(-1, gold[:, None]).mean()
    assert got["loss"] == pytest.approx(float(nll), rel=1e-5)
    assert got["ppl"] == pytest.approx(float(nll.exp()), rel=1e-5)
    assert got["kl"] == pytest.approx(float((log_p.exp() * (log_p - log_q)).sum(-1).mean()), rel=1e-4)
    teacher_metrics, _ = evaluate(teacher, [batch], None, vocab_size=V, chunk_rows=5)
    teacher_nll = -log_p.gather(-1, gold[:, None]).mean()
    assert teacher_metrics["ppl"] == pytest.approx(float(teacher_nll.exp()), rel=1e-5)


def test_granite_teacher_step_kd_equals_model_logits(tmp_path):
    """The issue's case through the trainer's step: a 2-layer Granite teacher (logits_scaling=4), method=kd,
    τ=2: the step's KD loss is mean τ²·KL(p_t‖q_s) over valid tokens of model(...).logits (float64)."""
    from ekd.config import load_config
    from ekd.train.method_parts import MethodParts
    from ekd.train.prepare import build_teacher_source, load_student, load_teacher, prepare_data
    from ekd.train.trainer import forward_backward
    from tiny import tiny_overrides, write_corpus

    corpus = write_corpus(tmp_path / "corpus", n_docs=8)
    overrides = [
        "model.teacher=preset:granite-tiny",
        "method=kd",
        "method.ce_weight=0",
        "method.kd_temperature=2",
    ]
    cfg = load_config(overrides=tiny_overrides(tmp_path, corpus) + overrides)
    data = prepare_data(cfg, tmp_path / "prep")
    cpu = torch.device("cpu")
    student, teacher_model = load_student(cfg, data, cpu), load_teacher(cfg, data, cpu)
    parts = MethodParts.build(cfg, cfg.train.max_steps)
    teacher = build_teacher_source(cfg, data, cpu, teacher_model)
    vocab = data.vocab_size
    ids = torch.randint(0, vocab, (4, 32), generator=torch.Generator().manual_seed(0))  # (B, T), one document
    target = torch.ones_like(ids, dtype=torch.bool)
    target[:, 0] = False
    batch = Batch(ids, shift_labels(ids, target), torch.ones_like(ids), torch.arange(4))
    keep = batch.labels != -100
    with torch.no_grad():
        zs = copy.deepcopy(student).double()(input_ids=ids).logits[keep][:, :vocab]  # (N, V)
        zt = copy.deepcopy(teacher_model).double()(input_ids=ids).logits[keep][:, :vocab]
    log_p, log_q = torch.log_softmax(zt / 2, -1), torch.log_softmax(zs / 2, -1)
    want = 4 * (log_p.exp() * (log_p - log_q)).sum(-1).mean()

    loss, _, kd_count, _, _, _, _ = forward_backward(
        [batch], student, teacher, parts, 0, cfg, vocab, None, tmp_path
    )
    assert kd_count == keep.sum()
    assert loss == pytest.approx(float(want), rel=1e-5)


class _ScaledLlama(LlamaForCausalLM):
    """A causal LM whose forward multiplies the logits by 1.5: a transform ekd does not know."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 1.5
        return out


def _scaled_llama():
    torch.manual_seed(0)
    return _ScaledLlama(LlamaConfig(**COMMON))


def test_unknown_head_transform_is_refused_in_one_line():
    with pytest.raises(ModelError) as e:
        check_output_head(_scaled_llama(), V, "teacher")
    message = str(e.value)
    assert "\n" not in message and "model.teacher" in message and "'llama'" in message


def test_load_teacher_refuses_an_unknown_head_transform(monkeypatch):
    """Through the loader the trainer uses: the check runs on every model ekd loads."""
    from ekd.config import load_config
    from ekd.models import load as load_mod
    from ekd.train.prepare import PreparedData, load_teacher

    def loaded(*args, output_loading_info=False, **kwargs):  # as transformers answers, every tensor found
        return (_scaled_llama(), {"missing_keys": set()}) if output_loading_info else _scaled_llama()

    monkeypatch.setattr(load_mod.AutoModelForCausalLM, "from_pretrained", loaded)
    monkeypatch.setattr(load_mod, "hub_kwargs", lambda *a, **k: {})  # the faked hub answers, network or not

    class _Tokenizer:
        eos_token_id = 0

        def __len__(self):
            return V

    cfg = load_config(overrides=["model.teacher=some-org/scaled-model", "run.device=cpu"])
    with pytest.raises(ModelError, match="cannot reproduce the logits of model type 'llama'"):
        load_teacher(cfg, PreparedData(_Tokenizer(), {}), torch.device("cpu"))


class _CappedLlama(LlamaForCausalLM):
    """A causal LM whose forward soft-caps its logits at 30 (custom code; no config key says so)."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = 30.0 * torch.tanh(out.logits / 30.0)
        return out


class _ClampedLlama(LlamaForCausalLM):
    """A causal LM whose forward clamps its logits to ±``bound`` (custom code; no config key says so)."""

    bound = 100.0

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits.clamp(-self.bound, self.bound)
        return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("arch", list(BUILDERS))
def test_known_transforms_are_accepted_in_every_dtype(arch, dtype):
    """The 16-bit factor test (try-out 81, F3) must not refuse what ekd reproduces: each family in each dtype,
    its head at random init and scaled up to trained-model logits."""
    for grow in (1.0, 16.0):
        model = copy.deepcopy(BUILDERS[arch]())
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(grow)
        check_output_head(model.to(dtype), V, "teacher")


@pytest.mark.parametrize("arch", [*BUILDERS, "llama-tied-bf16"])
def test_known_transforms_stay_accepted_on_freshly_initialised_models(arch):
    """The second probe (the head's weights scaled up so the logits near PROBE_LOGIT) must not refuse what ekd
    reproduces — each family's transform on its own random init (Gemma-2's head not scaled up), a tied head in
    bf16 — and must leave every weight as it was, bit for bit."""
    from ekd.models.load import PROBE_LOGIT, _head_probe, _scaled_head

    if arch == "gemma2":
        torch.manual_seed(2)
        model = Gemma2ForCausalLM(Gemma2Config(**COMMON, head_dim=8, final_logit_softcapping=3.0)).eval()
    elif arch == "llama-tied-bf16":
        torch.manual_seed(4)
        model = LlamaForCausalLM(LlamaConfig(**COMMON, tie_word_embeddings=True)).to(torch.bfloat16).eval()
    else:
        model = BUILDERS[arch]()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check_output_head(model, V, "student")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    ids = torch.arange(8).view(1, 8)
    plain, _ = _head_probe(model, output_head(model, V), ids, V)
    with _scaled_head(model, PROBE_LOGIT / float(plain.abs().max())):
        logits, got = _head_probe(model, output_head(model, V), ids, V)
    assert float(logits.abs().max()) > 4 * float(plain.abs().max())  # forward's logits grew
    tolerance = 4 * torch.finfo(torch.bfloat16).eps if arch == "llama-tied-bf16" else 1e-4
    assert float((got - logits[0]).abs().max()) <= tolerance * float(logits[0].abs().max())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_an_opt_model_whose_forward_skips_its_body_module_passes_the_second_probe():
    """OPT's forward calls ``model.decoder``, not the body ekd calls (``model``): the second probe must act where
    both read (the head's weights), not on the body's output."""
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    config = OPTConfig(
        vocab_size=V, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
        word_embed_proj_dim=32, max_position_embeddings=64,
    )  # fmt: skip
    check_output_head(OPTForCausalLM(config).eval(), V, "student")


def test_an_unknown_soft_cap_on_a_freshly_initialised_model_is_refused():
    """Try-out 78, F2: a random-init model's logits stay under 1, where a cap of 30 moves them by < 1e-4 of their
    scale, so custom code that caps them was accepted and trained as h·Wᵀ. The amplified probe sees it."""
    torch.manual_seed(0)
    model = _CappedLlama(LlamaConfig(**COMMON)).eval()
    with torch.no_grad():
        assert float(model(input_ids=torch.arange(8).view(1, 8)).logits.abs().max()) < 5.0
    with pytest.raises(ModelError, match="cannot reproduce the logits of model type 'llama'") as e:
        check_output_head(model, V, "student")
    assert "\n" not in str(e.value) and "from its config" not in str(e.value)


@pytest.mark.parametrize("bound", [50.0, 100.0, 500.0])
@pytest.mark.parametrize("grow", [1.0, 16.0])
def test_an_unknown_clamp_of_trained_model_size_is_refused(bound, grow):
    """Try-out 81, F5: the second probe brought the largest logit to 45–90 only, so a custom clamp at ±100 — on a
    fresh head or one scaled to trained-model logits — was accepted and trained as h·Wᵀ."""
    torch.manual_seed(0)
    model = _ClampedLlama(LlamaConfig(**COMMON)).eval()
    model.bound = bound
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(grow)
        assert float(model(input_ids=torch.arange(8).view(1, 8)).logits.abs().max()) < bound  # the clamp idle
    with pytest.raises(ModelError, match="cannot reproduce the logits of model type 'llama'"):
        check_output_head(model, V, "student")


def test_a_config_softcap_the_forward_does_not_read_is_named_in_the_refusal():
    """Try-out 78, F3: a Llama whose config.json carries an unused ``final_logit_softcapping`` was refused as
    'a post-head transform ekd does not know' — the transform was ekd's own, read off the config. The line now
    names the key ekd applied."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**COMMON, final_logit_softcapping=5.0)).eval()
    with pytest.raises(ModelError) as e:
        check_output_head(model, V, "student")
    said = str(e.value)
    assert (
        "ekd applies final_logit_softcapping=5 from its config, as the model types that read it do: a key "
        in said
    )
    assert "model's forward does not read — then remove it from config.json — or a post-head" in said


class _HotLlama(LlamaForCausalLM):
    """A causal LM whose forward multiplies its logits by 1.02 (a hidden temperature of 0.98)."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 1.02
        return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_small_hidden_scale_of_a_16_bit_model_is_refused(dtype):
    """Try-out 81, F3: 4 ulps of the largest logit, a 16-bit model's tolerance, let a forward that scales the
    logits by 1.02 through in bf16: ekd distilled from h·Wᵀ, not from the model's own softmax. The factor between
    the two is now measured (least squares); rounding leaves it within half an ulp of 1, a scale does not."""
    torch.manual_seed(0)
    plain = LlamaForCausalLM(LlamaConfig(**COMMON)).to(dtype).eval()
    check_output_head(plain, V, "teacher")
    torch.manual_seed(0)
    hot = _HotLlama(LlamaConfig(**COMMON)).to(dtype).eval()
    with pytest.raises(ModelError, match="cannot reproduce the logits of model type 'llama'") as e:
        check_output_head(hot, V, "teacher")
    if dtype == torch.bfloat16:  # fp16's 4 ulps are tight enough to refuse it by the difference alone
        assert "hidden states by a factor of 1.02 (rounding alone leaves it within 0.0039 of 1)" in str(
            e.value
        )
