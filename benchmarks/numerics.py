"""Accuracy of the loss head against float64 on the benchmark batch of ``benchmarks.head_loss`` (V=151,936).

    PYTHONPATH=src python -m benchmarks.numerics

prints the per-row forward-KL value error of the reference path, the batch forward-KL value of the fused
closed form, and the fused head's gradient errors ‖g − g64‖ / ‖g64‖ w.r.t. the student hidden states and
head weight (``chunked`` path, chunk 256, 64 rows, 1 thread). The float64 TVD takes the exact sign of
p − q, so its error counts every sign that rounding decides (in any implementation).
"""

from __future__ import annotations

import torch
from torch import Tensor

from benchmarks.head_loss import make_inputs
from ekd.losses.divergences import forward_kl, make_divergence
from ekd.losses.head_loss import kd_loss_sum
from ekd.losses.logit_grads import dense_kd_chunk
from ekd.losses.targets import DenseTarget, Head

ROWS, V = 64, 151_936
KINDS = ("forward_kl", "reverse_kl", "jsd", "skew_reverse_kl", "tvd")  # jsd β=0.5, skew α=0.1


def _float64_rows(kind: str, log_q: Tensor, log_p: Tensor) -> Tensor:
    q, p = log_q.exp(), log_p.exp()
    if kind == "forward_kl":
        return (p * (log_p - log_q)).sum(-1)
    if kind == "reverse_kl":
        return (q * (log_q - log_p)).sum(-1)
    if kind == "jsd":
        log_m = (0.5 * p + 0.5 * q).log()
        return 0.5 * (p * (log_p - log_m)).sum(-1) + 0.5 * (q * (log_q - log_m)).sum(-1)
    if kind == "skew_reverse_kl":
        return (q * (log_q - (0.9 * p + 0.1 * q).log())).sum(-1)
    return 0.5 * (p - q).abs().sum(-1)


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b).norm() / b.norm())


def main() -> None:
    torch.set_num_threads(1)
    x = make_inputs(ROWS, V)
    zs, zt = x["h"].detach() @ x["w"].detach().T, x["ht"] @ x["wt"].T  # (N, V) fp32
    log_p = torch.log_softmax(zt.double(), -1)
    ref_rows = _float64_rows("forward_kl", torch.log_softmax(zs.double(), -1), log_p)  # (N,)
    row_err = ((forward_kl(zs, zt).double() - ref_rows).abs() / ref_rows).max()
    print(f"reference path: per-row forward KL, max relative error {float(row_err):.1e}")
    one = torch.ones(ROWS)
    loss, _ = dense_kd_chunk(zs.clone(), zt.clone(), one, one, "forward_kl")
    fused, exact = float(loss) / ROWS, float(ref_rows.mean())
    print(
        f"fused closed form: forward KL {fused:.9f}, float64 {exact:.9f} ({abs(fused - exact) / exact:.1e})"
    )
    for kind in KINDS:
        h64 = x["h"].detach().double().requires_grad_(True)
        w64 = x["w"].detach().double().requires_grad_(True)
        ref = _float64_rows(kind, torch.log_softmax(h64 @ w64.T, -1), log_p).sum()
        gh64, gw64 = torch.autograd.grad(ref, (h64, w64))
        h = x["h"].detach().clone().requires_grad_(True)
        w = x["w"].detach().clone().requires_grad_(True)
        divergence = make_divergence(kind, jsd_beta=0.5, skew_alpha=0.1)
        target = DenseTarget(x["ht"], Head(x["wt"]))
        kd_loss_sum(h, Head(w), target, one, one, divergence, chunk_size=256).backward()
        print(f"fused head {kind:16s} grad_h {_rel(h.grad, gh64):.1e}  grad_W {_rel(w.grad, gw64):.1e}")


if __name__ == "__main__":
    main()
