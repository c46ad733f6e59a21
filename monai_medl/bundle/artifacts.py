# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""A training run's own folder, the manifest of a complete set of trained artifacts, and their promotion.

A bundle's ``models/`` folder must always hold one consistent set: weights, site vocabulary, intensity
statistics and z-predictor of the same run. Training therefore writes into its own folder
(``runs/<run name>/models``, :class:`TrainingRun`), and only when it has finished writes a manifest (SHA-256 of
every file, sites, seed, datalist hash, package versions, the training images' geometry) and, when asked, promotes
the whole set into ``models/`` in one folder swap (:func:`promote_artifacts`). Evaluation and inference call
:func:`verify_artifacts` first and refuse a set that does not match its manifest.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import errno
import fcntl
import glob
import hashlib
import json
import logging
import os
import platform
import re
import secrets
import shutil
import signal
import threading
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, cast

from monai_medl.bundle.locks import ModelsLock, hold_shared, release_shared

__all__ = [
    "MANIFEST_NAME",
    "ArtifactError",
    "TrainingRun",
    "file_sha256",
    "write_manifest",
    "read_manifest",
    "verify_artifacts",
    "promote_artifacts",
    "open_artifacts",
]

MANIFEST_NAME = "manifest.json"
_CHECKPOINT = re.compile(r"checkpoint_epoch=(\d+)\.pt$")
logger = logging.getLogger(__name__)


class ArtifactError(RuntimeError):
    """A set of trained artifacts is incomplete or inconsistent (the message says which file and why)."""


def _dist() -> Any:
    import torch.distributed as dist  # here, so that promotion and its tests import no torch

    return dist if dist.is_available() and dist.is_initialized() else None


def _rank() -> int:
    dist = _dist()
    return dist.get_rank() if dist is not None else 0


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("monai-medl", "monai", "torch", "pytorch-ignite", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


class TrainingRun:
    """The folder of one training run: ``runs_dir/<name>/`` with ``models/`` (checkpoints and the artifact set)
    and ``tensorboard/``.

    A new run's folder is created with ``os.mkdir``, which is atomic and exclusive, under a unique name
    ``train_<UTC time>_<pid>_<6 random hex digits>`` (runs started in the same second, in one process or many,
    get different folders); a given ``name`` that already exists is an error, never a shared folder.
    ``resume=True`` reopens a run (the one named, or the most recent one with a checkpoint) and
    :attr:`last_checkpoint` is where it stopped. The process holds an exclusive ``flock`` on its run folder while
    it lives, so two processes never resume one run together. Under ``torch.distributed`` rank 0 chooses and
    creates the folder and every rank uses it.

    Args:
        runs_dir: parent folder of the runs (a bundle's ``runs/``).
        name: run name; a new run defaults to a fresh unique name.
        resume: reopen an existing run instead of starting a new one.

    Raises:
        FileExistsError: a new run was asked for under an existing run's name, or the run to resume is in use by
            another process.
        FileNotFoundError: ``resume`` found no run with a checkpoint (naming the folder searched).

    Example (bundle config)::

        "training_run": {"_target_": "monai_medl.bundle.TrainingRun", "runs_dir": "@runs_dir",
                         "name": "@run_name", "resume": "@resume"},
        "run": ["$@training_run.train(@train#trainer)", "$@finish_run"]
    """

    def __init__(self, runs_dir: str | os.PathLike, name: str | None = None, resume: bool = False) -> None:
        self.runs_dir = os.path.abspath(os.fspath(runs_dir))
        self.resume = bool(resume)
        self._lock_fd: int | None = None
        chosen = self._choose_name(name) if _rank() == 0 else None
        dist = _dist()
        if dist is not None:
            box = [chosen]
            dist.broadcast_object_list(box, src=0)
            chosen = box[0]
        self.name: str = cast(str, chosen)  # rank 0's choice, broadcast to the other ranks
        self.path = os.path.join(self.runs_dir, self.name)
        self.models_dir = os.path.join(self.path, "models")
        self.log_dir = os.path.join(self.path, "tensorboard")
        if self.resume:
            logger.info(f"resuming run {self.path} from {self.last_checkpoint}")
        else:
            logger.info(f"training run folder: {self.path}")

    def _choose_name(self, name: str | None) -> str:
        if self.resume:
            name = name if name is not None else self._latest_resumable()
            if not _last_checkpoint(os.path.join(self.runs_dir, name, "models")):
                raise FileNotFoundError(
                    f"resume=True but run {os.path.join(self.runs_dir, name)!r} has no checkpoint "
                    "(checkpoint_epoch=N.pt) to resume from."
                )
            self._lock_run(os.path.join(self.runs_dir, name))
            return name
        os.makedirs(self.runs_dir, exist_ok=True)
        if name is not None:
            self._create(name)
            return name
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
        for _ in range(100):  # a clash needs the same second, pid and 24 random bits
            name = f"train_{stamp}_{os.getpid()}_{secrets.token_hex(3)}"
            try:
                self._create(name)
                return name
            except FileExistsError:
                continue
        raise FileExistsError(f"could not create a new run folder under {self.runs_dir!r}")

    def _latest_resumable(self) -> str:
        candidates = [d for d in glob.glob(os.path.join(self.runs_dir, "*")) if _last_checkpoint(d + "/models")]
        if not candidates:
            raise FileNotFoundError(
                f"resume=True but no run under {self.runs_dir!r} has a checkpoint to resume from; start a "
                "new run (resume false) or give run_name."
            )
        return os.path.basename(max(candidates, key=os.path.getmtime))

    def _create(self, name: str) -> None:
        """Create the run folder with ``os.mkdir``, which fails if it exists: of two processes choosing one name,
        exactly one gets it. An existing ``run_name`` is an error (never a shared folder, never a silent suffix)."""
        path = os.path.join(self.runs_dir, name)
        try:
            os.mkdir(path)
        except FileExistsError:
            hint = "resume it (resume true) or " if _last_checkpoint(os.path.join(path, "models")) else ""
            raise FileExistsError(
                f"run folder {path!r} already exists (run_name {name!r} was used by another run, finished, failed "
                f"or still running); {hint}choose another run_name, or leave run_name null for a fresh unique name."
            ) from None
        self._lock_run(path)

    def _lock_run(self, path: str) -> None:
        """Hold an exclusive ``flock`` on the run folder while this process lives, so a second process cannot
        resume the same run at the same time (the kernel releases it when the process ends or is killed)."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FileExistsError(f"run {path!r} is in use by another running process; wait for it to end.") from None
        self._lock_fd = fd

    def release(self) -> None:
        """Release the run folder's lock (done by :meth:`finish`, a failed :meth:`train` and the process end)."""
        fd, self._lock_fd = getattr(self, "_lock_fd", None), None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:
        self.release()

    def train(self, engine: Any) -> None:
        """``engine.run()``, turning a failed write (disk full, read-only folder) into an error naming this run's
        folder; the bundle's ``models/`` is never written during training."""
        try:
            engine.run()
        except OSError as err:
            self.release()
            where = err.filename or self.models_dir
            raise ArtifactError(
                f"training run {self.path}: writing a checkpoint or artifact into {where} failed "
                f"({err.strerror or err}); the bundle's models/ was not touched."
            ) from err
        except BaseException:
            self.release()
            raise

    @property
    def last_checkpoint(self) -> str | None:
        """The newest ``checkpoint_epoch=N.pt`` of this run, or None."""
        return _last_checkpoint(self.models_dir)

    def finish(
        self,
        ckpt_dir: str | os.PathLike,
        replace_models: bool,
        files: Sequence[str],
        **record: Any,
    ) -> str | None:
        """Write the manifest of the finished run's artifact set and, if ``replace_models``, promote it.

        Only rank 0 writes. Called as the last step of a bundle's ``run``, so a failed or killed run never gets
        here and ``ckpt_dir`` keeps its previous content.

        Args:
            ckpt_dir: the bundle's ``models/`` folder (read by evaluation and inference).
            replace_models: promote this run's set into ``ckpt_dir`` (replacing what is there).
            files: names of the artifact files in :attr:`models_dir` (e.g. ``model.pt``, ``z_predictor.pt``).
            record: extra manifest items (sites, seed, datalist, input profile, ...).

        Returns:
            the manifest path, or None on ranks other than 0.
        """
        if _rank() != 0:
            return None
        try:
            manifest = write_manifest(self.models_dir, files, run=self.path, **record)
            if replace_models:
                promote_artifacts(self.models_dir, ckpt_dir)
        finally:
            self.release()
        if replace_models:
            logger.info(f"promoted the artifacts of {self.path} into {os.path.abspath(ckpt_dir)}")
        else:
            logger.info(
                f"trained artifacts (with manifest) are in {self.models_dir}; {os.path.abspath(ckpt_dir)} was left "
                "as it was. Evaluate them with --ckpt_dir "
                f"{self.models_dir}, or rerun training with --replace_models true to make them the bundle's model."
            )
        return manifest

    def __repr__(self) -> str:
        return f"TrainingRun({self.path!r}, resume={self.resume})"


def _complete(path: str) -> bool:
    """Whether a ``torch.save`` file was written to the end (its zip archive is whole and its CRCs match)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


def _last_checkpoint(models_dir: str) -> str | None:
    """The newest complete ``checkpoint_epoch=N.pt``. MONAI's saver writes in place, and ignite removes the oldest
    kept checkpoint *before* writing the new one, so the bundles keep two (``n_saved=2``): a run killed mid-write
    leaves a partial newest file and the previous one, which is used (with a warning), losing only the epoch in
    progress."""
    found = []
    for path in glob.glob(os.path.join(models_dir, "checkpoint_epoch=*.pt")):
        m = _CHECKPOINT.search(path)
        if m:
            found.append((int(m.group(1)), path))
    for _, path in sorted(found, reverse=True):
        if _complete(path):
            return path
        logger.warning(f"{path} is incomplete (the run was stopped while writing it); using an earlier checkpoint")
    return None


def write_manifest(models_dir: str | os.PathLike, files: Sequence[str], **record: Any) -> str:
    """Write ``manifest.json`` into ``models_dir``: SHA-256 of each of ``files``, versions, time and ``record``.

    Raises:
        ArtifactError: one of ``files`` is missing (the set is incomplete; nothing is written).
    """
    models_dir = os.fspath(models_dir)
    missing = [f for f in files if not os.path.isfile(os.path.join(models_dir, f))]
    if missing:
        raise ArtifactError(f"the run's artifact set in {models_dir!r} is incomplete: {missing} not written.")
    manifest = {
        "files": {f: file_sha256(os.path.join(models_dir, f)) for f in files},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        **record,
    }
    path = os.path.join(models_dir, MANIFEST_NAME)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        message = (
            f"writing the manifest {path} failed ({err.strerror or err}); the run's artifacts stay in {models_dir} "
            "without a manifest and the bundle's models/ was not touched: free space or fix the permissions, then "
            "rerun with resume true."
        )
        logger.error(message)
        raise ArtifactError(message) from err
    return path


def read_manifest(models_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of ``models_dir`` (see :func:`verify_artifacts` for the checks)."""
    path = os.path.join(os.fspath(models_dir), MANIFEST_NAME)
    if not os.path.isfile(path):
        raise ArtifactError(
            f"{os.fspath(models_dir)!r} has no {MANIFEST_NAME}: its files were not written by a complete training "
            "run of this bundle version; train the bundle (train.json) and use that run's models folder."
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def verify_artifacts(models_dir: str | os.PathLike, required: Sequence[str] = ()) -> dict[str, Any]:
    """Check that ``models_dir`` holds exactly the set its manifest describes; return the manifest.

    Every file listed must exist with the recorded SHA-256; every name in ``required`` must be listed; the site
    vocabulary, when listed, must name as many sites as the manifest.

    Raises:
        ArtifactError: in one sentence naming the file and what does not match.

    Example (first ``initialize`` step of evaluate.json / inference.json)::

        "$monai_medl.bundle.verify_artifacts(@ckpt_dir, ['model.pt', 'site_vocabulary.json'])"
    """
    models_dir = os.fspath(models_dir)
    manifest = read_manifest(models_dir)
    files: Mapping[str, str] = manifest.get("files", {})
    for name in required:
        if name not in files:
            raise ArtifactError(
                f"{models_dir!r}: {name} is not part of the trained set its manifest lists ({sorted(files)})."
            )
    for name, digest in files.items():
        path = os.path.join(models_dir, name)
        if not os.path.isfile(path):
            raise ArtifactError(f"{models_dir!r} is incomplete: {name} is listed in its manifest but missing.")
        if file_sha256(path) != digest:
            raise ArtifactError(
                f"{path} does not match the manifest of {models_dir!r} (it was changed or comes from another run); "
                "refusing a mixed set of artifacts: retrain, or restore the run's models folder as a whole."
            )
    if "site_vocabulary.json" in files and "sites" in manifest:
        with open(os.path.join(models_dir, "site_vocabulary.json"), encoding="utf-8") as f:
            sites = json.load(f).get("sites", [])
        if list(sites) != list(manifest["sites"]):
            raise ArtifactError(
                f"{models_dir!r}: the site vocabulary {sites} differs from the manifest's {manifest['sites']}."
            )
    return manifest


class _Terminated(BaseException):
    """SIGTERM arrived during a promotion (raised by the temporary handler, so clean-up code runs)."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`_Terminated` instead of ending the process at once (only the main
    thread can install signal handlers; elsewhere the default stays)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _step(operation: str, path: str, dst: str) -> Iterator[None]:
    """Turn an ``OSError`` (disk full, read-only folder, ...) of one promotion step into an error naming it."""
    try:
        yield
    except OSError as err:
        message = (
            f"promotion into {dst} failed while {operation} {path} ({err.strerror or err}); {dst} was left as it "
            "was (the previous set)."
        )
        logger.error(message)
        raise ArtifactError(message) from err


_RENAME_EXCHANGE, _AT_FDCWD = 2, -100


def _exchange(a: str, b: str) -> bool:
    """Swap two paths in one step with Linux ``renameat2(RENAME_EXCHANGE)``; False where the system or file system
    cannot (the caller then falls back to two renames)."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), a, None, b)


def _leftovers(dst: str, kind: str) -> list[str]:
    return sorted(glob.glob(glob.escape(dst) + f".{kind}-*"))


def _recover(dst: str) -> None:
    """Under the exclusive lock: undo what a killed promotion left. Staging folders are only ever made by the lock
    holder, so any found now is a dead process's and is removed; a ``previous`` folder with no ``dst`` is the set
    a killed two-rename fallback had moved aside, and is put back."""
    for staging in _leftovers(dst, "staging"):
        shutil.rmtree(staging, ignore_errors=True)
    previous = _leftovers(dst, "previous")
    if previous and not os.path.lexists(dst):
        os.rename(max(previous, key=os.path.getmtime), dst)
        logger.warning(f"restored {dst} from an interrupted promotion")
    for old in _leftovers(dst, "previous"):
        shutil.rmtree(old, ignore_errors=True)


def _copy(source: str, target: str, dst: str) -> None:
    with _step("copying", f"{source} to {target}", dst):
        shutil.copy2(source, target)
        with open(target, "rb") as f:
            os.fsync(f.fileno())  # the set is on disk before it is swapped in


def _stage(src: str, dst: str, manifest: Mapping[str, Any]) -> str:
    """A complete copy of the run's set (and of ``dst``'s files that belong to no set) in a new folder beside
    ``dst``; removed again if anything fails."""
    staging = f"{dst}.staging-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        with _step("creating the staging folder", staging, dst):
            os.mkdir(staging)
        for name in [*manifest["files"], MANIFEST_NAME]:
            _copy(os.path.join(src, name), os.path.join(staging, name), dst)
        if os.path.isdir(dst):
            try:
                old_set = set(read_manifest(dst).get("files", {})) | {MANIFEST_NAME}
            except ArtifactError:
                old_set = {"model.pt", "z_predictor.pt", "site_vocabulary.json", "intensity_stats.json"}
            for name in sorted(set(os.listdir(dst)) - old_set - set(os.listdir(staging))):
                source = os.path.join(dst, name)
                if os.path.isdir(source):
                    with _step("copying", f"{source} to {staging}", dst):
                        shutil.copytree(source, os.path.join(staging, name))
                else:
                    _copy(source, os.path.join(staging, name), dst)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def _swap(staging: str, dst: str) -> str | None:
    """Put ``staging`` in place of ``dst`` in one step; return the folder now holding the previous set."""
    if not os.path.lexists(dst):
        with _step("renaming the staging folder into place:", f"{staging} -> {dst}", dst):
            os.rename(staging, dst)
        return None
    with _step("swapping in the staging folder", staging, dst):
        if _exchange(staging, dst):
            return staging
    old = f"{dst}.previous-{os.getpid()}-{secrets.token_hex(3)}"
    with _step("moving the previous set aside to", old, dst):
        os.rename(dst, old)
    try:
        os.rename(staging, dst)
    except OSError as err:
        os.rename(old, dst)
        shutil.rmtree(staging, ignore_errors=True)
        message = f"promotion into {dst} failed while renaming {staging} into place ({err}); previous set restored."
        logger.error(message)
        raise ArtifactError(message) from err
    return old


def _same_file(a: str, b: str) -> bool:
    return os.path.isfile(a) and os.path.isfile(b) and file_sha256(a) == file_sha256(b)


def promote_artifacts(run_models_dir: str | os.PathLike, ckpt_dir: str | os.PathLike, timeout: float | None = None):
    """Replace ``ckpt_dir`` by the verified artifact set of a finished run, in one atomic swap under a lock.

    Under the exclusive lock of ``ckpt_dir`` (:class:`~monai_medl.bundle.locks.ModelsLock`: no evaluation or
    inference is reading it, no other promotion runs), the set (files of the manifest, and the manifest) is
    copied into a staging folder beside ``ckpt_dir`` and synced to disk; files of ``ckpt_dir`` that are not part
    of any set (e.g. an exported ``model.ts``) are carried over; then staging and ``ckpt_dir`` are exchanged in one
    ``renameat2(RENAME_EXCHANGE)`` (two renames where the file system lacks it, undone by the next lock holder if
    killed between them) and the previous set is removed. Disk full, a read-only folder, SIGTERM or SIGKILL before
    the swap leave ``ckpt_dir`` byte-identical; each error names the step and the path.

    Args:
        run_models_dir: the finished run's ``models`` folder (with its manifest).
        ckpt_dir: the bundle's ``models/``.
        timeout: seconds to wait for readers and other promotions (None: wait as long as they take).

    Raises:
        ArtifactError: the run's set does not verify, or a step failed (naming it and the path).
        SystemExit: SIGTERM arrived during the promotion (exit status 143, after cleaning up).
    """
    src, dst = os.path.abspath(os.fspath(run_models_dir)), os.path.abspath(os.fspath(ckpt_dir))
    manifest = verify_artifacts(src)
    try:
        with _sigterm_raises(), ModelsLock(dst).exclusive(timeout):
            _recover(dst)
            staging = _stage(src, dst, manifest)
            try:
                old = _swap(staging, dst)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)  # the set not swapped in, or the previous one
                raise
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    except _Terminated:
        swapped = _same_file(os.path.join(src, MANIFEST_NAME), os.path.join(dst, MANIFEST_NAME))
        state = "after the swap: it holds the new set" if swapped else "before the swap: it holds the previous set"
        logger.error(f"promotion of {src} into {dst} was interrupted by SIGTERM {state}.")
        raise SystemExit(128 + signal.SIGTERM) from None


def open_artifacts(
    models_dir: str | os.PathLike, required: Sequence[str] = (), timeout: float | None = None
) -> dict[str, Any]:
    """Take a shared lock on ``models_dir`` for the rest of this process, then :func:`verify_artifacts` it.

    The first step of evaluation and inference: while the process runs, no promotion can change the folder, so
    every file it reads later (weights, vocabulary, statistics) belongs to the set verified here. A promotion
    waiting for the lock is not starved (see :mod:`monai_medl.bundle.locks`).

    Example (first ``initialize`` step of evaluate.json / inference.json)::

        "manifest": "$monai_medl.bundle.open_artifacts(@ckpt_dir, @artifact_files)"
    """
    path = os.path.abspath(os.fspath(models_dir))
    if not os.path.lexists(path) and _leftovers(path, "previous"):
        with ModelsLock(path).exclusive(timeout):
            _recover(path)
    hold_shared(path, timeout)
    try:
        return verify_artifacts(path, required)
    except BaseException:
        release_shared(path)
        raise
