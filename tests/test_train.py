"""The trainer: gradient accumulation invariance, exact resume, non-finite stop, run-directory guard."""

from __future__ import annotations

import json

import pytest
import torch

from ekd.config import ConfigError, load_config
from ekd.data import collate
from ekd.errors import NonFiniteLossError, RunDirError
from ekd.train import trainer as trainer_mod
from ekd.train.method_parts import MethodParts
from ekd.train.optim import lr_at
from ekd.train.prepare import build_teacher_source, load_student, load_teacher, prepare_data
from ekd.train.trainer import forward_backward, train
from tiny import crash_then_resume, loss_curve, tiny_overrides, write_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), n_docs=30)


def _grads(cfg, data, blocks_per_micro: int, accum: int):
    torch.manual_seed(0)
    student = load_student(cfg, data, torch.device("cpu"))
    teacher_model = load_teacher(cfg, data, torch.device("cpu"))
    teacher = build_teacher_source(cfg, data, torch.device("cpu"), teacher_model)
    parts = MethodParts.build(cfg, cfg.train.max_steps)
    parts.attach_models(student, teacher_model, torch.device("cpu"))
    indices = torch.arange(8)
    micro = [
        collate(data.blocks["train"], indices[i * blocks_per_micro : (i + 1) * blocks_per_micro])
        for i in range(accum)
    ]
    loss, *_ = forward_backward(micro, student, teacher, parts, 0, cfg, data.vocab_size, None, cfg.run_dir)
    return loss, {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "method",
    [
        ["method=kd", "method.ce_weight=0.5"],
        [
            "method=kd",
            "method.policy=topk",
            "method.scorer=student_entropy",
            "method.select_fraction=0.2",
            "method.ce_weight=0.3",
        ],
        ["method=jsd", "method.temperature=constant", "method.kd_temperature=2.0"],
    ],
    ids=["kd+ce", "topk-student-entropy", "jsd-tau2"],
)
def test_grad_accumulation_8x1_equals_2x4(tmp_path, corpus, method):
    cfg = load_config(overrides=tiny_overrides(tmp_path, corpus) + method)
    data = prepare_data(cfg, tmp_path / "prep")
    loss_a, grads_a = _grads(cfg, data, blocks_per_micro=1, accum=8)
    loss_b, grads_b = _grads(cfg, data, blocks_per_micro=4, accum=2)
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6, msg=name)


def test_resume_reproduces_the_uninterrupted_loss_curve(tmp_path, corpus, monkeypatch):
    extra = [
        "train.max_steps=6",
        "train.checkpoint_every=3",
        "method=kd",
        "method.policy=topk",
        "method.scorer=random",
        "method.select_fraction=0.5",
        "eval.teacher=false",
    ]
    full = train(load_config(overrides=tiny_overrides(tmp_path, corpus, "full") + extra))
    expected = loss_curve(full.run_dir)
    assert sorted(expected) == [1, 2, 3, 4, 5, 6]

    resumed = crash_then_resume(
        load_config(overrides=tiny_overrides(tmp_path, corpus, "crash") + extra), monkeypatch
    )
    got = loss_curve(resumed.run_dir)
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step
    a = dict(full.eval["eval"])
    b = dict(resumed.eval["eval"])
    assert a["ppl"] == pytest.approx(b["ppl"], rel=1e-5)


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path, corpus, monkeypatch):
    cfg = load_config(
        overrides=tiny_overrides(tmp_path, corpus, "nan")
        + ["train.max_steps=4", "train.checkpoint_every=1", "method=ce"]
    )
    real = trainer_mod.distill_micro_batch

    def nan_at_step_2(batch, student, teacher, parts, kd, ce, ctx):
        out = real(batch, student, teacher, parts, kd, ce, ctx)
        if ctx.step == 2:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(trainer_mod, "distill_micro_batch", nan_at_step_2)
    with pytest.raises(NonFiniteLossError, match="step 3.*step-000002"):
        train(cfg)
    ckpts = sorted(p.name for p in (cfg.run_dir / "checkpoints").iterdir() if p.is_dir())
    assert ckpts[-1] == "step-000002"
    assert (cfg.run_dir / "checkpoints" / "step-000002" / "student.safetensors").stat().st_size > 0


