# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Variance-component recovery: does the learned prior s.d. of a linear ME-MLP estimate the true random-effect s.d.?

Data: ``num_clusters`` clusters of 20-50 observations, ``y = b + w x + u0(k) + u1(k) x + e`` with independent
``u0 ~ N(0, intercept_sd^2)``, ``u1 ~ N(0, slope_sd^2)``, ``e ~ N(0, noise_sd^2)``. Two scenarios: "strong"
(s.d.s 1.0 / 0.5, noise 1.0) and "weak" (0.5 / 0.25: strong shrinkage, where the spread of posterior means is
visibly biased). Estimators:

- ``me``: ``MixedEffectsMLP(hidden=())`` (a linear mixed model with uncorrelated random intercept and slope),
  ``learn_prior_scale=True``, ``learn_noise_scale=True``, trained on the evidence lower bound (Gaussian NLL of the
  mixed head + KL / N), full-batch Adam; the estimate is the learned prior s.d.
- ``me_spread``: the same fit, read the way ARMED reads it: s.d. of the posterior means across clusters.
- ``armed_fixed_prior``: ARMED-style training (fixed prior s.d. 0.1, KL weight 1e-3, MSE on both heads), spread.
- ``statsmodels_ml`` / ``statsmodels_reml``: ``MixedLM`` with the same (diagonal) random-effects structure.
- ``oracle_sample_sd``: the s.d. of the effects actually drawn (not an estimator: the sampling-noise floor).

Metric: per seed, the mean over the two components of ``|estimate / truth - 1|`` ("seen": every cluster is a
training cluster; there are no unseen clusters here, so "unseen" is null).

Run ``python -m benchmarks.variance_components [--quick] [--out DIR]``.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from statsmodels.regression.mixed_linear_model import MixedLM, MixedLMParams

from benchmarks._common import benchmark_parser, summarize, write_results
from monai_medl.losses.mixed_effects_loss import MixedEffectsLoss
from monai_medl.networks.nets.me_mlp import MixedEffectsMLP

__all__ = [
    "simulate_linear_mixed",
    "load_dietox",
    "LinearMixedFit",
    "fit_linear_mixed_elbo",
    "fit_mixedlm",
    "run",
    "main",
]

NAME = "variance_components"
DIETOX = Path("regression", "tests", "results", "dietox.csv")
SCENARIOS = {
    "strong": {"intercept_sd": 1.0, "slope_sd": 0.5, "noise_sd": 1.0},
    "weak": {"intercept_sd": 0.5, "slope_sd": 0.25, "noise_sd": 1.0},
}


def simulate_linear_mixed(
    seed: int,
    num_clusters: int = 100,
    obs: tuple[int, int] = (20, 50),
    intercept_sd: float = 1.0,
    slope_sd: float = 0.5,
    noise_sd: float = 1.0,
    fixed: tuple[float, float] = (1.0, 2.0),
) -> dict[str, np.ndarray]:
    """Clustered linear data with a known random intercept and random slope (one covariate).

    Returns a dict with ``x`` (n, 1), ``groups`` (n,) cluster indices, ``y`` (n,), and the drawn effects
    ``u0``, ``u1`` (num_clusters,).
    """
    rng = np.random.default_rng(seed)
    sizes = rng.integers(obs[0], obs[1] + 1, num_clusters)
    groups = np.repeat(np.arange(num_clusters), sizes)
    x = rng.normal(size=groups.size)
    u0 = rng.normal(0.0, intercept_sd, num_clusters)
    u1 = rng.normal(0.0, slope_sd, num_clusters)
    y = fixed[0] + fixed[1] * x + u0[groups] + u1[groups] * x + rng.normal(0.0, noise_sd, groups.size)
    return {"x": x[:, None], "groups": groups, "y": y, "u0": u0, "u1": u1}


@dataclass
class LinearMixedFit:
    """Estimates of a linear mixed model in the original units of ``x`` and ``y``.

    ``intercept_sd``/``slope_sd`` are the variance-component estimates (None when not estimated, e.g. a fixed
    prior), ``*_spread`` the s.d. of the per-cluster posterior means (conditional modes) across clusters.
    """

    intercept: float
    slopes: list[float]
    intercept_sd: float | None
    slope_sd: list[float] | None
    residual_sd: float | None
    intercept_spread: float | None = None
    slope_spread: list[float] | None = None
    seconds: float = 0.0
    model: torch.nn.Module | None = field(default=None, repr=False)


