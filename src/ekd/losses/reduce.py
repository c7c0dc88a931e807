"""The one normalization rule (DESIGN decision 4).

A loss term is a sum over its tokens divided by the global count of its tokens for the optimizer step —
all micro-batches, all ranks. Each micro-batch's backward uses ``term_sum / global_count``, so the
accumulated gradient of the same selected tokens is the same whether the step is 8 micro-batches of 1 or 2 of 4,
on 1 rank or many (Hugging Face ``num_items_in_batch``; TRL's gradient-accumulation fix; torchtune divided
twice). Which tokens are selected may depend on the split: a batch-wide selection ranks each (global)
micro-batch's rows together.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def global_count(local_counts: list[float] | float, device: torch.device | str = "cpu") -> float:
    """Σ of per-micro-batch counts over this step, all-reduced across ranks when distributed. ≥ 1."""
    total = float(sum(local_counts)) if isinstance(local_counts, list) else float(local_counts)
    if dist.is_available() and dist.is_initialized():
        t = torch.tensor([total], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        total = float(t.item())
    return max(total, 1.0)


def normalize(term_sum: torch.Tensor, count: float) -> torch.Tensor:
    """term_sum / count — the only place a loss term is divided by a token count.

    ``count`` is the step's :func:`global_count` (≥ 1): a step with no token of the term gives 0, not 0/0.

    Raises:
        ValueError: ``count`` < 1 (a raw Σ of planned counts, 0 for a batch without a valid position, gives NaN
            gradients: pass it through :func:`global_count`).
    """
    if not count >= 1:
        raise ValueError(f"normalize: the token count is {count}; pass the step's global_count(...) (≥ 1)")
    return term_sum / count
