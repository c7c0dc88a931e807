"""The eight config sections — ``run, model, data, teacher, method, train, eval, log`` — as dataclasses.

Each field carries a docstring under it (litgpt style), shown by ``ekd config show --explain``, and is
declared with its accepted values (``number(default, ge=..)``, ``one_of(default, ...)``, ``text``, ``flag``,
``items``, ``mapping`` from ``ekd.config.rules``): the validator is generated from these declarations.
To add a field: ``name: type = number(default, ge=0)`` (or another constructor), then a docstring line.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ekd.config.rules import (
    TAU_MAX,
    TAU_MIN,
    Number,
    OneOf,
    Text,
    flag,
    items,
    kd_tau,
    mapping,
    number,
    one_of,
    text,
)


def _plain_name(value: str) -> str | None:
    """A run name is one path component: not blank, not starting with '.' (no '.', '..' or hidden names,
    which the run directory's own temporary siblings use) or '~', no separators, no space at either end (a directory
    'runs/ lead' that `ls` shows as 'lead': try-out 108, F14), at most 245 bytes (a file name's 255 less the 10
    its siblings '.NAME.lock' and '.NAME.replaced' add)."""
    if not value.strip() or value.startswith(".") or "/" in value or "\\" in value or not value.isprintable():
        return "must be a plain name (printable, no '/' or '\\', not starting with '.')"
    if value != value.strip():
        return "must not start or end with a space"
    if value.startswith("~"):  # try-out 137, F9: `ekd eval ~` read the run's files from the home directory
        return "must not start with '~', which paths read as the home directory"
    if len(value.encode()) > 245:  # its lock '.NAME.lock' and an --overwrite's '.NAME.replaced' add 10 to 255
        return (
            f"is {len(value.encode())} bytes long: at most 245 (a file name holds 255, its lock file adds 10)"
        )
    return None


def _device_name(value: str) -> str | None:
    if re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        return None
    return "must be auto, cpu, cuda or cuda:N"


# Names from registries, read when validating (the registries import torch and the config types).
def _preset_names() -> list[str]:
    from ekd.methods import presets

    return presets.names()


def _divergence_names() -> list[str]:
    from ekd.losses.divergences import divergences

    return [n for n in divergences.names() if n != "hellinger"]  # hellinger: a score, not a KD loss


def _scorer_names() -> list[str]:
    from ekd.selection.scores import scorers

    return ["none", *scorers.names()]


def _component_scorer_names() -> list[str]:
    return [n for n in _scorer_names() if n not in ("none", "composite")]


def _policy_names() -> list[str]:
    from ekd.selection.policies import policies

    return policies.names()


def _sample_scorer_names() -> list[str]:
    from ekd.selection.sample_selection import SAMPLE_SCORERS

    return list(SAMPLE_SCORERS)


def _temperature_names() -> list[str]:
    from ekd.temperature import temperatures

    return temperatures.names()


@dataclass
class RunConfig:
    name: str = text("run", check=_plain_name, what="a plain name")
    """Run name; the run directory is ``<output_dir>/<name>``."""
    output_dir: str = text("runs", nonempty=True, what="a directory")
    """Parent directory of run directories."""
    seed: int = number(0, ge=0, le=2**63 - 1)
    """Seed for model init, data order, sampling of targets and random selection."""
    device: str = text("auto", check=_device_name, what="auto, cpu, cuda or cuda:N")
    """'auto' (cuda if available, else cpu), 'cpu', 'cuda' or 'cuda:N'."""


@dataclass
class ModelConfig:
    student: str = text("preset:llama-tiny", nonempty=True, what="hub id, directory or preset:<name>")
    """Student: a hub id (``Qwen/Qwen2.5-0.5B``), a local HF model directory, or ``preset:<name>`` (random
    init from a small Llama-style architecture preset, see ``ekd list architectures``)."""
    teacher: str = text("preset:llama-small", nonempty=True, what="hub id, directory or preset:<name>")
    """Teacher: a hub id, a local HF model directory, or ``preset:<name>``. Unused when the method needs no
    teacher; with ``teacher.source=cache`` it names the cache's teacher (compared with the cache's), whose
    config and tokenizer the cache keeps, and is loaded only to evaluate it (``eval.teacher``)."""
    revision: str = text("", what="hub revision")
    """Hub revision (branch, tag or commit) of hub ids: student, tokenizer, and the teacher unless
    ``teacher_revision`` is set; empty = default branch."""
    teacher_revision: str = text("", what="hub revision")
    """Hub revision of ``model.teacher`` alone (a teacher's commit beside a hub student's: one commit cannot pin two
    repositories); empty = ``model.revision``."""
    trust_remote_code: bool = flag(False)
    """Allow model code from the hub. Off unless you trust the repository."""
    tokenizer: str = text("teacher", nonempty=True, what="teacher, student, train_bpe, a path or hub id")
    """'teacher' (the teacher's tokenizer), 'student', a path/hub id, or 'train_bpe' (a byte-level BPE
    trained on the training split, runs of non-whitespace cut at 256 characters for training; only with preset
    models). A preset has no tokenizer: 'teacher' or 'student' naming one reads the other model's if that is real,
    else trains the BPE."""
    bpe_vocab_size: int = number(4096, ge=257, le=2**20, why="256 bytes + <|endoftext|>")
    """Vocabulary size of the trained BPE when ``model.tokenizer`` is 'train_bpe'."""
    teacher_dtype: str = one_of("auto", "auto", "float32", "bfloat16", "float16")
    """Teacher weights dtype: 'auto' (bf16 on GPU, fp32 on CPU), 'float32', 'bfloat16', 'float16'."""
    attn_implementation: str = one_of(
        "", "", "eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"
    )
    """Attention implementation passed to transformers ('sdpa', 'eager', 'flash_attention_2'); empty = default."""
    lora_r: int = number(0, ge=0)
    """LoRA rank of the student's adapters (peft; ``pip install 'ekd[lora]'``); 0 = train every student weight.
    With r > 0 the base weights stay frozen and only the adapters (and the head, see ``lora_train_head``) train."""
    lora_alpha: float = number(16.0, gt=0)
    """LoRA scaling α: the adapter update B·A is multiplied by α/r."""
    lora_dropout: float = number(0.0, ge=0, lt=1)
    """Dropout on the adapters' input during training."""
    lora_target_modules: list[str] = items(
        lambda: ["all-linear"], Text(nonempty=True, what="a module name"), min_items=1
    )
    """Modules that get adapters: names or suffixes (``[q_proj, v_proj]``), or ``[all-linear]`` (every linear
    layer of the body; peft's shorthand). The output head is never adapted (ekd applies it in chunks)."""
    lora_train_head: bool = flag(False)
    """Also train the output head's weight fully (with a tied head, the input embedding it shares)."""
    lora_export: str = one_of("merged", "merged", "adapter")
    """What ``<run>/student`` holds after a LoRA run: 'merged' (a plain HF model directory, adapters merged
    into the weights) or 'adapter' (peft's adapter directory and ``ekd_base.json`` naming the base model)."""
    export_dtype: str = one_of("auto", "auto", "float32", "bfloat16", "float16")
    """Dtype of the weights written to ``<run>/student``: 'auto' (the student's own: the ``dtype`` its
    config.json declares, float32 for a preset or a config that declares none), 'float32', 'bfloat16' or
    'float16'. Training keeps fp32 master weights (and checkpoints hold them); after the last optimizer step
    the shipped weights are rounded to this dtype in place, so the final evaluation scores exactly the
    weights that are written. A LoRA adapter export writes its adapters (and trained head) in it."""
    export_head_rows: str = one_of("keep", "keep", "trim")
    """A student head with more rows than the tokenizer has tokens (a padded vocabulary): ekd trains and
    scores only the first V rows (V = tokenizer length). 'keep': ship every row (the architecture's shape) and
    list the padded ids in ``generation_config.suppress_tokens``, so ``generate`` never emits them; an
    evaluator that softmaxes over the whole head still sees their probability (``eval/<set>/padded_mass``,
    ``ppl_full_head``). 'trim': cut the head (and a tied embedding) to V rows before the final evaluation,
    so the shipped model is exactly the model ekd scored for every evaluator (``vocab_size`` becomes V;
    not for ``model.lora_export=adapter``, whose base keeps its shape, nor ``train.parallel=fsdp``)."""

    @property
    def teacher_hub_revision(self) -> str:
        """The revision the teacher is read at: ``teacher_revision``, else ``revision``."""
        return self.teacher_revision or self.revision

    def revision_of(self, role: str) -> str:
        """The revision ``role``'s hub files are read at: :attr:`teacher_hub_revision` for 'teacher', ``revision``
        for the student or a tokenizer of its own."""
        return self.teacher_hub_revision if role == "teacher" else self.revision

    @property
    def teacher_revision_key(self) -> str:
        """The key that sets :attr:`teacher_hub_revision`, for messages."""
        return "model.teacher_revision" if self.teacher_revision else "model.revision"


