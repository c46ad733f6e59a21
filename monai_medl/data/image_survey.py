# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Read the :class:`~monai_medl.data.image_info.ImageInfo` of many image files: in parallel worker processes, with
progress output, and with a cache keyed by file identity so an unchanged dataset is revalidated in seconds.

Each file is read once (a ``.nii.gz`` is decompressed once) and that read serves every check of
:func:`~monai_medl.data.validate_datalist` and the intensity profile of the manifest. The cache key is the file's
absolute path, size, modification time (ns) and the SHA-256 of its first 64 KiB as stored (the header and the first
voxels), together with the options of the read; a file edited in place, replaced, touched or moved is read again.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TypeVar

from monai_medl.data.image_info import ImageInfo, ImageReadError, read_image_info

__all__ = ["ImageInfoCache", "read_image_infos", "default_workers", "map_in_workers"]

T = TypeVar("T")
R = TypeVar("R")

logger = logging.getLogger(__name__)
_HEAD_BYTES = 1 << 16
_CACHE_VERSION = 1
_BUSY_SECONDS = 60.0  # how long a process waits for another's lock on the cache file
PROGRESS_EVERY = 5.0
"""Seconds between two progress lines of a long pass."""


def default_workers() -> int:
    """The cores this process may use (all of them by default)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _identity(path: str, spatial_dims: int, load_voxels: bool) -> str | None:
    """The cache key of ``path`` (None if it cannot be read: it is then read, and reported, every time)."""
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            head = hashlib.sha256(f.read(_HEAD_BYTES)).hexdigest()
    except OSError:
        return None
    return json.dumps(
        [_CACHE_VERSION, os.path.abspath(path), st.st_size, st.st_mtime_ns, head, spatial_dims, load_voxels]
    )


class ImageInfoCache:
    """A SQLite file of image summaries (or read errors) keyed by file identity; safe for several processes.

    Args:
        path: the cache file (its folder is created); e.g. a bundle's ``runs/.image_info_cache.sqlite``.

    Example::

        >>> import os, tempfile
        >>> import nibabel as nib
        >>> import numpy as np
        >>> folder = tempfile.mkdtemp()
        >>> scan = os.path.join(folder, "a.nii.gz")
        >>> nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), scan)
        >>> cache = ImageInfoCache(os.path.join(folder, "cache.sqlite"))
        >>> first = read_image_infos([scan], cache=cache, workers=1)
        >>> second = read_image_infos([scan], cache=cache, workers=1)  # from the cache: the file is not decoded
        >>> second[scan] == first[scan], cache.hits
        (True, 1)
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self.hits = 0
        with contextlib.closing(self._connect()) as db, db:
            db.execute("CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=_BUSY_SECONDS)
        deadline = time.monotonic() + _BUSY_SECONDS
        while True:
            try:  # WAL (readers never wait for the one writer) persists in the file: switch once
                if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    db.execute("PRAGMA journal_mode=WAL")
                return db
            except sqlite3.OperationalError as err:
                # the busy timeout does not cover a journal-mode switch: two processes opening a new cache at once
                # (two ranks of a torchrun validating together) get "database is locked" at once; wait and retry
                if "locked" not in str(err) or time.monotonic() > deadline:
                    db.close()
                    raise
                time.sleep(0.05)

    def get(self, keys: Sequence[str]) -> dict[str, ImageInfo | ImageReadError]:
        found: dict[str, ImageInfo | ImageReadError] = {}
        with contextlib.closing(self._connect()) as db:
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                for key, value in db.execute(f"SELECT key, value FROM info WHERE key IN ({marks})", chunk):
                    found[key] = _decode(json.loads(value))
        self.hits += len(found)
        return found

    def put(self, items: Mapping[str, ImageInfo | ImageReadError]) -> None:
        rows = [(k, json.dumps(_encode(v))) for k, v in items.items()]
        with contextlib.closing(self._connect()) as db, db:
            db.executemany("INSERT OR REPLACE INTO info (key, value) VALUES (?, ?)", rows)


def _encode(value: ImageInfo | ImageReadError) -> dict:
    if isinstance(value, ImageReadError):
        return {"error": str(value)}
    return {"info": {k: v for k, v in value.to_dict().items() if k != "extent"}}


def _decode(value: dict) -> ImageInfo | ImageReadError:
    if "error" in value:
        return ImageReadError(value["error"])
    info = value["info"]
    return ImageInfo(
        path=info["path"],
        spatial_shape=tuple(info["spatial_shape"]),
        channels=int(info["channels"]),
        spacing=tuple(info["spacing"]),
        orientation=info["orientation"],
        intensity=None if info["intensity"] is None else tuple(info["intensity"]),
    )


def _read_one(args: tuple[str, int, bool]) -> tuple[str, ImageInfo | ImageReadError]:
    path, spatial_dims, load_voxels = args
    try:
        return path, read_image_info(path, spatial_dims=spatial_dims, load_voxels=load_voxels)
    except ImageReadError as e:
        return path, e


class _Progress:
    """Logs count, rate and time left every ``every`` seconds of a long pass."""

    def __init__(self, total: int) -> None:
        self.total, self.every, self.done = total, PROGRESS_EVERY, 0
        self.start = self.last = time.monotonic()

    def step(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every or (self.done == self.total and now - self.start >= self.every):
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            left = (self.total - self.done) / rate if rate > 0 else float("inf")
            logger.info(f"read {self.done}/{self.total} scans ({rate:.1f}/s, about {left:.0f} s left)")


def map_in_workers(fn: Callable[[T], R], jobs: Sequence[T], workers: int | None = None) -> Iterator[R]:
    """``map(fn, jobs)`` in worker processes (forked: they need only what is imported here), results in order.

    Args:
        fn: a module-level function (results are pickled back to this process: keep them small).
        jobs: its arguments, one per call.
        workers: processes (None: every core this process may use); 1, or fewer than two jobs per worker: here.

    Example::

        >>> list(map_in_workers(abs, [-3, 1, -2], workers=1))
        [3, 1, 2]
    """
    workers = default_workers() if workers is None else max(1, int(workers))
    if workers == 1 or len(jobs) < 2 * workers:
        yield from map(fn, jobs)
        return
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        yield from pool.map(fn, jobs, chunksize=max(1, min(16, len(jobs) // (8 * workers))))


def read_image_infos(
    paths: Iterable[str],
    spatial_dims: int = 3,
    load_voxels: bool = True,
    workers: int | None = None,
    cache: ImageInfoCache | str | os.PathLike | Mapping[str, ImageInfo | ImageReadError] | None = None,
) -> dict[str, ImageInfo | ImageReadError]:
    """The :class:`ImageInfo` (or the :class:`ImageReadError`) of every path, each file read once.

    Args:
        paths: image files (duplicates are read once).
        spatial_dims, load_voxels: as :func:`~monai_medl.data.image_info.read_image_info`.
        workers: worker processes (None: every core this process may use; 1: read here, in this process).
        cache: an :class:`ImageInfoCache` or its file, or the result of an earlier call (a mapping); None reads
            every file.

    Returns:
        path -> summary or error, for every path.
    """
    unique = list(dict.fromkeys(os.fspath(p) for p in paths))
    if isinstance(cache, Mapping):  # results of an earlier call
        known = {p: cache[p] for p in unique if p in cache}
        rest = read_image_infos([p for p in unique if p not in known], spatial_dims, load_voxels, workers)
        return {p: known[p] if p in known else rest[p] for p in unique}
    if isinstance(cache, str | os.PathLike):
        cache = ImageInfoCache(cache)
    keys: dict[str, str] = {}  # path -> cache key (files that cannot be stat'ed have none: read every time)
    if cache is not None:
        keys = {p: k for p in unique if (k := _identity(p, spatial_dims, load_voxels)) is not None}
    cached = cache.get(list(keys.values())) if cache is not None else {}
    out: dict[str, ImageInfo | ImageReadError] = {p: cached[keys[p]] for p in unique if keys.get(p) in cached}
    todo = [p for p in unique if p not in out]
    progress = _Progress(len(todo))
    for path, value in map_in_workers(_read_one, [(p, spatial_dims, load_voxels) for p in todo], workers):
        out[path] = value
        progress.step()
    if cache is not None and todo:
        cache.put({keys[p]: out[p] for p in todo if p in keys})
    return {p: out[p] for p in unique}
