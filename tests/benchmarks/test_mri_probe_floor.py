# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.mri_probe_floor import label_only_floor, subject_table
from monai_medl.data.synthetic.mri_cohort import cohort_settings


def test_subject_table_does_not_depend_on_the_image_grid(tmp_path):
    cohort = cohort_settings("mri_bundle", num_subjects=60, unseen_sites=0, validation_fraction=0.3, seed=7)
    small = subject_table(str(tmp_path / "a"), {**cohort, "spatial_size": [8, 8, 8], "spacing": [24.0] * 3})
    other = subject_table(str(tmp_path / "b"), {**cohort, "spatial_size": [10, 12, 10], "spacing": [18.0] * 3})
    for key in ("site", "label", "split"):
        assert np.array_equal(small[key], other[key]), key
    assert set(small["split"]) == {"training", "validation", "test"}


def _table(per_site: list[tuple[int, int]], split_every: int = 2) -> dict[str, np.ndarray]:
    """Sites with (controls, cases); every ``split_every``-th subject of a site/label cell is validation."""
    site, label, split = [], [], []
    for s, (n0, n1) in enumerate(per_site):
        for lab, n in ((0, n0), (1, n1)):
            for i in range(n):
                site.append(s)
                label.append(lab)
                split.append("validation" if i % split_every == 0 else "training")
    return {"site": np.array(site), "label": np.array(label), "split": np.array(split)}


def test_label_only_floor_is_chance_without_confounding_and_higher_with_it():
    balanced = label_only_floor(_table([(20, 20)] * 3))
    assert balanced["chance"] == pytest.approx(1 / 3)
    assert balanced["bayes_label_only"] == pytest.approx(1 / 3)
    assert balanced["site_probe"] <= 1 / 3 + 0.05  # no information: at most chance (CV on ties can read below)
    # site 0 all controls, site 1 all cases, site 2 mixed: the label tells sites 0 and 1 apart
    confounded = label_only_floor(_table([(40, 0), (0, 40), (20, 20)]))
    assert confounded["bayes_label_only"] == pytest.approx(2 / 3)
    assert confounded["site_probe"] > 0.6
    assert confounded["site_probe_from_training"] == pytest.approx(2 / 3)