def _eval_set_name(name: str) -> str | None:
    """Why ``name`` cannot name an eval set (a key of eval.json and of ``eval/<set>/<metric>`` metrics), or None."""
    if name in ("train", "eval", "tasks", "summary"):
        return "is a name ekd uses itself (train, eval, tasks, summary); choose another name"
    if not re.fullmatch(r"[\w.-]+", name):
        # YAML reads {ood:/path} as one key (try-out 55, F1)
        name_colon = re.fullmatch(r"([\w.-]+):\S.*", name)
        hint = f"; in YAML a space must follow the colon: {{{name_colon[1]}: ...}}" if name_colon else ""
        if not hint and "/" in name:  # the rest of a path a comma cut in a YAML mapping (try-out 137, F7)
            hint = "; a value holding ',' is cut there in a YAML mapping: put it in quotes ({name: 'a,b/file.txt'})"
        return f"must be a word (letters, digits, _, -, .): it names metrics eval/<set>/<metric>{hint}"
    return None


@dataclass
class DataConfig:
    source: str = text("pystdlib", nonempty=True, what="a data source")
    """Training data: 'pystdlib' (builtin: the Python standard library source), a .txt/.jsonl/.parquet
    file, a directory of text files (its hidden files, JSONL/Parquet files and ekd's own run directories,
    caches, token stores and lock files are left out), a glob (each file read by its format: 'DIR/*.jsonl'
    gives rows, other files one document each; ekd's own outputs left out), or ``hf:<dataset name or local
    path>``."""
    format: str = one_of("auto", "auto", "text", "jsonl", "parquet", "hf", "chat")
    """'auto' (by extension), 'text', 'jsonl', 'parquet', 'hf', or 'chat': JSONL/Parquet/HF rows whose
    ``data.messages_field`` holds a conversation, rendered with the chat template; loss on assistant tokens only."""
    messages_field: str = text("messages", nonempty=True, what="a field name")
    """``data.format=chat``: field holding the conversation, a list of ``{role, content}`` messages."""
    tools_field: str = text("tools", nonempty=True, what="a field name")
    """``data.format=chat``: field holding a row's tool definitions (a list of JSON-schema objects, or a JSON
    string of one), passed to the chat template as ``tools``, as ``apply_chat_template(tools=...)`` does; a
    row without the field (or with null or ``[]``) has none."""
    chat_template: str = text("", what="a Jinja chat template or a file holding one")
    """``data.format=chat``: the chat template to render with (a Jinja string, or the path of a file holding
    one), instead of the tokenizer's; required when the tokenizer has none."""
    chat_template_from: str = one_of("", "", "teacher", "student")
    """``data.format=chat``: whose tokenizer's chat template to use when teacher and student render differently
    ('' = they must agree on the first rows)."""
    text_field: str = text("text", nonempty=True, what="a field name")
    """Field holding the document text in JSONL/Parquet/HF rows."""
    prompt_field: str = text("", what="a field name")
    """If set (with ``response_field``), rows are prompt/response pairs and prompt tokens get no loss. The two
    are tokenized as separate strings (a word split across them, 'Ca' + 'ts', is trained as its two pieces):
    end the prompt before a word, not inside one."""
    response_field: str = text("", what="a field name")
    """Response field of prompt/response rows."""
    hf_name: str = text("", what="a dataset configuration name")
    """Configuration name of a Hugging Face dataset (the second argument of ``load_dataset``)."""
    hf_split: str = text("train", nonempty=True, what="a split name")
    """Split of a Hugging Face dataset used for training."""
    block_length: int = number(256, ge=2, why="a block needs an input and a target")
    """Tokens per packed training block (T)."""
    eval_fraction: float = number(0.05, ge=0, le=0.9)
    """Fraction held out as the in-distribution eval set, deterministic: by document content hash (at least one
    document when > 0); for 'pystdlib', by top-level module."""
    eval_sources: dict[str, str] = mapping(
        Text(nonempty=True, what="a data source"), keys=Text(check_fn=_eval_set_name, what="an eval set name")
    )
    """Extra named eval sets, name → source (same syntax as ``data.source``, plus ``pystdlib:<split>``; the
    format is detected from the source, ``data.format`` applies to ``data.source`` only, except that with 'chat'
    JSONL/Parquet/HF eval sets are chat rows too), e.g. shifted domains. A name is a word (letters, digits,
    ``_``, ``-``, ``.``), not ``train``, ``eval`` or one of eval.json's own keys (``tasks``, ``summary``)."""
    max_documents: int = number(0, ge=0)
    """Use at most this many documents (0 = all)."""
    min_chars: int = number(1, ge=0)
    """Drop documents shorter than this many characters, and (unless 0) documents of only whitespace."""
    max_chars: int = number(0, ge=0)
    """Cap the characters of each split (0 = no cap): whole documents in order, up to the first that would pass
    the cap, where the split stops (a line says where; one long document early on stops it early). The builtin
    corpus named alone (``data.source=pystdlib``: its train, eval and shifted sets) passes over a file that does
    not fit and reads only what it needs; a ``pystdlib:<split>`` source (or eval source) is read like any other,
    whole and then cut (try-out 108, F10: 2 documents of ``shift_tests`` where the builtin set keeps 30)."""
    max_document_chars: int = number(16 * 2**20, ge=0)
    """Refuse a document longer than this many characters before it is tokenized (0 = no limit; default 16 Mi):
    a document is tokenized whole, and a fast tokenizer holds ~170 bytes per character of it at once (offsets
    and alignments), so one 176 MB document took 24 GB and was killed (try-out 98). A text file named alone is
    one document until two blank lines separate documents."""
    max_eval_blocks: int = number(64, ge=0)
    """Blocks scored per eval set (0 = all): spread evenly over the blocks that hold a target among the set's
    first 32 times as many blocks, so a few long documents cannot fill the budget (``ekd.data.eval_sample``)."""
    document_attention: str = one_of("isolated", "isolated", "packed")
    """'isolated': each packed document attends only to itself (block-diagonal causal attention, positions
    restarting at every document) in training, cache building and evaluation; 'packed': every token attends to
    everything before it in the block, earlier documents included (the behaviour before isolation). A model
    that does not isolate documents through position ids (OPT, BLOOM, MPT, Falcon) is refused under 'isolated'
    (``ekd.models.isolation``)."""
    separator: str = one_of("auto", "auto", "eos", "bos_eos", "none")
    """Document boundaries: 'auto' (the models' convention: BOS if the tokenizer adds one, the models'
    end-of-document id ``eos_token_id``), 'eos' (tokenizer EOS after each document), 'bos_eos' (tokenizer BOS
    before, EOS after) or 'none' (nothing added; no end-of-document target)."""
    max_tokens: int = number(0, ge=0)
    """Token budget of the training split (0 = all): tokenizing stops once it is reached and the split keeps
    ``max_tokens // block_length`` blocks; with ``store_dir`` set, reading the source stops there too — except
    that ``model.tokenizer=train_bpe`` trains its BPE on the whole training split, documents past the budget
    included (their text shapes the vocabulary, and ``data.max_document_chars`` applies to them)."""
    store_dir: str = text("", what="a directory")
    """Token store: '' = tokenize and pack in memory on every run; 'auto' = ``<run.output_dir>/token-store``;
    else this directory. Packed blocks are written there once (memory-mapped, read lazily by every run and
    rank; reused while data, tokenizer and packing settings are unchanged) — for corpora larger than memory."""
    hf_streaming: bool = flag(False)
    """Read ``hf:`` datasets with ``load_dataset(..., streaming=True)`` (no full download; use with
    ``max_tokens``)."""


