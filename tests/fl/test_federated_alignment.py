# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Invariance without pooled features: federated class-conditional alignment, in process (the job's own code)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from monai_medl.fl import LocalTrainingSettings, SiteData, class_statistics, federate_in_process

pytest.importorskip("nvflare", reason="monai_medl.fl's aggregator needs nvflare (pip install monai-medl[fl])")

SPEC = {"in_features": 3, "out_channels": 1, "hidden": [4], "linear_slopes": False}


def _sites(n: int = 80, shifts=(-2.0, 0.0, 2.0)) -> list[SiteData]:
    """Binary labels read from feature 0; feature 1 carries a site offset unrelated to the label (a site shortcut)."""
    g = torch.Generator().manual_seed(0)
    sites = []
    for k, shift in enumerate(shifts):
        y = torch.randint(0, 2, (n,), generator=g).float()
        x = torch.randn(n, 3, generator=g)
        x[:, 0] += 2 * y - 1
        x[:, 1] += shift
        sites.append(SiteData(f"site-{k + 1}", Path("."), f"hosp{k}", x, y[:, None]))
    return sites


def _read_out(fed, sites):
    """Per site: last hidden features and fixed-effects logits of the site's model (global weights + its rows)."""
    out = []
    for k, data in enumerate(sites):
        with torch.no_grad():
            res = fed.site_model(k).forward_all(data.features, torch.ones(len(data.features), 1))
        out.append((res.features[-1], res.fixed))
    return out


def test_alignment_to_the_federations_statistics_removes_the_site_shift():
    torch.set_num_threads(1)
    sites = _sites()
    results = {}
    for weight in (0.0, 5.0):
        settings = LocalTrainingSettings(
            task="bce", epochs=30, batch_size=40, lr=0.02, align_weight=weight, label_classes=2
        )
        fed = federate_in_process(sites, SPEC, settings, rounds=3, seed=0)
        assert ("feature_statistics" in fed.meta) == (weight > 0)  # shared only when alignment is on
        read = _read_out(fed, sites)
        means = torch.stack(
            [class_statistics(h, d.labels, 2)["__feature_stats__.mean"] for (h, _), d in zip(read, sites)]
        )
        spread = float((means - means.mean(0)).pow(2).sum(-1).mean())  # between-site spread of class means
        features = torch.cat([h for h, _ in read]).numpy()
        site = np.repeat(np.arange(len(sites)), [len(d.labels) for d in sites])
        probe = cross_val_score(LogisticRegression(max_iter=1000), features, site, cv=5).mean()
        accuracy = float(np.mean([((f > 0).float() == d.labels).float().mean() for (_, f), d in zip(read, sites)]))
        results[weight] = (spread, probe, accuracy)
    (spread0, probe0, acc0), (spread1, probe1, acc1) = results[0.0], results[5.0]
    assert spread1 < 0.3 * spread0  # measured: 0.30 -> 0.033
    assert probe1 < probe0 - 0.1  # site probe accuracy (chance 1/3), measured 0.61 -> 0.44
    assert acc1 > 0.75 and acc1 >= acc0 - 0.05  # the label is still read (0.81 either way)
