"""docs/library.md's example runs as written and its loss equals the one computed from the full logits (the
example asserts it): the pieces `ekd distill` composes, called from a user's own loop (try-out 109, F8)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "library.md"


def test_the_library_example_runs_and_matches_the_full_logits():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1
    threads = torch.get_num_threads()
    try:
        scope: dict = {}
        exec(compile(blocks[0], str(DOC), "exec"), scope)  # noqa: S102 — the project's own doc
    finally:
        torch.set_num_threads(threads)
    assert scope["loss"].requires_grad and torch.isfinite(scope["loss"])
    assert scope["selection"].count > 0 and scope["tau"].eq(2.0).all()


def test_library_calls_outside_their_domain_say_so():
    """Try-out 109: a string of overrides was read character by character ('override m must look like…'); τ = 0
    gave NaN top-K targets and τ < 0 the targets of −z; a raw planned count of 0 gave 0/0 (NaN gradients)."""
    import pytest

    from ekd.config import load_config
    from ekd.losses.reduce import normalize
    from ekd.teacher.targets import rs_target, topk_target

    with pytest.raises(TypeError, match="overrides must be a list of 'key=value' strings"):
        load_config(None, "method=sekd")
    z = torch.randn(2, 5)
    with pytest.raises(ValueError, match="finite and > 0, got 0.0"):
        topk_target(z, 2, tau=0.0)
    with pytest.raises(ValueError, match="finite and > 0, got -1.0"):
        rs_target(z, 3, seeds=torch.arange(2), tau=-1.0)
    from ekd.losses.divergences import make_divergence
    from ekd.losses.head_loss import kd_loss_sum
    from ekd.losses.targets import DenseTarget, Head

    head = Head(torch.eye(5))
    with pytest.raises(ValueError, match="kd_loss_sum: the temperature τ must be finite and > 0, got -1.0"):
        kd_loss_sum(z.clone(), head, DenseTarget(z, head), -1.0, torch.ones(2), make_divergence("forward_kl"))
    with pytest.raises(ValueError, match="topk_target: the temperature τ must be finite and > 0, got 0.0"):
        topk_target(z, 2, tau=torch.tensor(0.0))  # a 0-dim tensor is one τ (try-out 111, F4)
    torch.testing.assert_close(
        rs_target(z, 3, seeds=torch.arange(2), tau=torch.tensor(2.0)).target.probs,
        rs_target(z, 3, seeds=torch.arange(2), tau=2.0).target.probs,
    )
    with pytest.raises(ValueError, match="global_count"):
        normalize(torch.tensor(1.0), 0)
    assert normalize(torch.tensor(3.0), 2.0).item() == 1.5


def test_loss_calls_with_rows_that_disagree_say_which():
    """Try-out 109, F7: mismatched rows gave torch's own errors deep inside a chunk (the chunked and reference
    paths failing differently) or broadcast; each is one line naming the shapes before any work."""
    import pytest

    from ekd.losses.divergences import make_divergence
    from ekd.losses.head_loss import ce_loss_sum, kd_loss_sum
    from ekd.losses.targets import DenseTarget, Head, SparseTarget

    h, head, fkl = torch.randn(4, 5), Head(torch.randn(7, 5)), make_divergence("forward_kl")
    dense = DenseTarget(torch.randn(4, 3), Head(torch.randn(7, 3)))
    for path in ("chunked", "reference"):
        with pytest.raises(ValueError, match=r"4 student rows, but weights \(3,\)"):
            kd_loss_sum(h, head, dense, 1.0, torch.ones(3), fkl, path=path)
        with pytest.raises(ValueError, match=r"4 student rows, but target rows \(3,\)"):
            kd_loss_sum(
                h, head, DenseTarget(torch.randn(3, 3), dense.head), 1.0, torch.ones(4), fkl, path=path
            )
        with pytest.raises(ValueError, match=r"tau \(2,\)"):
            kd_loss_sum(h, head, dense, torch.ones(2), torch.ones(4), fkl, path=path)
        one = kd_loss_sum(h, head, dense, torch.tensor(2.0), torch.ones(4), fkl, path=path)  # 0-dim: one τ
        assert one.item() == kd_loss_sum(h, head, dense, 2.0, torch.ones(4), fkl, path=path).item()
        with pytest.raises(ValueError, match="the teacher head has 9 rows, the student's 7"):
            kd_loss_sum(
                h, head, DenseTarget(torch.randn(4, 3), Head(torch.randn(9, 3))), 1.0, torch.ones(4), fkl
            )
        sparse = SparseTarget(torch.zeros(4, 2, dtype=torch.long), torch.ones(4, 3))
        with pytest.raises(ValueError, match=r"ids \(4, 2\) and probs \(4, 3\) differ"):
            kd_loss_sum(h, head, sparse, 1.0, torch.ones(4), fkl, path=path)
        with pytest.raises(ValueError, match=r"labels \(N,\) \(shifted, flat\), got \(4, 5\) and \(2, 2\)"):
            ce_loss_sum(h, head, torch.zeros(2, 2, dtype=torch.long), path=path)
