"""``ekd cache import``: another tool's teacher top-K logprobs (Parquet/JSONL) → an ekd top-K cache.

A tiny teacher scores the training stream; the test writes its top-K log-probabilities per *document*
(Axolotl/DistillKit column layout, and vLLM's ``prompt_logprobs`` layout), imports them, and trains from the
import and from ``ekd cache``'s own top-K cache of the same teacher: the same loss at every step. Bad files
(another tokenization, a missing column, too few entries, a NaN) stop with one line each.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ekd.cli import main
from ekd.config import load_config
from ekd.data import collate, load_splits
from ekd.data.collate import model_inputs
from ekd.locks import lock_directory
from ekd.teacher.cache import CacheError, CacheReader
from ekd.teacher.cache.build import run_build
from ekd.teacher.cache.importer import estimated_stats, topk_from_logprobs
from ekd.teacher.targets import topk_target
from ekd.train.prepare import load_teacher, prepare_data
from tiny import config_file, loss_curve, write_corpus

CPU = torch.device("cpu")
K = 6


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _documents(cfg, data) -> list[tuple[str, list[int]]]:
    """(text, [BOS] text [EOS] tokens) of every training document, in packing order — computed here, apart
    from the importer."""
    b = data.boundary
    out = []
    for doc in load_splits(cfg)["train"]:
        ids = data.tokenizer(doc.text, add_special_tokens=False)["input_ids"]
        if ids:
            out.append((doc.text, ([b.bos_id] if b.bos_id is not None else []) + ids + [b.eos_id]))
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A shared tokenizer, the native top-K cache, and the teacher's top-K logprobs per document."""
    root = tmp_path_factory.mktemp("import")
    corpus = write_corpus(root / "corpus", n_docs=16)
    bpe = config_file(root, corpus, "bpe")
    prepare_data(load_config([bpe]), root / "tok")  # trains and saves the BPE once
    over = {
        "model.tokenizer": str(root / "tok" / "tokenizer"),
        "method.target": "topk",
        "method.topk": K,
        "train.max_steps": 3,
        "teacher.cache_shard_samples": 8,
    }
    cfg_path = config_file(root, corpus, "imp", **over)
    native = root / "native"
    cfg = load_config([cfg_path], [f"teacher.cache_dir={native}"])
    run_build(cfg, measure_forward=False)
    data = prepare_data(cfg, native)
    blocks = data.blocks["train"]
    teacher = load_teacher(cfg, data, CPU)
    with torch.no_grad():
        batch = collate(blocks, torch.arange(len(blocks)))
        logp = torch.log_softmax(teacher(**model_inputs(batch)).logits.float(), -1)  # (N, T, V)
    stream = logp.reshape(-1, logp.shape[-1])  # (S, V) teacher log p at every stream position
    top_lp, top_ids = stream.topk(K + 2, dim=-1)  # K + 2: the importer keeps the K largest
    rows, at = [], 0
    rng = np.random.default_rng(0)
    for text, tokens in _documents(cfg, data):
        ids, lps = [], []
        for j in range(len(tokens)):
            if at + j < stream.shape[0]:  # inside the kept blocks: the teacher's own top-K
                ids.append(top_ids[at + j].tolist())
                lps.append(top_lp[at + j].tolist())
            else:  # past the last block (dropped by packing): any valid row
                ids.append(rng.choice(data.vocab_size, K + 2, replace=False).tolist())
                lps.append(np.log(np.full(K + 2, 0.1)).tolist())
        rows.append({"text": text, "input_ids": tokens, "target_token_ids": ids, "logprobs": lps})
        at += len(tokens)
    return {"root": root, "cfg": cfg_path, "native": native, "rows": rows, "vocab": data.vocab_size}


def _write_parquet(path: Path, rows: list[dict]) -> Path:
    schema = pa.schema(
        [
            ("text", pa.string()),
            ("input_ids", pa.list_(pa.int64())),
            ("target_token_ids", pa.list_(pa.list_(pa.int64()))),
            ("logprobs", pa.list_(pa.list_(pa.float32()))),
        ]
    )
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def _import(setup, src: Path, out: str, *extra: str) -> int:
    return main(["-q", "cache", "import", str(src), "--config", setup["cfg"], "--out", str(out), *extra])


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("ekd: error: ")
    return err[0]