def test_a_diverged_student_is_said_at_every_evaluation(tmp_path, corpus, monkeypatch, caplog):
    """Try-out 75, F1: a learning rate that blew the loss up 100× (finite) trained on in silence, exit 0, its ppl
    printed as a 66-digit number. A student whose eval ppl is over 10× the vocabulary's size is said diverged."""
    import logging

    from ekd.eval import results_table

    cfg = load_config(
        overrides=tiny_overrides(tmp_path, corpus, "diverged")
        + ["train.max_steps=3", "eval.every=2", "method=ce", "train.max_grad_norm=0"]
    )
    real = trainer_mod.distill_micro_batch

    def blow_up_at_step_2(batch, student, teacher, parts, kd, ce, ctx):
        if ctx.step == 1:  # 0-based: the second step
            with torch.no_grad():
                student.get_output_embeddings().weight.mul_(1e3)  # what a far too large step does to the head
        return real(batch, student, teacher, parts, kd, ce, ctx)

    monkeypatch.setattr(trainer_mod, "distill_micro_batch", blow_up_at_step_2)
    with caplog.at_level(logging.WARNING, logger="ekd"):
        result = train(cfg)
    said = [r.getMessage() for r in caplog.records if "its training has diverged" in r.getMessage()]
    assert len(said) == 2, said  # the evaluations after step 2 and at the end; not the one before training
    assert (
        said[0].startswith("eval set 'eval': the student's perplexity ") and "train.lr (now 0.001)" in said[0]
    )
    assert "gradient clipping (train.max_grad_norm=1.0; now 0, off)" in said[0]
    assert result.eval["eval"]["ppl"] > 10 * 320
    from ekd.train.evaluation import say_divergence  # try-out 76, F3: at step 0 no learning rate made it

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ekd"):
        say_divergence("e", 7.9e7, 300, cfg, before_training=True)
    (line,) = [r.getMessage() for r in caplog.records]
    assert "the student starts at perplexity 7.9e+07" in line and "before any training" in line
    assert "train.lr" not in line
    table = results_table([{"ppl": 7.284e65}, {"ppl": 12.5}], [("ppl", "ppl", ".2f")])
    assert "| 7.284e+65 |" in table and "| 12.50 |" in table


def test_a_student_that_started_diverged_is_not_blamed_on_the_learning_rate(
    tmp_path, corpus, monkeypatch, caplog
):
    """Try-out 146, F1: a student whose perplexity started at 1.43e11 and fell in training was told at the end that
    its training had diverged, to start again with a lower train.lr — a fix that cannot help; said as where it
    started. Where the start is unknown the line says it may have started there."""
    import logging

    from ekd.cli import main as ekd_main
    from ekd.train.evaluation import say_divergence

    real = trainer_mod.load_student

    def far_off(*args, **kwargs):  # a student whose head makes it start far over 10× V
        student = real(*args, **kwargs)
        with torch.no_grad():
            student.get_output_embeddings().weight.mul_(1e3)
        return student

    monkeypatch.setattr(trainer_mod, "load_student", far_off)
    overrides = ["train.max_steps=2", "method=ce", "train.lr=1e-9", "eval.student_init=true"]
    cfg = load_config(overrides=tiny_overrides(tmp_path, corpus, "far-off") + overrides)
    with caplog.at_level(logging.WARNING, logger="ekd"):
        train(cfg)
    said = [r.getMessage() for r in caplog.records if "vocabulary's size" in r.getMessage()]
    assert len(said) == 2 and "the student starts at perplexity" in said[0], said
    assert "as it was before training" in said[1] and "its starting weights put it there" in said[1], said
    assert "train.lr" not in said[1]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ekd"):  # ekd eval RUN reads the start's figures back
        assert ekd_main(["-q", "eval", str(cfg.run_dir)]) == 0
    said = [r.getMessage() for r in caplog.records if "vocabulary's size" in r.getMessage()]
    assert len(said) == 1 and "as it was before training" in said[0], said
    caplog.clear()  # a --resume reads the start's figures back (review 149, R9)
    resumed = load_config(
        overrides=tiny_overrides(tmp_path, corpus, "far-off") + [*overrides[1:], "train.max_steps=3"]
    )
    with caplog.at_level(logging.WARNING, logger="ekd"):
        train(resumed, resume=True)
    said = [r.getMessage() for r in caplog.records if "vocabulary's size" in r.getMessage()]
    assert len(said) == 1 and "as it was before training" in said[0], said
    # a start scored by eval.every alone (eval.student_init=false) is read back by a --resume too, and eval.json,
    # of the run's end or of `ekd eval RUN`, records no starting figures (review 149, R9)
    every = ["method=ce", "train.lr=1e-9", "eval.student_init=false", "eval.every=100"]
    train(load_config(overrides=tiny_overrides(tmp_path, corpus, "every") + [*every, "train.max_steps=2"]))
    caplog.clear()
    resumed = load_config(overrides=tiny_overrides(tmp_path, corpus, "every") + [*every, "train.max_steps=3"])
    with caplog.at_level(logging.WARNING, logger="ekd"):
        train(resumed, resume=True)
        assert ekd_main(["-q", "eval", str(resumed.run_dir)]) == 0
    said = [r.getMessage() for r in caplog.records if "vocabulary's size" in r.getMessage()]
    assert len(said) == 2 and all("as it was before training" in line for line in said), said
    assert "student_init" not in json.loads((resumed.run_dir / "eval.json").read_text())["eval"]
    cfg = load_config(overrides=tiny_overrides(tmp_path, corpus, "x"))
    for start, words in (
        (None, "its training has diverged (or the student started there: eval.student_init=true scores it"),
        (100.0, "its training has diverged (from 100 before training); start again with a lower train.lr"),
        (
            5e6,
            "as it was before training (5e+06): its starting weights put it there",
        ),  # rose: still the start's
        (8e7, "as it was before training (8e+07): its starting weights put it there"),
    ):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ekd"):
            say_divergence("e", 7.9e7, 300, cfg, start=start)
        (line,) = [r.getMessage() for r in caplog.records]
        assert words in line, (start, line)


