# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Federated ME training of a bundle's network (``--bundle_root``): 2 sites of tiny synthetic MRI, in process.

The in-process rounds are the job's own client steps and aggregator without NVFlare's transport; the real simulator
is not run here (its start-up alone exceeds this file's time budget on a loaded 2-core machine).
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch

from monai_medl.fl import (
    LocalTrainingSettings,
    SiteDataError,
    bundle_parser,
    bundle_site_network,
    check_site_datalists,
    federate_in_process,
    load_bundle_site,
    local_keys,
    shared_state,
)
from monai_medl.fl.client import outgoing_params
from monai_medl.fl.job import main as job_main
from monai_medl.fl.variance_components import SHIFT_META, additive_layers, variance_components
from tests.fl.image_site_cohort import BUNDLE, OVERRIDES, write_image_site_datalists

pytest.importorskip("nvflare", reason="the aggregator needs nvflare (pip install monai-medl[fl])")

SETTINGS = LocalTrainingSettings(task="bce", epochs=1, batch_size=8, lr=0.01)


@pytest.fixture(scope="module")
def datalists(tmp_path_factory):
    return write_image_site_datalists(tmp_path_factory.mktemp("fl_bundle"))


@pytest.fixture(scope="module")
def federation(datalists):
    torch.set_num_threads(1)
    sites = [load_bundle_site(p, f"site-{k + 1}", BUNDLE, OVERRIDES) for k, p in enumerate(datalists)]
    fed = federate_in_process(sites, functools.partial(bundle_site_network, BUNDLE, OVERRIDES), SETTINGS, rounds=2)
    return sites, fed


def test_bundle_site_data_follow_the_bundle_pipeline(federation):
    sites, _ = federation
    for data in sites:
        assert tuple(data.features.shape[1:]) == (1, 16, 16, 16) and len(data.features) == len(data.labels)
        # the site's own z-score normalisation (NormalizeBySited, statistics fitted at the site)
        assert abs(float(data.features.mean())) < 0.2 and 0.8 < float(data.features.std()) < 1.2
    assert sites[0].site_name != sites[1].site_name


def test_global_shared_weights_are_the_weighted_mean_of_what_sites_sent(federation):
    sites, fed = federation
    sent = [outgoing_params(net, data, SETTINGS) for net, data in zip(fed.networks, sites)]
    n = np.array([len(d.labels) for d in sites], dtype=float)
    shifted = set(additive_layers(fed.networks[0]).values())
    for key, value in shared_state(fed.networks[0]).items():
        if not value.is_floating_point():
            continue
        mean = sum(w * s[key].numpy() for w, s in zip(n / n.sum(), sent))
        if key in shifted:  # the server moved the sites' mean intercept row into the read-out bias
            mean = mean + np.asarray(fed.meta[SHIFT_META]["head.intercept"])
        np.testing.assert_allclose(np.asarray(fed.global_params[key]), mean, rtol=1e-5, atol=1e-6, err_msg=key)
    models = [fed.site_model(k) for k in range(2)]
    for key, value in shared_state(models[0]).items():
        assert torch.equal(value, shared_state(models[1])[key]), key
    assert variance_components(models[0]) == variance_components(models[1])


def test_random_effects_differ_per_site_and_never_leave_it(federation):
    sites, fed = federation
    own = local_keys(fed.networks[0])
    rows = [{k: v for k, v in net.state_dict().items() if k in own} for net in fed.networks]
    assert not torch.allclose(rows[0]["head.slopes.loc"], rows[1]["head.slopes.loc"])
    assert not torch.allclose(rows[0]["head.intercept.loc"], rows[1]["head.intercept.loc"])
    for net, data, row in zip(fed.networks, sites, rows):
        sent = outgoing_params(net, data, SETTINGS)
        assert not set(sent) & set(own) and not any(data.site_name in k for k in sent)
        values = np.concatenate([v.detach().numpy().ravel() for v in sent.values()])
        for key in ("head.slopes.loc", "head.slopes.rho", "head.intercept.rho"):
            assert not np.isin(row[key].detach().numpy().ravel(), values).any(), key
    assert all(b == fed.bytes_sent[0] for b in fed.bytes_sent)


def _with_missing_image(datalists, tmp_path):
    content = json.loads(datalists[1].read_text())
    missing = str(tmp_path / "gone_T1w.nii.gz")
    content["training"][2]["image"] = missing
    bad = tmp_path / "bad_site.json"
    bad.write_text(json.dumps(content))
    return bad, missing


def test_missing_image_fails_naming_site_and_file(datalists, tmp_path, capsys):
    bad, missing = _with_missing_image(datalists, tmp_path)
    with pytest.raises(SiteDataError, match=r"(?s)site 'site-2'.*bad_site\.json.*gone_T1w\.nii\.gz"):
        check_site_datalists({"site-1": datalists[0], "site-2": bad}, bundle_parser=bundle_parser(BUNDLE, OVERRIDES))
    with pytest.raises(SiteDataError, match=r"(?s)site 'hosp'.*gone_T1w\.nii\.gz"):
        load_bundle_site(bad, "hosp", BUNDLE, OVERRIDES)
    out = tmp_path / "job"
    argv = ["--site_datalists", str(datalists[0]), str(bad), "--bundle_root", BUNDLE, "--out", str(out)]
    assert job_main(argv + ["--bundle_overrides", json.dumps(OVERRIDES), "--task", "bce"]) == 2
    err = capsys.readouterr().err
    assert "site 'site-2'" in err and missing in err and not out.exists()  # nothing written for any site


def test_job_and_recipe_refuse_inconsistent_bundle_arguments(datalists, tmp_path, capsys):
    from monai_medl.fl import federated_me_recipe

    base = ["--site_datalists", *map(str, datalists), "--out", str(tmp_path / "job")]
    assert job_main(base) == 2 and "exactly one of --network" in capsys.readouterr().err
    with pytest.raises(ValueError, match="loss task 'bce'"):
        federated_me_recipe(dict(zip("ab", datalists)), None, tmp_path / "r", bundle_root=BUNDLE)
    with pytest.raises(ValueError, match="num_sites"):
        bundle_parser(BUNDLE, {"num_sites": 3})
    with pytest.raises(FileNotFoundError, match="configs/train.json"):
        bundle_parser(tmp_path)
    two_keys = bundle_parser(BUNDLE, {"datalist_spec#image_keys": ["t1", "flair"]})
    with pytest.raises(ValueError, match=r"one image key.*\['t1', 'flair'\]"):
        check_site_datalists(dict(zip("ab", datalists)), bundle_parser=two_keys)


@pytest.mark.slow
def test_bundle_job_in_the_real_simulator(datalists, tmp_path):
    """``python -m monai_medl.fl.job --bundle_root`` in NVFlare's simulator (loopback-only namespace), 2 rounds."""
    from tests.fl.test_federated_simulator import _job, _namespace_available, _received

    reason = _namespace_available()
    if reason:
        pytest.skip(f"no loopback-only network namespace: {reason}")
    args = ["--bundle_root", BUNDLE, "--bundle_overrides", json.dumps(OVERRIDES), "--num_rounds", "2"]
    args += ["--task", "bce", "--epochs", "1", "--batch_size", "8", "--lr", "0.01", "--fedprox_mu", "0.01"]
    done = _job(datalists, tmp_path, job_args=args)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    sites = ["site-1", "site-2"]
    loaded = [torch.load(tmp_path / "sites" / s / "received_round1.pt", weights_only=True) for s in sites]
    assert loaded[0].keys() == loaded[1].keys() and all(torch.equal(loaded[0][k], loaded[1][k]) for k in loaded[0])
    states = [torch.load(tmp_path / "sites" / s / "local_state.pt", weights_only=True) for s in sites]
    assert [s["site_vocabulary"] for s in states] == [{"site_a": 0}, {"site_b": 0}]
    rows = [s["random_effects"]["head.slopes.loc"] for s in states]
    assert not torch.allclose(rows[0], rows[1])
    for site, state in zip(sites, states):
        sent = _received(tmp_path, 1, site)
        assert not [k for k in sent if k.endswith((".loc", ".rho"))] and "site_" not in json.dumps(sorted(sent))
        values = np.concatenate([v.ravel().astype(np.float64) for v in sent.values()])
        for key in ("head.slopes.loc", "head.slopes.rho", "head.intercept.rho"):
            row = state["random_effects"][key].double().numpy().ravel()
            assert not np.isclose(values[:, None], row[None], rtol=0, atol=1e-7).any(), key
