"""Run configuration: dataclass sections, YAML files, dotted ``key=value`` overrides, validation.

A config is eight sections — ``run, model, data, teacher, method, train, eval, log`` — each a dataclass whose
fields carry a docstring (shown by ``ekd config show --explain``). Loading merges, in order: defaults →
YAML file(s) → the method preset named by ``method.preset`` (as defaults under the file's explicit
``method`` keys) → CLI overrides. Values are coerced to the declared type (YAML reads ``3e-4`` as a
string); unknown keys fail with the nearest valid key; cross-field rules name the dotted key.

    ekd config show configs/demo.yaml train.max_steps=100 method=sekd
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ekd.errors import EkdError


class ConfigError(EkdError, ValueError):
    """A user mistake in a config file or override; the message names the key and the fix."""


# ---------------------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------
# Field docs, keys and coercion
# ---------------------------------------------------------------------------------------------------------


def field_docs(cls: type) -> dict[str, str]:
    """Docstrings written under dataclass fields (litgpt style), read from the class source."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def all_keys() -> list[str]:
    """Every dotted key, e.g. 'train.max_steps'."""
    return [f"{s}.{f.name}" for s in SECTIONS for f in dataclasses.fields(_section_type(s))]


def _section_type(section: str) -> type:
    return typing.get_type_hints(Config)[section]


def _nearest(key: str) -> str:
    keys = all_keys() + SECTIONS
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    if not close:  # try the field name alone against every section
        leaf = key.split(".")[-1]
        close = [k for k in all_keys() if difflib.get_close_matches(leaf, [k.split(".")[-1]], cutoff=0.75)][
            :1
        ]
    return f"; did you mean '{close[0]}'?" if close else ""


class CliText(str):
    """A value typed on the command line: kept verbatim for ``str`` fields, parsed as YAML otherwise
    (so ``run.name=1.10`` stays '1.10' and ``train.lr=3e-4`` becomes 0.0003)."""


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert ``value`` to the declared type, or raise ConfigError naming the dotted key."""
    origin = typing.get_origin(annotation)
    if isinstance(value, CliText):
        value = str(value) if annotation is str else _parse_cli_value(str(value))
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in (
                "true",
                "false",
                "1",
                "0",
                "yes",
                "no",
                "on",
                "off",
            ):
                return value.lower() in ("true", "1", "yes", "on")
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if annotation is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, str) and "e" in value.lower():
                value = float(value)  # YAML reads 1e3 as a string
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if annotation is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if annotation is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return "" if value is None else str(value)
        if origin is list:
            (item,) = typing.get_args(annotation)
            if isinstance(value, str):
                value = [v for v in value.strip("[]").split(",") if v.strip()]
            if not isinstance(value, (list, tuple)):
                raise ValueError
            return [coerce(v.strip() if isinstance(v, str) else v, item, key) for v in value]
        if origin is dict:
            _, vtype = typing.get_args(annotation)
            if value in (None, ""):
                return {}
            if not isinstance(value, dict):
                raise ValueError
            return {str(k): coerce(v, vtype, f"{key}.{k}") for k, v in value.items()}
    except ConfigError:
        raise  # an item's own message names the item
    except (TypeError, ValueError):
        pass
    else:
        return value
    tname = getattr(annotation, "__name__", str(annotation))
    raise ConfigError(f"{key}: expected {tname}, got {value!r}")


def _parse_cli_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


# ---------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------


def _flatten(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """{'train': {'lr': 1}} → {'train.lr': 1}; rejects unknown sections and keys."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections ({', '.join(SECTIONS)})")
    flat: dict[str, Any] = {}
    for section, values in raw.items():
        if section not in SECTIONS:
            raise ConfigError(f"{source}: unknown section '{section}'{_nearest(str(section))}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section '{section}' must be a mapping of keys to values")
        for k, v in values.items():
            flat[f"{section}.{k}"] = v
    return flat


def _check_key(key: str, source: str) -> None:
    if key not in all_keys():
        raise ConfigError(f"{source}: unknown key '{key}'{_nearest(key)}")


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """['train.lr=3e-4', 'method=sekd'] → {'train.lr': '3e-4' parsed, 'method.preset': 'sekd'}."""
    flat: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"override '{item}' must look like section.key=value (e.g. train.max_steps=100)"
            )
        key, text = item.split("=", 1)
        key = key.strip()
        if key == "method":  # shorthand: method=<preset>
            key = "method.preset"
        _check_key(key, "command line")
        flat[key] = CliText(text)
    return flat


