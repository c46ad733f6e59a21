# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The plumbing of ``benchmarks.federated_mri`` on a tiny cohort (2 seen sites, 1 unseen, 1 seed, 2 rounds)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("nvflare", reason="benchmarks.federated_mri needs nvflare (pip install monai-medl[fl])")

from benchmarks import federated_mri  # noqa: E402
from monai_medl.fl import LocalTrainingSettings, bundle_site_network  # noqa: E402
from monai_medl.fl.client import outgoing_params  # noqa: E402


def _tiny_config():
    cfg = federated_mri.default_config(quick=True)
    cfg["cohort"].update(num_subjects=64, sites=2, unseen_sites=1, prevalence=[0.4, 0.6], test_fraction=0.3)
    cfg.update(seeds=[0], rounds=2)
    cfg["training"].update(epochs=1)
    return cfg


def test_cohort_sites_keep_splits_and_unseen_sites_apart(tmp_path):
    torch.set_num_threads(1)
    d = federated_mri.cohort_sites(_tiny_config(), 0, tmp_path)
    assert [len(d[k]) for k in ("train", "test", "unseen")] == [2, 2, 1]
    assert [s.site_name for s in d["train"]] == [s.site_name for s in d["test"]]
    assert d["unseen"][0].site_name not in {s.site_name for s in d["train"]}
    for part in d.values():
        for site in part:
            assert tuple(site.features.shape[1:]) == (1, 16, 16, 16) and len(site.features) == len(site.labels)
    train_images = {e["image"] for k in (0, 1) for e in json.loads(d["train"][k].path.read_text())["training"]}
    test_images = {e["image"] for k in (0, 1) for e in json.loads(d["test"][k].path.read_text())["training"]}
    assert train_images and test_images and not train_images & test_images


def test_plan_is_written_before_the_first_fit_and_every_model_is_scored(tmp_path, monkeypatch):
    cfg, seen_plan = _tiny_config(), []
    run_seed = federated_mri.run_seed

    def spy(cfg_, seed, log=print):
        seen_plan.append(json.loads((tmp_path / "federated_mri.json").read_text()))
        return run_seed(cfg_, seed, log)

    monkeypatch.setattr(federated_mri, "run_seed", spy)
    result = federated_mri.run(quick=True, out_dir=tmp_path, cfg=cfg)
    assert seen_plan[0]["status"] == "running" and seen_plan[0]["plan"] == federated_mri.PLAN
    models = result["models"]
    assert set(models) == set(federated_mri.MODELS)
    for name, model in models.items():
        for split in ("seen", "unseen"):
            assert 0.0 <= model[split]["mean"] <= 1.0, (name, split)
    assert models["prevalence_only"]["seen"]["mean"] == models["prevalence_only"]["unseen"]["mean"] == 0.5
    me, conv = models["federated_me"]["extra"], models["federated_conventional"]["extra"]
    # what a site sends, rebuilt from fresh networks: the shared state (and for ME the posterior moments), no rows
    settings = LocalTrainingSettings(**cfg["training"])
    for extra, overrides in ((me, cfg["overrides"]), (conv, {**cfg["overrides"], **federated_mri.NO_RANDOM_EFFECTS})):
        sent = outgoing_params(bundle_site_network(federated_mri.BUNDLE, overrides), None, settings)
        assert extra["bytes_per_site_round"] == sum(v.numel() * v.element_size() for v in sent.values())
    assert me["bytes_per_site_round"] > conv["bytes_per_site_round"]  # the ME sites' moments travel too
    assert me["rounds_to_accuracy"] in (1.0, 2.0, 3.0) and "auroc_seen_round2_values" in me
    assert "paired_auroc_seen_minus_pooled_me" in me
    assert (tmp_path / "federated_mri.md").read_text().count("federated_conventional") >= 2
