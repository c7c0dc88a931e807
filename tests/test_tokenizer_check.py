"""Whichever tokenizer ``model.tokenizer`` names (the teacher's, the student's or a path), every real model the
run feeds must use it: two different tokenizers are refused in one line, never silently mixed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ekd.config import load_config
from ekd.data import train_bpe_tokenizer
from ekd.errors import ModelError
from ekd.models.load import load_tokenizer
from ekd.train.prepare import prepare_tokenizer
from tiny import WORDS


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory):
    """Two different tiny BPE tokenizers (different corpora and sizes), and a copy of the first."""
    root = tmp_path_factory.mktemp("tokenizers")
    code = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))]
    prose = ["the quick brown fox jumps over the lazy dog " * (i + 1) for i in range(20)]
    dirs = {"a": root / "a", "b": root / "b", "a_copy": root / "a_copy"}
    train_bpe_tokenizer(code, 280, dirs["a"])
    train_bpe_tokenizer(prose, 300, dirs["b"])
    train_bpe_tokenizer(code, 280, dirs["a_copy"])
    return dirs


def _cfg(teacher, student, tokenizer, source="online"):
    return load_config(
        overrides=[
            f"model.teacher={teacher}",
            f"model.student={student}",
            f"model.tokenizer={tokenizer}",
            f"teacher.source={source}",
            *(["method=ce"] if source == "none" else []),
        ]
    )


@pytest.mark.parametrize(
    "named, teacher, student, culprit",
    [
        ("student", "b", "a", "teacher"),  # the student's tokenizer named: the teacher's differs
        ("teacher", "b", "a", "student"),
        ("path", "a", "a_copy", "teacher"),  # a third tokenizer named: both models differ from it
    ],
)
def test_different_tokenizers_are_refused_whichever_is_named(
    tmp_path, tokenizer_dirs, named, teacher, student, culprit
):
    spec = str(tokenizer_dirs["b"]) if named == "path" else named
    cfg = _cfg(tokenizer_dirs[teacher], tokenizer_dirs[student], spec)
    with pytest.raises(ModelError) as e:
        prepare_tokenizer(cfg, tmp_path, None)
    message = str(e.value)
    assert "\n" not in message and "tokenizers differ" in message and culprit in message


@pytest.mark.parametrize("named", ["student", "teacher", "path"])
def test_one_shared_tokenizer_is_accepted(tmp_path, tokenizer_dirs, named):
    spec = str(tokenizer_dirs["a_copy"]) if named == "path" else named
    tok = prepare_tokenizer(_cfg(tokenizer_dirs["a"], tokenizer_dirs["a_copy"], spec), tmp_path, None)
    assert tok.get_vocab() == load_tokenizer(str(tokenizer_dirs["a"])).get_vocab()


def test_an_unused_teacher_is_not_checked(tmp_path, tokenizer_dirs):
    """teacher.source=none (CE only): the teacher is never fed, so its tokenizer does not matter."""
    cfg = _cfg(tokenizer_dirs["b"], tokenizer_dirs["a"], "student", source="none")
    assert (
        prepare_tokenizer(cfg, tmp_path, None).get_vocab()
        == load_tokenizer(str(tokenizer_dirs["a"])).get_vocab()
    )


class _Vocab:
    """What ``check_same_tokenizer`` reads of a tokenizer: its length and its vocabulary."""

    def __init__(self, vocab: dict[str, int]) -> None:
        self.vocab = vocab

    def __len__(self) -> int:
        return len(self.vocab)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)


class Qwen2Tokenizer(_Vocab):  # named as transformers' classes: the message names the classes
    pass


class LlamaTokenizerFast(_Vocab):
    pass


def test_a_refusal_names_the_first_differing_id_its_tokens_and_the_classes():
    """Try-out 4, finding 11: the same tokenizer.json next to a Qwen2 model loads as Qwen2Tokenizer, which adds
    '<|endoftext|>' as id 512; the refusal said only '(513 vs 512 tokens, 1 ids disagree)' — and '0 ids
    disagree' the other way round."""
    from ekd.models.load import check_same_tokenizer

    base = {f"t{i}": i for i in range(512)}
    teacher, student = Qwen2Tokenizer(base | {"<|endoftext|>": 512}), LlamaTokenizerFast(base)
    with pytest.raises(ModelError) as e:
        check_same_tokenizer(teacher, student)
    assert (
        "(513 vs 512 tokens, 1 id differs; first id 512: '<|endoftext|>' in the teacher, none in the student; "
        "Qwen2Tokenizer vs LlamaTokenizerFast)"
    ) in str(e.value)
    with pytest.raises(
        ModelError, match=r"512 vs 513 tokens, 1 id differs; first id 512: none in the student"
    ):
        check_same_tokenizer(student, teacher, ("student", "teacher"))


