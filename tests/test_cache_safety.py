"""A damaged teacher cache (issue 11, items 6 and 12): a rerun rebuilds a shard corrupted in place (its
sha256, not only its size, is checked), the manifest protects itself (an edited signature is refused) and is
type-checked (a manifest missing ``shards`` is one line), and every refusal changes no file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest

from ekd.teacher.cache import CacheError, CacheReader
from ekd.teacher.cache.manifest import manifest_sha256
from hostile import cli, failing_open, one_error_line, snapshot, unchanged
from tiny import config_file, write_corpus


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """An RS cache of the tiny corpus (8 samples per shard) built through the CLI, and its config."""
    root = tmp_path_factory.mktemp("cache-safety")
    corpus = write_corpus(root / "corpus", n_docs=24)
    cache = root / "cache"
    config = config_file(
        root,
        corpus,
        "rs",
        **{"method.preset": "rskd", "teacher.cache_dir": str(cache), "teacher.cache_shard_samples": 8},
    )
    from ekd.cli import main

    assert main(["-q", "cache", config]) == 0
    return {"cache": cache, "config": config, "root": root}


@pytest.fixture
def cache(built, tmp_path):
    copy = tmp_path / "cache"
    shutil.copytree(built["cache"], copy)
    return copy


def _manifest(cache: Path) -> dict:
    return json.loads((cache / "manifest.json").read_text())


def _write_manifest(cache: Path, manifest: dict, seal: bool) -> None:
    """Write an edited manifest; ``seal`` recomputes its manifest_sha256 (a hand-made manifest)."""
    if seal:
        manifest["manifest_sha256"] = manifest_sha256(manifest)
    (cache / "manifest.json").write_text(json.dumps(manifest))


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_rerun_rebuilds_a_shard_corrupted_in_place(built, cache, capsys, caplog):
    pristine = snapshot(built["cache"])
    _flip(cache / "shard-00001.bin", 100)  # same size, other bytes
    assert snapshot(cache) != pristine
    with caplog.at_level(logging.WARNING):
        rc, _, err = cli(capsys, "cache", built["config"], f"teacher.cache_dir={cache}")
    assert rc == 0, err
    assert "shard-00001.bin fails its sha256; rebuilding" in caplog.text
    assert snapshot(cache) == pristine  # rebuilt byte for byte
    assert cli(capsys, "cache", "verify", cache)[0] == 0


def test_manifest_is_sealed(cache):
    manifest = _manifest(cache)
    assert manifest["manifest_sha256"] == manifest_sha256(manifest)
    assert len(manifest["manifest_sha256"]) == 64


def _edit_signature(m: dict) -> dict:
    m["signature"]["seed"] = 1234  # valid JSON, plausible value: only the seal tells
    return m


def _drop(key: str):
    def edit(m: dict) -> dict:
        del m[key]
        return m

    return edit


def _shard(field: str, value):
    def edit(m: dict) -> dict:
        m["shards"][0][field] = value
        return m

    return edit


def _layout(m: dict) -> dict:
    m["layout"]["block_length"] = "32"
    return m


MANIFEST_DAMAGE = {
    "signature-edited": (_edit_signature, False, "was edited or is corrupt"),
    "shard-hash-edited": (_shard("bin_sha256", "0" * 64), False, "was edited or is corrupt"),
    "no-shards": (_drop("shards"), True, "'shards' is missing"),
    "no-layout": (_drop("layout"), True, "'layout' is missing"),
    "shard-name-path": (_shard("name", "../../etc/passwd"), True, "bad index or name"),
    "shard-size-string": (_shard("bin_bytes", "12"), True, "lacks 'bin_bytes'"),
    "layout-type": (_layout, True, "invalid layout"),
    # try-out 159, F1's class: valid JSON of another shape where a build looks for the cache's kind
    "signature-text": (lambda m: {**m, "signature": "x"}, True, "'signature' has the wrong type"),
}


@pytest.mark.parametrize("command", ["verify", "info", "build", "distill"])
@pytest.mark.parametrize("damage", list(MANIFEST_DAMAGE), ids=list(MANIFEST_DAMAGE))
def test_damaged_manifest_is_one_line_and_changes_nothing(built, cache, capsys, damage, command):
    edit, seal, message = MANIFEST_DAMAGE[damage]
    _write_manifest(cache, edit(_manifest(cache)), seal)
    before = snapshot(cache)
    args = {
        "verify": ["cache", "verify", cache],
        "info": ["cache", "info", cache],
        "build": ["cache", built["config"], f"teacher.cache_dir={cache}"],
        "distill": [
            "distill",
            built["config"],
            f"teacher.cache_dir={cache}",
            "teacher.source=cache",
            f"run.output_dir={cache.parent / 'runs'}",
        ],
    }[command]
    rc, _, err = cli(capsys, *args)
    assert message in one_error_line(rc, err)
    unchanged(before, cache)
    assert not (cache.parent / "runs" / "rs").exists()  # a failed start leaves no run behind


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda c: (c / "manifest.json").write_text(""), "not valid JSON"),
        (lambda c: (c / "manifest.json").write_text("[1, 2]"), "not a JSON object"),
        (lambda c: (c / "manifest.json").write_bytes(b'{"format": "\xff\xfe"}'), "not UTF-8"),
        (lambda c: _flip(c / "shard-00000.bin", 100), "shard-00000.bin is corrupted"),
        (lambda c: _flip(c / "shard-00002.idx", 30), "shard-00002.idx is corrupted"),
        (lambda c: (c / "shard-00001.idx").write_bytes(b""), "shard-00001.idx is truncated"),
        (lambda c: (c / "shard-00001.bin").unlink(), "shard-00001.bin is missing"),
    ],
    ids=[
        "manifest-empty",
        "manifest-list",
        "manifest-not-utf8",
        "bin-flip",
        "idx-flip",
        "idx-empty",
        "bin-missing",
    ],
)
def test_verify_names_each_damage_in_one_line(cache, capsys, damage, message):
    damage(cache)
    before = snapshot(cache)
    rc, _, err = cli(capsys, "cache", "verify", cache)
    assert message in one_error_line(rc, err)
    unchanged(before, cache)


@pytest.mark.parametrize(
    "damaged, offset",
    [("shard-00000.idx", 32), ("shard-00000.idx", 200), ("shard-00000.bin", 100)],
    ids=["idx-entry-read", "idx-entry-unread", "bin-record"],
)
def test_distill_from_a_damaged_cache_names_the_damaged_file(built, cache, capsys, damaged, offset):
    """Byte 16 + 24·i + 16 of an .idx is sample i's record length (32: sample 0, read in the run's second
    step; 200: sample 7, not read in its 3 steps): the record the entry points at fails its CRC-32, which the
    reader used to blame on the .bin. Training names the file `ekd cache verify` names, in one line with the
    fix, as soon as the shard is opened, and how to go on with the run it stopped."""
    _flip(cache / damaged, offset)
    before = snapshot(cache)
    rc, _, err = cli(capsys, "cache", "verify", cache)
    assert f"{damaged} is corrupted (sha256 checksum mismatch)" in one_error_line(rc, err)
    rc, _, err = cli(
        capsys,
        "distill",
        built["config"],
        f"teacher.cache_dir={cache}",
        "teacher.source=cache",
        f"run.output_dir={cache.parent / 'runs'}",
    )
    line = one_error_line(rc, err)
    assert f"{damaged} is corrupted" in line and "run `ekd cache CONFIG` again" in line, line
    # try-out 21: the run had started (the damaged record is read in its second step); the line says how to go on
    assert line.endswith(
        "the run saved no checkpoint: once fixed, start again with the same command and --overwrite"
    )
    other = damaged.replace(".idx", ".bin") if damaged.endswith(".idx") else damaged.replace(".bin", ".idx")
    assert other not in line, line
    unchanged(before, cache)
    if damaged.endswith(".idx"):  # the index is checked whole: sample 0's intact entry is not trusted either
        with pytest.raises(CacheError, match=r"shard-00000\.idx is corrupted \(sha256 checksum mismatch\)"):
            CacheReader(cache).get(0)


def test_verify_notices_a_same_size_shard_edit(cache, capsys):
    """The case of the issue: bytes changed in place, sizes equal."""
    path = cache / "shard-00000.bin"
    size = path.stat().st_size
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert path.stat().st_size == size
    assert hashlib.sha256(bytes(data)).hexdigest() != _manifest(cache)["shards"][0]["bin_sha256"]
    rc, _, err = cli(capsys, "cache", "verify", cache)
    assert "sha256" in one_error_line(rc, err)


@pytest.mark.parametrize(
    "code, message", [(errno.ENOSPC, "no space left on device"), (errno.EROFS, "read-only")]
)
def test_disk_failure_during_a_build_is_one_line_and_the_rerun_finishes_it(
    built, tmp_path, capsys, monkeypatch, code, message
):
    cache = tmp_path / "cache"
    failing_open(monkeypatch, code, "shard-00001.idx")
    rc, _, err = cli(capsys, "cache", built["config"], f"teacher.cache_dir={cache}")
    assert f"{message}" in one_error_line(rc, err) and str(cache) in err
    assert not list(cache.glob("*.tmp"))  # no temp file keeps the bytes of a failed write
    monkeypatch.undo()
    assert cli(capsys, "cache", built["config"], f"teacher.cache_dir={cache}")[0] == 0
    assert snapshot(cache) == snapshot(built["cache"])  # finished, byte for byte


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_damaged_shard_names_the_cache_and_a_plain_rerun_repairs_it(built, cache, capsys, damage):
    """The error says what works: rerunning `ekd cache CONFIG` (no --overwrite) rebuilds only that shard."""

    pristine = snapshot(built["cache"])
    shard = cache / "shard-00001.bin"
    if damage == "truncated":
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    else:
        shard.unlink()
    with pytest.raises(CacheError) as e:
        CacheReader(cache).get(8)  # the first sample of shard 1, as training reads it
    assert str(cache) in str(e.value) and "run `ekd cache CONFIG` again" in str(e.value), e.value
    rc, _, err = cli(capsys, "cache", "verify", cache)
    line = one_error_line(rc, err)
    assert str(cache) in line and "run `ekd cache CONFIG` again" in line and "--overwrite" not in line
    rc, _, err = cli(capsys, "cache", built["config"], f"teacher.cache_dir={cache}")
    assert rc == 0, err
    assert snapshot(cache) == pristine  # rebuilt byte for byte, the other shards kept


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_a_non_empty_directory_without_a_cache_is_refused(built, tmp_path, capsys, overwrite):
    """A teacher.cache_dir mistyped as a run directory: one line naming it, nothing written there."""
    victim = tmp_path / "run"
    (victim / "student").mkdir(parents=True)
    (victim / "student" / "config.json").write_text("{}")
    (victim / "eval.json").write_text("{}")
    before = snapshot(victim)
    args = ["cache", built["config"], f"teacher.cache_dir={victim}", *(["--overwrite"] if overwrite else [])]
    line = one_error_line(*cli(capsys, *args)[::2])
    assert str(victim) in line and "holds no teacher cache" in line and "new or empty directory" in line, line
    unchanged(before, victim)
    assert sorted(p.name for p in victim.iterdir()) == ["eval.json", "student"]


def test_an_unfinished_cache_without_a_manifest_is_resumed(built, tmp_path, capsys):
    """A build killed after its tokenizer or a temp shard, before any manifest, is ours: the rerun goes on."""
    cache = tmp_path / "cache"
    cache.mkdir()
    if (built["cache"] / "tokenizer").is_dir():
        shutil.copytree(built["cache"] / "tokenizer", cache / "tokenizer")
    (cache / "shard-00000.bin.tmp").write_bytes(b"half a shard")
    rc, _, err = cli(capsys, "cache", built["config"], f"teacher.cache_dir={cache}")
    assert rc == 0, err
    assert snapshot(cache) == snapshot(built["cache"])


def test_info_warns_about_a_truncated_shard(cache, capsys):
    """``ekd cache info`` reads its figures from the manifest; a shard of the wrong size is warned about (a stat
    per file), with the repair, and nothing is changed."""
    shard = cache / "shard-00001.bin"
    shard.write_bytes(shard.read_bytes()[:100])
    before = snapshot(cache)
    rc, out, err = cli(capsys, "cache", "info", cache)
    assert rc == 0 and "bytes_per_position" in out
    assert err.count("\n") == 1 and "shard-00001.bin is truncated" in err and "ekd cache CONFIG" in err
    unchanged(before, cache)
    rc, _, err = cli(capsys, "cache", "info", cache.parent / "none")
    assert rc == 2


def test_info_of_an_intact_cache_warns_about_nothing(cache, capsys):
    rc, _, err = cli(capsys, "cache", "info", cache)
    assert rc == 0 and err == ""
