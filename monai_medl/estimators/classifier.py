# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Logistic (or MLP) mixed-effects binary classification with crossed, nested and correlated random effects."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import ClassifierMixin

from monai_medl.estimators.base import MixedEffectsEstimatorBase

__all__ = ["MixedEffectsClassifier"]

_QUADRATURE_NODES = 20


class MixedEffectsClassifier(ClassifierMixin, MixedEffectsEstimatorBase):
    """Binary mixed-effects classifier ``logit P(y = 1) = f(x) + sum_factors d^T u``, fitted on the ELBO.

    Same random-effects structure, arguments and read-outs as :class:`MixedEffectsRegressor` (random effects are
    on the logit scale, there is no residual). The expected Bernoulli log-likelihood under the Gaussian
    posterior of each logit is computed by Gauss-Hermite quadrature (20 nodes), so the objective is deterministic
    and L-BFGS applies. Only the covariates are standardised.

    Example::

        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> site = np.repeat(np.arange(20), 50)
        >>> x = rng.normal(size=(1000, 1))
        >>> logit = 1.5 * x[:, 0] + rng.normal(0, 1.0, 20)[site]
        >>> y = (rng.random(1000) < 1 / (1 + np.exp(-logit))).astype(int)
        >>> clf = MixedEffectsClassifier().fit(x, y, groups=site)
        >>> clf.predict_proba(x[:2], groups=site[:2]).shape, clf.classes_.tolist()
        ((2, 2), [0, 1])
        >>> bool(0.5 < clf.var_corr()["sdcor"].iloc[0] < 1.6)
        True
    """

    _family = "binomial"
    _learn_noise = False
    _y_center, _y_scale = 0.0, 1.0

    def _target(self, y: np.ndarray) -> np.ndarray:
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            raise ValueError("y has missing or infinite values.")
        classes, encoded = np.unique(y, return_inverse=True)
        if len(classes) != 2:
            raise ValueError(f"y must have exactly two classes for MixedEffectsClassifier, got {len(classes)}.")
        self.classes_ = classes
        return encoded.astype(float)

    def _expected_nll(self, mean: torch.Tensor, var: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        nodes, weights = np.polynomial.hermite.hermgauss(_QUADRATURE_NODES)
        nodes = torch.as_tensor(nodes, dtype=mean.dtype, device=mean.device)
        weights = torch.as_tensor(weights / np.sqrt(np.pi), dtype=mean.dtype, device=mean.device)
        # E[softplus(eta)] for eta ~ N(mean, var); -log p(y | eta) = softplus(eta) - y * eta
        eta = mean[:, None] + torch.sqrt(2 * var.clamp_min(0))[:, None] * nodes
        return (F.softplus(eta) * weights).sum(-1) - y * mean

    def predict_proba(self, X, groups=None) -> np.ndarray:
        """Class probabilities ``(n, 2)`` (columns in the order of ``classes_``) at the conditional modes."""
        p = 1.0 / (1.0 + np.exp(-self.decision_function(X, groups)))
        return np.stack([1 - p, p], axis=1)

    def predict(self, X, groups=None) -> np.ndarray:
        """Most probable class; ``groups=None`` (or an unseen level) gives population predictions."""
        return self.classes_[(self.decision_function(X, groups) > 0).astype(int)]
