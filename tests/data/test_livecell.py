# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os

import numpy as np
import pytest

if importlib.util.find_spec("skimage") is None:
    pytest.skip("scikit-image (the source of the real cell image) is not installed", allow_module_level=True)

from monai_medl.data.synthetic.livecell import (  # noqa: E402
    CELL_IMAGE_SHA256,
    _measured_elongation,
    generate_livecell_dataset,
    load_cell_image,
    make_livecell,
)


@pytest.fixture(scope="module")
def data():
    return make_livecell(num_batches=4, num_unseen=1, tiles_per_batch=30, tile_size=32, seed=3)


def test_real_cell_image_is_loaded_from_the_installed_package():
    img = load_cell_image()
    assert img.shape == (660, 550) and img.dtype == np.float32
    assert 0.0 <= img.min() < 0.1 and 0.9 < img.max() <= 1.0


def test_shapes_splits_and_ranges(data):
    n = 4 * 30
    assert data.image.shape == data.clean.shape == data.mask.shape == (n, 1, 32, 32)
    assert data.image.min() >= 0 and data.image.max() <= 1
    # the unseen batch (the last) is test-only; seen batches are split 60/20/20
    assert set(data.split[data.batch == 3]) == {"test_unseen"}
    assert not np.any(data.split[data.batch < 3] == "test_unseen")
    for b in range(3):
        counts = {s: int(np.sum(data.split[data.batch == b] == s)) for s in ("training", "validation", "test_seen")}
        assert counts == {"training": 18, "validation": 6, "test_seen": 6}
    assert data.batch_names == ["day_01", "day_02", "day_03", "day_04"]


def test_label_is_the_measured_elongation_of_the_cell_mask(data):
    for i in range(0, len(data.label), 7):
        e = _measured_elongation(data.mask[i, 0])
        assert e == pytest.approx(data.elongation[i])
        assert data.label[i] == int(e > data.config["elongation_threshold"])
    # both phenotypes occur, and the cell occupies a plausible part of the tile
    assert 0.2 < data.label.mean() < 0.8
    area = data.mask.reshape(len(data.mask), -1).mean(1)
    assert 0.05 < area.min() and area.max() < 0.35


def test_same_seed_same_data_and_different_seed_differs(data):
    again = make_livecell(num_batches=4, num_unseen=1, tiles_per_batch=30, tile_size=32, seed=3)
    np.testing.assert_array_equal(again.image, data.image)
    np.testing.assert_array_equal(again.label, data.label)
    other = make_livecell(num_batches=4, num_unseen=1, tiles_per_batch=30, tile_size=32, seed=4)
    assert not np.allclose(other.image, data.image)


def test_batch_effects_change_appearance_not_the_cell(data):
    # the imaged tile stays close to its clean tile (same cell), but every batch shifts intensity by its own effect
    clean, img = data.clean[:, 0], data.image[:, 0]
    corr = [np.corrcoef(clean[i].ravel(), img[i].ravel())[0, 1] for i in range(len(img))]
    assert np.median(corr) > 0.8
    shift = img.mean((1, 2)) - clean.mean((1, 2))
    per_batch = np.array([shift[data.batch == b].mean() for b in range(4)])
    within = np.array([shift[data.batch == b].std() for b in range(4)])
    assert per_batch.max() - per_batch.min() > 4 * within.max()
    # re-imaging a clean tile with a batch's effect (noise off) reproduces that batch's mean shift
    for b in range(4):
        i = int(np.flatnonzero(data.batch == b)[0])
        eff = dataclasses.replace(data.effects[b], noise_sd=0.0)
        redo = eff.apply(clean[i], np.random.default_rng(0))
        assert abs((redo - img[i]).mean()) < 0.01


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="num_unseen"):
        make_livecell(num_batches=3, num_unseen=3)
    with pytest.raises(ValueError, match="tile_size"):
        make_livecell(tile_size=8)


def test_generate_dataset_writes_datalist_and_ground_truth(tmp_path):
    kwargs = {"num_batches": 3, "num_unseen": 1, "tiles_per_batch": 10, "tile_size": 32, "seed": 1}
    datalist = generate_livecell_dataset(tmp_path, **kwargs)
    assert sorted(datalist) == ["test_seen", "test_unseen", "training", "validation"]
    assert len(datalist["training"]) == 12 and len(datalist["test_unseen"]) == 10
    entry = datalist["training"][0]
    assert set(entry) == {"image", "clean", "label", "site", "elongation"}
    tile = np.load(os.path.join(tmp_path, entry["image"]))
    assert tile.shape == (1, 32, 32) and tile.dtype == np.float32
    truth = json.loads((tmp_path / "ground_truth.json").read_text())
    assert truth["source_sha256"] == CELL_IMAGE_SHA256
    assert set(truth["batches"]) == {"day_01", "day_02", "day_03"}
    assert truth["batches"]["day_03"]["unseen"] and not truth["batches"]["day_01"]["unseen"]
    assert {"gain", "offset", "blur_sigma", "noise_sd", "prevalence"} <= set(truth["batches"]["day_01"])
    # a second call with the same arguments reuses the files; different arguments regenerate
    mtime = os.path.getmtime(tmp_path / "datalist.json")
    assert generate_livecell_dataset(tmp_path, **kwargs) == datalist
    assert os.path.getmtime(tmp_path / "datalist.json") == mtime
    bigger = generate_livecell_dataset(tmp_path, **{**kwargs, "tiles_per_batch": 15})
    assert len(bigger["test_unseen"]) == 15
