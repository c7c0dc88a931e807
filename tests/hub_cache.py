"""A Hugging Face hub cache made by hand, as ``hf download`` leaves it: ``models--ORG--NAME/`` with content-named
``blobs/``, ``snapshots/<commit>/`` of links into them and ``refs/<branch>`` holding a commit."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path


def put_in_hub_cache(
    hub: Path, repo_id: str, source: Path, commit: str, refs: tuple[str, ...] = ("main",)
) -> Path:
    """Put the files of the directory ``source`` under ``hub`` as ``repo_id``'s snapshot ``commit`` (40 hex
    digits), each a link to its blob, and point ``refs`` at it; the snapshot's directory."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for f in sorted(p for p in source.iterdir() if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        if not blob.exists():
            shutil.copyfile(f, blob)
        (snapshot / f.name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)
    return snapshot


def point_ref(hub: Path, repo_id: str, commit: str, ref: str = "main") -> None:
    """Move ``repo_id``'s branch ``ref`` to ``commit``, as a download of newer weights does."""
    (hub / ("models--" + repo_id.replace("/", "--")) / "refs" / ref).write_text(commit)
