"""Helpers for the hostile-input tests: run the CLI in-process, check "one clear line, nothing lost"."""

from __future__ import annotations

import hashlib
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
