# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Early stopping of the estimators' MLP fixed effects: held-out rows per level, best parameters kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("pandas")

from monai_medl.estimators import MixedEffectsRegressor, train_elbo, validation_rows  # noqa: E402


def test_validation_rows_take_a_share_of_every_level_with_two_rows():
    groups = np.repeat([0, 1, 2, 3], [10, 1, 2, 5])
    rows = validation_rows(groups, 0.2, seed=0)
    assert np.array_equal(np.bincount(groups[rows], minlength=4), [2, 0, 1, 1])
    assert np.array_equal(rows, validation_rows(groups, 0.2, seed=0)) and np.all(np.diff(rows) > 0)
    assert not np.array_equal(rows, validation_rows(groups, 0.2, seed=1))
    # several factors: a group is one combination of levels
    pairs = np.stack([np.repeat([0, 1], 6), np.tile([0, 0, 0, 1, 1, 1], 2)], 1)
    assert len(validation_rows(pairs, 0.34, seed=0)) == 4
    with pytest.raises(ValueError, match="fraction"):
        validation_rows(groups, 1.0, seed=0)


def test_train_elbo_restores_the_parameters_where_the_monitor_was_lowest():
    w = torch.nn.Parameter(torch.zeros(1))
    info = train_elbo(
        lambda rows: (w - 3.0).square().sum(),
        [w],
        num_samples=1,
        optimizer="adam",
        max_iter=500,
        lr=0.05,
        monitor=lambda: float((w.detach() - 1.0).square().sum()),
        patience=5,
    )
    assert abs(float(w.detach()) - 1.0) < 0.06  # the objective's minimum is 3; the monitor's 1
    assert info["best_iteration"] + 5 == info["iterations"] < 500


def test_early_stopping_keeps_an_mlp_from_interpolating_a_small_training_set():
    rng = np.random.default_rng(0)
    group = np.repeat(np.arange(8), 15)
    x = rng.uniform(-1, 1, size=(120, 5))
    y = x[:, 0] + rng.normal(0, 1.0, 8)[group] + rng.normal(0, 1.0, 120)  # noise s.d. 1
    kwargs = {"fixed_effects": "mlp", "hidden": (32, 32), "max_iter": 300}
    plain = MixedEffectsRegressor(method="elbo", early_stopping=False, **kwargs).fit(x, y, groups=group)
    stopped = MixedEffectsRegressor(**kwargs).fit(x, y, groups=group)  # default: on for an MLP
    assert plain.residual_sd_ < 0.1  # the maximum-likelihood fit interpolates: noise s.d. towards 0
    assert 0.7 < stopped.residual_sd_ < 1.3
    info = stopped.fit_info_["early_stopping"]
    assert info["validation_rows"] == 24 and info["best_iteration"] < info["stopped_at"] < 300
    assert (
        "early_stopping" not in MixedEffectsRegressor(method="elbo", max_iter=20).fit(x, y, groups=group).fit_info_
    )  # linear
