# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Per-site and seen/unseen metrics: the computation, the cumulative SiteMetric, its evaluator handler, the z modes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator
from monai.transforms import Activationsd
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from monai_medl.engines import MixedEffectsPrepareBatch
from monai_medl.engines.unseen_sites import FewShotPrepareBatch, fit_unseen_sites
from monai_medl.handlers import SiteMetricHandler
from monai_medl.metrics import SiteMetric, compute_site_metrics, flatten_site_metrics, youden_threshold
from monai_medl.networks.layers import RandomEffectsSettings
from monai_medl.networks.nets import MixedEffectsCNN
from monai_medl.networks.nets.image_cluster_predictor import ImageClusterPredictor

K = 3


def test_compute_site_metrics_matches_sklearn_on_each_subset():
    rng = np.random.default_rng(0)
    n = 120
    y = rng.integers(0, 2, n)
    score = np.clip(0.3 * y + rng.random(n) * 0.7, 0, 1)
    sites = rng.integers(-1, K, n)  # -1 = unseen
    names = np.where(sites < 0, np.where(rng.random(n) < 0.5, "new_a", "new_b"), sites.astype(str))
    res = compute_site_metrics(y, score, sites, threshold=0.45, groups=names)
    seen = sites >= 0
    assert res["overall"]["auroc"] == pytest.approx(roc_auc_score(y, score))
    assert res["seen"]["auroc"] == pytest.approx(roc_auc_score(y[seen], score[seen]))
    assert res["unseen"]["auroc"] == pytest.approx(roc_auc_score(y[~seen], score[~seen]))
    bacc = balanced_accuracy_score(y[~seen], score[~seen] >= 0.45)
    assert res["unseen"]["balanced_accuracy"] == pytest.approx(bacc)
    assert set(res["per_site"]) == {"0", "1", "2", "new_a", "new_b"}
    m = names == "new_a"
    assert res["per_site"]["new_a"]["auroc"] == pytest.approx(roc_auc_score(y[m], score[m]))
    assert res["per_site"]["new_a"]["n"] == m.sum() and res["seen"]["n"] == seen.sum()


def test_multiclass_regression_and_undefined_values():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.3, 0.2]])
    res = compute_site_metrics([0, 1, 2, 1], probs, [0, 0, 1, 1], metrics=("auroc", "accuracy"))
    assert res["overall"]["accuracy"] == pytest.approx(0.75)
    assert res["overall"]["auroc"] == pytest.approx(roc_auc_score([0, 1, 2, 1], probs, multi_class="ovr"))
    assert math.isnan(res["unseen"]["accuracy"]) and res["unseen"]["n"] == 0  # no unseen items
    assert math.isnan(res["per_site"]["1"]["auroc"]) and res["per_site"]["1"]["accuracy"] == 0.5  # class 0 absent
    one_class = compute_site_metrics([1, 1, 0, 1], [0.9, 0.8, 0.1, 0.7], [0, 0, 1, 1])
    assert math.isnan(one_class["per_site"]["0"]["auroc"]) and one_class["per_site"]["1"]["auroc"] == 1.0
    reg = compute_site_metrics([1.0, 2.0, 3.0], [1.5, 2.0, 2.0], [0, -1, -1], metrics=("mse", "mae"))
    assert reg["unseen"]["mse"] == pytest.approx(0.5) and reg["seen"]["mae"] == pytest.approx(0.5)


def test_youden_threshold_separates_and_errors():
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.8)
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.2, 0.6, 0.9]) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="unknown metric"):
        compute_site_metrics([0, 1], [0.1, 0.9], [0, 0], metrics=("dice",))
    with pytest.raises(ValueError, match="one entry per item"):
        compute_site_metrics([0, 1], [0.1, 0.9], [0])
    with pytest.raises(ValueError, match="unknown metric"):
        SiteMetricHandler(metrics=("f2",))
    with pytest.raises(ValueError, match="unknown metric"):
        SiteMetric(metrics="auroc")  # a string, not a sequence of names


