# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Bundle helpers: z-predictor handler, site-aware datalists, per-site evaluation rows and metrics."""

from __future__ import annotations

import json
import logging
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.transforms import Activationsd
from torch import nn

from monai_medl.bundle import (
    ScalarsFromOutput,
    SitePredictionCollector,
    SoftDesign,
    evaluate_modes,
    fit_intensity_stats,
    inference_inputs,
    prepare_site_data,
    random_effects_param_groups,
    site_metrics,
    write_predictions,
)
from monai_medl.engines import MixedEffectsPrepareBatch
from monai_medl.handlers import ClusterPredictorHandler
from monai_medl.losses import MixedEffectsLoss
from monai_medl.networks.nets import MixedEffectsMLP
from monai_medl.transforms import SiteVocabulary


def _site_data(n=240, sites=3, seed=0):
    rng = np.random.default_rng(seed)
    site = rng.integers(0, sites, n)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    x[:, 1:] += 2.0 * np.eye(sites, 3)[site]  # the site is decodable from features 1..3
    y = (x[:, 0] > 0).astype(np.float32)
    return [{"image": x[i], "label": y[i : i + 1], "site": int(site[i])} for i in range(n)]


def _trainer(with_handler: bool, epochs: int = 1):
    torch.manual_seed(0)
    net = MixedEffectsMLP(in_features=4, out_channels=1, num_clusters=3, hidden=(8,))
    predictor = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    handler = ClusterPredictorHandler(predictor, torch.optim.Adam(predictor.parameters(), 1e-2))
    opt = torch.optim.SGD(net.parameters(), 0.1)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=DataLoader(_site_data(), batch_size=40, shuffle=False),
        network=net,
        optimizer=opt,
        loss_function=MixedEffectsLoss(task="bce"),
        prepare_batch=MixedEffectsPrepareBatch(num_clusters=3),
        train_handlers=[handler] if with_handler else [],
    )
    return trainer, net, predictor, handler


def test_cluster_predictor_handler_learns_the_site_without_touching_the_main_update():
    trainer, net, predictor, handler = _trainer(True, epochs=8)
    outputs = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(e.state.output[0]["site_acc"]))
    trainer.run()
    assert np.mean(outputs[-6:]) > 0.85  # the site is easy to decode from the inputs
    assert handler.last_accuracy == outputs[-1]
    design = SoftDesign(predictor)(torch.as_tensor(np.stack([d["image"] for d in _site_data(seed=1)[:20]])))
    assert predictor.training and design.shape == (20, 3)  # evaluated in eval mode, its mode restored
    torch.testing.assert_close(design.sum(1), torch.ones(20))
    # the main network's trajectory is exactly the one without the handler
    with_h, without_h = _trainer(True)[:2], _trainer(False)[:2]
    for trainer, _ in (with_h, without_h):
        torch.manual_seed(1)  # the random-effects samples of both runs come from the same stream
        trainer.run()
    for a, b in zip(with_h[1].parameters(), without_h[1].parameters()):
        torch.testing.assert_close(a, b)


def test_cluster_predictor_handler_errors_and_unseen_marker():
    predictor = nn.Linear(4, 3)
    handler = ClusterPredictorHandler(predictor, torch.optim.SGD(predictor.parameters(), 0.1))
    before = predictor.weight.clone()
    handler.step(torch.randn(5, 4), torch.full((5,), -1))  # only unseen-site items: no step
    torch.testing.assert_close(predictor.weight, before)
    with pytest.raises(ValueError, match="site indices for a batch"):
        handler.step(torch.randn(5, 4), torch.zeros(4))


def _rows(mode, split, site, seen, labels, probs):
    return [
        {"mode": mode, "split": split, "site": site, "seen": seen, "label": float(y), "probability": float(p)}
        for y, p in zip(labels, probs)
    ]


def test_site_metrics_threshold_from_training_and_groups():
    train = _rows("population", "train", "a", True, [0, 0, 1, 1], [0.1, 0.2, 0.6, 0.7])  # Youden threshold 0.6
    test = _rows("population", "test", "a", True, [0, 1, 1], [0.3, 0.65, 0.9])
    test += _rows("population", "test", "b", True, [1, 1], [0.55, 0.8])  # one class: AUROC undefined
    test += _rows("population", "test", "new", False, [0, 1, 0, 1], [0.7, 0.8, 0.1, 0.5])
    metrics = site_metrics(train + test)
    by = {(m["group"], m["site"]): m for m in metrics}
    assert [m["threshold"] for m in metrics] == pytest.approx([0.6] * len(metrics))
    assert by[("overall", "")]["n"] == 9 and by[("seen", "")]["n"] == 5 and by[("unseen", "")]["n"] == 4
    assert by[("site", "a")]["auroc"] == 1.0 and by[("site", "a")]["balanced_accuracy"] == 1.0
    assert math.isnan(by[("site", "b")]["auroc"])
    assert by[("site", "b")]["n_positive"] == 2
    assert by[("unseen", "")]["auroc"] == pytest.approx(0.75)
    assert by[("unseen", "")]["balanced_accuracy"] == pytest.approx(0.5)  # 0.7 >= 0.6 is a false positive, 0.5 a miss
    with pytest.raises(ValueError, match="both classes"):
        site_metrics(test)