def test_the_differing_count_does_not_depend_on_direction():
    from ekd.models.load import check_same_tokenizer

    a = _Vocab({f"a{i}": i for i in range(512)})
    b = _Vocab({f"a{i}": i for i in range(300)} | {f"b{i}": i for i in range(300, 600)})
    messages = []
    for x, y in ((a, b), (b, a)):
        with pytest.raises(ModelError) as e:
            check_same_tokenizer(x, y)
        messages.append(str(e.value))
    # ids 300–511 hold other tokens, 512–599 exist on one side only: 300 either way (was 241 vs 329-style)
    assert all("300 ids differ; first id 300: " in m for m in messages), messages


@pytest.mark.parametrize(
    "names, fix",
    [
        (("teacher", "student"), "pick a student from the teacher's family"),
        (("student", "teacher"), "pick a student from the teacher's family"),
        (("model.tokenizer=tok", "student"), "pick a student from the teacher's family"),
        (("model.tokenizer=tok", "teacher"), "point model.tokenizer at the teacher's tokenizer"),
    ],
)
def test_the_refusal_names_the_fix_for_the_side_that_differs(names, fix):
    """Try-out 5: a model.tokenizer the teacher does not match was told to pick another student."""
    from ekd.models.load import check_same_tokenizer

    with pytest.raises(ModelError, match=fix):
        check_same_tokenizer(_Vocab({"a": 0}), _Vocab({"b": 0}), names)


def _model_dir(path, tokenizer_dir, rows: int):
    """A tiny Llama saved with the tokenizer of ``tokenizer_dir`` and a head (and embedding) of ``rows`` rows."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return _tiny_model(path, LlamaConfig, LlamaForCausalLM, tokenizer_dir, rows)


def _no_data(monkeypatch) -> None:
    """Reading the corpus (in memory or through the token store) fails the test."""
    import ekd.data
    import ekd.data.store_build

    def read(*a, **k):
        raise AssertionError("data was read before the models were checked against the tokenizer")

    for module, name in ((ekd.data, "load_splits"), (ekd.data.store_build, "stored_blocks")):
        monkeypatch.setattr(module, name, read)


@pytest.mark.parametrize("store", [False, True])
@pytest.mark.parametrize(
    "student, expected",
    [
        (
            "short",
            "student head has 270 rows but the tokenizer has 280 tokens: the model does not cover the tokenizer; "
            "name a student of that vocabulary (model.student), or (ekd distill) another model.tokenizer",
        ),
        ("other", "teacher and student tokenizers differ (280 vs 289 tokens"),
    ],
)
def test_vocabulary_refusals_come_before_any_data_is_read(
    tmp_path, tokenizer_dirs, monkeypatch, capsys, student, expected, store
):
    """Try-out 10: a student whose head has fewer rows than the tokenizer, or whose tokenizer differs from the
    teacher's, was refused only after the whole corpus was read, tokenized and packed. Both come from the
    tokenizer and config.json files now, before any data (README: a typo costs seconds)."""
    from ekd.cli import main
    from hostile import one_error_line
    from tiny import tiny_overrides, write_corpus

    teacher = _model_dir(tmp_path / "teacher", tokenizer_dirs["a"], 288)  # padded: 8 rows past the tokenizer
    if student == "short":
        student_dir = _model_dir(tmp_path / "student", tokenizer_dirs["a"], 270)
    else:
        student_dir = _model_dir(tmp_path / "student", tokenizer_dirs["b"], 300)
    corpus = write_corpus(tmp_path / "corpus", n_docs=8)
    extra = {"model.teacher": teacher, "model.student": student_dir, "model.tokenizer": "teacher"}
    if store:
        extra["data.store_dir"] = tmp_path / "store"
    _no_data(monkeypatch)
    capsys.readouterr()  # the models' save bars
    line = one_error_line(
        main(["distill", *tiny_overrides(tmp_path, corpus, "v", **extra)]), capsys.readouterr().err
    )
    assert expected in line, line
    assert not (tmp_path / "runs" / "v").exists()


@pytest.mark.slow
def test_ekd_eval_refuses_a_teacher_of_another_tokenizer_before_reading_data(
    tmp_path, tokenizer_dirs, capsys
):
    """``ekd eval RUN model.teacher=X`` compares the student's and X's heads id by id (KL, agreement): a
    teacher of another tokenizer whose head has rows enough was scored silently (KL 0.887 in try-out 10's
    setup); it is refused in one line, before any data is read, and eval.json is left as it was."""
    import json

    from ekd.cli import main
    from hostile import one_error_line
    from tiny import tiny_overrides, write_corpus

    corpus = write_corpus(tmp_path / "corpus", n_docs=12)
    assert main(["-q", "distill", *tiny_overrides(tmp_path, corpus, "r")]) == 0, capsys.readouterr().err
    run = tmp_path / "runs" / "r"
    rows = len(load_tokenizer(str(run / "student")))
    other = _model_dir(tmp_path / "other", tokenizer_dirs["b"], rows + 64)
    before = (run / "eval.json").read_bytes()
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as m:
        _no_data(m)
        rc = main(["eval", str(run), f"model.teacher={other}"])
    line = one_error_line(rc, capsys.readouterr().err)
    assert "student and teacher tokenizers differ" in line and "eval.teacher=false" in line, line
    assert (run / "eval.json").read_bytes() == before
    assert json.loads(before)["eval"]["kl"] >= 0  # the run itself evaluated with its own teacher


@pytest.fixture(scope="module")
def recut_dirs(tmp_path_factory):
    """One tokenizer, saved beside a Qwen2 and beside a Llama config.json: transformers 5 loads it as a
    Qwen2Tokenizer next to the first (its own normalizer and pre-tokenizer: NFC, digits one by one) and as a
    plain byte-level tokenizer next to the second — the same 400 tokens, cut differently."""
    from transformers import LlamaConfig, Qwen2Config

    root = tmp_path_factory.mktemp("recut")
    texts = [f"{i} plus {j} is {i + j}, a naïve café" for i in range(60) for j in range(20)]
    for name, config in (("qwen", Qwen2Config(vocab_size=400)), ("llama", LlamaConfig(vocab_size=400))):
        train_bpe_tokenizer(texts, 400, root / name)
        config.save_pretrained(root / name)
    return root / "qwen", root / "llama"


def test_a_teacher_that_cuts_the_same_vocabulary_another_way_is_refused(
    tmp_path, recut_dirs, monkeypatch, capsys
):
    """Try-out 12: the two tokenizers of ``recut_dirs`` passed the check (same tokens, same ids), so with
    ``model.tokenizer=student`` the Qwen2 teacher scored Llama-style encodings ("57" one id, not two): its
    held-out perplexity went from 20.4 to 2,234 and every KD target came from text cut as it never saw, without
    a word. Refused in one line, before any data is read, naming where the encodings part and the fix."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from ekd.cli import main
    from hostile import one_error_line
    from tiny import tiny_overrides, write_corpus

    qwen, llama = recut_dirs
    teacher = _tiny_model(tmp_path / "teacher", Qwen2Config, Qwen2ForCausalLM, qwen, 400)
    student = _tiny_model(tmp_path / "student", LlamaConfig, LlamaForCausalLM, llama, 400)
    corpus = write_corpus(tmp_path / "corpus", n_docs=8)
    extra = {"model.teacher": teacher, "model.student": student, "model.tokenizer": "student"}
    _no_data(monkeypatch)
    line = one_error_line(
        main(["distill", *tiny_overrides(tmp_path, corpus, "v", **extra)]), capsys.readouterr().err
    )
    assert (
        "student and teacher tokenizers have the same 400 tokens but encode text differently ('2026-12-01:': "
    ) in line, line
    assert "TokenizersBackend vs Qwen2Tokenizer" in line and "model.tokenizer=teacher" in line, line
    assert not (tmp_path / "runs" / "v").exists()


