"""Tests of ekd.data: sources, tokenizer, packing, the label shift, the resumable loader, pystdlib."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from ekd.config import Config, ConfigError, DataConfig
from ekd.data import (
    IGNORE_INDEX,
    BlockLoader,
    Document,
    PackedBlocks,
    collate,
    held_out_keys,
    iter_eval,
    load_documents,
    load_splits,
    pack_documents,
    pack_splits,
    pystdlib_splits,
    stable_unit,
    tokenizer_hash,
    train_bpe_tokenizer,
)
from ekd.data.pystdlib import module_of

EOS = "<|endoftext|>"
WORDS = ["a", "b", "c", "p", "q", "x", "y", "z"]


@pytest.fixture(scope="module")
def word_tok() -> PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer: eos=0, unk=1, a=2, b=3, c=4, p=5, q=6, x=7, y=8, z=9."""
    vocab = {EOS: 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, pad_token=EOS, unk_token="<unk>")


def ids(word_tok: PreTrainedTokenizerFast, text: str) -> list[int]:
    return word_tok(text, add_special_tokens=False)["input_ids"]


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------------------


def test_text_file_splits_on_two_blank_lines_only(tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("first para\n\nstill doc one\n\n\nsecond doc\n\n \n\n\nthird doc\n")
    docs = load_documents(str(f), DataConfig())
    assert [d.text for d in docs] == ["first para\n\nstill doc one", "second doc", "third doc"]
    assert [d.doc_id for d in docs] == ["notes.txt#0", "notes.txt#1", "notes.txt#2"]
    assert all(d.prompt == "" for d in docs)


def test_directory_one_document_per_file_sorted_recursive(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "b.txt").write_text("bee")
    (root / "a.txt").write_text("ay")
    (root / "sub" / "c.md").write_text("see\n\n\nstill c")  # files are never split
    (root / ".hidden").write_text("secret")
    (root / "binary.bin").write_bytes(b"\xff\xfe\x00bad")
    docs = load_documents(str(root), DataConfig())
    assert [d.doc_id for d in docs] == ["a.txt", "b.txt", "sub/c.md"]
    assert docs[2].text == "see\n\n\nstill c"


def _ekd_outputs_below(root: Path) -> None:
    """A run directory (with its metrics and exported student), a teacher cache and a token store under ``root``."""
    run = root / "runs" / "r1"
    (run / "student").mkdir(parents=True)
    (run / "ekd-run.json").write_text('{"format": "ekd-run"}')
    (run / "config.yaml").write_text("run: {name: r1}\n")
    (run / "metrics.jsonl").write_text('{"step": 1, "train/loss": 2.5}\n')
    (run / "student" / "tokenizer.json").write_text('{"model": {}}')
    old_run = root / "runs" / "r0"  # an older ekd's run directory: no ekd-run.json
    old_run.mkdir()
    (old_run / "config.yaml").write_text("run: {name: r0}\n")
    (old_run / "metrics.jsonl").write_text('{"step": 1}\n')
    (root / "cache").mkdir()
    (root / "cache" / "manifest.json").write_text('{"format": "ekd-teacher-cache", "signature": {}}')
    store = root / "runs" / "token-store" / "abc123"
    store.mkdir(parents=True)
    (store / "tokens.u32").write_bytes(b"A\x00\x00\x00")  # valid UTF-8, like most token files
    (store / "manifest.json").write_text('{"format": 1}')


def test_directory_skips_ekd_outputs_and_row_files_and_says_what_it_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A corpus directory holding run.output_dir, a cache and JSONL files reads its text files only, and one
    info line names the files read by extension and what was skipped."""
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("ay")
    (root / "b.py").write_text("print('bee')")
    (root / "sub" / "c.md").write_text("see")
    (root / "notes.yaml").write_text("key: value")  # text in an unknown format: read, and shown in the line
    (root / "rows.jsonl").write_text('{"text": "a row"}\n')
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main")
    _ekd_outputs_below(root)
    with caplog.at_level("INFO", logger="ekd.data.documents"):
        docs = load_documents(str(root), DataConfig())
    assert [d.doc_id for d in docs] == ["a.txt", "b.py", "notes.yaml", "sub/c.md"]
    (line,) = [r.getMessage() for r in caplog.records if "files (" in r.getMessage()]
    assert line.startswith(
        f"data.source={root}: 4 files (.txt 1, .py 1, .yaml 1, .md 1; first: a.txt, b.py, "
    )
    for skipped in (
        "4 ekd output directories",
        "cache (teacher cache)",
        "runs/r0 (run directory)",
        "runs/r1 (run directory)",
        f"1 row file (.jsonl 1: read their rows with data.source='{root}/*.jsonl')",
    ):
        assert skipped in line, line


def test_a_source_that_is_or_lies_in_an_ekd_output_is_refused(tmp_path: Path) -> None:
    """Try-out 52, F9: outputs *below* a source were left out, but ``data.source=runs/kd-s0`` (the run itself, a
    swap of model.student and data.source) trained on its tokenizer.json, manifests and config.yaml; a
    comparison directory on its tables. Each is refused in one line naming the output and its kind."""
    _ekd_outputs_below(tmp_path)
    compare = tmp_path / "cmp"
    compare.mkdir()
    (compare / "compare.json").write_text('{"format": "ekd-compare"}')
    (compare / "compare.md").write_text("| method |")
    for source, says in (
        ("runs/r1", "runs/r1 is a run directory ekd wrote, not data"),
        ("runs/r0", "runs/r0 is a run directory ekd wrote, not data"),
        ("runs/r1/student", f"runs/r1/student lies in {tmp_path / 'runs/r1'}, which is a run directory"),
        ("runs/r1/metrics.jsonl", "lies in"),
        ("runs/r1/*", f"runs/r1/* reads {tmp_path / 'runs/r1'}, which is a run directory"),
        ("cache", "cache is a teacher cache ekd wrote"),
        ("runs/token-store/abc123", "abc123 is a token store ekd wrote"),
        ("cmp", "cmp is a comparison ekd wrote"),
        ("cmp/*.md", "which is a comparison"),
        # try-out 54, F7: datasets' load_dataset read a run's eval.json as rows
        ("hf:RUN", "is a run directory ekd wrote, not data"),
        ("hf:CACHE", "is a teacher cache ekd wrote"),
    ):
        source = source.replace("RUN", str(tmp_path / "runs/r1")).replace("CACHE", str(tmp_path / "cache"))
        with pytest.raises(ConfigError) as e:
            load_documents(source if source.startswith("hf:") else f"{tmp_path}/{source}", DataConfig())
        assert says in str(e.value) and str(e.value).endswith(
            "point data.source at your corpus (text files, JSONL or Parquet rows)"
        ), str(e.value)
    (tmp_path / "runs" / "notes.txt").write_text(
        "a corpus beside the runs is read"
    )  # outputs below: left out
    assert [d.doc_id for d in load_documents(str(tmp_path / "runs"), DataConfig())] == ["notes.txt"]
    (tmp_path / "runs" / "notes.txt").unlink()
    with pytest.raises(ConfigError, match=r"it holds only ekd's own outputs \(r0 \(run directory\), r1 "):
        load_documents(str(tmp_path / "runs"), DataConfig())


def test_text_directory_reads_and_signs_as_before(tmp_path: Path) -> None:
    """A directory of .py/.txt/.md files (with a hidden file) reads the same files as the old rule, and its
    token-store source signature is the old one; ekd outputs written below it later change neither."""
    import hashlib

    from ekd.data.store_build import source_signature

    root = tmp_path / "corpus"
    (root / "pkg").mkdir(parents=True)
    for name, text in [("z.py", "z = 1"), ("pkg/m.py", "m = 2"), ("readme.md", "# r"), ("t.txt", "t")]:
        (root / name).write_text(text)
    (root / ".hidden").write_text("secret")

    def old_signature() -> dict:  # source_signature before ekd outputs were left out of it
        files = sorted(p for p in root.rglob("*") if p.is_file())
        h = hashlib.sha256()
        for f in files:
            st = f.stat()
            h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return {"source": str(root), "files": len(files), "stat": h.hexdigest()}

    old_files = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    before = source_signature(str(root))
    assert before == old_signature()
    assert [d.doc_id for d in load_documents(str(root), DataConfig())] == old_files
    _ekd_outputs_below(root)
    assert source_signature(str(root)) == before  # a run writing below the corpus does not rebuild its store
    assert [d.doc_id for d in load_documents(str(root), DataConfig())] == old_files


def _token_store(root: Path, key: str, partial: bool = False) -> None:
    """A token store under ``root`` as ekd.data.store_build writes it: ``<key>/`` (manifest, split files) and
    the ``<key>.lock`` of the build that holds it (a pid), or a build under way (``<key>.partial/``)."""
    directory = root / (f"{key}.partial" if partial else key)
    (directory / "split-0").mkdir(parents=True)
    (directory / "split-0" / "tokens.u32").write_bytes(b"A\x00\x00\x00")
    if not partial:
        manifest = {"format": 1, "signature": {"data": {}}, "block_length": 16, "splits": []}
        (directory / "manifest.json").write_text(json.dumps(manifest))
    (root / f"{key}.lock").write_text("4242\n")


def test_a_token_store_below_a_directory_is_skipped_whole(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """data.store_dir inside the corpus: its manifest.json and <key>.lock were read as documents (only split-*
    folders were recognised), so the store's own signature changed on every run."""
    from ekd.data.text_dir import list_directory, signed_files

    root = tmp_path / "corpus"
    root.mkdir()
    (root / "a.txt").write_text("ay")
    plain = signed_files(root)
    _token_store(root / "stores", "0123456789abcdef")
    _token_store(root / "stores", "fedcba9876543210", partial=True)
    listing = list_directory(root)
    assert listing.files == [root / "a.txt"]
    assert listing.outputs == [(root / "stores", "token store")]
    assert signed_files(root) == plain
    # a store root that also holds the user's files: those are read, the stores and their locks are not
    (root / "stores" / "notes.txt").write_text("mine")
    assert list_directory(root).files == [root / "a.txt", root / "stores" / "notes.txt"]
    assert signed_files(root) == [root / "a.txt", root / "stores" / "notes.txt"]
    with caplog.at_level("INFO", logger="ekd.data.documents"):
        assert [d.doc_id for d in load_documents(str(root), DataConfig())] == ["a.txt", "stores/notes.txt"]
    assert "2 ekd lock files" in caplog.text


def test_lock_files_are_neither_read_nor_signed(tmp_path: Path) -> None:
    """ekd's lock files (a pid in <name>.lock: run, cache and store locks) are left out of what is read and of
    the token store's signature; a user's *.lock file with other content is kept."""
    from ekd.data.store_build import source_signature

    root = tmp_path / "corpus"
    (root / "runs").mkdir(parents=True)
    (root / "a.txt").write_text("ay")
    (root / "yarn.lock").write_text("# yarn lockfile v1\n")
    before = source_signature(str(root))
    locks = [root / "runs" / ".r1.lock", root / ".cache.lock", root / "0123456789abcdef.lock"]
    for i, lock in enumerate(locks):
        lock.write_text(f"{1000 + i}\n" if i else "")  # being taken: still empty
        assert source_signature(str(root)) == before
    locks[0].write_text("99999\n")  # another run's pid
    assert source_signature(str(root)) == before
    assert [d.doc_id for d in load_documents(str(root), DataConfig())] == ["a.txt", "yarn.lock"]
    from ekd.data.text_dir import is_lock_file

    assert all(is_lock_file(lock) for lock in locks) and not is_lock_file(root / "yarn.lock")


def test_a_run_moved_aside_by_overwrite_is_not_signed(tmp_path: Path) -> None:
    """--overwrite moves the previous run to the hidden runs/.<name>.replaced while the new one prepares its
    data: an ekd output, left out of the signature although hidden."""
    from ekd.data.store_build import source_signature

    root = tmp_path / "corpus"
    root.mkdir()
    (root / "a.txt").write_text("ay")
    before = source_signature(str(root))
    aside = root / "runs" / ".r1.replaced"
    (aside / "checkpoints").mkdir(parents=True)
    (aside / "ekd-run.json").write_text('{"format": "ekd-run"}')
    (aside / "checkpoints" / "latest").write_text("step-000001")
    assert source_signature(str(root)) == before


def test_glob_of_text_files(tmp_path: Path) -> None:
    for name, text in [("2.txt", "two"), ("1.txt", "one"), ("skip.md", "nope")]:
        (tmp_path / name).write_text(text)
    docs = load_documents(str(tmp_path / "*.txt"), DataConfig())
    assert [d.text for d in docs] == ["one", "two"]
    with pytest.raises(ConfigError, match="matches no files"):
        load_documents(str(tmp_path / "*.nothing"), DataConfig())


def test_glob_of_jsonl_files_reads_their_rows_as_naming_each_file_would(tmp_path: Path) -> None:
    """data.source='shards/*.jsonl' read each file as one text document, {"text": ...} markup included."""
    shards = tmp_path / "shards"
    shards.mkdir()
    write_jsonl(shards / "a.jsonl", [{"text": "one"}, {"text": "two"}])
    write_jsonl(shards / "b.jsonl", [{"text": "three"}])
    (shards / "c.txt").write_text("plain\n\n\nstill plain")  # a text file: one document, as in a directory
    data = DataConfig()
    each = [load_documents(str(shards / n), data) for n in ("a.jsonl", "b.jsonl")]
    docs = load_documents(str(shards / "*.jsonl"), data)
    assert docs == each[0] + each[1]
    assert [d.text for d in docs] == ["one", "two", "three"]
    mixed = load_documents(str(shards / "*"), data)
    assert [d.text for d in mixed] == ["one", "two", "three", "plain\n\n\nstill plain"]
    raw = load_documents(str(shards / "*.jsonl"), DataConfig(format="text"))  # data.format forces one
    assert [d.text for d in raw][0].startswith('{"text": "one"}')


def test_glob_skips_ekd_outputs_and_lock_files(tmp_path: Path) -> None:
    """'corpus/**/*.json' read the teacher cache's and the runs' manifests."""
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "mine.json").write_text('{"mine": 1}')
    _ekd_outputs_below(root)
    _token_store(root / "stores", "0123456789abcdef")
    (root / "0123456789abcdef.lock").write_text("77\n")
    docs = load_documents(str(root / "**" / "*.json"), DataConfig())
    assert [d.doc_id for d in docs] == [str(root / "sub" / "mine.json")]
    assert len(load_documents(str(root / "**" / "*"), DataConfig())) == 1
    with pytest.raises(ConfigError, match="matches no files outside ekd's own outputs"):
        load_documents(str(root / "runs" / "*" / "*.jsonl"), DataConfig())


