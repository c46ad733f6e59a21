# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Streaming inference of the segmentation and live-cell bundles (shipped weights): a crash after N batches keeps
their rows (and segmentations), the rerun predicts only the rest, and the result equals an uninterrupted run's."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_medl.bundle import SiteDiceCollector, SitePredictionCollector
from monai_medl.bundle.locks import release_shared
from tests.bundle.bundle_checks import run_workflow

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"


def _mri_scans(folder: Path) -> tuple[Path, list[str]]:
    """Five scans in a folder (the inference input): unknown sites."""
    for i in range(5):
        data = np.random.default_rng(i).normal(100, 10, size=(32, 32, 32)).astype(np.float32)
        nib.save(nib.Nifti1Image(data, np.diag([4.0, 4.0, 4.0, 1.0])), str(folder / f"s{i}.nii.gz"))
    return folder, sorted(str(p) for p in folder.glob("*.nii.gz"))


def _tiles(folder: Path) -> tuple[Path, list[str]]:
    """Five tiles in a datalist: a training day and a new one, labelled."""
    day = json.loads((BUNDLES / "livecell_me_autoencoder" / "models" / "site_vocabulary.json").read_text())
    day = day["sites"][0] if isinstance(day, dict) else day[0]
    entries = []
    for i in range(5):
        np.save(folder / f"t{i}.npy", np.random.default_rng(i).random((1, 32, 32)).astype(np.float32))
        entries.append({"image": str(folder / f"t{i}.npy"), "site": day if i % 2 else "new-day", "label": i % 2})
    (folder / "datalist.json").write_text(json.dumps(entries))
    return folder / "datalist.json", [e["image"] for e in entries]


CASES = {  # bundle, scan writer, collector class, the per-scan output columns compared between the runs, batch size
    # (the segmentation bundle predicts one scan per batch: its SaveImaged needs one affine)
    "segmentation": ("mri_me_unet_segmentation", _mri_scans, SiteDiceCollector, ["z"], 1),
    "livecell": ("livecell_me_autoencoder", _tiles, SitePredictionCollector, ["z", "probability"], 2),
}


def _bundle(tmp_path: Path, name: str, kind: str) -> Path:
    root = tmp_path / kind
    for part in ("configs", "models"):
        shutil.copytree(BUNDLES / CASES[name][0] / part, root / part)
    return root


def _infer(root: Path, scans: Path, batch_size: int) -> None:
    try:
        batches = {"dataloader#batch_size": batch_size}
        run_workflow(root / "configs", "inference.json", root, "infer", input=str(scans), **batches)
    finally:
        release_shared(root / "models")


def _rows(root: Path) -> list[dict[str, str]]:
    with open(root / "eval" / "inference_predictions.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_crashed_inference_keeps_its_rows_and_the_rerun_continues(name, tmp_path, monkeypatch, caplog):
    _, write_scans, collector, compared, batch_size = CASES[name]
    (tmp_path / "scans").mkdir()
    scans, images = write_scans(tmp_path / "scans")
    reference = _bundle(tmp_path, name, "uninterrupted")
    _infer(reference, scans, batch_size)

    crashed = _bundle(tmp_path, name, "crashed")
    real, calls = collector.__call__, []

    def crash_at_third_batch(self, engine):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        real(self, engine)

    monkeypatch.setattr(collector, "__call__", crash_at_third_batch)
    with pytest.raises(Exception) as info:
        _infer(crashed, scans, batch_size)
    assert "simulated crash" in repr(info.value) or "simulated crash" in repr(info.value.__cause__)
    kept = _rows(crashed)
    assert len(kept) == 2 * batch_size  # the two batches before the crash were streamed
    monkeypatch.setattr(collector, "__call__", real)
    with caplog.at_level(logging.INFO):
        _infer(crashed, scans, batch_size)
    assert f"{len(kept)} of 5 scans already predicted" in caplog.text
    after, expected = _rows(crashed), _rows(reference)
    assert after[: len(kept)] == kept  # the kept rows are not recomputed
    assert sorted(r["image"] for r in after) == sorted(r["image"] for r in expected) == sorted(images)
    by_image = {r["image"]: r for r in expected}
    for row in after:
        for column in compared:
            if column == "probability":
                assert float(row[column]) == pytest.approx(float(by_image[row["image"]][column]), abs=1e-5)
            else:
                assert row[column] == by_image[row["image"]][column]
    if name == "segmentation":  # every scan's label map written once, the same as without the crash
        segs = sorted(p.name for p in (crashed / "eval" / "segmentations").iterdir())
        assert segs == sorted(p.name for p in (reference / "eval" / "segmentations").iterdir()) and len(segs) == 5
        for seg in segs:
            got = nib.load(crashed / "eval" / "segmentations" / seg).get_fdata()
            assert np.array_equal(got, nib.load(reference / "eval" / "segmentations" / seg).get_fdata())