READ_ONLY_DATA_KEYS = ("store_dir", "hf_streaming", "max_document_chars")
"""``data.*`` keys that decide how the documents are read — where the packed blocks are kept (a token store holds
the in-memory path's blocks exactly), whether a hub dataset streams, the longest document accepted (refused, never
cut) —, never which blocks: runs, token stores and eval sets differing only in them hold the same blocks (a
``--resume`` checks the training blocks' sha256 all the same)."""


@dataclass
class TeacherConfig:
    source: str = one_of("online", "online", "cache", "none")
    """'online' (teacher model in memory), 'cache' (targets and statistics from ``ekd cache``; no teacher
    loaded) or 'none' (no teacher: CE-only methods)."""
    cache_dir: str = text("", what="a directory")
    """Directory of a teacher cache built by ``ekd cache`` (with ``teacher.source=cache``)."""
    cache_positions: str = one_of("all", "all", "teacher_entropy_topk")
    """Positions ``ekd cache`` stores targets for: 'all' valid positions or 'teacher_entropy_topk'."""
    cache_fraction: float = number(0.2, gt=0, le=1)
    """Fraction of valid positions per sequence cached with ``cache_positions=teacher_entropy_topk``."""
    cache_shard_samples: int = number(1024, ge=1)
    """Samples per cache shard."""
    cache_stat_format: str = one_of("q8", "q8", "fp16")
    """Teacher statistics in the cache: 'q8' (2 B/position, ≤ 0.02 nats at H=2) or 'fp16' (4 B/position)."""
    placement: str = one_of("replicate", "replicate", "shard")
    """Online teacher under ``torchrun``: 'replicate' (a full copy per rank, eval mode, no gradients) or
    'shard' (FSDP2 over the ranks: each decoder layer gathered for its forward and freed after; no optimizer
    state). A single process holds the whole teacher either way."""