def test_a_directory_of_row_files_only_points_to_the_glob(tmp_path: Path) -> None:
    rows = tmp_path / "rows"
    rows.mkdir()
    write_jsonl(rows / "a.jsonl", [{"text": "one"}])
    with pytest.raises(ConfigError, match=f"read their rows with data.source='{rows}/\\*.jsonl'$"):
        load_documents(str(rows), DataConfig())
    assert [d.text for d in load_documents(f"{rows}/*.jsonl", DataConfig())] == ["one"]


def test_jsonl_text_field_and_filters(tmp_path: Path) -> None:
    f = write_jsonl(
        tmp_path / "d.jsonl", [{"body": "long enough"}, "", {"body": "tiny"}, {"body": "also long"}]
    )
    docs = load_documents(str(f), DataConfig(text_field="body", min_chars=5))
    assert [(d.text, d.doc_id) for d in docs] == [("long enough", "d.jsonl:1"), ("also long", "d.jsonl:4")]
    assert len(load_documents(str(f), DataConfig(text_field="body", max_documents=2))) == 2


def test_whitespace_only_rows_are_not_documents(tmp_path: Path, caplog) -> None:
    """Try-out 11: a row of only spaces and newlines passed data.min_chars=1 and was packed (and counted in an
    eval set's documents) as a document of whitespace tokens. min_chars=0 still keeps every row but an empty one
    (try-out 14: it was counted among the documents read, then had no token to pack, without a word)."""
    f = write_jsonl(
        tmp_path / "d.jsonl", [{"text": "   "}, {"text": "\n\t\n"}, {"text": " a "}, {"text": "two words"}]
    )
    with caplog.at_level(logging.INFO, logger="ekd"):
        docs = load_documents(str(f), DataConfig())
    assert [d.doc_id for d in docs] == ["d.jsonl:3", "d.jsonl:4"]
    # try-out 13: "5 files" then "3 documents", without a word on the 2 dropped
    assert (
        f"data.source={f}: 2 documents dropped (shorter than data.min_chars=1, or only whitespace)"
        in caplog.text
    )
    assert len(load_documents(str(f), DataConfig(min_chars=0))) == 4
    with_empty = write_jsonl(tmp_path / "e.jsonl", [{"text": ""}, {"text": "  "}, {"text": "x"}])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ekd"):
        kept = load_documents(str(with_empty), DataConfig(min_chars=0))
    assert [d.doc_id for d in kept] == ["e.jsonl:2", "e.jsonl:3"]
    assert f"data.source={with_empty}: 1 document dropped (empty)" in caplog.text
    chat = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "\n"}]},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        ],
    )
    assert [d.doc_id for d in load_documents(str(chat), DataConfig(format="chat"))] == ["c.jsonl:2"]


