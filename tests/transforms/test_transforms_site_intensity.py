# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_medl.transforms import NormalizeBySite, NormalizeBySited, NormalizeBySiteDict, SiteIntensityStats


def _image(rng, mean, std, shape=(1, 6, 6, 6), background=True):
    img = rng.normal(mean, std, shape).astype(np.float32)
    if background:
        img[..., :1] = 0  # skull-stripped background
    return img


@pytest.fixture
def train():
    rng = np.random.default_rng(0)
    return [
        {"image": _image(rng, m, s), "site": site} for site, m, s in [("a", 100, 10), ("a", 110, 10), ("b", 900, 90)]
    ]


def test_zscore_per_site_and_pooled(train):
    stats = SiteIntensityStats.fit(train, keys="image")
    fg_a = np.concatenate([e["image"][e["image"] != 0] for e in train if e["site"] == "a"])
    assert stats.sites("image") == ("a", "b")
    assert stats.get("image", "a")["mean"] == pytest.approx(fg_a.mean(), rel=1e-6)
    assert stats.get("image", "a")["std"] == pytest.approx(fg_a.std(), rel=1e-5)
    fg_all = np.concatenate([e["image"][e["image"] != 0] for e in train])
    assert stats.get("image", "unseen")["mean"] == pytest.approx(fg_all.mean(), rel=1e-6)  # pooled fallback


def test_normalised_site_is_standardised_and_background_kept(train):
    stats = SiteIntensityStats.fit(train, keys="image")
    out = NormalizeBySited(keys="image", stats=stats)(train[2])["image"]
    fg = train[2]["image"] != 0
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert np.all(out[~fg] == 0)
    assert abs(out[fg].mean()) < 1e-4 and out[fg].std() == pytest.approx(1.0, rel=1e-4)


def test_statistics_come_from_training_data_only(train):
    """Fitting uses the training entries only; applying to test data never changes the statistics or outputs."""
    rng = np.random.default_rng(1)
    stats = SiteIntensityStats.fit(train, keys="image")
    before = stats.to_dict()
    reference = NormalizeBySited(keys="image", stats=stats)(train[0])["image"]
    test = [{"image": _image(rng, 5000, 700), "site": s} for s in ("a", "b", "c")]
    transform = NormalizeBySited(keys="image", stats=stats)
    for item in test:
        transform(item)
    assert stats.to_dict() == before
    np.testing.assert_array_equal(transform(train[0])["image"], reference)
    # and a fit on train + test would have been different: the test is sensitive to a leak
    leaked = SiteIntensityStats.fit(train + test, keys="image")
    assert leaked.get("image", "a")["mean"] > 2 * stats.get("image", "a")["mean"]


def test_unseen_site_fallbacks(train):
    stats = SiteIntensityStats.fit(train, keys="image")
    img = _image(np.random.default_rng(2), 300, 30)
    pooled = stats.get("image", "__none__")
    out = NormalizeBySite(stats, fallback="pooled")(img, "site_new")
    fg = img != 0
    np.testing.assert_allclose(out[fg], (img[fg] - pooled["center"]) / pooled["scale"], rtol=1e-5)
    own = NormalizeBySite(stats, fallback="image")(img, "site_new")
    assert abs(own[fg].mean()) < 1e-4
    with pytest.raises(ValueError, match="key 'image'.*site 'site_new' has no intensity statistics"):
        NormalizeBySited(keys="image", stats=stats, fallback="error")({"image": img, "site": "site_new"})


def test_percentile_method_maps_robust_range_to_unit_interval(train):
    stats = SiteIntensityStats.fit(train, keys="image", method="percentile", lower=5, upper=95)
    s = stats.get("image", "b")
    fg = train[2]["image"][train[2]["image"] != 0]
    assert s["p_lower"] == pytest.approx(np.percentile(fg, 5))
    out = NormalizeBySite(stats)(torch.as_tensor(train[2]["image"]), "b")
    vals = out[out != 0]
    assert isinstance(out, torch.Tensor)
    assert float(torch.quantile(vals, 0.05)) == pytest.approx(0.0, abs=1e-4)
    assert float(torch.quantile(vals, 0.95)) == pytest.approx(1.0, abs=1e-4)


def test_json_round_trip_and_several_keys(tmp_path, train):
    rng = np.random.default_rng(3)
    data = [dict(e, flair=_image(rng, 40, 4)) for e in train]
    del data[1]["flair"]  # a modality missing for one entry is skipped
    stats = SiteIntensityStats.fit(data, keys=("image", "flair"))
    path = tmp_path / "stats.json"
    stats.to_json(path)
    loaded = SiteIntensityStats.from_json(path)
    assert loaded == stats and loaded.keys == ("image", "flair")
    t = NormalizeBySiteDict(keys=("image", "flair"), stats=str(path), allow_missing_keys=True)
    out = t({"image": data[1]["image"], "site": "a"})
    assert "flair" not in out


def test_fit_reads_files(tmp_path):
    import nibabel as nib

    rng = np.random.default_rng(4)
    paths = []
    for i in range(2):
        p = tmp_path / f"img{i}.nii.gz"
        nib.save(nib.Nifti1Image(_image(rng, 50, 5, shape=(6, 6, 6)), np.eye(4)), p)
        paths.append({"image": str(p), "site": 3})  # integer site names work too
    stats = SiteIntensityStats.fit(paths)
    assert stats.sites("image") == ("3",) and stats.get("image", 3)["mean"] == pytest.approx(50, abs=2)


def test_errors_name_the_problem(train, tmp_path):
    with pytest.raises(ValueError, match="entry 1 has no site"):
        SiteIntensityStats.fit([train[0], {"image": train[1]["image"]}])
    with pytest.raises(ValueError, match="site 'a'.*constant"):
        SiteIntensityStats.fit([{"image": np.ones((1, 4, 4, 4)), "site": "a"}])
    with pytest.raises(ValueError, match="no entry has image key 'flair'"):
        SiteIntensityStats.fit(train, keys=("image", "flair"))
    with pytest.raises(ValueError, match="fitted keys"):
        NormalizeBySited(keys="t2", stats=SiteIntensityStats.fit(train))
    with pytest.raises(ValueError, match="needs fitted SiteIntensityStats"):
        NormalizeBySited(keys="image")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        SiteIntensityStats.from_json(bad)
    with pytest.raises(KeyError, match="no site key 'site'"):
        NormalizeBySited(keys="image", stats=SiteIntensityStats.fit(train))({"image": train[0]["image"]})
