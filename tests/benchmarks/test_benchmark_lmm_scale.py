# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""``benchmarks.lmm_scale``: the sizes of the full and quick runs, and the wall-time cap of a fit's process."""

from __future__ import annotations

import pytest

from benchmarks import lmm_scale


def test_full_run_has_every_target_size_and_quick_run_is_small():
    assert [lmm_scale.SIZES[s] for s in lmm_scale.FULL_SIZES] == [
        (10_000, 200),
        (100_000, 2_000),
        (1_000_000, 20_000),
        (1_000_000, (10_000, 1_000)),
    ]
    assert all(lmm_scale.SIZES[s][0] < 100_000 for s in lmm_scale.QUICK_SIZES)
    assert set(lmm_scale.FITTERS) == {"me", "me_exact", "statsmodels_ml", "gpboost"}


def test_simulation_has_the_requested_shape():
    x, g, y = lmm_scale.simulate(1_000, 20)
    assert x.shape == (1_000, 2) and g.shape == y.shape == (1_000,) and set(g) <= set(range(20))
    x, g, y = lmm_scale.simulate(1_000, (20, 5))
    assert g.shape == (1_000, 2) and g[:, 0].max() < 20 and g[:, 1].max() < 5 and y.shape == (1_000,)


def test_statsmodels_refuses_a_crossed_design_too_large_for_its_dense_matrices():
    x, g, y = lmm_scale.simulate(1_000_000, (10_000, 1_000))
    with pytest.raises(MemoryError, match="not run: its dense variance-component design"):
        lmm_scale._fit_statsmodels(x, g, y, threads=1)


def test_a_fit_over_its_cap_is_killed_and_reported_as_not_finished():
    out = lmm_scale._run_capped("statsmodels_ml", "10k", threads=1, cap=0.2)
    assert out["error"] == "did not finish in 0.2 s" and "seconds" not in out
