"""The side-by-side benchmarks: phase attribution of the step (``benchmarks.step_phases``) and the ABBA order
and per-pass ratios of the TRL comparison (``benchmarks.trl_e2e.section``)."""

from __future__ import annotations

import json

import benchmarks.measure as measure
import benchmarks.trl_e2e as e2e
import pytest
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


def _fake_section(monkeypatch, times=None, loss=None):
    """``e2e.section`` with ``run_case`` faked: ``times[impl]`` (s) per pass (second pass 1.5× slower),
    ``loss(impl)`` the first-step loss; returns the list of (impl, div) calls."""
    calls = []
    times = times or {"trl_gkd": 10.0, "trl_distill": 8.0, "ekd_sekd": 1.0}

    def fake_run_case(module, case, timeout_s):
        assert module == "benchmarks.trl_e2e"
        assert e2e._case(json.dumps(case)) == case  # what the fresh process would parse
        calls.append((case["impl"], case["div"]))
        slow = 1.5 if len(calls) > 8 else 1.0  # the second pass runs on a busier machine
        time_s = times.get(case["impl"], 2.0) * slow
        first = loss(case["impl"]) if loss else 0.1
        return {"time_s": time_s, "step_mb": 100.0, "rss_mb": 200.0, "first_loss": first, "tokens": 10}

    monkeypatch.setattr(measure, "run_case", fake_run_case)
    monkeypatch.setattr(e2e, "_available", lambda: None)
    monkeypatch.setattr(e2e, "_has_distillation_trainer", lambda: True)
    return calls


def test_trl_section_runs_abba_and_gives_per_pass_ratios(monkeypatch):
    calls = _fake_section(monkeypatch)
    text = "\n".join(e2e.section(vocabs=[64], repeats=1, rounds=1))
    assert len(calls) == 16 and calls[8:] == calls[:8][::-1]  # the second pass in reverse order
    # ratios pass by pass: the load of each pass cancels
    per_pass = "time, median of per-pass ratios:"
    assert (
        f"ekd kd / TRL GKDTrainer (λ=0) (forward_kl), {per_pass} **0.20** [0.20, 0.20] over 2 passes" in text
    )
    assert f"ekd kd / TRL DistillationTrainer (forward_kl), {per_pass} **0.25** [0.25, 0.25]" in text
    assert f"ekd sekd (online) / ekd kd (forward_kl), {per_pass} **0.50** [0.50, 0.50]" in text


def test_trl_section_has_one_headline_ratio_per_comparison(monkeypatch):
    """The targets line gives the median of per-pass ratios, as the per-pass line does; the table (median-time
    pass of each case) may give another ratio, and says it is the rows' ratio."""
    calls = []

    def fake_run_case(module, case, timeout_s):
        key = (case["impl"], case["div"])
        calls.append(key)
        passes = {("ekd_kd", "forward_kl"): [0.04, 0.13], ("trl_gkd", "forward_kl"): [0.05, 0.10]}
        t = passes.get(key, [0.2, 0.2])[calls.count(key) - 1]
        return {"time_s": t, "step_mb": 50.0, "rss_mb": 200.0, "first_loss": 0.1, "tokens": 10}

    monkeypatch.setattr(measure, "run_case", fake_run_case)
    monkeypatch.setattr(e2e, "_available", lambda: None)
    monkeypatch.setattr(e2e, "_has_distillation_trainer", lambda: True)
    lines = e2e.section(vocabs=[151_936], repeats=1, rounds=1)
    text = "\n".join(lines)
    # per pass: 0.04/0.05 = 0.8 and 0.13/0.10 = 1.3 → median 1.05; the median-time rows: 0.04/0.05 = 0.8
    per_pass = [ln for ln in lines if "ekd kd / TRL GKDTrainer (λ=0) (forward_kl)" in ln]
    assert len(per_pass) == 1 and "**1.05** [0.80, 1.30] over 2 passes" in per_pass[0]
    target = [ln for ln in lines if "ekd kd / TRL GKD (forward_kl), median of per-pass ratios" in ln]
    assert len(target) == 1 and "time **1.05**, step peak **1.00**" in target[0]
    assert "targets at V=151,936: ≤ 0.5 and ≤ 0.3 → **missed**, **missed**" in target[0]
    assert "(median passes)" not in text
    assert "the table's ratio columns divide the rows' numbers" in text
    # the table: times to 3 significant figures, so its ratio column can be checked (0.04 / 0.05 = 0.80)
    kd_row = next(ln for ln in lines if ln.startswith("| 151,936 | forward_kl | ekd kd |"))
    assert "| 0.0400 | 250 | 0.80 |" in kd_row
    gkd_row = next(ln for ln in lines if ln.startswith("| 151,936 | forward_kl | TRL GKDTrainer (λ=0) |"))
    assert "| 0.0500 | 200 | 1.00 |" in gkd_row


