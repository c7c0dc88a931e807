"""The builtin corpus ``pystdlib``: the Python standard library source of the running interpreter.

No download, the same text on every machine with the same Python version, and natural distribution
shifts. Splits (keys of :func:`pystdlib_splits`):

- ``train``: library modules (``*.py`` under ``sysconfig.get_paths()["stdlib"]``), one document per file,
  excluding tests (``test/``, ``tests/``, ``idle_test/``, ``test_*.py``), ``idlelib``, ``site-packages``,
  ``dist-packages``, ``lib-dynload``, build configuration and ``_sysconfigdata*``.
- ``eval``: the held-out in-distribution set. The split is **by top-level module** (``json/decoder.py``
  belongs to ``json``), decided by a hash of the module name (:func:`ekd.data.split.held_out_keys`),
  about ``eval_fraction`` of the modules and never empty; no module contributes to both sets.
- ``shift_tests``: the interpreter's own test suite (``test/**/*.py``), code in a different style. Absent
  (with a log line) when the interpreter was installed without its tests.
- ``shift_docstrings``: English prose, the docstrings (``ast.get_docstring``) of the modules, classes and
  functions of the held-out modules, one document per docstring.

Documents are ordered by a hash of their path, so a ``max_chars`` cap takes a deterministic, diverse
subset and reads only the files it keeps (file sizes are checked before reading). Files that are not
UTF-8 are skipped.
"""

from __future__ import annotations

import ast
import logging
import os
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path

from ekd.data.document import Document
from ekd.data.split import held_out_keys, stable_unit
from ekd.words import counted

logger = logging.getLogger(__name__)

PYSTDLIB_SPLITS = ("train", "eval", "shift_tests", "shift_docstrings")
EXCLUDED_TOP_LEVEL = {"test", "idlelib", "site-packages", "dist-packages", "lib-dynload", "__pycache__"}
EXCLUDED_DIRS = {"test", "tests", "idle_test", "__pycache__"}
MIN_DOCSTRING_CHARS = 20  # shorter docstrings ("Return x.") carry almost no prose


def stdlib_root() -> Path:
    """The standard library directory of the running interpreter."""
    return Path(sysconfig.get_paths()["stdlib"])


def pystdlib_splits(
    max_chars: int | None = None,
    eval_fraction: float = 0.05,
    names: Iterable[str] | None = None,
    root: Path | None = None,
) -> dict[str, list[Document]]:
    """Build the pystdlib splits.

    Args:
        max_chars: Cap on the total characters of each split (``None`` = no cap). Whole documents are
            taken in hash order while they fit; if none fits, the first is truncated to the cap.
        eval_fraction: Target fraction of top-level modules held out for ``eval`` (0 = no ``eval`` and
            no ``shift_docstrings``: both come back empty).
        names: Only build these splits (default: all of :data:`PYSTDLIB_SPLITS`).
        root: Standard library directory (default: the running interpreter's).

    Returns:
        Split name → documents. ``doc_id`` is the path relative to ``root`` (``json/decoder.py``), or
        ``path::Qualified.name`` for docstrings. ``shift_tests`` is missing when ``root/test`` is absent.
    """
    root = stdlib_root() if root is None else Path(root)
    wanted = set(PYSTDLIB_SPLITS if names is None else names)
    unknown = wanted - set(PYSTDLIB_SPLITS)
    if unknown:
        raise ValueError(f"unknown pystdlib split(s) {sorted(unknown)}; expected {PYSTDLIB_SPLITS}")
    splits: dict[str, list[Document]] = {}
    if wanted & {"train", "eval", "shift_docstrings"}:
        files = library_files(root)
        held = held_out_keys((module_of(f) for f in files), eval_fraction)
        eval_files = [f for f in files if module_of(f) in held]
        if "train" in wanted:
            splits["train"] = _file_documents(root, [f for f in files if module_of(f) not in held], max_chars)
        if "eval" in wanted:
            splits["eval"] = _file_documents(root, eval_files, max_chars)
        if "shift_docstrings" in wanted:
            splits["shift_docstrings"] = _capped(_docstring_documents(root, eval_files), max_chars)
        logger.info(
            "pystdlib: held out %d of %s: %s",
            len(held),
            counted(len({module_of(f) for f in files}), "module"),
            ", ".join(sorted(held)),
        )
    if "shift_tests" in wanted:
        if (root / "test").is_dir():
            tests = sorted(
                (p.relative_to(root).as_posix() for p in (root / "test").rglob("*.py")), key=_path_order
            )
            splits["shift_tests"] = _file_documents(root, tests, max_chars)
        else:
            logger.info(
                "pystdlib: no test suite installed at %s; skipping the shift_tests eval set", root / "test"
            )
    ordered = {name: splits[name] for name in PYSTDLIB_SPLITS if name in splits}
    for name, docs in ordered.items():
        logger.info(
            "pystdlib/%s: %s, %s",
            name,
            counted(len(docs), "document"),
            counted(sum(len(d.text) for d in docs), "character"),
        )
    return ordered