def fit_linear_mixed_elbo(
    x: np.ndarray,
    groups: np.ndarray,
    y: np.ndarray,
    num_clusters: int | None = None,
    random_slopes: bool = True,
    steps: int = 800,
    lr: float = 0.1,
    seed: int = 0,
    learn_prior_scale: bool = True,
    prior_scale: float = 0.1,
    task: str = "gaussian_nll",
    kl_weight: float | str = "elbo",
    lambda_fixed: float = 0.0,
) -> LinearMixedFit:
    """Fit ``y ~ x + (1 | g) + (0 + x | g)`` (uncorrelated) as a linear ME-MLP and return original-unit estimates.

    ``y`` is standardised and every column of ``x`` scaled by its s.d. (and centred too when there are no random
    slopes; centring ``x`` would change what the random intercept means when there are). The model is trained
    full-batch with Adam (cosine-annealed learning rate): with the defaults, on the evidence lower bound
    (Gaussian NLL of the mixed head with a learned noise s.d. + KL / N, ``lambda_fixed=0`` so the noise s.d. sees
    only the mixed head). The estimates are mapped back to the original units (the maximum-likelihood-type
    estimates are equivariant under these affine maps).

    Args:
        x: covariates, ``(n, p)``.
        groups: cluster index per row, ``(n,)``, in ``[0, num_clusters)``.
        y: outcome, ``(n,)``.
        num_clusters: number of clusters. Defaults to ``groups.max() + 1``.
        random_slopes: random slopes on ``x`` (one shared prior s.d. for all columns). Defaults to True.
        steps: full-batch Adam steps. Defaults to 800.
        lr: initial Adam learning rate. Defaults to 0.1.
        seed: torch seed (initialisation and random-effect sampling). Defaults to 0.
        learn_prior_scale: learn the prior s.d.s. Defaults to True.
        prior_scale: initial (or fixed) prior s.d., in standardised units. Defaults to 0.1.
        task: ``"gaussian_nll"`` or ``"mse"``. Defaults to ``"gaussian_nll"``.
        kl_weight: ``"elbo"`` or a float. Defaults to ``"elbo"``.
        lambda_fixed: weight of the fixed-effects head's loss. Defaults to 0.0.
    """
    x = np.asarray(x, dtype=float).reshape(len(y), -1)
    y = np.asarray(y, dtype=float)
    num_clusters = int(groups.max()) + 1 if num_clusters is None else num_clusters
    x_center = np.zeros(x.shape[1]) if random_slopes else x.mean(0)
    x_scale, y_center, y_scale = x.std(0), y.mean(), y.std()
    inputs = torch.tensor((x - x_center) / x_scale, dtype=torch.float32)
    target = torch.tensor((y - y_center) / y_scale, dtype=torch.float32)[:, None]
    z = torch.eye(num_clusters)[torch.as_tensor(groups, dtype=torch.long)]
    torch.manual_seed(seed)
    net = MixedEffectsMLP(
        in_features=x.shape[1],
        out_channels=1,
        num_clusters=num_clusters,
        hidden=(),
        nonlinear_slopes=False,
        linear_slopes=random_slopes,
        slope_prior_scale=prior_scale,
        intercept_prior_scale=prior_scale,
        learn_prior_scale=learn_prior_scale,
        learn_noise_scale=task == "gaussian_nll",
    )
    loss_fn = MixedEffectsLoss(task=task, lambda_fixed=lambda_fixed, kl_weight=kl_weight, num_train_samples=len(y))
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    start = time.perf_counter()
    net.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn(net(inputs, z), target).backward()
        optimizer.step()
        schedule.step()
    seconds = time.perf_counter() - start
    net.eval()
    w = net.head.linear.weight.detach().numpy()[0] * y_scale / x_scale
    intercept = y_center + y_scale * float(net.head.linear.bias.detach()) - float(w @ x_center)
    re_int, re_slope = net.head.intercept, net.linear_slopes
    noise = net.head.log_noise_scale
    return LinearMixedFit(
        intercept=intercept,
        slopes=w.tolist(),
        intercept_sd=float(re_int.prior_scale.detach()) * y_scale if learn_prior_scale else None,
        slope_sd=(float(re_slope.prior_scale.detach()) * y_scale / x_scale).tolist()
        if (learn_prior_scale and re_slope is not None)
        else None,
        residual_sd=float(noise.detach().exp()) * y_scale if noise is not None else None,
        intercept_spread=float(re_int.loc.detach().std(unbiased=False)) * y_scale,
        slope_spread=(re_slope.loc.detach().std(0, unbiased=False).numpy() * y_scale / x_scale).tolist()
        if re_slope is not None
        else None,
        seconds=seconds,
        model=net,
    )


