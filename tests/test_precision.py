"""train.precision: under autocast the heads' GEMM operands are in the autocast dtype, with softmax,
divergences and sums in fp32; fp32 runs are untouched. CPU autocast bf16 exercises the code path GPUs take
(the rounded operands are widened to fp32 there, so the CPU computes what CUDA's fp32-output GEMM does)."""

from __future__ import annotations

import pytest
import torch

from ekd.config import load_config
from ekd.data import collate
from ekd.losses.divergences import forward_kl
from ekd.losses.head_loss import ce_loss_sum, kd_loss_sum
from ekd.losses.targets import DenseTarget, Head
from ekd.train.method_parts import MethodParts
from ekd.train.precision import autocast_for, enable_tf32
from ekd.train.prepare import build_teacher_source, load_student, load_teacher, prepare_data
from ekd.train.trainer import forward_backward
from tiny import tiny_overrides, write_corpus

CPU = torch.device("cpu")
M, D, DT, V = 37, 24, 40, 211  # odd sizes; M spans several chunks of 16


def _case():
    g = torch.Generator().manual_seed(3)
    h = torch.randn(M, D, generator=g) * 2
    w = torch.randn(V, D, generator=g) * 0.5
    ht = torch.randn(M, DT, generator=g) * 2
    wt = torch.randn(V, DT, generator=g) * 0.5
    labels = torch.randint(0, V, (M,), generator=g)
    labels[::5] = -100
    return h, w, ht, wt, labels


def _bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).double()


def _reference(h, w, ht, wt, labels):
    """float64 KD (forward KL, τ=2, τ²-scaled) and CE sums from the given operands."""
    tau = 2.0
    zs, zt = h @ w.T, ht @ wt.T  # (M, V)
    p = torch.softmax(zt / tau, -1)
    kl = (p * (torch.log_softmax(zt / tau, -1) - torch.log_softmax(zs / tau, -1))).sum(-1)  # (M,)
    keep = labels != -100
    ce = -torch.log_softmax(zs[keep], -1).gather(1, labels[keep, None]).sum()
    return (tau**2 * kl).sum(), ce


@pytest.mark.parametrize("path", ["chunked", "chunked_recompute", "reference"])
def test_heads_under_bf16_autocast_round_operands_and_sum_in_fp32(path):
    h, w, ht, wt, labels = _case()
    want_kd, want_ce = _reference(_bf16(h), _bf16(w), _bf16(ht), _bf16(wt), labels)  # bf16 operands
    fp32_kd, fp32_ce = _reference(h.double(), w.double(), ht.double(), wt.double(), labels)
    hs, ws = h.clone().requires_grad_(), w.clone().requires_grad_()
    target = DenseTarget(ht, Head(wt))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kd = kd_loss_sum(hs, Head(ws), target, 2.0, torch.ones(M), forward_kl, path=path, chunk_size=16)
        ce = ce_loss_sum(hs, Head(ws), labels, path=path, chunk_size=16)
    assert kd.dtype == ce.dtype == torch.float32
    # the operands were rounded to bf16 (an fp32 head is off by > 5e-5 here, beyond the 1e-5 bound) ...
    assert abs(float(fp32_kd) - float(want_kd)) > 5e-5 * abs(float(want_kd))
    torch.testing.assert_close(kd.double(), want_kd, rtol=1e-5, atol=0)
    torch.testing.assert_close(ce.double(), want_ce, rtol=1e-5, atol=0)
    # ... and the gradients stay close to the exact float64 ones (bf16 operands: ~2⁻⁸ relative)
    (kd + ce).backward()
    hr, wr = h.double().requires_grad_(), w.double().requires_grad_()
    sum(_reference(hr, wr, ht.double(), wt.double(), labels)).backward()
    for got, ref in ((hs.grad, hr.grad), (ws.grad, wr.grad)):
        assert float((got.double() - ref).norm() / ref.norm()) < 2e-2