class _SiteShift(nn.Module):
    """``logit = x + z @ [1, 2]``: the site effect shows in the prediction."""

    def forward(self, x, z):
        return x + z @ torch.tensor([[1.0], [2.0]])


def _collector_run(design_key, modes):
    items = [
        {"image": torch.tensor([v]), "label": torch.tensor([float(v > 0)]), "site": s, "site_name": n, "split": "test"}
        for v, s, n in ((-1.0, 0, "a"), (0.5, 1, "b"), (0.2, -1, "new"), (-0.3, -1, "new"))
    ]
    collector = SitePredictionCollector()
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(items, batch_size=3),
        network=_SiteShift(),
        prepare_batch=MixedEffectsPrepareBatch(
            2, design_key=design_key, z_predictor=lambda x: torch.full((len(x), 2), 0.5)
        ),
        postprocessing=Activationsd(keys="pred", sigmoid=True),
        val_handlers=[collector],
    )
    return evaluate_modes(evaluator, modes, collector)


def test_prediction_collector_reads_mode_and_z_from_the_batch():
    rows = _collector_run("z", ["mixed", "population", "inferred", "randomized"])
    by = {(r["mode"], r["site"], r["probability"]): r for r in rows}
    assert [r["mode"] for r in rows] == ["mixed"] * 4 + ["population"] * 4 + ["inferred"] * 4 + ["randomized"] * 4
    assert [r["z"] for r in rows[:4]] == ["one-hot:a", "one-hot:b", "soft:z-predictor", "soft:z-predictor"]
    assert {r["z"] for r in rows[4:8]} == {"zero"} and {r["z"] for r in rows[8:12]} == {"soft:z-predictor"}
    assert {r["z"] for r in rows[12:]} == {"one-hot:random"}
    # the probability is the network's on the z each scan got: site b (+2) in mixed mode, nothing at population level
    assert rows[1]["probability"] == pytest.approx(torch.sigmoid(torch.tensor(2.5)).item())
    assert rows[5]["probability"] == pytest.approx(torch.sigmoid(torch.tensor(0.5)).item())
    assert rows[2]["probability"] == pytest.approx(torch.sigmoid(torch.tensor(0.2 + 1.5)).item())  # soft z (0.5, 0.5)
    assert len(by) == 16 and all(r["split"] == "test" and r["label"] in (0.0, 1.0) for r in rows)
    with pytest.raises(KeyError, match="design_key='z'"):
        _collector_run(None, ["population"])  # the prepare batch did not record z: the error says how to fix it


def test_write_predictions_and_scalars(tmp_path):
    rows = _rows("mixed", "test", "a", True, [0, 1], [0.2, 0.9])
    paths = write_predictions(rows, tmp_path, metrics=[{"mode": "mixed", "auroc": math.nan}])
    assert (tmp_path / "predictions.csv").read_text().splitlines()[0].startswith("mode,z,split,image,site")
    assert json.loads((tmp_path / "metrics.json").read_text())[0]["auroc"] is None
    assert set(paths) == {"predictions", "metrics_csv", "metrics_json"}
    out = [{"loss": torch.tensor(0.5), "adv_acc": 0.25, "other": "x"}]
    assert ScalarsFromOutput(["loss", "adv_acc", "missing"])(out) == {"loss": 0.5, "adv_acc": 0.25}


def _nifti(path):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(path))


