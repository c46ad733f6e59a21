# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""A tiny run of ``benchmarks.mri`` (SupervisedTrainer path, every model, two folds): contract shape, the plan and
its paired comparisons computed from the per-fold values; the harmonisation baselines use training scans (ComBat)
and each site's own scans (site normalisation) only; the power analysis and the full run's design agree."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from benchmarks import mri, mri_power
from benchmarks._combat import ComBat
from monai_medl.data.synthetic.mri_cohort import site_sizes


def test_tiny_run_writes_contract_json_with_planned_comparisons(tmp_path):
    cfg = mri.default_config(quick=True)
    cohort = {**cfg["cohort"], "num_subjects": 96, "extra_unseen_subjects": 20}
    cfg.update(cohort=cohort, repeats=2, epochs=1, z_predictor_epochs=1)
    lines: list[str] = []
    results = mri.run(quick=True, out_dir=tmp_path, config=cfg, cohort_dir=str(tmp_path / "cohort"), log=lines.append)
    on_disk = json.loads((tmp_path / "mri.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert on_disk["plan"] == json.loads(json.dumps(mri.make_plan(cfg))) and on_disk["env"]["seeds"] == [0, 1]
    assert on_disk["metric"] == "auroc" and list(on_disk["models"]) == list(mri.MODELS)
    assert on_disk["config"]["cohort"]["seed"] == 2024 and on_disk["config"]["cohort"]["num_subjects"] == 96
    # every network of the model table is trained once per repeat
    trainings = {t for m in mri.MODELS for t in mri.TRAININGS[m]}
    assert sum("trained in" in line for line in lines) == 2 * len(trainings)
    assert mri.training_epochs(cfg, mri.MODELS) == len(trainings) - 1 + cfg["z_predictor_epochs"]
    models = on_disk["models"]
    for entry in models.values():
        assert len(entry["seen"]["values"]) == 2 and len(entry["unseen"]["values"]) == 2
        assert np.isfinite(entry["seen"]["values"] + entry["unseen"]["values"]).all()
        assert {"seen_balanced_accuracy", "unseen_balanced_accuracy"} <= set(entry["extra"])
    for name in ("combat_logistic", "conventional_site_normalised"):
        assert 0 <= models[name]["extra"]["site_probe_accuracy"] <= 1
        assert models[name]["unseen"]["values"] != models["traditional"]["unseen"]["values"]
    # the site-normalised CNN differs from the conventional one only in its input
    assert models["conventional_site_normalised"]["seen"]["values"] != models["conventional"]["seen"]["values"]
    me = models["me"]["extra"]
    assert {c.reference for c in mri.COMPARISONS} >= {"combat_logistic", "conventional_site_normalised"}
    for comparison in mri.COMPARISONS:
        split = "unseen" if comparison.metric == "unseen_auroc" else "seen"
        expected = np.subtract(models["me"][split]["values"], models[comparison.reference][split]["values"])
        np.testing.assert_allclose(me[f"{comparison.name}_values"], expected, atol=1e-12)
        assert me[comparison.name] == pytest.approx(expected.mean())
        assert me[f"{comparison.name}_wins"] == int((expected > 0).sum())
    assert {"site_probe_accuracy", "intercept_vs_true_prevalence_r", "seen_population_auroc"} <= set(me)
    plan = on_disk["plan"]
    assert "me - combat_logistic, unseen-site AUROC, paired per repeat" in plan["primary_comparisons"]
    assert "me - conventional_site_normalised, unseen-site AUROC, paired per repeat" in plan["primary_comparisons"]
    sizes = site_sizes(**cohort)
    assert plan["power"]["repeats"] == 2 and plan["power"]["unseen_scans"] == sizes["site_g"] + sizes["site_h"]
    assert plan["power"]["minimum_detectable_effect"] > 0
    md = (tmp_path / "mri.md").read_text()
    assert "| me - conventional: unseen_auroc (higher wins) |" in md
    assert "| me - combat_logistic: unseen_auroc (higher wins) |" in md
    header = next(line for line in md.splitlines() if line.startswith("| model |"))
    assert "_values" not in header and "paired_" not in header


def _sites_and_features(rng, per_site=20, features=6):
    """Features with a per-site shift and scale (sites a-d seen, g-h unseen) and a label effect on feature 0."""
    sites = np.repeat(list("abcdgh"), per_site)
    labels = rng.integers(0, 2, len(sites)).astype(float)
    shift = {s: rng.normal(0, 2, features) for s in "abcdgh"}
    scale = {s: rng.uniform(0.5, 2.0, features) for s in "abcdgh"}
    x = np.stack([shift[s] + scale[s] * rng.normal(size=features) for s in sites])
    x[:, 0] += 1.5 * labels
    return x, sites, labels


def test_combat_is_fitted_on_training_scans_only_and_unseen_sites_on_their_own_scans():
    rng = np.random.default_rng(0)
    x, sites, labels = _sites_and_features(rng)
    seen = np.isin(sites, list("abcd"))
    train = np.flatnonzero(seen)[::2]  # half of every seen site's scans train; the rest are the seen test fold
    seen_test = np.setdiff1d(np.flatnonzero(seen), train)
    h, combat = mri.combat_harmonised(x, sites, labels, train)
    assert combat.estimates["sites"] == list("abcd")

    # changing the test scans (seen test fold and both unseen sites) and their labels does not change the fit
    y = x.copy()
    y[~np.isin(np.arange(len(x)), train)] = rng.normal(50, 30, y[~np.isin(np.arange(len(x)), train)].shape)
    flipped = labels.copy()
    flipped[~np.isin(np.arange(len(x)), train)] = 1 - flipped[~np.isin(np.arange(len(x)), train)]
    h2, combat2 = mri.combat_harmonised(y, sites, flipped, train)
    for key in ("center", "scale", "gamma", "delta"):
        np.testing.assert_array_equal(combat.estimates[key], combat2.estimates[key])
    np.testing.assert_array_equal(h[train], h2[train])

    # unseen-site data alone changed: every seen-site scan (training and test fold) is harmonised as before
    z = x.copy()
    z[~seen] = rng.normal(-40, 10, z[~seen].shape)
    np.testing.assert_array_equal(mri.combat_harmonised(z, sites, labels, train)[0][seen], h[seen])

    # each unseen site's parameters come from its own scans: changing site h leaves site g as it was
    w = x.copy()
    w[sites == "h"] *= 10
    hw = mri.combat_harmonised(w, sites, labels, train)[0]
    np.testing.assert_allclose(hw[sites == "g"], h[sites == "g"])
    # and an unseen site's own shift is removed: its harmonised mean is near the training scans' mean
    far = x.copy()
    far[sites == "g"] += 25.0
    hf = mri.combat_harmonised(far, sites, labels, train)[0]
    assert np.abs(hf[sites == "g"].mean(0) - h[train].mean(0)).max() < 1.5
    # the seen test fold uses the training sites' fitted parameters (not re-estimated from the test scans)
    np.testing.assert_allclose(h[seen_test], combat.transform(x[seen_test], sites[seen_test]))
    # the label is protected: its effect survives harmonisation in the training scans
    effect = h[train][labels[train] == 1, 0].mean() - h[train][labels[train] == 0, 0].mean()
    assert effect > 0.75


def test_combat_rejects_bad_input():
    rng = np.random.default_rng(1)
    x, sites, labels = _sites_and_features(rng, per_site=4)
    with pytest.raises(ValueError, match="protected \\['label'\\]"):
        ComBat(protect=("label",)).fit(x, sites, {})
    with pytest.raises(ValueError, match="at least 2 sites"):
        ComBat().fit(x[:4], sites[:4])
    combat = ComBat().fit(x[:16], sites[:16])
    with pytest.raises(ValueError, match="unseen site 'h' has 1 scan"):
        combat.transform(x[-1:], sites[-1:])


def test_site_normalisation_uses_each_sites_own_scans_only():
    rng = np.random.default_rng(2)
    sites = [str(s) for s in np.repeat(list("abgh"), 6)]
    gain = {"a": 1.0, "b": 3.0, "g": 0.5, "h": 7.0}
    raw = np.stack([gain[s] * rng.uniform(50, 150, (1, 6, 6, 6)) for s in sites]).astype(np.float32)
    raw[:, :, :2] = 0.0  # background
    unseen = [i for i, s in enumerate(sites) if s in "gh"]
    train = [i for i, s in enumerate(sites) if s in "ab" and i % 6 < 4]  # 4 training scans per seen site
    test = [i for i, s in enumerate(sites) if s in "ab" and i % 6 >= 4]
    reference = train + unseen
    out = mri.site_normalised_images(raw, sites, reference)
    for site in "abgh":  # each site's reference brain voxels are z-scored
        ref = [i for i in reference if sites[i] == site]
        brain = out[ref][raw[ref] != 0]
        assert abs(brain.mean()) < 1e-4 and abs(brain.std() - 1) < 1e-4
    assert (out[raw == 0] == 0).all()
    # a seen-site test scan does not enter its site's statistics: changing it changes only itself
    changed = raw.copy()
    changed[test[0]] *= 5
    out2 = mri.site_normalised_images(changed, sites, reference)
    others = [i for i in range(len(sites)) if i != test[0]]
    np.testing.assert_array_equal(out2[others], out[others])
    brain = raw[test[0]] != 0  # normalised with its site's training statistics: (5 x - c) / s = 5 (x - c) / s + 4 c / s
    offset = out2[test[0]][brain] - 5 * out[test[0]][brain]
    assert offset.std() < 1e-4 and abs(offset.mean()) > 0.1
    # an unseen site's statistics come from its own scans only
    louder = raw.copy()
    louder[[i for i in unseen if sites[i] == "h"]] *= 10
    out3 = mri.site_normalised_images(louder, sites, reference)
    keep = [i for i, s in enumerate(sites) if s != "h"]
    np.testing.assert_array_equal(out3[keep], out[keep])
    site_h = [i for i in unseen if sites[i] == "h"]
    np.testing.assert_allclose(out3[site_h], out[site_h], rtol=1e-5, atol=1e-5)  # its own gain is normalised away
    with pytest.raises(ValueError, match="site 'g' has no intensity statistics"):
        mri.site_normalised_images(raw, sites, train)


def test_power_functions_agree_with_statsmodels():
    from statsmodels.stats.power import TTestPower

    for diff, sd, n in ((0.02, 0.03, 15), (0.05, 0.04, 5), (0.01, 0.02, 30)):
        expected = TTestPower().power(effect_size=diff / sd, nobs=n, alpha=0.05, alternative="two-sided")
        assert mri_power.paired_t_power(diff, sd, n) == pytest.approx(expected, abs=1e-6)
        mde = mri_power.minimum_detectable_effect(sd, n)
        assert mri_power.paired_t_power(mde, sd, n) == pytest.approx(0.8, abs=1e-6)
        need = mri_power.required_repeats(diff, sd)
        assert mri_power.paired_t_power(diff, sd, need) >= 0.8 > mri_power.paired_t_power(diff, sd, need - 1)


def test_full_design_is_the_power_analysis_choice_and_the_plan_states_its_mde():
    power = mri_power.load_power()
    chosen = power["chosen"]
    assert mri.FULL_DESIGN == {k: chosen[k] for k in ("repeats", "extra_unseen_subjects")}
    # the analysis is reproduced from what it recorded (the committed run's values and the pilot's predictions)
    again = mri_power.analyse(power["source_results"], mri_power.pilot_of(power))
    assert again["chosen"] == pytest.approx(chosen) and again["variance"] == pytest.approx(power["variance"])
    observed = power["observed"]
    assert observed["sd"] == pytest.approx(np.std(observed["paired_unseen_differences"], ddof=1))
    assert (
        observed["unseen_scans"] == 225 and power["pilot"]["cohort"]["seed"] != mri.default_config()["cohort"]["seed"]
    )
    plan_power = mri_power.design_power(mri.default_config(), power)
    assert plan_power["repeats"] == chosen["repeats"] and plan_power["unseen_scans"] == chosen["unseen_scans"]
    assert plan_power["minimum_detectable_effect"] == pytest.approx(chosen["mde"], abs=1e-4)
    assert chosen["wall_seconds"] <= power["cost"]["budget_fraction"] * power["cost"]["budget_seconds"]
    if not power["target_reached"]:
        assert chosen["mde"] > power["target"]["difference"]


def test_docstring_examples_run():
    import doctest

    from benchmarks import _combat

    for module in (_combat, mri_power):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__


def test_power_skeleton_reanalyses_the_recorded_pilot_to_the_committed_analysis(tmp_path, monkeypatch):
    # the skeleton's path (plan -> one row per recorded pilot repeat -> analysis) hands analyse() exactly the
    # committed run and pilot (analyse itself is checked against the committed analysis above)
    power, seen = mri_power.load_power(), {}

    def analyse(results, pilot):
        seen.update(results=results, pilot=pilot)
        return {"chosen": power["chosen"]}

    monkeypatch.setattr(mri_power, "analyse", analyse)
    committed = mri_power.POWER_FILE
    results = mri_power.run(committed, committed, out_dir=tmp_path, log=lambda _: None)
    on_disk = json.loads((tmp_path / "mri_power.json").read_text())
    assert on_disk["benchmark"] == "mri_power" and on_disk["plan"] == json.loads(json.dumps(mri_power.PLAN))
    assert list(on_disk["models"]) == list(mri_power.PILOT_MODELS) and on_disk["repeats"] == mri_power.PILOT_REPEATS
    assert on_disk["analysis"] == results["analysis"] == {"chosen": power["chosen"]}
    assert seen["results"] == power["source_results"]
    recorded = mri_power.pilot_of(power)
    assert {k: seen["pilot"][k] for k in recorded} == recorded  # labels, probabilities, timings, cohort
    # each repeat's unseen AUROC in the contract summary is the AUROC of the probabilities the analysis got
    for m in mri_power.PILOT_MODELS:
        expected = [roc_auc_score(recorded["labels"], p) for p in recorded["probabilities"][m]]
        assert on_disk["models"][m]["unseen"]["values"] == pytest.approx(expected)
