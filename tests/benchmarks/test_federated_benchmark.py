# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""A tiny seed of ``benchmarks.federated`` (in process; the simulator run is covered by tests/fl)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("nvflare", reason="benchmarks.federated needs nvflare (pip install monai-medl[fl])")

from benchmarks import federated  # noqa: E402


def test_split_keeps_unseen_sites_whole():
    d = federated.simulate(federated.default_config()["data"], seed=3)
    tr, te, un = d["train"], d["seen_test"], d["unseen"]
    assert len(np.intersect1d(tr, te)) == len(np.intersect1d(tr, un)) == len(np.intersect1d(te, un)) == 0
    assert len(tr) + len(te) + len(un) == len(d["y"])
    assert set(d["site"][un]) == {6, 7} and set(d["site"][tr]) == set(d["site"][te]) == set(range(6))


def test_a_tiny_seed_scores_every_model():
    cfg = federated.default_config(quick=True)
    cfg["data"].update(num_sites=5, unseen_sites=1, items_per_site=[40, 50], intercept_sd=2.0)
    cfg.update(rounds=3, few_shot_steps=100)
    row = federated.run_seed(cfg, seed=0, log=lambda _: None)
    assert set(row) == set(federated.MODELS)
    me, conv, pooled = row["federated_me"], row["federated_conventional"], row["pooled_me"]
    # site intercepts of s.d. 2 against noise 1: without them the seen error is far larger
    assert me["rmse_seen"] < 0.8 * conv["rmse_seen"]
    assert me["rmse_seen"] == pytest.approx(pooled["rmse_seen"], rel=0.1)
    assert 0.7 < me["variance_ratio_to_pooled"] < 1.3
    assert row["federated_me_plain_em"]["variance_ratio_to_pooled"] > me["variance_ratio_to_pooled"]  # uncentred
    assert me["rmse_unseen_few_shot"] < me["rmse_unseen"]  # the new site's own intercept from 5 items
    assert me["bytes_per_site_round"] > conv["bytes_per_site_round"]  # the moments travel too
    assert [f"rmse_seen_round{r}" in me for r in (1, 2, 3)] == [True] * 3
    assert conv["reached"] == 0.0 and conv["rounds_to_accuracy"] == 4.0  # censored: rounds + 1


def test_rounds_to_accuracy_is_the_first_round_at_the_target():
    assert federated.rounds_to([1.5, 1.2, 1.1, 1.15], 1.2) == (2.0, 1.0)
    assert federated.rounds_to([1.5, 1.4], 1.2) == (3.0, 0.0)
