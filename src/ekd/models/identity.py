"""Which teacher a figure was measured with: a fingerprint of a model's weight files by a sample of their bytes.

``ekd compare`` pairs KL and top-1 agreement only between runs measured against the same teacher, and gives each
teacher its own row (try-out 39: a teacher retrained in place, at the same path, was 'the same teacher'). Paths
and modification times do not tell: a copy on every node, a re-download or a moved project is the same teacher,
and a retrained one keeps its path. Hashing whole weight files would read a 16 GB teacher at every evaluation, so
:func:`weights_fingerprint` hashes what differs between two trainings of one architecture — every weight — at
few places: each file's name, size, safetensors header (tensor names, dtypes, shapes, offsets) and
:data:`WINDOWS` windows of :data:`WINDOW` bytes spread evenly over it (about 64 KiB read per file).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

WINDOWS = 16
WINDOW = 4096  # bytes

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def weights_fingerprint(spec: str) -> str | None:
    """``sampled-sha256:<hex>`` of the weight files of the local model directory ``spec`` (see the module
    docstring), None for a hub id, a preset or a directory without weight files. An edit of a few weights that
    falls between the windows is not seen; a retraining, which moves every weight, is."""
    path = Path(spec).expanduser()
    if spec.startswith("preset:") or not path.is_dir():
        return None
    files = sorted(f for f in path.iterdir() if f.is_file() and f.suffix in WEIGHT_SUFFIXES)
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with f.open("rb") as fh:
            if f.suffix == ".safetensors" and size >= 8:
                length = int.from_bytes(fh.read(8), "little")
                h.update(fh.read(min(length, size - 8)))  # the header: names, dtypes, shapes, offsets
            last = max(size - WINDOW, 0)
            for k in range(WINDOWS):
                fh.seek(last * k // (WINDOWS - 1))
                h.update(fh.read(WINDOW))
    return f"sampled-sha256:{h.hexdigest()}"


def teacher_identity(cfg: Any) -> dict[str, Any]:
    """The teacher a run's KL, agreement and teacher figures are measured with, as eval.json records it
    (:data:`ekd.eval.eval_json.TEACHER_KEY`): ``model.teacher``, ``model.revision``, ``model.teacher_dtype`` and,
    for a local directory, :func:`weights_fingerprint` (``weights``; None otherwise). ``cfg``: a Config."""
    spec = cfg.model.teacher
    return {
        "model": spec,
        "revision": cfg.model.revision,
        "weights": weights_fingerprint(spec),
        "dtype": cfg.model.teacher_dtype,
    }
