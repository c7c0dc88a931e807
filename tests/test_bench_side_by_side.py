"""The side-by-side benchmarks: phase attribution of the step (``benchmarks.step_phases``) and the ABBA order
and per-pass ratios of the TRL comparison (``benchmarks.trl_e2e.section``)."""

from __future__ import annotations

import benchmarks.measure as measure
import benchmarks.trl_e2e as e2e
from benchmarks.step_phases import ORDER, report
from benchmarks.step_phases import measure as measure_phases


def test_step_phases_attributes_each_method_its_own_passes():
    res = measure_phases(v=256, b=2, t=16, rounds=1)
    kd, sekd, sekd3x = (res["phases"][m] for m in ORDER)
    for m in ORDER:
        assert len(res["times"][m]) == 1 and res["times"][m][0] > 0
    # kd: no selection, so no student statistics pass; sekd3x: no teacher model, only the cache's rows
    assert kd["student stats"] == 0 and sekd["student stats"] > 0 and sekd3x["student stats"] > 0
    assert kd["teacher body"] > 0 and sekd["teacher body"] > 0 and sekd3x["teacher body"] == 0
    assert sekd3x["teacher head"] == 0 and sekd3x["cache read"] > 0
    text = "\n".join(report(res, 256, 2, 16))
    assert "| step / kd, median [min, max] |" in text and "| student stats |" in text


def test_trl_section_runs_abba_and_gives_per_pass_ratios(monkeypatch):
    calls = []

    def fake_run_case(module, case, timeout_s):
        calls.append((case["impl"], case["div"]))
        slow = 1.5 if len(calls) > 8 else 1.0  # the second pass runs on a busier machine
        time_s = {"trl_gkd": 10.0, "trl_distill": 8.0, "ekd_sekd": 1.0}.get(case["impl"], 2.0) * slow
        return {"time_s": time_s, "step_mb": 100.0, "rss_mb": 200.0, "first_loss": 0.1, "tokens": 10}

    monkeypatch.setattr(measure, "run_case", fake_run_case)
    monkeypatch.setattr(e2e, "_available", lambda: None)
    monkeypatch.setattr(e2e, "_has_distillation_trainer", lambda: True)
    text = "\n".join(e2e.section(vocabs=[64], repeats=1, rounds=1))
    assert len(calls) == 16 and calls[8:] == calls[:8][::-1]  # the second pass in reverse order
    # ratios pass by pass: the load of each pass cancels
    assert (
        "ekd kd / TRL GKDTrainer (λ=0) (forward_kl), time per pass: **0.20** [0.20, 0.20] over 2 passes"
        in text
    )
    assert "ekd kd / TRL DistillationTrainer (forward_kl), time per pass: **0.25** [0.25, 0.25]" in text
    assert "ekd sekd (online) / ekd kd (forward_kl), time per pass: **0.50** [0.50, 0.50]" in text


def test_make_bench_keeps_the_sections_it_does_not_regenerate():
    """``benchmarks.run`` rewrites its own sections and keeps every hand-written one (numerics, scaling, ...)."""
    from benchmarks.run import merge_report

    existing = (
        "# ekd benchmarks\n\nold header\n\n## Loss head\n\nold table\n\n## Numerics\n\nhand-written\n\n"
        "## Whole step vs TRL (issue 16)\n\nold e2e\n\n## Scaling out\n\nkept too\n"
    )
    generated = "# ekd benchmarks\n\nnew header\n\n## Loss head\n\nnew table\n\n## Whole step vs TRL (issue 16)\n\nnew e2e\n"
    merged = merge_report(generated, existing)
    assert merged.startswith(generated.rstrip("\n"))
    assert "old table" not in merged and "old e2e" not in merged and "old header" not in merged
    assert merged.index("## Numerics") < merged.index("## Scaling out")  # kept in their order
    assert "hand-written" in merged and "kept too" in merged
    assert merge_report(generated, "") == generated