def module_of(relpath: str) -> str:
    """Top-level module of a path relative to the stdlib root: ``json/decoder.py`` → ``json``."""
    first = relpath.split("/", 1)[0]
    return first.removesuffix(".py")


def library_files(root: Path) -> list[str]:
    """Relative posix paths of the library (non-test) ``*.py`` files, in hash order."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        top = rel_dir == Path(".")
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in EXCLUDED_DIRS
            and not d.startswith(".")
            and not (top and (d in EXCLUDED_TOP_LEVEL or d.startswith("config-")))
        )
        for name in filenames:
            if name.endswith(".py") and not name.startswith(("test_", "_sysconfigdata")):
                found.append((rel_dir / name).as_posix())
    return sorted(found, key=_path_order)


def _path_order(relpath: str) -> tuple[float, str]:
    return (stable_unit(relpath), relpath)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def _file_documents(root: Path, relpaths: list[str], max_chars: int | None) -> list[Document]:
    """One document per file, in the given order, reading only the files kept under ``max_chars``."""
    docs: list[Document] = []
    total = 0
    skipped = 0
    for rel in relpaths:
        path = root / rel
        if max_chars is not None:
            # UTF-8 never has fewer bytes than characters: a file whose size fits has text that fits.
            size = path.stat().st_size
            if size == 0 or total + size > max_chars:
                continue
        text = _read(path)
        if text is None:
            skipped += 1
            continue
        if not text.strip():
            continue
        docs.append(Document(text=text, doc_id=rel))
        total += len(text)
    if max_chars is not None and not docs:
        docs = _truncated_first(root, relpaths, max_chars)
    if skipped:
        logger.info(
            "pystdlib: skipped %s that %s not UTF-8",
            counted(skipped, "file"),
            "is" if skipped == 1 else "are",
        )
    return docs


def _truncated_first(root: Path, relpaths: list[str], max_chars: int) -> list[Document]:
    """When no whole file fits under the cap, the first readable non-empty file cut to ``max_chars``."""
    for rel in relpaths:
        text = _read(root / rel)
        if text and text.strip():
            return [Document(text=text[:max_chars], doc_id=rel)]
    return []


def _docstring_documents(root: Path, relpaths: list[str]) -> Iterator[Document]:
    for rel in relpaths:
        text = _read(root / rel)
        if text is None:
            continue
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            continue
        for qualname, doc in _docstrings(tree, ""):
            if len(doc) >= MIN_DOCSTRING_CHARS:
                yield Document(text=doc, doc_id=f"{rel}::{qualname or '<module>'}")


_DEFINITIONS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _docstrings(node: ast.AST, qualname: str) -> Iterator[tuple[str, str]]:
    """(qualified name, docstring) of ``node`` and the classes/functions nested in it, in source order."""
    doc = ast.get_docstring(node) if isinstance(node, (ast.Module, *_DEFINITIONS)) else None
    doc = doc.strip() if doc else None
    if doc:
        yield qualname, doc
    for child in ast.iter_child_nodes(node):
        if isinstance(child, _DEFINITIONS):
            yield from _docstrings(child, f"{qualname}.{child.name}" if qualname else child.name)
        elif not isinstance(child, ast.expr):  # definitions inside if/try/with blocks count too
            yield from _docstrings(child, qualname)


def _capped(docs: Iterable[Document], max_chars: int | None) -> list[Document]:
    """Take documents in order while they fit under ``max_chars``; stop reading once the cap is reached."""
    kept: list[Document] = []
    total = 0
    for doc in docs:
        if max_chars is None:
            kept.append(doc)
            continue
        if total + len(doc.text) <= max_chars:
            kept.append(doc)
            total += len(doc.text)
        elif not kept:
            kept.append(Document(text=doc.text[:max_chars], doc_id=doc.doc_id))
            total = max_chars
        if max_chars - total < MIN_DOCSTRING_CHARS:
            break
    return kept
