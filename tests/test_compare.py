"""``ekd compare``: grouping by config, mean ± std over seeds, paired differences and verdicts, outputs."""

from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
from pathlib import Path

import pytest
import yaml

from ekd.cli import main
from ekd.eval.compare import compare_runs, group_runs, pareto_front, read_run
from ekd.eval.eval_json import BLOCKS_KEY
from tiny import tiny_overrides, write_corpus


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
        _fake_run(tmp_path, "se1", "sekd", 1, 11.0, 0.58),  # kl diffs +0.02, −0.02, +0.01 → not significant
        _fake_run(tmp_path, "se2", "sekd", 2, 9.5, 0.56),
        _fake_run(tmp_path, "kdlr", "kd", 0, 20.0, 0.9, lr=1e-2),  # another config of kd: its own group
    ]
    s = compare_runs(runs, tmp_path / "out", baselines=("kd",), plots=False)
    by = {g["method"]: g for g in s["groups"]}
    assert set(by) == {"kd", "sekd", "kd#2"} and by["kd"]["seeds"] == [0, 1, 2]
    assert by["kd#2"]["note"] == "`kd#2` differs from `kd` in train.lr=0.01 (vs 0.001)"
    ppl = by["kd"]["metrics"]["eval/ppl"]
    assert ppl["mean"] == pytest.approx(11.0) and ppl["std"] == pytest.approx(statistics.stdev([10, 12, 11]))
    assert by["kd#2"]["metrics"]["eval/ppl"]["n"] == 1 and math.isnan(
        by["kd#2"]["metrics"]["eval/ppl"]["std"]
    )
    d = by["sekd"]["vs"]["kd"]["eval/ppl"]
    assert d["mean"] == pytest.approx(-7 / 6) and d["std"] == pytest.approx(
        statistics.stdev([-1.0, -1.0, -1.5])
    )
    assert d["verdict"] == "better"  # lower perplexity: t₀.₉₇₅,₂·std/√3 = 0.72 < 1.17
    assert d["ci95"] == pytest.approx(4.302653 * statistics.stdev([-1.0, -1.0, -1.5]) / math.sqrt(3))
    assert by["sekd"]["vs"]["kd"]["eval/kl"]["verdict"] == "not significant"
    assert by["kd#2"]["vs"]["kd"]["eval/ppl"]["verdict"] == "1 seed"
    # KD fraction: Σcount / Σ(count/fraction) = 40 / (60 + 40)
    assert by["kd"]["metrics"]["kd_pct"]["mean"] == pytest.approx(40.0)
    saved = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert saved["groups"][2]["metrics"]["eval/ppl"]["std"] is None  # NaN written as null
    rows = list(csv.DictReader((tmp_path / "out" / "compare.csv").open()))
    row = next(r for r in rows if r["method"] == "sekd" and r["metric"] == "eval/ppl")
    assert float(row["mean"]) == pytest.approx(9.833333, rel=1e-5) and row["kd_verdict"] == "better"
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "11.00 ± 1.00" in md and "(better)" in md and "(not significant)" in md


def _layout(run: Path, micro: int, ranks: int, parallel: str) -> Path:
    """Give a fake run a micro-batch, a parallel layout and the ekd-run.json of a run finished on ``ranks``."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["train"] |= {"micro_batch_size": micro, "parallel": parallel}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    marker = {"format": "ekd-run", "version": 1, "state": "finished", "global_micro_batch": ranks * micro}
    (run / "ekd-run.json").write_text(json.dumps(marker | {"ranks": ranks}))
    return run


def test_runs_are_grouped_on_the_batch_over_all_ranks_not_on_the_device_layout(tmp_path, capsys):
    """Try-out 12: config.yaml of a torchrun run of 2 ranks × 4 rows equals a one-process run's of 4 rows, so
    ekd compare called those two different trainings (global batch 8 vs 4) one run ("share a config and seed"),
    and split the 2 × 4 DDP and FSDP runs, which train what one process of 8 rows does (to 1e-6), into groups
    `kd#2`, `kd#3` "differing in train.micro_batch_size=4 (vs 8)". The run records ranks × micro-batch; compare
    groups on it and leaves the layout (micro-batch split, parallel, offload, teacher placement) out."""
    one = _layout(_fake_run(tmp_path, "one", "kd", 0, 10.0, 0.5), 8, 1, "none")
    ddp = _layout(_fake_run(tmp_path, "ddp", "kd", 1, 10.5, 0.5), 4, 2, "ddp")
    fsdp = _layout(_fake_run(tmp_path, "fsdp", "kd", 2, 11.0, 0.5), 4, 2, "fsdp")
    half = _layout(_fake_run(tmp_path, "half", "kd", 0, 12.0, 0.6), 4, 1, "none")
    groups = group_runs([read_run(r) for r in (one, ddp, fsdp, half)])
    assert [(g.label, [r.run_dir.name for r in g.runs]) for g in groups] == [
        ("kd", ["one", "ddp", "fsdp"]),
        ("kd#2", ["half"]),
    ]
    assert groups[1].note == "`kd#2` differs from `kd` in train.ranks × micro_batch_size=4 (vs 8)"


def test_replicas_of_one_seed_count_once_with_their_largest_difference(tmp_path, capsys):
    """Try-outs 23 and 24: a one-process run and its 2-rank twin, or a resumed run and an uninterrupted one, were
    refused ("trained the same config with the same seed; pass each run once"), though checking that they agree is
    the point. They are replicas of one seed: the first given counts (the spread over seeds is not shrunk by a
    seed counted twice), and a note names the layout keys where each differs and the largest metric difference."""
    one = _layout(_fake_run(tmp_path, "one", "kd", 1, 10.0, 0.5), 8, 1, "none")
    ddp = _layout(
        _fake_run(tmp_path, "ddp", "kd", 1, 10.00002, 0.5), 4, 2, "ddp"
    )  # = one's training and seed
    resumed = _layout(_fake_run(tmp_path, "resumed", "kd", 1, 10.0, 0.5), 8, 1, "none")
    other = _layout(_fake_run(tmp_path, "other", "kd", 2, 12.0, 0.5), 8, 1, "none")
    out = tmp_path / "o"
    assert main(["compare", str(one), str(ddp), str(resumed), str(other), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    s = json.loads((out / "compare.json").read_text())
    (kd,) = s["groups"]
    assert kd["seeds"] == [1, 2] and kd["runs"] == [str(one), str(other)]  # one row per seed
    assert kd["metrics"]["eval/ppl"]["mean"] == pytest.approx(11.0)  # one's 10.0, not a mean with ddp's
    (rec,) = s["replicas"]
    assert rec["counted"] == str(one) and [r["run"] for r in rec["replicas"]] == [str(ddp), str(resumed)]
    assert rec["replicas"][0]["differs_in"] == [
        "train.micro_batch_size=4 (vs 8)",
        "train.parallel='ddp' (vs 'none')",
        "ranks=2 (vs 1)",
    ]
    assert rec["replicas"][1]["differs_in"] == []
    assert rec["largest_difference"]["key"] == "eval/ppl"
    assert rec["largest_difference"]["abs"] == pytest.approx(2e-5)
    note = (
        f"`kd` seed 1: {one} counts; replicas {ddp} (train.micro_batch_size=4 (vs 8), train.parallel='ddp' "
        f"(vs 'none'), ranks=2 (vs 1)), {resumed} (the same layout: a resume or a rerun): largest difference "
        f"eval/ppl 10 vs 10.00002 (|Δ| 2e-05, 2e-06 relative, {ddp})"
    )
    assert note in printed and note in (out / "compare.md").read_text(), printed
    assert main(["compare", str(one), str(resumed), "--out", str(out)]) == 0
    assert "replicas" in capsys.readouterr().out and "identical metrics" in (out / "compare.md").read_text()


def test_pareto_front():
    pts = [(0.0, 1.0), (10.0, 0.5), (5.0, 0.8), (20.0, 0.6), (5.0, 0.9)]
    assert pareto_front(pts) == [0, 2, 1]


def test_bad_runs_one_line(tmp_path, capsys):
    (tmp_path / "notarun").mkdir()
    assert main(["compare", str(tmp_path / "notarun"), "--out", str(tmp_path / "o")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    a = _fake_run(tmp_path, "a", "kd", 0, 1.0, 1.0)
    assert main(["compare", str(a), str(a), "--out", str(tmp_path / "o")]) == 2
    assert f"{a} is given twice; pass each run once" in capsys.readouterr().err
    (tmp_path / "link").symlink_to(a)
    assert main(["compare", str(a), str(tmp_path / "link"), "--out", str(tmp_path / "o")]) == 2
    assert "are the same run directory; pass each run once" in capsys.readouterr().err
    unfinished = _fake_run(tmp_path, "u", "kd", 1, 1.0, 1.0)
    (unfinished / "eval.json").unlink()
    assert main(["compare", str(unfinished), "--out", str(tmp_path / "o")]) == 2
    assert "no final evaluation" in capsys.readouterr().err


def test_a_run_still_training_or_stopped_is_refused_not_read_as_a_seed(tmp_path, capsys, monkeypatch):
    """Try-out 70, F2: a run training now, or killed, was compared on its last periodic evaluation (its starting
    student's, at step 0) as a seed of a method, with one warning."""
    from ekd import locks

    done = _fake_run(tmp_path, "done", "kd", 0, 1.0, 1.0)
    run = _fake_run(tmp_path, "prog", "kd", 1, 1.0, 1.0)
    (run / "eval.json").unlink()
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**cfg, "train": {**cfg["train"], "max_steps": 3000}}))
    marker = {"format": "ekd-run", "version": 1}
    (run / "ekd-run.json").write_text(json.dumps({**marker, "state": "started"}))
    with (run / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 0, "eval/eval/ppl": 300.0}) + "\n" + json.dumps({"step": 900}) + "\n")
    (run / "checkpoints" / "step-000800").mkdir(parents=True)
    out = ["--out", str(tmp_path / "o")]
    assert main(["compare", str(done), str(run), *out]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        f"ekd: error: ekd compare: {run} has not finished (stopped at step 900 of 3,000); its "
    )
    assert err.endswith("--resume`, then compare it (or leave it out)") and "\n" not in err, err
    monkeypatch.setattr(locks, "holder_of", lambda directory: 4242)
    assert main(["compare", str(done), str(run), *out]) == 2
    assert f"{run} is training now (another ekd process (pid 4242) holds it)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    (run / "ekd-run.json").write_text(
        json.dumps({**marker, "state": "finished"})
    )  # eval.json gone: the metrics, said
    monkeypatch.undo()
    assert main(["compare", str(done), str(run), *out]) == 0