def test_heads_outside_autocast_stay_fp32():
    h, w, ht, wt, labels = _case()
    want_kd, want_ce = _reference(h.double(), w.double(), ht.double(), wt.double(), labels)
    kd = kd_loss_sum(h, Head(w), DenseTarget(ht, Head(wt)), 2.0, torch.ones(M), forward_kl, chunk_size=16)
    torch.testing.assert_close(kd.double(), want_kd, rtol=1e-5, atol=0)
    torch.testing.assert_close(
        ce_loss_sum(h, Head(w), labels, chunk_size=16).double(), want_ce, rtol=1e-5, atol=0
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    corpus = write_corpus(root / "corpus", n_docs=12)
    cfg = load_config(overrides=tiny_overrides(root, corpus))
    return root, corpus, prepare_data(cfg, root / "prep")


@pytest.mark.parametrize("method", ["kd", "sekd"])
def test_bf16_step_is_close_to_fp32(prepared, method):
    """One optimizer step's loss and gradients (student body + heads + teacher) under bf16 autocast are
    within bf16 rounding of the fp32 step."""
    root, corpus, data = prepared
    cfg = load_config(overrides=tiny_overrides(root, corpus) + [f"method={method}", "method.ce_weight=0.5"])
    torch.manual_seed(0)
    student = load_student(cfg, data, CPU)
    teacher = build_teacher_source(cfg, data, CPU, load_teacher(cfg, data, CPU))
    parts = MethodParts.build(cfg, cfg.train.max_steps)
    micro = [collate(data.blocks["train"], torch.arange(i * 2, i * 2 + 2)) for i in range(2)]
    out = {}
    for amp in (None, torch.bfloat16):
        student.zero_grad(set_to_none=True)
        loss = forward_backward(micro, student, teacher, parts, 0, cfg, data.vocab_size, amp, root)[0]
        out[amp] = loss, {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    (loss32, g32), (loss16, g16) = out[None], out[torch.bfloat16]
    assert loss16 != loss32  # bf16 did run
    assert abs(loss16 - loss32) < 1e-2 * abs(loss32)
    assert g16.keys() == g32.keys()
    num = sum(float((g16[k] - g32[k]).norm()) ** 2 for k in g32) ** 0.5
    den = sum(float(g32[k].norm()) ** 2 for k in g32) ** 0.5
    assert num < 5e-2 * den


def test_autocast_is_bf16_for_bf16_and_for_auto_on_cuda_only():
    """``autocast_for``: 'auto' autocasts on CUDA only; 'fp32' never, 'bf16' everywhere; a value no ekd wrote
    (a hand-edited saved config) never counts as fp32."""
    for device_type in ("cpu", "cuda", "mps"):
        assert autocast_for("fp32", device_type) is None
        assert autocast_for("bf16", device_type) is torch.bfloat16
    assert autocast_for("auto", "cuda") is torch.bfloat16
    assert autocast_for("auto", "cpu") is None and autocast_for("auto", "mps") is None
    assert autocast_for("fp16", "cpu") is not None


def test_tf32_only_on_cuda_and_not_for_fp32(monkeypatch):
    import torch.backends.cuda as cuda_backend

    before = cuda_backend.matmul.fp32_precision
    try:
        assert not enable_tf32("auto", CPU)
        assert not enable_tf32("fp32", torch.device("cuda"))
        assert cuda_backend.matmul.fp32_precision == before
        assert enable_tf32("auto", torch.device("cuda"))
        assert cuda_backend.matmul.fp32_precision == "tf32"
    finally:
        cuda_backend.matmul.fp32_precision = before


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_heads_match_the_cpu_emulation():
    """On CUDA the bf16 operands go to cuBLAS with an fp32 output (``torch.mm(out_dtype=float32)``): the
    loss and gradients equal the CPU's widened-operand computation up to summation order."""
    h, w, ht, wt, labels = _case()
    results = []
    for device in ("cpu", "cuda"):
        hs, ws = h.detach().to(device).requires_grad_(), w.detach().to(device).requires_grad_()  # leaves
        target = DenseTarget(ht.to(device), Head(wt.to(device)))
        with torch.autocast(device, dtype=torch.bfloat16):
            kd = kd_loss_sum(
                hs, Head(ws), target, 2.0, torch.ones(M, device=device), forward_kl, chunk_size=16
            )
            ce = ce_loss_sum(hs, Head(ws), labels.to(device), chunk_size=16)
        (kd + ce).backward()
        results.append([t.detach().cpu() for t in (kd, ce, hs.grad, ws.grad)])
    for cpu, cuda in zip(*results):
        torch.testing.assert_close(cuda, cpu, rtol=1e-4, atol=1e-5)


def test_a_model_that_fails_under_the_runs_autocast_is_refused_before_training(tmp_path, capsys):
    """Try-out 78, F1: a float16 GPT-2 teacher under CPU bf16 autocast passed the probes (which run without
    autocast) and failed at the first step with a traceback ('mixed dtype (CPU)' in its LayerNorm). One forward
    under the run's autocast at load refuses it in one line; in bfloat16 it trains."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from ekd.cli import main
    from ekd.data import train_bpe_tokenizer

    corpus = write_corpus(tmp_path / "corpus")
    tok = train_bpe_tokenizer([p.read_text() for p in sorted(corpus.iterdir())], 320, None)
    eos = tok.eos_token_id
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=64,
        n_embd=32,
        n_layer=1,
        n_head=2,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    tok.save_pretrained(tmp_path / "gpt2")
    gpt2 = {"model.teacher": str(tmp_path / "gpt2"), "model.tokenizer": str(tmp_path / "gpt2")}
    args = tiny_overrides(
        tmp_path, corpus, "fp16", **gpt2, **{"train.precision": "bf16", "train.max_steps": 1}
    )
    capsys.readouterr()  # save_pretrained's progress bar
    assert main(["-q", "distill", *args, "model.teacher_dtype=float16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "ekd: error: model.teacher: its forward fails under cpu autocast to bfloat16 with its float16 weights "
        "(RuntimeError: mixed dtype (CPU): expect parameter to have scalar type of Float); load it in bfloat16 or "
        "float32 (model.teacher_dtype) or set train.precision=fp32"
    ]
    assert main(["-q", "distill", *args, "model.teacher_dtype=bfloat16", "run.name=bf16"]) == 0