def test_jsonl_prompt_response_masks_prompt_exactly(
    tmp_path: Path, word_tok: PreTrainedTokenizerFast
) -> None:
    f = write_jsonl(tmp_path / "sft.jsonl", [{"q": "p q", "a": "x y"}, {"q": "p", "a": "a b c"}])
    docs = load_documents(str(f), DataConfig(prompt_field="q", response_field="a"))
    assert docs[0] == Document(text="x y", doc_id="sft.jsonl:1", prompt="p q")
    blocks = pack_documents(docs, word_tok, block_length=10)
    # stream: p q x y EOS | p a b c EOS  (prompt tokens and first tokens are never targets)
    assert blocks.input_ids.tolist() == [[5, 6, 7, 8, 0, 5, 2, 3, 4, 0]]
    assert blocks.target_mask.tolist() == [[False, False, True, True, True, False, True, True, True, True]]
    labels = collate(blocks, torch.tensor([0])).labels
    # labels[t] is token t+1 when that token is a target: q (prompt) is not, x is, the next doc's p is not
    assert labels.tolist() == [[-100, 7, 8, 0, -100, 2, 3, 4, 0, -100]]


def test_conversations_read_as_text_are_told_to_set_the_chat_format(tmp_path: Path) -> None:
    """Try-out 68, F2: chat rows read without data.format=chat were told to set data.text_field (to the
    conversations, which is not text)."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    f = write_jsonl(tmp_path / "chat.jsonl", [{"messages": messages}])
    g = tmp_path / "chat.parquet"
    pq.write_table(pa.table({"messages": [messages]}), g)
    for path, said in ((f, "line 1: missing field 'text' (row keys: messages)"), (g, "no column 'text'")):
        with pytest.raises(ConfigError) as e:
            load_documents(str(path), DataConfig())
        assert said in str(e.value), e.value
        assert str(e.value).endswith(
            "set data.format=chat to read its 'messages' as conversations, or set data.text_field"
        ), e.value
    assert load_documents(str(f), DataConfig(format="chat"))[0].messages  # the fix named reads them


def test_parquet_text_and_prompt_response(tmp_path: Path, word_tok: PreTrainedTokenizerFast) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    f = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["a b", "c"], "q": ["p", "q"], "a": ["x", "y z"]}), f)
    docs = load_documents(str(f), DataConfig())
    assert [(d.text, d.doc_id) for d in docs] == [("a b", "d.parquet:0"), ("c", "d.parquet:1")]
    pairs = load_documents(str(f), DataConfig(prompt_field="q", response_field="a"))
    assert [(d.prompt, d.text) for d in pairs] == [("p", "x"), ("q", "y z")]
    with pytest.raises(ConfigError, match=r"no column 'body'.*data\.text_field"):
        load_documents(str(f), DataConfig(text_field="body"))


def test_hf_dataset_saved_to_disk(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "ds"
    datasets.Dataset.from_dict({"text": ["one doc", "two doc"], "n": [1, 2]}).save_to_disk(str(path))
    docs = load_documents(f"hf:{path}", DataConfig())
    assert [(d.text, d.doc_id) for d in docs] == [("one doc", "ds:0"), ("two doc", "ds:1")]
    dd_path = tmp_path / "dd"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["t"]}),
            "validation": datasets.Dataset.from_dict({"text": ["v"]}),
        }
    ).save_to_disk(str(dd_path))
    assert [d.text for d in load_documents(f"hf:{dd_path}", DataConfig(hf_split="validation"))] == ["v"]
    with pytest.raises(ConfigError, match="data.hf_split.*no split 'test'"):
        load_documents(f"hf:{dd_path}", DataConfig(hf_split="test"))
    # try-out 94, F3: named without hf:, the directory was read as text files (dataset_info.json and state.json
    # trained, the rows' .arrow file passed over as not UTF-8)
    # try-out 95, F1: one level down, in a directory or a glob, it was still read as text
    parent = tmp_path / "par"
    parent.mkdir()
    (parent / "a.txt").write_text("a text")
    path.rename(parent / "ds")
    for source in (str(parent), f"{parent}/**/*"):
        with pytest.raises(
            ConfigError, match=f"holds a Hugging Face datasets directory, {parent / 'ds'} .*hf:"
        ):
            load_documents(source, DataConfig())
    (parent / "ds").rename(path)
    for saved in (path, dd_path):
        for fmt in ("auto", "text"):
            with pytest.raises(
                ConfigError, match=f"is a Hugging Face datasets directory .*name it hf:{saved} to read"
            ):
                load_documents(str(saved), DataConfig(format=fmt))


# ---------------------------------------------------------------------------------------------------------
# Source errors: one line, naming the problem and the fix
# ---------------------------------------------------------------------------------------------------------


def test_error_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.source: no such file or directory: .*nope\.jsonl"):
        load_documents(str(tmp_path / "nope.jsonl"), DataConfig())


def test_error_bad_json_names_line(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "d.jsonl", [{"text": "ok"}, '{"text": "broken'])
    with pytest.raises(ConfigError, match=r"line 2: not valid JSON \(.+ at column [0-9]+\)") as e:
        load_documents(str(f), DataConfig())
    assert "\n" not in str(e.value)  # and the position stays in it (it was cut at "at": try-out 6)


def test_error_missing_field_names_line_and_field(tmp_path: Path) -> None:
    """A row without the field after rows that had it is that row's fault (try-out 12: 1 of 428 rows lacked
    'text' and the fix named was data.text_field); in the first row it is the field name's."""
    f = write_jsonl(tmp_path / "d.jsonl", [{"text": "ok"}, {"text": "fine"}, {"body": "x"}])
    with pytest.raises(ConfigError) as e:
        load_documents(str(f), DataConfig())
    assert str(e.value).endswith(
        "line 3: missing field 'text' (row keys: body); the 2 rows before it have it: fix or remove the line"
    ), str(e.value)
    f = write_jsonl(tmp_path / "b.jsonl", [{"body": "x"}, {"text": "ok"}])
    with pytest.raises(ConfigError, match=r"line 1: missing field 'text'.*; set data\.text_field"):
        load_documents(str(f), DataConfig())
    g = write_jsonl(tmp_path / "p.jsonl", [{"q": "p"}])
    with pytest.raises(ConfigError, match=r"line 1: missing field 'a'.*data\.response_field"):
        load_documents(str(g), DataConfig(prompt_field="q", response_field="a"))
    h = write_jsonl(tmp_path / "n.jsonl", [{"text": None}])
    with pytest.raises(ConfigError, match=r"line 1: field 'text' must be a string, got null"):
        load_documents(str(h), DataConfig())