def test_a_resume_over_an_edited_eval_file_says_its_curve_changes_text(tmp_path, corpus, caplog):
    """Try-out 74, F3: `--resume` after an eval file was edited said nothing, and metrics.jsonl held one curve
    under the set's name over two texts (274 targets, then 153)."""
    import logging

    held = tmp_path / "held.txt"
    held.write_text("def value(self):\n    return self.items\n" * 6)
    extra = ["train.checkpoint_every=1", "method=ce", f"data.eval_sources={{held: {held}}}"]
    train(load_config(overrides=tiny_overrides(tmp_path, corpus, "edited") + ["train.max_steps=2", *extra]))
    resumed = load_config(
        overrides=tiny_overrides(tmp_path, corpus, "edited") + ["train.max_steps=3", *extra]
    )
    with caplog.at_level(logging.WARNING, logger="ekd"):
        train(resumed, resume=True)  # the same text: nothing said
    assert "its blocks differ" not in caplog.text
    held.write_text("class Items:\n    pass\n" * 6)
    again = load_config(overrides=tiny_overrides(tmp_path, corpus, "edited") + ["train.max_steps=4", *extra])
    with caplog.at_level(logging.WARNING, logger="ekd"):
        train(again, resume=True)
    said = [r.getMessage() for r in caplog.records if "its blocks differ" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(
        "eval set 'held': its blocks differ from those the run scored"
    ), said


def test_run_dir_guard(tmp_path, corpus):
    cfg = load_config(
        overrides=tiny_overrides(tmp_path, corpus, "guard") + ["train.max_steps=1", "method=ce"]
    )
    train(cfg)
    marker = cfg.run_dir / "metrics.jsonl"
    before = marker.read_text()
    with pytest.raises(RunDirError, match="--resume.*--overwrite"):
        train(cfg)
    other = load_config(
        overrides=tiny_overrides(tmp_path, corpus, "guard") + ["train.max_steps=1", "method=kd"]
    )
    with pytest.raises(RunDirError, match="different run.*method"):
        train(other)
    with pytest.raises(RunDirError, match="differs"):
        train(other, resume=True)
    assert marker.read_text() == before  # nothing already written was touched
    train(other, overwrite=True)


def test_student_parameters_change_and_lr_schedule(tmp_path, corpus):
    cfg = load_config(
        overrides=tiny_overrides(tmp_path, corpus, "lr")
        + ["train.max_steps=10", "train.warmup_steps=2", "train.min_lr_ratio=0.1"]
    )
    lrs = [lr_at(s, cfg) for s in range(10)]
    assert lrs[0] == pytest.approx(cfg.train.lr / 2) and lrs[1] == pytest.approx(cfg.train.lr)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))
    assert lr_at(10, cfg) == pytest.approx(cfg.train.lr * 0.1)