@pytest.mark.slow
def test_compare_three_real_runs(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus")
    made = []
    for name, preset, seed in [("kd0", "kd", 0), ("kd1", "kd", 1), ("ce0", "ce", 0)]:
        args = tiny_overrides(tmp_path, corpus, name, **{"run.seed": seed, "eval.plots": True})
        assert main(["distill", *args, f"method={preset}"]) == 0
        made.append(tmp_path / "runs" / name)
    out = tmp_path / "cmp"
    capsys.readouterr()
    assert main(["compare", *map(str, made), "--out", str(out)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("(+ .csv, .json, plots/)")
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


def _rs_run(
    root: Path, name: str, seed: int, samples: int, drawn: list[float] | None, vocab: int = 320
) -> Path:
    """A fake finished online-RS run of N = ``samples`` whose steps logged ``drawn`` distinct ids per KD
    position (None: a run of an ekd that did not log them), over a tokenizer of ``vocab`` tokens."""
    run = _fake_run(root, name, "rskd", seed, 10.0, 0.5)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["method"] |= {"rs_samples": samples}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    marker = {"format": "ekd-run", "version": 1, "state": "finished", "tokenizer_tokens": vocab}
    (run / "ekd-run.json").write_text(json.dumps(marker))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r, kd_tokens, u in zip(rows, (30.0, 10.0), drawn or (None, None)):
        r["train/kd_tokens"] = kd_tokens
        if u is not None:
            r["train/rs_unique_ids"] = u
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return run


def test_online_rs_bytes_per_token_are_what_the_run_drew(tmp_path):
    """Try-out 12 F12: an online RS run's teacher B/token was 12.5 ids × (⌈log2 V⌉ + 6) bits whatever N and the
    teacher (N=5 and N=50 both 25.0, measured 5.45 ids at τ=1 and 22.96 at τ=2 on N=50). Now: the run's logged
    ``train/rs_unique_ids`` weighted by its steps' KD positions × (⌈log2 V⌉ + N.bit_length()) bits; a run
    without the figure gets an estimate that never exceeds N ids; top-K and dense keep their sizes."""
    from ekd.config import load_config
    from ekd.demo import estimated_rs_unique_ids, teacher_bytes_per_token

    # steps of 30 and 10 KD positions that drew 4 and 2 ids each: 3.5 ids per position; KD fraction 40%
    n5 = read_run(_rs_run(tmp_path, "n5", 0, 5, [4.0, 2.0]))
    n50 = read_run(_rs_run(tmp_path, "n50", 1, 50, [30.0, 22.0]))
    assert n5.kd_fraction == pytest.approx(0.4)
    assert n5.bytes_per_token == pytest.approx(
        3.5 * (9 + 3) / 8 * 0.4
    )  # V = 320: 9-bit ids, counts ≤ 5: 3 bits
    assert n50.bytes_per_token == pytest.approx(28.0 * (9 + 6) / 8 * 0.4)
    old5 = read_run(_rs_run(tmp_path, "old5", 2, 5, None))
    old50 = read_run(_rs_run(tmp_path, "old50", 3, 50, None))
    assert old5.bytes_per_token <= 5 * (9 + 3) / 8 * 0.4  # never more ids than draws
    assert old5.bytes_per_token == pytest.approx(estimated_rs_unique_ids(5) * 12 / 8 * 0.4)
    assert old5.bytes_per_token < old50.bytes_per_token
    assert estimated_rs_unique_ids(1) == pytest.approx(1.0)
    assert all(estimated_rs_unique_ids(n) <= n for n in range(1, 64))
    # the other targets as before: fp16 logits; K ids + fp16 probabilities
    dense = load_config(overrides=["method=kd"])
    topk = load_config(overrides=["method=topk", "method.topk=12"])
    assert teacher_bytes_per_token(dense, 0.5, None, 320, 3.0) == 2.0 * 320 * 0.5
    assert teacher_bytes_per_token(topk, 0.5, None, 320, 3.0) == 12 * (9 + 16) / 8 * 0.5
    proposal = load_config(
        overrides=["method=rskd", "method.rs_proposal_power=0.5"]
    )  # + fp32 weight p/r per id
    assert teacher_bytes_per_token(proposal, 0.5, None, 320, 3.0) == 3.0 * (9 + 6 + 32) / 8 * 0.5


@pytest.mark.slow
def test_online_rs_runs_log_the_ids_they_drew_and_compare_sizes_them_by_it(tmp_path):
    """Two tiny online RS runs, N = 5 and N = 50: every step logs its mean distinct ids per KD position (≤ N),
    and ``ekd compare`` sizes each run's targets by the measured mean, so the 5-draw run costs fewer bytes."""
    corpus = write_corpus(tmp_path / "corpus")
    figures = {}
    for n in (5, 50):
        args = tiny_overrides(tmp_path, corpus, f"rs{n}")
        assert main(["-q", "distill", *args, "method=rskd", f"method.rs_samples={n}"]) == 0
        run = tmp_path / "runs" / f"rs{n}"
        steps = [
            r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "train/loss" in r
        ]
        drawn = [r["train/rs_unique_ids"] for r in steps]
        assert len(drawn) == 3 and all(1.0 <= u <= n for u in drawn), drawn
        positions = [r["train/kd_tokens"] for r in steps]
        mean = sum(u * k for u, k in zip(drawn, positions)) / sum(positions)
        record = read_run(run)
        vocab = json.loads((run / "ekd-run.json").read_text())["tokenizer_tokens"]
        bits = math.ceil(math.log2(vocab)) + n.bit_length()
        assert record.bytes_per_token == pytest.approx(mean * bits / 8 * record.kd_fraction)
        figures[n] = (mean, record.bytes_per_token)
    assert figures[5][1] < figures[50][1], figures


def test_claims_verdicts(tmp_path):
    from ekd.eval.claims import check_claims, claims_table
    from ekd.eval.compare import group_runs, read_run

    def run(name, preset, seed, ppl, kl, ece, bytes_scale=1.0):
        d = _fake_run(tmp_path, name, preset, seed, ppl, kl)
        ev = json.loads((d / "eval.json").read_text())
        ev["eval"]["ece"] = ece
        (d / "eval.json").write_text(json.dumps(ev))
        return d

    dirs = [
        # kd vs sekd: sekd clearly better on KL and ppl → reproduced
        run("kd0", "kd", 0, 10.0, 0.50, 2.0),
        run("kd1", "kd", 1, 11.0, 0.60, 2.2),
        run("kd2", "kd", 2, 12.0, 0.55, 2.1),
        run("se0", "sekd", 0, 9.0, 0.40, 2.0),
        run("se1", "sekd", 1, 10.1, 0.51, 2.0),
        run("se2", "sekd", 2, 11.0, 0.44, 2.0),
        # rskd: ECE within 0.5 pp of kd → reproduced; topk far worse → reproduced
        run("rs0", "rskd", 0, 10.0, 0.5, 2.1),
        run("rs1", "rskd", 1, 11.0, 0.6, 2.4),
        run("rs2", "rskd", 2, 12.0, 0.5, 2.0),
        run("tk0", "topk", 0, 10.0, 0.5, 7.0),
        run("tk1", "topk", 1, 11.0, 0.6, 8.0),
        run("tk2", "topk", 2, 12.0, 0.5, 7.5),
        # adakd worse than rkl on every seed → not reproduced, with a reason
        run("rk0", "rkl", 0, 10.0, 0.5, 2.0),
        run("rk1", "rkl", 1, 11.0, 0.6, 2.0),
        run("rk2", "rkl", 2, 12.0, 0.5, 2.0),
        run("ad0", "adakd", 0, 12.0, 0.7, 2.0),
        run("ad1", "adakd", 1, 13.0, 0.8, 2.0),
        run("ad2", "adakd", 2, 14.5, 0.7, 2.0),
    ]
    groups = group_runs([read_run(d) for d in dirs])
    claims = {c.claim.split(":")[0].split(" (")[0]: c for c in check_claims(groups)}
    assert claims["RS-KD"].verdict == "reproduced"
    assert claims["Top-K renormalized"].verdict == "reproduced"
    assert claims["SE-KD"].verdict == "reproduced"
    assert claims["AdaKD"].verdict == "not reproduced" and claims["AdaKD"].reason
    assert claims["EGAD"].verdict == "not run" and "egad" in claims["EGAD"].reason
    assert claims["EKD"].verdict == "not run"
    table = claims_table(list(claims.values()))
    assert table.count("\n") == 2 + 6


def test_ece_equivalence_is_two_one_sided_tests_not_a_mean_within_the_spread(tmp_path):
    """'RS-KD: ECE ≈ Full KD' was reproduced whenever |mean Δ| ≤ 0.5 pp or ≤ the seeds' std: the noisier the
    seeds, the likelier 'reproduced'. Equivalence is shown by the 90% interval inside ±0.5 pp (TOST at 5%), refuted
    by the 95% interval wholly outside it, and otherwise inconclusive. t quantiles: t₀.₉₅,₂ = 2.919986,
    t₀.₉₇₅,₂ = 4.302653."""
    from ekd.eval.claims import _fmt_diff, check_claims, equivalence_verdict
    from ekd.eval.compare import group_runs, read_run

    def claim(kd_ece, rs_ece):
        dirs = []
        for seed, (a, b) in enumerate(zip(kd_ece, rs_ece)):
            for name, preset, ece in ((f"kd{seed}", "kd", a), (f"rs{seed}", "rskd", b)):
                d = _fake_run(tmp_path / str(len(kd_ece)) / str(kd_ece[0]), name, preset, seed, 10.0, 0.5)
                ev = json.loads((d / "eval.json").read_text())
                ev["eval"]["ece"] = ece
                (d / "eval.json").write_text(json.dumps(ev))
                dirs.append(d)
        claims = check_claims(group_runs([read_run(d) for d in dirs]))
        return next(c for c in claims if c.claim.startswith("RS-KD"))

    # Δ = 0.4, −0.3, 0.2: mean 0.1, std 0.360555 — within 0.5 and the spread (was reproduced), but the 90% interval
    # 0.1 ± 2.919986·0.360555/√3 = 0.1 ± 0.607840 reaches past ±0.5, and the 95% one holds 0: inconclusive
    c = claim([2.0, 2.0, 2.0], [2.4, 1.7, 2.2])
    assert c.verdict == "inconclusive (the seeds cannot show |Δ| ≤ 0.5)" and not c.reason
    assert "90% CI [-0.508, +0.708]" in c.numbers and "(equivalence margin ±0.5 pp;" in c.numbers, c.numbers
    # Δ = 0.1, 0.2, −0.1: mean 0.066667, std 0.152753; 90% interval ± 0.257519 inside ±0.5: reproduced
    c = claim([1.0, 1.0, 1.0], [1.1, 1.2, 0.9])
    assert c.verdict == "reproduced" and "90% CI [-0.191, +0.324]" in c.numbers, c.numbers
    # Δ = 2.0, 2.2, 2.1: the 95% interval 2.1 ± 4.302653·0.1/√3 = 2.1 ± 0.248414 lies above 0.5: not reproduced
    c = claim([3.0, 3.0, 3.0], [5.0, 5.2, 5.1])
    assert c.verdict == "not reproduced" and c.reason
    # Δ = 2.0, −2.0 (two seeds): mean 0 ≤ std 2.83, the old rule's 'reproduced'; 12.7 × the spread: inconclusive
    assert equivalence_verdict({"n": 2, "mean": 0.0, "std": 2.828427}, 0.5)[0].startswith("inconclusive")
    assert equivalence_verdict({"n": 1, "mean": 0.4, "std": math.nan}, 0.5)[0] == "reproduced (1 seed)"
    assert equivalence_verdict({"n": 1, "mean": -0.6, "std": math.nan}, 0.5)[0] == "not reproduced (1 seed)"
    unpaired = {"n": 0, "mean": math.nan, "std": math.nan, "verdict": "other ECE bins"}
    assert equivalence_verdict(unpaired, 0.5)[0] == "not run (other ECE bins)"
    assert _fmt_diff(unpaired, "eval/ece") == "Δece n/a (other ECE bins)"  # try-out 59, F4: was '+nan (n=0)'


def test_a_claim_within_item_noise_says_so_and_a_worse_key_is_never_outvoted():
    """A paired difference smaller than the eval set's items resolve ('within item noise') made a claim
    'inconclusive (not significant over the seeds)' over seeds and 'reproduced (1 seed)' on one seed; a key worse
    beyond the noise is 'not reproduced' whatever the others say."""
    from ekd.eval.claims import _better_verdict

    def d(mean, n, verdict):
        return {"mean": mean, "std": 0.1 if n > 1 else math.nan, "n": n, "verdict": verdict}

    kl, ppl = "eval/kl", "eval/ppl"  # lower is better for both
    noise = "within item noise"
    assert (
        _better_verdict([(kl, d(-0.2, 3, "better")), (ppl, d(-0.1, 3, noise))]) == f"inconclusive ({noise})"
    )
    assert (
        _better_verdict([(kl, d(-0.2, 1, "1 seed")), (ppl, d(-0.1, 1, noise))]) == f"inconclusive ({noise})"
    )
    assert (
        _better_verdict([(kl, d(+0.2, 1, "1 seed")), (ppl, d(-0.1, 1, noise))]) == "not reproduced (1 seed)"
    )
    assert _better_verdict([(kl, d(+0.2, 3, "worse")), (ppl, d(-0.1, 3, noise))]) == "not reproduced"
    assert _better_verdict([(kl, d(-0.2, 1, "1 seed")), (ppl, d(-0.1, 1, "1 seed"))]) == "reproduced (1 seed)"
    assert _better_verdict([(kl, d(-0.2, 3, "better")), (ppl, d(-0.1, 3, "better"))]) == "reproduced"
    inconclusive = "inconclusive (not significant over the seeds)"
    assert _better_verdict([(kl, d(-0.2, 3, "better")), (ppl, d(-0.1, 3, "not significant"))]) == inconclusive


def test_runs_that_differ_only_in_log_keys_share_a_group(tmp_path):
    """log.* keys change how a run reports itself, not what it computes (``ekd.config.REPORTING_KEYS``): two
    seeds of one method, one run with progress bars and a W&B name, are one group, not ``kd`` and ``kd#2``."""
    from ekd.eval.compare import group_runs, read_run

    dirs = [_fake_run(tmp_path, "kd0", "kd", 0, 10.0, 0.50), _fake_run(tmp_path, "kd1", "kd", 1, 11.0, 0.60)]
    cfg = yaml.safe_load((dirs[1] / "config.yaml").read_text())
    cfg["log"] = {"progress": False, "wandb_name": "kd-seed1", "every": 10}
    (dirs[1] / "config.yaml").write_text(yaml.safe_dump(cfg))
    groups = group_runs([read_run(d) for d in dirs])
    assert [g.label for g in groups] == ["kd"] and len(groups[0].runs) == 2
    lr = _fake_run(tmp_path, "kdlr", "kd", 0, 20.0, 0.9, lr=1e-2)  # a computed key still makes another group
    cfg = yaml.safe_load((lr / "config.yaml").read_text())
    (lr / "config.yaml").write_text(yaml.safe_dump({**cfg, "log": {"level": "DEBUG"}}))
    groups = group_runs([read_run(d) for d in [*dirs, lr]])
    assert [g.label for g in groups] == ["kd", "kd#2"] and "log." not in groups[1].note, groups[1].note


def test_runs_differing_only_in_keys_neither_reads_are_seeds_of_one_group(tmp_path):
    """Review of session 33, F5: compare kept its own copy of the unread-key rules (the BPE size, LoRA knobs), so
    seeds differing in a key the trainer calls unread or idle (`model.teacher_dtype` of CE runs beside a preset
    teacher, a τ hold between equal temperatures) were two groups. It reads the trainer's rules
    (`ekd.config.inert.unread_keys`), such keys counting at their defaults; a key one run reads still makes another
    group."""
    from ekd.eval.compare import group_runs, read_run

    def run(name: str, seed: int, preset: str, **section_keys) -> Path:
        d = _fake_run(tmp_path, name, preset, seed, 10.0 + seed, 0.5)
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        for section, values in section_keys.items():
            cfg[section] = {**cfg.get(section, {}), **values}
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
        return d

    ce = [
        run(f"ce{i}", i, "ce", model={"teacher_dtype": dtype})
        for i, dtype in enumerate(("float32", "float16"))
    ]
    assert [len(g.runs) for g in group_runs([read_run(d) for d in ce])] == [2]
    hold = {"kd_temperature": 2.0, "temperature_end": 2.0}
    kd = [
        run("kd0", 0, "kd", method={**hold, "temperature_hold_fraction": 0.2}, model={"revision": "v1"}),
        run("kd1", 1, "kd", method={**hold, "temperature_hold_fraction": 0.5}, model={"revision": "v1"}),
    ]
    assert [len(g.runs) for g in group_runs([read_run(d) for d in kd])] == [2]
    kd.append(run("kd2", 2, "kd", method=hold, model={"revision": "v1"}))  # no hold set
    assert [len(g.runs) for g in group_runs([read_run(d) for d in kd])] == [3]
    # kd's τ is fixed: it reads no τ schedule (a hold, an end τ), but kd_temperature makes another run
    kd.append(run("kd3", 3, "kd", method={**hold, "kd_temperature": 1.0}, model={"revision": "v1"}))
    groups = group_runs([read_run(d) for d in kd])
    assert [len(g.runs) for g in groups] == [3, 1], [g.note for g in groups]
    assert "method.kd_temperature=1.0" in groups[1].note, groups[1].note


def test_groups_that_differ_from_the_first_alike_say_what_sets_them_apart(tmp_path):
    """Try-out 84, F1: a merged and an adapter LoRA run beside a full fine-tune were `kd#2` and `kd#3`, both noted
    'differs from `kd` in model.lora_r=4 (vs 0)' (model.lora_export is not read without LoRA): the later one
    also says how it differs from the earlier."""
    from ekd.eval.compare import group_runs, read_run

    dirs = [
        _fake_run(tmp_path, n, "kd", 0, 10.0 + i, 0.5) for i, n in enumerate(("full", "merged", "adapter"))
    ]
    for d, model in zip(
        dirs, ({"lora_r": 0}, {"lora_r": 4, "lora_export": "merged"}, {"lora_r": 4, "lora_export": "adapter"})
    ):
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        (d / "config.yaml").write_text(yaml.safe_dump({**cfg, "model": model}))
    groups = group_runs([read_run(d) for d in dirs])
    assert [g.note for g in groups] == [
        "",
        "`kd#2` differs from `kd` in model.lora_r=4 (vs 0)",
        "`kd#3` differs from `kd` in model.lora_r=4 (vs 0); from `kd#2` in model.lora_export='adapter' (vs 'merged')",
    ]


def test_claims_inconclusive_and_one_seed(tmp_path):
    from ekd.eval.claims import check_claims
    from ekd.eval.compare import group_runs, read_run

    dirs = [
        _fake_run(tmp_path, "kd0", "kd", 0, 10.0, 0.50),
        _fake_run(tmp_path, "kd1", "kd", 1, 11.0, 0.60),
        _fake_run(tmp_path, "se0", "sekd", 0, 9.0, 0.62),
        _fake_run(tmp_path, "se1", "sekd", 1, 12.0, 0.49),
        _fake_run(tmp_path, "ek0", "ekd", 0, 10.0, 0.2),
    ]
    groups = group_runs([read_run(d) for d in dirs])
    claims = {c.claim.split(":")[0].split(" (")[0]: c for c in check_claims(groups)}
    assert claims["SE-KD"].verdict == "inconclusive (not significant over the seeds)"
    assert claims["EKD"].verdict == "not run"  # fake runs have no student dir, hence no bytes/token figure
    one = group_runs([read_run(dirs[0]), read_run(dirs[2])])
    c1 = {c.claim.split(":")[0].split(" (")[0]: c for c in check_claims(one)}
    assert c1["SE-KD"].verdict == "not reproduced (1 seed)"  # better ppl but worse KL on the one seed


def _edit(run: Path, *, teacher: str = "", data: dict | None = None, eval_sets: dict | None = None) -> Path:
    """Give a fake run a teacher (``model.teacher``), data settings and more eval.json entries."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg.setdefault("model", {}).setdefault("tokenizer", "/models/tok")  # one tokenizer, whatever the teacher
    if teacher:
        cfg["model"]["teacher"] = teacher
    cfg.setdefault("data", {}).update(data or {})
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    ev = json.loads((run / "eval.json").read_text())
    for name, metrics in (eval_sets or {}).items():
        ev.setdefault(name, {}).update(metrics)
    (run / "eval.json").write_text(json.dumps(ev))
    return run


def test_a_teacher_row_per_teacher_and_eval_set_and_no_difference_across_them(tmp_path):
    """Try-out 4, finding 4: one '(teacher)' row came from the first run whatever the others' teachers and eval
    sets, and paired differences were printed between runs scored on different eval sets."""
    runs = [
        _edit(
            _fake_run(tmp_path, "kd0", "kd", 0, 10.0, 0.5),
            teacher="llama",
            eval_sets={"eval/teacher": {"ppl": 5.0}},
        ),
        _edit(
            _fake_run(tmp_path, "g0", "kd", 0, 11.0, 0.7),
            teacher="gemma",
            eval_sets={"eval/teacher": {"ppl": 6.0}},
        ),
        _edit(
            _fake_run(tmp_path, "b0", "kd", 0, 9.0, 0.4),
            teacher="llama",
            data={"block_length": 128},
            eval_sets={"eval/teacher": {"ppl": 4.0}},
        ),
    ]
    s = compare_runs(runs, tmp_path / "out", baselines=("kd",), plots=False)
    # one row per teacher; kd#3's eval set (blocks of 128) is a column of its own, `eval#2` (try-out 29)
    assert [(t["label"], t["metrics"]) for t in s["teachers"]] == [
        ("(teacher of kd, kd#3)", {"eval/ppl": 5.0, "eval#2/ppl": 4.0}),
        ("(teacher of kd#2)", {"eval/ppl": 6.0}),
    ]
    vs = {g["method"]: g["vs"].get("kd", {}) for g in s["groups"]}
    assert vs["kd#2"]["eval/ppl"]["n"] == 1 and vs["kd#2"]["eval/ppl"]["mean"] == pytest.approx(1.0)
    assert (vs["kd#2"]["eval/kl"]["n"], vs["kd#2"]["eval/kl"]["verdict"]) == (0, "different teachers")
    assert (vs["kd#3"]["eval#2/ppl"]["n"], vs["kd#3"]["eval#2/ppl"]["verdict"]) == (0, "different eval sets")
    assert "eval/ppl" not in vs["kd#3"]
    assert vs["kd#3"]["kd_pct"]["n"] == 1  # the supervision cost does not depend on the eval set
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "| (teacher) |" not in md and "| (teacher of kd, kd#3) |" in md
    assert "n/a (different eval sets)" in md and "n/a (different teachers)" in md
    assert "`eval` was scored 2 ways: `eval` by `kd`, `kd#2`; `eval#2` by `kd#3` (data.block_length=128" in md
    # the same teacher and eval sets: one row, as before
    se = _edit(_fake_run(tmp_path, "se0", "sekd", 0, 9.5, 0.45), teacher="llama")
    one = compare_runs([runs[0], se], tmp_path / "o2", plots=False)
    assert [t["label"] for t in one["teachers"]] == ["(teacher)"] and not one["eval_sets"]


def test_the_same_settings_but_other_scored_tokens_are_other_eval_sets(tmp_path):
    a = _edit(_fake_run(tmp_path, "kd0", "kd", 0, 10.0, 0.5), eval_sets={"eval": {"tokens": 1520}})
    b = _edit(_fake_run(tmp_path, "se0", "sekd", 0, 9.0, 0.5), eval_sets={"eval": {"tokens": 1600}})
    s = compare_runs([a, b], tmp_path / "out", baselines=("kd",), plots=False)
    assert s["groups"][1]["vs"]["kd"]["eval#2/ppl"]["verdict"] == "different eval sets"
    assert "other scored token counts" in s["eval_sets"]


def test_runs_scored_on_first_blocks_and_on_spread_blocks_are_other_eval_sets(tmp_path):
    """A run evaluated before eval sets were spread samples records no ``documents``; its figures describe the
    set's first blocks, not the same texts: not paired with a run that records them, even at equal tokens."""
    old = _edit(_fake_run(tmp_path, "kd0", "kd", 0, 10.0, 0.5), eval_sets={"eval": {"tokens": 1520}})
    new = _edit(
        _fake_run(tmp_path, "se0", "sekd", 0, 9.0, 0.5),
        eval_sets={"eval": {"tokens": 1520, "documents": 12.0}},
    )
    s = compare_runs([old, new], tmp_path / "out", baselines=("kd",), plots=False)
    assert s["groups"][1]["vs"]["kd"]["eval#2/ppl"]["verdict"] == "different eval sets"
    assert "other scored documents" in s["eval_sets"]
    same = _edit(
        _fake_run(tmp_path, "kd1", "kd", 0, 10.0, 0.5),
        eval_sets={"eval": {"tokens": 1520, "documents": 12.0}},
    )
    assert compare_runs([same, new], tmp_path / "o2", baselines=("kd",), plots=False)["eval_sets"] == ""


def test_a_set_scored_with_settings_config_yaml_does_not_hold_is_paired_by_those_it_records(tmp_path):
    """Try-out 10: `ekd eval RUN "data.eval_sources={...}"` scores sets with settings the run's config.yaml does
    not hold, and eval.json recorded none: compare identified each set by config.yaml. Each set's entry now
    records its data settings (``data``); an entry without them (an older eval.json) is read through the
    config, narrowed alike, so old and new runs pair, and a run's other eval sources never unpair a set."""
    held = {"block_length": 32, "eval_sources": {"held": "/d/held.jsonl"}}
    counts = {"ppl": 20.0, "tokens": 900.0, "documents": 6.0}
    old = _edit(_fake_run(tmp_path, "kd0", "kd", 0, 10.0, 0.5), data=held, eval_sets={"held": counts})
    same = {"block_length": 32, "eval_sources": {"held": "/d/held.jsonl"}}  # as ekd eval writes it
    new = _edit(
        _fake_run(tmp_path, "se0", "sekd", 0, 9.0, 0.5),
        data={"block_length": 32, "eval_sources": {"held": "/d/held.jsonl", "e": "/d/e.txt"}},
        eval_sets={"held": {**counts, "data": same}},
    )
    s = compare_runs([old, new], tmp_path / "out", baselines=("kd",), plots=False)
    assert s["groups"][1]["vs"]["kd"]["held/ppl"]["verdict"] == "1 seed" and not s["eval_sets"]
    # the same config and counts, but held was scored again from another file: not the same set
    other = {"block_length": 32, "eval_sources": {"held": "/d/held-v2.jsonl"}}
    moved = _edit(
        _fake_run(tmp_path, "se1", "sekd", 0, 9.0, 0.5),
        data=held,
        eval_sets={"held": {**counts, "data": other}},
    )
    s = compare_runs([old, moved], tmp_path / "o2", baselines=("kd",), plots=False)
    assert s["groups"][1]["vs"]["kd"]["held#2/ppl"]["verdict"] == "different eval sets"
    assert "data.eval_sources={'held': '/d/held-v2.jsonl'} (vs {'held': '/d/held.jsonl'})" in s["eval_sets"]


def test_baselines_that_match_no_run_are_one_line(tmp_path, capsys):
    from hostile import one_error_line

    runs = [
        str(_fake_run(tmp_path, "kd0", "kd", 0, 10.0, 0.5)),
        str(_fake_run(tmp_path, "ce0", "ce", 0, 12.0, 0.9)),
    ]
    out = tmp_path / "out"
    line = one_error_line(
        main(["compare", *runs, "--baselines", "foo", "--out", str(out)]), capsys.readouterr().err
    )
    assert "--baselines foo matches no run" in line and "(kd, ce)" in line, line
    line = one_error_line(
        main(["compare", *runs, "--baselines", "kd,kdd", "--out", str(out)]), capsys.readouterr().err
    )
    assert "--baselines kdd matches no run" in line and "did you mean 'kd'" in line, line
    assert not out.exists()  # nothing written
    assert main(["compare", runs[0], "--out", str(out)]) == 0  # the default kd,ce: those present


def test_a_token_store_does_not_make_another_eval_set(tmp_path):
    """Try-out 11: two runs that differ only in data.store_dir (the store holds the in-memory blocks) were
    'n/a (different eval sets)' throughout."""
    a = _edit(_fake_run(tmp_path, "kd0", "kd", 0, 10.0, 0.5), data={"store_dir": "auto"})
    b = _edit(_fake_run(tmp_path, "se0", "sekd", 0, 9.0, 0.5), data={"store_dir": ""})
    s = compare_runs([a, b], tmp_path / "out", baselines=("kd",), plots=False)
    assert s["groups"][1]["vs"]["kd"]["eval/ppl"]["verdict"] != "different eval sets" and not s["eval_sets"]


def test_one_run_with_an_extra_eval_set_is_no_difference_in_eval_sets(tmp_path):
    """Try-out 12: after `ekd eval RUN` added a set `indist` to one of three kd seeds, compare said "`kd` on one;
    `sekd` on others … paired differences are n/a" (none was: `eval` is the same set in every run), printed
    two teacher rows of one teacher with the same figures, and showed the kd row's one-seed `indist` cells as
    if they were means over its 3 seeds."""
    sources = {"indist": "/data/indist.jsonl"}
    teacher = {"eval/teacher": {"ppl": 5.0}}
    runs = [_edit(_fake_run(tmp_path, f"kd{s}", "kd", s, 10.0 + s, 0.5), eval_sets=teacher) for s in range(3)]
    runs += [
        _edit(_fake_run(tmp_path, f"se{s}", "sekd", s, 9.0 + s, 0.4), eval_sets=teacher) for s in range(3)
    ]
    extra = {"data": {"eval_sources": sources}}
    _edit(
        runs[0],
        eval_sets={"indist": {"ppl": 51.45, "tokens": 1999.0, **extra}, "indist/teacher": {"ppl": 2.6}},
    )
    s = compare_runs(runs, tmp_path / "out", baselines=("kd",), plots=False)
    assert s["eval_sets"] == ""
    (row,) = s["teachers"]
    assert (
        row["label"] == "(teacher)"
        and row["metrics"]["eval/ppl"] == 5.0
        and row["metrics"]["indist/ppl"] == 2.6
    )
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "Scored on different eval sets" not in md and "n/a" not in md
    kd_row = next(line for line in md.splitlines() if line.startswith("| kd |"))
    assert "| 11.00 ± 1.00 |" in kd_row and "| 51.45 (n=1) |" in kd_row, kd_row
    assert s["groups"][1]["vs"]["kd"]["eval/ppl"]["verdict"] == "better"
    # the same set scored another way in one run (`ekd eval RUN data.max_eval_blocks=0`): named for that set and
    # that seed only
    _edit(runs[4], eval_sets={"eval": {"data": {"max_eval_blocks": 0}}})
    s = compare_runs(runs, tmp_path / "out", baselines=("kd",), plots=False)
    assert s["eval_sets"].startswith(
        "`eval` was scored 2 ways: `eval` by `kd`, `sekd` (seeds 0, 2); `eval#2` by `sekd` (seed 1) ("
    ), s
    sekd = s["groups"][1]  # its mean over seeds 0 and 2 only; seed 1 in a column of its own
    assert (sekd["metrics"]["eval/ppl"]["mean"], sekd["metrics"]["eval/ppl"]["n"]) == (10.0, 2)
    assert (sekd["metrics"]["eval#2/ppl"]["mean"], sekd["metrics"]["eval#2/ppl"]["n"]) == (10.0, 1)


def test_a_teacher_row_without_eval_set_figures_says_why(tmp_path):
    """Try-out 15: the demo's compare.md showed the (teacher) row blank in every eval-set column (its runs are
    evaluated with eval.teacher_metrics=false; only the teacher's downstream tasks are scored) without a word."""
    from ekd.eval.compare import compare_runs

    tasks = {"task:choice": {"score": 0.3}, "task:choice/teacher": {"score": 0.4}}
    runs = [_edit(_fake_run(tmp_path, f"kd{s}", "kd", s, 10.0 + s, 0.5), eval_sets=tasks) for s in (0, 1)]
    compare_runs(runs, tmp_path / "cmp")
    text = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| (teacher) |" in text
    assert "`(teacher)`: no eval-set figures in these runs" in text and "eval.teacher_metrics=true" in text
    with_teacher = {"eval/teacher": {"ppl": 5.0}} | tasks
    runs = [
        _edit(_fake_run(tmp_path, f"t{s}", "kd", s, 10.0 + s, 0.5), eval_sets=with_teacher) for s in (0, 1)
    ]
    compare_runs(runs, tmp_path / "cmp2")
    assert "no eval-set figures" not in (tmp_path / "cmp2" / "compare.md").read_text()


def test_runs_that_differ_only_in_checkpointing_or_eval_batching_share_a_group(tmp_path):
    """Try-out 21: two seeds of kd differing in train.checkpoint_every became `kd` and `kd#2` (paired differences
    all —). Keys that make no other run — checkpointing, eval batching, plots and how often the run evaluates while
    training (try-out 51, F4), the same math in another
    summation order — are left out of the groups, as the device layout is; a key that does change the run is not."""
    from ekd.eval.compare import compare_runs

    a = _fake_run(tmp_path, "kd0", "kd", 0, 10.0, 0.5)
    b = _fake_run(tmp_path, "kd1", "kd", 1, 10.4, 0.6)
    for run, extra in ((a, {}), (b, {"checkpoint_every": 50, "head_chunk_size": 512, "compile": True})):
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        cfg["train"].update(extra)
        cfg["eval"] = {"batch_size": 8 if extra else 16, "plots": not extra, "every": 15 if extra else 0}
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    summary = compare_runs([a, b], tmp_path / "cmp")
    assert [g["method"] for g in summary["groups"]] == ["kd"] and len(summary["groups"][0]["seeds"]) == 2
    c = _fake_run(tmp_path, "kd2", "kd", 2, 10.2, 0.5, lr=3e-3)  # another learning rate: another run
    assert [g["method"] for g in compare_runs([a, b, c], tmp_path / "cmp2")["groups"]] == ["kd", "kd#2"]


def test_the_same_training_data_at_another_path_is_the_same_config_and_eval_set(tmp_path):
    """Try-out 22: a byte-identical copy of the data at another path (another machine's scratch directory) split
    two seeds of one config into `kd` and `kd#2` with "different eval sets". Runs that all record their training
    blocks' sha256 (ekd-run.json) are grouped by it, not by data.source's path, and eval sets whose eval.json
    entries all record their blocks' sha256 are identified by it: the same blocks pair, a file changed in place
    does not (try-out 25: a change to training documents alone leaves the held-out set the same); with a run of
    an older ekd among them (no sha256) the paths decide, as before."""

    def run(name: str, seed: int, source: str, blocks: str | None, held: str | None = "e" * 64) -> Path:
        d = _fake_run(tmp_path, name, "kd", seed, 10.0 + seed, 0.5)
        scored = {"source": source} | ({BLOCKS_KEY: held} if held else {})
        d = _edit(d, data={"source": source}, eval_sets={"eval": {"data": scored}} if blocks else None)
        if blocks is not None:
            marker = {"format": "ekd-run", "version": 1, "state": "finished", "data_fingerprint": blocks}
            (d / "ekd-run.json").write_text(json.dumps(marker))
        return d

    a = run("a", 0, "/scratch/me/text.jsonl", "ab" * 32)
    copy = run("copy", 1, "/scratch/you/text.jsonl", "ab" * 32)
    s = compare_runs([a, copy], tmp_path / "o1", baselines=("kd",), plots=False)
    assert [g["method"] for g in s["groups"]] == ["kd"] and not s["eval_sets"]
    edited = run("edited", 1, "/scratch/me/text.jsonl", "cd" * 32)  # training documents changed in place
    s = compare_runs([a, edited], tmp_path / "o2", baselines=("kd",), plots=False)
    assert [g["method"] for g in s["groups"]] == ["kd", "kd#2"]
    assert "training blocks sha256:cdcdcdcd" in s["groups"][1]["note"]
    # the files too: the same path, its content changed (try-out 55, F5: said "(x vs x)")
    assert "(both /scratch/me/text.jsonl)" in s["groups"][1]["note"]
    assert not s["eval_sets"]  # ... and the held-out set is the same blocks
    other = run("other", 1, "/scratch/me/text.jsonl", "cd" * 32, held="f" * 64)  # the held-out set changed
    s = compare_runs([a, other], tmp_path / "o3", baselines=("kd",), plots=False)
    assert f"{BLOCKS_KEY}={'f' * 64!r}" in s["eval_sets"], s["eval_sets"]
    old = run("old", 1, "/scratch/you/text.jsonl", None)  # an older ekd: no sha256, told apart by path
    s = compare_runs([a, old], tmp_path / "o4", baselines=("kd",), plots=False)
    assert [g["method"] for g in s["groups"]] == ["kd", "kd#2"]
    assert "data.source='/scratch/you/text.jsonl'" in s["groups"][1]["note"]
    assert "data.source='/scratch/you/text.jsonl'" in s["eval_sets"]


def test_a_replica_read_from_another_copy_of_the_data_says_so(tmp_path):
    """Try-out 88, F2: a seed trained again on the same text given as JSONL (the same training blocks) is a replica,
    rightly, but its note read "the same layout: a resume or a rerun", hiding the other source."""

    def run(name: str, source: str) -> Path:
        d = _edit(_fake_run(tmp_path, name, "kd", 0, 10.0, 0.5), data={"source": source})
        marker = {"format": "ekd-run", "version": 1, "state": "finished", "data_fingerprint": "ab" * 32}
        (d / "ekd-run.json").write_text(json.dumps(marker))
        return d

    txt, jsonl, again = run("txt", "corpus/"), run("jsonl", "corpus.jsonl"), run("again", "corpus/")
    s = compare_runs([txt, jsonl, again], tmp_path / "o", baselines=(), plots=False)
    (rec,) = s["replicas"]
    assert [r["differs_in"] for r in rec["replicas"]] == [["data.source='corpus.jsonl' (vs 'corpus/')"], []]
    assert "(data.source='corpus.jsonl' (vs 'corpus/'))" in s["replica_notes"][0]
    assert "(the same layout: a resume or a rerun)" in s["replica_notes"][0]  # the rerun from corpus/


@pytest.mark.slow
def test_two_seeds_trained_on_copies_of_the_data_are_one_config_scored_on_one_set(tmp_path):
    """End to end: seed 0 on corpus/, seed 1 on a byte-identical copy elsewhere (another node's scratch): one
    group of two seeds, and their held-out sets pair (each run's eval.json records its blocks' sha256)."""
    import shutil

    corpus = write_corpus(tmp_path / "corpus", n_docs=16)
    shutil.copytree(corpus, tmp_path / "node2" / "corpus")
    for seed, source in ((0, corpus), (1, tmp_path / "node2" / "corpus")):
        over = tiny_overrides(tmp_path, source, f"kd{seed}", **{"run.seed": seed, "method.preset": "kd"})
        assert main(["-q", "distill", *over]) == 0
    s = compare_runs([tmp_path / "runs" / "kd0", tmp_path / "runs" / "kd1"], tmp_path / "out", plots=False)
    assert [(g["method"], g["seeds"]) for g in s["groups"]] == [("kd", [0, 1])] and not s["eval_sets"], s


def test_an_eval_file_copied_to_another_path_is_one_config_and_one_set(tmp_path):
    """Try-out 26: the held-out file copied to another path (blocks_sha256 equal in both eval.json entries) split
    two seeds into `kd` and `kd#2`, "differs in data.eval_sources". Eval-set keys choose what is scored, not what
    is trained: one config; each set pairs by its blocks."""
    runs = []
    for seed, path in ((0, "/d1/held.jsonl"), (1, "/d2/held.jsonl")):
        scored = {"eval_sources": {"held": path}, BLOCKS_KEY: "a" * 64}
        run = _fake_run(tmp_path, f"kd{seed}", "kd", seed, 10.0 + seed, 0.5)
        runs.append(
            _edit(
                run, data={"eval_sources": {"held": path}}, eval_sets={"held": {"ppl": 9.0, "data": scored}}
            )
        )
    s = compare_runs(runs, tmp_path / "out", baselines=("kd",), plots=False)
    assert [(g["method"], g["seeds"]) for g in s["groups"]] == [("kd", [0, 1])] and not s["eval_sets"], s


def test_a_set_identified_by_its_blocks_is_not_told_apart_by_the_fields_it_was_read_with(tmp_path):
    """Try-out 53, F1: `ekd eval RUN data.prompt_field=prompt data.response_field=completion` (to add a
    prompt/completion set) re-scored the run's text `eval` set with identical blocks, and compare put it in another
    column (`eval#2`, 'data.prompt_field='' (vs 'prompt')'): every paired difference n/a. The blocks' sha256 holds
    what those keys decide."""
    runs = []
    for name, method, fields in (("kd0", "kd", {"prompt_field": "prompt", "response_field": "completion"}),
                                 ("se0", "sekd", {})):  # fmt: skip
        run = _fake_run(tmp_path, name, method, 0, 10.0 if method == "kd" else 9.0, 0.5)
        scored = {**fields, BLOCKS_KEY: "a" * 64}
        runs.append(_edit(run, eval_sets={"eval": {"ppl": 9.0 if method == "kd" else 8.0, "data": scored}}))
    s = compare_runs(runs, tmp_path / "out", baselines=("kd",), plots=False)
    assert not s["eval_sets"], s["eval_sets"]  # one column
    d = s["groups"][1]["vs"]["kd"]["eval/ppl"]
    assert (d["n"], d["mean"]) == (1, pytest.approx(-1.0)), d
    # settings that change how the same blocks are scored still tell sets apart
    runs[0] = _edit(
        runs[0],
        eval_sets={"eval": {"ppl": 9.0, "data": {"document_attention": "packed", BLOCKS_KEY: "a" * 64}}},
    )
    s = compare_runs(runs, tmp_path / "out2", baselines=("kd",), plots=False)
    assert "document_attention" in s["eval_sets"], s["eval_sets"]


def _rescored(run: Path, ppl: float, teacher_ppl: float, blocks: int) -> Path:
    """A fake run whose ``eval`` set was scored again (``ekd eval RUN data.max_eval_blocks=<blocks>``): its entry
    records those settings and another blocks sha256, with its teacher row on the same blocks."""
    data = {"max_eval_blocks": blocks, BLOCKS_KEY: f"{blocks:064x}"}
    ev = json.loads((run / "eval.json").read_text())
    ev["eval"] |= {"ppl": ppl, "tokens": 32.0 * blocks, "documents": 3.0, "data": data}
    ev["eval/teacher"] = {"ppl": teacher_ppl}
    (run / "eval.json").write_text(json.dumps(ev))
    return run


def test_a_mean_over_seeds_is_over_one_eval_set_each_way_a_set_was_scored_a_column(tmp_path):
    """Try-out 29, finding 2: ll2 scored again on 48 blocks (ll1 on 24), and `kd | 2 | 2.93 ± 0.05`
    averaged the two sets (the ± was the sets' difference shown as seed spread) under a note saying those
    numbers are not comparable; the two teacher rows were both `(teacher of kd)`. Each way a set was scored is
    now its own column (`eval`, `eval#2`), its cells over the seeds scored that way (`(n=1)`), and everything
    aggregated over seeds follows: paired differences, verdicts, CSV, JSON, claims, one teacher row."""
    from ekd.eval.claims import check_claims
    from ekd.eval.compare import kl_by_entropy, markdown

    runs = [
        _rescored(_fake_run(tmp_path, "kd0", "kd", 0, 0, 0.08), 2.96, 2.75, 24),
        _rescored(_fake_run(tmp_path, "kd1", "kd", 1, 0, 0.07), 2.90, 2.64, 48),
        _rescored(_fake_run(tmp_path, "se0", "sekd", 0, 0, 0.07), 2.86, 2.75, 24),  # 0.10 below kd
        _rescored(_fake_run(tmp_path, "se1", "sekd", 1, 0, 0.06), 2.60, 2.64, 48),  # 0.30 below kd
    ]
    s = compare_runs(runs, tmp_path / "out", baselines=("kd",), plots=False)
    kd, se = s["groups"]
    assert (kd["metrics"]["eval/ppl"]["mean"], kd["metrics"]["eval/ppl"]["n"]) == (2.96, 1)
    assert kd["metrics"]["eval#2/ppl"]["mean"] == 2.90 and kd["metrics"]["eval#2/ppl"]["n"] == 1
    assert kd["metrics"]["kd_pct"]["n"] == 2  # the cost does not depend on the eval set
    # paired differences: seed 0 on 24 blocks, seed 1 on 48, never one mean of both
    d, d2 = se["vs"]["kd"]["eval/ppl"], se["vs"]["kd"]["eval#2/ppl"]
    assert (d["n"], d["mean"], d["verdict"]) == (1, pytest.approx(-0.10), "1 seed")
    assert (d2["n"], d2["mean"], d2["verdict"]) == (1, pytest.approx(-0.30), "1 seed")
    assert se["vs"]["kd"]["eval/kl"]["n"] == 1  # KL too is a figure of one eval set
    (teacher,) = s["teachers"]  # one teacher: one row, its figure on each set in that set's column
    assert teacher["label"] == "(teacher)"
    assert teacher["metrics"]["eval/ppl"] == 2.75 and teacher["metrics"]["eval#2/ppl"] == 2.64
    first, second = s["eval_set_columns"]
    assert (first["column"], first["set"], first["runs"]) == ("eval", "eval", [str(runs[0]), str(runs[2])])
    assert (second["column"], second["set"], second["runs"]) == (
        "eval#2",
        "eval",
        [str(runs[1]), str(runs[3])],
    )
    assert second["differs"].endswith("data.max_eval_blocks=48 (vs 24)"), second
    md = markdown(s)
    kd_row = next(line for line in md.splitlines() if line.startswith("| kd |"))
    assert "| 2.96 (n=1) |" in kd_row and "| 2.90 (n=1) |" in kd_row and "2.93" not in kd_row, kd_row
    assert "eval#2 ppl" in md and md.count("(teacher") == 1
    # try-out 31: a difference over fewer seeds than its method has says so (markdown, and diff_n in the CSV)
    se_diff = [line for line in md.splitlines() if line.startswith("| sekd |")][-1]
    assert "-0.10 (1 seed of 2)" in se_diff, se_diff
    assert (
        "`eval` was scored 2 ways: `eval` by `kd` (seed 0), `sekd` (seed 0); `eval#2` by `kd` (seed 1)" in md
    )
    rows = list(csv.DictReader((tmp_path / "out" / "compare.csv").open()))
    methods = [r for r in rows if r["method"] != "(teacher)"]
    assert {(r["method"], r["metric"], r["n"]) for r in methods if r["metric"].endswith("/ppl")} == {
        ("kd", "eval/ppl", "1"),
        ("kd", "eval#2/ppl", "1"),
        ("sekd", "eval/ppl", "1"),
        ("sekd", "eval#2/ppl", "1"),
    }
    assert {r["kd_diff_n"] for r in rows if r["method"] == "sekd" and r["metric"].endswith("/ppl")} == {"1"}
    teacher_rows = {
        (r["metric"], r["mean"]) for r in rows if r["method"] == "(teacher)"
    }  # try-out 32: none before
    assert {("eval/ppl", "2.75"), ("eval#2/ppl", "2.64")} <= teacher_rows, teacher_rows
    groups = group_runs([read_run(r) for r in runs])
    claims = {c.claim.split(" (")[0]: c for c in check_claims(groups)}
    assert "Δppl -0.100 (n=1)" in claims["SE-KD"].numbers, claims["SE-KD"].numbers  # was -0.200 ± 0.141
    for run, kl_h0 in zip(runs, (0.2, 0.4, 0.1, 0.3)):  # KL per teacher-entropy bucket: over one set too
        _edit(run, eval_sets={"eval": {"kl@H0": kl_h0}})
    assert kl_by_entropy(group_runs([read_run(r) for r in runs]), "eval") == {
        "kd": {0: 0.2},
        "sekd": {0: 0.1},
    }


def test_a_replica_scored_on_another_eval_set_is_not_a_disagreement(tmp_path, capsys):
    """A seed's replica scored again on other blocks differs from the counted run by the eval sets, not by the
    training: its largest difference is taken over the figures scored alike, and the note names the set
    scored another way instead of calling `eval/ppl 2.96 vs 2.9` a disagreement between the replicas."""
    one = _rescored(_fake_run(tmp_path, "one", "kd", 0, 0, 0.08), 2.96, 2.75, 24)
    twin = _rescored(_fake_run(tmp_path, "twin", "kd", 0, 0, 0.08), 2.90, 2.64, 48)
    s = compare_runs([one, twin], tmp_path / "out", plots=False)
    (rec,) = s["replicas"]
    assert rec["largest_difference"]["abs"] == 0 and rec["scored_otherwise"] == ["eval#2 (vs eval)"], rec
    assert s["replica_notes"] == [
        f"`kd` seed 0: {one} counts; replicas {twin} (the same layout: a resume or a rerun): identical training "
        "figures; no eval figure compared (eval#2 (vs eval) scored another way)"
    ]  # try-out 31: was "identical metrics where scored alike", with no eval figure scored alike
    (kd,) = s["groups"]
    assert "eval#2/ppl" not in kd["metrics"]  # a way only a replica scored is no column


def test_a_replica_scored_with_other_ece_bins_is_not_a_disagreement(tmp_path):
    """A seed's replica re-scored with `eval.ece_bins=5` shares the set's column (try-out 55, F10), so its ECE
    over 5 bins must not be called the replicas' largest difference: ECE is compared only over the same bins."""
    runs = []
    for name, bins, ece in (("one", 15, 1.0), ("twin", 5, 3.5)):
        run = _fake_run(tmp_path, name, "kd", 0, 10.0, 0.5)
        ev = json.loads((run / "eval.json").read_text())
        ev["eval"].update(ece=ece, scoring={"ece_bins": bins, "entropy_buckets": 4, "precision": "fp32"})
        # try-out 59, F1: the teacher row's ECE is scored with its set's bins too
        ev["eval/teacher"] = {"ppl": 5.0, "acc": 0.3, "ece": 2.0 * ece}
        (run / "eval.json").write_text(json.dumps(ev))
        runs.append(run)
    (rec,) = compare_runs(runs, tmp_path / "out", plots=False)["replicas"]
    assert rec["largest_difference"]["abs"] == 0 and rec["eval_figures_compared"] > 0, rec
    assert not rec["scored_otherwise"]  # the same set: its ppl, acc, KL compared


def test_the_teacher_rows_ece_over_other_bins_names_the_seed_left_out(tmp_path):
    """Try-out 59, F2: the teacher row's ECE (n=1) left a seed scored with other bins out without a word; it is
    named as a method's seed is."""
    runs = []
    for seed, bins, ece in ((0, 15, 1.0), (1, 10, 3.5)):
        run = _fake_run(tmp_path, f"kd{seed}", "kd", seed, 10.0, 0.5)
        ev = json.loads((run / "eval.json").read_text())
        ev["eval"].update(ece=ece, scoring={"ece_bins": bins, "entropy_buckets": 4, "precision": "fp32"})
        ev["eval/teacher"] = {"ppl": 5.0, "acc": 0.3, "ece": 2.0 * ece}
        (run / "eval.json").write_text(json.dumps(ev))
        runs.append(run)
    s = compare_runs(runs, tmp_path / "out", plots=False)
    (teacher,) = s["teachers"]
    assert teacher["metrics"]["eval/ece"] == 2.0 and teacher["n"]["eval/ece"] == 1  # the first run's 15 bins
    assert teacher["metrics"]["eval/ppl"] == 5.0 and teacher["n"]["eval/ppl"] == 2
    assert s["setting_notes"] == [
        "`kd`: ECE % on `eval` is over the seeds scored with eval.ece_bins=15 (n=1 of 2); seed 1 (eval.ece_bins=10) "
        "left out",
        "`(teacher)`: ECE % on `eval` is over the seeds scored with eval.ece_bins=15 (n=1 of 2); seed 1 "
        "(eval.ece_bins=10) left out",
    ]


@pytest.mark.slow
def test_a_seed_evaluated_again_on_other_blocks_is_its_own_column_end_to_end(tmp_path, capsys):
    """Try-out 29, end to end: two seeds of kd, the second scored again with `ekd eval RUN
    data.max_eval_blocks=2` (the first on 4 blocks). The kd row's `eval` cells are the first seed's figures and
    its `eval#2` cells the second's, each `(n=1)`, not one mean ± std of two sets; the teacher is one row with
    its figure on each."""
    corpus = write_corpus(tmp_path / "corpus")
    for seed in (0, 1):
        over = tiny_overrides(tmp_path, corpus, f"kd{seed}", **{"run.seed": seed, "method.preset": "kd"})
        assert main(["-q", "distill", *over]) == 0
    kd0, kd1 = tmp_path / "runs" / "kd0", tmp_path / "runs" / "kd1"
    assert main(["-q", "eval", str(kd1), "data.max_eval_blocks=2"]) == 0
    ev = {r: json.loads((r / "eval.json").read_text()) for r in (kd0, kd1)}
    assert ev[kd0]["eval"]["data"][BLOCKS_KEY] != ev[kd1]["eval"]["data"][BLOCKS_KEY]
    out = tmp_path / "cmp"
    capsys.readouterr()
    assert main(["compare", str(kd0), str(kd1), "--out", str(out), "--no-plots"]) == 0
    printed = capsys.readouterr().out
    s = json.loads((out / "compare.json").read_text())
    (kd,) = s["groups"]
    for column, run in (("eval", kd0), ("eval#2", kd1)):
        for metric in ("ppl", "kl", "acc"):
            cell = kd["metrics"][f"{column}/{metric}"]
            assert (cell["mean"], cell["n"], cell["std"]) == (ev[run]["eval"][metric], 1, None), (
                column,
                cell,
            )
    (teacher,) = s["teachers"]
    assert teacher["label"] == "(teacher)"
    assert teacher["metrics"]["eval/ppl"] == ev[kd0]["eval/teacher"]["ppl"]
    assert teacher["metrics"]["eval#2/ppl"] == ev[kd1]["eval/teacher"]["ppl"]
    kd_row = next(line for line in printed.splitlines() if line.startswith("| kd |"))
    assert (
        f"| {ev[kd0]['eval']['ppl']:.2f} (n=1) |" in kd_row
        and f"| {ev[kd1]['eval']['ppl']:.2f} (n=1) |" in kd_row
    )
    assert "data.max_eval_blocks=2 (vs 4)" in printed, printed


def test_ece_over_other_bins_is_left_out_of_ece_alone_end_to_end(tmp_path, capsys):
    """Try-out 34, finding 2: `ekd eval RUN eval.ece_bins=5` of one seed and ECE over 15 bins of the other were
    one mean (`eval ECE % 7.91 ± 1.08`); the bins an entry was scored with are recorded, and ECE is a mean and a
    paired difference only over seeds scored with the same bins. Try-out 55, F10: the bins split the whole set
    into another column ('n/a (different eval sets)' for ppl, acc and KL, which no bin changes) — they do not.
    A run trained with other eval.ece_bins is the same method, not kd#2."""
    corpus = write_corpus(tmp_path / "corpus")
    for seed, bins in ((0, 15), (1, 15), (2, 7)):
        extra = {"run.seed": seed, "method.preset": "kd", "eval.ece_bins": bins}
        assert main(["-q", "distill", *tiny_overrides(tmp_path, corpus, f"kd{seed}", **extra)]) == 0
    extra = {"run.seed": 1, "method.preset": "ce"}
    assert main(["-q", "distill", *tiny_overrides(tmp_path, corpus, "ce1", **extra)]) == 0
    runs = [tmp_path / "runs" / f"kd{s}" for s in (0, 1, 2)]
    assert main(["-q", "eval", str(runs[1]), "eval.ece_bins=5"]) == 0
    ev = [json.loads((r / "eval.json").read_text()) for r in runs]
    assert ev[1]["eval"]["scoring"] == {"ece_bins": 5, "entropy_buckets": 4, "precision": "fp32"}
    s = compare_runs([*runs, tmp_path / "runs" / "ce1"], tmp_path / "cmp", baselines=("ce",), plots=False)
    kd, ce = s["groups"]  # eval.ece_bins chooses how the sets are scored, not what is trained
    assert not s["eval_set_columns"] and "eval#2/ppl" not in kd["metrics"]
    for metric in ("ppl", "acc", "kl"):  # every seed, one column
        values = [e["eval"][metric] for e in ev]
        assert kd["metrics"][f"eval/{metric}"]["n"] == 3
        assert kd["metrics"][f"eval/{metric}"]["mean"] == pytest.approx(sum(values) / 3, rel=1e-12)
    # ECE over the bins most seeds used (15: seed 0; seeds 1 and 2 re-scored with 5, trained with 7): a tie of
    # one each, so the first run given's
    cell = kd["metrics"]["eval/ece"]
    assert (cell["mean"], cell["n"], cell["setting"]) == (ev[0]["eval"]["ece"], 1, "eval.ece_bins=15")
    assert cell["other_setting"] == {1: "eval.ece_bins=5", 2: "eval.ece_bins=7"}
    assert s["setting_notes"] == [
        "`kd`: ECE % on `eval` is over the seeds scored with eval.ece_bins=15 (n=1 of 3); "
        "seed 1 (eval.ece_bins=5), seed 2 (eval.ece_bins=7) left out",
        "`(teacher)`: ECE % on `eval` is over the seeds scored with eval.ece_bins=15 (n=1 of 3); "
        "seed 1 (eval.ece_bins=5), seed 2 (eval.ece_bins=7) left out",
    ]
    # seed 1 pairs with ce's seed 1 on ppl (same blocks) but not on ECE (5 bins vs ce's 15)
    vs = kd["vs"]["ce"]
    assert vs["eval/ppl"]["n"] == 1 and vs["eval/ppl"]["mean"] == pytest.approx(
        ev[1]["eval"]["ppl"]
        - json.loads((tmp_path / "runs" / "ce1" / "eval.json").read_text())["eval"]["ppl"]
    )
    assert vs["eval/ece"]["n"] == 0 and vs["eval/ece"]["verdict"] == "other ECE bins"
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "n/a (other ECE bins)" in table and "Scored with other ECE bins" in table
    assert "different eval sets" not in table
    # the teacher row's ECE: over the runs scored with the bins most used, never a mean over two binnings
    (teacher,) = s["teachers"]
    assert teacher["metrics"]["eval/ece"] == pytest.approx(ev[0]["eval/teacher"]["ece"])
    # an eval.json of an older ekd records no scoring: the run's config says how it was scored
    for e, r in zip(ev, runs):
        for entry in e.values():
            if isinstance(entry, dict):
                entry.pop("scoring", None)
        (r / "eval.json").write_text(json.dumps(e))
    s = compare_runs(runs, tmp_path / "cmp2", baselines=(), plots=False)
    cell = s["groups"][0]["metrics"]["eval/ece"]
    assert cell["n"] == 2 and cell["other_setting"] == {2: "eval.ece_bins=7"}


def test_an_evaluation_under_bf16_autocast_is_another_column(tmp_path):
    """Try-out 45, F2: `ekd eval RUN train.precision=bf16` moved the teacher's ECE by 6% and was recorded nowhere,
    so compare averaged a bf16 and an fp32 evaluation of one set; each entry records its forward's autocast."""
    corpus = write_corpus(tmp_path / "corpus")
    for seed in (0, 1):
        assert (
            main(["-q", "distill", *tiny_overrides(tmp_path, corpus, f"kd{seed}", **{"run.seed": seed})]) == 0
        )
    runs = [tmp_path / "runs" / f"kd{s}" for s in (0, 1)]
    assert main(["-q", "eval", str(runs[1]), "train.precision=bf16"]) == 0
    ev = [json.loads((r / "eval.json").read_text()) for r in runs]
    assert [e["eval"]["scoring"]["precision"] for e in ev] == ["fp32", "bf16"]
    s = compare_runs(runs, tmp_path / "cmp", baselines=(), plots=False)
    (kd,) = s["groups"]
    assert kd["metrics"]["eval/ece"]["n"] == 1 and kd["metrics"]["eval#2/ece"]["n"] == 1
    assert "train.precision='bf16' (vs 'fp32')" in s["eval_sets"], s["eval_sets"]
    # review 106: an entry of an ekd that recorded no autocast (a GPU run's bf16, a CPU run's fp32) pairs with either
    del ev[0]["eval"]["scoring"]["precision"]
    (runs[0] / "eval.json").write_text(json.dumps(ev[0]))
    (kd,) = compare_runs(runs, tmp_path / "cmp2", baselines=(), plots=False)["groups"]
    assert kd["metrics"]["eval/ece"]["n"] == 2 and "eval#2/ece" not in kd["metrics"]
    # try-out 48, F1: beside entries recording fp32 and bf16, it is neither: bf16 and fp32 never share a mean
    assert main(["-q", "distill", *tiny_overrides(tmp_path, corpus, "kd2", **{"run.seed": 2})]) == 0
    runs.append(tmp_path / "runs" / "kd2")  # fp32
    (kd,) = compare_runs(runs, tmp_path / "cmp3", baselines=(), plots=False)["groups"]
    assert sorted(kd["metrics"][f"{c}/ece"]["n"] for c in ("eval", "eval#2", "eval#3")) == [1, 1, 1]


def test_a_cost_difference_is_lower_or_higher_not_better_or_worse(tmp_path):
    """try-out 31: in compare.csv/json a method that used fewer KD positions (or teacher bytes) was "worse": a
    cost has no better direction ekd can know; its verdict says which way it went."""
    runs = [_fake_run(tmp_path, f"kd{s}", "kd", s, 10.0 + s, 0.5) for s in range(3)]
    selective = [_fake_run(tmp_path, f"se{s}", "sekd", s, 10.0 + s, 0.5) for s in range(3)]
    for run, fraction in zip(selective, (0.2, 0.21, 0.19)):
        rows = [{"step": 1, "select/count": 10.0 * fraction / 0.5, "select/fraction": fraction}]
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    s = compare_runs(runs + selective, tmp_path / "out", baselines=("kd",), plots=False)
    se = next(g for g in s["groups"] if g["method"] == "sekd")
    assert se["vs"]["kd"]["kd_pct"]["verdict"] == "lower", se["vs"]["kd"]["kd_pct"]


def _with_tasks(
    run: Path,
    scores: dict[str, tuple[float, int]],
    tasks_dir: str = "",
    identities: dict[str, str] | None = None,
    **settings,
) -> Path:
    """Give a fake run eval.json's ``tasks`` section as ``ekd eval --tasks`` writes it: task → (score,
    documents), scored with ``settings`` (limit, num_fewshot, …; tasks_dir_hash: the directory's content, as an
    older ekd recorded it); ``identities``: task → its ``documents_sha256``, as ekd records it now."""
    ev = json.loads((run / "eval.json").read_text())
    seed = yaml.safe_load((run / "config.yaml").read_text())["run"]["seed"]
    recorded = {"limit": 0, "num_fewshot": -1, "max_new_tokens": 0, "chat_template": "auto"} | settings
    student = {t: {"value": v, "ece": 5.0, "n": n} for t, (v, n) in scores.items()}
    for t, sha in (identities or {}).items():
        student[t]["documents_sha256"] = sha
    mean = statistics.fmean(v for v, _ in scores.values())
    ev["tasks"] = {
        "settings": {**recorded, "tasks": list(scores), "tasks_dir": tasks_dir, "seed": seed},
        "tags": {t: "in_distribution" for t in scores},
        "student": student,
        "summary": {"student": {"mean": {"in_distribution": mean}, "mc_ece": {"in_distribution": 5.0}}},
    }
    (run / "eval.json").write_text(json.dumps(ev))
    return run


def test_a_task_scored_with_other_settings_is_its_own_column_never_one_mean(tmp_path):
    """Try-out 29 (left then): ``ekd compare`` averaged a downstream task's scores over seeds scored with another
    ``--limit`` (or few-shot count, or an edited tasks directory) into one mean ± std. A task scored several ways
    is one column per way, as an eval set is; settings that do not change a score (the seed, the directory's
    path when its content is recorded) do not split it."""
    full, limited = (0.40, 20), (0.60, 5)
    runs = [
        _with_tasks(_fake_run(tmp_path, "kd0", "kd", 0, 10.0, 0.5), {"mc": full, "gen": (0.1, 6)}),
        _with_tasks(_fake_run(tmp_path, "kd1", "kd", 1, 11.0, 0.5), {"mc": limited}, limit=5),
        _with_tasks(_fake_run(tmp_path, "kd2", "kd", 2, 12.0, 0.5), {"mc": (0.44, 20), "gen": (0.3, 6)}),
        _with_tasks(_fake_run(tmp_path, "se0", "sekd", 0, 9.0, 0.5), {"mc": (0.50, 20), "gen": (0.2, 6)}),
        _with_tasks(_fake_run(tmp_path, "se1", "sekd", 1, 9.0, 0.5), {"mc": (0.70, 20), "gen": (0.2, 6)}),
    ]
    s = compare_runs(runs, tmp_path / "out", baselines=("kd",), plots=False)
    by = {g["method"]: g for g in s["groups"]}
    assert set(by) == {"kd", "sekd"}  # eval.tasks* settings choose what is scored, not what is trained
    kd = by["kd"]["metrics"]
    assert kd["task:mc/score"]["mean"] == pytest.approx(0.42) and kd["task:mc/score"]["n"] == 2
    assert kd["task:mc#2/score"] == {"mean": 0.60, "std": pytest.approx(math.nan, nan_ok=True), "n": 1}
    # the tag's mean over (mc, gen) and over mc alone are two columns too
    assert kd["tasks[in_distribution]/score"]["n"] == 2 and kd["tasks[in_distribution]#2/score"]["n"] == 1
    # sekd's seed 1 is paired with no kd run on mc: kd's seed 1 scored it another way
    diff = by["sekd"]["vs"]["kd"]["task:mc/score"]
    assert diff["n"] == 1 and diff["mean"] == pytest.approx(0.10) and diff["verdict"] == "within item noise"
    notes = s["eval_sets"]
    assert (
        "`task:mc` was scored 2 ways" in notes and "eval.tasks_limit=5 (vs 0), 5 documents (vs 20)" in notes
    )
    assert "a mean over other tasks (mc vs gen, mc)" in notes
    csv_text = (tmp_path / "out" / "compare.csv").read_text()
    assert "task:mc#2/score" in csv_text


def test_a_tasks_directory_is_told_by_its_content_when_every_run_records_it(tmp_path):
    """The same task files at another path (another machine's checkout) are one way; an edit of them is
    another, even at the same path. A run of an older ekd (no content hash) is told by the path, for all."""
    a = _with_tasks(
        _fake_run(tmp_path, "kd0", "kd", 0, 10.0, 0.5), {"mc": (0.4, 20)}, "/x/t", tasks_dir_hash="aa"
    )
    b = _with_tasks(
        _fake_run(tmp_path, "kd1", "kd", 1, 10.0, 0.5), {"mc": (0.5, 20)}, "/y/t", tasks_dir_hash="aa"
    )
    c = _with_tasks(
        _fake_run(tmp_path, "kd2", "kd", 2, 10.0, 0.5), {"mc": (0.9, 20)}, "/x/t", tasks_dir_hash="bb"
    )
    s = compare_runs([a, b, c], tmp_path / "o1", baselines=(), plots=False)
    m = s["groups"][0]["metrics"]
    assert m["task:mc/score"]["n"] == 2 and m["task:mc#2/score"]["mean"] == 0.9
    assert "`task:mc#2` by `kd` (seed 2) (the tasks directory's content)" in s["eval_sets"]
    old = _with_tasks(_fake_run(tmp_path, "kd3", "kd", 3, 10.0, 0.5), {"mc": (0.6, 20)}, "/x/t")
    s = compare_runs([a, b, old], tmp_path / "o2", baselines=(), plots=False)
    m = s["groups"][0]["metrics"]
    assert m["task:mc/score"]["n"] == 2 and m["task:mc#2/score"]["mean"] == 0.5  # /y/t: another path
    assert "eval.tasks_dir='/y/t' (vs '/x/t')" in s["eval_sets"]


def test_a_task_is_told_by_its_own_data_so_an_edit_of_another_splits_nothing(tmp_path):
    """Try-out 34, findings 1 and 6: the whole directory's hash split every task of it when one task's data was
    edited, and missed an edit outside it. Each task's own identity (``documents_sha256``) decides now: editing
    mc's data splits mc alone, gen stays one column over all seeds, and the directory's path does not matter."""
    same, edited = {"mc": "m1", "gen": "g1"}, {"mc": "m2", "gen": "g1"}
    scores = {"mc": (0.4, 20), "gen": (0.2, 6)}
    runs = [
        _with_tasks(_fake_run(tmp_path, "kd0", "kd", 0, 10.0, 0.5), scores, "/x/t", same, ece_bins=15),
        _with_tasks(_fake_run(tmp_path, "kd1", "kd", 1, 10.0, 0.5), scores, "/y/t", same, ece_bins=15),
        _with_tasks(_fake_run(tmp_path, "kd2", "kd", 2, 10.0, 0.5), scores, "/x/t", edited, ece_bins=15),
    ]
    s = compare_runs(runs, tmp_path / "out", baselines=(), plots=False)
    m = s["groups"][0]["metrics"]
    assert m["task:gen/score"]["n"] == 3 and "task:gen#2/score" not in m
    assert m["task:mc/score"]["n"] == 2 and m["task:mc#2/score"]["n"] == 1
    assert "the task's config or documents" in s["eval_sets"], s["eval_sets"]


def test_a_replica_resumed_on_other_ranks_is_described_by_every_segment(tmp_path):
    """Try-out 37, finding 4: ekd-run.json kept the last segment's ranks only, so a run trained 2 × 4 then resumed
    as 1 × 8 was 'the same layout: a resume or a rerun' beside its one-process twin. The run records every
    segment's ranks and engine; the note names them in order."""
    one = _layout(_fake_run(tmp_path, "one", "kd", 1, 10.0, 0.5), 8, 1, "ddp")
    mixed = _layout(_fake_run(tmp_path, "mixed", "kd", 1, 10.0, 0.5), 8, 1, "ddp")
    marker = json.loads((mixed / "ekd-run.json").read_text())
    marker["segments"] = [{"ranks": 2, "parallel": "fsdp"}, {"ranks": 1, "parallel": "ddp"}]
    (mixed / "ekd-run.json").write_text(json.dumps(marker))
    s = compare_runs([one, mixed], tmp_path / "o", baselines=(), plots=False)
    (rec,) = s["replicas"]
    assert rec["replicas"][0]["differs_in"] == [
        "train.parallel='fsdp then ddp' (vs 'ddp')",
        "ranks='2 then 1' (vs 1)",
    ]
    # try-out 39, F8: segments record their micro-batch too (2 × 4 rows, then 1 × 8)
    marker["segments"] = [
        {"ranks": 2, "parallel": "ddp", "micro_batch_size": 4},
        {"ranks": 1, "parallel": "ddp", "micro_batch_size": 8},
    ]
    (mixed / "ekd-run.json").write_text(json.dumps(marker))
    (rec,) = compare_runs([one, mixed], tmp_path / "o", baselines=(), plots=False)["replicas"]
    assert "train.micro_batch_size='4 then 8' (vs 8)" in rec["replicas"][0]["differs_in"], rec


def test_the_teacher_row_of_a_few_shot_task_is_its_mean_over_the_seeds(tmp_path):
    """Try-out 38, F11: few-shot examples are drawn per seed, so the teacher scores a few-shot task differently
    in each seed's run; its row showed the first seed's figure beside the students' mean over seeds. It is the
    mean over the column's runs, with its spread and n where they differ; a text set's teacher figures (the same
    in every run) stay one plain figure."""
    runs = []
    for seed, teacher_acc in ((0, 0.30), (1, 0.2833)):
        run = _with_tasks(
            _fake_run(tmp_path, f"kd{seed}", "kd", seed, 10.0, 0.5),
            {"mc": (0.4, 60)},
            num_fewshot=1,
            ece_bins=15,
        )
        ev = json.loads((run / "eval.json").read_text())
        ev["eval/teacher"] = {"ppl": 5.0}
        ev["tasks"]["teacher"] = {"mc": {"value": teacher_acc, "ece": 40.0, "n": 60}}
        (run / "eval.json").write_text(json.dumps(ev))
        runs.append(run)
    s = compare_runs(runs, tmp_path / "o", baselines=(), plots=False)
    (teacher,) = s["teachers"]
    assert teacher["metrics"]["task:mc/score"] == pytest.approx((0.30 + 0.2833) / 2)
    assert teacher["spread"]["task:mc/score"]["n"] == 2 and "task:mc/ece" not in teacher["spread"]
    assert teacher["metrics"]["eval/ppl"] == 5.0 and "eval/ppl" not in teacher["spread"]
    row = next(
        ln for ln in (tmp_path / "o" / "compare.md").read_text().splitlines() if ln.startswith("| (teacher)")
    )
    assert "0.2916 ± 0.0118" in row, row


def test_the_teacher_row_counts_each_seed_once_and_the_csv_gives_its_spread(tmp_path):
    """Try-out 39, F6: kd and sekd of seeds 0 and 1 and kd alone of seed 2 made a teacher row over 5 runs, seeds 0
    and 1 counted twice (a mean of 0.7464 where the seeds' is 0.7583), its n not shown; compare.csv wrote the row
    with no std and n=1."""
    runs = []
    for method, seeds in (("kd", (0, 1, 2)), ("sekd", (0, 1))):
        for seed in seeds:
            run = _with_tasks(
                _fake_run(tmp_path, f"{method}{seed}", method, seed, 10.0, 0.5),
                {"mc": (0.4, 60)},
                num_fewshot=1,
                ece_bins=15,
            )
            ev = json.loads((run / "eval.json").read_text())
            ev["tasks"]["teacher"] = {"mc": {"value": (0.725, 0.75, 0.80)[seed], "ece": 40.0, "n": 60}}
            (run / "eval.json").write_text(json.dumps(ev))
            runs.append(run)
    s = compare_runs(runs, tmp_path / "o", baselines=(), plots=False)
    (teacher,) = s["teachers"]
    assert teacher["metrics"]["task:mc/score"] == pytest.approx((0.725 + 0.75 + 0.80) / 3)
    assert teacher["n"]["task:mc/score"] == 3 and teacher["spread"]["task:mc/score"]["n"] == 3
    csv_row = next(
        ln
        for ln in (tmp_path / "o" / "compare.csv").read_text().splitlines()
        if ln.startswith("(teacher),task:mc/score")
    )
    mean, std, n = csv_row.split(",")[2:5]
    assert (float(mean), float(std), n) == (
        pytest.approx(0.7583, abs=1e-4),
        pytest.approx(0.0382, abs=1e-4),
        "3",
    )


def test_a_ce_run_without_teacher_figures_is_not_said_to_have_turned_them_off(tmp_path):
    """Try-out 39, F5: compare said a ``ce`` run with a preset teacher was evaluated with
    ``eval.teacher_metrics=false`` (its config says true) and that setting it to true adds the figures; a random
    preset teacher is evaluated only by a method that trains with it."""
    tasks = {"task:choice": {"score": 0.3}, "task:choice/teacher": {"score": 0.4}}
    runs = []
    for seed in (0, 1):
        run = _edit(_fake_run(tmp_path, f"ce{seed}", "ce", seed, 10.0 + seed, 0.5), eval_sets=tasks)
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        cfg["model"].update(teacher="preset:llama-micro", student="preset:llama-micro", tokenizer="train_bpe")
        cfg["eval"] = {"teacher": True, "teacher_metrics": True}
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
        runs.append(run)
    compare_runs(runs, tmp_path / "cmp")
    text = (tmp_path / "cmp" / "compare.md").read_text()
    assert "`(teacher)`: no eval-set figures in these runs (`ce` evaluates without its teacher" in text, text
    assert "teacher_metrics" not in text


def test_a_teacher_retrained_in_place_is_another_teacher(tmp_path):
    """Try-out 39, F3: the same ``model.teacher`` path holding other weights (retrained in place between two runs)
    was 'the same teacher': KL and agreement were paired across the two teachers and their figures averaged in one
    (teacher) row. Each eval.json entry records the teacher it was measured with (a fingerprint of its weights);
    entries of an older ekd, which record none, are keyed by the config's name, revision and dtype, and still pair
    with today's (review 99: they never did)."""
    from ekd.eval.compare import compare_runs

    def run(name, method, weights, path="/models/t"):
        r = _edit(_fake_run(tmp_path, name, method, 0, 10.0, 0.5), teacher="/models/t")
        ev = json.loads((r / "eval.json").read_text())
        ev["eval/teacher"] = {"ppl": 5.0 if weights != "b" else 6.0}
        if weights is not None:
            for entry in ("eval", "eval/teacher"):
                ev[entry]["teacher"] = {"model": path, "revision": "", "weights": weights, "dtype": "auto"}
        (r / "eval.json").write_text(json.dumps(ev))
        return r

    s = compare_runs([run("kd0", "kd", "a"), run("rkl0", "rkl", "b")], tmp_path / "o", baselines=("kd",))
    rkl = next(g for g in s["groups"] if g["method"] == "rkl")["vs"]["kd"]
    assert rkl["eval/kl"]["verdict"] == "different teachers" and rkl["eval/ppl"]["n"] == 1
    assert sorted(t["metrics"]["eval/ppl"] for t in s["teachers"]) == [5.0, 6.0]
    for kd, rkl in (
        (run("kd1", "kd", "a"), run("rkl1", "rkl", "a", path="/elsewhere/t")),  # the same weights, copied
        (run("kd2", "kd", None), run("rkl2", "rkl", "a")),  # an older ekd's eval.json beside today's
    ):
        same = compare_runs([kd, rkl], tmp_path / "o2", baselines=("kd",))
        vs = next(g for g in same["groups"] if g["method"] == "rkl")["vs"]["kd"]["eval/kl"]
        assert vs["n"] == 1, (kd, vs)
        assert len(same["teachers"]) == 1


def test_runs_without_any_teacher_figures_say_why_there_is_no_teacher_row(tmp_path):
    """Try-out 42, F9: a comparison of runs that record no teacher figures at all (``ce`` with a random preset
    teacher, or ``eval.teacher_metrics=false``) printed no teacher row and no word why."""
    from ekd.eval.compare import compare_runs

    runs = []
    for seed in (0, 1):
        run = _fake_run(tmp_path, f"kd{seed}", "kd", seed, 10.0 + seed, 0.5)
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        cfg["eval"] = {"teacher_metrics": False}
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
        runs.append(run)
    s = compare_runs(runs, tmp_path / "o", baselines=(), plots=False)
    assert s["teachers"] == [] and s["no_teacher"] == {"switch": "eval.teacher_metrics"}
    text = (tmp_path / "o" / "compare.md").read_text()
    assert "No `(teacher)` row: these runs record no teacher figures (eval.teacher_metrics=false" in text


def test_seeds_taught_by_two_teachers_are_two_groups(tmp_path):
    """Try-out 43, F2: a teacher retrained in place between two seeds of one method gave one row, its KL the mean over
    the two teachers' students (0.057 ± 0.056). Where every run taught online records its teacher's weights
    (ekd-run.json), model.teacher is read as them: a copy at another path groups with the original."""
    from ekd.eval.compare import compare_runs

    def run(name, seed, path, weights):
        r = _edit(_fake_run(tmp_path, name, "rkl", seed, 10.0, 0.5), teacher=path)
        marker = {"format": "ekd-run", "version": 1, "state": "finished", "teacher_weights": weights}
        (r / "ekd-run.json").write_text(json.dumps(marker))
        return r

    split = compare_runs([run("a0", 0, "/m/t", "sampled-sha256:aa"), run("a1", 1, "/m/t", "sampled-sha256:bb")],
                         tmp_path / "o", baselines=(), plots=False)  # fmt: skip
    assert [g["method"] for g in split["groups"]] == ["rkl", "rkl#2"], split["groups"]
    same = compare_runs([run("b0", 0, "/m/t", "sampled-sha256:aa"), run("b1", 1, "/n/t", "sampled-sha256:aa")],
                        tmp_path / "o2", baselines=(), plots=False)  # fmt: skip
    assert [g["method"] for g in same["groups"]] == ["rkl"]


def test_seeds_from_two_starting_students_at_one_path_are_two_groups(tmp_path):
    """Try-out 70, F1: two students written to one path (`ekd student init --overwrite`) were seeds of one method,
    the ± their difference. Where every run with a local student records its weights (ekd-run.json
    ``student_weights``), model.student is read as them; a preset student (built from run.seed) by its name."""
    from ekd.eval.compare import compare_runs

    def run(name, seed, student, weights=None):
        r = _edit(_fake_run(tmp_path, name, "kd", seed, 10.0 + seed, 0.5), teacher="/m/t")
        cfg = yaml.safe_load((r / "config.yaml").read_text())
        cfg["model"]["student"] = student
        (r / "config.yaml").write_text(yaml.safe_dump(cfg))
        marker = {"format": "ekd-run", "version": 1, "state": "finished", "teacher_weights": "sha256:tt"}
        (r / "ekd-run.json").write_text(
            json.dumps({**marker, **({"student_weights": weights} if weights else {})})
        )
        return r

    def groups(*runs):
        out = tmp_path / f"o{len(list(tmp_path.glob('o*')))}"
        return [
            (g["method"], len(g["seeds"]))
            for g in compare_runs(runs, out, baselines=(), plots=False)["groups"]
        ]

    assert groups(run("a0", 0, "/s/cut", "sha256:aa"), run("a1", 1, "/s/cut", "sha256:bb")) == [
        ("kd", 1),
        ("kd#2", 1),
    ]
    assert groups(run("b0", 0, "/s/cut", "sha256:aa"), run("b1", 1, "/t/copy", "sha256:aa")) == [("kd", 2)]
    assert groups(run("c0", 0, "preset:llama-micro"), run("c1", 1, "preset:llama-micro")) == [("kd", 2)]
    # a run of an older ekd among them (no record): by path, as before
    assert groups(run("d0", 0, "/s/cut", "sha256:aa"), run("d1", 1, "/s/cut")) == [("kd", 2)]


def test_a_run_whose_student_dir_is_gone_is_scored_by_the_tokenizer_it_recorded(tmp_path):
    """Try-out 70, F2: a run without its exported student/ fell back to the config's tokenizer spelling, and its
    eval set became a column of its own, 'another tokenizer' — false. Where every run records its tokenizer's
    encodings (ekd-run.json ``tokenizer_sha256``), that is what tells the sets' tokenizers apart."""
    from ekd.eval.compare import compare_runs

    def run(name, seed, encodings, exported):
        r = _edit(_fake_run(tmp_path, name, "kd", seed, 10.0 + seed, 0.5), teacher="/m/t")
        marker = {"format": "ekd-run", "version": 1, "state": "finished", "tokenizer_sha256": encodings}
        (r / "ekd-run.json").write_text(json.dumps(marker))
        if exported:
            (r / "student").mkdir()
            (r / "student" / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"a": 0}}}))
        return r

    def notes(*runs):
        out = tmp_path / f"o{len(list(tmp_path.glob('o*')))}"
        compare_runs(runs, out, baselines=(), plots=False)
        return (out / "compare.md").read_text()

    assert "another tokenizer" not in notes(run("a0", 0, "e1", True), run("a1", 1, "e1", False))
    assert "another tokenizer" in notes(run("b0", 0, "e1", True), run("b1", 1, "e2", True))