def test_a_student_that_cuts_it_another_way_learns_the_teachers_encodings(tmp_path, recut_dirs, caplog):
    """The student is trained on the named tokenizer's encodings and exported with that tokenizer, so the other
    way round (``model.tokenizer=teacher``) is one warning line, not a refusal."""
    import logging

    qwen, llama = recut_dirs
    with caplog.at_level(logging.WARNING, logger="ekd"):
        tok = prepare_tokenizer(_cfg(qwen, llama, "teacher"), tmp_path, None)
    assert type(tok).__name__ == "Qwen2Tokenizer"
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "teacher and student tokenizers have the same 400 tokens but encode text differently" in warning
    assert "the student is trained on, and exported with, the teacher tokenizer's encodings" in warning


def test_tokenizers_of_the_same_encodings_pass_the_probe(recut_dirs, tmp_path):
    """Guard: the probe flags no pair a user calls the same tokenizer — one tokenizer.json beside two configs of
    the same model_type (a Qwen2 teacher and student), and a tokenizer against its own save_pretrained copy."""
    from transformers import Qwen2Config

    from ekd.models.load import check_same_tokenizer

    qwen, _ = recut_dirs
    twin = tmp_path / "qwen-student"
    load_tokenizer(str(qwen)).save_pretrained(twin)
    Qwen2Config(vocab_size=400, hidden_size=32).save_pretrained(twin)
    teacher, student = load_tokenizer(str(qwen)), load_tokenizer(str(twin))
    assert type(teacher) is type(student)
    check_same_tokenizer(teacher, student)
    teacher.save_pretrained(tmp_path / "copy")
    check_same_tokenizer(teacher, load_tokenizer(str(tmp_path / "copy")))


