# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The MRI study and its selection: the rule, the plan before the first fit, resume, controls, a tiny run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks import _common, mri
from benchmarks import mri_study as study
from benchmarks import mri_study_selection as selection
from benchmarks.mri_study_models import LogitAdjustedCNN, fit, me_kind, prevalence_offsets, train_logit_adjusted
from benchmarks.mri_study_report import decision_table, render
from benchmarks.mri_study_runs import require_clean_tree, run_key, run_units
from monai_medl.transforms.site import site_index_to_design

SEEN = [f"site_{c}" for c in "abcdef"]


def fake_cohort(folder, cfg):
    """A tiny in-memory stand-in for ``mri.load_cohort``: a label-dependent blob in noise, 16^3, prevalence 20..80%
    at six seen sites, two balanced unseen sites (none when the cohort asks for none)."""
    cohort = cfg["cohort"]
    rng = np.random.default_rng(cohort["seed"])
    unseen = [] if cohort.get("unseen_sites", 2) == 0 else ["site_g", "site_h"]
    sites, labels, splits = [], [], []
    for i, site in enumerate(SEEN + unseen):
        prevalence = 0.2 + 0.12 * i if site in SEEN else 0.5
        y = (np.arange(20) < round(20 * prevalence)).astype(int)
        sites += [site] * 20
        labels += rng.permutation(y).tolist()
        splits += (["test"] * 20) if site in unseen else (["training"] * 14 + ["test"] * 6)
    labels = np.array(labels, dtype=np.float32)
    images = rng.normal(size=(len(labels), 1, 16, 16, 16)).astype(np.float32)
    images[:, :, 5:11, 5:11, 5:11] += 1.5 * labels[:, None, None, None, None]
    return {"images": images, "labels": labels, "sites": sites, "splits": splits, "seen_sites": SEEN,
            "unseen_sites": unseen}  # fmt: skip


TINY_RECIPE = {**study.recipe(True), "epochs": 1, "channels": [4, 8]}


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(mri, "load_cohort", fake_cohort)
    monkeypatch.setattr(selection, "generate_mri_cohort", lambda folder, **kw: folder)
    return monkeypatch


def _selection_config():
    cfg = selection.selection_config(True)
    names = list(cfg["candidates"])[:2]  # the reference and one mechanism
    return {**cfg, "recipe": TINY_RECIPE, "candidates": {n: cfg["candidates"][n] for n in names}}


# ------------------------------------------------------------------------------------------------- selection rule


def _scores(**means):
    """Per-cohort scores: ``name=(heldout, seen)`` means with a small spread over three cohorts."""
    spread = np.array([-0.01, 0.0, 0.01])
    return {
        n: {"heldout_within_auroc": list(h + spread), "seen_within_auroc_z0": list(s + spread)}
        for n, (h, s) in means.items()
    }


def test_rule_disqualifies_seen_site_loss_and_keeps_the_reference_when_nothing_beats_it():
    scores = _scores(me_no_adversary=(0.70, 0.75), strong=(0.80, 0.73), weak=(0.703, 0.75))
    d = selection.decide(scores)
    assert d["disqualified"] == ["strong"]  # 0.02 below the reference's seen-site score
    assert d["chosen"] == "me_no_adversary" and d["no_invariance_wins"]  # weak is within one standard error
    assert d["domain_adversarial"] == "weak"
    assert "no invariance term (the reference) wins" in d["summary"]


def test_rule_chooses_a_mechanism_that_beats_the_reference_by_more_than_a_standard_error():
    scores = _scores(me_no_adversary=(0.70, 0.75), good=(0.75, 0.745), better=(0.76, 0.70))
    d = selection.decide(scores)
    assert d["disqualified"] == ["better"] and d["chosen"] == "good" and not d["no_invariance_wins"]
    with pytest.raises(ValueError, match="reference"):
        selection.decide({"good": scores["good"]})


def test_rule_domain_adversarial_when_every_mechanism_is_disqualified():
    d = selection.decide(_scores(me_no_adversary=(0.70, 0.75), a=(0.8, 0.70), b=(0.9, 0.60)))
    assert d["chosen"] == "me_no_adversary" and d["domain_adversarial"] == "a"  # the smaller seen-site loss


def test_candidates_reference_first_then_the_grid():
    cands = selection.candidates((0.1, 1.0))
    names = list(cands)
    assert names[0] == "me_no_adversary" and me_kind(cands[names[0]]) == "me_no_adversary"
    assert len(names) == 1 + 6 * 2  # three mechanisms, unconditional and label-conditional, two weights
    assert all(me_kind(cands[n]) == "me" for n in names[1:])
    lambdas = [cands[n]["invariance"]["lambda"] for n in names[1:3]]
    assert lambdas == [0.1, 1.0]


# ------------------------------------------------------------------------------------------------ runs and resume