def test_error_empty_after_filtering(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "d.jsonl", [{"text": "ab"}, {"text": "cd"}])
    with pytest.raises(ConfigError, match=r"no documents left after filtering \(min_chars=10\)"):
        load_documents(str(f), DataConfig(min_chars=10))


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("empty.jsonl", "", "the file is empty (0 bytes)"),
        ("empty.txt", "", "the file is empty (0 bytes)"),
        ("blank.txt", "\n \n\t\n", "the file holds only whitespace"),
        ("dir", None, "the directory holds no files"),
        ("blanks", ["", ""], "its 2 files are empty or only whitespace"),
    ],
)
def test_an_empty_source_is_named_empty_not_sent_to_min_chars(tmp_path: Path, name, content, reason) -> None:
    """Try-out 10: a 0-byte data file was told to lower data.min_chars, which is no fix for it."""
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.mkdir()
        for i, text in enumerate(content or []):
            (path / f"f{i}.txt").write_text(text)
    with pytest.raises(ConfigError) as e:
        load_documents(str(path), DataConfig(), key="data.eval_sources.e")
    message = str(e.value)
    assert (
        f"data.eval_sources.e {path}: {reason}: no documents to read; fill it or point data.eval_sources.e"
        in message
    )
    assert "min_chars" not in message and "\n" not in message


def test_error_unknown_format(tmp_path: Path) -> None:
    f = tmp_path / "d.csv"
    f.write_text("a,b\n")
    with pytest.raises(ConfigError, match=r"extension '\.csv'.*data\.format"):
        load_documents(str(f), DataConfig())
    with pytest.raises(ConfigError, match="data.format must be one of"):
        load_documents(str(f), DataConfig(format="xml"))
    with pytest.raises(ConfigError, match="pystdlib has no split 'nope'"):
        load_documents("pystdlib:nope", DataConfig())


# ---------------------------------------------------------------------------------------------------------
# Packing and the label shift
# ---------------------------------------------------------------------------------------------------------


def test_labels_shifted_exactly_once_hand_checked(word_tok: PreTrainedTokenizerFast) -> None:
    docs = [Document("a b c", "d1"), Document("x y", "d2", prompt="p q")]
    blocks = pack_documents(docs, word_tok, block_length=9)
    assert blocks.input_ids.tolist() == [[2, 3, 4, 0, 5, 6, 7, 8, 0]]
    batch = collate(blocks, torch.tensor([0]))
    assert batch.labels.tolist() == [[3, 4, 0, -100, -100, 7, 8, 0, -100]]
    assert batch.attention_mask.tolist() == [[1] * 9]
    assert batch.valid.tolist() == [[True, True, True, False, False, True, True, True, False]]


def test_blocks_drop_ragged_tail_and_last_position_is_ignored(word_tok: PreTrainedTokenizerFast) -> None:
    docs = [Document("a b c", "d1"), Document("x y", "d2", prompt="p q")]  # 9 tokens
    blocks = pack_documents(docs, word_tok, block_length=4)
    assert blocks.input_ids.tolist() == [[2, 3, 4, 0], [5, 6, 7, 8]]  # the final EOS is the dropped tail
    assert blocks.sample_ids.tolist() == [0, 1]
    batch = collate(blocks, torch.tensor([1, 0]))
    assert batch.labels.tolist() == [[-100, 7, 8, -100], [3, 4, 0, -100]]
    assert batch.sample_ids.tolist() == [1, 0]
    assert (batch.labels[:, -1] == IGNORE_INDEX).all()


def test_no_targets_across_document_boundaries(word_tok: PreTrainedTokenizerFast) -> None:
    # each document repeats one word, neighbours differ: a cross-document target would pair two words
    docs = [
        Document(" ".join([w] * n), f"d{i}")
        for i, (w, n) in enumerate(zip("abcxyzab", [3, 1, 5, 2, 4, 1, 6, 2]))
    ]
    blocks = pack_documents(docs, word_tok, block_length=5)
    batch = collate(blocks, torch.arange(len(blocks)))
    inp, lab = batch.input_ids, batch.labels
    valid = batch.valid
    # every target is either the same word (same document) or the EOS ending that document
    assert ((lab == inp) | (lab == 0))[valid].all()
    assert not (valid & (inp == 0)).any(), "nothing is predicted from an EOS (that would cross documents)"
    assert (lab[:, -1] == IGNORE_INDEX).all()
    # every valid label is exactly the next input token (a single shift)
    assert (lab[:, :-1][valid[:, :-1]] == inp[:, 1:][valid[:, :-1]]).all()


def test_single_partial_block_is_padded_and_masked(word_tok: PreTrainedTokenizerFast) -> None:
    blocks = pack_documents([Document("a b", "d")], word_tok, block_length=6)
    assert blocks.input_ids.tolist() == [[2, 3, 0, 0, 0, 0]]
    assert blocks.target_mask.tolist() == [[False, True, True, False, False, False]]
    assert collate(blocks, torch.tensor([0])).labels.tolist() == [[3, 0, -100, -100, -100, -100]]