def test_a_tokenizer_without_eos_is_one_line_naming_where_to_set_it(tmp_path, capsys):
    """Try-out 13: 'the tokenizer has no EOS token: ... set one' named no tokenizer and no place to set it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from ekd.cli import main
    from hostile import one_error_line
    from tiny import tiny_overrides, write_corpus

    words = {w: i for i, w in enumerate(["[UNK]", *sorted(set(WORDS))])}
    backend = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(tmp_path / "no-eos")
    corpus = write_corpus(tmp_path / "corpus", n_docs=8)
    args = tiny_overrides(tmp_path, corpus, "r", **{"model.tokenizer": str(tmp_path / "no-eos")})
    line = one_error_line(main(["distill", *args]), capsys.readouterr().err)
    assert f"the tokenizer (model.tokenizer={tmp_path / 'no-eos'}) has no EOS token" in line, line
    assert '"eos_token" in its tokenizer_config.json' in line, line


def _no_eos_tokenizer(path):
    """A word-level tokenizer of WORDS without an EOS token, saved at ``path``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {w: i for i, w in enumerate(["[UNK]", *sorted(set(WORDS))])}
    backend = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(path)
    return load_tokenizer(str(path))


@pytest.mark.parametrize(
    "separator, fraction, refused",
    [
        ("none", 0.0, ""),
        ("auto", 0.0, ""),  # both models' configs name eos_token_id 1
        ("eos", 0.0, "which data.separator=eos ends each packed document with; "),
        ("bos_eos", 0.0, "which data.separator=bos_eos ends each packed document with; "),
        (
            "none",
            0.5,
            "which method.student_data_fraction=0.5 stops and pads the student's sampled continuations",
        ),
        (  # review 106: both settings that use it are named, not one that the next run refuses for the other
            "eos",
            0.5,
            "set data.separator=none (no end-of-document target) and method.student_data_fraction=0",
        ),
    ],
)
def test_a_tokenizer_without_eos_is_refused_only_where_the_run_uses_one(
    tmp_path, separator, fraction, refused
):
    """Try-out 46, F2: a tokenizer without EOS was refused under data.separator=none (nothing ends a document
    there) and under auto with both models' configs naming eos_token_id, 'ekd ends each packed document with
    one' being false in both."""
    from transformers import LlamaConfig

    from ekd.train.prepare import check_run_tokenizer

    tokenizer = _no_eos_tokenizer(tmp_path / "no-eos")
    for role in ("teacher", "student"):
        LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=16, num_attention_heads=2, eos_token_id=1
        ).save_pretrained(tmp_path / role)
    cfg = _cfg(tmp_path / "teacher", tmp_path / "student", str(tmp_path / "no-eos"))
    cfg.data.separator, cfg.method.student_data_fraction = separator, fraction
    if not refused:
        check_run_tokenizer(cfg, tokenizer)
        return
    with pytest.raises(ModelError) as e:
        check_run_tokenizer(cfg, tokenizer)
    assert refused in str(e.value) and '"eos_token" in its tokenizer_config.json' in str(e.value)


def test_a_run_without_eos_under_separator_none_trains_and_evaluates(tmp_path, capsys):
    """Try-out 46, F2, end to end: the packed stream holds no EOS, the run trains and ekd eval scores it."""
    from ekd.cli import main
    from tiny import tiny_overrides, write_corpus

    _no_eos_tokenizer(tmp_path / "no-eos")
    corpus = write_corpus(tmp_path / "corpus", n_docs=8)
    args = tiny_overrides(
        tmp_path, corpus, "r", **{"model.tokenizer": str(tmp_path / "no-eos"), "data.separator": "none"}
    )
    assert main(["distill", *args, "train.max_steps=1"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "runs" / "r")]) == 0
    out = capsys.readouterr().out  # try-out 47: no 'ppl w/o EOS' column repeating ppl, no EOS in the note
    assert (
        "ppl w/o EOS" not in out
        and "(no end-of-document token between documents is among these sets' scored targets;" in out
    ), out
    assert (
        main(["compare", str(tmp_path / "runs" / "r"), "--out", str(tmp_path / "cmp")]) == 0
    )  # try-out 48, F4
    assert "ppl w/o EOS" not in (tmp_path / "cmp" / "compare.md").read_text()
    assert "ppl_no_boundary" not in (tmp_path / "cmp" / "compare.csv").read_text()  # try-out 49: teacher row


def test_a_student_tokenizer_with_added_tokens_is_told_what_differs(tmp_path):
    """Try-out 13: a student whose tokenizer is the teacher's plus two added special tokens was told to 'pick a
    student from the teacher's family', though it is of that family: the refusal names the added tokens and
    the way on."""
    from ekd.models.load import check_same_tokenizer

    code = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))]
    train_bpe_tokenizer(code, 280, tmp_path / "t")
    teacher, student = load_tokenizer(str(tmp_path / "t")), load_tokenizer(str(tmp_path / "t"))
    student.add_special_tokens({"additional_special_tokens": ["<tool>", "</tool>"]})
    for names, (a, b) in (
        (("teacher", "student"), (teacher, student)),
        (("student", "teacher"), (student, teacher)),
    ):
        with pytest.raises(ModelError) as e:
            check_same_tokenizer(a, b, names)
        assert (
            "the student's is the teacher's plus 2 added tokens ('<tool>', '</tool>'): save the teacher's "
            "tokenizer files into the student's directory if it does not need them"
        ) in str(e.value), str(e.value)