def test_resume_reuses_saved_rows_under_the_same_key(tmp_path):
    calls = []

    def fn(unit):
        calls.append(unit["i"])
        if unit["i"] == 2 and len(calls) < 4:
            raise RuntimeError("interrupted")
        return {"m": {"x": float(unit["i"])}}

    units = [{"i": i} for i in range(4)]
    with pytest.raises(RuntimeError, match="interrupted"):
        run_units("toy", units, fn, tmp_path, key="k1", log=lambda s: None)
    assert calls == [0, 1, 2]
    rows = run_units("toy", units, fn, tmp_path, key="k1", log=lambda s: None)
    assert calls == [0, 1, 2, 2, 3]  # units 0 and 1 came from the checkpoint
    assert [r["m"]["x"] for r in rows] == [0.0, 1.0, 2.0, 3.0]
    run_units("toy", units, fn, tmp_path, key="k2", log=lambda s: None)  # another key: everything reruns
    assert calls[5:] == [0, 1, 2, 3]


def test_resume_key_and_full_runs_need_a_clean_commit(monkeypatch):
    monkeypatch.setattr(_common, "git_commit", lambda: "a" * 40 + "+dirty")
    assert run_key("x", False, {}, [{}]) is None
    with pytest.raises(SystemExit, match="modified checkout"):
        require_clean_tree(quick=False)
    assert require_clean_tree(quick=True).endswith("+dirty")
    monkeypatch.setattr(_common, "git_commit", lambda: "a" * 40)
    assert require_clean_tree(quick=False) == "a" * 40
    key = run_key("x", False, {"p": 1}, [{"u": 1}])
    assert key.startswith("a" * 40) and key != run_key("x", False, {"p": 2}, [{"u": 1}])


# ------------------------------------------------------------------------------------------------------ controls


def test_logit_adjusted_cnn_offsets_and_z0_prediction():
    offsets = prevalence_offsets(np.array([0, 0, 0, 1, 1, 1, 1, 0]), np.array([0, 0, 0, 0, 1, 1, 1, 1]), 2)
    assert offsets[0] < 0 < offsets[1]
    x = torch.randn(40, 1, 16, 16, 16)
    y = torch.tensor([0.0, 1.0] * 20)
    site = torch.tensor([0] * 20 + [1] * 20)
    net = train_logit_adjusted({**TINY_RECIPE, "cohort": {"spatial_size": [16] * 3}}, x, y, site, 2, seed=0)
    assert isinstance(net, LogitAdjustedCNN)
    base = net.net.forward_all(x[:4]).mixed
    z1 = site_index_to_design(torch.tensor([1, 1, 1, 1]), 2).float()
    torch.testing.assert_close(net.forward_all(x[:4], torch.zeros(4, 2)).mixed, base)
    torch.testing.assert_close(net.forward_all(x[:4], z1).mixed, base + float(net.offsets[1]))


def test_detached_fixed_head_and_intercept_only_controls():
    cfg = {**TINY_RECIPE, "cohort": {"spatial_size": [16] * 3}, "adversary_taps": "h"}
    net = mri.me_cnn({**cfg, "fixed_head_detached": True}, 2, random_effects=True)
    net.train()
    out = net.forward_all(torch.randn(4, 1, 16, 16, 16), torch.eye(2)[[0, 1, 0, 1]])
    out.fixed.sum().backward()
    encoder = [p for n, p in net.named_parameters() if not n.startswith("head.")]
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in encoder)
    assert net.head.linear.weight.grad.abs().sum() > 0
    assert mri.me_cnn({**cfg, "random_slopes": False}, 2, random_effects=True).head.slopes is None
    assert mri.me_cnn(cfg, 2, random_effects=True).head.slopes is not None


def test_fits_follow_the_selection():
    sel = {"settings": {"invariance": {"kind": "coral", "lambda": 0.1}}, "domain_adversarial_settings": {"x": 1}}
    f = study.fits(sel)
    assert f["me"][0] == "me" and f["me_detached_fixed_head"][1]["fixed_head_detached"]
    assert f["me_lambda_fixed_0"][1]["lambda_fixed"] == 0.0 and f["domain_adversarial"][1] == {"x": 1}
    assert f["me_intercept_only"] == ("me_no_adversary", {"invariance": {"kind": "none"}, "random_slopes": False})
    none = study.fits({**sel, "settings": {"invariance": {"kind": "none"}}})
    assert none["me"][0] == "me_no_adversary"
    # an unknown kind fails inside the recipe with the key named
    with pytest.raises(ValueError, match="invariance.kind"):
        fit("me", {**TINY_RECIPE, "cohort": {"spatial_size": [16] * 3}, "invariance": {"kind": "bad"}},
            torch.zeros(2, 1, 16, 16, 16), torch.zeros(2), torch.zeros(2).long(), 2, 0)  # fmt: skip


# -------------------------------------------------------------------------------------------------- analysis


