"""docs/metrics.md lists every key ``ekd distill`` writes to metrics.jsonl, and no key it no longer writes.

Tiny real runs (2 steps, evaluation every step) of methods that together log every documented key: Full KD
with CE, SE-KD with online RS targets, EKD, AdaKD (LATF + IDTS), EGAD (curriculum, entropy-mapped τ, feature
branch), both bandits, GLS, a τ schedule, CE only, and a padded student and teacher head with a second named
eval set. A key is documented by a table row of the doc whose first cell is that key in backticks; a row may
name a family with the placeholders of ``PLACEHOLDERS`` (``eval/<set>/kl@H<b>``), matched whole and strictly.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml

from ekd.cli import main
from tiny import tiny_overrides, write_corpus

DOC = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
PLACEHOLDERS = {
    "<set>": r"[A-Za-z0-9_.-]+",  # an eval set name (a word: ekd.config.sections._eval_set_name)
    "<b>": r"[0-9]+",  # a teacher-entropy bucket index
    "<budget>": r"[0-9]+(?:\.[0-9]+)?(?:e-?[0-9]+)?",  # an EXP3 budget printed with :g
}
ROW = re.compile(r"^\| `([^`]+)` \|")
# documented keys that none of the runs below logs (with the setting that would): empty — keep it short
NOT_EXERCISED: set[str] = set()

RUNS = {
    "kd": ["method=kd", "method.ce_weight=0.5"],
    "sekd_rs": ["method=sekd", "method.target=rs"],
    "ekd": ["method=ekd"],
    "adakd": ["method=adakd"],
    "egad": ["method=egad"],
    "linucb": ["method=bandit"],
    "exp3": ["method=bandit", "method.bandit_kind=exp3", "method.scorer=student_entropy"],
    "gls": ["method=gls"],
    "schedule": ["method=kd", "method.temperature=schedule", "method.temperature_end=2.0"],
    "ce": ["method=ce"],
    # every micro-batch student-generated: at most 8 new tokens after an 8-token prompt
    "gkd": [
        "method=gkd",
        "method.student_data_fraction=1.0",
        "method.prompt_tokens=8",
        "method.max_new_tokens=8",
    ],
}


def documented_keys(text: str) -> list[str]:
    """The first-cell keys of the doc's table rows (``step`` and ``train/``, ``select/``, ``eval/`` keys)."""
    keys = [m.group(1) for line in text.splitlines() if (m := ROW.match(line))]
    return [k for k in keys if k == "step" or k.startswith(("train/", "select/", "eval/"))]


def key_pattern(key: str) -> re.Pattern:
    """The regex of a documented key: literal text, each placeholder its ``PLACEHOLDERS`` pattern."""
    parts = []
    for part in re.split(r"(<[^>]*>)", key):
        if part.startswith("<"):
            if part not in PLACEHOLDERS:
                raise ValueError(
                    f"docs/metrics.md: {key} uses {part}; placeholders are {sorted(PLACEHOLDERS)}"
                )
            parts.append(PLACEHOLDERS[part])
        else:
            parts.append(re.escape(part))
    return re.compile("".join(parts))


def undocumented(keys: set[str], text: str) -> set[str]:
    """The keys of ``keys`` that no documented key matches whole."""
    patterns = [key_pattern(k) for k in documented_keys(text)]
    return {k for k in keys if not any(p.fullmatch(k) for p in patterns)}


def test_the_check_is_strict():
    """A key whose row is removed is reported (as when someone logs a new key without documenting it), and a
    placeholder matches one name, not a path."""
    text = DOC.read_text()
    without = "\n".join(line for line in text.splitlines() if not line.startswith("| `select/phase` |"))
    logged = {"select/phase", "train/loss", "eval/shift/kl@H3", "select/bandit_p_k0.25"}
    assert undocumented(logged, text) == set()
    assert undocumented(logged, without) == {"select/phase"}
    assert undocumented({"eval/a/b/kl", "eval/x/kl@Hx", "select/bandit_p_kx", "train/kd_extra"}, text) == {
        "eval/a/b/kl",
        "eval/x/kl@Hx",
        "select/bandit_p_kx",
        "train/kd_extra",
    }
    with pytest.raises(ValueError, match="placeholders are"):
        key_pattern("eval/<name>/kl")


