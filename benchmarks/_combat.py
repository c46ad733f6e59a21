# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""ComBat harmonisation of image features for the benchmarks' harmonisation baseline (PyPI ``neuroCombat``).

ComBat (Johnson et al. 2007; Fortin et al. 2017/2018) models every feature as ``grand mean + covariate effects +
site shift gamma + site scale delta * residual`` and shrinks the per-site ``gamma``/``delta`` towards their means
over features (empirical Bayes). :class:`ComBat` fits that model with ``neuroCombat`` on training scans only and
then applies one label-free mapping to every scan:

* **protected covariates** (e.g. the label) are in the model when the site parameters are *estimated*, so a site's
  disease prevalence is not mistaken for a scanner shift; they are never needed to *apply* them (a scan is mapped
  with the training scans' mean covariate effect, so test labels are not used);
* a **training site** uses its fitted ``gamma*``/``delta*``;
* a **site without training scans** (unseen) cannot be estimated from training data; its ``gamma*``/``delta*`` are
  estimated at test time from all of its scans passed to :meth:`ComBat.transform` (unlabelled), standardised with
  the training fit and with neuroCombat's own parametric empirical-Bayes step, the same as for a training site.

Features that are constant over the training scans are passed through unchanged (ComBat cannot scale them).
"""

from __future__ import annotations

import contextlib
import importlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["ComBat"]


def _neurocombat():
    """The ``neuroCombat`` module (a ``benchmarks`` extra: ``pip install monai-medl[benchmarks]``)."""
    try:
        module = importlib.import_module("neuroCombat.neuroCombat")  # the module (the package exports a function)
    except ImportError as e:
        raise ImportError("the ComBat baseline needs neuroCombat: pip install 'monai-medl[benchmarks]'.") from e
    return module


class ComBat:
    """ComBat fitted on training scans (site as batch), applied to training, seen-site and unseen-site scans.

    Args:
        protect: names of covariates preserved when the site parameters are estimated (categorical, e.g.
            ``("label",)``); their values are passed to :meth:`fit` only.

    Example::

        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(60, 4)) + np.repeat([[0.0], [2.0], [4.0]], 20, axis=0)
        >>> sites, y = np.repeat(["a", "b", "c"], 20), rng.integers(0, 2, 60)
        >>> combat = ComBat(protect=("label",)).fit(x, sites, {"label": y})
        >>> h = combat.transform(x, sites)
        >>> bool(np.ptp([h[sites == s].mean() for s in "abc"]) < 0.5)
        True
    """

    def __init__(self, protect: Sequence[str] = ()) -> None:
        self.protect = tuple(str(c) for c in protect)
        self.estimates: dict[str, Any] | None = None

    def fit(self, features: np.ndarray, sites: Sequence[Any], covariates: Mapping[str, Sequence[Any]] = ()) -> ComBat:
        """Estimate the model on training scans: ``features`` ``(scans, features)``, their ``sites`` and the
        ``protect``-ed ``covariates`` (``{name: values}``, one value per scan)."""
        import pandas as pd

        features = np.asarray(features, dtype=np.float64)
        sites = np.asarray(sites).astype(str)
        covariates = dict(covariates)
        if features.ndim != 2 or len(features) != len(sites):
            raise ValueError(
                f"features must be (scans, features) with one site per scan, got {features.shape} and "
                f"{len(sites)} sites."
            )
        missing = sorted(set(self.protect) - set(covariates))
        if missing:
            raise ValueError(f"covariates lack the protected {missing}; got {sorted(covariates)}.")
        names, counts = np.unique(sites, return_counts=True)
        if len(names) < 2 or counts.min() < 2:
            sizes = dict(zip(names.tolist(), counts.tolist()))
            raise ValueError(f"ComBat needs at least 2 sites with at least 2 scans each, got {sizes}.")
        varying = features.std(0) > 1e-12
        covars = pd.DataFrame({"site": sites, **{c: np.asarray(covariates[c]) for c in self.protect}})
        with contextlib.redirect_stdout(io.StringIO()):  # neuroCombat prints its progress
            out = _neurocombat().neuroCombat(
                dat=features[:, varying].T, covars=covars, batch_col="site", categorical_cols=list(self.protect)
            )
        est = out["estimates"]
        self.estimates = {
            "sites": [str(s) for s in est["batches"]],
            "varying": varying,
            # the training scans' mean of grand mean + covariate effects: what a scan is mapped around at apply time
            "center": est["stand.mean"][:, 0] + np.mean(np.atleast_2d(est["mod.mean"]), axis=1),
            "scale": np.sqrt(est["var.pooled"][:, 0]),
            "gamma": np.asarray(est["gamma.star"], dtype=np.float64),
            "delta": np.asarray(est["delta.star"], dtype=np.float64),
        }
        return self

    def _standardise(self, features: np.ndarray) -> np.ndarray:
        e = self.estimates
        return (features[:, e["varying"]] - e["center"]) / e["scale"]

    def site_parameters(self, features: np.ndarray, sites: Sequence[Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{site: (gamma*, delta*)}`` for every site in ``sites``: fitted for training sites, estimated from the
        site's rows of ``features`` (empirical Bayes, as neuroCombat does per batch) for the others."""
        if self.estimates is None:
            raise RuntimeError("ComBat.fit must be called before transform.")
        nc = _neurocombat()
        e = self.estimates
        sites = np.asarray(sites).astype(str)
        s = self._standardise(np.asarray(features, dtype=np.float64))
        params = {}
        for site in map(str, np.unique(sites)):
            if site in e["sites"]:
                i = e["sites"].index(site)
                params[site] = (e["gamma"][i], e["delta"][i])
                continue
            rows = s[sites == site].T  # (features, scans)
            if rows.shape[1] < 2:
                raise ValueError(f"unseen site {site!r} has {rows.shape[1]} scan(s); its parameters need at least 2.")
            g_hat, d_hat = rows.mean(1), nc.convert_zeroes(rows.var(1, ddof=1))
            params[site] = nc.it_sol(
                rows, g_hat, d_hat, g_hat.mean(), g_hat.var(ddof=1), nc.aprior(d_hat), nc.bprior(d_hat)
            )
        return params

    def transform(self, features: np.ndarray, sites: Sequence[Any]) -> np.ndarray:
        """Harmonised copy of ``features`` (label-free; unseen sites estimated from their rows here)."""
        features = np.asarray(features, dtype=np.float64)
        sites = np.asarray(sites).astype(str)
        e = self.estimates if self.estimates is not None else {}
        params = self.site_parameters(features, sites)
        s = self._standardise(features)
        out = features.copy()
        adjusted = np.empty_like(s)
        for site, (gamma, delta) in params.items():
            rows = sites == site
            adjusted[rows] = (s[rows] - gamma) / np.sqrt(delta)
        out[:, e["varying"]] = adjusted * e["scale"] + e["center"]
        return out