@pytest.mark.parametrize(
    "method",
    [
        "kd",
        "rkl",
        "jsd",
        "skl",
        "srkl",
        "tvd",
        "sekd",
        "gls",
        "adakd",
        "egad",
        "rskd",
        "topk",
        "topk_ghost",
        "topk_gold",
        "dkd",
        "atkd",
        "pos_rs",
    ],
)
def test_chunked_path_equals_reference_path_through_the_step(tmp_path, corpus, method):
    """Fast path = reference path (values and gradients, fp32) for every divergence, target kind, temperature
    policy and selector, through the real step with a chunk size (7) that divides nothing."""
    base = tiny_overrides(tmp_path, corpus) + [
        f"method={method}",
        "method.ce_weight=0.5",
        "train.head_chunk_size=7",
    ]
    data = prepare_data(load_config(overrides=base), tmp_path / "prep")
    results = {}
    for path in ("chunked", "reference"):
        cfg = load_config(overrides=base + [f"train.loss_path={path}"])
        results[path] = _grads(cfg, data, blocks_per_micro=4, accum=2)
    (loss_c, grads_c), (loss_r, grads_r) = results["chunked"], results["reference"]
    assert loss_c == pytest.approx(loss_r, rel=1e-5, abs=1e-7)
    for name in grads_r:
        torch.testing.assert_close(grads_c[name], grads_r[name], rtol=1e-4, atol=1e-6, msg=name)


