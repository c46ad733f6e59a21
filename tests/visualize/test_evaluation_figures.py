# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Evaluation figures: written next to the CSV by write_evaluation, skipped without matplotlib, embedded by the card."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import monai_medl.visualize.evaluation_figures as figures_module
from monai_medl.bundle import write_evaluation
from monai_medl.bundle.model_card import record_evaluation, render_tables
from monai_medl.networks.nets import MixedEffectsMLP
from monai_medl.utils.summary import random_intercepts
from monai_medl.visualize.evaluation_figures import FIGURES, auroc_interval, write_evaluation_figures

PNG = b"\x89PNG\r\n\x1a\n"
SITES = ["a", "b", "c"]


def _rows(seed: int = 0, per_site: int = 40) -> list[dict]:
    """Both splits, two modes, seen sites a/b/c (prevalence 0.2/0.5/0.8 in training) and an unseen site."""
    rng = np.random.default_rng(seed)
    rows = []
    for mode in ("mixed", "population"):
        for split in ("train", "test"):
            for site, prevalence in (("a", 0.2), ("b", 0.5), ("c", 0.8), ("new", 0.5)):
                if split == "train" and site == "new":
                    continue
                for i in range(per_site):
                    y = float(i < prevalence * per_site)
                    p = float(np.clip(0.35 * y + 0.6 * rng.random(), 0, 1))
                    rows.append(
                        {
                            "mode": mode,
                            "split": split,
                            "site": site,
                            "seen": site != "new",
                            "label": y,
                            "probability": p,
                        }
                    )
    return rows


@pytest.fixture
def network():
    net = MixedEffectsMLP(4, 1, num_clusters=3)
    intercept = next(m for n, m in net.named_modules() if n.rsplit(".", 1)[-1] == "intercept")
    with torch.no_grad():
        intercept.loc.copy_(torch.tensor([[-1.0], [0.0], [1.2]]))  # rises with the sites' prevalences
    return net


def test_write_evaluation_writes_every_figure_next_to_the_csv(tmp_path, network):
    metrics = write_evaluation(_rows(), tmp_path, network=network, site_names=SITES)
    for name in FIGURES:
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == PNG, name
    listing = json.loads((tmp_path / "figures.json").read_text())
    assert [f["file"] for f in listing["figures"]] == [f"{n}.png" for n in FIGURES]
    # each interval's point estimate is the AUROC reported in metrics.csv for that mode and group
    for m in metrics:
        if m["group"] in ("seen", "unseen"):
            auc, low, high = listing["auroc_intervals"][m["mode"]][m["group"]]
            assert auc == pytest.approx(m["auroc"], abs=1e-12) and low < auc < high
    assert random_intercepts(network)[:, 0].tolist() == pytest.approx([-1.0, 0.0, 1.2])


def test_figures_off_and_without_network(tmp_path):
    write_evaluation(_rows(), tmp_path / "off", figures=False)
    assert not list((tmp_path / "off").glob("*.png")) and (tmp_path / "off" / "metrics.csv").is_file()
    paths = write_evaluation_figures(_rows(), tmp_path / "nonet", n_boot=20)
    assert "intercepts_vs_prevalence" not in paths and "roc_per_site" in paths


def test_missing_matplotlib_skips_with_one_clear_message(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(figures_module, "has_matplotlib", False)
    with caplog.at_level(logging.WARNING):
        metrics = write_evaluation(_rows(), tmp_path)
    assert metrics and (tmp_path / "metrics.csv").is_file() and not list(tmp_path.glob("*.png"))
    assert "matplotlib is not installed: evaluation figures are skipped" in caplog.text


def test_bootstrap_interval_is_seeded_covers_and_narrows_with_more_scans():
    rng = np.random.default_rng(1)
    y = rng.random(400) < 0.5
    p = np.clip(0.3 * y + 0.7 * rng.random(400), 0, 1)
    small, large = auroc_interval(y[:50], p[:50], seed=3), auroc_interval(y, p, seed=3)
    assert small == auroc_interval(y[:50], p[:50], seed=3)
    assert large[0] == pytest.approx(roc_auc_score(y, p)) and large[1] < large[0] < large[2]
    assert large[2] - large[1] < small[2] - small[1]
    assert all(np.isnan(auroc_interval([1, 1], [0.2, 0.3])))


def test_model_card_embeds_the_recorded_figures(tmp_path, network):
    root = tmp_path / "bundle"
    (root / "models").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "models" / "model.pt").write_bytes(b"weights")
    (root / "models" / "manifest.json").write_text(json.dumps({"epochs": 3, "seed": 0}))
    write_evaluation(_rows(), root / "eval", network=network, site_names=SITES)
    record = record_evaluation(root, {"both": "eval/metrics.json"})
    assert [f["file"] for f in record["figures"]] == [f"figures/{n}.png" for n in FIGURES]
    for fig in record["figures"]:
        assert (root / "docs" / fig["file"]).read_bytes() == (root / "eval" / fig["file"].split("/")[1]).read_bytes()
    card = render_tables(record)
    for name, caption in FIGURES.items():
        assert f"![{caption}](figures/{name}.png)" in card
    del record["figures"]
    assert "![" not in render_tables(record)  # a record without figures renders the tables only, as before


@pytest.mark.parametrize("bundle", ["mri_me_cnn_classification", "mri_multimodal_me_cnn_classification"])
def test_classification_cards_show_the_recorded_figures_of_the_shipped_model(bundle):
    from pathlib import Path

    from monai_medl.bundle.artifacts import file_sha256

    docs = Path(__file__).resolve().parents[2] / "bundles" / bundle / "docs"
    record = json.loads((docs / "evaluation.json").read_text())
    card = (docs / "README.md").read_text()
    assert [f["file"] for f in record["figures"]] == [f"figures/{n}.png" for n in FIGURES]
    for fig in record["figures"]:
        assert file_sha256(str(docs / fig["file"])) == fig["sha256"], fig["file"]
        assert f"![{fig['caption']}]({fig['file']})" in card