@pytest.fixture(scope="module")
def logged(tmp_path_factory) -> dict[str, tuple[list[dict], dict]]:
    """Run name → (the rows of its metrics.jsonl, its resolved ``method`` section)."""
    from ekd.data import train_bpe_tokenizer
    from ekd.models.load import build_preset, save_model_dir

    tmp = tmp_path_factory.mktemp("metrics-doc")
    corpus = write_corpus(tmp / "corpus")
    shift = write_corpus(tmp / "shift", n_docs=6, seed=1)
    tokenizer = train_bpe_tokenizer([p.read_text() for p in sorted(corpus.iterdir())], 320)
    vocab = len(tokenizer)
    padded = save_model_dir(build_preset("llama-micro", vocab + 8, 1, seed=0), tokenizer, tmp / "padded")
    runs = {
        **RUNS,  # a padded student and teacher head (padded_mass, ...), a second eval set, pos_rs
        "padded": [
            "method=pos_rs",
            f"model.student={padded}",
            f"model.teacher={padded}",
            "model.tokenizer=student",
            f"data.eval_sources={{shift: {shift}}}",
        ],
    }
    rows = {}
    for name, extra in runs.items():
        args = tiny_overrides(tmp, corpus, name, **{"train.max_steps": 2, "eval.every": 1})
        assert main(["distill", *args, *extra]) == 0, name
        run_dir = tmp / "runs" / name
        rows[name] = (
            [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()],
            yaml.safe_load((run_dir / "config.yaml").read_text())["method"],
        )
    return rows


def test_gkd_logs_its_realised_on_policy_share(logged):
    """Try-out 60, F2: nothing in metrics.jsonl said which micro-batches the student generated, nor how many of
    its tokens were trained on. At λ = 1 every row is generated; each trains on at most max_new_tokens targets."""
    rows, _ = logged["gkd"]
    steps = [r for r in rows if "train/loss" in r]
    assert steps and all(r["train/on_policy_fraction"] == 1.0 for r in steps), steps
    for r in steps:  # 4 rows per step, each continuation 1…8 tokens
        assert (
            4 <= r["train/generated_targets"] <= 4 * 8
            and r["train/generated_targets"] == r["train/kd_tokens"]
        ), r
    assert not any("train/on_policy_fraction" in r for r in logged["kd"][0])


def test_every_logged_key_is_documented(logged):
    keys = {k for rows, _ in logged.values() for row in rows for k in row}
    missing = undocumented(keys, DOC.read_text())
    assert not missing, f"keys logged to metrics.jsonl but not in docs/metrics.md: {sorted(missing)}"


def test_every_documented_key_is_logged(logged):
    """No row of the doc describes a key ekd no longer writes (a renamed or removed metric)."""
    keys = {k for rows, _ in logged.values() for row in rows for k in row}
    stale = [
        k for k in documented_keys(DOC.read_text()) if not any(key_pattern(k).fullmatch(x) for x in keys)
    ]
    assert set(stale) == NOT_EXERCISED, f"documented but not logged by these runs: {sorted(stale)}"


def test_train_loss_is_the_weighted_sum_of_its_terms(logged):
    """The identity the doc states: train/loss = kd_weight·train/kd + ce_weight·train/ce + train/feature."""
    for name, (rows, method) in logged.items():
        for row in rows:
            if "train/loss" in row:
                # a term not logged did not run, one logged null ran on no row (a step that selected nothing): 0
                terms = method["kd_weight"] * (row.get("train/kd") or 0.0)
                terms += method["ce_weight"] * (row.get("train/ce") or 0.0) + (
                    row.get("train/feature") or 0.0
                )
                assert row["train/loss"] == pytest.approx(terms, rel=1e-5, abs=1e-6), (name, row["step"])


