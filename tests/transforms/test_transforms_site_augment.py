# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_medl.transforms import RandSiteEffect, RandSiteEffectD, RandSiteEffectd


def _sample():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 12, 12, 12, generator=g) + 0.5
    return {"image": img, "flair": img.clone() * 2, "site": "site_a"}


def test_reproducible_from_seed_and_changes_the_image():
    aug = RandSiteEffectd(keys="image", prob=1.0)
    out1 = aug.set_random_state(7)(_sample())["image"]
    out2 = aug.set_random_state(7)(_sample())["image"]
    out3 = aug.set_random_state(8)(_sample())["image"]
    torch.testing.assert_close(out1, out2)
    assert not torch.allclose(out1, out3)
    assert not torch.allclose(out1, _sample()["image"])


def test_prob_zero_is_identity_and_keeps_site():
    out = RandSiteEffectd(keys=("image", "flair"), prob=0.0).set_random_state(0)(_sample())
    torch.testing.assert_close(torch.as_tensor(out["image"]), _sample()["image"])
    assert out["site"] == "site_a"


def test_modalities_share_the_simulated_scanner():
    """Only gain/contrast-invariant steps on: the same bias field and blur hit both keys."""
    aug = RandSiteEffectd(keys=("image", "flair"), prob=1.0, gamma=None, scale=None, shift=None, noise_std=None)
    data = _sample()
    out = aug.set_random_state(3)(data)
    # flair = 2 * image and the remaining steps (blur, bias field) are linear: the ratio survives
    torch.testing.assert_close(torch.as_tensor(out["flair"]), 2 * torch.as_tensor(out["image"]), rtol=1e-5, atol=1e-5)


def test_each_step_can_be_switched_off():
    img = _sample()["image"]
    aug = RandSiteEffect(
        prob=1.0, gamma=None, smooth_sigma=None, bias_coeff=None, scale=None, shift=(0.5, 0.5), noise_std=None
    )
    torch.testing.assert_close(torch.as_tensor(aug.set_random_state(0)(img)), img + 0.5)
    assert list(aug.steps) == ["shift"]


def test_array_form_accepts_numpy_and_validates_ranges():
    out = RandSiteEffect(prob=1.0).set_random_state(0)(np.ones((1, 8, 8, 8), np.float32))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 8, 8, 8)
    with pytest.raises(ValueError, match="gamma"):
        RandSiteEffect(gamma=(2.0, 1.0))
    with pytest.raises(ValueError, match="noise_std"):
        RandSiteEffect(noise_std=-1)
    assert RandSiteEffectD is RandSiteEffectd


def test_missing_modality_allowed():
    data = _sample()
    del data["flair"]
    out = RandSiteEffectd(keys=("image", "flair"), prob=1.0, allow_missing_keys=True).set_random_state(0)(data)
    assert "flair" not in out and out["image"].shape == (1, 12, 12, 12)
