"""Validation of a built config: choices, ranges and cross-field rules, each naming the dotted key."""

from __future__ import annotations

import difflib

from ekd.config.sections import Config
from ekd.errors import ConfigError


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
    from ekd.eval.tasks import check_task_config

    check_task_config(cfg)  # eval.tasks*, eval.set_tags
    _choice("log.level", cfg.log.level.upper(), ["DEBUG", "INFO", "WARNING", "ERROR"])
