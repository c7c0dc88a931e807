"""Hostile data files (issue 11 item 8): invalid UTF-8 in JSONL is one line naming the line number; a
single huge line without whitespace no longer makes BPE training quadratic (pre-tokens are capped)."""

from __future__ import annotations

import json
import random
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ekd.config import ConfigError, load_config
from ekd.data.documents import load_documents
from ekd.data.tokenizer import MAX_PRETOKEN_CHARS, cap_pretokens, train_bpe_tokenizer


def _jsonl_docs(path):
    cfg = load_config(overrides=[f"data.source={path}", "data.format=jsonl"])
    return list(load_documents(str(path), cfg.data, "jsonl"))


def test_jsonl_with_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "also fine"}\n{"text": "bad \xff\xfe here"}\n')
    with pytest.raises(ConfigError, match=r"d.jsonl line 3: not UTF-8 \(byte 15 of the line\)"):
        _jsonl_docs(path)


def test_jsonl_with_a_lone_surrogate_names_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "half a pair \\ud800"}\n')
    with pytest.raises(ConfigError, match=r"d.jsonl line 2: field 'text' holds an unpaired surrogate"):
        _jsonl_docs(path)


def test_valid_jsonl_still_loads(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": f"doc {i} é ✓"}) + "\n" for i in range(3)))
    assert [d.text for d in _jsonl_docs(path)] == ["doc 0 é ✓", "doc 1 é ✓", "doc 2 é ✓"]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab \n\t.é"), max_size=2000), st.integers(1, 40))
def test_cap_pretokens_keeps_the_text_and_bounds_every_run(text, limit):
    pieces = list(cap_pretokens(text, limit))
    assert "".join(pieces) == text
    assert all(len(run) <= limit for piece in pieces for run in piece.split())


def test_bpe_merges_never_span_more_than_the_cap():
    """A long run without whitespace repeated in training would otherwise merge into tokens of its full
    length (quadratic training); with the cap no token is longer than MAX_PRETOKEN_CHARS bytes."""
    rng = random.Random(0)
    run = "".join(rng.choice(string.ascii_lowercase) for _ in range(3 * MAX_PRETOKEN_CHARS))
    tok = train_bpe_tokenizer([run] * 4 + ["def f(x): return x"], vocab_size=4096)
    longest = max(len(tok.convert_tokens_to_string([t]).encode()) for t in tok.get_vocab())
    assert longest <= MAX_PRETOKEN_CHARS
    assert tok.decode(tok(run).input_ids) == run  # encoding is unchanged by the cap


def test_a_text_directory_skips_binary_files_and_names_them(tmp_path, caplog):
    """Try-out 51: a tar archive is valid UTF-8 (ASCII headers, NUL padding) and was 93% of the training tokens
    (F1); the files skipped as not UTF-8 were counted, never named (F2)."""
    import io
    import logging
    import tarfile

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"doc{i}.txt").write_text(f"a real document number {i}\n")
    with tarfile.open(corpus / "backup.tar", "w") as tar:
        data = b"archived text\n"
        info = tarfile.TarInfo("old.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    (corpus / "dump.dat").write_bytes(b"hello\0\0\0world\0")
    (corpus / "latin1.txt").write_bytes("café naïve ".encode("latin-1"))
    (corpus / "blob.bin").write_bytes(bytes(range(256)))
    cfg = load_config(overrides=[f"data.source={corpus}"])
    with caplog.at_level(logging.DEBUG, logger="ekd"):
        docs = load_documents(str(corpus), cfg.data)
    assert sorted(d.doc_id for d in docs) == ["doc0.txt", "doc1.txt", "doc2.txt"]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        "skipped 4 files that are not text: backup.tar (NUL bytes), blob.bin (not UTF-8), dump.dat (NUL "
        in (warning)
    ), warning
    assert warning.count("(") == 4 and ", …" in warning  # three named, the rest at DEBUG
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any(m.endswith("skipped latin1.txt (not UTF-8)") for m in debug), debug
    for name in ("blob.bin", "latin1.txt"):  # binary files alone: re-encoding is not the fix
        (corpus / name).unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ekd"):
        load_documents(str(corpus), cfg.data)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "skipped 2 files that are not text" in warning and "re-encode" not in warning, warning