def fit_mixedlm(x: np.ndarray, groups: np.ndarray, y: np.ndarray, reml: bool, random_slopes: bool = True):
    """statsmodels ``MixedLM`` with uncorrelated random intercept and slopes (the ME-MLP's structure)."""
    x = np.asarray(x, dtype=float).reshape(len(y), -1)
    exog = np.column_stack([np.ones(len(y)), x])
    exog_re = exog if random_slopes else exog[:, :1]
    k = exog_re.shape[1]
    free = MixedLMParams.from_components(fe_params=np.ones(exog.shape[1]), cov_re=np.eye(k))
    start = time.perf_counter()
    result = MixedLM(y, exog, groups=groups, exog_re=exog_re).fit(reml=reml, free=free, method=["powell", "lbfgs"])
    sds = np.sqrt(np.diag(np.asarray(result.cov_re)))
    modes = np.array(list(result.random_effects.values()), dtype=float).reshape(-1, k)
    return LinearMixedFit(
        intercept=float(result.fe_params[0]),
        slopes=[float(v) for v in result.fe_params[1:]],
        intercept_sd=float(sds[0]),
        slope_sd=sds[1:].tolist() if random_slopes else None,
        residual_sd=float(np.sqrt(result.scale)),
        intercept_spread=float(modes[:, 0].std()),
        slope_spread=modes[:, 1:].std(0).tolist() if random_slopes else None,
        seconds=time.perf_counter() - start,
    )


def load_dietox() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """statsmodels' dietox pig-growth data (861 weighings of 72 pigs): ``(time, pig index, weight)``.

    Read from the installed statsmodels package (``statsmodels/regression/tests/results/dietox.csv``); raises
    FileNotFoundError naming the path when statsmodels or the file is missing.
    """
    spec = importlib.util.find_spec("statsmodels")
    path = None if spec is None or spec.origin is None else Path(spec.origin).parent / DIETOX
    if path is None or not path.is_file():
        raise FileNotFoundError(f"dietox data not found: expected statsmodels/{DIETOX} in the installed statsmodels.")
    table = pd.read_csv(path)
    _, pig = np.unique(table["Pig"].to_numpy(), return_inverse=True)
    return table["Time"].to_numpy(float), pig, table["Weight"].to_numpy(float)


# estimator -> (fit it is read from, read-out): "sd" = estimated variance component, "spread" = s.d. of the
# posterior means (conditional modes) across clusters
READOUTS = {
    "me": ("me", "sd"),
    "me_spread": ("me", "spread"),
    "armed_fixed_prior": ("armed", "spread"),
    "statsmodels_ml": ("ml", "sd"),
    "statsmodels_reml": ("reml", "sd"),
}


def _fits(x, groups, y, steps: int, seed: int, random_slopes: bool = True) -> dict[str, LinearMixedFit]:
    args = (x, groups, y)
    return {
        "me": fit_linear_mixed_elbo(*args, random_slopes=random_slopes, steps=steps, seed=seed),
        "armed": fit_linear_mixed_elbo(
            *args,
            random_slopes=random_slopes,
            steps=steps,
            seed=seed,
            learn_prior_scale=False,
            task="mse",
            kl_weight=1e-3,
            lambda_fixed=1.0,
        ),
        "ml": fit_mixedlm(*args, reml=False, random_slopes=random_slopes),
        "reml": fit_mixedlm(*args, reml=True, random_slopes=random_slopes),
    }


def _read(fit: LinearMixedFit, how: str) -> tuple[float, float | None]:
    """(intercept, first slope) s.d. of a fit, as the variance component or as the spread of conditional modes."""
    if how == "sd":
        return fit.intercept_sd, None if fit.slope_sd is None else fit.slope_sd[0]
    return fit.intercept_spread, None if fit.slope_spread is None else fit.slope_spread[0]