def test_periodic_eval_starts_with_the_student_as_loaded(tmp_path, corpus, monkeypatch):
    """Try-out 10: with ``eval.every`` the first eval came after N steps, so "did training start from my model?"
    could not be read from metrics.jsonl. Step 0 now holds the eval of the student as loaded (equal to evaluating
    it by hand), the same whatever the method; a resumed run does not log it again."""
    import json

    from ekd.train.evaluation import evaluate_run

    extra = ["train.max_steps=4", "eval.every=2", "train.checkpoint_every=2", "eval.teacher=false"]

    def eval_rows(run_dir) -> dict[int, float]:
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["eval/eval/ppl"] for r in rows if "eval/eval/ppl" in r}

    kd = train(load_config(overrides=tiny_overrides(tmp_path, corpus, "kd") + extra + ["method=kd"]))
    ce = train(load_config(overrides=tiny_overrides(tmp_path, corpus, "ce") + extra + ["method=ce"]))
    assert sorted(eval_rows(kd.run_dir)) == [0, 2, 4]
    assert eval_rows(kd.run_dir)[0] == eval_rows(ce.run_dir)[0] != eval_rows(kd.run_dir)[2]
    cfg = load_config(overrides=tiny_overrides(tmp_path, corpus, "kd") + extra + ["method=kd"])
    data = prepare_data(cfg, tmp_path / "by-hand")
    student = load_student(cfg, data, torch.device("cpu"))
    by_hand = evaluate_run(cfg, data, student, None, torch.device("cpu"), None)
    assert eval_rows(kd.run_dir)[0] == pytest.approx(by_hand["eval"]["ppl"], rel=1e-6)
    resumed = crash_then_resume(
        load_config(overrides=tiny_overrides(tmp_path, corpus, "crash") + extra + ["method=kd"]),
        monkeypatch,
        crash_step=3,  # after the checkpoint of step 2
    )
    rows = [json.loads(line) for line in (resumed.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval/eval/ppl" in r].count(0) == 1


@pytest.mark.parametrize(
    "method",
    [
        ["method=kd", "method.ce_weight=0.5"],
        ["method=kd", "method.policy=topk", "method.scorer=random", "method.select_fraction=0.5"],
        ["method=pos_rs"],
    ],
    ids=["kd+ce", "random-positions", "pos_rs"],
)
def test_micro_batches_and_accumulation_train_alike_across_epochs(tmp_path, corpus, method):
    """try-out 28: with the same global batch, 1 × (2 micro-batches of g/2) and 1 × g trained on different blocks
    once the first epoch ended (the epoch ended per micro-batch, so the split that drew smaller batches kept
    blocks the other dropped), and the rules that draw per row (random scores, pos_rs) keyed their draws by the
    micro-batch index. Runs crossing two epoch ends now log the same losses at every step."""
    extra = [*method, "eval.teacher=false", "train.checkpoint_every=0"]
    probe = load_config(overrides=tiny_overrides(tmp_path, corpus, "probe") + extra)
    n = len(prepare_data(probe, tmp_path / "prep").blocks["train"])
    g = next(g for g in range(4, n, 2) if n % g >= g // 2)  # an epoch leaves ≥ one micro-batch over
    steps = 2 * (n // g) + 1  # two epoch ends
    runs = {}
    for name, micro, accum in (("whole", g, 1), ("halves", g // 2, 2)):
        over = [
            f"train.micro_batch_size={micro}",
            f"train.grad_accum_steps={accum}",
            f"train.max_steps={steps}",
        ]
        runs[name] = train(load_config(overrides=tiny_overrides(tmp_path, corpus, name) + extra + over))
    curves = {name: loss_curve(r.run_dir) for name, r in runs.items()}
    assert sorted(curves["whole"]) == list(range(1, steps + 1))
    for step, loss in curves["whole"].items():
        assert curves["halves"][step] == pytest.approx(loss, rel=1e-5), step
    tokens = {}
    for name, r in runs.items():
        rows = [json.loads(line) for line in (r.run_dir / "metrics.jsonl").read_text().splitlines()]
        tokens[name] = [row["train/kd_tokens"] for row in rows if "train/kd_tokens" in row]
    assert tokens["whole"] == tokens["halves"]  # the same blocks at every step


def test_a_run_whose_steps_spanned_epochs_resumes_under_its_own_rule(tmp_path, corpus, monkeypatch):
    """try-out 30: a run of the ekd before steps were drawn from one epoch, with micro-batch × accumulation above
    its blocks with a target (its steps spanned epochs), could not be resumed: the new check refused it and both
    fixes it named are refused by --resume. Its checkpoints record no step_rows: it continues under its own rule,
    exactly as an uninterrupted run of that rule. (The older ekd is emulated: per-batch epoch ends, no step_rows
    in the loader state, only a micro-batch's rows checked.)"""
    from ekd.data.loader import BlockLoader

    extra = ["method=kd", "eval.teacher=false", "train.checkpoint_every=2", "train.grad_accum_steps=4"]
    probe = load_config(overrides=tiny_overrides(tmp_path, corpus, "probe") + extra)
    n = len(prepare_data(probe, tmp_path / "prep").blocks["train"])
    micro = n // 2  # a step of 4 micro-batches takes 2n rows: more than the blocks
    over = [*extra, f"train.micro_batch_size={micro}", "train.max_steps=6"]
    fresh = load_config(overrides=tiny_overrides(tmp_path, corpus, "fresh") + over)
    with pytest.raises(
        ConfigError, match=rf"= {4 * micro} rows per step is more than the {n} training blocks"
    ):
        train(fresh)
    real_init, real_state = BlockLoader.__init__, BlockLoader.state_dict
    real_check, real_step = trainer_mod._check_enough_blocks, trainer_mod.forward_backward

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.step_rows = self.batch_size  # epochs ended per micro-batch

    def killed(micro_batches, student, teacher, parts, step, *args, **kwargs):
        if step == 4:  # after the checkpoint of step 4
            raise KeyboardInterrupt
        return real_step(micro_batches, student, teacher, parts, step, *args, **kwargs)

    with pytest.MonkeyPatch.context() as m:  # the older ekd
        m.setattr(BlockLoader, "__init__", init)
        m.setattr(
            BlockLoader,
            "state_dict",
            lambda self: {k: v for k, v in real_state(self).items() if k != "step_rows"},
        )
        m.setattr(trainer_mod, "_check_enough_blocks", lambda *a: real_check(*a[:5], False))
        expected = loss_curve(
            train(load_config(overrides=tiny_overrides(tmp_path, corpus, "old") + over)).run_dir
        )
        m.setattr(trainer_mod, "forward_backward", killed)
        stopped = load_config(overrides=tiny_overrides(tmp_path, corpus, "old-stopped") + over)
        with pytest.raises(KeyboardInterrupt):
            train(stopped)
    got = loss_curve(train(stopped, resume=True).run_dir)  # resumed by the ekd of today
    assert sorted(got) == list(range(1, 7))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-6), step