def test_an_import_into_a_cache_another_process_is_writing_is_refused(setup, capsys):
    src = _write_parquet(setup["root"] / "teacher-busy.parquet", setup["rows"])
    out = setup["root"] / "busy"
    lock = lock_directory(out, "fix")  # a build or another import holds it
    try:
        assert _import(setup, src, out) == 2
        line = _one_line(capsys)
        assert f"{out} is in use by another ekd process (pid {os.getpid()})" in line
        assert "choose another --out" in line and "teacher.cache_dir" not in line, line  # import's own option
        assert not out.exists()
    finally:
        lock.release()
    assert _import(setup, src, out) == 0, capsys.readouterr().err


def test_refusals_of_an_import_name_the_import_command(setup, capsys):
    """Try-out 8: importing another SRC into an imported cache was told to "rebuild with `ekd cache CONFIG
    --overwrite`" (that builds a native cache from the teacher) and a foreign --out to "set
    teacher.cache_dir"; the fixes are import's own: --overwrite, another --out. The one given works."""
    src = _write_parquet(setup["root"] / "teacher-a.parquet", setup["rows"])
    out = setup["root"] / "imported-twice"
    assert _import(setup, src, out) == 0, capsys.readouterr().err
    rows = [dict(r, logprobs=[[v - 0.01 for v in lp] for lp in r["logprobs"]]) for r in setup["rows"]]
    other = _write_parquet(setup["root"] / "teacher-b.parquet", rows)  # another file: another revision
    assert _import(setup, other, out) == 2
    line = _one_line(capsys)
    assert "rerunning `ekd cache import` with --overwrite" in line and "ekd cache CONFIG" not in line, line
    assert _import(setup, other, out, "--overwrite") == 0, capsys.readouterr().err
    foreign = setup["root"] / "not-a-cache"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert _import(setup, src, foreign) == 2
    line = _one_line(capsys)
    assert f"--out {foreign} is not empty" in line and "set --out to a new or empty directory" in line, line


def test_an_import_into_a_cache_built_from_the_teacher_says_what_it_holds(setup, capsys):
    """Try-out 9: importing into a cache ``ekd cache`` built was one ~1,400-character line of differing fields
    that advised --overwrite, which deletes the native cache, without saying it is one. Now one short line says
    what the directory holds; a build into an import likewise. --overwrite replaces it."""
    src = _write_parquet(setup["root"] / "teacher-n.parquet", setup["rows"])
    native = setup["root"] / "native-copy"
    shutil.copytree(setup["native"], native)
    before = (native / "manifest.json").read_bytes()
    assert _import(setup, src, native) == 2
    line = _one_line(capsys)
    assert f"--out {native} is a teacher cache built by `ekd cache` (target topk, K={K}, teacher " in line, (
        line
    )
    assert "pass --overwrite to delete that cache and import in its place" in line and len(line) < 300, line
    assert (native / "manifest.json").read_bytes() == before
    imported = setup["root"] / "imported-once"
    assert _import(setup, src, imported) == 0, capsys.readouterr().err
    assert main(["-q", "cache", setup["cfg"], f"teacher.cache_dir={imported}"]) == 2
    line = _one_line(capsys)
    assert (
        f"teacher.cache_dir {imported} is a cache imported by `ekd cache import` (target topk, K={K}" in line
    )
    assert "pass --overwrite to delete that import and build from the teacher in its place" in line, line
    assert _import(setup, src, native, "--overwrite") == 0, capsys.readouterr().err
    assert CacheReader(native).signature["teacher_revision"].startswith("import-sha256:")


@pytest.fixture(scope="module")
def imported(setup) -> Path:
    """setup's rows written as Parquet and imported once: the reference import of the tests below (each may
    run first)."""
    src = _write_parquet(setup["root"] / "teacher.parquet", setup["rows"])
    out = setup["root"] / "imported"
    assert _import(setup, src, out) == 0
    return out