def test_a_model_saved_without_tokenizer_files_reads_the_runs_or_is_one_line(
    tmp_path, tokenizer_dirs, caplog
):
    """Try-out 21: transformers 5 loads a directory without tokenizer files as a one-token tokenizer, so a student
    saved without its tokenizer (the teacher's family) was refused as 'tokenizers differ (1002 vs 1 token)'. It
    reads the named tokenizer (its head is still checked); naming it as the tokenizer is one line with the fix."""
    import logging

    teacher = _model_dir(tmp_path / "teacher", tokenizer_dirs["a"], 280)
    student = _model_dir(tmp_path / "student", tokenizer_dirs["a"], 280)
    for f in student.iterdir():
        if "token" in f.name or f.name in ("vocab.json", "merges.txt", "special_tokens_map.json"):
            f.unlink()
    with caplog.at_level(logging.INFO, logger="ekd"):
        tok = prepare_tokenizer(_cfg(teacher, student, "teacher"), tmp_path, None)
    assert len(tok) == len(load_tokenizer(str(tokenizer_dirs["a"])))
    said = f"model.student: {student} holds no tokenizer files; it reads the run's tokenizer (model.tokenizer=teacher)"
    assert said in caplog.text
    with pytest.raises(ModelError) as e:
        prepare_tokenizer(_cfg(teacher, student, "student"), tmp_path, None)
    assert "\n" not in str(e.value) and f"model.student: {student} holds no tokenizer files" in str(e.value)
    assert "model.tokenizer" in str(e.value)


