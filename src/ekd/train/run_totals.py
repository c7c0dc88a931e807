"""A run's totals over its segments — seconds, KD and valid positions, online RS's distinct ids, each segment's
device layout —: what every checkpoint records of the run so far (``run_totals`` in ``state.pt``) and what the run
records of itself when it finishes (:func:`totals_record`, in ekd-run.json), so that a resumed run reports and is
compared as the whole run, never as its last segment."""

from __future__ import annotations

RS_COUNTS = ("rs_drawn", "rs_rows")
"""Run totals of online RS's distinct ids drawn and the rows they were drawn for (``train/rs_unique_ids`` over
every step; try-out 129, F4: rebuilt from the logged rows, ``log.every`` changed a run's teacher bytes per token)."""


def no_earlier_segments() -> dict:
    """The ``earlier`` of a new run's first segment: nothing before it (a fresh dict each time)."""
    return {"seconds": 0.0, "selected": 0.0, "valid": 0.0, "layouts": [], "rs_drawn": 0.0, "rs_rows": 0.0}


def run_totals(
    earlier: dict | None, seconds: float, counts: dict[str, float], layout: dict | None = None
) -> dict | None:
    """What a checkpoint records of the run so far: the earlier segments' ``earlier`` (from the checkpoint
    resumed; None when it had none) plus this segment's seconds and ``counts`` — KD and valid positions
    (``selected``, ``valid``) and :data:`RS_COUNTS` —, and the device layout of every segment
    (:func:`segment_layouts`; ``layout``: this one's). An RS count the earlier segments do not record (an older
    ekd's checkpoint) stays unknown: None."""
    if earlier is None:
        return None  # unknown before this segment: stays unknown (a resume reports this segment only)
    out = {
        "seconds": float(earlier["seconds"]) + seconds,
        "selected": float(earlier["selected"]) + counts["selected"],
        "valid": float(earlier["valid"]) + counts["valid"],
        "layouts": segment_layouts(earlier, layout),
    }
    for key in RS_COUNTS:
        known = earlier.get(key)
        out[key] = None if known is None else float(known) + counts[key]
    return out


def segment_layouts(earlier: dict | None, layout: dict | None) -> list[dict] | None:
    """The device layout ({"ranks", "parallel", "micro_batch_size"}, with the arithmetic as it ran: "autocast" and,
    where the teacher takes part in training, "teacher_dtype") of each segment of the run, this one's
    (``layout``) last; None where an earlier segment's is unknown (a checkpoint of an older ekd). A segment like the
    one before it, in the keys both record (one of an ekd that did not record the micro-batch), is not another.
    ``ekd compare`` describes a run resumed on other ranks by all of them (try-out 37: a run trained 2 × 4 then
    resumed as 1 × 8 was 'the same layout')."""
    known = (earlier or {}).get("layouts")
    if known is None or layout is None:
        return None
    if known and all(known[-1][k] == v for k, v in layout.items() if k in known[-1]):
        return list(known)
    return [*known, layout]


def totals_record(earlier: dict | None, totals: dict[str, float]) -> dict[str, float]:
    """What ekd-run.json records of a finished run's totals (``earlier``: the segments before this one, None where an
    older ekd's checkpoint recorded none; ``totals``: this segment's): ``kd_positions`` and ``valid_positions`` over
    every step — ``ekd compare``'s KD share, never rebuilt from the logged rows, which lose the steps that selected
    nothing and those ``log.every`` skips —, and ``rs_unique_ids``, online RS's distinct ids drawn per KD row over
    every step (its teacher bytes per token). {} where the earlier segments' are unknown."""
    whole = run_totals(earlier, 0.0, totals)
    if whole is None:
        return {}
    record = {"kd_positions": whole["selected"], "valid_positions": whole["valid"]}
    if whole["rs_drawn"] is not None and whole["rs_rows"]:
        record["rs_unique_ids"] = whole["rs_drawn"] / whole["rs_rows"]
    return record