def test_an_imported_caches_damage_and_mismatches_name_the_import_again(setup, imported, tmp_path, capsys):
    """Try-out 62 F6: a damaged shard or a config mismatch of an *imported* cache was told to run `ekd cache
    CONFIG` (which refuses to build into an import) or `ekd cache CONFIG --overwrite` (which deletes the import
    and needs the teacher); the advice is the import again. A cache built by `ekd cache` keeps its own."""
    damaged = tmp_path / "imported-damaged"
    shutil.copytree(imported, damaged)
    shard = sorted(damaged.glob("shard-*.bin"))[0]
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte mid-shard: its sha256 and one record's CRC-32 fail
    shard.write_bytes(bytes(raw))
    assert main(["-q", "cache", "verify", str(damaged)]) == 2
    line = _one_line(capsys)
    assert f"{shard.name} is corrupted" in line, line
    assert line.endswith(
        "run `ekd cache import SRC --config CONFIG --out DIR` again to rebuild the damaged shard(s)"
    )
    assert "ekd cache CONFIG" not in line, line
    reader = CacheReader(damaged)  # what training reads: the damaged record, whichever step first needs it
    with pytest.raises(CacheError) as e:
        for sid in range(reader.num_samples):
            reader.get(sid)
    assert "is corrupted" in str(e.value) and "ekd cache CONFIG" not in str(e.value), e.value
    assert str(e.value).endswith(
        "`ekd cache import SRC --config CONFIG --out DIR` again to rebuild the damaged shard(s)"
    )
    # try-out 104, F2: an edited manifest of an import was told `ekd cache CONFIG --overwrite` (the teacher)
    manifest = json.loads((damaged / "manifest.json").read_text())
    cut = (damaged / "manifest.json").read_text()[:-200]  # try-out 106, F2: cut short, no JSON to read
    for text, said in (
        (json.dumps({**manifest, "complete": False}), "was edited or is corrupt"),
        (cut, "not valid JSON"),
    ):
        (damaged / "manifest.json").write_text(text)
        for command in (["cache", "info"], ["cache", "verify"]):
            assert main(["-q", *command, str(damaged)]) == 2
            line = _one_line(capsys)
            assert said in line and line.endswith(
                "import it again with `ekd cache import SRC --config CONFIG --out DIR --overwrite`"
            ), line
    other = ["run.name=other-block", "teacher.source=cache", f"teacher.cache_dir={imported}", "method=kd"]
    other += ["method.target=topk", f"method.topk={K}", "data.block_length=16"]
    assert main(["-q", "distill", setup["cfg"], *other]) == 2
    line = _one_line(capsys)
    assert "does not match the training config" in line, line
    assert "import it again with `ekd cache import SRC --config CONFIG --out DIR --overwrite`" in line, line
    assert "ekd cache CONFIG" not in line, line
    # try-out 63, F2: RS targets asked of an import, which can only hold top-K ones: not "import it again"
    rs = [
        "run.name=rs-from-import",
        "teacher.source=cache",
        f"teacher.cache_dir={imported}",
        "method=rskd",
        "method.target=rs",
        "method.topk=12",  # the default: the config's K is a key rskd never reads
    ]
    assert main(["-q", "distill", setup["cfg"], *rs]) == 2
    line = _one_line(capsys)
    assert (
        f"an imported cache holds top-K targets (K={K}): train with method.target=topk method.topk={K}"
        in line
    )
    assert (
        "build an rs cache from the teacher with `ekd cache CONFIG`" in line and "import it again" not in line
    )
    native = ["run.name=native-block", "teacher.source=cache", f"teacher.cache_dir={setup['native']}"]
    native += ["method=kd", "method.target=topk", f"method.topk={K}", "data.block_length=16"]
    assert main(["-q", "distill", setup["cfg"], *native]) == 2
    line = _one_line(capsys)  # a native cache: built from the teacher, here or beside it
    assert "rebuild it here with `ekd cache CONFIG --overwrite`" in line and "ekd cache import" not in line, (
        line
    )