def test_a_directory_of_only_binary_files_says_so_not_to_lower_min_chars(tmp_path):
    """Try-out 52, F7: every file skipped as not text ended in 'no documents left after filtering (min_chars=1);
    lower data.min_chars', which cannot help."""
    corpus = tmp_path / "bin"
    corpus.mkdir()
    (corpus / "dump.dat").write_bytes(b"hello\0\0\0world\0")
    (corpus / "latin1.txt").write_bytes("café naïve ".encode("latin-1"))
    for source in (str(corpus), f"{corpus}/*"):
        cfg = load_config(overrides=[f"data.source={source}"])
        with pytest.raises(ConfigError) as e:
            load_documents(source, cfg.data)
        line = str(e.value)
        assert f"data.source {source}: none of its files is text (skipped 2 files: " in line, line
        assert "dump.dat (NUL bytes)" in line and "latin1.txt (not UTF-8)" in line, line
        assert "min_chars" not in line and line.endswith(
            "point data.source at UTF-8 text files, or at JSONL/Parquet rows"
        )


def test_a_text_file_not_in_utf8_names_where_and_the_fix(tmp_path):
    """Try-out 53, F2: a Latin-1 word in a UTF-8 corpus was 'is not UTF-8 text; convert it or set data.format' —
    no place, and data.format is no fix for text in another encoding. The line and byte are named, as the JSONL
    reader names a row's, wherever the chunks of the reader cut the file."""
    from ekd.data.documents import _utf8_error_at

    path = tmp_path / "mixed.txt"
    path.write_bytes(("héllo wörld\n" * 5).encode() + b"abc caf\xe9 x\n" + b"more\n")
    cfg = load_config(overrides=[f"data.source={path}"])
    with pytest.raises(ConfigError) as e:
        load_documents(str(path), cfg.data)
    assert str(e.value) == (
        f"data.source: {path} is not UTF-8 text (line 6, byte 8 of the line: 0xe9); re-encode the file as UTF-8"
    )
    for chunk in (1, 2, 3, 7, 64):  # a 2-byte 'é' cut by a chunk is carried, not reported
        assert _utf8_error_at(path, chunk) == "line 6, byte 8 of the line: 0xe9", chunk
    path.write_bytes(b"ab\n" + "é".encode()[:1])
    assert _utf8_error_at(path, 2) == "line 2: a character cut short at the end of the file"


def test_a_utf8_byte_order_mark_is_not_read_as_text(tmp_path):
    """Try-out 53, F7: a BOM (Excel, Notepad, pandas' utf-8-sig) made JSONL's first row 'not valid JSON ... fix or
    remove the line', and in a text file was trained as the first document's first character."""
    bom = b"\xef\xbb\xbf"
    (tmp_path / "rows.jsonl").write_bytes(bom + b'{"text": "first row"}\r\n{"text": "second row"}\n')
    (tmp_path / "one.txt").write_bytes(bom + b"the quiet text\n\n\nanother document\n")
    corpus = tmp_path / "dir"
    corpus.mkdir()
    (corpus / "a.txt").write_bytes(bom + b"a whole file\n")
    for source, first in (
        ("rows.jsonl", "first row"),
        ("one.txt", "the quiet text"),
        ("dir", "a whole file\n"),
    ):
        path = tmp_path / source
        cfg = load_config(overrides=[f"data.source={path}"])
        docs = load_documents(str(path), cfg.data)
        assert docs[0].text == first and "\ufeff" not in "".join(d.text for d in docs), (source, docs[0].text)


def test_jsonl_files_joined_with_their_byte_order_marks_are_read(tmp_path):
    """Try-out 94, F7: `cat a.jsonl b.jsonl` of two files saved with a BOM put one at a later line's start, which
    was refused as 'not valid JSON (Unexpected UTF-8 BOM ...); fix or remove the line'."""
    bom = b"\xef\xbb\xbf"
    path = tmp_path / "joined.jsonl"
    path.write_bytes(bom + b'{"text": "first file"}\n' + bom + b'{"text": "second file"}\r\n')
    cfg = load_config(overrides=[f"data.source={path}"])
    assert [d.text for d in load_documents(str(path), cfg.data)] == ["first file", "second file"]


