"""What a training step logs: the step's figures from every rank's summed counters (docs/metrics.md)."""

from __future__ import annotations

import math

from ekd.train.method_parts import MethodParts


def combine(key: str, old: float | None, new: float) -> float:
    """A step metric over micro-batches: sums add; ``*_min`` / ``*_max`` take the extreme of those that have one
    (a micro-batch that selected nothing gives NaN, which must not erase the others', as min(nan, x) would)."""
    if old is None or (key.endswith(("_min", "_max")) and math.isnan(old)):
        return new
    if key.endswith("_min"):
        return old if math.isnan(new) else min(old, new)
    if key.endswith("_max"):
        return old if math.isnan(new) else max(old, new)
    return old + new


def batch_counts(micro_batches: list, on_policy: list[bool] | None) -> dict[str, float]:
    """This rank's counts of a step's ``micro_batches``, summed over ranks like every sum: ``tokens`` (attended
    positions) and, where ``on_policy`` flags the micro-batches the student generated (GKD; None otherwise), the
    realised on-policy share (try-out 60, F2) — ``rows``, ``on_policy_rows`` and their ``generated_targets``."""
    counts = {"tokens": float(sum(int(b.attention_mask.sum()) for b in micro_batches))}
    if on_policy is not None:
        generated = [b for b, on in zip(micro_batches, on_policy) if on]
        counts["rows"] = float(sum(b.input_ids.shape[0] for b in micro_batches))
        counts["on_policy_rows"] = float(sum(b.input_ids.shape[0] for b in generated))
        counts["generated_targets"] = float(sum(int((b.labels != -100).sum()) for b in generated))
    return counts


def step_metrics(
    step,
    lr,
    loss,
    grad_norm,
    sums,
    counts: tuple[float, float, float],
    parts: MethodParts,
    tokens_per_s: float,
    step_s: float,
) -> dict[str, float]:
    """The step's logged figures from the global ``sums`` (every rank's, summed) and the terms' global
    normalizers ``counts`` = (kd_count, ce_count, feature_count), which every rank holds alike; ``tokens_per_s``
    and ``step_s`` (seconds) are this rank's wall clock."""
    kd_count, ce_count, feature_count = counts
    m = {
        "train/loss": loss,
        "train/lr": lr,
        "train/grad_norm": grad_norm,
        "train/tokens": sums["tokens"],  # the step's global count of input tokens (all ranks, micro-batches)
        "train/tokens_per_s": tokens_per_s,  # the job's: tokens of every rank since the loop started / wall time
        # mean wall seconds of the steps since the last row: no evaluation, no checkpoint (the first row's include
        # the first step's one-time work: allocations, a replaced run's removal under --overwrite)
        "train/step_s": step_s,
        "train/peak_memory_gib": sums["peak_memory_max"]
        / 2**30,  # the largest rank's peak so far (GPU or host)
    }
    if "on_policy_rows" in sums:  # GKD: the share of rows the student generated, and their targets
        m["train/on_policy_fraction"] = sums["on_policy_rows"] / max(sums["rows"], 1.0)
        m["train/generated_targets"] = sums["generated_targets"]
    # a term's loss and normalizer only where the term runs: a logged 0 would read as a measured zero — so a step
    # whose selection is empty (LinUCB under bandit_min_fraction=0, a cache holding none of its positions) logs
    # NaN (null), not 0 (review 128, R5)
    chose = bool(sums.get("selected"))
    if parts.kd_weight > 0:
        m["train/kd"] = sums.get("kd_sum", 0.0) / kd_count if chose else math.nan
        m["train/kd_tokens"] = kd_count  # the step's global count of KD rows (normalizer, at least 1)
    if parts.ce_weight > 0:
        m["train/ce"] = sums.get("ce_sum", 0.0) / ce_count if chose or parts.ce_on != "selected" else math.nan
        m["train/ce_tokens"] = ce_count  # the step's global count of CE tokens (normalizer, at least 1)
    if parts.feature_weight > 0:
        feature = parts.feature_weight * sums.get("feature_sum", 0.0) / feature_count
        m["train/feature"] = feature
        m["select/feature_share"] = feature / loss if loss else 0.0  # EGAD: feature term's share of the loss
        m["select/hard_fraction"] = sums.get("hard", 0.0) / sums["selected"] if chose else math.nan
    if parts.kd_weight > 0 and sums.get("valid"):
        # the share of positions given KD: distinct ones (try-out 58, F4: pos_rs's draws repeat positions)
        m["select/fraction"] = sums.get("positions", 0.0) / sums["valid"]
        m["select/count"] = sums.get("selected", 0.0)  # the step's rows, every rank and micro-batch
        m["select/positions"] = sums.get("positions", 0.0)
        if sums.get("candidates"):
            m["select/ratio"] = sums.get("positions", 0.0) / sums["candidates"]
        if sums.get("selected"):
            m["select/tau_mean"] = sums.get("tau_sum", 0.0) / sums["selected"]
            m["select/tau_min"] = sums.get("tau_min", float("nan"))
            m["select/tau_max"] = sums.get("tau_max", float("nan"))
        # online RS: distinct ids drawn per KD row, over the step's rows on every rank
        if "rs_unique" in sums and sums.get("selected"):  # the M rows RS drew for are the selected ones
            m["train/rs_unique_ids"] = sums["rs_unique"] / sums["selected"]
        if sums.get("h_sel_n"):
            m["select/teacher_entropy_selected"] = sums["h_sel_sum"] / sums["h_sel_n"]
        if sums.get("h_unsel_n"):
            m["select/teacher_entropy_unselected"] = sums["h_unsel_sum"] / sums["h_unsel_n"]
        if "bandit_above" in sums:  # LinUCB: candidates above bandit_threshold, every micro-batch and rank
            m["select/bandit_above_threshold"] = (
                sums["bandit_above"] / sums["candidates"] if sums.get("candidates") else math.nan
            )
        if not math.isnan(sums.get("threshold_min", math.nan)):  # LATF: the lowest score given KD in the step
            m["select/threshold"] = sums["threshold_min"]
        for source in (parts.policy, parts.temperature):
            if hasattr(source, "diagnostics"):
                m.update(source.diagnostics())
    return m


def eval_metrics(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """``{set: {metric: value}}`` as the logged row's ``eval/<set>/<metric>`` keys."""
    return {f"eval/{name}/{k}": v for name, metrics in results.items() for k, v in metrics.items()}