def test_an_import_says_the_data_source_figures_once(setup, capsys, caplog):
    """try-out 25: the import logged `data.source=…: N documents, M characters` twice (the data preparation,
    then its second read of the training documents to match them with SRC)."""
    src = _write_parquet(setup["root"] / "teacher-once.parquet", setup["rows"])
    with caplog.at_level(logging.INFO, logger="ekd"):
        out = setup["root"] / "imported-said-once"
        assert main(["cache", "import", str(src), "--config", setup["cfg"], "--out", str(out)]) == 0
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("data.source=")]
    assert len(set(said)) == len(said) and any(" documents, " in line for line in said), said


def test_an_import_again_into_its_finished_cache_writes_and_reads_nothing(
    setup, imported, capsys, caplog, monkeypatch
):
    """Try-out 102, F3: importing SRC again into the cache it finished said "resuming, 2 of 2 shards done" and
    "imported ...", and read SRC and the training documents a second time (the files were left as they were)."""
    from ekd.teacher.cache import importer

    src = setup["root"] / "teacher.parquet"
    args = ["cache", "import", str(src), "--config", setup["cfg"], "--out", str(imported)]

    def files() -> dict:
        return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in imported.iterdir() if p.is_file()}

    before = files()
    indexed: list[int] = []
    real_index = importer._index_rows
    monkeypatch.setattr(importer, "_index_rows", lambda *a, **k: indexed.append(1) or real_index(*a, **k))
    capsys.readouterr()
    with caplog.at_level(logging.INFO, logger="ekd"):
        assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{imported} held this import of {src}, complete: "), out
    said = [r.getMessage() for r in caplog.records]
    assert f"cache {imported}: complete (" in " ".join(said) and not any("resuming" in m for m in said), said
    assert not any(m.startswith("imported ") for m in said) and not indexed  # SRC's rows not read again
    assert files() == before
    # an import killed after its last shard, before its manifest was sealed: finished now, and said as an import
    from ekd.teacher.cache.manifest import write_json_atomic

    manifest = json.loads((imported / "manifest.json").read_text())
    write_json_atomic(imported / "manifest.json", {**manifest, "complete": False})
    assert (
        main(["-q", "cache", "info", str(imported)]) == 2
    )  # try-out 104, F6: said "unfinished (2 of 2 shards)"
    assert (
        "is unfinished (every shard written, not sealed): rerun `ekd cache import" in capsys.readouterr().err
    )
    assert main(args) == 0
    assert capsys.readouterr().out.startswith(f"imported {src} into {imported}: ")
    assert json.loads((imported / "manifest.json").read_text()) == manifest


def test_imported_topk_trains_like_the_native_cache(setup, imported, capsys):
    native, imp = CacheReader(setup["native"]), CacheReader(imported)
    assert imp.signature["teacher_revision"].startswith("import-sha256:")
    # (and the arithmetic a build records its teacher ran in: an import's came from elsewhere)
    same = {k: v for k, v in native.signature.items() if k not in ("teacher_revision", "built_with")}
    assert {k: imp.signature[k] for k in same} == same  # the config's signature, not the teacher's weights
    for sid in range(native.num_samples):
        a, b = native.get(sid), imp.get(sid)
        assert torch.equal(a.positions, b.positions)
        assert torch.equal(a.ids, b.ids)
        torch.testing.assert_close(b.probs, a.probs, rtol=2e-3, atol=1e-6)  # fp16 targets
    curves = {}
    for name, cache in (("native", setup["native"]), ("imported", imported)):
        args = [f"run.name={name}", "teacher.source=cache", f"teacher.cache_dir={cache}", "method=kd"]
        args += ["method.target=topk", f"method.topk={K}"]
        assert main(["-q", "distill", setup["cfg"], *args]) == 0, capsys.readouterr().err
        curves[name] = loss_curve(setup["root"] / "runs" / name)
    assert len(curves["native"]) == 3
    for step, loss in curves["native"].items():
        assert curves["imported"][step] == pytest.approx(loss, rel=1e-4), step


