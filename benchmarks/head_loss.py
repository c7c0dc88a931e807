"""Loss-head benchmark cases: student head + teacher head + generalized JSD(β=0.5), forward and backward.

One case = one implementation at one vocabulary size and a list of N, run in its own process by
``benchmarks.run`` (one warm-up, which compiles where needed, then each N in turn)::

    python -m benchmarks.head_loss '{"impl": "ours", "v": 32768, "ns": [1024, 2048], "chunk": 256}'

prints one JSON line mapping N to: time of the fastest forward+backward, peak memory above the inputs
(see ``benchmarks.measure``), and the loss value (all implementations must compute the same JSD).

Implementations (all fp32, gradients w.r.t. the student hidden states and head weight; teacher frozen):

- ``ours`` / ``ours_compiled``: ``kd_loss_sum(path='chunked')`` — closed-form gradient in the forward, per chunk.
- ``ours_recompute``: ``kd_loss_sum(path='chunked_recompute')`` — activation checkpointing per chunk.
- ``naive``: full (N, V) logits for both models and TRL's ``generalized_jsd_loss`` written out (log_softmax,
  stacked mixture, two ``kl_div``; trl/trainer/gkd_trainer.py) through autograd.
- ``liger`` / ``liger_compiled``: Liger-Kernel's ``LigerFusedLinearJSDLoss`` (pure torch on CPU; chunk 1024,
  its default), ``compiled=False`` / ``True``.
- ``gemm``: only the four matmuls the loss head must do — student logits, teacher logits, grad_hidden,
  grad_W — at full size into preallocated outputs: the physical floor on this machine.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F

STUDENT_HIDDEN = 896  # Qwen2.5-0.5B
TEACHER_HIDDEN = 1536  # Qwen2.5-1.5B
BETA = 0.5
IMPLS = ("gemm", "ours", "ours_compiled", "ours_recompute", "naive", "liger", "liger_compiled")


def gemm_flops(n: int, v: int) -> float:
    """FLOPs of the four bare GEMMs: 2·N·V·(Ds [student fwd] + Dt [teacher fwd] + Ds [grad_h] + Ds [grad_W])."""
    return 2.0 * n * v * (3 * STUDENT_HIDDEN + TEACHER_HIDDEN)


def estimate_gb(impl: str, n: int, v: int) -> float:
    """Peak memory estimate, to skip cases over budget: fp32 (rows, V) buffers held at the peak (measured at
    V=32,768: naive 17 (N, V); Liger eager 18 and compiled 6 of its 1024-row chunks; ekd ≤ 6 of 256 rows)."""
    rows = {"naive": 17 * n, "liger": 18 * min(n, 1024), "liger_compiled": 6 * min(n, 1024)}.get(
        impl, 6 * 256
    )
    return (rows * v * 4 + 2 * v * STUDENT_HIDDEN * 4) / 1e9


def generalized_jsd_loss(student_logits, teacher_logits, beta=0.5, temperature=1.0):
    """TRL's GKDTrainer.generalized_jsd_loss (labels=None, reduction='batchmean'), as shipped."""
    student_logits = student_logits / temperature
    teacher_logits = teacher_logits / temperature
    student_log_probs = F.log_softmax(student_logits, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits, dim=-1)
    beta_t = torch.tensor(beta, dtype=student_log_probs.dtype)
    mixture_log_probs = torch.logsumexp(
        torch.stack([student_log_probs + torch.log(1 - beta_t), teacher_log_probs + torch.log(beta_t)]), dim=0
    )
    kl_teacher = F.kl_div(mixture_log_probs, teacher_log_probs, reduction="none", log_target=True)
    kl_student = F.kl_div(mixture_log_probs, student_log_probs, reduction="none", log_target=True)
    jsd = beta_t * kl_teacher + (1 - beta_t) * kl_student
    return jsd.sum() / (jsd.size(0) * jsd.size(1))  # (B, T, V) → mean over B·T positions


def make_inputs(n: int, v: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "h": torch.randn(n, STUDENT_HIDDEN, generator=g).requires_grad_(True),  # (N, Ds)
        "w": (torch.randn(v, STUDENT_HIDDEN, generator=g) * 0.05).requires_grad_(True),  # (V, Ds)
        "ht": torch.randn(n, TEACHER_HIDDEN, generator=g),  # (N, Dt)
        "wt": torch.randn(v, TEACHER_HIDDEN, generator=g) * 0.05,  # (V, Dt)
    }