def test_seeds_of_a_method_without_a_teacher_are_one_group_whatever_teacher_evaluated_them(tmp_path):
    """Try-out 44, F2: ``ce`` seeds evaluated against a teacher retrained between them were split into ``ce`` and
    ``ce#2`` by a teacher that taught neither (their KL is paired by each entry's own teacher record); a method
    that trains with the teacher is still split by it, and so are older records of both schemes, by path."""
    from ekd.eval.compare import compare_runs

    def run(name, method, seed, path, weights):
        r = _edit(_fake_run(tmp_path, name, method, seed, 10.0 + seed, 0.5), teacher=path)
        marker = {"format": "ekd-run", "version": 1, "state": "finished", "teacher_weights": weights}
        (r / "ekd-run.json").write_text(json.dumps(marker))
        return r

    runs = [run(f"ce{s}", "ce", s, "/m/t", w) for s, w in enumerate(("sha256:aa", "sha256:aa", "sha256:bb"))]
    runs += [run(f"kd{s}", "kd", s, "/m/t", w) for s, w in enumerate(("sha256:aa", "sha256:bb"))]
    s = compare_runs(runs, tmp_path / "o", baselines=(), plots=False)
    assert sorted((g["method"], len(g["seeds"])) for g in s["groups"]) == [("ce", 3), ("kd", 1), ("kd#2", 1)]
    mixed = [run("m0", "kd", 0, "/m/t", "sampled-sha256:aa"), run("m1", "kd", 1, "/n/t", "sha256:aa")]
    s = compare_runs(mixed, tmp_path / "o2", baselines=(), plots=False)  # two schemes: by path, as before
    assert [g["method"] for g in s["groups"]] == ["kd", "kd#2"], s["groups"]