def test_packing_errors(word_tok: PreTrainedTokenizerFast) -> None:
    with pytest.raises(ConfigError, match=r"data\.block_length must be ≥ 2"):
        pack_documents([Document("a b c")], word_tok, block_length=1)
    with pytest.raises(
        ConfigError,
        match=r"data: the train split's 3 tokens are fewer than one block of data\.block_length=8; lower it or add data",
    ):
        pack_documents([Document("a b")], word_tok, block_length=8, allow_partial_block=False, split="train")
    with pytest.raises(ConfigError, match="0 tokens"):
        pack_documents([], word_tok, block_length=8)


def test_fingerprint_stable_and_sensitive(word_tok: PreTrainedTokenizerFast) -> None:
    docs = [Document("a b c x y", "1"), Document("z z a", "2")]
    fp = pack_documents(docs, word_tok, 4).fingerprint()
    assert fp == pack_documents(list(docs), word_tok, 4).fingerprint()
    assert len(fp) == 64
    assert fp != pack_documents([Document("a b c x z", "1"), docs[1]], word_tok, 4).fingerprint()  # one token
    prompted = [Document("c x y", "1", prompt="a b"), docs[1]]  # same tokens, one more masked
    assert fp != pack_documents(prompted, word_tok, 4).fingerprint()
    assert fp != pack_documents(docs, word_tok, 5).fingerprint()  # shape


def test_max_blocks_keeps_the_leading_blocks(word_tok: PreTrainedTokenizerFast) -> None:
    docs = [Document(" ".join(["a", "b", "c"][i % 3] for _ in range(i + 2)), str(i)) for i in range(40)]
    full = pack_documents(docs, word_tok, 4)
    first = pack_documents(docs, word_tok, 4, max_blocks=3)
    assert len(full) > 3 and len(first) == 3
    assert torch.equal(first.input_ids, full.input_ids[:3]) and torch.equal(
        first.target_mask, full.target_mask[:3]
    )


def test_num_documents_counts_documents_with_a_target(word_tok: PreTrainedTokenizerFast, monkeypatch) -> None:
    """What the demo prints as an eval set's size: documents with a scored target, each once."""
    docs = [Document("a b c", "d1"), Document("x y", "d2", prompt="p q")]
    assert pack_documents(docs, word_tok, block_length=4).num_documents == 2
    spanning = pack_documents([Document(" ".join(["a"] * 7), "d")], word_tok, block_length=4)
    assert len(spanning) == 2 and spanning.num_documents == 1  # one document across two blocks
    lone = pack_documents([Document("a b", "d")], word_tok, block_length=6)
    assert lone.num_documents == 1  # the padding of a lone partial block is no document

    def naive(blocks: PackedBlocks) -> int:
        seen, doc = set(), -1
        for starts, mask in zip(blocks.document_starts.tolist(), blocks.target_mask.tolist()):
            for col, (start, target) in enumerate(zip(starts, mask)):
                doc += start
                if target and col > 0:
                    seen.add(doc)
        return len(seen)

    many = [Document(" ".join(["a", "b", "c"][i % 3] for _ in range(i % 7 + 1)), str(i)) for i in range(40)]
    blocks = pack_documents(many, word_tok, 4, max_blocks=13)
    expected = naive(blocks)
    assert 5 < expected == blocks.num_documents
    chunks = PackedBlocks._row_chunks
    monkeypatch.setattr(PackedBlocks, "_row_chunks", lambda self, tokens=8: chunks(self, tokens))  # 2 blocks
    assert blocks.num_documents == expected  # a document split between two row chunks counts once


def test_batch_to_and_valid(word_tok: PreTrainedTokenizerFast) -> None:
    batch = collate(pack_documents([Document("a b c")], word_tok, 4), torch.tensor([0]))
    moved = batch.to("cpu")
    assert moved.labels.tolist() == batch.labels.tolist() and moved.sample_ids.tolist() == [0]
    assert batch.valid.dtype == torch.bool and batch.valid.shape == (1, 4)
    assert len(batch) == 1


# ---------------------------------------------------------------------------------------------------------
# Loader
# ---------------------------------------------------------------------------------------------------------


def make_blocks(n: int, t: int = 4) -> PackedBlocks:
    input_ids = torch.arange(n * t).view(n, t)
    return PackedBlocks(input_ids, torch.ones(n, t, dtype=torch.bool), torch.arange(n))


def take(loader: BlockLoader, k: int) -> list[list[int]]:
    return [loader.next_batch().sample_ids.tolist() for _ in range(k)]


def test_loader_deterministic_epochs_and_sample_ids() -> None:
    blocks = make_blocks(10)
    a = take(BlockLoader(blocks, 3, seed=7), 9)
    assert a == take(BlockLoader(blocks, 3, seed=7), 9)
    assert a != take(BlockLoader(blocks, 3, seed=8), 9)
    # 3 batches per epoch (drop_last): each epoch draws distinct blocks, epochs are different permutations
    epochs = [sum(a[i : i + 3], []) for i in (0, 3, 6)]
    assert all(len(set(e)) == 9 for e in epochs) and epochs[0] != epochs[1]
    batch = BlockLoader(blocks, 3, seed=7).next_batch()
    assert torch.equal(batch.input_ids, blocks.input_ids[batch.sample_ids])


@pytest.mark.parametrize("k", [2, 3, 4, 7])
def test_loader_exact_resume_across_epochs(k: int) -> None:
    blocks = make_blocks(10)
    uninterrupted = take(BlockLoader(blocks, 3, seed=1), 10)
    first = BlockLoader(blocks, 3, seed=1)
    assert take(first, k) == uninterrupted[:k]
    state = json.loads(json.dumps(first.state_dict()))  # survives a checkpoint round trip
    assert set(state) == {"epoch", "position", "blocks", "blocks_sha256", "step_rows"}
    resumed = BlockLoader(blocks, 3, seed=1)
    resumed.load_state_dict(state)
    assert take(resumed, 10 - k) == uninterrupted[k:]
    old = BlockLoader(blocks, 3, seed=1)
    old.load_state_dict({"epoch": state["epoch"], "position": state["position"]})  # an older checkpoint
    assert take(old, 10 - k) == uninterrupted[k:]
    with pytest.raises(ValueError, match="the loader drew from 10 blocks, this run from 9"):
        BlockLoader(blocks, 3, seed=1, indices=range(9)).load_state_dict(state)


def _step_rows(loader: BlockLoader, steps: int) -> list[list[int]]:
    """Each optimizer step's rows, its micro-batches concatenated."""
    return [sum((b.sample_ids.tolist() for b in loader.next_step()), []) for _ in range(steps)]


