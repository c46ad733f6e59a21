# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Linear (or MLP) mixed-effects regression with crossed, nested and correlated random effects."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from sklearn.base import RegressorMixin

from monai_medl.estimators.base import MixedEffectsEstimatorBase
from monai_medl.estimators.conjugate_posterior import ConjugatePosterior

if TYPE_CHECKING:
    from monai_medl.networks.layers.correlated_random_effects import CorrelatedRandomEffects

__all__ = ["MixedEffectsRegressor"]


class MixedEffectsRegressor(RegressorMixin, MixedEffectsEstimatorBase):
    """Gaussian mixed model ``y = f(x) + sum_factors d^T u + e``, fitted exactly (REML / ML) or on its ELBO.

    ``f`` is linear (a linear mixed model, as ``lme4::lmer`` with ``REML = FALSE``) or an MLP. Each grouping
    factor has a random intercept and optional random slopes with a joint Gaussian posterior per level and a
    learned prior covariance (``correlated=True``: lme4's ``(x | g)``; ``False``: ``(x || g)``); factors may be
    crossed (several columns of ``groups``) or nested (``nested="site/subject"``: lme4's ``(1 | site/subject)``).

    The likelihood is Gaussian with a learned noise s.d.; the expected log-likelihood under the Gaussian
    posterior is closed-form and the KL enters with its ELBO weight ``1 / n``, so the optimum is an empirical-Bayes
    (maximum-likelihood-type) fit. ``X`` and ``y`` are standardised inside (slope columns of uncorrelated factors
    are only scaled, since centring them would change that model) and every estimate is mapped back to the data's
    units. Prediction accepts new levels: an unseen level contributes its factor's population value 0, so a known
    site with a new subject uses the site's effect.

    Args:
        random_slopes: columns of ``X`` (names or indices) with random slopes for every factor, or a mapping
            factor -> columns. Defaults to None (random intercepts only).
        correlated: full covariance of each factor's intercept and slopes, or a mapping factor -> bool.
            Defaults to True.
        nested: nesting spec(s) over the ``groups`` columns, ``"site/subject"`` (chains ``"a/b/c"`` allowed).
            Defaults to None (all factors crossed).
        fixed_effects: ``"linear"`` or ``"mlp"``. Defaults to ``"linear"``.
        hidden: hidden widths of the MLP fixed effects. Defaults to ``(32, 32)``.
        posterior: ``"full"`` (joint Gaussian per level) or ``"diagonal"`` (mean field). Defaults to ``"full"``.
        optimizer: ``"lbfgs"`` (full batch) or ``"adam"`` (mini-batches). Defaults to ``"lbfgs"``.
        max_iter: L-BFGS iterations or Adam epochs. Defaults to 1000.
        lr: learning rate (L-BFGS step scale 1.0, Adam 0.05 when None). Defaults to None.
        batch_size: Adam mini-batch size (None: full batch). Defaults to None.
        tol: L-BFGS stops when an iteration changes the objective (the negative ELBO per sample) by less than
            ``tol``, or when no gradient entry exceeds ``1e-7`` (see :func:`train_elbo`). Defaults to 1e-10.
        conjugate_update: set the random effects' posterior in closed form before every evaluation of the ELBO
            (its exact optimum given the other parameters, :class:`ConjugatePosterior`), so the optimiser only
            iterates over the fixed effects, the noise s.d. and the variance components. None (default) does so
            whenever that optimum is exact: one grouping factor, ``posterior="full"`` (or no random slopes) and
            ``optimizer="lbfgs"``; False optimises the posterior by gradient with everything else.
        early_stopping: hold out ``validation_fraction`` of the rows of every level (:func:`validation_rows`),
            maximise the ELBO of the other rows while monitoring the held-out squared error of the prediction,
            stop after ``n_iter_no_change`` iterations without improvement and keep the parameters where it was
            lowest; then freeze the fixed-effects network and maximise the ELBO of all rows over the rest (noise
            s.d., variance components, random effects). None (default) does so for MLP fixed effects, which can
            otherwise interpolate small training sets (the maximum-likelihood noise s.d. then tends to 0); a linear
            model keeps its plain maximum-likelihood-type fit.
        validation_fraction: share of every level's rows held out for early stopping. Defaults to 0.2.
        n_iter_no_change: patience of early stopping, in L-BFGS iterations (Adam epochs). Defaults to 20.
        device: torch device. The exact fits (``method`` ``"reml"``/``"ml"``) evaluate the profiled deviance with
            numpy/scipy on the CPU when None, in torch float64 on ``device`` otherwise (``"cuda"``: a GPU; a dense
            Cholesky factor, or the block structure of a large first factor), the optimiser over the covariance
            parameters staying in scipy; the variational and marginal fits pick CUDA when available when None.
            Defaults to None.
        dtype: parameter dtype of the variational fit, a torch dtype or its name. Defaults to ``"float64"``.
        random_state: seed of the initialisation and mini-batch order. Defaults to 0.
        method: ``"reml"`` or ``"ml"``: the exact marginal likelihood (lme4's profiled deviance over the relative
            covariance factor, :class:`~monai_medl.estimators.profiled_deviance.ProfiledDeviance`), linear fixed
            effects only, where the variational arguments (``posterior``, ``optimizer``, ``lr``, ...) are unused;
            ``"marginal"``: the exact negative log-likelihood of ``y`` given the network's output ``f(x)``, with the
            random effects integrated out (:func:`~monai_medl.estimators.gaussian_marginal.gaussian_marginal_nll`,
            one grouping factor), minimised jointly over the network, the noise s.d. and the variance components
            by ``optimizer`` (``batch_size`` then counts whole levels), with the same early stopping; the effects
            are then their conditional modes (BLUPs) given the fitted network; ``"elbo"``: the variational fit
            described above. None (default): ``"reml"`` for linear fixed effects (the default of ``lme4::lmer``
            and statsmodels); for an MLP ``"marginal"`` with one grouping factor, ``"elbo"`` with several.

    Example::

        >>> import numpy as np, pandas as pd
        >>> rng = np.random.default_rng(0)
        >>> subject = np.repeat(np.arange(30), 10)
        >>> days = np.tile(np.arange(10.0), 30)
        >>> u0, u1 = rng.normal(0, 20, 30), rng.normal(0, 5, 30)
        >>> y = 250 + 10 * days + u0[subject] + u1[subject] * days + rng.normal(0, 10, 300)
        >>> df = pd.DataFrame({"days": days, "subject": subject, "y": y})
        >>> fit = MixedEffectsRegressor(random_slopes=["days"]).fit(df[["days"]], df["y"], groups=df["subject"])
        >>> vc = fit.var_corr().set_index(["grp", "var1"])["sdcor"]
        >>> bool(abs(vc[("subject", "days")] - 5) < 1.5 and abs(fit.residual_sd_ - 10) < 1.5)
        True
        >>> new = pd.DataFrame({"days": [3.0, 3.0], "subject": [0, 99]})  # subject 99 was never seen
        >>> pred = fit.predict(new[["days"]], groups=new["subject"])
        >>> bool(pred[1] == fit.predict(new[["days"]])[1])  # unseen level: the population prediction
        True
        >>> "Residual" in str(fit.summary())
        True
        >>> x = rng.uniform(-2, 2, size=(300, 1))  # a nonlinear fixed effect: MLP, exact marginal likelihood
        >>> y = np.sin(2 * x[:, 0]) + u0[subject] / 20 + rng.normal(0, 0.3, 300)
        >>> mlp = MixedEffectsRegressor(fixed_effects="mlp", hidden=(16,), max_iter=100).fit(x, y, groups=subject)
        >>> mlp.fit_info_["method"]
        'exact marginal likelihood given the network'
        >>> mlp.predict(x[:2], groups=subject[:2]).shape
        (2,)
    """

    _family = "gaussian"
    _learn_noise = True
    _conjugate = True
    _marginal = True
    _default_method = "reml"

    def _exact_methods(self) -> tuple[str, ...]:
        return ("reml", "ml")

    def _posterior_update(self, x: torch.Tensor, index: torch.Tensor, y: torch.Tensor):
        network = self.network_
        ((name, layer),) = network.random_effects.factors.items()
        layer = cast("CorrelatedRandomEffects", layer)  # nn.ModuleDict types its items as Module
        conjugate = ConjugatePosterior(layer, index[:, 0], network.random_effects.design(name, x))
        log_noise_scale = cast(torch.Tensor, network.log_noise_scale)  # a regressor's network learns the noise s.d.

        def refresh() -> None:
            with torch.no_grad():
                conjugate.update(y - network.fixed(x)[:, 0], torch.exp(2 * log_noise_scale))

        return refresh

    def _target(self, y: np.ndarray) -> np.ndarray:
        try:
            y = y.astype(float)
        except (TypeError, ValueError) as err:
            raise ValueError(f"y must be numeric for regression: {err}") from err
        if not np.isfinite(y).all():
            raise ValueError("y has missing or infinite values.")
        self._y_center, self._y_scale = float(y.mean()), float(y.std()) or 1.0
        return (y - self._y_center) / self._y_scale

    def _init_fixed(self, x: torch.Tensor, y: torch.Tensor) -> None:
        # a least-squares start puts the linear fixed effects next to their optimum (the random effects start at 0)
        if self.fixed_effects != "linear":
            return
        design = torch.cat([x, torch.ones_like(y)[:, None]], dim=1)
        coef = torch.linalg.lstsq(design, y[:, None]).solution[:, 0]
        fixed = cast(torch.nn.Linear, self.network_.fixed)  # linear fixed effects
        with torch.no_grad():
            fixed.weight.copy_(coef[:-1][None])
            fixed.bias.copy_(coef[-1:])

    def _expected_nll(self, mean: torch.Tensor, var: torch.Tensor, y: torch.Tensor, draws=None) -> torch.Tensor:
        mean, var = mean[:, 0], var[:, 0]
        log_sd = cast(torch.Tensor, self.network_.log_noise_scale)  # a regressor's network learns the noise s.d.
        return 0.5 * ((y - mean).square() + var) * torch.exp(-2 * log_sd) + log_sd + 0.5 * math.log(2 * math.pi)

    def _validation_loss(self, mean: torch.Tensor, spread: torch.Tensor, y: torch.Tensor, draws=None) -> torch.Tensor:
        # squared error of the prediction (the posterior mean): it judges the fitted function alone, while the
        # held-out expected log-likelihood also depends on the noise s.d., which shrinks on the training rows as
        # soon as the network starts fitting noise, and so turns upward long before the prediction stops improving
        return (y - mean[:, 0]).square().mean()

    def predict(self, X, groups=None) -> np.ndarray:
        """Predicted outcome in data units; ``groups=None`` (or an unseen level) gives population predictions."""
        return self.decision_function(X, groups)

    def score(self, X, y, groups=None, sample_weight=None) -> float:
        """Coefficient of determination R^2 of ``predict(X, groups)``.

        With ``groups`` it scores the conditional prediction (fixed effects plus the conditional modes of the
        known levels; an unseen level contributes 0); with ``groups=None`` the population-level prediction (every
        random effect 0).
        """
        from sklearn.metrics import r2_score

        return float(r2_score(y, self.predict(X, groups), sample_weight=sample_weight))