@dataclass
class MethodConfig:
    preset: str = one_of("kd", names=_preset_names)
    """Named method preset (``ekd list presets``); its values are defaults under the keys set explicitly. Applied
    when a config is built (``load_config``, ``config_from_dict``, ``build_config``): a ``MethodConfig(preset=…)``
    constructed directly holds the name only (docs/library.md)."""
    # -- what the KD term compares --
    divergence: str = one_of(
        "forward_kl",
        names=_divergence_names,
        elsewhere=(("hellinger", "a selection score, not a KD loss: method.scorer=hellinger"),),
    )
    """Per-token divergence: forward_kl, reverse_kl, jsd, skew_forward_kl, skew_reverse_kl, tvd."""
    jsd_beta: float = number(0.5, ge=0, le=1)
    """β of the generalized JSD (0 = forward KL, 1 = reverse KL)."""
    skew_alpha: float = number(0.1, ge=0, le=0.999)
    """α of the skew KL divergences (DistiLLM)."""
    kd_weight: float = number(1.0, ge=0)
    """Weight of the KD term (0 disables KD: CE only)."""
    ce_weight: float = number(0.0, ge=0)
    """α_CE: weight of the cross-entropy term on the gold tokens."""
    ce_on: str = one_of("all", "all", "selected")
    """CE positions: 'all' valid tokens or 'selected' (the KD positions)."""
    kd_temperature: float = kd_tau(1.0)
    """τ of the 'constant' temperature policy (also τ_base of idts, τ0 of schedule); 0.1–100 (``rules.KD_TAU``)."""
    scale_by_tau_squared: bool = flag(True)
    """Multiply each token's KD loss by τ² (Hinton)."""
    # -- how the teacher's distribution is delivered --
    target: str = one_of("dense", "dense", "topk", "rs")
    """'dense' (full teacher distribution), 'topk' (K largest) or 'rs' (Random-Sampling KD)."""
    topk: int = number(12, ge=1)
    """K of the top-K target."""
    topk_tail: str = one_of("renormalize", "renormalize", "ghost", "to_gold")
    """Tail handling of top-K: 'renormalize', 'ghost' (one bucket for the tail mass) or 'to_gold'."""
    rs_samples: int = number(50, ge=1, le=63, why="6-bit counts in the cache")
    """N draws with replacement per position for RS-KD."""
    rs_proposal_power: float = number(
        1.0,
        ge=1 / TAU_MAX,
        le=1 / TAU_MIN,
        why="β is the inverse temperature of the proposal r ∝ p^β: the KD temperatures' range, inverted",
    )
    """β of the RS proposal r ∝ p^β (1 = sample from p itself; ≠1 adds importance weights p/r)."""
    # -- where: scorer and selection policy --
    scorer: str = one_of("none", names=_scorer_names)
    """Position score (``ekd list scorers``); 'none' when the policy needs no score."""
    scorer_weights: dict[str, float] = mapping(Number(), keys=OneOf(_component_scorer_names))
    """'composite' scorer: score name → weight."""
    scorer_normalization: str = one_of("zscore", "zscore", "minmax")
    """'composite' scorer: per-sequence 'zscore' or 'minmax' normalization of each score."""
    policy: str = one_of("all", names=_policy_names)
    """Selection policy (``ekd list policies``)."""
    select_fraction: float = number(1.0, gt=0, le=1)
    """k: fraction of valid positions selected (topk, gls, curriculum, pos_rs, bandit budget)."""
    select_per: str = one_of("sequence", "sequence", "batch")
    """topk scope: 'sequence' (⌈k·n_i⌉ per sequence) or 'batch' (⌈k·N⌉ over the micro-batch)."""
    gls_queue_size: int = number(30000, ge=1)
    """GLS: FIFO length of recent token scores."""
    curriculum_steps: int = number(0, ge=0)
    """Curriculum length in steps (0 = train.max_steps)."""
    curriculum_start: float = number(0.0, ge=0, le=1)
    """Curriculum phase φ at step 0 (0 = easiest window)."""
    curriculum_end: float = number(1.0, ge=0, le=1)
    """Curriculum phase φ at the end (1 = hardest window)."""
    curriculum_power: float = number(1.0, gt=0)
    """Curriculum pacing exponent: φ = start + (end−start)·(step/steps)^power."""
    coverage_start: float = number(0.1, gt=0, le=1)
    """coverage_schedule: k at step 0."""
    coverage_end: float = number(0.5, gt=0, le=1)
    """coverage_schedule: k at the end of training."""
    coverage_shape: str = one_of("linear", "linear", "cosine", "step")
    """coverage_schedule: 'linear', 'cosine' or 'step'."""
    bucket_low: float = number(0.0, ge=0, le=100)
    """bucket policy: lower score percentile (0–100)."""
    bucket_high: float = number(100.0, ge=0, le=100)
    """bucket policy: upper score percentile (0–100)."""
    pos_rs_power: float = number(1.0, ge=0)
    """pos_rs: α in q_i ∝ score_i^α."""
    pos_rs_self_normalized: bool = flag(False)
    """pos_rs: self-normalized weights instead of the unbiased 1/(K·q_i)."""
    latf_warmup_fraction: float = number(0.05, ge=0, le=1)
    """LATF (AdaKD): warm-up fraction of training with r = 1."""
    latf_ema_decay: float = number(0.99, ge=0, lt=1)
    """LATF: β of the loss EMA."""
    latf_tolerance: float = number(0.05, ge=0)
    """LATF: ε, relative band around L_ref."""
    latf_step: float = number(0.05, ge=0, lt=1)
    """LATF: δ, multiplicative change of r (r ← r(1 ∓ δ); δ ≥ 1 would make r(1 − δ) ≤ 0: try-out 71, F3)."""
    latf_min_ratio: float = number(0.1, gt=0, le=1)
    """LATF: floor of r."""
    bandit_kind: str = one_of("linucb", "linucb", "exp3")
    """bandit: 'linucb' (contextual, per token) or 'exp3' (budget per step)."""
    bandit_alpha: float = number(1.0, ge=0)
    """bandit LinUCB: exploration α."""
    bandit_ridge: float = number(1.0, gt=0)
    """bandit LinUCB: ridge λ of A = λI + Σxxᵀ."""
    bandit_min_fraction: float = number(0.05, ge=0, le=1)
    """bandit: minimum selected fraction."""
    bandit_max_fraction: float = number(0.5, gt=0, le=1)
    """bandit: maximum selected fraction."""
    bandit_threshold: float = number(0.0)
    """bandit LinUCB: select tokens whose UCB score (predicted KL drop + exploration bonus, nats) exceeds
    this, then clamp the count per sequence to [min, max] fraction. Not given by the EKD draft; 0 = select
    tokens predicted to improve."""
    bandit_budgets: list[float] = items(lambda: [0.1, 0.2, 0.3, 0.5], Number(gt=0, le=1), min_items=1)
    """bandit EXP3: the budgets k it chooses among."""
    bandit_gamma: float = number(0.1, gt=0, le=1)
    """bandit EXP3: exploration γ."""
    sample_fraction: float = number(1.0, gt=0, le=1)
    """Sample selection (SE-KD3X TopSmp): keep this fraction of training samples (1 = off)."""
    sample_scorer: str = one_of("student_entropy", names=_sample_scorer_names)
    """Sample selection score by the frozen initial student: student_entropy, forward_kl, ce_ratio, random."""
    # -- at what temperature --
    temperature: str = one_of("constant", names=_temperature_names, numbers="method.kd_temperature")
    """Temperature policy: constant, schedule, idts (AdaKD), entropy_map (EGAD)."""
    temperature_end: float = kd_tau(1.0)
    """schedule: τ1 at the end."""
    temperature_hold_fraction: float = number(0.0, ge=0, le=1)
    """schedule: hold τ0 for this fraction of training, then linear to τ1."""
    idts_strength: float = number(0.5, ge=0)
    """IDTS: c in τ_i = τ_base·exp(−c·ŝ_i); τ_base·e^(±c) must stay within 0.1–100 (c ≤ 2.3 at τ_base = 1)."""
    entropy_tau_min: float = kd_tau(1.0)
    """entropy_map: τ at the low end of g."""
    entropy_tau_max: float = kd_tau(2.0)
    """entropy_map: τ at the high end of g."""
    entropy_direction: str = one_of("increasing", "increasing", "decreasing")
    """entropy_map: 'increasing' (τ grows with teacher entropy) or 'decreasing'. Unverified in EGAD."""
    # -- EGAD feature branch --
    feature_weight: float = number(0.0, ge=0)
    """λ_feat of the feature loss on hard tokens (0 = off)."""
    feature_hard_fraction: float = number(0.5, ge=0, le=1)
    """Fraction of selected tokens (highest teacher entropy) that are 'hard'."""
    feature_loss: str = one_of("mse", "mse", "cosine")
    """'mse' or 'cosine'."""
    feature_student_layer: int = number(-1)
    """Student hidden state for the feature loss: an index into transformers' hidden_states (0 = the embedding
    output, k = decoder layer k's output, -1 = the final hidden state after the model's last norm)."""
    feature_teacher_layer: int = number(-1)
    """Teacher hidden state for the feature loss, indexed as feature_student_layer."""
    # -- objectives --
    objective: str = one_of("kd", "kd", "dkd", "atkd", "ema_self_distill", "uncertainty")
    """'kd' (divergence), 'dkd', 'atkd', 'ema_self_distill', 'uncertainty'."""
    dkd_beta: float = number(8.0, ge=0)
    """DKD: β weight of NCKD."""
    atkd_lambda: float = number(0.2, ge=0, le=1)
    """AT-KD: λ weight of easy tokens (NCKD), 1 − λ that of hard ones (TCKD + NCKD): in [0, 1] — above 1 the hard
    tokens' weight is negative and the student is trained away from the teacher (try-out 121, F1)."""
    ema_decay: float = number(0.999, ge=0, le=1)
    """ema_self_distill: decay of the EMA student."""
    ema_weight: float = number(1.0, ge=0)
    """ema_self_distill: weight of the KL(q_ema‖q) term."""
    uncertainty_fraction: float = number(0.5, ge=0, le=1)
    """uncertainty: ρ, fraction of highest-loss tokens trained with MLE."""
    uncertainty_weight: float = number(1.0, ge=0)
    """uncertainty: λ weight of self-distillation on the other tokens."""
    # -- on-policy distillation (GKD) --
    student_data_fraction: float = number(0.0, ge=0, le=1)
    """GKD λ: probability that a micro-batch's continuations are sampled from the student (0 = off)."""
    sampling_temperature: float = number(1.0, gt=0)
    """Temperature for sampling student continuations (not the KD temperature)."""
    max_new_tokens: int = number(64, ge=1)
    """Tokens the student generates per sequence in on-policy batches."""
    prompt_tokens: int = number(32, ge=1)
    """On-policy prompt length for data without prompt/response fields: the first tokens of each block."""


