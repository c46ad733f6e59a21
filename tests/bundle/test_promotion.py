# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Promotion under the models lock: readers see one whole set, a waiting promotion is not starved, killed holders
leave no stale lock, and every fault (disk full, read-only, SIGTERM, SIGKILL) leaves models/ byte-identical."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from ignite.engine import Engine
from monai.handlers import CheckpointSaver

import monai_medl.bundle.artifacts as artifacts
from monai_medl.bundle import ArtifactError, TrainingRun, open_artifacts, promote_artifacts
from monai_medl.bundle.locks import release_shared
from tests.bundle.artifact_sets import FILES, make_set, tree_bytes


@pytest.fixture
def bundle(tmp_path) -> Path:
    """``models/`` holding run "old"'s set plus a user's note; ``runs/new/models`` a finished run "new"."""
    make_set(tmp_path / "runs" / "old" / "models", "old")
    promote_artifacts(tmp_path / "runs" / "old" / "models", tmp_path / "models")
    (tmp_path / "models" / "notes.txt").write_text("mine")
    make_set(tmp_path / "runs" / "new" / "models", "new")
    return tmp_path


def _failing_at(n: int, real, code: int):
    """A stand-in for ``real`` that fails with ``OSError(code)`` at its ``n``-th call."""
    calls = {"n": 0}

    def fake(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise OSError(code, os.strerror(code), str(args[-1]) if args else None)
        return real(*args, **kwargs)

    return fake


def test_promotion_swaps_in_the_whole_set_and_carries_other_files_over(bundle):
    promote_artifacts(bundle / "runs" / "new" / "models", bundle / "models")
    manifest = open_artifacts(bundle / "models", FILES)
    release_shared(bundle / "models")
    assert manifest["run"] == "new" and (bundle / "models" / "notes.txt").read_text() == "mine"
    promoted = tree_bytes(bundle / "models")
    promoted.pop("notes.txt")
    assert promoted == tree_bytes(bundle / "runs" / "new" / "models")
    assert sorted(p.name for p in bundle.iterdir()) == [".models.lock", ".models.queue.lock", "models", "runs"]


@pytest.mark.parametrize(
    "target, n, code, operation",
    [
        ("shutil.copy2", 1, errno.ENOSPC, "while copying"),  # the first file of the set
        ("shutil.copy2", 3, errno.ENOSPC, "while copying"),  # the manifest
        ("shutil.copy2", 4, errno.EROFS, "while copying"),  # a carried-over file
        ("os.fsync", 2, errno.ENOSPC, "while copying"),
        ("os.mkdir", 1, errno.EROFS, "while creating the staging folder"),
        ("_exchange", 1, errno.EROFS, "while swapping in the staging folder"),
    ],
)
def test_a_fault_during_promotion_leaves_models_byte_identical(bundle, monkeypatch, caplog, target, n, code, operation):
    before = tree_bytes(bundle / "models")
    owner = artifacts if target == "_exchange" else {"shutil": shutil, "os": os}[target.split(".")[0]]
    name = target.split(".")[-1]
    monkeypatch.setattr(owner, name, _failing_at(n, getattr(owner, name), code))
    with pytest.raises(ArtifactError) as info:
        promote_artifacts(bundle / "runs" / "new" / "models", bundle / "models")
    monkeypatch.undo()
    assert operation in str(info.value) and str(bundle / "models") in str(info.value)
    assert os.strerror(code) in str(info.value) and str(info.value) in caplog.text  # printed as well as raised
    assert tree_bytes(bundle / "models") == before
    assert not list(bundle.glob("models.*"))  # no staging folder left behind
    promote_artifacts(bundle / "runs" / "new" / "models", bundle / "models")  # and the next promotion works
    assert json.loads((bundle / "models" / "manifest.json").read_text())["run"] == "new"


def test_two_rename_fallback_restores_the_previous_set_when_the_second_rename_fails(bundle, monkeypatch):
    before = tree_bytes(bundle / "models")
    monkeypatch.setattr(artifacts, "_exchange", lambda a, b: False)
    monkeypatch.setattr(os, "rename", _failing_at(2, os.rename, errno.ENOSPC))
    with pytest.raises(ArtifactError, match="previous set restored"):
        promote_artifacts(bundle / "runs" / "new" / "models", bundle / "models")
    monkeypatch.undo()
    assert tree_bytes(bundle / "models") == before and not list(bundle.glob("models.*"))


def test_a_set_moved_aside_by_a_killed_fallback_promotion_is_put_back_by_the_next_reader(bundle):
    before = tree_bytes(bundle / "models")
    os.rename(bundle / "models", bundle / "models.previous-99999-abcdef")  # killed between the two renames
    assert open_artifacts(bundle / "models", FILES)["run"] == "old"
    release_shared(bundle / "models")
    assert tree_bytes(bundle / "models") == before and not list(bundle.glob("models.*"))


def test_a_failed_manifest_write_names_the_file_and_leaves_no_partial_manifest(tmp_path, monkeypatch, caplog):
    folder = make_set(tmp_path / "run" / "models", "x")
    (folder / "manifest.json").unlink()
    monkeypatch.setattr(os, "fsync", _failing_at(1, os.fsync, errno.ENOSPC))
    with pytest.raises(ArtifactError, match="writing the manifest .*manifest.json failed .No space left"):
        artifacts.write_manifest(folder, FILES)
    assert sorted(os.listdir(folder)) == sorted(FILES) and "writing the manifest" in caplog.text


def test_a_failed_checkpoint_write_names_the_run_and_leaves_models_untouched(bundle, monkeypatch):
    before = tree_bytes(bundle / "models")
    run = TrainingRun(bundle / "runs")
    engine = Engine(lambda e, b: None)
    CheckpointSaver(run.models_dir, {"net": torch.nn.Linear(2, 1)}, save_interval=1, n_saved=2).attach(engine)
    monkeypatch.setattr(torch, "save", _failing_at(2, torch.save, errno.ENOSPC))
    with pytest.raises(ArtifactError, match="writing a checkpoint or artifact into .*No space left") as info:
        run.train(SimpleNamespace(run=lambda: engine.run(range(2), max_epochs=3)))
    assert f"training run {run.path}" in str(info.value)
    assert os.listdir(run.models_dir) == ["net_epoch=1.pt"] and tree_bytes(bundle / "models") == before
