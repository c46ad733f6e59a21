# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""``benchmarks.lmm_scale``: the sizes of the full and quick runs, and the wall-time cap of a fit's process."""

from __future__ import annotations

from benchmarks import lmm_scale


def test_full_run_has_both_target_sizes_and_quick_run_is_small():
    assert [lmm_scale.SIZES[s] for s in lmm_scale.FULL_SIZES] == [(100_000, 2_000), (1_000_000, 20_000)]
    assert all(lmm_scale.SIZES[s][0] < 100_000 for s in lmm_scale.QUICK_SIZES)


def test_simulation_has_the_requested_shape():
    x, g, y = lmm_scale.simulate(1_000, 20)
    assert x.shape == (1_000, 2) and g.shape == y.shape == (1_000,) and set(g) <= set(range(20))


def test_a_fit_over_its_cap_is_killed_and_reported_as_not_finished():
    out = lmm_scale._run_capped("statsmodels_ml", "10k", threads=1, cap=0.2)
    assert out["error"] == "did not finish in 0.2 s" and "seconds" not in out