@dataclass
class TrainConfig:
    max_steps: int = number(100, ge=1)
    """Optimizer steps."""
    micro_batch_size: int = number(8, ge=1)
    """Sequences per micro-batch."""
    grad_accum_steps: int = number(1, ge=1)
    """Micro-batches per optimizer step."""
    lr: float = number(1e-3, gt=0)
    """Peak learning rate (AdamW)."""
    weight_decay: float = number(0.01, ge=0)
    """AdamW weight decay (not applied to biases and norms)."""
    beta1: float = number(0.9, ge=0, lt=1)
    """AdamW β1."""
    beta2: float = number(0.95, ge=0, lt=1)
    """AdamW β2."""
    warmup_steps: int = number(10, ge=0)
    """Linear warm-up steps, then cosine decay to ``min_lr_ratio``·lr."""
    min_lr_ratio: float = number(0.1, ge=0, le=1)
    """Final learning rate as a fraction of the peak."""
    max_grad_norm: float = number(1.0, ge=0)
    """Gradient clipping norm (0 = off)."""
    precision: str = one_of("auto", "auto", "fp32", "bf16")
    """'auto' (bf16 autocast on GPU, fp32 on CPU), 'fp32' or 'bf16'. Under autocast the bodies and the output
    heads' GEMMs run in bf16 while softmax, divergences and sums stay fp32; on GPU, 'auto'/'bf16' also turn
    TF32 on for the remaining fp32 matmuls ('fp32': none)."""
    activation_checkpointing: bool = flag(False)
    """Recompute each decoder layer's activations in backward instead of storing them (torch's
    non-reentrant ``checkpoint_wrapper`` per layer): less memory, one more forward. One process, DDP, FSDP2."""
    checkpoint_every: int = number(0, ge=0)
    """Write a checkpoint every N steps (0 = only at the end)."""
    keep_checkpoints: int = number(2, ge=1)
    """Keep the newest N checkpoints."""
    loss_path: str = one_of("chunked", "chunked", "chunked_recompute", "reference")
    """'chunked' (fused: per-chunk logits, loss and gradient in the forward; O(chunk·V) memory),
    'chunked_recompute' (per-chunk activation checkpointing) or 'reference' (plain full logits)."""
    head_chunk_size: int = number(0, ge=0)
    """Rows per chunk of the head/loss and statistics (0 = auto: one fp32 (rows, V) buffer ≈ 128 MiB on CPU —
    1024 rows at V=32,768, 256 at V=151,936 — and ≈ 512 MiB on a GPU — 1024 rows up to V≈185k, 512 above, which on an H200
    took half the head's time of 256 rows). On CPU a quarter of the CPU size is as fast at about a third of the
    step's peak memory (docs/benchmarks.md, "Chunk rows of the whole step", "GPU checks")."""
    compile: bool = flag(False)
    """torch.compile the per-chunk loss function of the fused head (``loss_path=chunked``; other paths are not
    compiled, and the run is refused)."""
    parallel: str = one_of("ddp", "ddp", "fsdp")
    """Data parallelism under ``torchrun``: 'ddp' (torch's DistributedDataParallel: a full student per rank,
    gradients all-reduced in buckets during backward) or 'fsdp' (FSDP2 ``fully_shard`` per decoder layer +
    root: parameters, gradients and AdamW state sharded over ranks; bf16 parameters with fp32 gradient
    reduction on GPU). Both skip communication on accumulation micro-batches. A single process needs none."""
    cpu_offload: bool = flag(False)
    """With ``parallel=fsdp``: keep the sharded parameters, gradients and optimizer state in CPU memory
    (FSDP2 ``CPUOffloadPolicy``); slower, for students whose state does not fit the GPUs."""


