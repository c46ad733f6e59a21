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

import datetime
import glob
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import torch.distributed as dist

__all__ = [
    "MANIFEST_NAME",
    "ArtifactError",
    "TrainingRun",
    "file_sha256",
    "write_manifest",
    "read_manifest",
    "verify_artifacts",
    "promote_artifacts",
]

MANIFEST_NAME = "manifest.json"
_CHECKPOINT = re.compile(r"checkpoint_epoch=(\d+)\.pt$")
logger = logging.getLogger(__name__)


class ArtifactError(RuntimeError):
    """A set of trained artifacts is incomplete or inconsistent (the message says which file and why)."""


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


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

    A new run gets a fresh, time-stamped name; ``resume=True`` reopens a run (the one named, or the most recent
    one with a checkpoint) and :attr:`last_checkpoint` is where it stopped. Under ``torch.distributed`` rank 0
    chooses the name and every rank uses it.

    Args:
        runs_dir: parent folder of the runs (a bundle's ``runs/``).
        name: run name; a new run defaults to ``train_<UTC time>``.
        resume: reopen an existing run instead of starting a new one.

    Raises:
        FileExistsError: a new run was asked for under the name of an existing run with checkpoints.
        FileNotFoundError: ``resume`` found no run with a checkpoint (naming the folder searched).

    Example (bundle config)::

        "training_run": {"_target_": "monai_medl.bundle.TrainingRun", "runs_dir": "@runs_dir",
                         "name": "@run_name", "resume": "@resume"}
    """

    def __init__(self, runs_dir: str | os.PathLike, name: str | None = None, resume: bool = False) -> None:
        self.runs_dir = os.path.abspath(os.fspath(runs_dir))
        self.resume = bool(resume)
        chosen = self._choose_name(name) if _rank() == 0 else None
        if dist.is_available() and dist.is_initialized():
            box = [chosen]
            dist.broadcast_object_list(box, src=0)
            chosen = box[0]
        self.name: str = chosen
        self.path = os.path.join(self.runs_dir, self.name)
        self.models_dir = os.path.join(self.path, "models")
        self.log_dir = os.path.join(self.path, "tensorboard")
        if self.resume:
            logger.info(f"resuming run {self.path} from {self.last_checkpoint}")
        else:
            logger.info(f"training run folder: {self.path}")

    def _choose_name(self, name: str | None) -> str:
        if self.resume:
            if name is None:
                candidates = [d for d in glob.glob(os.path.join(self.runs_dir, "*")) if _last_checkpoint(d + "/models")]
                if not candidates:
                    raise FileNotFoundError(
                        f"resume=True but no run under {self.runs_dir!r} has a checkpoint to resume from; start a "
                        "new run (resume false) or give run_name."
                    )
                return os.path.basename(max(candidates, key=os.path.getmtime))
            if not _last_checkpoint(os.path.join(self.runs_dir, name, "models")):
                raise FileNotFoundError(
                    f"resume=True but run {os.path.join(self.runs_dir, name)!r} has no checkpoint "
                    "(checkpoint_epoch=N.pt) to resume from."
                )
            return name
        if name is None:
            stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
            name, n = f"train_{stamp}", 1
            while os.path.exists(os.path.join(self.runs_dir, name)):
                n += 1
                name = f"train_{stamp}_{n}"
        elif _last_checkpoint(os.path.join(self.runs_dir, name, "models")):
            raise FileExistsError(
                f"run {os.path.join(self.runs_dir, name)!r} already has checkpoints; resume it (resume true) or "
                "choose another run_name."
            )
        return name

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
        manifest = write_manifest(self.models_dir, files, run=self.path, **record)
        if replace_models:
            promote_artifacts(self.models_dir, ckpt_dir)
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
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, default=str)
        f.write("\n")
    os.replace(tmp, path)
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


def promote_artifacts(run_models_dir: str | os.PathLike, ckpt_dir: str | os.PathLike) -> None:
    """Replace ``ckpt_dir`` by the verified artifact set of a finished run, as one folder swap.

    The set (files of the manifest, and the manifest) is copied into a staging folder beside ``ckpt_dir``; files
    of ``ckpt_dir`` that are not part of any set (e.g. an exported ``model.ts``) are carried over; then
    ``ckpt_dir`` is renamed aside, the staging folder renamed into place and the old folder removed. A crash
    before the swap leaves ``ckpt_dir`` as it was.

    Raises:
        ArtifactError: the run's set does not verify against its manifest.
    """
    src, dst = os.path.abspath(os.fspath(run_models_dir)), os.path.abspath(os.fspath(ckpt_dir))
    manifest = verify_artifacts(src)
    staging, previous = f"{dst}.staging-{os.getpid()}", f"{dst}.previous-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    for name in [*manifest["files"], MANIFEST_NAME]:
        shutil.copy2(os.path.join(src, name), os.path.join(staging, name))
    if os.path.isdir(dst):
        try:
            old_set = set(read_manifest(dst).get("files", {})) | {MANIFEST_NAME}
        except ArtifactError:
            old_set = {"model.pt", "z_predictor.pt", "site_vocabulary.json", "intensity_stats.json"}
        for name in os.listdir(dst):
            if name not in old_set and not os.path.exists(os.path.join(staging, name)):
                source = os.path.join(dst, name)
                (shutil.copytree if os.path.isdir(source) else shutil.copy2)(source, os.path.join(staging, name))
        os.rename(dst, previous)
    os.rename(staging, dst)
    shutil.rmtree(previous, ignore_errors=True)
