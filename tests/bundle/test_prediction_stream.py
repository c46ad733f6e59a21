# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Streaming inference: rows reach the CSV batch by batch, a crash keeps them, a rerun continues."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest
from ignite.engine import Engine

from monai_medl.bundle import InvalidScansError, PredictionStream

ENTRIES = [{"image": f"/data/s{i}.nii.gz", "site": "a"} for i in range(10)]


def _run(stream: PredictionStream, collector, entries, crash_at: int | None = None) -> None:
    """Predict ``entries`` in batches of 3; raise at iteration ``crash_at``."""

    def step(engine, batch):
        if engine.state.iteration == crash_at:
            raise RuntimeError("killed")
        collector.rows += [{"mode": "mixed", "image": e["image"], "site": "a", "probability": 0.5} for e in batch]

    engine = Engine(step)
    stream.attach(engine)
    engine.run([entries[i : i + 3] for i in range(0, len(entries), 3)], max_epochs=1)


def _images(path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        return [r["image"] for r in csv.DictReader(f)]


def test_a_crash_keeps_the_rows_written_and_a_rerun_predicts_only_the_rest(tmp_path):
    path, identity = tmp_path / "out" / "inference_predictions.csv", ["model-hash", "input"]
    first = SimpleNamespace(rows=[])
    with pytest.raises(RuntimeError, match="killed"):
        _run(PredictionStream(first, path, identity), first, ENTRIES, crash_at=3)
    assert _images(path) == [e["image"] for e in ENTRIES[:6]]  # two batches of 3 were written before the crash
    with open(path, "a", encoding="utf-8") as f:
        f.write("mixed,,test,/data/s6.nii")  # a line cut off by a kill mid-write
    second = SimpleNamespace(rows=[])
    stream = PredictionStream(second, path, identity)
    todo = stream.remaining(ENTRIES)
    assert [e["image"] for e in todo] == [e["image"] for e in ENTRIES[6:]]
    _run(stream, second, todo)
    errors = [{"split": "inference", "image": "/data/bad.nii.gz", "site": "a", "error": "truncated"}]
    with pytest.raises(InvalidScansError, match="1 scan.*10 other scan"):
        stream.finish(errors)
    assert _images(path) == [e["image"] for e in ENTRIES] + ["/data/bad.nii.gz"]  # each scan once, errors last


def test_another_model_or_input_starts_the_csv_afresh(tmp_path):
    path = tmp_path / "p.csv"
    one = SimpleNamespace(rows=[])
    _run(PredictionStream(one, path, ["model-1"]), one, ENTRIES[:3])
    other = PredictionStream(SimpleNamespace(rows=[]), path, ["model-2"])
    assert not path.exists() and len(other.remaining(ENTRIES)) == 10


def test_the_bundle_rerun_predicts_only_the_scans_missing_from_the_csv(tmp_path, caplog):
    import logging
    import shutil
    from pathlib import Path

    import nibabel as nib
    import numpy as np

    from monai_medl.bundle.locks import release_shared
    from tests.bundle.bundle_checks import run_workflow

    bundle = Path(__file__).resolve().parents[2] / "bundles" / "mri_me_cnn_classification"
    root = tmp_path / "bundle"
    for part in ("configs", "models"):
        shutil.copytree(bundle / part, root / part)
    scans = tmp_path / "scans"
    scans.mkdir()
    for i in range(5):
        data = np.random.default_rng(i).normal(100, 10, size=(16, 16, 16)).astype(np.float32)
        nib.save(nib.Nifti1Image(data, np.diag([4.0, 4.0, 4.0, 1.0])), str(scans / f"s{i}.nii.gz"))
    args = {"input": str(scans), "dataloader#batch_size": 2}

    def infer() -> None:
        try:
            run_workflow(root / "configs", "inference.json", root, "infer", **args)
        finally:
            release_shared(root / "models")

    infer()
    csv_path = root / "eval" / "inference_predictions.csv"
    lines = csv_path.read_text().splitlines(keepends=True)
    assert len(lines) == 6
    csv_path.write_text("".join(lines[:4]))  # as if killed after the first 3 scans
    with caplog.at_level(logging.INFO):
        infer()
    assert "3 of 5 scans already predicted" in caplog.text
    after = csv_path.read_text().splitlines(keepends=True)
    assert after[:4] == lines[:4]  # the kept rows are not recomputed
    redone, before = (
        list(csv.DictReader(["".join(lines[:1]), *after[4:]])),
        list(csv.DictReader([*lines[:1], *lines[4:]])),
    )
    assert [r["image"] for r in redone] == [r["image"] for r in before]  # the two missing scans, predicted again
    assert [float(r["probability"]) for r in redone] == pytest.approx(
        [float(r["probability"]) for r in before], abs=1e-5
    )
