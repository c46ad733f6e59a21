# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Multimodal data path: modality mask and stacking transforms, prepare_batch with mask and covariates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor
from monai.transforms import Compose, Lambdad

from monai_medl.engines.multimodal_prepare_batch import MultimodalPrepareBatch
from monai_medl.networks.nets import make_multimodal_me_cnn
from monai_medl.transforms.modality import ModalityMaskd, StackModalitiesd


def test_modality_mask_marks_and_drops_absent_keys():
    t = ModalityMaskd(["t1", "t2", "flair"], required=["t1"])
    out = t({"t1": "a.nii", "t2": "", "label": 1, "site": "s3"})
    assert out["modality_mask"].tolist() == [1.0, 0.0, 0.0]
    assert "t2" not in out and "flair" not in out and out["t1"] == "a.nii"
    with pytest.raises(ValueError, match=r"modality 't1' is required but absent \(sample site='s3'\)"):
        t({"t1": None, "t2": "b", "site": "s3"})
    with pytest.raises(ValueError, match="no modality"):
        ModalityMaskd(["t1", "flair"])({"label": 0})
    with pytest.raises(ValueError, match=r"required keys \['pd'\]"):
        ModalityMaskd(["t1"], required=["pd"])


def test_stack_modalities_placeholder_and_errors():
    t1 = MetaTensor(torch.rand(1, 4, 5, 6), meta={"filename_or_obj": "t1.nii"})
    t = StackModalitiesd(["t1", "flair", "t2"], fill_value=-1.0)
    out = t({"t1": t1, "t2": torch.full((1, 4, 5, 6), 2.0), "modality_mask": torch.tensor([1.0, 0.0, 1.0])})
    img = out["image"]
    assert img.shape == (3, 4, 5, 6) and isinstance(img, MetaTensor) and img.meta["filename_or_obj"] == "t1.nii"
    assert torch.equal(img[0], t1[0].as_tensor()) and (img[1] == -1).all() and (img[2] == 2).all()
    assert "t1" not in out and "t2" not in out
    # without a mask key the mask is made from the keys present
    out = StackModalitiesd(["t1", "flair"])({"flair": torch.ones(1, 2, 2)})
    assert out["modality_mask"].tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match=r"'flair' has spatial shape \(3, 3\) but 't1' has \(2, 2\)"):
        StackModalitiesd(["t1", "flair"])({"t1": torch.ones(1, 2, 2), "flair": torch.ones(1, 3, 3)})
    with pytest.raises(ValueError, match="'t1' must be channel-first with 1 channel"):
        StackModalitiesd(["t1"])({"t1": torch.ones(2, 2, 2)})
    with pytest.raises(KeyError, match="marked present"):
        StackModalitiesd(["t1", "flair"])({"t1": torch.ones(1, 2, 2), "modality_mask": torch.tensor([1.0, 1.0])})


def test_pipeline_batches_and_prepare_batch_feeds_the_network():
    rng = np.random.default_rng(0)
    items = []
    for i in range(6):
        item = {"t1": rng.random((1, 16, 16), dtype=np.float32), "label": float(i % 2), "site": i % 3}
        item["age"], item["sex"] = float(60 + i), float(i % 2)
        if i != 4:  # sample 4 has no FLAIR
            item["flair"] = rng.random((1, 16, 16), dtype=np.float32)
        items.append(item)
    xform = Compose(
        [
            ModalityMaskd(["t1", "flair"], required=["t1"]),
            Lambdad(["t1", "flair"], lambda a: a * 2.0, allow_missing_keys=True),  # any per-key transform
            StackModalitiesd(["t1", "flair"]),
        ]
    )
    batch = next(iter(DataLoader(Dataset(items, xform), batch_size=6)))
    assert batch["image"].shape == (6, 2, 16, 16)
    assert batch["modality_mask"].tolist() == [[1.0, 1.0]] * 4 + [[1.0, 0.0]] + [[1.0, 1.0]]
    prepare = MultimodalPrepareBatch(num_clusters=3, covariates_key=["age", "sex"])
    image, label, args, kwargs = prepare(batch)
    assert set(kwargs) == {"mask", "covariates"} and kwargs["covariates"].shape == (6, 2)
    assert kwargs["covariates"][:, 0].tolist() == [60.0, 61.0, 62.0, 63.0, 64.0, 65.0]
    assert args[0].shape == (6, 3) and torch.equal(args[0].argmax(1), torch.tensor([0, 1, 2, 0, 1, 2]))
    net = make_multimodal_me_cnn(
        3,
        backbone={"_target_": "monai_medl.networks.nets.SmallCNN", "spatial_dims": 2, "channels": [4, 8]},
        num_covariates=2,
    ).eval()
    with torch.no_grad():
        pred = net(image, *args, **kwargs)
        # the FLAIR placeholder of sample 4 is not read
        image[4, 1] = 123.0
        torch.testing.assert_close(net(image, *args, **kwargs), pred)
    assert pred.shape == (6, 1)
    # without a mask key every modality is present; unknown covariate keys are named
    del batch["modality_mask"]
    assert "mask" not in MultimodalPrepareBatch(3)(batch)[3]
    with pytest.raises(KeyError, match=r"covariate key\(s\) \['bmi'\]"):
        MultimodalPrepareBatch(3, covariates_key=["age", "bmi"])(batch)
    assert (
        "covariates" not in MultimodalPrepareBatch(3, covariates_key=["bmi"], allow_missing_covariates=True)(batch)[3]
    )
