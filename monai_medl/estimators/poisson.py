# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Poisson (log-link) mixed-effects regression for counts, with crossed, nested and correlated random effects."""

from __future__ import annotations

from typing import cast

import numpy as np
import torch
from sklearn.base import RegressorMixin
from torch import nn

from monai_medl.estimators.base import MixedEffectsEstimatorBase

__all__ = ["MixedEffectsPoissonRegressor"]


class MixedEffectsPoissonRegressor(RegressorMixin, MixedEffectsEstimatorBase):
    """Poisson mixed model for counts, ``log E[y | u] = f(x) + sum_factors d^T u``, as ``glmer(family = poisson)``.

    The random-effects structure, arguments and read-outs are those of :class:`MixedEffectsRegressor` (random
    effects on the log scale, no residual). ``method="laplace"`` (the default for linear fixed effects) minimises
    glmer's Laplace deviance (``nAGQ = 1``, :func:`~monai_medl.estimators.laplace_glmm.fit_laplace_glmm`), with
    standard errors, log-likelihood (every constant included, as lme4's), AIC/BIC and :func:`anova`;
    ``method="elbo"`` (the default for MLP fixed effects) maximises the evidence lower bound, whose expected Poisson
    log-likelihood is closed-form: ``E[exp(eta)] = exp(mean + var / 2)`` for a Gaussian ``eta``. ``predict`` gives
    the expected count ``exp(eta)`` at the conditional modes (``groups=None`` or an unseen level: the population
    value of that factor, 0 on the log scale); ``decision_function`` the log-mean.

    Example::

        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> site = np.repeat(np.arange(15), 20)
        >>> x = rng.normal(size=(300, 1))
        >>> y = rng.poisson(np.exp(0.5 + 0.4 * x[:, 0] + rng.normal(0, 0.6, 15)[site]))
        >>> fit = MixedEffectsPoissonRegressor().fit(x, y, groups=site)
        >>> fit.fit_info_["method"], fit.residual_sd_ is None
        ('Laplace approximation', True)
        >>> bool(0.3 < fit.var_corr()["sdcor"].iloc[0] < 1.0), fit.predict(x[:2], groups=[0, 99]).shape
        (True, (2,))
        >>> vb = MixedEffectsPoissonRegressor(method="elbo").fit(x, y, groups=site)
        >>> bool(abs(vb.fixed_effects_["x0"] - fit.fixed_effects_["x0"]) < 0.05)
        True
    """

    _family = "poisson"
    _learn_noise = False
    _default_method = "laplace"
    _y_center, _y_scale = 0.0, 1.0

    def _exact_methods(self) -> tuple[str, ...]:
        return ("laplace",)

    def _target(self, y: np.ndarray) -> np.ndarray:
        try:
            counts = y.astype(float)
        except (TypeError, ValueError) as err:
            raise ValueError(f"y must hold counts (non-negative integers) for Poisson regression: {err}") from err
        bad = ~np.isfinite(counts) | (counts < 0) | (counts != np.round(counts))
        if bad.any():
            first = int(np.argmax(bad))
            raise ValueError(
                f"y must hold counts (non-negative integers): {int(bad.sum())} entries are not, first at row {first} "
                f"({y[first]!r})."
            )
        return counts

    def _init_fixed(self, x: torch.Tensor, y: torch.Tensor) -> None:
        # linear fixed effects start at the log of the mean count (zero slopes)
        if self.fixed_effects != "linear":
            return
        linear = cast(nn.Linear, self.network_.fixed)  # linear fixed effects: an nn.Linear
        with torch.no_grad():
            linear.weight.zero_()
            linear.bias.fill_(float(torch.log(y.mean().clamp_min(1e-3))))

    def _expected_nll(self, mean: torch.Tensor, var: torch.Tensor, y: torch.Tensor, draws=None) -> torch.Tensor:
        # -E[log p(y | eta)] for eta ~ N(mean, var): E[exp(eta)] - y mean + log y!
        mean, var = mean[:, 0], var[:, 0]
        return torch.exp(mean + var.clamp_min(0) / 2) - y * mean + torch.lgamma(y + 1)

    def predict(self, X, groups=None) -> np.ndarray:
        """Expected count ``exp(eta)`` at the conditional modes; ``groups=None`` (or an unseen level): population."""
        return np.exp(self.decision_function(X, groups))

    def score(self, X, y, groups=None, sample_weight=None) -> float:
        """Fraction of Poisson deviance explained (``D^2``, as scikit-learn's ``PoissonRegressor.score``) by
        ``predict(X, groups)``: conditional on known levels when ``groups`` is given, the population otherwise."""
        from sklearn.metrics import d2_tweedie_score

        return float(d2_tweedie_score(y, self.predict(X, groups), sample_weight=sample_weight, power=1))