@pytest.mark.parametrize("extra", [[], ["teacher.source=cache"], ["method.sample_fraction=0.5"]])
def test_whether_a_run_trained_with_its_teacher_is_the_trainers_rule_for_every_preset(extra):
    """Review 106: compare reads the trainer's rules (teacher_needed, scores_samples_with_teacher) off a saved
    config through a view of its sections; a rule reading anything else would silently count every run as taught
    (ce seeds split by teacher again). Every preset, from its saved form, agrees with the trainer."""
    from ekd.config import load_config
    from ekd.config.sections import _preset_names
    from ekd.eval.compare.runs import RunRecord
    from ekd.train.prepare import scores_samples_with_teacher, teacher_needed

    for preset in _preset_names():
        try:
            cfg = load_config(overrides=[f"method.preset={preset}", "teacher.cache_dir=/c", *extra])
        except Exception:  # noqa: BLE001 — a preset this combination does not allow
            continue
        record = RunRecord(Path("r"), cfg.to_dict(), {}, 1.0, 0.0)
        assert record.trains_with_teacher() == (teacher_needed(cfg) or scores_samples_with_teacher(cfg)), (
            preset
        )


@pytest.mark.parametrize(
    "diffs, verdict",
    [
        ([-1.0, -1.4], "not significant"),  # mean beyond one std, but t₀.₉₇₅,₁·std/√2 = 2.54
        ([-1.0, -1.0, -1.0, -1.0, -1.0, 0.5, 0.5, -1.0], "better"),  # mean 0.90 std, half-width 0.84 std
    ],
    ids=["2-seeds", "8-seeds"],
)
def test_a_verdict_is_a_paired_t_test_at_the_5_percent_level(tmp_path, diffs, verdict):
    """Try-out 45, F8: 'better' only needed the mean paired difference to exceed its sample std — with 2 seeds
    about 60% confidence, with 8 seeds stricter than 95%. Now the 95% interval of the mean must exclude 0."""
    runs = []
    for seed, d in enumerate(diffs):
        runs.append(_fake_run(tmp_path, f"kd{seed}", "kd", seed, 10.0, 0.5))
        runs.append(_fake_run(tmp_path, f"se{seed}", "sekd", seed, 10.0 + d, 0.5))
    s = compare_runs(runs, tmp_path / "out", baselines=("kd",), plots=False)
    d = next(g for g in s["groups"] if g["method"] == "sekd")["vs"]["kd"]["eval/ppl"]
    n, mean, std = len(diffs), statistics.fmean(diffs), statistics.stdev(diffs)
    t975 = {2: 12.706205, 8: 2.364624}[n]  # Student's t, two-sided 95%, n − 1 degrees of freedom
    assert d["mean"] == pytest.approx(mean) and d["ci95"] == pytest.approx(t975 * std / math.sqrt(n))
    assert d["verdict"] == verdict
    assert f"({verdict}" in (tmp_path / "out" / "compare.md").read_text()


