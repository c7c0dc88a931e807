"""``ekd compare``: grouping by config, mean ± std over seeds, paired differences and verdicts, outputs."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest
import yaml
from tiny import tiny_overrides, write_corpus

from ekd.cli import main
from ekd.eval.compare import compare_runs, pareto_front


def _fake_run(root: Path, name: str, preset: str, seed: int, ppl: float, kl: float, lr: float = 1e-3) -> Path:
    """A finished-run directory as ekd distill leaves it (config.yaml, eval.json, metrics.jsonl)."""
    d = root / name
    d.mkdir(parents=True)
    cfg = {
        "run": {"name": name, "seed": seed, "output_dir": str(root)},
        "method": {"preset": preset},
        "train": {"lr": lr},
    }
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    (d / "eval.json").write_text(
        json.dumps({"eval": {"ppl": ppl, "kl": kl, "acc": 0.1, "ece": 1.0, "agree": 0.5}})
    )
    rows = [
        {"step": 1, "select/count": 30.0, "select/fraction": 0.5},
        {"step": 2, "select/count": 10.0, "select/fraction": 0.25},
    ]
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return d


def test_mean_std_and_paired_verdicts(tmp_path):
    runs = [
        _fake_run(tmp_path, "kd0", "kd", 0, 10.0, 0.50),
        _fake_run(tmp_path, "kd1", "kd", 1, 12.0, 0.60),
        _fake_run(tmp_path, "kd2", "kd", 2, 11.0, 0.55),
        _fake_run(tmp_path, "se0", "sekd", 0, 9.0, 0.52),  # ppl better by 1.0, 1.0, 1.5 → better
        _fake_run(tmp_path, "se1", "sekd", 1, 11.0, 0.58),  # kl diffs +0.02, −0.02, +0.01 → within spread
        _fake_run(tmp_path, "se2", "sekd", 2, 9.5, 0.56),
        _fake_run(tmp_path, "kdlr", "kd", 0, 20.0, 0.9, lr=1e-2),  # another config of kd: its own group
    ]
    s = compare_runs(runs, tmp_path / "out", baselines=("kd",), plots=False)
    by = {g["method"]: g for g in s["groups"]}
    assert set(by) == {"kd", "sekd", "kd#2"} and by["kd"]["seeds"] == [0, 1, 2]
    ppl = by["kd"]["metrics"]["eval/ppl"]
    assert ppl["mean"] == pytest.approx(11.0) and ppl["std"] == pytest.approx(statistics.stdev([10, 12, 11]))
    assert by["kd#2"]["metrics"]["eval/ppl"]["n"] == 1 and math.isnan(
        by["kd#2"]["metrics"]["eval/ppl"]["std"]
    )
    d = by["sekd"]["vs"]["kd"]["eval/ppl"]
    assert d["mean"] == pytest.approx(-7 / 6) and d["std"] == pytest.approx(
        statistics.stdev([-1.0, -1.0, -1.5])
    )
    assert d["verdict"] == "better"  # lower perplexity, beyond the spread
    assert by["sekd"]["vs"]["kd"]["eval/kl"]["verdict"] == "within spread"
    assert by["kd#2"]["vs"]["kd"]["eval/ppl"]["verdict"] == "1 seed"
    # KD fraction: Σcount / Σ(count/fraction) = 40 / (60 + 40)
    assert by["kd"]["metrics"]["kd_pct"]["mean"] == pytest.approx(40.0)
    saved = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert saved["groups"][2]["metrics"]["eval/ppl"]["std"] is None  # NaN written as null
    rows = list(csv.DictReader((tmp_path / "out" / "compare.csv").open()))
    row = next(r for r in rows if r["method"] == "sekd" and r["metric"] == "eval/ppl")
    assert float(row["mean"]) == pytest.approx(9.833333, rel=1e-5) and row["kd_verdict"] == "better"
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "11.00 ± 1.00" in md and "(better)" in md and "(within spread)" in md


def test_pareto_front():
    pts = [(0.0, 1.0), (10.0, 0.5), (5.0, 0.8), (20.0, 0.6), (5.0, 0.9)]
    assert pareto_front(pts) == [0, 2, 1]


def test_bad_runs_one_line(tmp_path, capsys):
    (tmp_path / "notarun").mkdir()
    assert main(["compare", str(tmp_path / "notarun"), "--out", str(tmp_path / "o")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    a = _fake_run(tmp_path, "a", "kd", 0, 1.0, 1.0)
    b = _fake_run(tmp_path / "copy", "a", "kd", 0, 1.0, 1.0)
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "o")]) == 2
    assert "share a config and seed" in capsys.readouterr().err
    unfinished = _fake_run(tmp_path, "u", "kd", 1, 1.0, 1.0)
    (unfinished / "eval.json").unlink()
    assert main(["compare", str(unfinished), "--out", str(tmp_path / "o")]) == 2
    assert "no final evaluation" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_three_real_runs(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus")
    made = []
    for name, preset, seed in [("kd0", "kd", 0), ("kd1", "kd", 1), ("ce0", "ce", 0)]:
        args = tiny_overrides(tmp_path, corpus, name, **{"run.seed": seed, "eval.plots": True})
        assert main(["distill", *args, f"method={preset}"]) == 0
        made.append(tmp_path / "runs" / name)
    out = tmp_path / "cmp"
    assert main(["compare", *map(str, made), "--out", str(out)]) == 0
    s = json.loads((out / "compare.json").read_text())
    by = {g["method"]: g for g in s["groups"]}
    evals = {n: json.loads((tmp_path / "runs" / n / "eval.json").read_text()) for n in ("kd0", "kd1", "ce0")}
    kd_ppl = [evals["kd0"]["eval"]["ppl"], evals["kd1"]["eval"]["ppl"]]
    assert by["kd"]["metrics"]["eval/ppl"]["mean"] == pytest.approx(statistics.fmean(kd_ppl))
    assert by["kd"]["metrics"]["eval/ppl"]["std"] == pytest.approx(statistics.stdev(kd_ppl))
    assert by["ce"]["metrics"]["eval/ppl"]["mean"] == pytest.approx(evals["ce0"]["eval"]["ppl"])
    assert (
        by["ce"]["metrics"]["bytes_per_token"]["mean"] == 0.0
        and by["kd"]["metrics"]["bytes_per_token"]["mean"] > 0
    )
    assert by["ce"]["vs"]["kd"]["eval/ppl"]["n"] == 1
    for png in ("pareto-eval-kl.png", "pareto-eval-ppl.png", "reliability.png", "kl-by-entropy.png"):
        assert (out / "plots" / png).stat().st_size > 1000
