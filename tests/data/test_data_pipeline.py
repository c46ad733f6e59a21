# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""End to end: cohort -> datalist -> training-only fits -> MONAI transforms -> batches with site index and z."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("nilearn")

from monai.data import DataLoader, Dataset  # noqa: E402
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged  # noqa: E402

from monai_medl.data import DatalistSpec, load_datalist  # noqa: E402
from monai_medl.data.synthetic.mri_cohort import generate_mri_cohort  # noqa: E402
from monai_medl.transforms import (  # noqa: E402
    UNSEEN_SITE,
    NormalizeBySited,
    RandSiteEffectd,
    SiteIntensityStats,
    SiteToDesignd,
    SiteToIndexd,
    SiteVocabulary,
    site_index_to_design,
)


def test_cohort_through_a_monai_pipeline(tmp_path):
    path = generate_mri_cohort(
        tmp_path / "c",
        num_subjects=24,
        sites=3,
        unseen_sites=1,
        seed=2,
        spatial_size=(16, 16, 16),
        spacing=(12.0, 12.0, 12.0),
    )
    train = load_datalist(path, "training", spec=DatalistSpec(num_classes=2))
    test = load_datalist(path, "test", spec=DatalistSpec(num_classes=2))
    load = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image")])

    # fitted on the training split only, saved, and reloaded as inference would
    SiteVocabulary.from_datalist(train).to_json(tmp_path / "sites.json")
    SiteIntensityStats.fit(train, keys="image", transform=load).to_json(tmp_path / "stats.json")
    vocab = SiteVocabulary.from_json(tmp_path / "sites.json")
    assert vocab.num_sites == 3

    pipeline = Compose(
        [
            load,
            NormalizeBySited("image", stats=tmp_path / "stats.json"),
            SiteToIndexd("site", vocabulary=vocab, raw_key_postfix="name"),
            SiteToDesignd("site", num_sites=vocab.num_sites, name="z"),
            RandSiteEffectd("image", prob=0.5),
        ]
    ).set_random_state(0)
    batch = next(iter(DataLoader(Dataset(test, pipeline), batch_size=len(test), num_workers=0)))
    assert batch["image"].shape == (len(test), 1, 16, 16, 16) and batch["image"].dtype == torch.float32
    assert batch["z"].shape == (len(test), 3)
    unseen = batch["site"] == UNSEEN_SITE
    assert unseen.any() and (~unseen).any()  # test has held-out seen-site subjects and the unseen site
    assert all(name == "site_d" for name, u in zip(batch["site_name"], unseen.tolist()) if u)
    torch.testing.assert_close(batch["z"], site_index_to_design(batch["site"], vocab.num_sites))