def test_keys_a_run_did_not_read_make_no_other_config():
    """Try-out 55, F5: `ce` with model.tokenizer=train_bpe bpe_vocab_size=400 beside `ce` on the teacher's
    tokenizer was said to differ in `model.bpe_vocab_size=400 (vs 4096)`, a default the other never read; so
    would the lora_* knobs of a student without LoRA."""
    from ekd.eval.compare.runs import _unread_model_keys_dropped

    real = {"tokenizer": "teacher", "teacher": "/m/t", "student": "/m/s", "bpe_vocab_size": 4096}
    assert "bpe_vocab_size" not in _unread_model_keys_dropped(real)
    assert "bpe_vocab_size" in _unread_model_keys_dropped(real | {"tokenizer": "train_bpe"})
    presets = real | {"teacher": "preset:llama-tiny", "student": "preset:llama-micro"}  # teacher → train_bpe
    assert "bpe_vocab_size" in _unread_model_keys_dropped(presets)
    lora = {"lora_r": 0, "lora_alpha": 32.0, "lora_dropout": 0.1}
    assert _unread_model_keys_dropped(lora) == {"lora_r": 0}
    assert _unread_model_keys_dropped(lora | {"lora_r": 8}) == lora | {"lora_r": 8}


def test_the_pareto_plot_labels_a_method_without_a_teacher(tmp_path, monkeypatch):
    """Try-out 55, F4: `ce`'s 0 teacher bytes/token was drawn at x = 0.1 on the log axis, unmarked: read off the
    plot as 0.1 B/token."""
    from ekd.eval.compare import plots

    saved = []
    monkeypatch.setattr(plots, "_save_png", lambda fig, path: saved.append(fig) or Path(path))
    groups = [
        {"method": m, "metrics": {"eval/kl": {"mean": kl}, "bytes_per_token": {"mean": cost}}}
        for m, kl, cost in (("ce", 2.0, 0.0), ("kd", 0.5, 4096.0), ("sekd", 0.6, 30.0))
    ]
    plots.plot_pareto({"groups": groups}, "eval/kl", tmp_path / "p.png")
    (ax,) = saved[0].axes
    texts = {t.get_text(): t.xy for t in ax.texts}
    assert set(texts) == {"ce (0 B: no teacher)", "kd", "sekd"}
    assert texts["ce (0 B: no teacher)"][0] == pytest.approx(
        3.0
    )  # a decade left of the cheapest teacher (30)