def test_step_selection_figures_cover_the_whole_step(tmp_path):
    """h38's reading of the code: `select/count` and `select/ratio` were the last micro-batch of rank 0 (half the
    step's selected rows with 2 accumulated micro-batches), among global neighbours. Both are the step's now. The
    check is `select/count` = `train/kd_tokens` (sekd: every selected row gets KD, summed over both micro-batches);
    ratio = fraction holds by definition without a cache (candidates = valid positions)."""
    corpus = write_corpus(tmp_path / "corpus", n_docs=12)
    extra = {"train.max_steps": 2, "train.grad_accum_steps": 2, "train.micro_batch_size": 2}
    assert main(["-q", "distill", *tiny_overrides(tmp_path, corpus, "acc", **extra), "method=sekd"]) == 0
    rows = [
        json.loads(line) for line in (tmp_path / "runs" / "acc" / "metrics.jsonl").read_text().splitlines()
    ]
    steps = [r for r in rows if "train/kd" in r]
    assert len(steps) == 2
    for r in steps:
        assert r["select/count"] == r["train/kd_tokens"] > 0, r
        assert r["select/ratio"] == pytest.approx(r["select/fraction"]), r


def test_pos_rs_reports_the_positions_given_kd_not_its_draws(tmp_path):
    """Try-out 58, F4: pos_rs draws k·N positions with replacement, so at select_fraction=1 `select/fraction`, the
    run's "KD positions %" and compare's KD pos % and teacher B/token said 100% while ~65% of the positions got KD.
    `select/count` stays the draws; `select/positions`, `select/fraction`, `select/ratio` and the run's share count
    distinct positions. F5: a constant τ's `select/tau_mean` was summed in fp32 and fell below `select/tau_min`."""
    from ekd.eval.compare import read_run

    corpus = write_corpus(tmp_path / "corpus", n_docs=12)
    over = tiny_overrides(
        tmp_path, corpus, "prs", **{"method.select_fraction": 1.0, "method.kd_temperature": 0.1}
    )
    assert main(["-q", "distill", *over, "method=pos_rs"]) == 0
    run = tmp_path / "runs" / "prs"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "train/kd" in r]
    positions = valid = 0.0
    for r in steps:
        drawn, distinct = r["select/count"], r["select/positions"]
        assert drawn == r["train/kd_tokens"] and distinct < drawn, (
            r
        )  # N draws with replacement repeat positions
        n_valid = drawn  # select_fraction=1: k·N = N draws
        assert r["select/fraction"] == pytest.approx(distinct / n_valid) and r["select/fraction"] < 0.9, r
        assert r["select/ratio"] == pytest.approx(r["select/fraction"]), r  # no cache: candidates = valid
        assert r["select/tau_min"] <= r["select/tau_mean"] <= r["select/tau_max"], r
        positions, valid = positions + distinct, valid + n_valid
    assert read_run(run).kd_fraction == pytest.approx(positions / valid)  # compare's KD pos %, B/token
    # sekd's rows are distinct: its positions are its rows
    over = tiny_overrides(tmp_path, corpus, "se", **{"train.max_steps": 1})
    assert main(["-q", "distill", *over, "method=sekd"]) == 0
    rows = [
        json.loads(line) for line in (tmp_path / "runs" / "se" / "metrics.jsonl").read_text().splitlines()
    ]
    assert all(r["select/positions"] == r["select/count"] for r in rows if "train/kd" in r)


def test_a_term_is_logged_only_where_it_runs(logged):
    """`train/ce` and `train/ce_tokens` exist only with `method.ce_weight > 0`, `train/kd` and `train/kd_tokens`
    only with a KD term: before, a run without the term logged 0.0 and a normalizer of 1, which read as measured."""
    for name, (rows, method) in logged.items():
        for row in (r for r in rows if "train/loss" in r):
            has_ce, has_kd = method["ce_weight"] > 0, method["kd_weight"] > 0
            assert ("train/ce" in row, "train/ce_tokens" in row) == (has_ce, has_ce), (name, row["step"])
            assert ("train/kd" in row, "train/kd_tokens" in row) == (has_kd, has_kd), (name, row["step"])
    last_step = {name: [r for r in rows if "train/loss" in r][-1] for name, (rows, _) in logged.items()}
    assert "train/ce" in last_step["kd"] and "train/kd" not in last_step["ce"]  # both cases are exercised


