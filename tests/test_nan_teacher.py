"""A NaN teacher logit (a 16-bit overflow, broken weights) gives NaN figures or a refusal, never made-up ones.

Try-out 109, F3: terms kept where ``p > 0`` read a NaN teacher row as a perfect match (KL 0) in ``forward_kl``,
the eval metrics and DKD's terms; the accurate CPU softmax's −inf floor (``nan_to_num``) turned a NaN logit into
0, so the cache's statistics and RS draws of that row were computed from a teacher that never said so; sparse
targets of NaN value counted as padding. Each now propagates NaN: the trainer stops on the non-finite loss
("check the data/teacher"), an eval figure is NaN, and a cache build refuses the batch.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch

from ekd.eval.metrics import StreamingMetrics
from ekd.losses.divergences import divergences, make_divergence
from ekd.losses.head_loss import kd_loss_sum
from ekd.losses.row_reductions import row_logsumexp_entropy, row_softmax
from ekd.losses.targets import DenseTarget, Head
from ekd.teacher.cache import CacheError
from ekd.teacher.cache.entries import batch_entries
from ekd.teacher.signal import TargetSpec
from ekd.teacher.targets import rs_target, topk_target

V = 40


def _logits(bad: float = math.nan) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher logits (3, V); the teacher's row 0 holds one ``bad`` logit."""
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(3, V, generator=g), 2 * torch.randn(3, V, generator=g)
    zt[0, 7] = bad
    return zs, zt


BAD = pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["nan", "inf"])


@BAD
@pytest.mark.parametrize("name", sorted(divergences.names()))
def test_a_nan_teacher_row_is_not_finite_in_any_divergence(name, bad):
    zs, zt = _logits(bad)
    d = make_divergence(name)(zs, zt, 1.0)  # (3,)
    assert not d[0].isfinite() and d[1:].isfinite().all(), (name, d)  # NaN, or +inf (q's mass outside p's)


@BAD
def test_the_softmax_and_entropy_keep_a_nan_logit(bad):
    """The −inf floor of the blocked CPU softmax made a NaN logit 0 (and +inf the largest finite value) and the row
    a valid distribution (review of session 32: a one-hot for +inf)."""
    _, zt = _logits(bad)
    zt[2] = float("-inf")  # an all −inf row still takes the floor (uniform), as documented
    p = row_softmax(zt)
    lse, entropy = row_logsumexp_entropy(zt)
    assert p[0].isnan().all() and lse[0].isnan() and entropy[0].isnan()
    assert p[1:].isfinite().all() and entropy[1:].isfinite().all()
    torch.testing.assert_close(p[2], torch.full((V,), 1 / V))


@BAD
@pytest.mark.parametrize("target", ["dense", "topk", "rs"])
@pytest.mark.parametrize("path", ["chunked", "chunked_recompute", "reference"])
def test_a_nan_teacher_row_makes_the_loss_not_finite_on_every_path(target, path, bad):
    zs, zt = _logits(bad)
    teacher = {
        "dense": lambda: DenseTarget(zt, Head(torch.eye(V))),
        "topk": lambda: topk_target(zt, 5, "renormalize", None, 1.0),
        "rs": lambda: rs_target(zt, 20, seeds=torch.arange(3)).target,
    }[target]()
    h = zs.clone().requires_grad_(True)
    loss = kd_loss_sum(
        h, Head(torch.eye(V)), teacher, 1.0, torch.ones(3), make_divergence("forward_kl"), path=path
    )
    assert not loss.isfinite()


def test_eval_figures_of_a_nan_teacher_are_nan():
    """KL was (0 + KL₁ + KL₂)/3 (a teacher NaN read as agreement); then agreement and the entropy bucket of the NaN
    row (bucket 0 by clamping) stayed finite, and a NaN model row's argmax counted in its accuracy (review)."""
    zs, zt = _logits()
    m = StreamingMetrics(V, entropy_buckets=2)
    m.update(zs, torch.tensor([1, 2, 3]), zt)
    out = m.compute()
    for key in ("kl", "agree", "teacher_entropy", "tokens@H0", "agree@H0", "kl@H1", "tokens@H1"):
        assert math.isnan(out[key]), (key, out)
    assert math.isfinite(out["acc"]) and math.isfinite(out["loss"])  # the student's own figures are whole
    own = StreamingMetrics(V)  # the teacher scored as a model (eval.teacher_metrics)
    own.update(zt, torch.tensor([7, 2, 3]))
    assert math.isnan(own.compute()["acc"]) and math.isnan(own.compute()["loss"])