@dataclass
class EvalConfig:
    every: int = number(0, ge=0)
    """Evaluate every N steps during training, and once before the first step (logged at step 0: the student
    as it starts); 0 = only at the end."""
    batch_size: int = number(8, ge=1)
    """Sequences per eval batch."""
    ece_bins: int = number(15, ge=1, le=1000)
    """Equal-width top-1 confidence bins (lo, hi] of ECE and the reliability diagram (Guo et al. 2017: 15)."""
    entropy_buckets: int = number(4, ge=0, le=1000)
    """Equal-width buckets of normalized teacher entropy Ĥ = H/log V in [0, 1] for the per-bucket metrics
    ``kl@H{b}``, ``acc@H{b}``, ``agree@H{b}``, ``tokens@H{b}`` (0 = off). Equal-width, not quantile, so
    evaluation streams in one pass and buckets mean the same thing across models and runs."""
    student_init: bool = flag(True)
    """Also score the student as it starts, before the first step (a pre-trained student's own figures), on every
    eval set: eval.json records them in each set's entry (``student_init``) and the tables of ``ekd distill`` and
    ``ekd eval`` show them as ``<set>/student_init`` rows, so what training changed is read beside the result.
    The evaluation at step 0 that ``every`` > 0 makes is this one (not made twice); not made again on --resume."""
    teacher: bool = flag(True)
    """Score the eval sets beside the teacher when a teacher model is available: KL(teacher‖student), top-1
    agreement, the per-entropy-bucket metrics (``entropy_buckets``) and, with ``teacher_metrics``, the teacher's own
    row; false = none of them (no teacher at evaluation)."""
    teacher_metrics: bool = flag(True)
    """With ``teacher``: also report the teacher's own metrics (ppl, accuracy, ECE) on each eval set."""
    plots: bool = flag(True)
    """Write reliability diagrams to ``plots/``."""
    tasks: list[str] = items(list, Text(nonempty=True, what="a task name"))
    """Downstream lm-evaluation-harness tasks run on the final student (and the teacher, cached once), e.g.
    ``[arc_easy, hellaswag, piqa, lambada_openai, gsm8k]``; needs ``pip install 'ekd[eval]'``. Empty = off."""
    tasks_dir: str = text("", what="a directory")
    """A directory of lm-eval task YAMLs (e.g. local JSON/JSONL datasets) whose task names ``eval.tasks`` may use."""
    tasks_limit: int = number(0, ge=0)
    """At most this many documents per task (0 = all)."""
    tasks_num_fewshot: int = number(-1, ge=-1)
    """Few-shot examples per task (-1 = the task's own default, 0 for most)."""
    tasks_max_new_tokens: int = number(0, ge=0)
    """Generation tasks (GSM8K, IFEval): greedy decoding, at most this many new tokens (stops at EOS and the
    task's stop strings too); 0 = each task's own ``max_gen_toks`` (lm-eval's 256 when the task sets none)."""
    tasks_chat_template: str = one_of("auto", "auto", "on", "off")
    """Chat template on generation-task prompts: 'auto' (when the tokenizer has one), 'on' or 'off'.
    Multiple-choice and log-likelihood tasks never use it."""
    tasks_teacher: bool = flag(True)
    """Also run the tasks on the teacher (cached in ``<run>/tasks/`` and reused)."""
    tasks_student_init: bool = flag(True)
    """Also run the tasks on the initial student (``model.student``, cached) for the gap closed
    (student − init)/(teacher − init)."""
    tasks_cache_dir: str = text("", what="a directory")
    """Where the teacher's and initial student's task results are cached ('' = ``<run>/tasks``). Runs that
    share one (a sweep over methods or seeds) compute them once; a result is reused only for the same model
    files and task settings."""
    set_tags: dict[str, str] = mapping(
        OneOf(("in_distribution", "shift", "diversity_shift", "correlation_shift"))
    )
    """Eval set or task name → 'in_distribution', 'shift', 'diversity_shift' or 'correlation_shift' (ShiftKD).
    Default: names starting with 'shift' are 'shift', others 'in_distribution'. Tags are reported side by
    side and never averaged together."""


