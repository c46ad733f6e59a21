# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""MixedEffectsCNN's one way to set its random effects (``random_effects=RandomEffectsSettings(...)``) and the
deprecated individual keywords, which still build the same network for one release."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from monai_medl.networks.layers import RandomEffectsSettings
from monai_medl.networks.nets import MixedEffectsCNN

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "mri_me_cnn_classification"

CASES = [
    {"slope_prior_scale": 0.2, "intercept_prior_scale": 0.5},
    {"random_slopes": False, "random_intercept": False},
    {"cluster_prior_scale": 0.4, "learn_prior_scale": True, "post_loc_init_scale": 0.05},
]


def _build(seed: int, **kwargs) -> MixedEffectsCNN:
    torch.manual_seed(seed)
    return MixedEffectsCNN(3, spatial_dims=2, probe_size=16, cluster_scale_bias="last", **kwargs)


@pytest.mark.parametrize("settings", CASES)
def test_keywords_warn_and_build_the_network_the_settings_object_builds(settings):
    with pytest.warns(DeprecationWarning, match=r"use random_effects=RandomEffectsSettings\(") as record:
        by_keywords = _build(0, **settings)
    message = str(record[0].message)
    assert "MixedEffectsCNN(" in message and all(f"{k}=" in message for k in settings)
    assert record[0].filename == __file__  # the warning points at the caller's line
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the settings object is the supported way: no warning
        by_object = _build(0, random_effects=RandomEffectsSettings(**settings))
    assert by_keywords.random_effects_settings == by_object.random_effects_settings
    a, b = by_keywords.state_dict(), by_object.state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed, same modules in the same order: same values
    x, z = torch.randn(2, 1, 16, 16), torch.eye(3)[[0, 2]]
    torch.testing.assert_close(by_keywords.eval()(x, z), by_object.eval()(x, z))


def test_the_settings_reach_the_layers_and_a_dictionary_works_as_in_a_bundle_config():
    net = _build(0, random_effects={"slope_prior_scale": 0.3, "cluster_prior_scale": 0.6, "random_intercept": False})
    assert net.head.intercept is None and float(net.head.slopes.prior_scale) == pytest.approx(0.3)
    assert all(float(m.prior_scale) == pytest.approx(0.6) for n, m in net.named_modules() if n.endswith(".gamma"))


def test_bad_keywords_raise_before_any_deprecation_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the error, not the warning, is what the caller sees
        with pytest.raises(ValueError, match="slope_prior_scale"):
            _build(0, slope_prior_scale=0.2, random_effects=RandomEffectsSettings(slope_prior_scale=0.3))
        with pytest.raises(
            TypeError, match=r"MixedEffectsCNN got unexpected keyword argument\(s\) \['linear_slopes'\]"
        ):
            _build(0, linear_slopes=False)


@pytest.mark.parametrize("config", ["train.json", "inference.json"])
def test_bundle_network_uses_the_settings_object_and_loads_the_shipped_weights(config):
    parser = ConfigParser(json.loads((BUNDLE / "configs" / config).read_text()))
    network_def = parser.get("network_def")
    assert not {"slope_prior_scale", "intercept_prior_scale"} & set(network_def)
    assert network_def["random_effects"] == {"slope_prior_scale": 0.1, "intercept_prior_scale": 0.5}
    parser.update({"num_sites": 6})
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        net = parser.get_parsed_content("network_def")
    assert net.random_effects_settings == RandomEffectsSettings(slope_prior_scale=0.1, intercept_prior_scale=0.5)
    net.load_state_dict(torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True))  # strict
