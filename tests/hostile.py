"""Helpers for the hostile-input tests: run the CLI in-process, check "one clear line, nothing lost"."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from ekd.cli import main


def snapshot(root: Path) -> dict[str, str]:
    """relative path → sha256 of every file under ``root``."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(root).rglob("*"))
        if p.is_file()
    }


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """``ekd ARGS`` in-process; returns (exit code, stdout, stderr). An exception escaping main is a traceback
    and fails the test by propagating."""
    capsys.readouterr()
    rc = main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def one_error_line(rc: int, err: str) -> str:
    """Exit code 2 with exactly one stderr line ``ekd: error: ...`` (no traceback); returns the line."""
    lines = err.strip().splitlines()
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("ekd: error: "), lines
    assert "Traceback" not in err
    return lines[0]


def unchanged(before: dict[str, str], root: Path) -> None:
    """Every file of ``before`` (a snapshot of ``root``) is still there with the same bytes."""
    after = snapshot(root)
    changed = [k for k, v in before.items() if after.get(k) != v]
    assert not changed, f"files changed or lost: {changed[:10]}"


def make_workspace(root: Path, name: str, extra: dict) -> Path:
    """``root/{corpus/, runs/<name>/, <name>.yaml}``: a finished tiny run made through the CLI with paths
    relative to ``root`` (so a copy of ``root`` is the same run)."""
    from tiny import config_file, write_corpus

    cwd = os.getcwd()
    os.chdir(root)
    try:
        write_corpus(Path("corpus"), n_docs=24)
        assert main(["distill", config_file(Path("."), Path("corpus"), name, **extra)]) == 0
    finally:
        os.chdir(cwd)
    return root


def copy_workspace(template: Path, tmp_path: Path, monkeypatch) -> Path:
    """A private copy of a workspace made by :func:`make_workspace`, as the working directory."""

    root = tmp_path / "ws"
    shutil.copytree(template, root)
    monkeypatch.chdir(root)
    return root


def failing_open(monkeypatch, code: int, when: str) -> None:
    """Make every write of ekd.io to a path containing ``when`` fail with ``code`` after a few bytes."""
    real_open = open

    class Failing:
        def __init__(self, f):
            self.f, self.left = f, 64

        def write(self, data):
            if len(data) > self.left:
                self.f.write(bytes(data[: self.left]))
                raise OSError(code, os.strerror(code))
            self.left -= len(data)
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return Failing(f) if when in str(path) and "w" in mode else f

    import ekd.io  # atomic_file looks ``open`` up in its module first

    monkeypatch.setattr(ekd.io, "open", fake_open, raising=False)