def test_a_cache_build_refuses_a_batch_with_a_nan_teacher_position():
    g = torch.Generator().manual_seed(1)
    B, T, D = 2, 6, 8
    hidden = torch.randn(B, T, D, generator=g)
    hidden[1, 4, 0] = math.nan  # one position of sample 11
    labels = torch.randint(0, V, (B, T), generator=g)
    with pytest.raises(
        CacheError,
        match=r"\(NaN or \+inf\) at 1 position\(s\) .*first: sample 11, position 4.*\(it runs in float32\)$",
    ):
        batch_entries(
            hidden, Head(torch.randn(V, D, generator=g)), labels, torch.tensor([10, 11]), TargetSpec("rs")
        )
    with pytest.raises(CacheError, match=r"it runs in float16, and model.teacher_dtype=float32 rules out"):
        head = Head(torch.randn(V, D, generator=g).half())  # a 16-bit teacher: float32 advised
        batch_entries(hidden.half(), head, labels, torch.tensor([10, 11]), TargetSpec("rs"))


def test_a_selection_that_passes_over_a_nan_teacher_position_still_makes_the_kd_term_nan():
    """Try-out 110, F5: a curriculum sorts NaN teacher-entropy scores last and never selected them; EGAD trained 30
    steps on such a teacher without a word. The KD term is NaN whenever a teacher statistic is (the run stops)."""
    from ekd.train.step import _nan_of_teacher as _nan_of_teacher_stats

    entropy = torch.rand(2, 5)
    assert (
        _nan_of_teacher_stats({"teacher_entropy": entropy, "student_entropy": torch.full((2, 5), math.nan)})
        == 0
    )
    entropy[1, 3] = math.nan
    assert torch.isnan(torch.as_tensor(_nan_of_teacher_stats({"teacher_entropy": entropy})))
    assert torch.isnan(torch.as_tensor(_nan_of_teacher_stats({"hellinger": entropy})))
    assert (
        _nan_of_teacher_stats({"forward_kl": torch.full((2, 5), math.inf)}) == 0
    )  # +inf KL: q outside p's support
    assert _nan_of_teacher_stats({}) == 0.0


def test_an_eval_set_whose_teacher_figures_are_nan_is_said(caplog):
    """Try-out 110, F2: a NaN teacher figure printed as '—', as if not evaluated, with no word."""
    import logging

    from ekd.train.evaluation import say_non_finite_teacher

    with caplog.at_level(logging.WARNING, logger="ekd"):
        say_non_finite_teacher("eval", {"loss": 2.0, "kl": math.nan}, torch.float16)
        say_non_finite_teacher("fine", {"loss": 2.0, "kl": 0.3}, torch.float16)
        say_non_finite_teacher("diverged", {"loss": math.nan, "kl": math.nan}, torch.float16)  # the student's
    assert caplog.text.count("not finite") == 1
    assert "eval set 'eval': the teacher's logits are not finite" in caplog.text
    assert "it runs in float16, and model.teacher_dtype=float32 rules out a 16-bit overflow" in caplog.text


def test_a_non_finite_student_row_makes_every_bucket_nan_too():
    """Review of session 32: one +inf student logit made the set's KL NaN while kl@H0–kl@H2 stayed finite."""
    zs, zt = _logits(bad=0.0)
    zs[1, 4] = math.inf
    m = StreamingMetrics(V, entropy_buckets=3)
    m.update(zs, torch.tensor([1, 2, 3]), zt)
    out = m.compute()
    assert all(math.isnan(out[f"kl@H{b}"]) for b in range(3)) and math.isnan(out["kl"]), out