def test_the_note_names_keys_both_runs_read_before_one_sided_ones():
    """Try-out 57, F2: beside `model.lora_r=4 (vs 0)` the note listed five lora keys '(vs None)': read by the LoRA
    run only. One-sided keys are named where nothing else differs."""
    from ekd.eval.compare.runs import _config_differences

    a = {"model": {"lora_r": 0}}
    b = {"model": {"lora_r": 4, "lora_alpha": 16.0, "lora_dropout": 0.0}}
    assert _config_differences(a, b) == ["model.lora_r=4 (vs 0)"]
    assert _config_differences({"train": {}}, {"train": {"new_key": 1}}) == ["train.new_key=1 (vs None)"]


def test_a_teacher_whose_figures_are_nan_is_not_said_to_be_switched_off(tmp_path):
    """Try-out 116, F4: a teacher whose logits are not finite has NaN (null) figures; compare said the runs had
    `eval.teacher_metrics=false` and that `ekd eval RUN eval.teacher_metrics=true` adds them — it did nothing."""
    runs = [_fake_run(tmp_path, f"ce{s}", "ce", s, 10.0 + s, 0.5) for s in (0, 1)]
    for d in runs:
        record = json.loads((d / "eval.json").read_text())
        record["eval/teacher"] = {"tokens": 100, "loss": None, "ppl": None, "acc": None, "ece": None}
        (d / "eval.json").write_text(json.dumps(record))
    compare_runs(runs, tmp_path / "out", plots=False)
    text = (tmp_path / "out" / "compare.md").read_text()
    assert "teacher_metrics" not in text, text
    assert (
        "no eval-set figures in these runs (they are NaN: the teacher's logits are not finite (NaN or +inf)"
        in text
    ), text


def test_the_written_line_names_plots_only_when_some_were_drawn(tmp_path, capsys):
    """Try-out 116, F7: runs scored on a named set only (no `eval` split, which the plots read) drew no plot, and
    the line still said `(+ .csv, .json, plots/)`."""
    from ekd.cli import main

    runs = [_fake_run(tmp_path, f"kd{s}", "kd", s, 10.0 + s, 0.5) for s in (0, 1)]
    capsys.readouterr()  # (plots drawn: test_compare_three_real_runs)
    for d in runs:
        record = json.loads((d / "eval.json").read_text())
        (d / "eval.json").write_text(json.dumps({"held": record["eval"]}))
    assert main(["compare", *map(str, runs), "--out", str(tmp_path / "without")]) == 0
    assert not (tmp_path / "without" / "plots").exists()
    assert capsys.readouterr().out.rstrip().endswith("(+ .csv, .json)")


def test_a_student_whose_figures_are_nan_is_said(tmp_path):
    """Try-out 117, F3: a run whose student logits were not finite on a set showed '—' in its row and in every
    difference with it, without a word (a NaN teacher got its reason)."""
    runs = [_fake_run(tmp_path, "ce0", "ce", 0, 10.0, 0.5), _fake_run(tmp_path, "kd0", "kd", 0, 11.0, 0.5)]
    record = json.loads((runs[1] / "eval.json").read_text())
    record["eval"] = {**record["eval"], "loss": None, "ppl": None, "acc": None, "ece": None, "kl": None}
    (runs[1] / "eval.json").write_text(json.dumps(record))
    s = compare_runs(runs, tmp_path / "out", plots=False)
    assert s["non_finite"] == ["`kd` seed 0 on `eval`"], s["non_finite"]
    text = (tmp_path / "out" / "compare.md").read_text()
    assert "NaN student figures (`kd` seed 0 on `eval`): its logits are not finite (NaN or +inf)" in text, (
        text
    )
    assert compare_runs(runs[:1], tmp_path / "one", plots=False)["non_finite"] == []


def test_a_starting_student_whose_figures_are_nan_is_said(tmp_path):
    """Try-out 117, F3's rest: a starting student whose figures on a set are NaN (eval.json's ``student_init``,
    null) was left out of the ``(student init)`` row without a word."""
    from ekd.eval.eval_json import STUDENT_INIT_KEY

    runs = [_fake_run(tmp_path, f"kd{s}", "kd", s, 10.0 + s, 0.5) for s in (0, 1)]
    for seed, d in enumerate(runs):
        record = json.loads((d / "eval.json").read_text())
        start = {"loss": 3.0, "ppl": math.exp(3.0)} if seed == 0 else {"loss": None, "ppl": None}
        record["eval"] = {**record["eval"], STUDENT_INIT_KEY: start}
        (d / "eval.json").write_text(json.dumps(record))
    s = compare_runs(runs, tmp_path / "out", plots=False)
    assert s["non_finite"] == ["`kd` seed 1's starting student on `eval`"], s["non_finite"]
    text = (tmp_path / "out" / "compare.md").read_text()
    assert "NaN student figures (`kd` seed 1's starting student on `eval`)" in text, text
    assert "left out of the `(student init)` row" in text, text


def test_seeds_differing_only_in_what_they_evaluate_are_one_method(tmp_path):
    """Try-out 116, F6's rest: seeds differing in `eval.teacher` (or the downstream tasks' cache directory, which
    the README lists among the keys that keep seeds together) were two methods, `ce` and `ce#2`; no `eval.*` key
    changes what a run trains. A figure some seeds lack is the mean of the others, with its n."""
    runs = [_fake_run(tmp_path, f"kd{s}", "kd", s, 10.0 + s, 0.5 + s / 10) for s in (0, 1, 2)]
    for d, evaluation in ((runs[1], {"tasks_cache_dir": "elsewhere"}), (runs[2], {"teacher": False})):
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        (d / "config.yaml").write_text(yaml.safe_dump({**cfg, "eval": evaluation}))
    (runs[2] / "eval.json").write_text(json.dumps({"eval": {"ppl": 12.0, "acc": 0.1, "ece": 1.0}}))
    (g,) = compare_runs(runs, tmp_path / "out", plots=False)["groups"]
    assert g["method"] == "kd" and g["seeds"] == [0, 1, 2], g
    assert g["metrics"]["eval/kl"]["n"] == 2 and g["metrics"]["eval/kl"]["mean"] == pytest.approx(0.55)
    assert g["metrics"]["eval/ppl"]["n"] == 3


def test_teachers_are_told_apart_by_the_dtype_they_ran_in(tmp_path):
    """Try-out 119, F2: eval.json recorded `model.teacher_dtype` as set, so `auto` and `float32` on a CPU — one
    teacher, bit-identical KL — were two teachers (a seed's KL left out), and `auto` on a GPU (bfloat16) and on a
    CPU (float32) one. The record is the dtype the weights ran in; an older ekd's `auto` pairs with either."""
    runs = [_fake_run(tmp_path, f"kd{s}", "kd", s, 10.0 + s, 0.5 + s / 10) for s in (0, 1, 2)]

    def record(d: Path, dtype: str) -> None:
        saved = json.loads((d / "eval.json").read_text())
        saved["eval"]["teacher"] = {"model": "t", "revision": "", "weights": "sha256:ab", "dtype": dtype}
        (d / "eval.json").write_text(json.dumps(saved))

    for d, dtype in zip(runs, ("float32", "auto", "float32")):  # an older ekd's auto, no autocast recorded
        record(d, dtype)
    (g,) = compare_runs(runs, tmp_path / "unknown", plots=False)["groups"]
    assert g["metrics"]["eval/kl"]["n"] == 2, g["metrics"]["eval/kl"]  # auto of an unknown device: apart
    record(runs[2], "bfloat16")  # auto on a GPU
    (g,) = compare_runs(runs, tmp_path / "other", plots=False)["groups"]
    assert g["metrics"]["eval/kl"]["n"] == 1, g["metrics"]["eval/kl"]
    # review of session 34, R1: an older ekd's auto is read by the autocast its entry records (fp32: a CPU's
    # float32 teacher), never as a wildcard that put a float32 and a bfloat16 teacher in one mean
    saved = json.loads((runs[1] / "eval.json").read_text())
    saved["eval"]["scoring"] = {"precision": "fp32"}
    (runs[1] / "eval.json").write_text(json.dumps(saved))
    (g,) = compare_runs(runs, tmp_path / "resolved", plots=False)["groups"]
    assert g["metrics"]["eval/kl"]["n"] == 2 and g["metrics"]["eval/kl"]["mean"] == pytest.approx(0.55)


def test_the_starting_students_row_shows_their_task_scores(tmp_path):
    """Try-out 119, F5: the `(student init)` row showed '—' in every task column though each run's eval.json
    records the initial student's task results (`tasks.student_init`) and tag means."""
    runs = []
    for seed in (0, 1):
        run = _with_tasks(_fake_run(tmp_path, f"kd{seed}", "kd", seed, 10.0, 0.5), {"mc": (0.4, 20)})
        ev = json.loads((run / "eval.json").read_text())
        ev["tasks"]["student_init"] = {"mc": {"value": 0.25, "ece": 9.0, "n": 20}}
        ev["tasks"]["summary"]["student_init"] = {"mean": {"in_distribution": 0.25}, "mc_ece": {}}
        (run / "eval.json").write_text(json.dumps(ev))
        runs.append(run)
    (start,) = compare_runs(runs, tmp_path / "out", plots=False)["starts"]
    assert start["metrics"]["task:mc/score"] == 0.25 and start["metrics"]["task:mc/ece"] == 9.0, start
    assert start["metrics"]["tasks[in_distribution]/score"] == 0.25 and start["n"]["task:mc/score"] == 2
    assert "tasks[in_distribution]/ece" not in start["metrics"]  # none recorded: no NaN figure
    text = (tmp_path / "out" / "compare.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| (student init)"))
    assert "0.2500" in row, row


def test_a_way_note_names_no_generation_setting_a_task_does_not_read():
    """Try-out 120, F9: a tag's mean over a multiple-choice task alone (no generation setting in its way) beside one
    over it and a generation task was said to differ in `eval.tasks_max_new_tokens=None (vs 4)` and the chat
    template, which no run changed; only the tasks it is over differ."""
    from ekd.eval.compare.eval_sets import _task_difference

    both = {"limit": 0, "max_new_tokens": 4, "chat_template": "auto", "tasks": {"mc": 20, "gen": 6}}
    alone = {"limit": 0, "tasks": {"mc": 20}}
    assert _task_difference(both, alone) == "a mean over other tasks (mc vs mc, gen)"
    assert "eval.tasks_max_new_tokens=8 (vs 4)" in _task_difference(both, {**both, "max_new_tokens": 8})


def test_a_set_on_which_every_student_is_nan_keeps_its_column(tmp_path):
    """Try-out 120, F10: a set on which every seed's student is NaN lost its column in compare.md, and the
    teacher's finite figures on it with it (they were in compare.csv and .json only)."""
    runs = [_fake_run(tmp_path, f"kd{s}", "kd", s, 10.0, 0.5) for s in (0, 1)]
    for d in runs:
        record = json.loads((d / "eval.json").read_text())
        record["eval"] = {**record["eval"], "loss": None, "ppl": None, "acc": None, "ece": None, "kl": None}
        record["eval/teacher"] = {"loss": math.log(5.0), "ppl": 5.0, "acc": 0.5, "ece": 2.0}
        (d / "eval.json").write_text(json.dumps(record))
    compare_runs(runs, tmp_path / "out", plots=False)
    text = (tmp_path / "out" / "compare.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| method | seeds"))
    assert "eval ppl" in header, header
    teacher = next(line for line in text.splitlines() if line.startswith("| (teacher)"))
    assert "5.00" in teacher, teacher


def test_an_evaluation_only_teacher_makes_no_other_method(tmp_path):
    """Review of session 34, R2: a ce seed evaluated with a teacher recorded that teacher's dtype among its
    arithmetic and was another method (`ce#2`, "differs in model.teacher_dtype=None (vs 'auto')") than a seed
    evaluated without one."""
    runs = [_fake_run(tmp_path, f"ce{s}", "ce", s, 10.0 + s, 0.5) for s in (0, 1)]
    for d, segment in zip(runs, ({"autocast": "fp32", "teacher_dtype": "float32"}, {"autocast": "fp32"})):
        (d / "ekd-run.json").write_text(
            json.dumps({"format": "ekd-run", "state": "finished", "segments": [{"ranks": 1, **segment}]})
        )
    (g,) = compare_runs(runs, tmp_path / "out", plots=False)["groups"]
    assert g["seeds"] == [0, 1], g


def test_cache_runs_are_told_apart_by_what_computed_their_targets(tmp_path):
    """Try-out 120, F2 and review of session 34, R3: each seed's own RS cache (or a copy) is one method — cache
    runs are told by the teacher and arithmetic their cache pins (`cache_teacher`), not by the cache's path —, and
    a cache a bfloat16 teacher computed is another than a float32 one's, though both pin the same weights."""
    runs = []
    for seed, pinned in enumerate(
        ("sha256:ab|float32|fp32", "sha256:ab|float32|fp32", "sha256:ab|bfloat16|bf16")
    ):
        d = _fake_run(tmp_path, f"rs{seed}", "rskd", seed, 10.0 + seed, 0.5)
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        cfg["teacher"] = {"source": "cache", "cache_dir": str(tmp_path / f"cache{seed}")}
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
        (d / "ekd-run.json").write_text(
            json.dumps({"format": "ekd-run", "state": "finished", "cache_teacher": pinned})
        )
        runs.append(d)
    groups = compare_runs(runs, tmp_path / "out", plots=False)["groups"]
    assert [(g["method"], g["seeds"]) for g in groups] == [("rskd", [0, 1]), ("rskd#2", [2])], groups
    # try-out 122, F8: said as the arithmetic, not as an encoded model.teacher
    assert groups[1]["note"] == (
        "`rskd#2` differs from `rskd` in teacher.cache built with='a bfloat16 teacher under bf16 autocast' "
        "(vs 'a float32 teacher in fp32')"
    ), groups[1]["note"]


def test_a_run_without_arithmetic_records_is_said_to_switch_the_comparison_to_settings(tmp_path):
    """Review of session 34, R9: one run of an older ekd (no autocast in its segments) among runs that record it
    made every run compare train.precision and model.teacher_dtype as set — splitting `auto` and `fp32` seeds
    again — without a word."""
    runs = [_fake_run(tmp_path, f"kd{s}", "kd", s, 10.0 + s, 0.5) for s in (0, 1)]
    marker = {"format": "ekd-run", "state": "finished", "segments": [{"ranks": 1, "autocast": "fp32"}]}
    (runs[0] / "ekd-run.json").write_text(json.dumps(marker))
    compare_runs(runs, tmp_path / "out", plots=False)
    text = (tmp_path / "out" / "compare.md").read_text()
    assert (
        f"compared as set, not as they ran ('auto' is fp32 and a float32 teacher on a CPU): {runs[1]} records no"
        in text
    ), text
    (runs[1] / "ekd-run.json").write_text(json.dumps(marker))
    compare_runs(runs, tmp_path / "all", plots=False)
    assert "compared as set" not in (tmp_path / "all" / "compare.md").read_text()


def test_the_starting_students_kl_is_over_the_seeds_of_the_groups_teacher(tmp_path):
    """Try-out 122, F3: the `(student init)` row averaged KL and agreement over a float32 and a bfloat16 teacher,
    the mean the method's own row leaves out; it keeps the seeds measured against the group's teacher."""
    runs = [_fake_run(tmp_path, f"kd{s}", "kd", s, 10.0, 0.5) for s in (0, 1, 2)]
    for seed, (d, dtype) in enumerate(zip(runs, ("float32", "float32", "bfloat16"))):
        saved = json.loads((d / "eval.json").read_text())
        saved["eval"]["teacher"] = {"model": "t", "revision": "", "weights": "sha256:ab", "dtype": dtype}
        saved["eval"]["student_init"] = {"loss": math.log(20.0), "ppl": 20.0, "kl": 1.0 + seed}
        (d / "eval.json").write_text(json.dumps(saved))
    (start,) = compare_runs(runs, tmp_path / "out", plots=False)["starts"]
    assert start["n"]["eval/kl"] == 2 and start["metrics"]["eval/kl"] == pytest.approx(1.5), start
    assert start["n"]["eval/ppl"] == 3