def test_site_metric_accumulates_batches_and_matches_sklearn_on_each_subset():
    y = np.array([0, 1, 0, 1, 1, 0, 0, 1, 1, 0])
    p = np.array([0.1, 0.8, 0.4, 0.35, 0.9, 0.6, 0.2, 0.7, 0.55, 0.3])
    sites = np.array(["a", "a", "a", "a", "b", "b", "b", "c", "c", "c"])  # "c" was not seen in training
    metric = SiteMetric(metrics=("auroc", "balanced_accuracy"), seen_sites=["a", "b"], threshold=0.5)
    for start in (0, 3, 7):  # three uneven batches: tensor, array, list of per-item tensors
        stop = {0: 3, 3: 7, 7: 10}[start]
        if start == 0:
            metric(torch.tensor(p[start:stop]), torch.tensor(y[start:stop]), sites=list(sites[start:stop]))
        elif start == 3:
            metric(p[start:stop, None], y[start:stop, None], sites=sites[start:stop])
        else:
            metric(
                [torch.tensor([v]) for v in p[start:stop]],
                [torch.tensor([v]) for v in y[start:stop]],
                sites=list(sites[start:stop]),
            )
    res = metric.aggregate()
    seen = sites != "c"
    # by hand: seen = a, b: positives {0.8, 0.35, 0.9}, negatives {0.1, 0.4, 0.6, 0.2}; 0.35 beats only 0.1 and 0.2,
    # 0.8 and 0.9 beat all four: (4 + 2 + 4) / 12
    assert res["seen"]["auroc"] == pytest.approx(10 / 12)
    assert res["seen"]["auroc"] == pytest.approx(roc_auc_score(y[seen], p[seen]))
    assert res["unseen"]["auroc"] == pytest.approx(1.0)  # c: positives {0.7, 0.55} over the negative 0.3
    assert res["overall"]["auroc"] == pytest.approx(roc_auc_score(y, p))
    assert res["per_site"]["b"]["auroc"] == pytest.approx(roc_auc_score(y[4:7], p[4:7]))
    assert res["seen"]["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y[seen], p[seen] >= 0.5))
    assert res["seen"]["n"] == 7 and res["unseen"]["n"] == 3 and sorted(res["per_site"]) == ["a", "b", "c"]
    assert res == compute_site_metrics(y, p, np.where(seen, 0, -1), threshold=0.5, groups=sites)
    flat = flatten_site_metrics(res, metric.metrics, prefix="val_")
    assert flat["val_seen_auroc"] == res["seen"]["auroc"] and flat["val_unseen_balanced_accuracy"] == 1.0
    assert flat["val_site_b_auroc"] == res["per_site"]["b"]["auroc"] and "val_auroc_seen" not in flat
    metric.reset()
    with pytest.raises(ValueError, match="no data"):
        metric.aggregate()


def test_site_metric_seen_from_indices_or_flags_and_bad_inputs():
    y, p = torch.tensor([0, 1, 0, 1]), torch.tensor([0.2, 0.9, 0.6, 0.7])
    by_index = SiteMetric(metrics=("auroc",))
    by_index(p, y, sites=torch.tensor([0, 0, -1, -1]))
    res = by_index.aggregate()
    assert res["seen"]["n"] == 2 and res["unseen"]["auroc"] == pytest.approx(1.0)
    assert set(res["per_site"]) == {"0", "-1"}
    by_flag = SiteMetric(metrics=("auroc",), seen_sites=["x"])  # the flags override seen_sites
    by_flag(p, y, sites=["x", "y", "x", "y"], seen=[False, True, True, False])
    assert by_flag.aggregate()["seen"]["auroc"] == pytest.approx(roc_auc_score([1, 0], [0.9, 0.6]))
    with pytest.raises(ValueError, match="not site indices"):
        SiteMetric()(p, y, sites=["x", "y", "x", "y"])  # names need seen_sites or seen flags
    with pytest.raises(ValueError, match="one per item"):
        SiteMetric()(p, y, sites=[0, 0, -1])
    with pytest.raises(ValueError, match="3 seen flags"):
        SiteMetric()(p, y, sites=[0, 0, -1, -1], seen=[True, True, False])


def _items(n: int, seed: int) -> list[dict]:
    """Seen sites 0..2 and unseen sites 'x', 'y' (index -1) with shifted intensities; 'x'/'y' have 85%/15% positives."""
    rng = np.random.default_rng(seed)
    raw = rng.choice(["0", "1", "2", "x", "y"], n)
    offset = {"0": -0.5, "1": 0.0, "2": 0.5, "x": 1.0, "y": -1.0}
    prevalence = {"x": 0.85, "y": 0.15}
    items = []
    for i in range(n):
        label = float(rng.random() < prevalence.get(str(raw[i]), 0.5))
        img = rng.normal(size=(1, 8, 8, 8)) * 0.5 + (label - 0.5) + offset[raw[i]]
        site = int(raw[i]) if raw[i].isdigit() else -1
        items.append(
            {
                "image": torch.tensor(img, dtype=torch.float32),
                "label": torch.tensor([label]),
                "site": site,
                "site_raw": str(raw[i]),
            }
        )
    return items


def _net():
    torch.manual_seed(0)
    settings = RandomEffectsSettings(intercept_prior_scale=1.0)
    net = MixedEffectsCNN(K, spatial_dims=3, tap_layers=[], probe_size=8, random_effects=settings)
    with torch.no_grad():
        net.head.intercept.loc.copy_(torch.tensor([[2.0], [-2.0], [0.5]]))
    return net.eval()


def _evaluate(net, items, prepare, **handler_kwargs):
    handler = SiteMetricHandler(site_name_key="site_raw", prefix="val_", **handler_kwargs)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(items, batch_size=7),
        network=net,
        prepare_batch=prepare,
        postprocessing=Activationsd(keys="pred", sigmoid=True),
        val_handlers=[handler],
    )
    evaluator.run()
    return evaluator.state.metrics, handler