def test_vllm_prompt_logprobs_layout_gives_the_same_cache(setup, imported, tmp_path, capsys):
    """vLLM's prompt_logprobs: entry i (a mapping id → logprob) is over token i, the first is null."""
    path = tmp_path / "vllm.jsonl"
    with open(path, "w") as f:
        for row in setup["rows"]:
            entries = [None] + [
                {str(i): lp for i, lp in zip(ids, lps)}
                for ids, lps in zip(row["target_token_ids"][:-1], row["logprobs"][:-1])
            ]
            f.write(
                json.dumps(
                    {"text": row["text"], "prompt_token_ids": row["input_ids"], "prompt_logprobs": entries}
                )
            )
            f.write("\n")
    out = tmp_path / "cache"
    assert _import(setup, path, out) == 0, capsys.readouterr().err
    a, b = CacheReader(imported), CacheReader(out)
    for sid in range(a.num_samples):
        x, y = a.get(sid), b.get(sid)
        assert torch.equal(x.positions, y.positions) and torch.equal(x.ids, y.ids)
        assert torch.equal(x.probs, y.probs)


def _broken(setup, change) -> list[dict]:
    rows = [dict(r) for r in setup["rows"]]
    change(rows)
    return rows


@pytest.mark.parametrize(
    "name, change, message",
    [
        (
            "token",
            lambda rows: rows[2].update(input_ids=rows[2]["input_ids"][:5] + [1] + rows[2]["input_ids"][6:]),
            r"row 2: token 5 is 1 in SRC but \d+ in our tokenization of its text",
        ),
        (
            "k",
            lambda rows: rows[1].update(  # K − 1 entries per position
                logprobs=[r[: K - 1] for r in rows[1]["logprobs"]],
                target_token_ids=[r[: K - 1] for r in rows[1]["target_token_ids"]],
            ),
            r"row 1: position 0 has 5 ids and 5 logprobs; method.topk=6 needs ≥ 6 of each \(K mismatch\)",
        ),
        (
            "nan",
            lambda rows: rows[3].update(logprobs=[[float("nan")] * (K + 2)] + rows[3]["logprobs"][1:]),
            r"row 3: position 0 has a NaN logprob",
        ),
    ],
)
def test_malformed_source_gives_one_line(setup, tmp_path, capsys, name, change, message):
    rows = _broken(setup, change)
    src = _write_parquet(tmp_path / f"{name}.parquet", rows)
    assert _import(setup, src, tmp_path / "out") == 2
    line = _one_line(capsys)
    assert re.search(message, line), line


def test_an_import_refused_before_writing_leaves_no_out_directory(setup, tmp_path, capsys):
    """Try-out 65: an import refused once it had made --out (here: model.teacher, whose tokenizer it reads, is
    not there) left an empty directory, which later commands took for an unfinished cache."""
    src = _write_parquet(tmp_path / "ok.parquet", setup["rows"])
    gone = tmp_path / "gone-teacher"
    assert _import(setup, src, tmp_path / "out", f"model.teacher={gone}", "model.tokenizer=teacher") == 2
    assert str(gone) in _one_line(capsys)
    assert not (tmp_path / "out").exists()


def test_an_unfinished_import_is_told_to_import_again(setup, tmp_path, capsys):
    """Try-out 67, F5: an import refused mid-way (a NaN in a later row) leaves its unfinished manifest to resume
    from; `ekd cache info` told it to "rerun the cache build", which refuses an import."""
    rows = _broken(
        setup, lambda rows: rows[3].update(logprobs=[[float("nan")] * (K + 2)] + rows[3]["logprobs"][1:])
    )
    assert _import(setup, _write_parquet(tmp_path / "nan.parquet", rows), tmp_path / "out") == 2
    capsys.readouterr()
    if not (tmp_path / "out" / "manifest.json").is_file():
        pytest.skip("the import was refused before its manifest was written")
    assert main(["cache", "info", str(tmp_path / "out")]) != 0
    line = _one_line(capsys)
    assert "is unfinished" in line and "rerun `ekd cache import SRC --config CONFIG --out DIR`" in line


