"""The eight config sections — ``run, model, data, teacher, method, train, eval, log`` — as dataclasses.

Each field carries a docstring under it (litgpt style), shown by ``ekd config show --explain``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class RunConfig:
    name: str = "run"
    """Run name; the run directory is ``<output_dir>/<name>``."""
    output_dir: str = "runs"
    """Parent directory of run directories."""
    seed: int = 0
    """Seed for model init, data order, sampling of targets and random selection."""
    device: str = "auto"
    """'auto' (cuda if available, else cpu), 'cpu', 'cuda' or 'cuda:N'."""


@dataclass
class ModelConfig:
    student: str = "preset:llama-tiny"
    """Student: a hub id (``Qwen/Qwen2.5-0.5B``), a local HF model directory, or ``preset:<name>`` (random
    init from a small Llama-style architecture preset, see ``ekd list presets``)."""
    teacher: str = "preset:llama-small"
    """Teacher: a hub id, a local HF model directory, or ``preset:<name>``. Unused when
    ``teacher.source`` is 'cache' or the method needs no teacher."""
    revision: str = ""
    """Hub revision (branch, tag or commit) for hub ids; empty = default branch."""
    trust_remote_code: bool = False
    """Allow model code from the hub. Off unless you trust the repository."""
    tokenizer: str = "teacher"
    """'teacher' (the teacher's tokenizer), 'student', a path/hub id, or 'train_bpe' (a byte-level BPE
    trained on the training split; only with preset models)."""
    bpe_vocab_size: int = 4096
    """Vocabulary size of the trained BPE when ``model.tokenizer`` is 'train_bpe'."""
    teacher_dtype: str = "auto"
    """Teacher weights dtype: 'auto' (bf16 on GPU, fp32 on CPU), 'float32', 'bfloat16', 'float16'."""
    attn_implementation: str = ""
    """Attention implementation passed to transformers ('sdpa', 'eager', 'flash_attention_2'); empty = default."""


@dataclass
class DataConfig:
    source: str = "pystdlib"
    """Training data: 'pystdlib' (builtin: the Python standard library source), a .txt/.jsonl/.parquet
    file, a directory or glob of text files, or ``hf:<dataset name or local path>``."""
    format: str = "auto"
    """'auto' (by extension), 'text', 'jsonl', 'parquet' or 'hf'."""
    text_field: str = "text"
    """Field holding the document text in JSONL/Parquet/HF rows."""
    prompt_field: str = ""
    """If set (with ``response_field``), rows are prompt/response pairs and prompt tokens get no loss."""
    response_field: str = ""
    """Response field of prompt/response rows."""
    hf_name: str = ""
    """Configuration name of a Hugging Face dataset (the second argument of ``load_dataset``)."""
    hf_split: str = "train"
    """Split of a Hugging Face dataset used for training."""
    block_length: int = 256
    """Tokens per packed training block (T)."""
    eval_fraction: float = 0.05
    """Fraction held out as the in-distribution eval set, deterministic: by document content hash (at least one
    document when > 0); for 'pystdlib', by top-level module."""
    eval_sources: dict[str, str] = field(default_factory=dict)
    """Extra named eval sets, name → source (same syntax as ``data.source``, plus ``pystdlib:<split>``; the
    format is detected from the source, ``data.format`` applies to ``data.source`` only), e.g. shifted domains."""
    max_documents: int = 0
    """Use at most this many documents (0 = all)."""
    min_chars: int = 1
    """Drop documents shorter than this many characters."""
    max_chars: int = 0
    """Cap the characters read per split (0 = no cap; the builtin corpus reads only what it needs)."""
    max_eval_blocks: int = 64
    """At most this many blocks per eval set (0 = all)."""


@dataclass
class TeacherConfig:
    source: str = "online"
    """'online' (teacher model in memory), 'cache' (targets and statistics from ``ekd cache``; no teacher
    loaded) or 'none' (no teacher: CE-only methods)."""
    cache_dir: str = ""
    """Directory of a teacher cache built by ``ekd cache`` (with ``teacher.source=cache``)."""
    cache_positions: str = "all"
    """Positions ``ekd cache`` stores targets for: 'all' valid positions or 'teacher_entropy_topk'."""
    cache_fraction: float = 0.2
    """Fraction of valid positions per sequence cached with ``cache_positions=teacher_entropy_topk``."""
    cache_shard_samples: int = 1024
    """Samples per cache shard."""
    cache_stat_format: str = "q8"
    """Teacher statistics in the cache: 'q8' (2 B/position, ≤ 0.02 nats at H=2) or 'fp16' (4 B/position)."""


@dataclass
class MethodConfig:
    preset: str = "kd"
    """Named method preset (``ekd list presets``); its values are defaults under the keys set explicitly."""
    # -- what the KD term compares --
    divergence: str = "forward_kl"
    """Per-token divergence: forward_kl, reverse_kl, jsd, skew_forward_kl, skew_reverse_kl, tvd."""
    jsd_beta: float = 0.5
    """β of the generalized JSD (0 = forward KL, 1 = reverse KL)."""
    skew_alpha: float = 0.1
    """α of the skew KL divergences (DistiLLM)."""
    kd_weight: float = 1.0
    """Weight of the KD term (0 disables KD: CE only)."""
    ce_weight: float = 0.0
    """α_CE: weight of the cross-entropy term on the gold tokens."""
    ce_on: str = "all"
    """CE positions: 'all' valid tokens or 'selected' (the KD positions)."""
    kd_temperature: float = 1.0
    """τ of the 'constant' temperature policy (also τ_base of idts, τ0 of schedule)."""
    scale_by_tau_squared: bool = True
    """Multiply each token's KD loss by τ² (Hinton)."""
    # -- how the teacher's distribution is delivered --
    target: str = "dense"
    """'dense' (full teacher distribution), 'topk' (K largest) or 'rs' (Random-Sampling KD)."""
    topk: int = 12
    """K of the top-K target."""
    topk_tail: str = "renormalize"
    """Tail handling of top-K: 'renormalize', 'ghost' (one bucket for the tail mass) or 'to_gold'."""
    rs_samples: int = 50
    """N draws with replacement per position for RS-KD."""
    rs_proposal_power: float = 1.0
    """β of the RS proposal r ∝ p^β (1 = sample from p itself; ≠1 adds importance weights p/r)."""
    # -- where: scorer and selection policy --
    scorer: str = "none"
    """Position score (``ekd list scorers``); 'none' when the policy needs no score."""
    scorer_weights: dict[str, float] = field(default_factory=dict)
    """'composite' scorer: score name → weight."""
    scorer_normalization: str = "zscore"
    """'composite' scorer: per-sequence 'zscore' or 'minmax' normalization of each score."""
    policy: str = "all"
    """Selection policy (``ekd list policies``)."""
    select_fraction: float = 1.0
    """k: fraction of valid positions selected (topk, gls, curriculum, pos_rs, bandit budget)."""
    select_per: str = "sequence"
    """topk scope: 'sequence' (⌈k·n_i⌉ per sequence) or 'batch' (⌈k·N⌉ over the micro-batch)."""
    gls_queue_size: int = 30000
    """GLS: FIFO length of recent token scores."""
    curriculum_steps: int = 0
    """Curriculum length in steps (0 = train.max_steps)."""
    curriculum_start: float = 0.0
    """Curriculum phase φ at step 0 (0 = easiest window)."""
    curriculum_end: float = 1.0
    """Curriculum phase φ at the end (1 = hardest window)."""
    curriculum_power: float = 1.0
    """Curriculum pacing exponent: φ = start + (end−start)·(step/steps)^power."""
    coverage_start: float = 0.1
    """coverage_schedule: k at step 0."""
    coverage_end: float = 0.5
    """coverage_schedule: k at the end of training."""
    coverage_shape: str = "linear"
    """coverage_schedule: 'linear', 'cosine' or 'step'."""
    bucket_low: float = 0.0
    """bucket policy: lower score percentile (0–100)."""
    bucket_high: float = 100.0
    """bucket policy: upper score percentile (0–100)."""
    pos_rs_power: float = 1.0
    """pos_rs: α in q_i ∝ score_i^α."""
    pos_rs_self_normalized: bool = False
    """pos_rs: self-normalized weights instead of the unbiased 1/(K·q_i)."""
    latf_warmup_fraction: float = 0.05
    """LATF (AdaKD): warm-up fraction of training with r = 1."""
    latf_ema_decay: float = 0.99
    """LATF: β of the loss EMA."""
    latf_tolerance: float = 0.05
    """LATF: ε, relative band around L_ref."""
    latf_step: float = 0.05
    """LATF: δ, multiplicative change of r."""
    latf_min_ratio: float = 0.1
    """LATF: floor of r."""
    bandit_kind: str = "linucb"
    """bandit: 'linucb' (contextual, per token) or 'exp3' (budget per step)."""
    bandit_alpha: float = 1.0
    """bandit LinUCB: exploration α."""
    bandit_ridge: float = 1.0
    """bandit LinUCB: ridge λ of A = λI + Σxxᵀ."""
    bandit_min_fraction: float = 0.05
    """bandit: minimum selected fraction."""
    bandit_max_fraction: float = 0.5
    """bandit: maximum selected fraction."""
    bandit_threshold: float = 0.0
    """bandit LinUCB: select tokens whose UCB score (predicted KL drop + exploration bonus, nats) exceeds
    this, then clamp the count per sequence to [min, max] fraction. Not given by the EKD draft; 0 = select
    tokens predicted to improve."""
    bandit_budgets: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.5])
    """bandit EXP3: the budgets k it chooses among."""
    bandit_gamma: float = 0.1
    """bandit EXP3: exploration γ."""
    sample_fraction: float = 1.0
    """Sample selection (SE-KD3X TopSmp): keep this fraction of training samples (1 = off)."""
    sample_scorer: str = "student_entropy"
    """Sample selection score by the frozen initial student: student_entropy, forward_kl, ce_ratio, random."""
    # -- at what temperature --
    temperature: str = "constant"
    """Temperature policy: constant, schedule, idts (AdaKD), entropy_map (EGAD)."""
    temperature_end: float = 1.0
    """schedule: τ1 at the end."""
    temperature_hold_fraction: float = 0.0
    """schedule: hold τ0 for this fraction of training, then linear to τ1."""
    idts_strength: float = 0.5
    """IDTS: c in τ_i = τ_base·exp(−c·ŝ_i)."""
    entropy_tau_min: float = 1.0
    """entropy_map: τ at the low end of g."""
    entropy_tau_max: float = 2.0
    """entropy_map: τ at the high end of g."""
    entropy_direction: str = "increasing"
    """entropy_map: 'increasing' (τ grows with teacher entropy) or 'decreasing'. Unverified in EGAD."""
    # -- EGAD feature branch --
    feature_weight: float = 0.0
    """λ_feat of the feature loss on hard tokens (0 = off)."""
    feature_hard_fraction: float = 0.5
    """Fraction of selected tokens (highest teacher entropy) that are 'hard'."""
    feature_loss: str = "mse"
    """'mse' or 'cosine'."""
    feature_student_layer: int = -1
    """Student hidden layer for the feature loss (-1 = last)."""
    feature_teacher_layer: int = -1
    """Teacher hidden layer for the feature loss (-1 = last)."""
    # -- objectives --
    objective: str = "kd"
    """'kd' (divergence), 'dkd', 'atkd', 'ema_self_distill', 'uncertainty'."""
    dkd_beta: float = 8.0
    """DKD: β weight of NCKD."""
    atkd_lambda: float = 0.2
    """AT-KD: λ weight of easy tokens."""
    ema_decay: float = 0.999
    """ema_self_distill: decay of the EMA student."""
    ema_weight: float = 1.0
    """ema_self_distill: weight of the KL(q_ema‖q) term."""
    uncertainty_fraction: float = 0.5
    """uncertainty: ρ, fraction of highest-loss tokens trained with MLE."""
    uncertainty_weight: float = 1.0
    """uncertainty: λ weight of self-distillation on the other tokens."""
    # -- on-policy distillation (GKD) --
    student_data_fraction: float = 0.0
    """GKD λ: probability that a micro-batch's continuations are sampled from the student (0 = off)."""
    sampling_temperature: float = 1.0
    """Temperature for sampling student continuations (not the KD temperature)."""
    max_new_tokens: int = 64
    """Tokens the student generates per sequence in on-policy batches."""
    prompt_tokens: int = 32
    """On-policy prompt length for data without prompt/response fields: the first tokens of each block."""