def _by_hand(net, items, z_fn) -> dict:
    x = torch.stack([d["image"] for d in items])
    with torch.no_grad():
        prob = torch.sigmoid(net(x, z_fn(items))).numpy()[:, 0]
    y = np.array([float(d["label"]) for d in items])
    return compute_site_metrics(y, prob, [d["site"] for d in items], groups=[d["site_raw"] for d in items])


def _one_hot(items):
    return torch.stack([torch.eye(K)[d["site"]] if d["site"] >= 0 else torch.zeros(K) for d in items])


def test_handler_in_an_evaluator_reports_overall_seen_unseen_and_per_site():
    net, items = _net(), _items(60, 1)
    metrics, handler = _evaluate(net, items, MixedEffectsPrepareBatch(K))
    expected = _by_hand(net, items, _one_hot)
    for m in ("auroc", "balanced_accuracy"):
        assert metrics[f"val_{m}"] == pytest.approx(expected["overall"][m])
        assert metrics[f"val_seen_{m}"] == pytest.approx(expected["seen"][m])
        assert metrics[f"val_unseen_{m}"] == pytest.approx(expected["unseen"][m])
        for site in ("0", "1", "2", "x", "y"):
            assert metrics[f"val_site_{site}_{m}"] == pytest.approx(expected["per_site"][site][m])
    assert handler.results["unseen"]["n"] == sum(d["site"] < 0 for d in items)
    assert not any(k.endswith(("_seen", "_unseen")) for k in metrics)  # one convention: the split is a prefix


def test_handler_errors_name_the_missing_batch_key():
    net, items = _net(), _items(8, 3)
    for key, kwargs in (("site_raw", {}), ("centre", {"site_key": "centre"})):
        handler = SiteMetricHandler(**{"site_name_key": "site_raw", **kwargs})
        evaluator = SupervisedEvaluator(
            device=torch.device("cpu"),
            val_data_loader=DataLoader([{k: v for k, v in d.items() if k != "site_raw"} for d in items], batch_size=4)
            if key == "site_raw"
            else DataLoader(items, batch_size=4),
            network=net,
            prepare_batch=MixedEffectsPrepareBatch(K, mode="population"),
            postprocessing=Activationsd(keys="pred", sigmoid=True),
            val_handlers=[handler],
        )
        with pytest.raises(KeyError, match=f"no '{key}' key"):
            evaluator.run()


