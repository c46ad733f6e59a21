# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
import json

import pytest

from benchmarks import mri_few_shot as fs
from benchmarks.mri_few_shot_plot import curve, main, plot_curves

pytest.importorskip("matplotlib")


def _results():
    """A results dict shaped like the benchmark's JSON: two ks, every method, distinct values per entry."""
    cfg = {"arms": ["threshold"], "ks": [0, 4]}
    models = {}
    for n, key in enumerate(fs.model_order(cfg)):
        v = 0.5 + n / 100
        models[key] = {
            "unseen": {"mean": v, "ci95": [v - 0.01, v + 0.02]},
            "extra": {m: v + 1 for m in ("log_loss", "ece")}
            | {f"{m}_ci95": [v + 0.9, v + 1.1] for m in ("log_loss", "ece")},
        }
    return {"config": cfg, "models": models, "quick": True, "repeats": 3}


def test_curve_reads_the_unadapted_model_at_k0_and_the_method_after():
    results = _results()
    models = results["models"]
    ks, means, ci = curve(models, "threshold", "me_fit_new_cluster", "auroc", [0, 4])
    assert ks == [0, 4]
    assert means == [models["threshold/me_population/k0"]["unseen"]["mean"],
                     models["threshold/me_fit_new_cluster/k4"]["unseen"]["mean"]]  # fmt: skip
    assert ci[1] == tuple(models["threshold/me_fit_new_cluster/k4"]["unseen"]["ci95"])
    ks, means, _ = curve(models, "threshold", "conventional_bias", "log_loss", [0, 4, 8])  # k = 8 has no results
    assert ks == [0, 4]
    assert means[0] == models["threshold/conventional_unadapted/k0"]["extra"]["log_loss"]


def test_plot_writes_a_png(tmp_path):
    path = plot_curves(_results(), str(tmp_path / "curves.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_main_names_a_bad_results_file(tmp_path, capsys):
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"models": {}}))
    with pytest.raises(SystemExit, match="not a mri_few_shot results file"):
        main([str(bad)])
    with pytest.raises(SystemExit, match="cannot read the few-shot results"):
        main([str(tmp_path / "missing.json")])
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_results()))
    main([str(good)])
    assert (tmp_path / "good.png").exists() and "wrote" in capsys.readouterr().out
