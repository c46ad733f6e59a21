# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The package's synthetic MRI cohort at a tiny size, its training items written as one datalist per site."""

from __future__ import annotations

import json
from pathlib import Path

from monai_medl.data.synthetic.mri_cohort import generate_mri_cohort

BUNDLE = str(Path(__file__).resolve().parents[2] / "bundles" / "mri_me_cnn_classification")
# 16^3 images and a 2-stage backbone of 4 and 8 channels: a local round of a site takes about a second on one core
OVERRIDES = {"spatial_size": [16, 16, 16], "network_def#backbone#channels": [4, 8]}


def write_image_site_datalists(folder: Path, num_subjects: int = 32, seed: int = 0) -> list[Path]:
    """``<site name>.json`` per seen site (two), in the bundle's datalist format with absolute image paths."""
    cohort = generate_mri_cohort(
        folder / "cohort", num_subjects=num_subjects, sites=2, unseen_sites=0, seed=seed, spatial_size=(16, 16, 16),
        spacing=(12.0, 12.0, 12.0), validation_fraction=0.1, test_fraction=0.1,
    )  # fmt: skip
    base = Path(cohort).parent
    training = json.loads(Path(cohort).read_text())["training"]
    paths = []
    for name in sorted({e["site"] for e in training}):
        items = [{**e, "image": str(base / e["image"])} for e in training if e["site"] == name]
        path = folder / f"{name}.json"
        path.write_text(json.dumps({"training": items}))
        paths.append(path)
    return paths