def test_every_split_of_a_step_draws_the_same_rows_across_epochs() -> None:
    """try-out 28: the epoch ended per micro-batch, so 1 × (4 micro-batches of 4) kept an epoch's last 4 blocks
    where 16 × 1 dropped them, and trained on other blocks from then on. An epoch now ends per optimizer step:
    one step of 12 rows, 2 × 6, 4 × 3 and 12 × 1 draw the same rows at every step, over several epochs."""
    blocks = make_blocks(58)  # 58 mod 12 = 10 rows left over per epoch, 58 mod 3 = 1
    steps = [_step_rows(BlockLoader(blocks, 12 // a, seed=5, step_batches=a), 20) for a in (1, 2, 4, 12)]
    assert all(s == steps[0] for s in steps[1:])
    assert all(len(set(rows)) == 12 for rows in steps[0])  # no step spans two epochs: no block twice


def test_a_checkpoint_of_the_per_batch_epoch_rule_continues_with_it() -> None:
    """A run saved by an ekd that ended epochs per micro-batch (its loader state records no step_rows) keeps
    that rule on --resume, so it continues exactly as it would have."""
    blocks = make_blocks(10)
    old_rule = BlockLoader(blocks, 2, seed=3)  # steps of 2 micro-batches of 2, drawn one batch at a time
    uninterrupted = [sum(take(old_rule, 2), []) for _ in range(6)]
    assert _step_rows(BlockLoader(blocks, 2, seed=3, step_batches=2), 6) != uninterrupted  # the rules differ
    first = BlockLoader(blocks, 2, seed=3)
    take(first, 4)  # two steps under the old rule, then a checkpoint
    state = {k: v for k, v in first.state_dict().items() if k != "step_rows"}
    resumed = BlockLoader(blocks, 2, seed=3, step_batches=2)
    resumed.load_state_dict(state)
    assert _step_rows(resumed, 4) == uninterrupted[2:]


def test_loader_subset_no_shuffle_and_partial_batches() -> None:
    blocks = make_blocks(10)
    sub = BlockLoader(blocks, 2, seed=0).subset([7, 1, 4])
    seen = sum(take(sub, 6), [])
    assert set(seen) == {1, 4, 7}
    ordered = BlockLoader(blocks, 4, seed=0, shuffle=False, drop_last=False)
    assert take(ordered, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9], [0, 1, 2, 3]]
    assert len(ordered) == 3
    with pytest.raises(
        ConfigError, match=r"train\.micro_batch_size=11 is larger than the 10 training blocks"
    ):
        BlockLoader(blocks, 11, seed=0)


def test_iter_eval_in_order_with_cap() -> None:
    blocks = make_blocks(5)
    assert [b.sample_ids.tolist() for b in iter_eval(blocks, 2)] == [[0, 1], [2, 3], [4]]
    assert [b.sample_ids.tolist() for b in iter_eval(blocks, 2, max_blocks=3)] == [[0, 1], [2]]


# ---------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------


def test_bpe_save_reload_identical(tmp_path: Path) -> None:
    texts = [
        "def add(a, b):\n    return a + b\n",
        "hello world, hello tokenizer",
        "for i in range(10): print(i)",
    ] * 5
    tok = train_bpe_tokenizer(texts, vocab_size=300, save_dir=tmp_path / "tok")
    assert tok.eos_token == tok.pad_token == tok.bos_token == EOS and tok.eos_token_id == 0
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    sample = ["def add(x, y): return x * y  # ünïcode ✓", "hello\n\tworld"]
    enc = tok(sample, add_special_tokens=False)["input_ids"]
    assert enc == reloaded(sample, add_special_tokens=False)["input_ids"]
    assert tok.decode(enc[0]) == sample[0]  # byte-level: lossless
    assert tokenizer_hash(tok) == tokenizer_hash(reloaded)
    assert tokenizer_hash(tok) != tokenizer_hash(train_bpe_tokenizer(texts, vocab_size=280))
    with pytest.raises(ConfigError, match=r"model\.bpe_vocab_size must be ≥ 257"):
        train_bpe_tokenizer(texts, vocab_size=100)


# ---------------------------------------------------------------------------------------------------------
# Builtin corpus and splits
# ---------------------------------------------------------------------------------------------------------


def fake_stdlib(root: Path, with_tests: bool = True) -> Path:
    for i in range(12):
        (root / f"mod{i}.py").parent.mkdir(parents=True, exist_ok=True)
        (root / f"mod{i}.py").write_text(
            f'"""Module number {i} does useful things."""\n\nclass C{i}:\n    """A class that holds a value {i}."""\n\n'
            f'    def get(self):\n        """Return the value held by this class."""\n        return {i}\n'
        )
    (root / "pkg" / "tests").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("from pkg.sub import f\n")
    (root / "pkg" / "sub.py").write_text("def f():\n    return 1\n")
    (root / "pkg" / "tests" / "test_sub.py").write_text("assert True\n")
    (root / "test_top.py").write_text("assert True\n")
    for excluded in ("idlelib", "site-packages", "config-3.11-x86_64"):
        (root / excluded).mkdir()
        (root / excluded / "x.py").write_text("x = 1\n")
    (root / "bad.py").write_bytes(b"x = '\xff\xfe'\n")
    if with_tests:
        (root / "test" / "sub").mkdir(parents=True)
        (root / "test" / "test_mod.py").write_text("import mod0\n")
        (root / "test" / "sub" / "helper.py").write_text("y = 2\n")
    return root


def test_pystdlib_splits_on_fake_tree(tmp_path: Path) -> None:
    root = fake_stdlib(tmp_path / "lib")
    splits = pystdlib_splits(root=root)
    assert list(splits) == ["train", "eval", "shift_tests", "shift_docstrings"]
    train_ids = {d.doc_id for d in splits["train"]}
    eval_ids = {d.doc_id for d in splits["eval"]}
    expected = {f"mod{i}.py" for i in range(12)} | {"pkg/__init__.py", "pkg/sub.py"}
    assert train_ids | eval_ids == expected  # tests, idlelib, site-packages, config-*, non-UTF-8 excluded
    assert splits["eval"], "the held-out set is never empty"
    held = {module_of(i) for i in eval_ids}
    assert held.isdisjoint(module_of(i) for i in train_ids)
    assert {d.doc_id for d in splits["shift_tests"]} == {"test/test_mod.py", "test/sub/helper.py"}
    docstrings = splits["shift_docstrings"]
    assert docstrings and all(module_of(d.doc_id.split("::")[0]) in held for d in docstrings)
    assert any("::C" in d.doc_id and d.doc_id.endswith(".get") for d in docstrings)  # qualified names
    assert "Return the value held by this class." in {d.text for d in docstrings}
    no_tests = pystdlib_splits(root=fake_stdlib(tmp_path / "lib2", with_tests=False))
    assert "shift_tests" not in no_tests and no_tests["train"]
    assert [d.doc_id for d in splits["train"]] == [d.doc_id for d in pystdlib_splits(root=root)["train"]]


def test_pystdlib_real_with_char_cap() -> None:
    cap = 30_000
    splits = pystdlib_splits(max_chars=cap)
    assert set(splits) >= {"train", "eval", "shift_docstrings"}
    for name, docs in splits.items():
        assert docs, name
        assert sum(len(d.text) for d in docs) <= cap, name
    assert {module_of(d.doc_id) for d in splits["train"]}.isdisjoint(
        module_of(d.doc_id) for d in splits["eval"]
    )
    assert not any(d.doc_id.startswith(("test/", "idlelib/", "site-packages/")) for d in splits["train"])
    assert [d.doc_id for d in splits["train"]] == [d.doc_id for d in pystdlib_splits(max_chars=cap)["train"]]


def test_held_out_keys_never_empty_and_deterministic() -> None:
    keys = [f"k{i}" for i in range(5)]
    held = held_out_keys(keys, 0.01)
    assert len(held) == 1 and held == held_out_keys(reversed(keys), 0.01)
    assert held_out_keys(keys, 0.0) == set()
    assert 0 < len(held_out_keys(["a", "b"], 0.99)) < 2  # the training side keeps one


def test_the_forced_hold_out_skips_a_document_with_many_copies() -> None:
    """Try-out 94, F6: with no unit below the fraction, the smallest hash's document was held out with all its
    copies — 10 of 11 documents at eval_fraction=0.2. The forced one is the smallest hash among the documents whose
    copies fit in the fraction; without duplicates that is the smallest hash, as before."""
    a, b = sorted(["doc-a", "doc-b", "doc-c", "doc-d"], key=stable_unit)[:2]  # a: the smallest unit
    assert stable_unit(a) > 0.01  # no unit below the fraction: the forced rule decides
    assert held_out_keys([a] * 10 + [b], 0.01) == {b}  # a's 10 copies are more than max(1, 0.01·11)
    assert held_out_keys([a, b], 0.01) == {a}  # one copy each: the smallest hash, as before
    assert held_out_keys([a] * 10 + [b] * 10, 0.01) == set()  # none fits: none (try-out 95, F2: half of them)


def test_load_and_pack_splits_from_jsonl(tmp_path: Path, word_tok: PreTrainedTokenizerFast) -> None:
    words = ["a", "b", "c", "x", "y", "z"]
    rows = [{"text": " ".join(words[(i + j) % 6] for j in range(8))} for i in range(6)] * 2
    rows = [{"text": r["text"] + f" {'p' if k % 2 else 'q'}"} for k, r in enumerate(rows)]
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    shift = tmp_path / "shift.txt"
    shift.write_text("x y z")
    cfg = Config()
    cfg.data.source = str(src)
    cfg.data.eval_fraction = 0.2
    cfg.data.eval_sources = {"shifted": str(shift)}
    splits = load_splits(cfg)
    assert list(splits) == ["train", "eval", "shifted"]
    assert splits["eval"] and splits["train"]
    assert {d.doc_id for d in splits["train"]}.isdisjoint(d.doc_id for d in splits["eval"])
    assert len(splits["train"]) + len(splits["eval"]) == 12
    assert [d.doc_id for d in load_splits(cfg)["eval"]] == [d.doc_id for d in splits["eval"]]
    packed = pack_splits(splits, word_tok, block_length=8, max_eval_blocks=2)
    assert packed["train"].input_ids.shape[1] == 8 and len(packed["eval"]) <= 2
    assert packed["shifted"].input_ids.tolist() == [[7, 8, 9, 0, 0, 0, 0, 0]]  # short eval set: padded
    assert packed["eval"].sample_ids.tolist() == list(range(len(packed["eval"])))
    cfg.data.eval_sources = {"train": str(shift)}
    with pytest.raises(ConfigError, match="data.eval_sources: the name 'train' is already a split"):
        load_splits(cfg)


def test_load_splits_pystdlib_with_cap() -> None:
    cfg = Config()
    splits = load_splits(cfg, max_chars=20_000)
    assert list(splits)[:2] == ["train", "eval"]
    assert all(sum(len(d.text) for d in docs) <= 20_000 for docs in splits.values())


@pytest.mark.parametrize("source", ["hf:", "hf:  "])
def test_hf_source_without_a_name_is_one_line(tmp_path, source):
    from ekd.config import ConfigError, load_config
    from ekd.data import load_documents

    cfg = load_config(None, [f"data.source={source}"])
    with pytest.raises(ConfigError, match="names no dataset") as e:
        load_documents(cfg.data.source, cfg.data)
    assert "\n" not in str(e.value)


def test_an_eval_sets_unscored_tail_is_said(word_tok: PreTrainedTokenizerFast, caplog) -> None:
    """Try-out 21: an eval set's tokens after its last full block (a whole short last document) were dropped with
    a debug line only; a set read whole says how many are not scored (training says it is not trained:
    test_data_tryout40.py), a capped set does not."""
    docs = [Document(text="a b c p q x y z"), Document(text="a b c"), Document(text="x y")]  # 9 + 4 + 3 = 16
    with caplog.at_level(logging.INFO, logger="ekd"):
        pack_documents(docs, word_tok, block_length=6, split="shift")
    said = [r.getMessage() for r in caplog.records]
    tail = "shift: its last 4 tokens (3 targets; after its last full block of 6) are not scored"
    assert any(tail in m for m in said) and "packed" in said[[tail in m for m in said].index(True) - 1]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ekd"):
        pack_documents(docs, word_tok, block_length=6, allow_partial_block=False, split="train")
        pack_documents(docs, word_tok, block_length=6, max_blocks=1, split="capped")
    assert "not scored" not in caplog.text


def test_a_jsonl_line_with_an_unterminated_string_is_named_so(tmp_path: Path) -> None:
    """Try-out 21: the line's own newline went into json.loads, so the reason read 'Invalid control character'."""
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "fine"}\n{"text": "abc}\n')
    with pytest.raises(
        ConfigError, match=r"line 2: not valid JSON \(Unterminated string starting at column 10\)"
    ):
        load_documents(str(f), DataConfig())


def test_the_eval_split_follows_the_documented_rule_and_is_logged(tmp_path: Path, caplog) -> None:
    """Try-out 45, F6: the README's rule (a document is held out when the first 8 bytes of sha256 of the hex
    sha256 of prompt + NUL + text, over 2**64, fall below data.eval_fraction; the smallest unit held out when
    none is, the largest always trained on), recomputed here from hashlib alone, gives the split ekd makes;
    one info line says how many and which."""
    import hashlib
    import logging

    from ekd.data import load_splits

    root = tmp_path / "corpus"
    root.mkdir()
    texts = {f"d{i:02d}.txt": f"document {i} says {'la ' * i}\n" for i in range(30)}
    for name, text in texts.items():
        (root / name).write_text(text)

    def unit(text: str, prompt: str = "") -> float:
        key = hashlib.sha256(f"{prompt}\x00{text}".encode()).hexdigest()
        return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64

    cfg = Config()
    cfg.data.source = str(root)
    for fraction in (0.2, 1e-6):
        cfg.data.eval_fraction = fraction
        units = {name: unit(text) for name, text in texts.items()}
        held = {n for n, u in units.items() if u < fraction} or {min(units, key=units.get)}
        held.discard(max(units, key=units.get))
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="ekd.data.build"):
            splits = load_splits(cfg)
        assert sorted(d.doc_id for d in splits["eval"]) == sorted(held)
        said = [r.getMessage() for r in caplog.records if "the eval split holds" in r.getMessage()]
        assert said and said[0].startswith(
            f"data.source: the eval split holds {len(held)} of 30 documents"
        ), said
        fell = any(u < fraction for u in units.values())  # try-out 76, F5: else the smallest hash's, said so
        assert ("no content hash falls below" in said[0]) is not fell, said
        listed = [r.getMessage() for r in caplog.records if "eval split documents:" in r.getMessage()]
        assert listed and set(listed[0].split(": ", 2)[2].split(", ")) == held


def test_a_model_directory_is_refused_as_data(tmp_path: Path) -> None:
    """Try-out 57, F5: data.source=<model.teacher's directory> trained on its config.json, tokenizer.json and
    generation_config.json (the weights skipped as not text); hf:<it> failed with datasets' vague error. A corpus
    file kept beside a model's files is still read."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    (model / "model.safetensors").write_bytes(b"\0" * 16)
    (model / "notes.txt").write_text("a corpus file beside the model")
    for source in (str(model), f"hf:{model}"):
        with pytest.raises(ConfigError, match="is a model directory \\(config.json and weights\\), not data"):
            load_documents(source, DataConfig())
    assert [d.text for d in load_documents(str(model / "notes.txt"), DataConfig())] == [
        "a corpus file beside the model"
    ]


@pytest.mark.parametrize("fmt", ["auto", "jsonl", "text"])
def test_a_compressed_file_is_told_to_be_decompressed(tmp_path: Path, fmt: str) -> None:
    """Try-out 94, F7: a .jsonl.gz was told to set data.format, then that its line 1 was not UTF-8 and to re-encode
    it; in a directory it was skipped as 'not UTF-8'."""
    import gzip

    path = tmp_path / "rows.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write('{"text": "a b c"}\n' * 3)
    with pytest.raises(
        ConfigError, match=r"rows.jsonl.gz is gzip-compressed, which ekd does not read; decompress"
    ):
        load_documents(str(path), DataConfig(format=fmt))


@pytest.mark.parametrize("indent", [None, 2])
def test_a_json_array_is_told_it_is_not_json_lines(tmp_path: Path, indent: int | None) -> None:
    """Try-out 94, F7: `json.dump(rows)` in a .jsonl was 'expected a JSON object, got list' or 'not valid JSON'."""
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps([{"text": "a b"}, {"text": "c d"}], indent=indent))
    with pytest.raises(ConfigError, match="line 1: .*looks like one JSON array, not JSON Lines"):
        load_documents(str(path), DataConfig())


def test_a_refusal_of_changed_data_names_the_text_split_rule_for_a_text_file(tmp_path: Path) -> None:
    """Try-out 95, F8: a run made before the text split kept indentation was told its source had changed, though
    the file was not touched: the refusals of --resume and ekd eval name the rule for a text file named alone."""
    from ekd.data.documents import text_split_note

    (tmp_path / "notes.txt").write_text("a\n\n\nb\n")
    (tmp_path / "rows.jsonl").write_text('{"text": "a"}\n')
    note = text_split_note(str(tmp_path / "notes.txt"))
    assert "since 2026-12-04 each document keeps its first line's indentation" in note
    assert (
        "only an ekd older than that change (commit 731a482) continues such a run" in note
    )  # try-out 101, F2
    for other in (tmp_path / "rows.jsonl", tmp_path, "pystdlib", f"hf:{tmp_path}"):
        assert text_split_note(str(other)) == ""


def test_copies_that_keep_every_document_in_are_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Try-out 96, F6: ten and ten copies at eval_fraction=0.05 hold nothing out; the warning said the run scores no
    eval set but not that the copies are why."""
    src = write_jsonl(tmp_path / "d.jsonl", [{"text": "alpha beta"}] * 10 + [{"text": "gamma delta"}] * 10)
    cfg = Config()
    cfg.data.source, cfg.data.eval_fraction = str(src), 0.05
    with caplog.at_level(logging.WARNING, logger="ekd.data.build"):
        splits = load_splits(cfg)
    assert "eval" not in splits and len(splits["train"]) == 20
    assert (
        "every document has more copies than data.eval_fraction=0.05 of its 20 documents allows"
        in caplog.text
    )


def test_a_document_over_max_document_chars_is_measured_and_told_by_its_kind() -> None:
    """Try-out 104, F5 and the review of session 31: a chat row's tool definitions are rendered into the text the
    tokenizer holds whole, so they count; its way out is to shorten the row, not to split a file; a named eval set
    is no split of data.source; the memory is said in a unit that fits (it read "~0 MiB")."""
    from ekd.data.chat import Message
    from ekd.data.document import Document
    from ekd.data.packing import check_document_length, document_chars

    tools = ({"name": "search", "description": "x" * 300},)
    row = Document(text="", doc_id="chat.jsonl:3", messages=(Message("user", "hi"),), tools=tools)
    assert document_chars(row) == len(row.full_text) + len(json.dumps(tools)) > 300
    with pytest.raises(ConfigError) as e:
        check_document_length(row, 300, "dl")
    line = str(e.value)
    assert line.startswith("data: eval set 'dl': document chat.jsonl:3 holds ") and "KiB of memory" in line
    assert "shorten the row (its messages and tool definitions" in line and "split it into" not in line
    plain = Document(text="y" * 20, doc_id="notes.txt#0")
    check_document_length(plain, 20, "train")  # at the limit: kept
    with pytest.raises(
        ConfigError, match=r"the train split's document notes.txt#0 holds 20 characters.*3\.3 KiB.*split it"
    ):
        check_document_length(plain, 19, "train")


@pytest.mark.parametrize(
    "raised, overrides, line",
    [
        (
            "Unknown split \"tset\". Should be one of ['train', 'test'].",
            ["data.hf_split=tset"],
            "data.hf_split=tset: data.source hf:acme/tiny-ds has no such split (Unknown split",
        ),
        (
            "There are multiple 'acme/tiny-ds' configurations in the cache: wiki, default",
            [],
            "data.hf_name: data.source hf:acme/tiny-ds has several configurations (There are multiple",
        ),
        (
            "Couldn't find cache for acme/tiny-ds for config 'wikki'",
            ["data.hf_name=wikki"],
            "data.hf_name=wikki: data.source hf:acme/tiny-ds has no such configuration (Couldn't find",
        ),
    ],
)
def test_a_cached_hub_dataset_read_with_a_wrong_split_or_configuration_names_the_key(
    raised, overrides, line, monkeypatch, hub_unreachable
):
    """Try-out 152, F7: with the hub unreachable, a cached dataset read with a mistyped data.hf_split, or without
    data.hf_name where several configurations are cached, was said to be missing from the cache and to need a
    download; the line names the key (the messages are those datasets 4 gives, offline, for a cached dataset)."""
    import datasets

    from ekd.config import ConfigError, load_config
    from ekd.data import load_documents

    def load_dataset(*args, **kwargs):
        raise ValueError(raised)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    cfg = load_config(None, ["data.source=hf:acme/tiny-ds", "data.text_field=content", *overrides])
    with pytest.raises(ConfigError) as e:
        list(load_documents(cfg.data.source, cfg.data))
    assert str(e.value).startswith(line) and "save_to_disk" not in str(e.value) and "\n" not in str(e.value)


def test_a_local_dataset_read_with_a_split_it_has_not_got_names_data_hf_split(tmp_path):
    """Review 156, R18: the words ekd matches are those datasets itself gives (a dataset directory of JSON lines,
    read by datasets' own loader, with a split it has not got), not only ones a test writes."""
    from ekd.config import ConfigError, load_config
    from ekd.data import load_documents

    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "train.jsonl").write_text('{"content": "a b c"}\n{"content": "d e f"}\n')
    cfg = load_config(
        None, [f"data.source=hf:{tmp_path / 'ds'}", "data.text_field=content", "data.hf_split=tset"]
    )
    with pytest.raises(ConfigError) as e:
        list(load_documents(cfg.data.source, cfg.data))
    assert str(e.value).startswith("data.hf_split=tset: data.source hf:"), str(e.value)