def make_step(impl: str, x: dict[str, torch.Tensor], chunk: int):
    """A closure doing one forward + backward of ``impl`` on inputs ``x``; returns the loss (mean over N)."""
    n = x["h"].shape[0]
    if impl == "gemm":
        v = x["w"].shape[0]
        # zeros, not empty: pages are touched here, so the timed calls measure the GEMMs alone
        zs, zt = torch.zeros(n, v), torch.zeros(n, v)
        gh, gw = torch.zeros(n, STUDENT_HIDDEN), torch.zeros(v, STUDENT_HIDDEN)
        h, w, ht, wt = x["h"].detach(), x["w"].detach(), x["ht"], x["wt"]

        def step():
            torch.mm(h, w.t(), out=zs)  # (N, V) student logits
            torch.mm(ht, wt.t(), out=zt)  # (N, V) teacher logits
            torch.mm(zs, w, out=gh)  # (N, Ds) grad_hidden (zs stands in for the logit gradient)
            torch.mm(zs.t(), h, out=gw)  # (V, Ds) grad_W
            return torch.zeros(())

        return step
    if impl.startswith("ours"):
        from ekd.losses.divergences import make_divergence
        from ekd.losses.head_loss import kd_loss_sum
        from ekd.losses.targets import DenseTarget, Head

        path = "chunked_recompute" if impl == "ours_recompute" else "chunked"
        divergence = make_divergence("jsd", jsd_beta=BETA)
        ones = torch.ones(n)

        def step():
            loss = (
                kd_loss_sum(
                    x["h"],
                    Head(x["w"]),
                    DenseTarget(x["ht"], Head(x["wt"])),
                    ones,
                    ones,
                    divergence,
                    path=path,
                    chunk_size=chunk,
                    compile=impl == "ours_compiled",
                )
                / n
            )
            loss.backward()
            return loss.detach()

        return step
    if impl == "naive":

        def step():
            student_logits = (x["h"] @ x["w"].t()).unsqueeze(0)  # (1, N, V)
            with torch.no_grad():
                teacher_logits = (x["ht"] @ x["wt"].t()).unsqueeze(0)  # (1, N, V)
            loss = generalized_jsd_loss(student_logits, teacher_logits, beta=BETA)
            loss.backward()
            return loss.detach()

        return step
    if impl.startswith("liger"):
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        loss_fn = LigerFusedLinearJSDLoss(
            weight_hard_loss=0.0,
            weight_soft_loss=1.0,
            beta=BETA,
            compiled=impl == "liger_compiled",
            chunk_size=1024,
        )
        labels = torch.zeros(n, dtype=torch.long)  # all valid; the hard (CE) loss has weight 0

        def step():
            loss = loss_fn(x["h"], x["w"], x["ht"], x["wt"], labels)
            loss.backward()
            return loss.detach()

        return step
    raise ValueError(f"unknown implementation {impl!r}; known: {', '.join(IMPLS)}")


def warm_rows(impl: str, chunk: int) -> int:
    """Rows of the warm-up call: the per-chunk shape for compiled code (so it compiles there), else small."""
    if impl == "liger_compiled":
        return 1024  # Liger's chunk: the compiled graph is specialized to it
    if impl == "ours_compiled":
        return chunk
    return 64


def run(case: dict) -> dict:
    """Warm up once, then measure each N of ``case["ns"]`` in turn (peak memory re-based for each N)."""
    from benchmarks.measure import measure_call

    impl, v, chunk = case["impl"], case["v"], case.get("chunk", 256)
    torch.manual_seed(0)
    warm = make_inputs(min(warm_rows(impl, chunk), min(case["ns"])), v, seed=1)
    make_step(impl, warm, chunk)()
    del warm
    out = {}
    for n in case["ns"]:
        x = make_inputs(n, v)
        step = make_step(impl, x, chunk)
        value: dict[str, float] = {}

        def once(x=x, step=step, value=value):
            x["h"].grad = None
            x["w"].grad = None
            value["loss"] = float(step())

        out[str(n)] = {**measure_call(once, min_seconds=case.get("min_seconds", 0.0)), "loss": value["loss"]}
        del x, step
    return out


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))))