def test_an_older_run_is_read_by_the_autocast_its_eval_sets_record(tmp_path):
    """Try-out 122, F4: one run of an older ekd (no arithmetic in its segments) made every run compare
    train.precision as set — an `auto` seed and an `fp32` one of today's, one arithmetic, became `kd` and `kd#2`.
    An older run reads as the autocast its eval sets record (its evaluation ran in the training's)."""
    runs = [_fake_run(tmp_path, f"kd{s}", "kd", s, 10.0 + s, 0.5) for s in (0, 1)]
    cfg = yaml.safe_load((runs[0] / "config.yaml").read_text())
    (runs[0] / "config.yaml").write_text(
        yaml.safe_dump({**cfg, "train": {**cfg["train"], "precision": "fp32"}})
    )
    marker = {"format": "ekd-run", "state": "finished", "segments": [{"ranks": 1, "autocast": "fp32"}]}
    (runs[0] / "ekd-run.json").write_text(json.dumps(marker))
    saved = json.loads((runs[1] / "eval.json").read_text())  # an older ekd's: its autocast in its eval entry
    saved["eval"]["scoring"] = {"precision": "fp32"}
    (runs[1] / "eval.json").write_text(json.dumps(saved))
    summary = compare_runs(runs, tmp_path / "out", plots=False)
    assert [(g["method"], g["seeds"]) for g in summary["groups"]] == [("kd", [0, 1])], summary["groups"]
    assert summary["arithmetic_as_set"] == []


def test_a_split_by_an_unrecorded_group_says_so_and_the_way_out():
    """Try-out 122, F5: a multiple-choice task of an older ekd (its run scored a generation task too, so its way
    keeps the chat template) beside today's was "scored 2 ways … (the same settings)"."""
    from ekd.eval.compare.eval_sets import _task_difference

    old = {"limit": 0, "chat_template": "auto", "documents": 20}
    new = {"limit": 0, "documents": 20}
    said = _task_difference(old, new, ["runs/kd-old"])
    assert said == (
        "scored by an ekd that did not record whether the task's group generates (its chat template may apply), "
        "alike otherwise: `ekd eval RUN --tasks …` records it, for RUN in runs/kd-old"
    ), said


def test_the_split_by_an_unrecorded_group_names_the_runs_to_evaluate_again(tmp_path):
    """Try-out 123, F8: the note said "`ekd eval` of that run" where two runs of an older ekd were split off, without
    their paths; it names the runs whose task results record no group (their ekd did not)."""
    from ekd.eval.compare.eval_sets import eval_set_columns

    def scored(run: Path, group: bool | None) -> Path:
        saved = json.loads((run / "eval.json").read_text())
        result = {"acc": 0.5, "n": 20, "output_type": "multiple_choice"}
        if group is not None:
            result["group_generates"] = group
        generated = {"exact_match": 0.1, "n": 5, "output_type": "generate_until"}
        saved["tasks"] = {
            "settings": {"limit": 0, "num_fewshot": 0, "max_new_tokens": 64, "chat_template": "auto"},
            "student": {"my_mc": result, "my_gen": generated},
        }
        (run / "eval.json").write_text(json.dumps(saved))
        return run

    new = [scored(_fake_run(tmp_path, f"n{s}", "kd", s, 10.0, 0.5), False) for s in (0, 1)]
    old = [scored(_fake_run(tmp_path, f"o{s}", "ce", s, 10.0, 0.5), None) for s in (0, 1)]
    columns = eval_set_columns(group_runs([read_run(r) for r in new + old]))
    (split,) = [c for c in columns if c["set"] == "task:my_mc" and c["differs"]]
    assert split["differs"].endswith(f"for RUN in {old[0]}, {old[1]}"), split


def test_a_tokenizer_at_another_path_with_the_same_encodings_is_one_method(tmp_path):
    """Try-out 123, F2: seeds whose tokenizer was a copy at another path (the teacher's directory on a node's disk)
    were two methods, though both record the same tokenizer_sha256; another tokenizer is still another method."""
    runs = []
    for seed, (path, sha) in enumerate((("/a/t", "c2" * 32), ("/b/t", "c2" * 32), ("/a/t", "d3" * 32))):
        d = _fake_run(tmp_path, f"kd{seed}", "kd", seed, 10.0 + seed, 0.5)
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        (d / "config.yaml").write_text(yaml.safe_dump({**cfg, "model": {"tokenizer": path}}))
        (d / "ekd-run.json").write_text(
            json.dumps({"format": "ekd-run", "state": "finished", "tokenizer_sha256": sha})
        )
        runs.append(d)
    groups = compare_runs(runs, tmp_path / "out", plots=False)["groups"]
    assert [(g["method"], g["seeds"]) for g in groups] == [("kd", [0, 1]), ("kd#2", [2])], groups


def test_an_older_run_re_evaluated_is_read_by_the_teacher_dtype_it_now_records(tmp_path):
    """Try-out 123, F3: an older CPU run under bf16 autocast (its `auto` teacher was float32) stayed another method
    than today's seeds after `ekd eval RUN` re-recorded its teacher as float32: the grouping read the setting."""
    runs = [_fake_run(tmp_path, f"kd{s}", "kd", s, 10.0 + s, 0.5) for s in (0, 1)]
    for d in runs:
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        (d / "config.yaml").write_text(
            yaml.safe_dump({**cfg, "train": {**cfg["train"], "precision": "bf16"}})
        )
    marker = {
        "format": "ekd-run",
        "state": "finished",
        "segments": [{"autocast": "bf16", "teacher_dtype": "float32"}],
    }
    (runs[0] / "ekd-run.json").write_text(json.dumps(marker))
    saved = json.loads(
        (runs[1] / "eval.json").read_text()
    )  # the older one, evaluated again by today's ekd eval
    saved["eval"]["scoring"] = {"precision": "bf16"}
    saved["eval"]["teacher"] = {"model": "t", "revision": "", "weights": None, "dtype": "float32"}
    (runs[1] / "eval.json").write_text(json.dumps(saved))
    groups = compare_runs(runs, tmp_path / "out", plots=False)["groups"]
    assert [(g["method"], g["seeds"]) for g in groups] == [("kd", [0, 1])], groups


def _marked(run: Path, **facts) -> Path:
    """``run`` with an ``ekd-run.json`` of a finished run recording ``facts``."""
    (run / "ekd-run.json").write_text(
        json.dumps({"format": "ekd-run", "version": 1, "state": "finished", **facts})
    )
    return run


def test_a_damaged_run_record_or_metrics_line_is_refused_not_read_as_absent(tmp_path, capsys, caplog):
    """Review 126, R1 and R3: a cut ekd-run.json was read as a run of an older ekd — every content check off, so
    two runs trained on different data were averaged as seeds of one method — and a damaged metrics.jsonl line
    anywhere was skipped (the KD fraction taken from the rest), a line holding a number a traceback. Both are read
    as `ekd distill` reads them: an absent file is an older run's, a damaged one one line; a torn last line alone
    is dropped with a warning."""
    import logging

    def on_data(
        run: Path, fingerprint: str
    ) -> Path:  # one path, its documents changed in place between seeds
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        (run / "config.yaml").write_text(yaml.safe_dump({**cfg, "data": {"source": "/scratch/text.jsonl"}}))
        return _marked(run, data_fingerprint=fingerprint * 32)

    a = on_data(_fake_run(tmp_path, "a", "kd", 0, 10.0, 0.5), "ab")
    b = on_data(_fake_run(tmp_path, "b", "kd", 1, 30.0, 0.7), "cd")
    out = ["--out", str(tmp_path / "o")]
    assert [g.label for g in group_runs([read_run(a), read_run(b)])] == ["kd", "kd#2"]
    text = (b / "ekd-run.json").read_text()
    (b / "ekd-run.json").write_text(text[:-3])
    assert main(["compare", str(a), str(b), *out]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        f"ekd: error: ekd compare: {b / 'ekd-run.json'} is not valid JSON (Unterminated string"
    ), err
    assert err.endswith("); fix it there, or restore it from a copy of the run, or leave the run out"), err
    assert "stub" not in err  # a stub over a finished run's record drops its figures (try-out 131, F5)
    (b / "ekd-run.json").write_text("\ufeff" + text)  # a byte-order mark an editor wrote: read past
    assert read_run(b).data_fingerprint == "cd" * 32
    # try-out 127, F3: a field of another type than ekd writes was a traceback, or a figure (true → 2 B/token)
    for field, value, said in [
        ("segments", "x", "its field 'segments' is a JSON string (\"x\"), not a list of objects"),
        (
            "tokenizer_tokens",
            True,
            "its field 'tokenizer_tokens' is a JSON boolean (true), not a whole number > 0",
        ),
        (
            "cache_bytes_per_token",
            -5,
            "its field 'cache_bytes_per_token' is a JSON number (-5), not a number ≥ 0",
        ),
        ("data_fingerprint", 5, "its field 'data_fingerprint' is a JSON number (5), not a sha256 text"),
    ]:
        (b / "ekd-run.json").write_text(json.dumps({**json.loads(text), field: value}))
        assert main(["compare", str(a), str(b), *out]) == 2
        err = capsys.readouterr().err.strip()
        assert (
            err
            == f"ekd: error: ekd compare: {b / 'ekd-run.json'} is corrupt: {said}; restore it, or leave the run out"
        )
    (b / "ekd-run.json").unlink()
    (b / "ekd-run.json").mkdir()  # try-out 127, F5: a directory in its place was read as no record
    assert main(["compare", str(a), str(b), *out]) == 2
    assert f"{b / 'ekd-run.json'} is not a file; put the run's record back" in capsys.readouterr().err
    (b / "ekd-run.json").rmdir()  # absent: a run of an older ekd, read by its paths
    assert read_run(b).data_fingerprint is None
    rows = (a / "metrics.jsonl").read_text().splitlines()
    for damaged in ("\x00\x00\x00", "7"):
        (a / "metrics.jsonl").write_text("\n".join([damaged, *rows]) + "\n")
        assert main(["compare", str(a), *out]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"ekd: error: ekd compare: {a / 'metrics.jsonl'} line 1 is not a JSON object; ")
        assert err.endswith(", or leave the run out") and "\n" not in err, err
    # try-out 127, F4: a value of another type was a traceback (a text where a count belongs)
    (a / "metrics.jsonl").write_text("\n".join([rows[0], '{"step": 2, "select/positions": "x"}']) + "\n")
    assert main(["compare", str(a), *out]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"ekd: error: ekd compare: {a / 'metrics.jsonl'} line 2: 'select/positions' is a JSON string (\"x\"), not a "
        "number: write it as a number, or delete that line, or leave the run out"
    ), err
    (a / "metrics.jsonl").unlink()
    (a / "metrics.jsonl").mkdir()  # try-out 127, F5: a directory in its place was read as no rows (0% KD)
    assert main(["compare", str(a), *out]) == 2
    assert f"{a / 'metrics.jsonl'} is not a file" in capsys.readouterr().err
    (a / "metrics.jsonl").rmdir()
    (a / "metrics.jsonl").write_text("\n".join(rows) + '\n{"step": 3, "sel')  # torn by an interrupted write
    with caplog.at_level(logging.WARNING, logger="ekd"):
        assert read_run(a).kd_fraction == pytest.approx(40 / 100)  # both rows: (30 + 10) / (60 + 40)
    assert "dropping a torn last line" in caplog.text


def test_a_cache_runs_bytes_per_token_is_its_caches_even_once_the_cache_is_gone(tmp_path, caplog):
    """Review 126, R2: a run trained from a cache deleted or moved since was sized by the online formula (23.9 for
    a cache measured at 38.2 B/token) without a word, and claim 6 left a group without a figure out of the
    frontier silently. A run records its cache's figure; an older run whose cache is gone has none, said; claim 6
    is inconclusive where such a group reaches a lower KL."""
    import logging

    from ekd.eval.claims import check_claims

    def cached(name, seed, kl, **facts):
        run = _fake_run(tmp_path, name, "rskd", seed, 10.0, kl)
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        cfg["teacher"] = {"source": "cache", "cache_dir": str(tmp_path / "gone")}
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
        return _marked(run, tokenizer_tokens=320, **facts)

    recorded = cached("rec", 0, 0.5, cache_bytes_per_token=38.18)
    assert read_run(recorded).bytes_per_token == 38.18
    older = cached("old", 1, 0.5)
    with caplog.at_level(logging.WARNING, logger="ekd"):
        assert math.isnan(read_run(older).bytes_per_token)
    assert (
        f"no bytes/token for {older}: the run records no figure of its teacher cache (an older ekd's run), and the cache at {tmp_path / 'gone'} cannot tell it"
        in caplog.text
    )
    ekd_run = _marked(_fake_run(tmp_path, "ek", "ekd", 0, 10.0, 0.6), tokenizer_tokens=320)
    ekd_cfg = yaml.safe_load((ekd_run / "config.yaml").read_text())
    ekd_cfg["teacher"] = {"source": "online"}
    (ekd_run / "config.yaml").write_text(yaml.safe_dump(ekd_cfg))
    claims = {
        c.claim.split(":")[0]: c for c in check_claims(group_runs([read_run(ekd_run), read_run(older)]))
    }
    assert claims["EKD"].verdict == "inconclusive (1 seed)", claims["EKD"]
    assert "rskd reaches a lower KL at an unknown bytes/token" in claims["EKD"].reason
    claims = {
        c.claim.split(":")[0]: c for c in check_claims(group_runs([read_run(ekd_run), read_run(recorded)]))
    }
    assert claims["EKD"].verdict.startswith("reproduced"), claims["EKD"]  # ekd's 0.6 × ~9.9 B < rskd's 38.2 B


def test_the_kd_share_is_the_runs_own_count_not_one_rebuilt_from_logged_rows(tmp_path, caplog):
    """Review 128, R1: compare rebuilt a run's KD share from metrics.jsonl's logged rows — a sample of the steps under
    log.every > 1, without the steps that selected nothing (21.3% for a run that gave 2.6% of its positions KD), 0%
    for a run copied without metrics.jsonl (a dense kd run at 0 B/token, on the Pareto frontier for free). A run
    records its exact counts when it finishes; an older run's estimate is said; one with no selection is NaN."""
    import logging

    from ekd.config import load_config
    from ekd.train.trainer import train

    corpus = write_corpus(tmp_path / "corpus")
    args = tiny_overrides(tmp_path, corpus, "se", **{"train.max_steps": 5, "log.every": 3})
    result = train(load_config(None, [*args, "method=sekd"]))
    run = tmp_path / "runs" / "se"
    marker = json.loads((run / "ekd-run.json").read_text())
    assert marker["kd_positions"] / marker["valid_positions"] == pytest.approx(result.kd_fraction)
    assert read_run(run).kd_fraction == pytest.approx(result.kd_fraction)
    (run / "metrics.jsonl").unlink()  # copied without it: the record holds
    assert read_run(run).kd_fraction == pytest.approx(result.kd_fraction)
    older = _fake_run(tmp_path, "older", "sekd", 1, 10.0, 0.5)  # two logged rows, no record
    with caplog.at_level(logging.WARNING, logger="ekd"):
        assert read_run(older).kd_fraction == pytest.approx(0.4)
    assert f"the KD share of {older} (an older ekd's run, which records none) is estimated" in caplog.text
    (older / "metrics.jsonl").unlink()
    assert math.isnan(read_run(older).kd_fraction)
    assert read_run(_fake_run(tmp_path, "ce", "ce", 0, 10.0, 0.5)).kd_fraction == 0.0


def test_a_seed_whose_figures_are_not_finite_is_named_and_no_verdict_is_over_the_others(tmp_path):
    """Review 128, R2-R4: a seed that diverged (its student's logits not finite: every figure of the set NaN) or
    whose perplexity overflowed (exp of a finite loss of 1,000 nats, written as null) dropped out of its method's
    mean and out of the paired verdict ("better; n=2 of 3"), while the note said its row showed '—'; a replica whose
    figures were all NaN read "identical metrics". The cell names the seed, the verdict is `not finite (...)`, the
    claim inconclusive, the replica's difference said."""
    from ekd.eval.claims import check_claims
    from ekd.eval.compare.render import markdown
    from ekd.eval.compare.summary import summarize

    def diverged(run: Path, **figures) -> Path:
        saved = json.loads((run / "eval.json").read_text())
        saved["eval"] |= figures
        (run / "eval.json").write_text(json.dumps(saved))
        return run

    kd = [_fake_run(tmp_path, f"kd{s}", "kd", s, 10.0 + s, 0.5 + s / 10) for s in range(3)]
    sekd = [_fake_run(tmp_path, f"se{s}", "sekd", s, 9.0 + s, 0.4 + s / 10) for s in range(2)]
    sekd.append(
        diverged(_fake_run(tmp_path, "se2", "sekd", 2, 1.0, 0.1), loss=None, ppl=None, kl=None, acc=None)
    )
    groups = group_runs([read_run(r) for r in kd + sekd])
    summary = summarize(groups, ["kd"])
    se = next(g for g in summary["groups"] if g["method"] == "sekd")
    assert se["metrics"]["eval/ppl"]["not_finite"] == [2] and se["metrics"]["eval/ppl"]["n"] == 2
    assert se["vs"]["kd"]["eval/ppl"]["verdict"] == "not finite (`sekd` seed 2)"
    text = markdown(summary)
    assert "9.50 ± 0.71 (n=2; seed 2 not finite)" in text, text
    assert "(not finite (`sekd` seed 2); n=2 of 3)" in text and "(better" not in text, text
    claims = {c.claim.split(":")[0].split(" (")[0]: c for c in check_claims(groups)}
    assert claims["SE-KD"].verdict == "inconclusive (not finite (`sekd` seed 2))", claims["SE-KD"]
    # a perplexity that overflowed (loss finite, ppl +inf written as null) is not finite too
    overflow = diverged(_fake_run(tmp_path, "over", "kd", 3, 1.0, 0.5), loss=1000.0, ppl=None)
    assert group_runs([read_run(overflow)])[0].not_finite("eval/ppl") == [3]
    assert group_runs([read_run(overflow)])[0].not_finite("eval/loss") == []
    # a replica (a DDP twin, a rerun) whose figures are all NaN is no "identical metrics"
    twin = diverged(_fake_run(tmp_path, "twin", "kd", 0, 10.0, 0.5), loss=None, ppl=None, kl=None, acc=None)
    summary = summarize(group_runs([read_run(kd[0]), read_run(twin)]), [])
    (note,) = summary["replica_notes"]
    assert "identical metrics" not in note and " vs not finite (" in note, note
    assert any("replica" in said for said in summary["non_finite"]), summary["non_finite"]


def test_an_online_rs_runs_ids_drawn_are_its_own_count_not_one_rebuilt_from_logged_rows(tmp_path):
    """Try-out 129, F4: the distinct ids an online RS run drew per KD row (its teacher bytes per token) were averaged
    over metrics.jsonl's logged rows, so log.every alone changed a run's figure (26.20 vs 26.23) and made a replica
    difference. The run records them over every step when it finishes."""
    from ekd.eval.compare import measured_rs_unique_ids, metric_rows

    corpus = write_corpus(tmp_path / "corpus")
    runs = {}
    for every in (1, 3):
        args = tiny_overrides(tmp_path, corpus, f"rs{every}", **{"train.max_steps": 5, "log.every": every})
        assert main(["-q", "distill", *args, "method=rskd"]) == 0
        runs[every] = tmp_path / "runs" / f"rs{every}"
    recorded = {k: json.loads((r / "ekd-run.json").read_text())["rs_unique_ids"] for k, r in runs.items()}
    assert recorded[1] == pytest.approx(measured_rs_unique_ids(metric_rows(runs[1])), rel=1e-12)
    assert recorded[3] == pytest.approx(recorded[1], rel=1e-12)
    assert read_run(runs[3]).bytes_per_token == pytest.approx(read_run(runs[1]).bytes_per_token, rel=1e-12)