def test_inference_inputs_from_folder_and_datalist_warn_about_unseen_sites(tmp_path, caplog):
    vocab = SiteVocabulary(["a", "b"])
    folder = tmp_path / "scans"
    (folder / "sub").mkdir(parents=True)
    _nifti(folder / "x.nii.gz")
    _nifti(folder / "sub" / "y.nii")
    with caplog.at_level(logging.WARNING):
        items = inference_inputs(folder, vocab, unseen_mode="population").entries
    assert [i["site"] for i in items] == ["unknown", "unknown"] and len(items) == 2
    assert "'unknown' (2 scans)" in caplog.text and "mode 'population'" in caplog.text
    caplog.clear()
    datalist = tmp_path / "list.json"
    datalist.write_text(json.dumps({"test": [{"image": "scans/x.nii.gz", "site": "a"}, {"image": "scans/x.nii.gz"}]}))
    with caplog.at_level(logging.WARNING):
        items = inference_inputs(datalist, vocab, site="c").entries
    assert [i["site"] for i in items] == ["a", "c"] and items[0]["image"] == str(folder / "x.nii.gz")
    assert "'c' (1 scans)" in caplog.text and "mode 'inferred'" in caplog.text
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no NIfTI"):
        inference_inputs(tmp_path / "empty", vocab)
    with pytest.raises(ValueError, match="unseen_mode"):
        inference_inputs(folder, vocab, unseen_mode="mixed")


def test_prepare_site_data_fits_on_training_only_and_errors(tmp_path):
    missing = tmp_path / "none.json"
    with pytest.raises(FileNotFoundError, match="enable cohort generation"):
        prepare_site_data(missing, tmp_path / "vocab.json")
    calls = []

    def generate():
        for name in "abcd":
            _nifti(tmp_path / f"{name}.nii")
        data = {
            "training": [{"image": "a.nii", "label": 0, "site": "s1"}, {"image": "b.nii", "label": 1, "site": "s2"}],
            "validation": [{"image": "c.nii", "label": 1, "site": "s1"}],
            "test": [{"image": "d.nii", "label": 0, "site": "s9"}],
        }
        missing.write_text(json.dumps(data))
        calls.append(1)

    fitted = []
    data = prepare_site_data(missing, tmp_path / "vocab.json", generate=generate, fitters=[fitted.append])
    assert calls == [1] and data.num_sites == 2 and data.vocabulary.sites == ("s1", "s2")
    assert [e["split"] for e in data.evaluation] == ["train", "train", "test"]
    assert [e["site"] for e in fitted[0]] == ["s1", "s2"]  # fitters see the training entries only
    again = prepare_site_data(missing, tmp_path / "vocab.json", fit=False, generate=generate)
    assert calls == [1] and again.vocabulary == data.vocabulary
    with pytest.raises(FileNotFoundError, match="written by training"):
        prepare_site_data(missing, tmp_path / "other.json", fit=False)


def test_random_effects_param_groups_split_the_parameters():
    net = MixedEffectsMLP(in_features=4, out_channels=1, num_clusters=3, hidden=(8,))
    groups = random_effects_param_groups(net, 0.05)
    fixed, random = groups
    assert random["lr"] == 0.05 and "lr" not in fixed
    names = {id(p): n for n, p in net.named_parameters()}
    assert sorted(names[id(p)] for p in random["params"]) == sorted(
        n
        for n in names.values()
        if n.split(".")[-1] in ("loc", "rho")  # every RandomEffects layer, nothing else
    )
    assert len(fixed["params"]) + len(random["params"]) == len(list(net.parameters()))
    opt = torch.optim.Adam(groups, lr=1e-3)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 0.05]
    assert len(random_effects_param_groups(nn.Linear(2, 1))) == 1  # no random effects: one group


def test_site_state_is_fitted_on_the_training_split_only(tmp_path):
    """Validation and test entries carry site names that training lacks, so any leakage of them into the
    vocabulary or the intensity statistics would show up as an extra site."""
    sections = {"training": [], "validation": [], "test": []}
    for i, (section, site) in enumerate(
        [("training", "tr_a")] * 3 + [("training", "tr_b")] * 3 + [("validation", "val_c")] * 2 + [("test", "te_d")] * 2
    ):
        path = tmp_path / f"s{i}.nii.gz"
        value = 1000.0 if section != "training" else 10.0  # leaked scans would also shift the statistics
        nib.save(nib.Nifti1Image(np.full((4, 4, 4), value + i, np.float32), np.eye(4)), str(path))
        sections[section].append({"image": path.name, "label": i % 2, "site": site})
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps(sections))
    stats_file = tmp_path / "stats.json"
    data = prepare_site_data(
        datalist,
        tmp_path / "vocab.json",
        fitters=[lambda train: fit_intensity_stats(train, stats_file)],
    )
    assert data.vocabulary.sites == ("tr_a", "tr_b")
    stats = json.loads(stats_file.read_text())["stats"]["image"]
    assert set(stats) - {"__pooled__"} == {"tr_a", "tr_b"}
    assert max(s["mean"] for s in stats.values()) < 100.0  # no validation/test intensities in any statistic
    assert {e["site"] for e in data.validation + data.test} == {"val_c", "te_d"}
