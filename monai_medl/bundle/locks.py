# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Locks that let several training, evaluation and inference processes share one bundle's ``models/`` folder.

A promotion (:func:`~monai_medl.bundle.promote_artifacts`) holds an exclusive lock; an evaluation or inference
holds a shared lock from the moment it checks the manifest until the process ends (:func:`open_artifacts`), so it
reads one set from its first file to its last and never sees a promotion half done. The locks are ``flock(2)``
locks on two empty files beside the folder, ``.models.lock`` and ``.models.queue.lock``:

- the queue lock gives a waiting promotion priority: a promotion takes it exclusively before waiting for the
  readers, and a new reader passes through it (shared, released at once), so new readers queue behind a waiting
  promotion instead of starving it;
- the kernel releases an ``flock`` when its holder's last file descriptor closes, including when the process is
  killed (SIGKILL, OOM), so a lock is never stale: there is no lock file content or pid to clean up, and the empty
  lock files are left in place on purpose (removing one while another process waits on it would split the lock).

Locks are per open file, so within one process a reader's lock would block that process's own promotion; a
promotion therefore first releases the shared locks its own process holds on that folder (a bundle process runs
one workflow at a time).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Iterator

__all__ = ["ModelsLock", "hold_shared", "release_shared"]

logger = logging.getLogger(__name__)
_HELD: dict[str, list[int]] = {}  # lock file -> this process's shared-lock descriptors
_POLL = 0.05


def _flock(fd: int, mode: int, what: str, timeout: float | None) -> None:
    """``flock(fd, mode)``, logging once when it has to wait; ``TimeoutError`` after ``timeout`` seconds."""
    start, told = time.monotonic(), False
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            waited = time.monotonic() - start
            if timeout is not None and waited >= timeout:
                raise TimeoutError(f"{what}: gave up after {timeout:.0f} s") from None
            if not told and waited > 1.0:
                logger.info(f"{what}: waiting for another process")
                told = True
            time.sleep(_POLL)


class ModelsLock:
    """The shared/exclusive lock of one ``models`` folder (see the module docstring).

    Args:
        models_dir: the folder guarded (a bundle's ``models/``); the lock files are created beside it.

    Example::

        >>> import os, tempfile
        >>> from monai_medl.bundle.locks import ModelsLock
        >>> lock = ModelsLock(os.path.join(tempfile.mkdtemp(), "models"))
        >>> with lock.exclusive():
        ...     pass  # promote here: no reader holds the folder
        >>> os.path.basename(lock.path)
        '.models.lock'
    """

    def __init__(self, models_dir: str | os.PathLike) -> None:
        self.models_dir = os.path.abspath(os.fspath(models_dir))
        parent, base = os.path.split(self.models_dir)
        self.path = os.path.join(parent, f".{base}.lock")
        self.queue_path = os.path.join(parent, f".{base}.queue.lock")

    @staticmethod
    def _open(path: str) -> int | None:
        """A descriptor of the lock file (created if missing), or None where it cannot be created (a read-only
        folder: nobody can promote into it either, so reading it needs no lock)."""
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as err:
            if err.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None

    @contextlib.contextmanager
    def exclusive(self, timeout: float | None = None) -> Iterator[None]:
        """Hold the folder exclusively (no reader, no other promotion) for the ``with`` block.

        Raises:
            TimeoutError: the lock was not granted within ``timeout`` seconds (None: wait).
            OSError: the lock file cannot be created beside the folder (naming it).
        """
        release_shared(self.models_dir)
        fds: list[int] = []
        try:
            for path in (self.queue_path, self.path):
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
                fds.append(fd)
                _flock(fd, fcntl.LOCK_EX, f"locking {self.models_dir} exclusively ({path})", timeout)
            yield
        finally:
            for fd in reversed(fds):
                os.close(fd)  # closing releases the flock

    def shared(self, timeout: float | None = None) -> int | None:
        """Take a shared lock and return its descriptor (close it to release); None where no lock file can be
        made (a read-only location)."""
        queue = self._open(self.queue_path)
        fd = self._open(self.path)
        try:
            if queue is not None:
                _flock(queue, fcntl.LOCK_SH, f"reading {self.models_dir} (a promotion is waiting or running)", timeout)
            if fd is not None:
                _flock(fd, fcntl.LOCK_SH, f"reading {self.models_dir} (a promotion is running)", timeout)
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise
        finally:
            if queue is not None:
                os.close(queue)
        return fd


def hold_shared(models_dir: str | os.PathLike, timeout: float | None = None) -> None:
    """Hold a shared lock on ``models_dir`` until this process ends or :func:`release_shared` (so that a long
    evaluation reads one set throughout)."""
    lock = ModelsLock(models_dir)
    fd = lock.shared(timeout)
    if fd is not None:
        _HELD.setdefault(lock.path, []).append(fd)


def release_shared(models_dir: str | os.PathLike) -> int:
    """Release the shared locks this process holds on ``models_dir``; return how many were released."""
    fds = _HELD.pop(ModelsLock(models_dir).path, [])
    for fd in fds:
        os.close(fd)
    return len(fds)