def test_nan_sample_scores_are_refused_not_kept_first():
    """Review of session 32: a descending sort puts NaN first, so a NaN-scored sample was kept and saved."""
    from ekd.config import ConfigError
    from ekd.selection.sample_selection import select_samples

    ids = torch.arange(4)
    assert select_samples(torch.tensor([0.5, 3.0, 2.0, 1.0]), ids, 0.25).tolist() == [1]
    with pytest.raises(ConfigError, match="1 of 4 sample scores are NaN"):
        select_samples(torch.tensor([0.5, math.nan, 2.0, 1.0]), ids, 0.25)
    # try-out 116, F8: which model; a student scorer reads no teacher
    with pytest.raises(ConfigError, match=r"NaN \(the student's logits are not finite: check its weights\)"):
        select_samples(torch.tensor([0.5, math.nan, 2.0, 1.0]), ids, 0.25, "student_entropy")
    with pytest.raises(ConfigError, match="the student's or the teacher's logits are not finite"):
        select_samples(torch.tensor([0.5, math.nan, 2.0, 1.0]), ids, 0.25, "forward_kl")


def test_a_teacher_whose_hidden_states_are_not_finite_where_nothing_asks_still_stops_the_run():
    """Try-out 111, F1: SE-KD scores by the student, so no teacher statistic was computed and a teacher NaN at
    positions it never selected trained on (20 steps, exit 0). Its hidden states join the KD term's guard; a
    position without a target (padding a model may leave NaN) does not."""
    from ekd.teacher.signal import TeacherSignal
    from ekd.train.step import _nan_of_teacher

    hidden = torch.randn(2, 5, 3)
    valid = torch.ones(2, 5, dtype=torch.bool)
    valid[1, 4] = False
    signal = TeacherSignal(stats={}, available=valid, hidden=hidden)
    assert _nan_of_teacher({}, signal, valid) == 0
    hidden[1, 4, 0] = math.inf  # no target there
    assert _nan_of_teacher({}, signal, valid) == 0
    hidden[0, 2, 1] = math.nan
    assert torch.isnan(torch.as_tensor(_nan_of_teacher({}, signal, valid)))


def test_the_non_finite_stop_names_the_teachers_dtype(tmp_path):
    """Try-out 111, F2: the stop led with the learning rate and never said the dtype the teacher ran in; try-out
    112, F4 (review, session 33): float32 is advised only to a 16-bit teacher, and a run whose loss reads no
    teacher model (CE only, a cache) is not told to check one."""
    from ekd.errors import NonFiniteLossError
    from ekd.train.trainer import _stop_non_finite

    def line(**kwargs) -> str:
        with pytest.raises(NonFiniteLossError) as e:
            _stop_non_finite(3, tmp_path, **kwargs)
        return str(e.value)

    sixteen = line(teacher_dtype=torch.bfloat16)
    assert (
        "the student diverged" in sixteen and "--overwrite in place of any --resume" in sixteen
    )  # try-out 112, F3
    assert "it runs in bfloat16, and model.teacher_dtype=float32 rules out a 16-bit overflow" in sixteen
    full = line(teacher_dtype=torch.float32)
    assert "(NaN or +inf: check its weights; it runs in float32)" in full and "rules out" not in full
    alone = line()
    assert "the student diverged" in alone and "teacher" not in alone, alone
    with pytest.raises(NonFiniteLossError, match="the student's outputs are not finite before any update"):
        _stop_non_finite(0, tmp_path)  # try-out 116, F2
    blamed = line(teacher_dtype=torch.float16, blamed=True)
    assert blamed.startswith("non-finite loss at step 4: the teacher's outputs are not finite") and (
        "diverged" not in blamed
    ), blamed


def test_a_non_finite_teacher_is_said_once_a_run_not_at_every_evaluation(
    tmp_path, capsys, monkeypatch, caplog
):
    """Review of session 32: the warning repeated at every in-training evaluation (the teacher is frozen: its
    figures are the same each time). The run's evaluations share what was said; `ekd eval` says it again."""
    import logging
    from pathlib import Path

    import ekd.eval
    from hostile import cli
    from tiny import config_file, write_corpus

    real = ekd.eval.evaluate

    def teacher_made_nan(model, batches, teacher, **kwargs):
        metrics, bins = real(model, batches, teacher, **kwargs)
        if teacher is not None:
            metrics["kl"] = math.nan
        return metrics, bins

    monkeypatch.setattr(ekd.eval, "evaluate", teacher_made_nan)
    monkeypatch.chdir(tmp_path)
    write_corpus(Path("corpus"), n_docs=8)
    config = config_file(Path("."), Path("corpus"), "nan", **{"train.max_steps": 3, "eval.every": 1})
    with caplog.at_level(logging.WARNING, logger="ekd"):
        code, _, err = cli(capsys, "distill", config)
        assert code == 0, err
        assert caplog.text.count("eval set 'eval': the teacher's logits are not finite") == 1, caplog.text
        caplog.clear()
        assert cli(capsys, "eval", "runs/nan")[0] == 0
    assert caplog.text.count("eval set 'eval': the teacher's logits are not finite") == 1, caplog.text


