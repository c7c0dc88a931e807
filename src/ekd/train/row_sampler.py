"""Sampling from softmax(z / T_s) with per-row random streams, as a logits processor for greedy decoding.

Hugging Face's sampler draws every row of a batch from one global RNG, so a row's continuation depends on
which rows share its batch (and on every rank, row j would draw the same numbers). Here generation token t of
row i is the inverse CDF of softmax(z_i / T_s) at the row's uniform u_it (:mod:`ekd.selection.draws`, keyed by
the row's sample id): exactly a draw from the student's distribution, identical in a batch of any size and
on any rank. The processor returns 0 at the drawn id and −inf elsewhere, so ``generate(do_sample=False)``
(argmax) emits it. Ids whose logits arrive at −inf (masked) are never drawn.

    processor = RowSampler(uniforms (G, n), prompt_length=p, temperature=T_s)
    model.generate(prompts, do_sample=False, logits_processor=LogitsProcessorList([processor]), ...)
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import LogitsProcessor

from ekd.teacher.sampling import inverse_cdf_draws, sampling_block


class RowSampler(LogitsProcessor):
    """Token t of row i drawn from softmax(scores_i / T_s) at ``uniforms[i, t]``.

    Args:
        uniforms: (G, n) float64 in [0, 1): one per row and generated token (n ≥ max_new_tokens).
        prompt_length: p, the prompt length of every row (generation token t sees p + t input ids).
        temperature: T_s > 0 (``method.sampling_temperature``).
    """

    def __init__(self, uniforms: Tensor, prompt_length: int, temperature: float):
        if temperature <= 0:
            raise ValueError(f"sampling temperature must be > 0, got {temperature}")
        self.uniforms = uniforms
        self.prompt_length = prompt_length
        self.temperature = float(temperature)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        t = input_ids.shape[1] - self.prompt_length  # index of the token being generated
        u = self.uniforms[:, t : t + 1].to(scores.device)  # (G, 1)
        z = scores.float()  # (G, V); padded head rows at −inf
        scaled = z / self.temperature
        # a row where z / T_s overflows float32 (a tiny temperature: softmax NaN, the last id drawn every time,
        # try-out 155, F5) from its maximum, where it is greedy; other rows as they were, bit for bit; no host sync
        overflow = (torch.isinf(scaled) & torch.isfinite(z)).any(dim=-1, keepdim=True)  # (G, 1)
        scaled = torch.where(overflow, (z - z.amax(dim=-1, keepdim=True)) / self.temperature, scaled)
        probs = torch.softmax(scaled, dim=-1)  # (G, V)
        ids = inverse_cdf_draws(probs, u, sampling_block(probs.shape[-1], 1))  # (G, 1)
        return torch.full_like(scores, float("-inf")).scatter_(1, ids, 0.0)  # (G, V) argmax = the draw