def test_bandit_above_threshold_covers_the_whole_step(tmp_path):
    """With its clamp opened to [0, 1], LinUCB selects exactly the candidates above `bandit_threshold`, so
    `select/bandit_above_threshold` equals the step's `select/ratio`. It was the last micro-batch of rank 0."""
    corpus = write_corpus(tmp_path / "corpus", n_docs=12)
    extra = {"train.max_steps": 3, "train.grad_accum_steps": 2, "train.micro_batch_size": 2}
    bandit = ["method=bandit", "method.bandit_min_fraction=0", "method.bandit_max_fraction=1"]
    # threshold 0.1: step 1 (θ = 0, large bonus) takes every candidate, later steps part of them
    args = [*tiny_overrides(tmp_path, corpus, "ucb", **extra), *bandit, "method.bandit_threshold=0.1"]
    assert main(["-q", "distill", *args]) == 0
    rows = [
        json.loads(line) for line in (tmp_path / "runs" / "ucb" / "metrics.jsonl").read_text().splitlines()
    ]
    steps = [r for r in rows if "select/ratio" in r]
    assert len(steps) == 3
    assert any(0 < r["select/ratio"] < 1 for r in steps), steps  # a step where the threshold splits
    for r in steps:
        assert r["select/bandit_above_threshold"] == pytest.approx(r["select/ratio"]), r


def test_a_micro_batch_that_selects_nothing_does_not_erase_the_steps_tau_extremes():
    """h38: `combine` took min(nan, x) = nan, so a step whose first micro-batch selected nothing logged
    `select/tau_min` / `tau_max` as null."""
    import math

    from ekd.train.step_metrics import combine

    assert combine("tau_min", math.nan, 2.0) == 2.0 and combine("tau_min", 2.0, math.nan) == 2.0
    assert combine("tau_max", math.nan, 3.0) == 3.0 and combine("tau_max", 3.0, 1.0) == 3.0
    assert math.isnan(combine("tau_min", math.nan, math.nan)) and combine("selected", 1.0, 2.0) == 3.0


def test_a_step_that_selected_nothing_logs_no_measured_zero():
    """Review 128, R5: a step whose selection was empty (LinUCB under bandit_min_fraction=0, a cache holding none of
    its positions) logged `train/kd` 0.0 — a perfect match to the teacher, for a term never computed — beside
    `select/bandit_above_threshold` 0/max(0, 1) and the hard fraction of no row. They are NaN; a step that selected
    rows logs them as before."""
    from ekd.config import load_config
    from ekd.train.method_parts import MethodParts
    from ekd.train.step_metrics import step_metrics

    cfg = load_config(None, ["method=egad", "method.ce_weight=1", "method.ce_on=selected"])
    parts = MethodParts.build(cfg, 10)
    sums = {"tokens": 64.0, "peak_memory_max": 0.0, "rows": 2.0, "valid": 60.0, "kd_sum": 0.0, "ce_sum": 0.0}
    sums |= {"selected": 0.0, "positions": 0.0, "candidates": 0.0, "hard": 0.0, "bandit_above": 0.0}
    m = step_metrics(1, 1e-3, 0.0, 0.0, sums, (1.0, 1.0, 1.0), parts, 1.0, 1.0)
    for key in ("train/kd", "train/ce", "select/hard_fraction", "select/bandit_above_threshold"):
        assert math.isnan(m[key]), (key, m[key])
    assert m["select/fraction"] == 0.0  # a measured share: none of the 60 valid positions
    sums |= {"selected": 4.0, "positions": 4.0, "candidates": 60.0, "hard": 2.0, "kd_sum": 2.0, "ce_sum": 8.0}
    m = step_metrics(1, 1e-3, 0.0, 0.0, sums, (4.0, 4.0, 2.0), parts, 1.0, 1.0)
    assert (m["train/kd"], m["train/ce"], m["select/hard_fraction"]) == (0.5, 2.0, 0.5)
    assert m["select/bandit_above_threshold"] == 0.0
