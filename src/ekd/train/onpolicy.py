"""On-policy distillation (GKD, Agarwal et al. 2024, arXiv 2306.13649): continuations sampled from the student.

With probability λ (``method.student_data_fraction``) a micro-batch's continuations are replaced by samples
from the student; the teacher then scores those tokens in the normal step (reverse KL or JSD(β) per the
preset), so nothing downstream changes. No gradient flows through generation. The trainer calls, per
micro-batch::

    batch, on_policy = maybe_on_policy(
        batch, student, cfg.method, on_policy_generator(seed, step, i), eos_id, vocab_size=len(tokenizer)
    )

Prompt of each row (:func:`prompt_lengths`). Packing writes ``prompt · response · EOS`` per document with the
prompt tokens (and the first token of every document) masked out of the targets, so a prompt is a run of ≥ 2
ignored labels followed by a target. A row's prompt is every token up to the first target after its first
prompt: ``r + 1`` tokens for a row that starts with a run of ``r`` ignored labels; for a row cut mid-response
by the block's start (the previous example's tail, its EOS, then the next example), everything up to the end
of that next example's prompt — the student answers that prompt, whole, with the tail as context, as packing
trains it (try-out 71, F1: it generated from the row's first ``method.prompt_tokens`` tokens, over the rest of
the next prompt). Plain packed text has no run of more than 1 ignored label (a document boundary), nor has a
row whose only prompt is cut by the block's end; those rows use the first ``method.prompt_tokens`` tokens (at
most T − 1) as the prompt. A row with no target at all (wholly inside a long prompt or padding) is left
unchanged: its response is not in the block. A one-token prompt (without BOS), or a prompt cut by the block's
start to its last 1–2 tokens, looks like a document boundary and gets the plain-text rule.

Generation. Rows are grouped by prompt length and each group is generated as one batch, so every prompt sits
at positions ``0 … p−1`` exactly as in training (no left padding, no shifted position ids); packed text is one
group, prompt/response data at most one group per distinct length. Sampling is pure ``softmax(z / T_s)``:
the student's own ``generation_config`` (top-k/top-p/repetition penalties from a checkpoint) is swapped for a
neutral one during the call. Each row draws from its own random stream (:mod:`ekd.train.row_sampler`), keyed
by a number drawn from the given generator and by the row's sample id: results depend only on that generator
and the row (exact on resume, the same on any rank and in a batch of any size); no global RNG is touched.

Isolated documents (``data.document_attention=isolated``, the batch has ``position_ids``): the prompt handed to
``generate`` is only the document that contains the prompt's last token (from its start, or the block start),
so the student samples exactly what its isolated training forward sees; the generated tokens continue that
document's positions and the padding after them is a document of its own. A prompt whose last token is a stop id
(a document's EOS) ends one token earlier: the student continues that document, not past its end.

The new batch keeps (B, T), dtypes and ``sample_ids``: prompt · generated tokens (including the first
generated EOS, which is a target like the EOS ending a packed document) · padding. Labels are shifted once, by
:func:`ekd.data.collate.shift_labels`: -100 for targets in the prompt, after the first generated EOS, on
padding and at the last position.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

import torch
from torch import nn
from transformers import LogitsProcessor, LogitsProcessorList

from ekd.config import MethodConfig
from ekd.data.collate import IGNORE_INDEX, Batch, document_positions, shift_labels
from ekd.models.generation import neutral_generation_config, stop_ids
from ekd.selection.draws import row_uniforms
from ekd.train.row_sampler import RowSampler
from ekd.words import counted

log = logging.getLogger(__name__)

_MIN_PROMPT_RUN = 2  # leading ignored labels that mark a prompt region (plain text has at most 1)


def on_policy_generator(seed: int, step: int, micro: int) -> torch.Generator:
    """The generator of micro-batch ``micro`` at ``step``: depends only on (seed, step, micro), exact on resume.

    A stream of its own, apart from ``trainer.step_generator`` (per-micro-batch selection decisions), so the
    on-policy coin is not correlated with them. ``micro`` is the global micro-batch index: every rank flips the
    same coin and draws the same stream key; the rows' own streams then differ by sample id.
    """
    base = (seed * 1_000_003 + step * 1_009 + micro) % (2**63)
    return torch.Generator().manual_seed(
        (base * 6_364_136_223_846_793_005 + 1_442_695_040_888_963_407) % (2**63)
    )


def prompt_lengths(labels: torch.Tensor, prompt_tokens: int) -> torch.Tensor:
    """Prompt length of each row (see the module docstring for the rule).

    Args:
        labels: (B, T) long, shifted; -100 = no target.
        prompt_tokens: Prompt length for rows without a leading prompt region (``method.prompt_tokens``).

    Returns:
        (B,) long in ``[1, T − 1]``, or 0 for a row with no target (left unchanged).
    """
    B, T = labels.shape
    valid = labels != IGNORE_INDEX  # (B, T)
    # a target right after a run of ≥ _MIN_PROMPT_RUN ignored labels ends a prompt: at the row's start, or after
    # a response cut by the block's start (try-out 71, F1: the first prompt_tokens tokens were taken, and the
    # student generated over the rest of the next example's prompt)
    after_prompt = valid[:, _MIN_PROMPT_RUN:].clone()  # (B, T − r): target j + r ...
    for back in range(1, _MIN_PROMPT_RUN + 1):
        after_prompt &= ~valid[:, _MIN_PROMPT_RUN - back : T - back]  # ... after r ignored labels
    has_prompt = after_prompt.any(dim=1)  # (B,)
    first = after_prompt.int().argmax(dim=1) + _MIN_PROMPT_RUN  # (B,) index of that target
    plain = torch.full((B,), max(1, min(prompt_tokens, T - 1)), dtype=torch.long, device=labels.device)
    lengths = torch.where(has_prompt, first + 1, plain)  # ≤ T−1: labels[:, -1] = -100
    return torch.where(valid.any(dim=1), lengths, torch.zeros_like(lengths))


def log_generation_budget(method_cfg: MethodConfig, block_length: int) -> None:
    """Say when the block, not ``method.max_new_tokens``, bounds a plain row's continuation.

    A row without a prompt region generates at most ``T − min(prompt_tokens, T − 1)`` tokens (its prompt and
    continuation share the block); ``validate`` refuses a budget of one token, this logs a smaller one.
    """
    if method_cfg.student_data_fraction <= 0:
        return
    prompt = max(1, min(method_cfg.prompt_tokens, block_length - 1))
    room = block_length - prompt
    if room < method_cfg.max_new_tokens:
        # the prompt as taken: a row keeps one position to generate into (try-out 121, F3: "32 − 32 … at most 1")
        taken = "" if prompt == method_cfg.prompt_tokens else f", taken as {prompt} to leave one to generate"
        log.info(
            "on-policy: rows without a prompt region generate at most %s (data.block_length=%d − "
            "method.prompt_tokens=%d%s), not method.max_new_tokens=%d",
            counted(room, "token"),
            block_length,
            method_cfg.prompt_tokens,
            taken,
            method_cfg.max_new_tokens,
        )


def on_policy_turn_ends(cfg, tokenizer) -> list[int]:
    """The chat template's end-of-turn token for an on-policy run on chat data (``data.format=chat``,
    ``method.student_data_fraction > 0``), else []."""
    if cfg.data.format != "chat" or cfg.method.student_data_fraction <= 0:
        return []
    from ekd.data.chat import ChatRenderer

    return ChatRenderer(tokenizer).end_of_turn_ids()


def maybe_on_policy(
    batch: Batch,
    student: nn.Module,
    method_cfg: MethodConfig,
    generator: torch.Generator,
    eos_id: int,
    pad_id: int | None = None,
    vocab_size: int | None = None,
    end_of_turn: Sequence[int] = (),
) -> tuple[Batch, bool]:
    """With probability λ, replace the batch's continuations by samples from the student.

    Args:
        batch: Micro-batch with (B, T) ``input_ids``, ``labels`` (shifted), ``attention_mask``.
        student: A Hugging Face causal LM (has ``generate``); its train/eval modes are restored.
        method_cfg: ``student_data_fraction`` (λ), ``sampling_temperature``, ``max_new_tokens``, ``prompt_tokens``.
        generator: CPU generator for the coin and the sampling seed (:func:`on_policy_generator`); untouched when λ = 0.
        eos_id: The document end; it and every end-of-sequence id of the student's generation config
            (:func:`ekd.models.generation.stop_ids`: an instruct model's end-of-turn tokens) stop a row's
            generation, and the first one generated is the row's last target.
        pad_id: Fills positions after a row's continuation (attention 0, no target); default ``eos_id``.
        vocab_size: The tokenizer length V; head rows ≥ V (padding, e.g. Qwen's 151,936 rows for 151,665
            tokens) are never sampled. Default: every row of the head is a token.
        end_of_turn: More ids that end a turn: the chat template's end-of-turn token
            (:meth:`ekd.data.chat.ChatRenderer.end_of_turn_ids`), which a base student's config does not name.

    Returns:
        ``(new_batch, True)`` with the same shapes, dtypes and ``sample_ids`` when on-policy, else ``(batch, False)``.
    """
    fraction = method_cfg.student_data_fraction
    if fraction <= 0.0:
        return batch, False
    if float(torch.rand((), generator=generator)) >= fraction:
        return batch, False
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    pad = eos_id if pad_id is None else pad_id
    stops = stop_ids(student, eos_id)  # read before generation swaps the generation config
    stops += [i for i in end_of_turn if i not in stops]
    stop_tensor = torch.tensor(stops, device=batch.input_ids.device)  # (S,)
    input_ids, attention_mask = batch.input_ids, batch.attention_mask
    T = input_ids.shape[1]
    lengths = prompt_lengths(batch.labels, method_cfg.prompt_tokens)  # (B,)
    isolated = batch.position_ids is not None
    if isolated:
        # a prompt ending on a finished document's stop id ends before it: the student answers that document,
        # as its own generate does, not past its end inside it (try-out 155, F1: it continued after </s> in the
        # same isolated document, and the EOS position became a target)
        last_ids = input_ids.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1)  # (B,)
        lengths = lengths - (torch.isin(last_ids, stop_tensor) & (lengths > 1)).to(lengths.dtype)
    # (B,) first column of each row's prompt: the start of the document holding the prompt's last token
    # when documents are isolated, else the block start
    firsts = torch.zeros_like(lengths)
    if isolated:
        last = (lengths - 1).clamp(min=0)  # (B,)
        firsts = last - batch.position_ids.gather(1, last[:, None]).squeeze(1).to(lengths.dtype)
    new_ids = input_ids.clone()
    new_mask = attention_mask.clone()
    # (B, T) tokens that are targets: the continuations
    targets = torch.zeros_like(input_ids, dtype=torch.bool)
    with _eval_mode(student):
        for s, p in sorted(set(zip(firsts.tolist(), lengths.tolist()))):
            if p == 0:
                continue
            rows = ((lengths == p) & (firsts == s)).nonzero().squeeze(1)  # (G,)
            width = T - p
            out = _generate(
                student,
                input_ids[rows, s:p],  # (G, p − s)
                attention_mask[rows, s:p],
                max_new_tokens=min(method_cfg.max_new_tokens, width),
                temperature=method_cfg.sampling_temperature,
                stops=stops,
                pad_id=pad,
                vocab_size=vocab_size,
                uniforms=row_uniforms(seed, "on_policy", batch.sample_ids[rows], width),  # (G, T−p)
            )
            generated = out[
                :, p - s :
            ]  # (G, n), n ≤ max_new_tokens; rows that stopped early are padded by HF
            n = generated.shape[1]
            is_eos = torch.isin(generated, stop_tensor)  # (G, n) a stop id
            after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0  # (G, n) strictly after the first stop
            # (G, T−p) continuation then padding
            tail = torch.full((rows.numel(), width), pad, dtype=input_ids.dtype, device=input_ids.device)
            tail[:, :n] = generated.masked_fill(after_eos, pad)
            real = torch.zeros_like(tail, dtype=torch.bool)  # (G, T−p) generated tokens up to the first EOS
            real[:, :n] = ~after_eos
            new_ids[rows, p:] = tail
            new_mask[rows, p:] = real.to(new_mask.dtype)
            targets[rows, p:] = real
    generated_rows = (lengths > 0).unsqueeze(1)  # (B, 1)
    labels = torch.where(generated_rows, shift_labels(new_ids, targets), batch.labels)
    log.debug("on-policy micro-batch: prompt lengths %s", lengths.tolist())
    position_ids = None
    if isolated:
        # (B, T) documents of the prompt, the continuation extending the last one, padding on its own
        starts = (batch.position_ids == 0) & (torch.arange(T, device=input_ids.device) < lengths[:, None])
        pad_start = generated_rows & (new_mask == 0) & (torch.roll(new_mask, 1, dims=1) != 0)
        position_ids = document_positions(
            torch.where(generated_rows, starts | pad_start, batch.position_ids == 0)
        )
    return replace(
        batch,
        input_ids=new_ids,
        labels=labels,
        attention_mask=new_mask,
        position_ids=position_ids,
        boundary=None,
    ), True


def _generate(
    student: nn.Module,
    prompts: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    stops: list[int],
    pad_id: int,
    uniforms: torch.Tensor,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """(G, p + n) prompts and sampled continuations, n ≤ ``max_new_tokens``, no gradient.

    Token t of row i is drawn at ``uniforms[i, t]`` ((G, ≥ n) float64) by :class:`RowSampler` under greedy
    decoding, so no RNG is read.

    The checkpoint's ``generation_config`` is swapped for a neutral one for the call: HF fills unset sampling
    fields from it (e.g. top_k=20, repetition_penalty=1.05 in instruct checkpoints) and from global defaults
    (top_k=50), which would sample from a truncated, reshaped distribution instead of the student's own.
    """
    with neutral_generation_config(student), torch.no_grad():
        return student.generate(
            input_ids=prompts,
            attention_mask=attention_mask,
            do_sample=False,
            # padded head rows (ids ≥ V) masked first, then the row's own draw
            logits_processor=LogitsProcessorList(
                ([PaddedRowsMask(vocab_size)] if vocab_size else [])
                + [RowSampler(uniforms, prompt_length=prompts.shape[1], temperature=temperature)]
            ),
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=stops,  # a row stops at the first of them
        )


class PaddedRowsMask(LogitsProcessor):
    """Scores of ids ≥ ``vocab_size`` (head rows past the tokenizer) set to −inf, so they are never sampled."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """scores (G, rows) → the same tensor with columns [vocab_size, rows) at −inf."""
        scores[:, self.vocab_size :] = float("-inf")
        return scores


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) for generation; restores every submodule's own mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