def test_unseen_site_modes_population_inferred_and_few_shot():
    net, items = _net(), _items(90, 2)
    unseen = [d for d in items if d["site"] < 0]
    mixed, _ = _evaluate(net, items, MixedEffectsPrepareBatch(K))
    population, _ = _evaluate(net, items, MixedEffectsPrepareBatch(K, mode="population"))
    # unseen sites get z = 0 in both modes; seen sites lose their random intercepts at population level
    assert mixed["val_unseen_auroc"] == pytest.approx(population["val_unseen_auroc"])
    zero = _by_hand(net, items, lambda its: torch.zeros(len(its), K))
    assert population["val_seen_balanced_accuracy"] == pytest.approx(zero["seen"]["balanced_accuracy"])
    assert mixed["val_seen_balanced_accuracy"] != pytest.approx(population["val_seen_balanced_accuracy"])

    torch.manual_seed(0)
    predictor = ImageClusterPredictor(K, spatial_dims=3, channels=(4, 8), strides=2).eval()
    inferred, _ = _evaluate(net, items, MixedEffectsPrepareBatch(K, z_predictor=predictor.predict_design))
    soft = _by_hand(
        net,
        items,
        lambda its: torch.stack(
            [torch.eye(K)[d["site"]] if d["site"] >= 0 else predictor.predict_design(d["image"][None])[0] for d in its]
        ),
    )
    assert inferred["val_unseen_auroc"] == pytest.approx(soft["unseen"]["auroc"])
    assert inferred["val_seen_auroc"] == pytest.approx(mixed["val_seen_auroc"])

    # few-shot: a handful of labelled scans per unseen site fit that site's random effects only
    support = [d for d in unseen if d["site_raw"] == "x"][:4] + [d for d in unseen if d["site_raw"] == "y"][:4]
    query = [d for d in unseen if not any(d is s for s in support)]
    frozen = {k: v.clone() for k, v in net.state_dict().items()}
    bce_population = _bce(net, query, torch.zeros(len(query), K))
    columns = fit_unseen_sites(net, support, group_key="site_raw", steps=50, lr=0.1)
    assert sorted(columns) == ["x", "y"] and sorted(columns.values()) == [K, K + 1] and net.num_clusters == K + 2
    state = net.state_dict()
    for key, before in frozen.items():  # every pre-existing value is unchanged, only new rows were fitted
        after = state[key]
        torch.testing.assert_close(after[: before.shape[0]] if after.shape != before.shape else after, before)
    new_intercepts = state["head.intercept.loc"][K:, 0]
    assert new_intercepts[columns["x"] - K] > 0.3 and new_intercepts[columns["y"] - K] < -0.3  # toward the base rates

    def few_shot_z(its):
        eye = torch.eye(K + 2)
        return torch.stack([eye[d["site"]] if d["site"] >= 0 else eye[columns[d["site_raw"]]] for d in its])

    few, _ = _evaluate(net, items, FewShotPrepareBatch(net.num_clusters, columns, group_key="site_raw"))
    expected = _by_hand(net, items, few_shot_z)
    assert few["val_seen_auroc"] == pytest.approx(mixed["val_seen_auroc"])
    for site in ("x", "y"):
        assert few[f"val_site_{site}_auroc"] == pytest.approx(expected["per_site"][site]["auroc"])
    # the fitted site effects generalise to that site's other scans: lower loss than the population prediction
    assert _bce(net, query, few_shot_z(query)) < bce_population - 0.05
    with pytest.raises(ValueError, match="site_columns must be columns of z"):
        FewShotPrepareBatch(K, {"x": K})


def _bce(net, items, z) -> float:
    x, y = torch.stack([d["image"] for d in items]), torch.stack([d["label"] for d in items])
    with torch.no_grad():
        return float(torch.nn.functional.binary_cross_entropy_with_logits(net(x, z), y))
