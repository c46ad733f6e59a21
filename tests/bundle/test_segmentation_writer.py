# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""write_predictions writes a segmentation evaluation's files with segmentation_fields; write_segmentations is its
deprecated spelling."""

from __future__ import annotations

import csv
import json

import pytest

from monai_medl.bundle import (
    InvalidScansError,
    segmentation_fields,
    segmentation_site_metrics,
    write_predictions,
    write_segmentations,
)


def _rows():
    rows = []
    for i, (site, seen) in enumerate([("a", True), ("a", True), ("new", False)]):
        row = {"mode": "mixed", "z": "zero", "split": "test", "image": f"s{i}.nii.gz", "site": site, "seen": seen}
        row.update({"dice_csf": 0.5 + 0.1 * i, "dice_mean": 0.4 + 0.1 * i, "input_warning": None, "error": None})
        rows.append(row)
    return rows


def _files(folder):
    with open(folder / "predictions.csv", newline="", encoding="utf-8") as f:
        predictions = list(csv.reader(f))
    with open(folder / "metrics.csv", newline="", encoding="utf-8") as f:
        metrics = list(csv.reader(f))
    return predictions, metrics, json.loads((folder / "metrics.json").read_text())


def test_segmentation_columns(tmp_path):
    rows = _rows()
    metrics = segmentation_site_metrics(rows)
    paths = write_predictions(rows, tmp_path, metrics, **segmentation_fields(rows))
    assert sorted(paths) == ["metrics_csv", "metrics_json", "predictions"]
    predictions, table, loaded = _files(tmp_path)
    assert predictions[0] == ["mode", "z", "split", "image", "site", "seen", "input_warning", "error"] + [
        "dice_csf",
        "dice_mean",
    ]
    assert [r[3] for r in predictions[1:]] == ["s0.nii.gz", "s1.nii.gz", "s2.nii.gz"]
    assert table[0] == ["mode", "group", "site", "n", "dice_csf", "dice_mean"]
    overall = next(m for m in loaded if m["group"] == "overall")
    assert overall["n"] == 3 and overall["dice_csf"] == pytest.approx(0.6)


def test_write_segmentations_is_deprecated_and_writes_the_same(tmp_path):
    rows = _rows()
    metrics = segmentation_site_metrics(rows)
    write_predictions(rows, tmp_path / "new", metrics, **segmentation_fields(rows))
    with pytest.warns(DeprecationWarning, match="write_segmentations is deprecated"):
        write_segmentations(rows, tmp_path / "old", metrics, prefix="")
    assert _files(tmp_path / "old") == _files(tmp_path / "new")
    errors = [{"image": "bad.nii.gz", "error": "unreadable"}]
    with pytest.warns(DeprecationWarning), pytest.raises(InvalidScansError, match="bad.nii.gz: unreadable"):
        write_segmentations(rows, tmp_path / "err", errors=errors)
