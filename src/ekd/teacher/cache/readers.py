"""Who reads a teacher cache: a run training from it holds its readers' lock shared (:func:`reading`) for as long as it
trains; a command that would delete its shards (``ekd cache --overwrite``, ``ekd cache import --overwrite``) takes it
exclusively (:func:`no_readers`) and is refused while a run reads (try-out 130, F2: a rebuild deleted the shards
under a training run, which then died blaming a damaged shard, every step since its last checkpoint lost)."""

from __future__ import annotations

from pathlib import Path

from ekd.locks import ReadLock, make_readers_lock
from ekd.teacher.cache.format import CacheError


def reading(directory: Path) -> ReadLock:
    """``directory``'s readers' lock, held shared by this process while it trains from the cache.

    Raises:
        CacheError: a rebuild of the cache (``--overwrite``) holds it: its shards are being replaced.
    """
    readers = ReadLock(directory, shared=True)
    if not readers.acquire():
        raise CacheError(
            f"{directory} is being rebuilt by another ekd process (ekd cache or ekd cache import, --overwrite"
            f"{readers.holders_said()}): wait for it to end, then train from it, or name another teacher.cache_dir"
        )
    return readers


def no_readers(directory: Path, elsewhere: str = "build into another teacher.cache_dir") -> ReadLock:
    """``directory``'s readers' lock, held exclusively: no run reads the cache, nor starts to while it is held;
    ``elsewhere``: the way round the refusal names (``ekd cache import``: another ``--out``).

    Raises:
        CacheError: a run is training from the cache (it holds the lock shared): replacing its shards would end it.
    """
    make_readers_lock(directory)
    readers = ReadLock(directory, shared=False)
    if not readers.acquire():
        raise CacheError(
            f"{directory} is being read by a run training from it (another ekd process{readers.holders_said()}); "
            f"--overwrite would delete the shards under it: wait for it to end, or {elsewhere}"
        )
    return readers