def load_config(
    paths: list[str | Path] | str | Path | None = None, overrides: list[str] | None = None
) -> Config:
    """Build a validated Config from YAML file(s) and dotted overrides (later wins)."""
    if paths is None:
        paths = []
    elif isinstance(paths, (str, Path)):
        paths = [paths]
    flat: dict[str, Any] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        file_flat = _flatten(raw, str(path))
        for key in file_flat:
            _check_key(key, str(path))
        flat.update(file_flat)
    flat.update(parse_overrides(overrides or []))
    return build_config(flat)


def build_config(flat: dict[str, Any]) -> Config:
    """Config from a flat dict of dotted keys; the method preset's values fill keys not set explicitly."""
    from ekd.methods import preset_values  # local import: methods imports config types

    preset = str(flat.get("method.preset", MethodConfig.preset))
    merged = {f"method.{k}": v for k, v in preset_values(preset).items()}
    merged.update(flat)
    cfg = Config()
    hints = {s: typing.get_type_hints(_section_type(s)) for s in SECTIONS}
    for key, value in merged.items():
        section, name = key.split(".", 1)
        _check_key(key, "config")
        setattr(getattr(cfg, section), name, coerce(value, hints[section][name], key))
    validate(cfg)
    return cfg


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Rebuild a Config from ``Config.to_dict()`` output (e.g. a saved ``config.yaml``)."""
    return build_config(_flatten(raw, "saved config"))


# ---------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------


def _choice(key: str, value: str, choices: list[str] | tuple[str, ...]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(value, list(choices), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got '{value}'{hint}")


def _range(
    key: str, value: float, lo: float | None = None, hi: float | None = None, lo_open: bool = False
) -> None:
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise ConfigError(f"{key} must be {'>' if lo_open else '≥'} {lo}, got {value}")
    if hi is not None and value > hi:
        raise ConfigError(f"{key} must be ≤ {hi}, got {value}")


def validate(cfg: Config) -> None:
    """Cross-field checks; each error names the dotted key and what to do."""
    from ekd.losses.divergences import divergences
    from ekd.methods import presets

    d, t, m, tr = cfg.data, cfg.teacher, cfg.method, cfg.train
    if not cfg.run.name or "/" in cfg.run.name:
        raise ConfigError(f"run.name must be a non-empty name without '/', got '{cfg.run.name}'")
    if d.block_length < 2:
        raise ConfigError(
            f"data.block_length must be ≥ 2 (a block needs an input and a target), got {d.block_length}"
        )
    _choice("data.format", d.format, ["auto", "text", "jsonl", "parquet", "hf"])
    _range("data.eval_fraction", d.eval_fraction, 0.0, 0.9)
    if bool(d.prompt_field) != bool(d.response_field):
        raise ConfigError("data.prompt_field and data.response_field must be set together")
    _choice("teacher.source", t.source, ["online", "cache", "none"])
    if t.source == "cache" and not t.cache_dir:
        raise ConfigError("teacher.cache_dir must be set when teacher.source=cache")
    _choice("teacher.cache_positions", t.cache_positions, ["all", "teacher_entropy_topk"])
    _range("teacher.cache_fraction", t.cache_fraction, 0.0, 1.0, lo_open=True)
    _choice("teacher.cache_stat_format", t.cache_stat_format, ["q8", "fp16"])
    if m.preset not in presets:
        raise ConfigError(
            presets.unknown_message(m.preset).replace("unknown preset", "method.preset: unknown preset")
        )
    if m.divergence not in divergences or m.divergence == "hellinger":
        names = [n for n in divergences.names() if n != "hellinger"]
        _choice("method.divergence", m.divergence, names)
    _range("method.jsd_beta", m.jsd_beta, 0.0, 1.0)
    _range("method.skew_alpha", m.skew_alpha, 0.0, 0.999)
    _range("method.kd_weight", m.kd_weight, 0.0)
    _range("method.ce_weight", m.ce_weight, 0.0)
    if m.kd_weight == 0 and m.ce_weight == 0:
        raise ConfigError("method.kd_weight and method.ce_weight are both 0: nothing to train")
    _choice("method.ce_on", m.ce_on, ["all", "selected"])
    if m.ce_on == "selected" and m.kd_weight == 0:
        raise ConfigError(
            "method.ce_on=selected needs a KD term to select positions (method.kd_weight > 0); use method.ce_on=all"
        )
    if t.source == "none" and m.kd_weight > 0 and m.objective in ("kd", "dkd", "atkd"):
        raise ConfigError(
            f"teacher.source=none but method {m.preset} distills from a teacher (method.kd_weight={m.kd_weight}); set teacher.source=online or method.kd_weight=0"
        )
    _range("method.kd_temperature", m.kd_temperature, 0.0, lo_open=True)
    _choice("method.target", m.target, ["dense", "topk", "rs"])
    _choice("method.topk_tail", m.topk_tail, ["renormalize", "ghost", "to_gold"])
    _range("method.topk", m.topk, 1)
    _range("method.rs_samples", m.rs_samples, 1, 63)
    _range("method.rs_proposal_power", m.rs_proposal_power, 0.0, lo_open=True)
    _choice("method.select_per", m.select_per, ["sequence", "batch"])
    _range("method.select_fraction", m.select_fraction, 0.0, 1.0, lo_open=True)
    _choice("method.coverage_shape", m.coverage_shape, ["linear", "cosine", "step"])
    _choice("method.scorer_normalization", m.scorer_normalization, ["zscore", "minmax"])
    _choice("method.temperature", m.temperature, ["constant", "schedule", "idts", "entropy_map"])
    _choice("method.entropy_direction", m.entropy_direction, ["increasing", "decreasing"])
    _choice("method.feature_loss", m.feature_loss, ["mse", "cosine"])
    _choice("method.objective", m.objective, ["kd", "dkd", "atkd", "ema_self_distill", "uncertainty"])
    _choice("method.bandit_kind", m.bandit_kind, ["linucb", "exp3"])
    _range("method.sample_fraction", m.sample_fraction, 0.0, 1.0, lo_open=True)
    _range("method.student_data_fraction", m.student_data_fraction, 0.0, 1.0)
    if m.student_data_fraction > 0 and t.source != "online":
        raise ConfigError(
            "method.student_data_fraction > 0 needs teacher.source=online (a cache has no targets for student-generated tokens)"
        )
    _range("method.sampling_temperature", m.sampling_temperature, 0.0, lo_open=True)
    _range("method.max_new_tokens", m.max_new_tokens, 1)
    _range("method.prompt_tokens", m.prompt_tokens, 1)
    if not m.bucket_low < m.bucket_high:
        raise ConfigError("method.bucket_low must be < method.bucket_high")
    if m.target != "dense" and m.divergence != "forward_kl" and m.kd_weight > 0:
        raise ConfigError(
            f"method.divergence={m.divergence} has no estimator for sparse targets (method.target={m.target}); "
            "use method.divergence=forward_kl or method.target=dense"
        )
    if t.source == "cache" and m.target == "dense" and m.kd_weight > 0:
        raise ConfigError(
            "teacher.source=cache stores sparse targets: set method.target=rs or topk (or use teacher.source=online)"
        )
    _range("train.max_steps", tr.max_steps, 1)
    _range("train.micro_batch_size", tr.micro_batch_size, 1)
    _range("train.grad_accum_steps", tr.grad_accum_steps, 1)
    _range("train.lr", tr.lr, 0.0, lo_open=True)
    if tr.warmup_steps >= tr.max_steps and tr.max_steps > 1:
        raise ConfigError(
            f"train.warmup_steps must be < train.max_steps ({tr.warmup_steps} ≥ {tr.max_steps})"
        )
    _range("train.min_lr_ratio", tr.min_lr_ratio, 0.0, 1.0)
    _choice("train.precision", tr.precision, ["auto", "fp32", "bf16"])
    _choice("train.loss_path", tr.loss_path, ["chunked", "chunked_recompute", "reference"])
    _range("train.head_chunk_size", tr.head_chunk_size, 0)
    _range("eval.ece_bins", cfg.eval.ece_bins, 1)
    _choice("log.level", cfg.log.level.upper(), ["DEBUG", "INFO", "WARNING", "ERROR"])


def explain() -> str:
    """Every key with its type, default and docstring (``ekd config show --explain``)."""
    lines = []
    for s in SECTIONS:
        cls = _section_type(s)
        docs = field_docs(cls)
        hints = typing.get_type_hints(cls)
        lines.append(f"[{s}]")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            tname = getattr(hints[f.name], "__name__", str(hints[f.name]))
            lines.append(f"  {s}.{f.name}: {tname} = {default!r}\n      {docs.get(f.name, '')}")
    return "\n".join(lines)