@dataclass
class LogConfig:
    every: int = number(1, ge=1)
    """Write metrics every N steps."""
    tensorboard: bool = flag(True)
    """Also write TensorBoard events to ``tb/``."""
    progress: bool = flag(True)
    """Show progress bars: ekd's own and, while eval.tasks run, lm-eval's (false: none drawn)."""
    level: str = one_of("INFO", "DEBUG", "INFO", "WARNING", "ERROR", ignore_case=True)
    """Level of ekd's log lines: DEBUG, INFO, WARNING or ERROR (``ekd -q`` keeps at least WARNING)."""
    wandb_project: str = text("", what="a W&B project")
    """Weights & Biases project to log to (``pip install 'ekd[wandb]'``); empty = off. Rank 0 logs the resolved
    config and the metrics.jsonl scalars; the run's files go to ``<run>/wandb`` (or ``$WANDB_DIR``)."""
    wandb_name: str = text("", what="a W&B run name")
    """Name of the W&B run; empty = ``run.name``."""
    wandb_mode: str = one_of("online", "online", "offline", "disabled")
    """'online' (stream to the W&B server), 'offline' (write locally; ``wandb sync`` later) or 'disabled'."""


REPORTING_KEYS = ("log.",)
"""Config keys (dotted prefixes) that change how a run reports itself — progress bars, the log level, how often
metrics are written, TensorBoard, W&B — and nothing it computes: two configs that differ only there describe the
same run (``ekd distill`` on an existing run directory, the groups of ``ekd compare``)."""