def test_missing_column_gives_one_line(setup, tmp_path, capsys):
    table = pa.Table.from_pylist([{k: v for k, v in r.items() if k != "logprobs"} for r in setup["rows"]])
    pq.write_table(table, tmp_path / "nolp.parquet")
    assert _import(setup, tmp_path / "nolp.parquet", tmp_path / "out") == 2
    assert "no log-probability column" in _one_line(capsys)
    src = _write_parquet(tmp_path / "ok.parquet", setup["rows"])
    assert _import(setup, src, tmp_path / "out", "--ids-column", "top_ids") == 2
    assert "has no column 'top_ids' (--ids-column)" in _one_line(capsys)


def test_rs_target_is_refused(setup, tmp_path, capsys):
    src = _write_parquet(tmp_path / "ok.parquet", setup["rows"])
    args = ["cache", "import", str(src), "method.target=rs", "--config", setup["cfg"], "--out", str(tmp_path)]
    assert main(args) == 2
    assert "set method.target=topk" in _one_line(capsys)


def test_more_yaml_files_are_merged_after_the_config_as_distill_does(setup, tmp_path, capsys):
    """Try-out 77, F6: ``ekd cache import SRC more.yaml`` took the file for a key=value and refused it; it is
    merged after --config, in order, and key=value overrides win over both."""
    src = _write_parquet(tmp_path / "ok.parquet", setup["rows"])
    more = tmp_path / "more.yaml"
    more.write_text("method:\n  target: rs\n")
    args = ["cache", "import", str(src), str(more), "--config", setup["cfg"], "--out", str(tmp_path / "o")]
    assert main(args) == 2
    assert "set method.target=topk" in _one_line(capsys)  # the file's setting reached the import
    assert main([*args[:4], "method.target=topk", *args[4:]]) == 0, capsys.readouterr().err
    assert CacheReader(tmp_path / "o").info()["samples"] > 0


def test_arguments_in_the_wrong_order_or_a_directory_for_a_yaml_are_said_so(setup, tmp_path, capsys):
    """Try-out 79, F7: more.yaml given first was said as the JSONL's invalid YAML; a directory given as a YAML file
    was 'config file not found'."""
    src = _write_parquet(tmp_path / "ok.parquet", setup["rows"])
    more = tmp_path / "more.yaml"
    more.write_text("method:\n  topk: 6\n")
    out = ["--config", setup["cfg"], "--out", str(tmp_path / "o")]
    assert main(["cache", "import", str(more), str(src), *out]) == 2
    assert f"SRC, the first argument, is {more}, a YAML file; give the Parquet or JSONL" in _one_line(capsys)
    assert main(["cache", "import", str(src), str(tmp_path), *out]) == 2
    assert f"{tmp_path} is a directory, not a config file" in _one_line(capsys)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("tail", ["renormalize", "ghost", "to_gold"])
