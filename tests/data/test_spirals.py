# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import numpy as np
import pytest

from monai_medl.data.synthetic.spirals import make_spirals, spiral_points


def test_shapes_dtypes_and_ground_truth():
    d = make_spirals(num_clusters=5, points_per_cluster=200, seed=3)
    assert d.x.shape == (1000, 2) and d.x.dtype == np.float32
    assert d.y.shape == d.site.shape == (1000,) and d.y.dtype == d.site.dtype == np.int64
    assert d.num_clusters == 5 and d.radius.shape == (5,) and d.probe_columns == ()
    np.testing.assert_array_equal(np.bincount(d.site), [200] * 5)
    # unconfounded: every cluster is balanced
    np.testing.assert_allclose(d.prevalence, 0.5)
    datalist = d.to_datalist()
    assert len(datalist) == 1000 and set(datalist[0]) == {"image", "label", "site"}
    np.testing.assert_array_equal(datalist[7]["image"], d.x[7])


def test_deterministic_per_seed():
    a, b, c = make_spirals(seed=1), make_spirals(seed=1), make_spirals(seed=2)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.radius, b.radius)
    assert not np.allclose(a.radius, c.radius)


def test_radius_is_the_cluster_random_effect():
    d = make_spirals(num_clusters=10, points_per_cluster=1000, noise=0.0, seed=48)
    # radius ~ N(1, 0.3^2): a sample of 10 stays in a loose band around the prior
    assert 0.6 < d.radius.mean() < 1.4 and 0.1 < d.radius.std() < 0.6
    for k in range(10):
        r = np.linalg.norm(d.x[d.site == k], axis=1)
        # without noise the outermost point of each arm sits (almost) exactly on the cluster radius
        assert r.max() == pytest.approx(abs(d.radius[k]), rel=1e-4)


def test_two_arms_are_point_reflections():
    rng = np.random.default_rng(0)
    arm0 = spiral_points(rng, 500, 0, radius=1.0, noise=0.0)
    rng = np.random.default_rng(0)
    arm1 = spiral_points(rng, 500, 1, radius=1.0, noise=0.0)
    # same angles, phase pi apart: the second arm is the first one rotated by 180 degrees
    np.testing.assert_allclose(arm1, -arm0, atol=1e-12)
    # an Archimedean spiral: the polar angle is pi - theta and the radius is proportional to theta
    norm = np.linalg.norm(arm0, axis=1)
    theta = np.mod(np.pi - np.arctan2(arm0[:, 1], arm0[:, 0]), 2 * np.pi)
    outer = np.argmax(norm)
    assert np.deg2rad(350) < theta[outer] < 2 * np.pi
    off_centre = norm > 1e-6  # the polar angle of the centre point is undefined
    expected = np.mod(norm / norm[outer] * theta[outer], 2 * np.pi)
    np.testing.assert_allclose(expected[off_centre], theta[off_centre], atol=1e-9)


def test_confounded_variant():
    d = make_spirals(num_clusters=10, points_per_cluster=500, prevalence_sd=0.3, num_probes=2, seed=5)
    assert d.x.shape == (5000, 4) and d.probe_columns == (2, 3)
    assert d.prevalence.min() >= 0.1 - 1e-9 and d.prevalence.max() <= 0.9 + 1e-9
    assert d.prevalence.std() > 0.1  # the clusters really differ in prevalence
    np.testing.assert_array_equal(np.bincount(d.site), [500] * 10)
    for k in range(10):
        assert d.y[d.site == k].mean() == pytest.approx(d.prevalence[k])
    # probes encode the cluster's prevalence (mean p_k, s.d. 0.2) and nothing else ...
    cluster_means = np.array([d.x[d.site == k, 2:].mean() for k in range(10)])
    np.testing.assert_allclose(cluster_means, d.prevalence, atol=0.03)
    assert d.x[:, 2:].std(0) == pytest.approx(np.sqrt(0.2**2 + d.prevalence.var()), rel=0.15)
    # ... hence correlate with the label across clusters (the spurious association) but not within a cluster
    assert np.corrcoef(d.x[:, 2], d.y)[0, 1] > 0.15
    within = [np.corrcoef(d.x[d.site == k, 2], d.y[d.site == k])[0, 1] for k in range(10)]
    assert abs(np.mean(within)) < 0.05


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_clusters": 0},
        {"points_per_cluster": 1},
        {"noise": -0.1},
        {"num_probes": -1},
        {"degrees": 0},
    ],
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        make_spirals(**kwargs)


def test_bad_arm_label():
    with pytest.raises(ValueError, match="label"):
        spiral_points(np.random.default_rng(0), 10, 2, radius=1.0)