def test_the_frontier_claim_and_the_replica_note_count_what_is_not_known(tmp_path):
    """Try-out 129, F1/F2: the EKD frontier claim said *reproduced* over the mean KL of two seeds when the third had
    diverged; a replica whose KD share or bytes/token is unknown (an older ekd's run) beside one that records it read
    "identical metrics"."""
    from ekd.eval.claims import check_claims
    from ekd.eval.compare.summary import summarize

    def run(name, preset, seed, mean_kl, **figures):
        r = _marked(_fake_run(tmp_path, name, preset, seed, 10.0, mean_kl), tokenizer_tokens=320)
        if figures:
            saved = json.loads((r / "eval.json").read_text())
            saved["eval"] |= figures
            (r / "eval.json").write_text(json.dumps(saved))
        return r

    ekd = [
        run("e0", "ekd", 0, 0.1),
        run("e1", "ekd", 1, 0.1, loss=None, ppl=None, kl=None),
        run("e2", "ekd", 2, 0.1),
    ]
    kd = [run(f"k{s}", "kd", s, 0.5) for s in range(3)]
    claims = {c.claim.split(":")[0]: c for c in check_claims(group_runs([read_run(r) for r in ekd + kd]))}
    assert claims["EKD"].verdict == "inconclusive (not finite (`ekd` seed 1))", claims["EKD"]
    counted = _marked(_fake_run(tmp_path, "new", "kd", 5, 10.0, 0.5), kd_positions=10.0, valid_positions=40.0)
    older = _fake_run(tmp_path, "old", "kd", 5, 10.0, 0.5)
    (older / "metrics.jsonl").unlink()  # an older run whose KD share is unknown
    (note,) = summarize(group_runs([read_run(counted), read_run(older)]), [])["replica_notes"]
    assert "identical metrics" not in note and "largest difference kd_pct 25 vs unknown" in note, note


def test_hand_edited_records_in_forms_ekd_does_not_write_are_read_and_huge_figures_stay_short(tmp_path):
    """Try-out 129, F6/F7/F9/F10: a count written 78.0 was refused as "not a whole number"; a byte-order mark before a
    metrics.jsonl's first row made it "line 1 is not a JSON object; delete that line" (the step-0 row); compare.csv
    did not say which seeds were not finite; a perplexity of 7.5e+251 took 250 characters in compare.md."""
    from ekd.eval.compare.render import markdown, to_csv
    from ekd.eval.compare.summary import summarize

    a = _marked(_fake_run(tmp_path, "a", "kd", 0, 7.5e251, 0.5), train_blocks=78.0)
    (a / "metrics.jsonl").write_text("\ufeff" + (a / "metrics.jsonl").read_text())
    assert read_run(a).kd_fraction == pytest.approx(0.4)
    b = _fake_run(tmp_path, "b", "kd", 1, 10.0, 0.5)
    saved = json.loads((b / "eval.json").read_text())
    saved["eval"] |= {"loss": None, "ppl": None}
    (b / "eval.json").write_text(json.dumps(saved))
    summary = summarize(group_runs([read_run(a), read_run(b)]), [])
    rows = list(csv.DictReader(to_csv(summary).splitlines()))
    assert next(r for r in rows if r["metric"] == "eval/ppl")["not_finite"] == "1"
    assert "7.5e+251 (n=1; seed 1 not finite)" in markdown(summary)


def test_a_run_whose_overwrite_was_killed_names_the_run_kept_aside(tmp_path, capsys):
    """Try-out 130, F5: `ekd compare` of a run whose --overwrite was SIGKILLed said it "has not finished (stopped at
    step 0 of 400)" and offered to start the new config, never the finished run kept in `.<name>.replaced`, which
    `ekd eval RUN` puts back."""
    done = _fake_run(tmp_path, "r", "kd", 0, 10.0, 0.5)
    aside = tmp_path / ".r.replaced"
    shutil.copytree(done, aside)
    (done / "eval.json").unlink()
    (done / "ekd-run.json").write_text(json.dumps({"format": "ekd-run", "version": 1, "state": "starting"}))
    assert main(["compare", str(done), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"the run it replaced is kept in {aside}: `ekd eval {done}` puts it back" in err, err


def test_records_read_as_ekd_writes_them_and_as_a_later_ekd_may(tmp_path, monkeypatch):
    """Review 132: a run recording 0 valid positions was read as an older ekd's (R7); a count written 78.0 is read
    as the int ekd writes (R18); a metrics.jsonl key this ekd does not read may hold a text (a later ekd's: R14);
    without huggingface_hub's StrictDataclassError (an older install) the boundary still reads configs (R1)."""
    import huggingface_hub.errors

    from ekd.hub import strict_field_error
    from ekd.train.run_dir import read_marker

    run = _marked(
        _fake_run(tmp_path, "z", "kd", 0, 10.0, 0.5), kd_positions=0.0, valid_positions=0.0, ranks=2.0
    )
    assert math.isnan(read_run(run).kd_fraction)
    assert read_marker(run)["ranks"] == 2 and isinstance(read_marker(run)["ranks"], int)
    with (run / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 3, "later/note": "a text a later ekd logs"}) + "\n")
    assert read_run(run).eval  # read past
    monkeypatch.delattr(huggingface_hub.errors, "StrictDataclassError")
    assert strict_field_error() == ()


def test_a_kl_not_finite_beside_a_finite_loss_and_a_cost_some_seeds_lack_are_said(tmp_path):
    """Review 132, R8: a KL or agreement that is NaN while the student's loss is finite (a teacher whose logits were
    not finite) left the mean the old way, unnamed; a group with one seed's bytes/token unknown (its cache gone) was
    priced by the others and placed on the frontier."""
    from ekd.eval.claims import check_claims

    kd = _marked(_fake_run(tmp_path, "k0", "kd", 0, 10.0, 0.5), tokenizer_tokens=320)
    saved = json.loads((kd / "eval.json").read_text())
    saved["eval"] |= {"kl": None, "agree": None}
    (kd / "eval.json").write_text(json.dumps(saved))
    assert group_runs([read_run(kd)])[0].not_finite("eval/kl") == [0]
    ekd = [_marked(_fake_run(tmp_path, f"e{s}", "ekd", s, 10.0, 0.1), tokenizer_tokens=320) for s in range(2)]
    priced = [
        _marked(_fake_run(tmp_path, f"r{s}", "rkl", s, 10.0, 0.05), tokenizer_tokens=320) for s in range(2)
    ]
    (priced[1] / "ekd-run.json").write_text(
        json.dumps({"format": "ekd-run", "version": 1, "state": "finished"})
    )
    (priced[1] / "metrics.jsonl").unlink()  # this seed's cost unknown: the method's too
    claims = {c.claim.split(":")[0]: c for c in check_claims(group_runs([read_run(r) for r in ekd + priced]))}
    assert claims["EKD"].verdict == "inconclusive", claims["EKD"]
    assert "rkl reaches a lower KL at an unknown bytes/token" in claims["EKD"].reason


def test_an_online_run_and_its_cache_twin_differ_by_the_teacher_source_alone(tmp_path):
    """Try-out 133, F1 (t119 F4): an online run and a run from a cache of the same teacher were said to differ in
    model.teacher='weights ea56…' (vs 'weights 2d24…') and model.teacher_dtype — one teacher pinned by two
    fingerprints —, which sent a user to rebuild a sound cache; they differ by teacher.source, said alone."""

    def rskd(name, seed, source, **facts):
        run = _fake_run(tmp_path, name, "rskd", seed, 10.0, 0.5)
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        cfg["model"] = {"teacher": "/models/t"}
        cfg["teacher"] = {
            "source": source,
            **({"cache_dir": str(tmp_path / "c")} if source == "cache" else {}),
        }
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
        return _marked(run, tokenizer_tokens=320, **facts)

    online = rskd("on", 0, "online", teacher_weights="sha256:" + "2d" * 32)
    cached = rskd("ca", 0, "cache", cache_teacher="safetensors-sha256:" + "ea" * 32 + "|float32|fp32")
    groups = group_runs([read_run(online), read_run(cached)])
    assert [g.label for g in groups] == ["rskd", "rskd#2"]
    assert groups[1].note == "`rskd#2` differs from `rskd` in teacher.source='cache' (vs 'online')", groups[
        1
    ].note
    # try-out 133, F2: one column, two measures (the cache's bytes on disk; the online targets' fixed-width size)
    from ekd.eval.compare.render import markdown
    from ekd.eval.compare.summary import summarize

    assert "teacher B/token is two measures here" in markdown(summarize(groups, []))
    assert "two measures" not in markdown(summarize(group_runs([read_run(online)]), []))


def test_a_difference_alike_on_every_seed_is_said_so(tmp_path):
    """Review 128, S4: one difference on every seed gives an interval of width 0, so any mean read *better* with
    nothing beside it — more often a part the seed does not reach (an evaluation of shared weights) than a
    difference resolved. The cell says it."""
    runs = [_fake_run(tmp_path, f"kd{s}", "kd", s, 10.0 + s, 0.5) for s in range(3)]
    runs += [_fake_run(tmp_path, f"se{s}", "sekd", s, 9.0 + s, 0.5 + 0.01 * s) for s in range(3)]
    compare_runs(runs, tmp_path / "out", baselines=("kd",), plots=False)
    md = (tmp_path / "out" / "compare.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| sekd |") and "better" in line)
    assert "-1.00 ± 0.00 (better; the same on every seed)" in row, row
    assert "the same on every seed" not in row.split("better; the same on every seed)", 1)[1], (
        row
    )  # KL: spread


def test_the_kl_by_entropy_plot_names_a_seed_not_finite_and_draws_no_mean_over_the_others(tmp_path):
    """Review 128, S3: a bucket's bar was the mean over the seeds whose KL there is finite — a diverged seed left
    out under the method's name, as the cells no longer do. An empty bucket (no tokens) is no divergence."""
    from ekd.eval.compare import kl_by_entropy

    runs = [_fake_run(tmp_path, f"kd{s}", "kd", s, 10.0, 0.5) for s in range(3)]
    for s, run in enumerate(runs):
        kl_h0 = None if s == 2 else 0.1 * (s + 1)  # seed 2 diverged: null, as eval.json writes NaN
        _edit(run, eval_sets={"eval": {"kl@H0": kl_h0, "tokens@H0": 40, "kl@H1": 0.5, "tokens@H1": 60}})
        _edit(run, eval_sets={"eval": {"kl@H2": None, "tokens@H2": 0}})  # an empty bucket in every run
    series = kl_by_entropy(group_runs([read_run(r) for r in runs]), "eval")
    assert list(series) == ["kd (seed 2 not finite)"]
    bars = series["kd (seed 2 not finite)"]
    assert math.isnan(bars[0]) and bars[1] == pytest.approx(0.5) and 2 not in bars


def test_a_run_read_from_metrics_jsonl_keeps_a_figure_that_was_not_finite(tmp_path, caplog):
    """Review 128, S5: without eval.json, compare reads the last evaluation of metrics.jsonl, where a figure not
    finite is null — it was left out, the seed read as one that did not score the set (the mean over the others
    under the method's name, the diverged student named nowhere)."""
    runs = [_fake_run(tmp_path, f"kd{s}", "kd", s, 10.0 + s, 0.5) for s in range(3)]
    (runs[2] / "eval.json").unlink()
    row = {"step": 2, "eval/eval/loss": None, "eval/eval/ppl": None, "eval/eval/kl": None}
    with (runs[2] / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    s = compare_runs(runs, tmp_path / "out", baselines=("kd",), plots=False)
    ppl = s["groups"][0]["metrics"]["eval/ppl"]
    assert ppl["not_finite"] == [2], ppl
    assert "seed 2 not finite" in (tmp_path / "out" / "compare.md").read_text()


def test_a_finished_run_without_an_eval_set_is_told_how_to_score_one(tmp_path, capsys):
    """Try-out 135, F2: a run trained without an eval set (data.eval_fraction=0) was called unfinished and sent to
    `ekd eval RUN`, which refuses a run without an eval set; its metrics.jsonl ended in an empty {"step": N} row."""
    from ekd.train.metrics_log import MetricsLog

    a = _fake_run(tmp_path, "a", "kd", 0, 10.0, 0.5)
    b = _fake_run(tmp_path, "b", "kd", 1, 11.0, 0.5)
    (b / "eval.json").write_text("{}")
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{b} has no evaluated set (it was trained without one" in err, err
    assert "'data.eval_sources={name: FILE}'" in err and "unfinished" not in err, err
    log = MetricsLog(b, tensorboard=False, resume_step=2)
    log.write(2, {})  # the end of training's evaluation of no set: no row
    log.close()
    assert all(json.loads(line) != {"step": 2} for line in (b / "metrics.jsonl").read_text().splitlines())


def test_a_figure_one_replica_alone_measured_is_shown_in_the_note(tmp_path, capsys):
    """Try-out 127, F11: the counted run evaluated without its teacher (no KL) and its replica with it: the group's
    KL was '—' and the note read "identical metrics", the replica's KL shown nowhere."""
    counted = _fake_run(tmp_path, "counted", "kd", 1, 10.0, 0.5)
    ev = json.loads((counted / "eval.json").read_text())
    del ev["eval"]["kl"], ev["eval"]["agree"]
    (counted / "eval.json").write_text(json.dumps(ev))
    replica = _fake_run(tmp_path, "replica", "kd", 1, 10.0, 0.018)
    out = tmp_path / "o"
    assert main(["compare", str(counted), str(replica), "--out", str(out)]) == 0
    md = (out / "compare.md").read_text()
    assert f"measured by one run alone, not compared: eval/kl 0.018 ({replica})" in md, md
    (rec,) = json.loads((out / "compare.json").read_text())["replicas"]
    assert {"key": "eval/kl", "run": str(replica), "value": 0.018} in rec["measured_alone"]


def test_a_teachers_pin_moved_to_its_own_key_is_the_same_config(tmp_path):
    """Review 161, R3: seeds pinning a hub teacher by model.revision=v1 and by model.teacher_revision=v1 read it at
    one revision: one group, not `kd#2` "differing in model.revision"; another teacher revision is another config,
    and with a hub student model.revision is the student's."""
    from ekd.eval.compare import group_runs, read_run

    teacher = {"teacher": "org/t", "student": "preset:llama-micro"}
    pins = [{"revision": "v1"}, {"revision": "", "teacher_revision": "v1"}, {"teacher_revision": "v2"}]
    dirs = [_fake_run(tmp_path, f"kd{i}", "kd", i, 10.0 + i, 0.5) for i in range(len(pins))]
    for d, pin in zip(dirs, pins):
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        (d / "config.yaml").write_text(yaml.safe_dump({**cfg, "model": {**teacher, **pin}}))
    groups = group_runs([read_run(d) for d in dirs])
    assert [len(g.runs) for g in groups] == [2, 1], [g.note for g in groups]
    assert "teacher_revision='v2' (vs 'v1')" in groups[1].note, groups[1].note


def test_pins_spelled_otherwise_for_models_identified_by_their_weights_are_one_config(tmp_path):
    """Try-out 160, F1: a hub student pinned as main's commit and as '' (and a teacher as 'v1' and as its commit),
    every run recording the same weights of both, were `kd` and `kd#2`: their weights tell them apart, not the
    spelling of the pins."""
    from ekd.eval.compare import group_runs, read_run

    models = {"teacher": "org/t", "student": "org/s"}
    pins = [{"revision": "", "teacher_revision": "v1"}, {"revision": "a" * 40, "teacher_revision": "b" * 40}]
    dirs = [_fake_run(tmp_path, f"kd{i}", "kd", i, 10.0 + i, 0.5) for i in range(2)]
    for d, pin in zip(dirs, pins):
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        (d / "config.yaml").write_text(yaml.safe_dump({**cfg, "model": {**models, **pin}}))
        marker = {
            "format": "ekd-run",
            "version": 1,
            "state": "finished",
            "teacher_weights": "safetensors-sha256:" + "1" * 64,
            "student_weights": "safetensors-sha256:" + "2" * 64,
        }
        (d / "ekd-run.json").write_text(json.dumps(marker))
    groups = group_runs([read_run(d) for d in dirs])
    assert [len(g.runs) for g in groups] == [2], [g.note for g in groups]


def test_cache_runs_evaluating_their_teacher_in_other_dtypes_or_pins_are_one_config(tmp_path):
    """Try-out 160, F1/F2: seeds trained from one cache (its teacher and arithmetic pinned by `cache_teacher`) whose
    model.teacher_dtype or teacher pin differ — what evaluates them, not what they train from — were `rskd` and
    `rskd#2`; their eval figures are paired by the teacher each entry records."""
    from ekd.eval.compare import group_runs, read_run

    pinned = f"org/t@{'b' * 40}|float32|fp32"
    settings = [
        {"teacher_dtype": "auto", "teacher_revision": "dev"},
        {"teacher_dtype": "bfloat16", "teacher_revision": "b" * 40},
    ]
    dirs = [_fake_run(tmp_path, f"rs{i}", "rskd", i, 10.0 + i, 0.5) for i in range(2)]
    for d, model in zip(dirs, settings):
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        cfg |= {
            "model": {"teacher": "org/t", **model},
            "teacher": {"source": "cache", "cache_dir": str(tmp_path / "c")},
        }
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
        marker = {"format": "ekd-run", "version": 1, "state": "finished", "cache_teacher": pinned}
        (d / "ekd-run.json").write_text(json.dumps(marker))
    groups = group_runs([read_run(d) for d in dirs])
    assert [len(g.runs) for g in groups] == [2], [g.note for g in groups]


def test_the_other_teacher_note_counts_every_seed():
    """Try-out 160, F11: a group of 2 seeds, one against another teacher, the other not finite, said "(n=0 of 1)"."""
    from ekd.eval.compare.summary import _other_teacher_notes

    cell = {"mean": float("nan"), "std": 0.0, "n": 0, "other_teacher": [1], "not_finite": [0]}
    notes = _other_teacher_notes([{"method": "kd", "metrics": {"eval/kl": cell}}])
    assert notes == [
        "`kd`: seed 1 measured against another teacher on `eval`, left out of their KL and agreement "
        "(n=0 of 2, 1 not finite)"
    ], notes


def test_cache_runs_of_one_hub_commit_recorded_two_ways_are_one_config(tmp_path):
    """Try-out 164, F2: two caches of org/t at one commit, built unpinned (its loaded config's `commit:<sha>`) and
    pinned (`<sha>`), trained identical students and were `rskd` and `rskd#2`."""
    from ekd.eval.compare import group_runs, read_run

    commit = "b" * 40
    dirs = [_fake_run(tmp_path, f"rs{i}", "rskd", i, 10.0 + i, 0.5) for i in range(2)]
    for d, pin in zip(dirs, (f"commit:{commit}", commit)):
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        cfg |= {"model": {"teacher": "org/t"}, "teacher": {"source": "cache", "cache_dir": str(d / "c")}}
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
        marker = {
            "format": "ekd-run",
            "version": 1,
            "state": "finished",
            "cache_teacher": f"org/t@{pin}|float32|fp32",
        }
        (d / "ekd-run.json").write_text(json.dumps(marker))
    groups = group_runs([read_run(d) for d in dirs])
    assert [len(g.runs) for g in groups] == [2], [g.note for g in groups]