def test_targets_from_logprobs_equal_topk_target(tail):
    """From the K' largest full-softmax log-probabilities: the native targets (float64 reference)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 53, generator=g, dtype=torch.float64) * 3
    gold = torch.randint(0, 53, (7,), generator=g)
    gold[0] = logits[0].argmax()  # a gold inside the top K
    ref = topk_target(logits, 5, tail, gold)
    lp, ids = torch.log_softmax(logits, -1).topk(8)  # K' = 8 entries, largest first
    t_ids, t_probs, t_tail = topk_from_logprobs(lp, ids, 5, tail, gold, 1.0)
    assert torch.equal(t_ids, ref.ids)
    torch.testing.assert_close(t_probs.float(), ref.probs)
    if tail == "ghost":
        torch.testing.assert_close(t_tail.float(), ref.tail)
    # renormalize is exact at any τ: softmax of ℓ_K/τ equals the top K of softmax(z/τ) renormalized
    r2 = topk_target(logits, 5, "renormalize", tau=2.5)
    torch.testing.assert_close(topk_from_logprobs(lp, ids, 5, "renormalize", gold, 2.5)[1].float(), r2.probs)


def test_estimated_stats_bound_the_true_ones():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(9, 40, generator=g, dtype=torch.float64) * 2
    logp = torch.log_softmax(logits, -1)
    gold = torch.randint(0, 40, (9,), generator=g)
    lp, ids = logp.topk(6)
    gold_lp = torch.where((ids == gold[:, None]).any(-1), logp.gather(1, gold[:, None]).squeeze(1), torch.nan)
    entropy, logp_gold = estimated_stats(lp.float(), gold_lp.float())
    true_h = -(logp.exp() * logp).sum(-1)
    assert (entropy <= true_h.float() + 1e-5).all() and (entropy > 0).all()
    true_g = logp.gather(1, gold[:, None]).squeeze(1).float()
    known = ~torch.isnan(gold_lp)
    torch.testing.assert_close(logp_gold[known], true_g[known])
    assert (logp_gold[~known] >= true_g[~known] - 1e-6).all()


def test_positions_whose_block_holds_part_of_their_document_are_counted(setup, imported, capsys, caplog):
    """Try-out 56, F6: an SRC scored per document (vLLM prompt_logprobs, a KD capture) conditions a target on the
    whole document before it, while a training block that starts inside the document sees only its part of it
    (14% of the positions of a real capture): the import counts those positions and says so. This test's SRC is
    scored on the training blocks, so its targets are right there — the line says that case too."""
    src = _write_parquet(setup["root"] / "teacher-context.parquet", setup["rows"])
    with caplog.at_level(logging.WARNING, logger="ekd"):
        assert _import(setup, src, setup["root"] / "imported-context") == 0
    said = [r.getMessage() for r in caplog.records if "see in their training block" in r.getMessage()]
    cfg = load_config([setup["cfg"]], [f"teacher.cache_dir={imported}"])
    data = prepare_data(cfg, setup["root"] / "context")
    T = data.blocks["train"].input_ids.shape[1]
    starts = np.cumsum([0] + [len(tokens) for _, tokens in _documents(cfg, data)])[:-1]  # (D,) stream offsets
    reader = CacheReader(imported)
    cached = np.concatenate(
        [sid * T + reader.get(sid).positions.numpy() for sid in range(reader.num_samples)]
    )
    doc_start = starts[np.searchsorted(starts, cached, side="right") - 1]  # (P,) start of each position's doc
    other = int((cached // T != doc_start // T).sum())
    assert 0 < other < len(cached)
    assert len(said) == 1 and said[0].startswith(
        f"ekd cache import: {other} of the {len(cached)} cached positions ({100 * other / len(cached):.1f}%) see in "
        "their training block less than the document before them (their document began in an earlier block)"
    ), said


def test_a_broken_jsonl_line_is_named_by_its_line_in_the_file(setup, tmp_path, capsys):
    """Try-out 56, F11: a broken last line of a 60-row JSONL was reported as json's 'line 1 column 2' (of the
    record), not the file's line 61 — hard to find in a multi-GB capture."""
    rows = [json.dumps(r) for r in setup["rows"]]
    for bad, says in (
        ("{broken", "is not JSON (Expecting property name"),
        ("[1, 2]", "is not a JSON object"),
    ):
        src = tmp_path / "broken.jsonl"
        src.write_text("\n".join([*rows, "", bad]) + "\n")  # a blank line between: lines, not rows, counted
        assert _import(setup, src, tmp_path / "out") == 2
        line = _one_line(capsys)
        assert f"{src} line {len(rows) + 2} {says}" in line, line
        assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_bad_jsonl_row_is_named_by_its_line_in_the_file(setup, tmp_path, capsys):
    """Try-out 57, F6: a JSONL row with a logprob row too few was 'row 6' (0-based, blank lines skipped) where
    the file's line 7 (or 9, after two blank lines) held it; Parquet rows keep their 0-based row number."""
    rows = _broken(setup, lambda rows: rows[6].update(logprobs=rows[6]["logprobs"][:-2]))
    lines = [json.dumps(r) for r in rows]
    src = tmp_path / "short.jsonl"
    src.write_text("\n".join([*lines[:2], "", "", *lines[2:]]) + "\n")  # row 6 on line 9
    assert _import(setup, src, tmp_path / "out") == 2
    line = _one_line(capsys)
    assert f"{src} line 9: " in line, line