def is_reporting_key(key: str) -> bool:
    """Whether the flat config key ``key`` (``section.name``) is one of :data:`REPORTING_KEYS`: it changes how a
    run reports itself, nothing the run computes."""
    return key.startswith(REPORTING_KEYS)


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """A config as sections of keys (``Config.to_dict()``, a saved ``config.yaml``) as flat keys:
    ``{"train": {"lr": 1}}`` → ``{"train.lr": 1}``. A section left empty in YAML (None) has no keys; a section
    that is not a mapping at all keeps its value under its own name (a comparison still sees it differ).
    Reads only: unknown sections and keys pass through (``ekd.config.load`` is what refuses them)."""
    out: dict[str, Any] = {}
    for section, values in config.items():
        if isinstance(values, dict):
            out.update({f"{section}.{k}": v for k, v in values.items()})
        elif values is not None:
            out[section] = values
    return out


def with_todays_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config (a run's ``config.yaml``, sections of keys) with the keys of its sections that it lacks set
    to today's defaults, ``method.*`` to its preset's (as a config is built). A run saved by an ekd before a key
    existed ran as that key's default does (a key is added with a default that keeps what earlier runs
    computed, on the data they could read), so ``--resume`` and ``ekd compare`` see no difference in a key that
    run could not have set. Sections that are not mappings, unknown sections and unknown keys pass through."""
    from ekd.methods import preset_values

    today = Config().to_dict()
    if isinstance(method := saved.get("method"), dict):
        today["method"] |= preset_values(str(method.get("preset", today["method"]["preset"])))
    out = dict(saved)
    for section, defaults in today.items():
        if isinstance(saved.get(section), dict):
            out[section] = {**defaults, **saved[section]}
    return out


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def value(self, key: str) -> Any:
        """The value of dotted ``key`` (``section.field``)."""
        section, name = key.split(".", 1)
        return getattr(getattr(self, section), name)

    def to_yaml(self) -> str:
        """The config as YAML that any reader takes back as the same values (:class:`_QuotingDumper`)."""
        return yaml.dump(self.to_dict(), Dumper=_QuotingDumper, sort_keys=False)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name


# A plain scalar that YAML 1.2's core schema reads as null, a boolean or a number (ruamel.yaml, yq, Go's yaml.v3;
# PyYAML reads YAML 1.1, where 1e3 and 0o17 are text): a text written so is quoted.
_YAML12_TYPED = re.compile(
    r"null|Null|NULL|~|true|True|TRUE|false|False|FALSE"
    r"|[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+"
    r"|[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.nan|\.NaN|\.NAN"
)


class _QuotingDumper(yaml.SafeDumper):
    """``yaml.safe_dump`` that also quotes the texts a YAML 1.2 reader would take as something else (try-out 92, F8:
    ``run.name: 1e3`` was printed bare, which YAML 1.2 reads as the number 1000)."""

    def represent_str(self, data: str) -> yaml.ScalarNode:
        if _YAML12_TYPED.fullmatch(data):
            return self.represent_scalar("tag:yaml.org,2002:str", data, style="'")
        return super().represent_str(data)


_QuotingDumper.add_representer(str, _QuotingDumper.represent_str)

SECTIONS = [f.name for f in dataclasses.fields(Config)]