def run(seeds: list[int], steps: int = 800, num_clusters: int = 100) -> tuple[dict, dict]:
    """Fit every estimator on every seed of both scenarios and on dietox; return the results' models and config."""
    rec: dict[str, dict[str, list]] = {m: {} for m in [*READOUTS, "oracle_sample_sd"]}

    def add(model: str, key: str, value: float | None) -> None:
        if value is not None:
            rec[model].setdefault(key, []).append(float(value))

    for scenario, truth in SCENARIOS.items():
        for seed in seeds:
            data = simulate_linear_mixed(seed, num_clusters=num_clusters, **truth)
            fits = _fits(data["x"], data["groups"], data["y"], steps, seed)
            estimates = {m: (*_read(fits[src], how), fits[src].seconds) for m, (src, how) in READOUTS.items()}
            estimates["oracle_sample_sd"] = (float(data["u0"].std()), float(data["u1"].std()), None)
            for model, (sd0, sd1, seconds) in estimates.items():
                r0, r1 = sd0 / truth["intercept_sd"] - 1, sd1 / truth["slope_sd"] - 1
                add(model, f"{scenario}_err", (abs(r0) + abs(r1)) / 2)
                add(model, f"{scenario}_r0", r0)
                add(model, f"{scenario}_r1", r1)
                add(model, "seconds", seconds)
            print(f"  {scenario} seed {seed} done", flush=True)
    time_, pig, weight = load_dietox()
    for seed in seeds:
        fits = _fits(time_[:, None], pig, weight, steps, seed, random_slopes=False)
        for model, (src, how) in READOUTS.items():
            add(model, "dietox_re_sd", _read(fits[src], how)[0])
            add(model, "dietox_time", fits[src].slopes[0])
            add(model, "dietox_residual_sd", fits[src].residual_sd)
        print(f"  dietox seed {seed} done", flush=True)

    def mean(values: list[float] | None) -> float | None:
        return None if not values else float(np.mean(values))

    models = {}
    for model, r in rec.items():
        extra = {
            "intercept_sd_bias": mean(r["strong_r0"]),
            "slope_sd_bias": mean(r["strong_r1"]),
            "max_error": float(np.abs([*r["strong_r0"], *r["strong_r1"]]).max()),
            "weak_sd_rel_error": mean(r["weak_err"]),
            "weak_intercept_sd_bias": mean(r["weak_r0"]),
            "weak_slope_sd_bias": mean(r["weak_r1"]),
            "weak_max_error": float(np.abs([*r["weak_r0"], *r["weak_r1"]]).max()),
        }
        extra.update({key: mean(r.get(key)) for key in ("dietox_re_sd", "dietox_time", "dietox_residual_sd")})
        extra["fit_seconds"] = mean(r.get("seconds"))
        models[model] = {"seen": summarize(r["strong_err"]), "unseen": None, "extra": extra}
    config = {
        "scenarios": SCENARIOS,
        "num_clusters": num_clusters,
        "obs_per_cluster": [20, 50],
        "fixed_effects": [1.0, 2.0],
        "steps": steps,
        "lr": 0.1,
        "optimizer": "Adam, full batch, cosine-annealed lr; y standardised, x scaled",
        "me_loss": "gaussian_nll of the mixed head (learned noise s.d.) + KL/N (elbo); lambda_fixed=0",
        "armed_loss": "mse on both heads + 1e-3 * KL, prior s.d. fixed at 0.1 (standardised units)",
        "dietox": "Weight ~ Time + (1 | Pig), statsmodels dietox.csv, 861 rows, 72 pigs; Time centred and scaled",
        "seen": "strong scenario: per seed, mean over the two components of |estimate/truth - 1|",
        "unseen": "not applicable (all clusters are training clusters)",
    }
    return models, config


NOTES = """
seen = strong scenario (intercept s.d. 1.0, slope s.d. 0.5, noise 1.0), per seed the mean over the two components
of |estimate / truth - 1|; *_bias = mean signed relative error; max_error = largest |relative error| over seeds and
components; weak_* = the same for the weak scenario (0.5 / 0.25); dietox_* = Weight ~ Time + (1 | Pig) on statsmodels'
dietox data (random-intercept s.d., Time coefficient, residual s.d.; mean over seeds). me = learned prior s.d. (ELBO);
me_spread = s.d. of the posterior means of the same fit (ARMED's read-out); armed_fixed_prior = fixed prior 0.1,
KL weight 1e-3, MSE, spread read-out; oracle_sample_sd = s.d. of the effects actually drawn (sampling floor).
"""


def main(argv: list[str] | None = None) -> dict:
    args = benchmark_parser(__doc__.splitlines()[0]).parse_args(argv)
    torch.set_num_threads(1)
    seeds = list(range(3 if args.quick else 10))
    models, config = run(seeds)
    return write_results(
        NAME, args.quick, "sd_rel_error", len(seeds), models, config, seeds, out_dir=args.out, notes=NOTES
    )


if __name__ == "__main__":
    main()
