"""ekd's own outputs inside a ``data.source`` directory, through ``ekd distill``: a token store
(``data.store_dir``) or run directories (``run.output_dir``) below the corpus are never read as documents
and never change the token store's key, so every run reuses one store."""

from __future__ import annotations

from pathlib import Path

from tiny import tiny_overrides, write_corpus


def _distill(tmp: Path, corpus: Path, name: str, *extra: str, **overrides: object) -> None:
    from ekd.cli import main

    args = tiny_overrides(tmp, corpus, name, **{"train.max_steps": 1, "eval.teacher": False, **overrides})
    assert main(["-q", "distill", *args, *extra]) == 0


def _keys(stores: Path) -> list[str]:
    return sorted(p.name for p in stores.iterdir() if p.is_dir())


def test_a_token_store_inside_the_corpus_is_reused_by_every_run(tmp_path: Path) -> None:
    """The store's manifest.json and <key>.lock were read as documents: each run built a new store."""
    corpus = write_corpus(tmp_path / "corpus", n_docs=12)
    stores = corpus / "stores"
    for i in range(3):
        _distill(tmp_path, corpus, f"s{i}", **{"data.store_dir": stores})
        assert len(_keys(stores)) == 1, _keys(stores)
    (key,) = _keys(stores)
    (stores / f"{key}.lock").write_text("12345\n")  # a lock left by a killed build: not read either
    _distill(tmp_path, corpus, "s3", **{"data.store_dir": stores})
    assert _keys(stores) == [key]


def test_run_directories_inside_the_corpus_do_not_change_the_store_key(tmp_path: Path) -> None:
    """The run lock runs/.<name>.lock (a pid) and the run --overwrite moves aside (runs/.<name>.replaced) were
    signed: every run re-keyed the store."""
    corpus = write_corpus(tmp_path / "corpus", n_docs=12)
    stores = tmp_path / "stores"
    runs = corpus / "runs"
    _distill(tmp_path, corpus, "a", **{"data.store_dir": stores, "run.output_dir": runs})
    _distill(tmp_path, corpus, "b", **{"data.store_dir": stores, "run.output_dir": runs})
    _distill(tmp_path, corpus, "a", "--overwrite", **{"data.store_dir": stores, "run.output_dir": runs})
    assert len(_keys(stores)) == 1, _keys(stores)


def test_ekd_lock_files_of_every_kind_are_told_from_a_users(tmp_path: Path) -> None:
    """A lock records its holder's host beside its pid (try-out 130, F7), and a cache's readers hold an empty
    `.<cache>.readers` (F2): both are ekd's, never documents of a corpus nor part of a store's key."""
    from ekd.data.text_dir import is_lock_file

    (tmp_path / ".r.lock").write_text("4242 node-7.cluster\n")
    (tmp_path / ".cache.readers").write_text("")
    (tmp_path / "yarn.lock").write_text("# yarn lockfile v1\n")
    (tmp_path / "notes.readers").write_text("")
    assert is_lock_file(tmp_path / ".r.lock") and is_lock_file(tmp_path / ".cache.readers")
    assert not is_lock_file(tmp_path / "yarn.lock") and not is_lock_file(tmp_path / "notes.readers")