def _models(arms, me_gain):
    rng = np.random.default_rng(0)
    models = {}
    for arm in arms:
        for m in ("conventional", "me", *[x for x in study.MODELS if x not in ("conventional", "me")]):
            base = rng.normal(0.7, 0.03, 10)
            gain = me_gain[arm] + rng.normal(0, 0.003, 10) if m == "me" else 0.0
            conv = models.get(f"{arm}/conventional", {}).get("unseen", {}).get("values")
            values = list(np.asarray(conv) + gain) if m == "me" else list(base)
            ece = {f"unseen_ece_{t}_values": list(rng.random(10) * 0.1) for t in ("p20", "p80")}
            models[f"{arm}/{m}"] = {"seen": {"values": values}, "unseen": {"values": values}, "extra": ece}
    return models


def test_analysis_holm_tost_and_decision_table():
    arms = ["nuisance", "threshold", "slope"]
    models = _models(arms, {"nuisance": 0.001, "threshold": 0.03, "slope": -0.0005})
    a = study.analyse(models, arms)
    p = a["primary"]
    assert p["nuisance"]["test"].startswith("TOST") and p["nuisance"]["conclusion"] == "equivalent within +-0.02"
    assert p["threshold"]["conclusion"] == "ME better" and p["slope"]["conclusion"] == "no difference shown"
    raw = sorted(p[x]["p"] for x in arms)
    assert min(p[x]["p_holm"] for x in arms) == pytest.approx(min(1.0, 3 * raw[0]))
    assert set(a["secondary"]) == {"threshold/ece_p20", "threshold/ece_p80", "slope/ece_p20", "slope/ece_p80"}
    results = {"analysis": a, "repeats": 10, "quick": False, "env": {"commit": "abc"}}
    table = decision_table(results)
    assert (
        len([line for line in table.splitlines() if line.startswith("| ")]) == 1 + len(arms)
        and "| threshold | " in table
        and "90% CI" in table
    )


# ------------------------------------------------------------------------------------------------ tiny end to end


def test_tiny_selection_then_study(tiny, tmp_path):
    first_fit = {}
    real_fit = study.fit

    def checked_fit(*args, **kwargs):  # the plan must be on disk, unfinished, before any training
        record = json.loads((tmp_path / "mri_study_quick.json").read_text())
        first_fit.setdefault("status", record["status"])
        first_fit.setdefault("plan", record["plan"])
        return real_fit(*args, **kwargs)

    sel = selection.run(True, tmp_path, workers=1, cache=str(tmp_path), config=_selection_config(), log=lambda s: None)
    assert sel["config"]["chosen"] in sel["models"] and sel["config"]["wall_seconds"] > 0
    assert {"site_probe", "label_only_floor", "probe_excess"} <= set(sel["models"]["me_no_adversary"]["extra"])
    no_image = sel["models"]["prevalence_only"]["extra"]
    assert no_image["heldout_within_auroc"] == 0.5 and no_image["seen_within_auroc_z0"] == pytest.approx(0.5)
    assert no_image["disqualified"] is None and not no_image["chosen"]
    tiny.setattr(study, "fit", checked_fit)
    cfg = study.study_config(True, study.load_selection(tmp_path, quick=True))
    cfg = {**cfg, "recipe": TINY_RECIPE, "arms": {"nuisance": {}, "slope": {}}}
    res = study.run(True, tmp_path, workers=1, config=cfg, log=lambda s: None)
    assert first_fit["status"] == "running" and "power" in first_fit["plan"] and "sizing" in first_fit["plan"]
    assert set(res["analysis"]["primary"]) == {"nuisance", "slope"} and res["config"]["wall_seconds"] > 0
    prevalence = res["models"]["slope/prevalence_only"]
    assert prevalence["unseen"]["mean"] == pytest.approx(0.5) and prevalence["seen"]["mean"] == pytest.approx(0.5)
    assert res["models"]["nuisance/label_only_floor"]["extra"]["site_probe"] > 0
    assert res["models"]["nuisance/conventional"]["unseen"]["mean"] > 0.5  # the blob is learnable
    saved = json.loads((tmp_path / "mri_study_quick.json").read_text())
    assert saved["analysis"]["primary"]["nuisance"]["test"].startswith("TOST")
    text = (tmp_path / "mri_study_quick.md").read_text()
    assert text == render(saved) and "When mixed effects help" in text
    assert not (tmp_path / "mri_study_quick.rows.jsonl").exists()
    full = tmp_path / "mri_study_selection.json"
    full.write_text((tmp_path / "mri_study_selection_quick.json").read_text())
    with pytest.raises(ValueError, match="is a quick run"):
        study.load_selection(tmp_path, quick=False)


def test_load_selection_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        study.load_selection(tmp_path, quick=True)
    (tmp_path / "mri_study_selection_quick.json").write_text(json.dumps({"status": "running", "quick": True}))
    with pytest.raises(ValueError, match="unfinished"):
        study.load_selection(tmp_path, quick=True)