def test_trl_section_times_have_three_significant_figures(monkeypatch):
    _fake_section(monkeypatch, times={"trl_gkd": 0.0412, "trl_distill": 0.0356, "ekd_kd": 0.0357})
    lines = e2e.section(vocabs=[64], repeats=1, rounds=1)
    gkd = next(ln for ln in lines if ln.startswith("| 64 | forward_kl | TRL GKDTrainer (λ=0) |"))
    kd = next(ln for ln in lines if ln.startswith("| 64 | forward_kl | ekd kd |"))
    assert "| 0.0412 |" in gkd and "| 0.0357 | " in kd and "| 0.87 |" in kd  # 0.0357 / 0.0412 = 0.867
    assert [e2e._sig(x) for x in (0.03, 0.1, 5.126, 99.96, 123.4, 1234.5)] == [
        "0.0300",
        "0.100",
        "5.13",
        "100",
        "123",
        "1234",
    ]


def test_trl_section_fp32_note_only_at_the_vocabulary_it_was_measured(monkeypatch):
    losses = {"trl_gkd": 0.1, "trl_distill": 0.100004, "ekd_kd": 0.100002, "ekd_jsd": 0.1}
    for v, noted in ((8192, False), (151_936, True)):
        _fake_section(monkeypatch, loss=lambda impl: losses.get(impl, 0.1))
        lines = e2e.section(vocabs=[v], repeats=1, rounds=1)
        check = next(ln for ln in lines if ln.startswith(f"- first-step loss, V={v:,}, forward_kl"))
        assert "agree to 4.0e-06 nats" in check and "the same loss (within 2e-05 nats" in check
        assert ("~2e-5 at this V" in check) is noted
    losses["ekd_jsd"] = 0.2
    _fake_section(monkeypatch, loss=lambda impl: losses.get(impl, 0.1))
    text = "\n".join(e2e.section(vocabs=[64], repeats=1, rounds=1))
    assert "V=64, jsd: TRL and ekd agree to 1.0e-01 nats" in text and "**they differ" in text


def test_trl_e2e_command_line(monkeypatch, capsys):
    seen = {}

    def fake_section(**kw):
        seen.update(kw)
        return ["## section"]

    monkeypatch.setattr(e2e, "section", fake_section)
    monkeypatch.setattr(e2e, "run", lambda case: {"case": case})
    # --help works and names both forms
    with pytest.raises(SystemExit) as exit_:
        e2e.main(["--help"])
    assert exit_.value.code == 0 and "--section" in capsys.readouterr().out

    def refused(argv, *words):
        with pytest.raises(SystemExit) as exit_:
            e2e.main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2, argv
        last = err.strip().splitlines()[-1]  # argparse: usage, then one error line
        assert "Traceback" not in err and last.startswith("python -m benchmarks.trl_e2e: error: "), err
        assert all(w in last for w in words), err

    refused(["{not json"], "not JSON")
    refused(["[1, 2]"], "not a JSON object")
    refused(['{"impl": "ekd_kd"}'], "missing v, b, t")
    refused(['{"impl": "nope", "v": 8, "b": 1, "t": 4}'], "impl 'nope'")
    refused(["--v", "4096", "--bogus"], "unrecognized arguments: --bogus")
    refused(["--section", "--quik"], "unrecognized arguments: --quik")
    refused(["--section", "--v"], "--v")
    refused(["--section", "--v", "0"], "must be ≥ 1")
    refused([], "give a JSON case or --section")
    refused(["--quick"], "--quick: only with --section")
    refused(['{"impl": "ekd_kd", "v": 8, "b": 1, "t": 4}', "--section"], "not both")

    # run_case's calling convention: one JSON case → one JSON line
    case = {"impl": "trl_gkd", "div": "jsd", "v": 64, "b": 2, "t": 8, "repeats": 1}
    assert e2e.main([json.dumps(case)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"case": case}

    assert e2e.main(["--section", "--quick"]) == 0
    assert seen == {"quick": True, "vocabs": None, "repeats": 2, "rounds": 1}
    assert capsys.readouterr().out == "## section\n"
    # the command docs/benchmarks.md gives, and several vocabularies at once
    assert e2e.main(["--section", "--v", "32768", "--repeats", "2", "--rounds", "1"]) == 0
    assert seen == {"quick": False, "vocabs": [32768], "repeats": 2, "rounds": 1}
    assert e2e.main(["--section", "--v", "32768", "151936", "--repeats", "1", "--rounds", "3"]) == 0
    assert seen == {"quick": False, "vocabs": [32768, 151936], "repeats": 1, "rounds": 3}


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


def test_decoupled_objectives_section_compares_equal_losses():
    """The DKD / AT-KD head benchmark times both paths ABBA and prints both losses, which agree."""
    from benchmarks.objectives import measure as measure_objectives
    from benchmarks.objectives import report as report_objectives

    res = measure_objectives(v=512, m=24, ds=16, dt=24, chunk=7, rounds=2)
    for r in res["objectives"].values():
        assert len(r["times"]["autograd"]) == len(r["times"]["closed form"]) == 4
        assert r["loss"]["autograd"] == pytest.approx(r["loss"]["closed form"], rel=1e-5)
    lines = report_objectives(res)
    assert any(line.startswith("| `dkd` |") for line in lines) and any(
        line.startswith("| `atkd` |") for line in lines
    )