def test_the_stop_leads_with_the_teacher_when_its_outputs_made_the_loss_nan(tmp_path, capsys, monkeypatch):
    """Try-out 112, F4: a run stopped by the teacher guard led with "the student diverged (… lower train.lr)" and
    said `teacher_dtype=auto` without what it became. The stop now names the teacher when its statistics or hidden
    states are what is not finite, and the dtype 'auto' resolved to."""
    from pathlib import Path

    import ekd.train.trainer as trainer_mod
    from hostile import cli
    from tiny import config_file, write_corpus

    real = trainer_mod.load_teacher

    def broken_teacher(*args, **kwargs):
        teacher = real(*args, **kwargs)
        with torch.no_grad():
            teacher.model.norm.weight[0] = math.nan  # every final hidden state NaN in one component
        return teacher

    monkeypatch.setattr(trainer_mod, "load_teacher", broken_teacher)
    monkeypatch.chdir(tmp_path)
    write_corpus(Path("corpus"), n_docs=8)
    config = config_file(Path("."), Path("corpus"), "broken", **{"train.max_steps": 2})
    code, _, err = cli(capsys, "distill", config, "method=sekd")
    line = err.strip().splitlines()[-1]
    assert code != 0 and "Traceback" not in err
    assert line.startswith(
        "ekd: error: non-finite loss at step 1: the teacher's outputs are not finite (NaN or +inf) at a position"
    ), line
    assert "(check its weights; it runs in float32); no checkpoint" in line and "diverged" not in line, line


@pytest.mark.parametrize("method", ["adakd", "ce"])
def test_a_student_that_is_not_finite_is_not_blamed_on_the_teacher(
    tmp_path, capsys, monkeypatch, caplog, method
):
    """Review of session 33: AdaKD scores by Hellinger, a pair statistic NaN for a NaN student too, and the stop
    then blamed the teacher; CE-only runs were told to check a teacher their loss never reads."""
    from pathlib import Path

    import ekd.train.trainer as trainer_mod
    from hostile import cli
    from tiny import config_file, write_corpus

    real = trainer_mod.load_student

    def broken_student(*args, **kwargs):
        student = real(*args, **kwargs)
        with torch.no_grad():
            student.model.norm.weight[0] = math.nan
        return student

    monkeypatch.setattr(trainer_mod, "load_student", broken_student)
    monkeypatch.chdir(tmp_path)
    write_corpus(Path("corpus"), n_docs=8)
    config = config_file(Path("."), Path("corpus"), "broken", **{"train.max_steps": 2})
    with caplog.at_level(logging.WARNING, logger="ekd"):  # its figures at step 0 first (review F7)
        code, _, err = cli(capsys, "distill", config, f"method={method}", "eval.every=1")
    line = err.strip().splitlines()[-1]
    assert code != 0 and "Traceback" not in err, err
    # try-out 116, F2: at the first step no update has been made, so 'lower train.lr' could not help
    assert line.startswith(
        "ekd: error: non-finite loss at step 1: the student's outputs are not finite before any update: check its "
        "weights (model.student)"
    ), line
    assert ("teacher" in line) == (method == "adakd"), line  # adakd's loss reads its teacher; ce's does not
    assert "diverged" not in line, line
    # try-out 116, F3: its figures at step 0 are NaN ('—' in the tables): said, once
    said = [r.getMessage() for r in caplog.records if "the student's logits are not finite" in r.getMessage()]
    assert len(said) == 1 and "before any training: check its weights" in said[0], said
