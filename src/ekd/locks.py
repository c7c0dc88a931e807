"""Exclusive locks between ekd processes: one mechanism for every directory two processes must not write at once.

A lock is ``fcntl.flock`` on a lock file beside the directory it guards (``<key>.lock`` beside a token store,
``.<name>.lock`` beside a run directory or cache: outside it, because a run directory is moved aside and put
back), or inside it where its parent is read-only (:func:`directory_lock`).
The OS releases a flock when its process ends, however it ends (an error, SIGKILL, a lost node), so a lock is
never stale. The holder writes its pid into the file, so that a refusal can name it, and removes the file when
it releases the lock; a lock file left by a killed process is simply taken by the next one.

:class:`FileLock` is the lock (a ``with`` block on a held one releases it at the end); :func:`locked` holds one
for a block, waiting for another holder (the token store: the second process reuses what the first built);
:func:`lock_directory` and :func:`holding` refuse instead (a run directory, a teacher cache: a second writer is a
mistake, not work to share).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from ekd.errors import EkdError
from ekd.io import DiskError, make_dirs, writing

NO_LOCKS = frozenset({errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP})
"""``errno`` of ``flock`` on a file system that has no locks (Lustre mounted without ``flock``, NFSv3 without
lockd)."""


def _flock(f, wait: bool) -> bool:
    """Take an exclusive flock on the open file ``f``: False when another process holds one and ``wait`` is
    False (else waits for it).

    Raises:
        DiskError: the file system has no locks (:data:`NO_LOCKS`; try-out 130, F3: a traceback from every
            command), naming the directory and the way on. Other OS errors propagate.
    """
    try:
        fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno not in NO_LOCKS:
            raise
        where = Path(f.name).parent
        raise DiskError(
            f"the file system of {where} has no file locks ({e.strerror}), which ekd takes so that two jobs never "
            "write one run, cache or token store at once: put run.output_dir, teacher.cache_dir and "
            "data.store_dir on one that has (a local disk, Lustre mounted with -o flock, NFS with its lock daemon)"
        ) from None
    return True


class FileLock:
    """An exclusive ``flock`` on ``path`` (created if absent; its directory must exist).

    Acquiring checks, after the flock is granted, that ``path`` is still the file it locked: a holder that
    released removes the file, and a process that opened it just before must then lock the new one instead.
    ``with lock:`` on a taken lock releases it when the block ends, however it ends (on one not held, nothing).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self, wait: bool) -> bool:
        """Take the lock; returns False if another process holds it and ``wait`` is False.

        Raises:
            DiskError: the lock file cannot be created (the directory is read-only, a directory is in the way).
        """
        while True:
            with writing(self.path.parent):
                try:
                    f = open(self.path, "a+")  # noqa: SIM115 (held open for as long as the lock is held)
                except FileNotFoundError as e:  # where nothing can be created (/proc): not a missing input
                    raise DiskError(
                        f"cannot create the lock file {self.path} ({e.strerror}); choose another directory"
                    ) from None
            try:
                try:
                    free = _flock(f, wait)
                except DiskError:  # no file locks there: the empty file this process made is not left behind
                    with suppress(OSError):
                        if os.fstat(f.fileno()).st_size == 0:
                            self.path.unlink()
                    raise
                if not free:
                    f.close()
                    return False
                with suppress(FileNotFoundError):
                    if os.stat(self.path).st_ino == os.fstat(f.fileno()).st_ino:
                        self._write_pid(f)
                        self._file = f
                        return True
                f.close()  # the holder released and removed the file we had opened: lock the new one
            except BaseException:
                with suppress(OSError):  # its unwritten pid may fail to flush again (no space left)
                    f.close()
                raise

    def _write_pid(self, f) -> None:
        """Write this process's pid into the lock file ``f`` it has just locked. Where that cannot be written
        (try-out 87, F1/F2: no space left, a traceback), the file is removed and the lock given up.

        Raises:
            DiskError: one line naming the directory and the fix.
        """
        try:
            with writing(self.path.parent):
                f.seek(0)
                f.truncate()
                # the host: a shared file system's other node
                f.write(f"{os.getpid()} {socket.gethostname()}\n")
                f.flush()
        except BaseException:
            with suppress(OSError):  # ours (the caller compared inodes under the lock)
                self.path.unlink()
            raise

    def release(self) -> None:
        """Remove the lock file and release the lock (a no-op when not held)."""
        if self._file is None:
            return
        with suppress(OSError):  # only our own file: one removed under us may since be another process's lock
            if os.stat(self.path).st_ino == os.fstat(self._file.fileno()).st_ino:
                self.path.unlink()  # while still held: a process that opened it meanwhile finds it gone, retries
        self._file.close()  # releases the flock
        self._file = None

    def __enter__(self) -> FileLock:
        """The block holds what ``acquire`` (or :func:`lock_directory`) took; it takes nothing itself. A lock not
        held — :func:`lock_directory` of a read-only directory, where no process of this user can write and so
        nothing needs guarding — guards nothing and releases nothing."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def holder(self) -> int | None:
        """The pid written by the process holding the lock, or None if it cannot be read (yet)."""
        try:
            return int(self.path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def holder_said(self, pid: int | None = None) -> str:
        """``"another ekd process (pid 4242)"``, with ``" on node-7"`` where the holder wrote another host than this
        one (a shared file system whose locks span nodes: try-out 130, F7 — a pid `ps` here cannot find); ``pid``: the
        holder's as a probe found it, said where the file no longer holds one."""
        try:
            written, *host = self.path.read_text().split()
            pid = int(written)
        except (OSError, ValueError):
            # none written (yet), or released meanwhile: the pid a probe found, if any
            host = []
        if not pid:
            return "another ekd process"
        elsewhere = f" on {host[0]}" if host and host[0] != socket.gethostname() else ""
        return f"another ekd process (pid {pid}{elsewhere})"


