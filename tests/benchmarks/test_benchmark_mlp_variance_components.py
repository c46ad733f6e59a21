# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import numpy as np
import torch

from benchmarks.mlp_variance_components import MODELS, simulate

torch.set_num_threads(1)


def test_simulation_is_seeded_and_shaped():
    a, b = simulate(3), simulate(3)
    assert a["x"].shape == (800, 2) and a["groups"].shape == a["y"].shape == a["f"].shape == (800,)
    assert np.array_equal(a["y"], b["y"]) and not np.array_equal(a["y"], simulate(4)["y"])
    assert np.allclose(a["f"], np.sin(2 * a["x"][:, 0]) + 0.5 * a["x"][:, 1] ** 2)


def test_one_seed_runs_every_model():
    from benchmarks.mlp_variance_components import run

    models, config = run([0])
    assert set(models) == {*MODELS, "reference"} and models["reference"]["seen"] is None
    errors = {m: models[m]["seen"]["mean"] for m in MODELS}
    assert all(np.isfinite(list(errors.values())))
    # the ELBO at its closed-form posterior is the marginal likelihood: the same fit
    assert abs(errors["marginal"] - errors["elbo"]) < 1e-6
