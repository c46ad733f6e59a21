# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""One run, one folder: run folders are created exclusively, under unique names, by threads and processes alike."""

from __future__ import annotations

import multiprocessing
import os
import threading
from pathlib import Path

import pytest

from monai_medl.bundle import TrainingRun


def _start_together(n: int, make) -> list:
    """Call ``make()`` in ``n`` threads released by one barrier; return results (or exceptions) in order."""
    barrier, out = threading.Barrier(n), [None] * n

    def worker(i: int) -> None:
        barrier.wait()
        try:
            out[i] = make()
        except Exception as err:  # noqa: BLE001 - collected and asserted on
            out[i] = err

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_runs_started_in_the_same_instant_get_their_own_folders(tmp_path):
    runs = _start_together(16, lambda: TrainingRun(tmp_path / "runs"))
    assert all(isinstance(r, TrainingRun) for r in runs), runs
    assert len({r.path for r in runs}) == 16
    assert sorted(os.listdir(tmp_path / "runs")) == sorted(r.name for r in runs)
    assert all(r.name.startswith("train_") and f"_{os.getpid()}_" in r.name for r in runs)


def test_one_run_name_asked_for_twice_at_once_is_given_once(tmp_path):
    results = _start_together(8, lambda: TrainingRun(tmp_path / "runs", name="mine"))
    won = [r for r in results if isinstance(r, TrainingRun)]
    lost = [r for r in results if isinstance(r, FileExistsError)]
    assert len(won) == 1 and len(lost) == 7, results
    assert "run_name 'mine'" in str(lost[0]) and str(tmp_path / "runs" / "mine") in str(lost[0])


def _child(runs_dir: str, barrier, queue) -> None:
    barrier.wait()
    queue.put(TrainingRun(runs_dir).name)


def test_runs_started_in_the_same_instant_by_several_processes_get_their_own_folders(tmp_path):
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_child, args=(str(tmp_path / "runs"), barrier, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    names = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(set(names)) == 4 and sorted(os.listdir(tmp_path / "runs")) == sorted(names)
    assert len({n.split("_")[3] for n in names}) == 4  # the pid is part of the name


def test_an_existing_run_name_is_an_error_naming_the_folder(tmp_path):
    (tmp_path / "runs" / "old").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="already exists.*choose another run_name"):
        TrainingRun(tmp_path / "runs", name="old")
    assert os.listdir(tmp_path / "runs") == ["old"]


def _checkpointed(tmp_path: Path) -> Path:
    import torch

    models = tmp_path / "runs" / "r" / "models"
    models.mkdir(parents=True)
    torch.save({"x": torch.zeros(1)}, models / "checkpoint_epoch=1.pt")
    return models


def test_an_existing_run_with_checkpoints_suggests_resuming(tmp_path):
    _checkpointed(tmp_path)
    with pytest.raises(FileExistsError, match="resume it"):
        TrainingRun(tmp_path / "runs", name="r")


def test_a_run_cannot_be_resumed_by_two_processes_at_once(tmp_path):
    _checkpointed(tmp_path)
    first = TrainingRun(tmp_path / "runs", name="r", resume=True)
    assert first.last_checkpoint.endswith("checkpoint_epoch=1.pt")
    with pytest.raises(FileExistsError, match="in use by another running process"):
        TrainingRun(tmp_path / "runs", name="r", resume=True)
    first.release()  # as the end of the process (or of the run) does
    assert TrainingRun(tmp_path / "runs", name="r", resume=True).name == "r"