@dataclass
class TrainConfig:
    max_steps: int = 100
    """Optimizer steps."""
    micro_batch_size: int = 8
    """Sequences per micro-batch."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step."""
    lr: float = 1e-3
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to biases and norms)."""
    beta1: float = 0.9
    """AdamW β1."""
    beta2: float = 0.95
    """AdamW β2."""
    warmup_steps: int = 10
    """Linear warm-up steps, then cosine decay to ``min_lr_ratio``·lr."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 = off)."""
    precision: str = "auto"
    """'auto' (bf16 autocast on GPU, fp32 on CPU), 'fp32' or 'bf16'."""
    gradient_checkpointing: bool = False
    """Recompute the student's activations in backward to save memory."""
    checkpoint_every: int = 0
    """Write a checkpoint every N steps (0 = only at the end)."""
    keep_checkpoints: int = 2
    """Keep the newest N checkpoints."""
    loss_path: str = "chunked"
    """'chunked' (fused: per-chunk logits, loss and gradient in the forward; O(chunk·V) memory),
    'chunked_recompute' (per-chunk activation checkpointing) or 'reference' (plain full logits)."""
    head_chunk_size: int = 0
    """Rows per chunk of the head/loss and statistics (0 = auto: one fp32 (rows, V) buffer ≈ 128 MiB, e.g.
    1024 rows at V=32,768 and 256 at V=151,936)."""
    compile: bool = False
    """torch.compile the per-chunk loss function."""