def test_a_source_of_one_document_warns_that_no_eval_set_is_scored(tmp_path, caplog):
    """Try-out 53, F3: a source of one document held none out; an INFO line said 'eval set is empty' and the run
    ended with no evaluation (eval.json {}). Now a warning says so and how to get one; naming a set silences it."""
    import logging

    from ekd.data.build import load_splits

    path = tmp_path / "one.txt"
    path.write_text("a single document with no blank-line separators\n" * 20)
    with caplog.at_level(logging.INFO, logger="ekd"):
        splits = load_splits(load_config(overrides=[f"data.source={path}", "data.eval_fraction=0.1"]))
    assert list(splits) == ["train"]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "no document is held out for the eval set (1 document; data.eval_fraction=0.1" in warning, warning
    assert "so this run scores no eval set; name one with data.eval_sources={held_out: FILE}" in warning, (
        warning
    )
    held = tmp_path / "held.txt"
    held.write_text("held out text\n")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ekd"):
        load_splits(load_config(overrides=[f"data.source={path}", f"data.eval_sources={{held: {held}}}"]))
    assert not caplog.records


def test_a_text_file_with_nul_bytes_is_one_line(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"text\0\0\0" + b"\0" * 500)
    cfg = load_config(overrides=[f"data.source={path}"])
    with pytest.raises(ConfigError, match=r"corpus.txt holds NUL bytes: a binary file, not text"):
        load_documents(str(path), cfg.data)


def _notes_with_one_long_document(path, long_chars: int = 5000):
    """A text file named alone: 12 short documents and, among them, one of ``long_chars`` characters."""
    rng = random.Random(0)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 7))) for _ in range(200)]
    docs = [" ".join(rng.choices(words, k=60)) for _ in range(12)]
    docs[5] = (" ".join(rng.choices(words, k=long_chars)))[:long_chars]
    path.write_text("\n\n\n".join(docs) + "\n")
    return path


@pytest.mark.parametrize("store", [False, True])
def test_a_document_over_max_document_chars_is_refused_before_it_is_tokenized(tmp_path, capsys, store):
    """Try-out 98, F1: a 176 MB text file without two blank lines was one document, tokenized whole (~170 B of
    memory per character): the kernel killed ekd at 24 GB with no line. A document over data.max_document_chars
    is refused in one line naming it, in memory and in a token store's build."""
    from hostile import cli, one_error_line
    from tiny import tiny_overrides

    notes = _notes_with_one_long_document(tmp_path / "notes.txt")
    args = tiny_overrides(tmp_path, notes, "long", **{"data.max_document_chars": 2000})
    if store:
        args.append(f"data.store_dir={tmp_path / 'store'}")
    line = one_error_line(*cli(capsys, "distill", "configs/demo.yaml", *args)[::2])
    assert "split's document notes.txt#5 holds 5,000 characters, over data.max_document_chars=2,000" in line
    assert "at ~830.1 KiB of memory" in line and "two or more blank lines" in line
    assert "raise data.max_document_chars" in line
    assert not (tmp_path / "runs" / "long").exists()
    # the same data under the limit trains
    args = tiny_overrides(tmp_path, notes, "long", **{"data.max_document_chars": 5000, "train.max_steps": 1})
    assert cli(capsys, "distill", "configs/demo.yaml", *args)[0] == 0