@contextmanager
def locked(path: Path, on_wait: Callable[[int | None], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the block, waiting for another holder; ``on_wait`` is called
    once before waiting, with the holder's pid (None if unreadable), to log why nothing happens and for whom."""
    lock = FileLock(path)
    if not lock.acquire(wait=False):
        if on_wait is not None:
            on_wait(lock.holder())
        lock.acquire(wait=True)
    with lock:
        yield


INSIDE = ".ekd.lock"
"""The lock file inside a directory whose parent cannot hold one (:func:`directory_lock`)."""


def directory_lock(directory: Path) -> FileLock:
    """The lock of ``directory``: ``.<name>.lock`` beside it (outside: a directory may be moved aside and put
    back), at its real path, so that every spelling of it (relative, absolute, through a symlink, a trailing
    slash) takes the same lock.

    Where the parent exists but cannot be written (a read-only mount, an admin-owned ``runs/`` holding per-user
    run directories, a run bind-mounted into a container) while the directory can, the lock is :data:`INSIDE`
    the directory: with a read-only parent no process can move or replace the directory, so that file guards the
    same writes. The choice depends only on the file system, so every process of one user makes the same one.
    """
    real = Path(directory).resolve()
    beside = real.with_name(f".{real.name}.lock")
    if beside.parent.is_dir() and not os.access(beside.parent, os.W_OK) and os.access(real, os.W_OK):
        return FileLock(real / INSIDE)
    return FileLock(beside)


def holder_of(directory: Path) -> int | None:
    """The pid of the live ekd process holding ``directory``'s lock (0 if it wrote none yet), or None when no
    process holds it. Only reads: no lock file is created, none is taken for longer than the probe."""
    return lock_holder(directory_lock(directory).path)


def holder_said(directory: Path, pid: int | None = None) -> str:
    """``"another ekd process (pid 4242 on node-7)"``: who holds ``directory``'s lock, as every refusal and hint
    names it (:meth:`FileLock.holder_said`; review 132, R4: four places named a pid without its host); ``pid``: the
    holder's, as a probe found it, where the file no longer says (it was released meanwhile)."""
    return directory_lock(directory).holder_said(pid)


def lock_holder(path: Path) -> int | None:
    """The pid of the live process holding the lock file ``path`` (0 if it wrote none yet), or None when no
    process holds it (or there is no such file). Only reads: no lock file is created, none is taken for longer
    than the probe."""
    try:
        f = open(path)  # noqa: SIM115 (closed below on every path)
    except OSError:
        return None  # no lock file: nobody holds it
    with f:  # closing it releases a flock the probe took
        try:
            free = _flock(f, wait=False)
        except (OSError, DiskError):  # no locks there: none held
            return None
        return None if free else (FileLock(path).holder() or 0)


def lock_directory(directory: Path, fix: str, error: type[EkdError] = EkdError) -> FileLock:
    """Take ``directory``'s lock (:func:`directory_lock`) without waiting; returns it, held. Its parent is
    created if absent. A directory that exists and can hold no lock, beside it or inside (both read-only), is
    one no process of this user can write into: there is nothing to guard, and the lock returned is not held
    (``held`` False; ``release`` does nothing), so reading commands (``ekd eval`` of a finished run reports
    what it cannot write, ``ekd cache`` of a finished cache finds nothing to build) still run.

    Raises:
        error: another ekd process holds it: one line naming the directory, the pid and ``fix``.
        DiskError: the lock file cannot be written beside the directory (and the directory does not exist).
    """
    lock = directory_lock(directory)
    real = Path(directory).resolve()
    if real.is_dir() and not os.access(lock.path.parent, os.W_OK):
        return lock  # read-only beside and inside: not held
    with writing(lock.path.parent):
        make_dirs(lock.path.parent)
    if not lock.acquire(wait=False):
        raise error(f"{directory} is in use by {lock.holder_said()}; {fix}")
    return lock


@contextmanager
def holding(directory: Path, fix: str, error: type[EkdError] = EkdError) -> Iterator[None]:
    """Hold ``directory``'s lock for the block (:func:`lock_directory`: refused at once if another process
    holds it)."""
    with lock_directory(directory, fix, error):
        yield


def make_readers_lock(directory: Path) -> None:
    """Make ``directory``'s :func:`readers_lock` file (readable by all, as files are made), so that a reader who
    cannot write beside it (another user's cache) can still hold it shared."""
    with suppress(OSError):
        readers_lock(directory).touch(exist_ok=True)


def readers_lock(directory: Path) -> Path:
    """The file readers of ``directory`` hold a shared flock on while they read it (``.<name>.readers`` beside it,
    or inside where :func:`directory_lock` puts its lock inside): a teacher cache a run trains from. Never removed
    (several processes hold it at once; a removed file would let a new one be locked apart)."""
    lock = directory_lock(directory).path
    return lock.with_name(".ekd.readers") if lock.name == INSIDE else lock.with_suffix(".readers")


def flock_holders(path: Path) -> list[int]:
    """The pids of this machine's processes holding a flock on ``path`` (``/proc/locks``, Linux), sorted; [] where
    none, where it cannot be read (another system) or ``path`` is gone. A readers' lock holds no pid of its own (any
    number share it): this is how its refusals name who reads (try-out 131: they named no process). A file system
    whose device numbers differ from the kernel's lock table (btrfs subvolumes) finds none: the refusal then names no
    process, as before."""
    try:
        st = os.stat(path)
        with open("/proc/locks") as f:
            table = f.read().splitlines()
    except OSError:
        return []
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = set()
    for line in table:  # "1: FLOCK  ADVISORY  READ  4242 fe:00:5677790 0 EOF"; a waiter's "1: -> FLOCK ..."
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == device and fields[4].isdigit():
            # 0: a holder in another pid namespace (container), which has no pid here
            pids.add(int(fields[4]))
    pids.discard(os.getpid())
    return sorted(pids)


def _pid_words(pid: int) -> str:
    return str(pid) if pid > 0 else "one in another container"


def pids_said(pids: list[int]) -> str:
    """``", pid 4242"`` / ``", pids 4242, 4243"`` for :func:`flock_holders` (this machine's processes, as
    :meth:`FileLock.holder_said` names a pid of this host), '' for none."""
    if not pids:
        return ""
    return f", {'pid' if len(pids) == 1 else 'pids'} {', '.join(map(_pid_words, pids))}"


class ReadLock:
    """A shared (``shared=True``) or exclusive flock on ``directory``'s :func:`readers_lock`: the runs that read a
    directory hold it shared for as long as they read; a command that would delete what they read (``ekd cache
    --overwrite``) takes it exclusively, so that it is refused while any reads (try-out 130, F2: a rebuild
    deleted the shards under a training run, which then died blaming a damaged shard). Not held where no lock
    file can be made (a read-only directory no process of this user can change)."""

    def __init__(self, directory: Path, shared: bool) -> None:
        self.path, self.shared, self._file = readers_lock(directory), shared, None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> bool:
        """Take it without waiting: False when another process holds it the other way (or, exclusive, at all). A
        shared lock needs only to read the file — a cache another user owns (try-out 131, F2: a reader that could
        not write the file took no lock, and the owner's --overwrite deleted the shards under it); the build makes
        the file (:func:`make_readers_lock`). Where it can be neither made nor read, nothing is held."""
        try:
            f = open(self.path, "a+")  # noqa: SIM115 (held open for as long as the lock is held)
        except OSError:
            try:
                f = open(self.path)  # noqa: SIM115 (a shared flock on a file this user can only read)
            except OSError:
                return True  # no such file and none can be made: nothing this user reads can be deleted
        try:
            fcntl.flock(f, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return False
        except OSError:  # no file locks there: the run's and the cache's own locks said so first
            f.close()
            return True
        self._file = f
        return True

    def holders_said(self) -> str:
        """Who holds it the other way, as a refusal names them: ``", pid 4242"``, '' where unknown."""
        return pids_said(flock_holders(self.path))

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # releases the flock; the file stays for the other readers
            self._file = None

    def __enter__(self) -> ReadLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