@dataclass
class EvalConfig:
    every: int = 0
    """Evaluate every N steps during training (0 = only at the end)."""
    batch_size: int = 8
    """Sequences per eval batch."""
    ece_bins: int = 15
    """Equal-width top-1 confidence bins (lo, hi] of ECE and the reliability diagram (Guo et al. 2017: 15)."""
    entropy_buckets: int = 4
    """Equal-width buckets of normalized teacher entropy Ĥ = H/log V in [0, 1] for the per-bucket metrics
    ``kl@H{b}``, ``acc@H{b}``, ``agree@H{b}``, ``tokens@H{b}`` (0 = off). Equal-width, not quantile, so
    evaluation streams in one pass and buckets mean the same thing across models and runs."""
    teacher: bool = True
    """Report KL(teacher‖student) and top-1 agreement when a teacher model is available."""
    teacher_metrics: bool = True
    """Also report the teacher's own metrics (ppl, accuracy, ECE) on each eval set."""
    plots: bool = True
    """Write reliability diagrams to ``plots/``."""
    tasks: list[str] = field(default_factory=list)
    """Downstream lm-evaluation-harness tasks run on the final student (and the teacher, cached once), e.g.
    ``[arc_easy, hellaswag, piqa, lambada_openai, gsm8k]``; needs ``pip install 'ekd[eval]'``. Empty = off."""
    tasks_dir: str = ""
    """A directory of lm-eval task YAMLs (e.g. local JSON/JSONL datasets) whose task names ``eval.tasks`` may use."""
    tasks_limit: int = 0
    """At most this many documents per task (0 = all)."""
    tasks_num_fewshot: int = -1
    """Few-shot examples per task (-1 = the task's own default, 0 for most)."""
    tasks_max_new_tokens: int = 256
    """Generation tasks (GSM8K, IFEval): greedy decoding, at most this many new tokens (stops at EOS too)."""
    tasks_chat_template: str = "auto"
    """Chat template on generation-task prompts: 'auto' (when the tokenizer has one), 'on' or 'off'.
    Multiple-choice and log-likelihood tasks never use it."""
    tasks_teacher: bool = True
    """Also run the tasks on the teacher (cached in ``<run>/tasks/`` and reused)."""
    tasks_student_init: bool = True
    """Also run the tasks on the initial student (``model.student``, cached) for the gap closed
    (student − init)/(teacher − init)."""
    set_tags: dict[str, str] = field(default_factory=dict)
    """Eval set or task name → 'in_distribution', 'shift', 'diversity_shift' or 'correlation_shift' (ShiftKD).
    Default: names starting with 'shift' are 'shift', others 'in_distribution'. Tags are reported side by
    side and never averaged together."""


@dataclass
class LogConfig:
    every: int = 1
    """Write metrics every N steps."""
    tensorboard: bool = True
    """Also write TensorBoard events to ``tb/``."""
    progress: bool = True
    """Show a progress bar."""
    level: str = "INFO"
    """Logging level."""


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

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name


SECTIONS = [f.name for f in dataclasses.fields(Config)]