@pytest.mark.parametrize("store", [False, True])
def test_a_long_document_is_refused_before_a_bpe_tokenizer_trains_on_it(tmp_path, capsys, monkeypatch, store):
    """Try-out 98 F1, the model.tokenizer=train_bpe case: the refusal came after the BPE had trained on the whole
    document (a 44 MB one: 4.6 GB and 1 min 52 s, then the line). The BPE's training texts are checked first."""
    import ekd.data
    from hostile import cli, one_error_line
    from tiny import tiny_overrides

    seen: list[str] = []
    train_bpe = ekd.data.train_bpe_tokenizer

    def spy(texts, *args, **kwargs):
        seen.extend(texts)
        return train_bpe(seen, *args, **kwargs)

    monkeypatch.setattr(ekd.data, "train_bpe_tokenizer", spy)
    notes = _notes_with_one_long_document(tmp_path / "notes.txt")
    # every document on the training side, which the BPE reads
    args = tiny_overrides(
        tmp_path, notes, "long", **{"data.max_document_chars": 2000, "data.eval_fraction": 0}
    )
    if store:
        args.append(f"data.store_dir={tmp_path / 'store'}")
    line = one_error_line(*cli(capsys, "distill", "configs/demo.yaml", *args)[::2])
    assert "document notes.txt#5 holds 5,000 characters" in line
    assert seen and max(len(t) for t in seen) < 2000  # the documents before it, not it


def test_a_text_file_is_searched_for_separators_once(tmp_path, monkeypatch):
    """Try-out 98, F1: the text reader searched the whole unfinished document again for every 1 MiB chunk —
    quadratic in a file without two blank lines (a 176 MB one gave no line for 5 minutes). Each character is
    searched about once now, whatever the chunk size."""
    import ekd.data.documents as documents_mod

    searched = 0
    separator = documents_mod.DOCUMENT_SEPARATOR

    class CountingSeparator:
        def finditer(self, text):
            nonlocal searched
            searched += len(text)
            return separator.finditer(text)

        def __getattr__(self, name):
            return getattr(separator, name)

    monkeypatch.setattr(documents_mod, "DOCUMENT_SEPARATOR", CountingSeparator())
    monkeypatch.setattr(documents_mod, "TEXT_CHUNK_CHARS", 100)
    path = tmp_path / "one.txt"
    path.write_text(("word " * 8 + "\n") * 2000 + "\n\n\n" + "last document\n")  # 82,017 characters
    cfg = load_config(overrides=[f"data.source={path}"])
    docs = load_documents(str(path), cfg.data)
    assert len(docs) == 2 and len(docs[0].text) == 82_000 - 1
    assert searched < 2 * path.stat().st_size, searched


def test_documents_a_tokenizer_reads_none_of_are_said_and_none_at_all_refused_for_what_it_is(caplog):
    """Try-out 147, F1: a tokenizer that turned every document into no token (transformers loaded a custom one
    saved beside a Qwen2 model as Qwen2Tokenizer) left the run "0 tokens, fewer than one block of
    data.block_length: lower it or add data" — advice no setting follows; and such documents among others were
    dropped uncounted."""
    import logging

    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from ekd.config import ConfigError
    from ekd.data.boundary import DocumentBoundary
    from ekd.data.document import Document
    from ekd.data.packing import token_chunks

    backend = Tokenizer(models.WordLevel({"<eos>": 0, "<unk>": 1, "A": 2, "B": 3}, unk_token="<unk>"))
    backend.normalizer = normalizers.Replace(Regex("[a-z]"), "")  # lowercase text reads as nothing
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>")
    boundary = DocumentBoundary("eos", None, 0, 0)
    some = [Document("A B A", "d.txt:1"), Document("quiet words", "d.txt:2"), Document("B B", "d.txt:3")]
    with caplog.at_level(logging.WARNING, logger="ekd"):
        chunks = list(token_chunks(some, tok, boundary, chunk=2))
    assert sum(c.documents for c in chunks) == 2
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "1 of 3 documents gave no token with the run's tokenizer (TokenizersBackend) and are left out "
        "(first: d.txt:2): text it reads none of"
    ], said
    none = [Document("quiet words", "d.txt:1"), Document("more of them", "d.txt:2")]
    with pytest.raises(ConfigError) as e:
        list(token_chunks(none, tok, boundary))
    assert str(e.value).startswith(
        "the run's tokenizer (TokenizersBackend) gives no token for any of its 2 documents (first: d.txt:1): "
        "it reads none of this text; check that model.tokenizer is the models' own"
    ), e.value