def _tiny_model(path, config_class, model_class, tokenizer_dir, rows: int):
    """A tiny model of ``config_class`` saved with the tokenizer of ``tokenizer_dir`` and ``rows`` head rows."""
    tok = load_tokenizer(str(tokenizer_dir))
    config = config_class(
        vocab_size=rows,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
    )
    model_class(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.slow
def test_ekd_eval_reads_the_export_with_the_tokenizer_the_run_trained_with(
    tmp_path, recut_dirs, capsys, caplog
):
    """try-out 29: a Qwen2 student trained with a Llama teacher's tokenizer is exported with that tokenizer's
    files, yet transformers 5 loads them as Qwen2Tokenizer next to model_type qwen2 — another pre-tokenizer.
    `ekd eval RUN` read the export that way: it refused the run's own teacher, and with eval.teacher=false
    wrote perplexity 32.3 over the run's 3.24. The run records its tokenizer's class and encodings; ekd eval
    reads the export with them and scores what the run scored; the export says how to load it."""
    import json
    import logging

    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from ekd.cli import main
    from tiny import tiny_overrides

    qwen, llama = recut_dirs
    teacher = _tiny_model(tmp_path / "teacher", LlamaConfig, LlamaForCausalLM, llama, 400)
    student = _tiny_model(tmp_path / "student", Qwen2Config, Qwen2ForCausalLM, llama, 400)
    corpus = tmp_path / "sums.jsonl"
    corpus.write_text(
        "".join(json.dumps({"text": f"{i} plus {j} is {i + j}."}) + "\n" for i in range(40) for j in range(6))
    )
    extra = {
        "model.teacher": teacher,
        "model.student": student,
        "model.tokenizer": "teacher",
        "train.max_steps": 2,
    }
    with caplog.at_level(logging.WARNING, logger="ekd"):
        assert main(["-q", "distill", *tiny_overrides(tmp_path, corpus, "q", **extra)]) == 0, (
            capsys.readouterr().err
        )
    run = tmp_path / "runs" / "q"
    said = [r.getMessage() for r in caplog.records if "AutoTokenizer.from_pretrained" in r.getMessage()]
    assert (
        len(said) == 1 and "as Qwen2Tokenizer" in said[0] and "TokenizersBackend.from_pretrained" in said[0]
    ), said
    marker = json.loads((run / "ekd-run.json").read_text())
    assert marker["tokenizer_class"] == "TokenizersBackend"
    scored = json.loads((run / "eval.json").read_text())
    assert main(["-q", "eval", str(run)]) == 0, capsys.readouterr().err
    again = json.loads((run / "eval.json").read_text())
    for name in ("ppl", "kl", "tokens"):
        assert again["eval"][name] == pytest.approx(scored["eval"][name], rel=1e-6), name
    # a run of an older ekd records no class: the one its export's tokenizer_config.json names (where ekd saved
    # the run's tokenizer) decides — whatever model.tokenizer says at eval time (try-out 31)
    (run / "ekd-run.json").write_text(
        json.dumps(
            {k: v for k, v in marker.items() if not k.startswith("tokenizer_c") and k != "tokenizer_sha256"}
        )
    )
    assert main(["-q", "eval", str(run)]) == 0, capsys.readouterr().err
    assert json.loads((run / "eval.json").read_text())["eval"]["ppl"] == pytest.approx(
        scored["eval"]["ppl"], rel=1e-6
    )
    capsys.readouterr()  # another model.tokenizer is refused: ekd eval never reads it (try-out 75, F5)
    assert main(["-q", "eval", str(run), "model.tokenizer=student", "eval.teacher=false"]) == 2
    assert "model.tokenizer is not read: it scores the run's exported student" in capsys.readouterr().err
    config = json.loads((run / "student" / "tokenizer_config.json").read_text())  # try-out 32: no class there
    (run / "student" / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": None}))
    assert main(["-q", "eval", str(run), "eval.teacher=false"]) == 0, capsys.readouterr()
    assert json.loads((run / "eval.json").read_text())["eval"]["ppl"] == pytest.approx(
        scored["eval"]["ppl"], rel=1e-6
    )
    (run / "student" / "tokenizer_config.json").write_text(json.dumps(config))
    # a class this transformers lacks, and an export without its tokenizer files: one line each, nothing written
    before = (run / "eval.json").read_bytes()
    (run / "ekd-run.json").write_text(json.dumps({**marker, "tokenizer_class": "NoSuchTokenizer"}))
    assert main(["eval", str(run)]) == 2
    assert (
        "was trained with the tokenizer class NoSuchTokenizer, which transformers" in capsys.readouterr().err
    )
    (run / "ekd-run.json").write_text(json.dumps(marker))
    tokenizer_json = (run / "student" / "tokenizer.json").read_bytes()
    (run / "student" / "tokenizer.json").unlink()
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert (
        f"{run / 'student'}: " in err and "put its tokenizer files back" in err and "model.student" not in err
    ), err
    (run / "student" / "tokenizer.json").write_bytes(tokenizer_json)
    assert (run / "eval.json").read_bytes() == before
    # the export's tokenizer files changed after the run: said, nothing written
    load_tokenizer(str(qwen)).save_pretrained(run / "student")  # another tokenizer's files
    assert main(["eval", str(run), "eval.teacher=false"]) == 2
    assert "does not encode as the one the run trained with" in capsys.readouterr().err
    assert (run / "eval.json").read_bytes() == before


def test_the_same_files_loaded_as_another_class_are_named_so(tmp_path):
    """Try-outs 35 (F4) and 42 (F6): a student directory holding the teacher's tokenizer files byte for byte, next
    to a qwen2 config, loads as Qwen2Tokenizer, which adds '<|endoftext|>'; the refusal advised saving the
    teacher's files there — they were. It names the class that adds the token and the fix that works."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from ekd.errors import ModelError
    from ekd.models.load import check_same_tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=280, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    bpe.train_from_iterator(["def f(x): return x + 1\n"] * 20, trainer)
    for name, model_type in (("teacher", "llama"), ("student", "qwen2")):
        PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>").save_pretrained(tmp_path / name)
        (tmp_path / name / "config.json").write_text(json.dumps({"model_type": model_type}))
    teacher, student = (AutoTokenizer.from_pretrained(tmp_path / n) for n in ("teacher", "student"))
    assert type(teacher) is not type(student) and len(student) == len(teacher) + 1
    with pytest.raises(ModelError) as e:
        check_same_tokenizer(teacher, student)
    assert f"which its class {type(student).__name__} adds" in str(e.value), e.value
    assert "remove the tokenizer files from the student's directory" in str(e.value)


def _bpe_dirs(tmp_path, specials, dirs):
    """One byte-level BPE (``specials`` its special tokens, the first its EOS) saved in each of ``dirs``
    (name → (model_type, extra tokens added to that copy)), each beside a config.json of that model_type whose
    head has one row per token of the files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoConfig, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=280, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    bpe.train_from_iterator(["def f(x): return x + 1\n"] * 20, trainer)
    for name, (model_type, extra) in dirs.items():
        tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=specials[0])
        tok.add_tokens(list(extra))
        tok.save_pretrained(tmp_path / name)
        AutoConfig.for_model(model_type, vocab_size=len(tok)).save_pretrained(tmp_path / name)
    return [tmp_path / name for name in dirs]


def test_a_token_in_the_students_files_is_not_blamed_on_its_class(tmp_path):
    """Try-out 44, F5: a student whose tokenizer.json adds '<|newtok|>' (a Llama beside a Qwen2 teacher: two
    classes) was told that its class adds the token; the class adds nothing, the token is in its files."""
    teacher, student = _bpe_dirs(
        tmp_path, ["<eos>", "<|endoftext|>"], {"teacher": ("qwen2", ()), "student": ("llama", ["<|newtok|>"])}
    )
    with pytest.raises(ModelError) as e:
        prepare_tokenizer(_cfg(teacher, student, "teacher"), tmp_path, None)
    message = str(e.value)
    assert "plus 1 added token ('<|newtok|>'), which its tokenizer files hold" in message, message
    assert "its class" not in message and "remove the tokenizer files from the student's directory" in message


def test_a_token_the_teachers_class_adds_is_named_in_the_first_refusal_and_its_fix_works(tmp_path, caplog):
    """Try-out 44, F6: tokenizer files without '<|endoftext|>' beside a Qwen2 teacher load as Qwen2Tokenizer,
    which adds it (id 512 of a 512-row head). The first refusal said 'check model.tokenizer'; naming the files
    alone was refused as another tokenizer. Try-out 56, F1: `model.tokenizer=teacher` (or the teacher's
    directory) was still refused so, while the teacher itself was read as its files alone: a model directory
    named as the tokenizer is now read as the model's own tokenizer, its files alone. Files that load as that
    class where no head says so (no config.json) differ from the teacher's by the class-added token, said so,
    with the advice (model.tokenizer=teacher) that now passes; as do their files alone."""
    import json
    import logging
    import shutil

    from transformers import PreTrainedTokenizerFast

    teacher, student = _bpe_dirs(tmp_path, ["<eos>"], {"teacher": ("qwen2", ()), "student": ("llama", ())})
    rows = len(PreTrainedTokenizerFast.from_pretrained(teacher))
    for named in ("teacher", str(teacher)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="ekd"):
            assert len(prepare_tokenizer(_cfg(teacher, student, named), tmp_path, None)) == rows, named
        assert (
            "which adds '<|endoftext|>' its " + f"{rows}-row head has no row for; its files alone"
            in caplog.text
        )
    classed = tmp_path / "classed"  # the teacher's tokenizer files, no config.json, declaring Qwen2Tokenizer
    classed.mkdir()
    for f in teacher.glob("tokenizer*.json"):
        shutil.copy(f, classed)
    config = json.loads((classed / "tokenizer_config.json").read_text())
    (classed / "tokenizer_config.json").write_text(json.dumps(config | {"tokenizer_class": "Qwen2Tokenizer"}))
    with pytest.raises(ModelError) as e:
        prepare_tokenizer(_cfg(teacher, student, str(classed)), tmp_path, None)
    message = str(e.value)
    assert (
        f"first id {rows}: '<|endoftext|>' in the model.tokenizer={classed}, none in the teacher" in message
    )
    assert message.endswith("point model.tokenizer at the teacher's tokenizer (model.tokenizer=teacher)")
    PreTrainedTokenizerFast.from_pretrained(classed).save_pretrained(tmp_path / "alone")  # its files alone
    for named in (str(tmp_path / "alone"), "student"):
        with caplog.at_level(logging.INFO, logger="ekd"):
            assert len(prepare_tokenizer(_cfg(teacher, student, named), tmp_path, None)) == rows


def test_a_padded_qwen2_students_class_added_token_is_not_another_tokenizer(tmp_path, caplog):
    """Try-out 53, F4: a Qwen2-type student with a padded head (rows past its tokenizer) and the run's tokenizer
    files byte for byte loads as Qwen2Tokenizer, which adds '<|endoftext|>' — a token its padded head has a row
    for — and was refused as another tokenizer with 'pick a student from the teacher's family'. Its files alone
    are the run's tokenizer: taken, with an info line; files that differ are still refused."""
    import logging

    from transformers import AutoConfig, PreTrainedTokenizerFast

    teacher, student = _bpe_dirs(tmp_path, ["<eos>"], {"teacher": ("llama", ()), "student": ("qwen2", ())})
    rows = len(PreTrainedTokenizerFast.from_pretrained(teacher))
    AutoConfig.for_model("qwen2", vocab_size=rows + 48).save_pretrained(student)  # a padded head
    with caplog.at_level(logging.INFO, logger="ekd"):
        assert len(prepare_tokenizer(_cfg(teacher, student, "teacher"), tmp_path, None)) == rows
    assert (
        "model.student: its tokenizer loads as Qwen2Tokenizer, which adds '<|endoftext|>' beyond its files"
        in (caplog.text)
    )
    other = _bpe_dirs(tmp_path / "x", ["<eos>"], {"student": ("qwen2", ["<|newtok|>"])})[0]
    AutoConfig.for_model("qwen2", vocab_size=rows + 48).save_pretrained(other)
    with pytest.raises(ModelError, match="tokenizers differ"):
        prepare_tokenizer(_cfg(teacher, other, "teacher"), tmp_path, None)


def test_a_hub_tokenizers_files_alone_are_read_at_its_revision(tmp_path):
    """Review 106, item 14: the files alone of a tokenizer loaded at ``model.revision`` were read at the default
    branch; where both are in the hub cache and differ, the class-added tokens were another snapshot's. In a
    fresh process, as a user's run reads HF_HUB_CACHE from the environment."""
    import subprocess
    import sys

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    repo = tmp_path / "hub" / "models--someorg--tok"
    for ref, commit, extra in (("main", "a" * 40, []), ("v1", "b" * 40, ["zeta", "omega"])):
        words = {w: i for i, w in enumerate(["[UNK]", "<eos>", *sorted(set(WORDS)), *extra])}
        backend = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
        backend.pre_tokenizer = pre_tokenizers.Whitespace()
        tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="<eos>")
        tok.save_pretrained(repo / "snapshots" / commit)
        (repo / "snapshots" / commit / "config.json").write_text(
            '{"model_type": "llama"}'
        )  # AutoTokenizer reads it
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HTTP", "ALL_PROXY", "all_proxy"))}
    env |= {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": "src"}
    script = (
        "from ekd.models.load import file_tokenizer, load_tokenizer\n"
        "tok = load_tokenizer('someorg/tok', 'v1')\n"
        "print(len(tok), len(file_tokenizer(tok)), len(file_tokenizer(load_tokenizer('someorg/tok'))))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert run.returncode == 0, run.stderr[-2000:]
    v1, v1_alone, main_alone = map(int, run.stdout.split())
    assert v1 == v1_alone == main_alone + 2, run.stdout


def test_a_bad_model_tokenizer_is_told_what_model_tokenizer_takes(tmp_path, capsys):
    """Try-out 51, F6: a missing model.tokenizer path was told '(no config.json); pass ... preset:<name>', and a
    preset, so passed, was 'not a valid hub id'."""
    from ekd.cli import main

    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    takes = "or teacher, student or train_bpe"
    for spec, says in (
        (f"{tmp_path}/missing", "missing does not exist; pass a hub id, a directory holding tokenizer files"),
        (str(tmp_path / "empty"), "empty is empty (no tokenizer.json or tokenizer_config.json)"),
        (
            str(tmp_path / "junk"),
            "junk is no tokenizer directory (no tokenizer.json or tokenizer_config.json)",
        ),
        ("preset:llama-tiny", "'preset:llama-tiny' is a model preset, not a tokenizer"),
    ):
        assert main(["distill", f"model.tokenizer={spec}", f"run.output_dir={tmp_path / 'runs'}"]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("ekd: error: model.tokenizer: ") and says in line, line
        assert "(no config.json)" not in line and "preset:<name>" not in line, line
        assert takes in line or "name teacher, student, train_bpe" in line, line


def test_a_malformed_json_file_of_a_model_directory_is_named_with_the_fix(tmp_path, capsys):
    """Try-out 52, F6: a tokenizer.json that is not JSON was 'cannot load a tokenizer from DIR (Expecting value:
    line 1 column 1 (char 0))' (neither file nor fix); a broken config.json was told to check the network."""
    from ekd.cli import main

    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("garbage {")
    (tok / "tokenizer_config.json").write_text("{}")
    student = tmp_path / "student"
    student.mkdir()
    (student / "config.json").write_text('{"model_type": "llama",')
    (student / "model.safetensors").write_bytes(b"")
    (student / "tokenizer_config.json").write_text("{}")
    for over, names in (
        ([f"model.tokenizer={tok}"], "model.tokenizer: cannot load a tokenizer from '{}': tokenizer.json is"),
        ([f"model.student={student}", "model.tokenizer=student"], "model.student: cannot load"),
    ):
        assert main(["distill", *over, f"run.output_dir={tmp_path / 'runs'}"]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert names.format(tok) in line, line
        assert (
            "is not valid JSON (" in line and "; replace that file (save_pretrained writes it again)" in line
        )
        assert "network" not in line, line
    assert not (tmp_path / "runs").exists()


def test_a_preset_models_tokenizer_falls_back_to_the_real_model_either_way_round():
    """Try-out 52, F4: model.tokenizer=student with a preset student beside a real teacher was refused as
    'model.tokenizer=train_bpe needs preset models', a value the user never typed."""
    from ekd.train.prepare import tokenizer_source

    for named, student, teacher, source in (
        ("student", "preset:llama-micro", "/models/t", "teacher"),
        ("teacher", "/models/s", "preset:llama-tiny", "student"),
        ("student", "preset:llama-micro", "preset:llama-tiny", "train_bpe"),
        ("teacher", "preset:llama-micro", "preset:llama-tiny", "train_bpe"),
        ("student", "/models/s", "/models/t", "student"),
    ):
        cfg = load_config(
            None, [f"model.tokenizer={named}", f"model.student={student}", f"model.teacher={teacher}"]
        )
        assert tokenizer_source(cfg) == source, (named, student, teacher)
