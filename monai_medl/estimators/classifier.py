# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Logistic / multinomial (or MLP) mixed-effects classification with crossed, nested and correlated random effects."""

from __future__ import annotations

from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import ClassifierMixin
from sklearn.preprocessing import LabelEncoder

from monai_medl.estimators.base import MixedEffectsEstimatorBase
from monai_medl.estimators.grouping import pd

__all__ = ["MixedEffectsClassifier"]

_QUADRATURE_NODES = 20
_MC_SAMPLES = 32  # Monte-Carlo draws per sample of the C-class expected log-likelihood (16 antithetic pairs)


class MixedEffectsClassifier(ClassifierMixin, MixedEffectsEstimatorBase):
    """Mixed-effects classifier for two or more classes, fitted on the evidence lower bound (ELBO).

    **Two classes**: ``logit P(y = classes_[1]) = f(x) + sum_factors d^T u``, with the same random-effects
    structure, arguments and read-outs as :class:`MixedEffectsRegressor` (random effects on the logit scale, no
    residual). The expected Bernoulli log-likelihood under the Gaussian posterior of each logit is computed by
    Gauss-Hermite quadrature (20 nodes), so the objective is deterministic.

    **C > 2 classes**: a softmax (multinomial) model with one logit per class, ``eta_c = f_c(x) + sum_factors
    d^T u_{f,c}``: every grouping factor has, for every class, its own random intercept (and the random slopes
    asked for), independent across classes, each class with its own variance components (``var_corr()`` has a
    ``class`` column, ``random_effects()`` columns ``(class, term)``, ``covariance(factor, cls)``). Softmax logits
    are identified only up to a shift common to all classes; independent per-class effects remain identifiable
    for C > 2 (the covariances of the logit differences determine every class's s.d.), and ``fixed_effects_`` is
    reported centred over the classes. The expected log-softmax likelihood has no one-dimensional quadrature, so
    it is estimated by Monte Carlo with the reparameterisation ``eta = mean + sd * eps``: 32 standard-normal draws
    per sample (16 antithetic pairs), drawn once from ``random_state`` and held fixed during the fit (a sample-
    average approximation), which keeps the objective deterministic for L-BFGS; the KL term stays closed-form.

    Early stopping (``early_stopping``, on by default for MLP fixed effects; see :class:`MixedEffectsRegressor`)
    monitors the held-out expected negative log-likelihood. Only the covariates are standardised.
    ``predict_proba`` gives the class probabilities at the conditional modes (columns in the order of ``classes_``,
    rows sum to 1); ``predict`` returns labels of ``y``'s own type (scikit-learn's ``LabelEncoder`` order). An
    unseen level (or ``groups=None``) gives the population prediction.

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
        >>> # three classes with string labels: per-class random intercepts
        >>> eta = np.stack([0 * x[:, 0], x[:, 0], -x[:, 0]], 1) + rng.normal(0, 1.0, (20, 3))[site]
        >>> labels = np.array(["a", "b", "c"])[(rng.random((1000, 1)) > np.cumsum(
        ...     np.exp(eta) / np.exp(eta).sum(1, keepdims=True), 1)).sum(1)]
        >>> clf3 = MixedEffectsClassifier().fit(x, labels, groups=site)
        >>> proba = clf3.predict_proba(x[:3], groups=[0, 1, 99])  # site 99 is new: population prediction
        >>> proba.shape, bool(np.allclose(proba.sum(1), 1)), clf3.predict(x[:1]).tolist()[0] in {"a", "b", "c"}
        ((3, 3), True, True)
        >>> clf3.var_corr()[["grp", "class", "var1"]].values.tolist()
        [['group', 'a', '(Intercept)'], ['group', 'b', '(Intercept)'], ['group', 'c', '(Intercept)']]
    """

    _learn_noise = False
    _y_center, _y_scale = 0.0, 1.0

    @property
    def _family(self) -> str:
        return "binomial" if len(self.classes_) == 2 else "multinomial"

    def _target(self, y: np.ndarray) -> np.ndarray:
        missing = pd.isna(y) if y.dtype.kind == "O" else (~np.isfinite(y) if y.dtype.kind == "f" else None)
        if missing is not None and missing.any():
            raise ValueError(
                f"y has missing or infinite values ({int(missing.sum())} entries; first at row "
                f"{int(np.argmax(missing))}): every entry must be a class label."
            )
        encoder = LabelEncoder()
        try:
            encoded = encoder.fit_transform(y)
        except TypeError as err:
            raise ValueError(f"y mixes label types that cannot be ordered (e.g. strings and numbers): {err}") from err
        if len(encoder.classes_) < 2:
            raise ValueError(
                f"y has a single class {encoder.classes_.tolist()}: MixedEffectsClassifier needs at least two."
            )
        self.classes_ = encoder.classes_
        return encoded.astype(float)

    def _exact_methods(self) -> tuple[str, ...]:
        return ("laplace",) if len(getattr(self, "classes_", ())) == 2 else ()

    def _num_outputs(self) -> int:
        return 1 if len(self.classes_) == 2 else len(self.classes_)

    def _channel_labels(self) -> list | None:
        return None if len(self.classes_) == 2 else self.classes_.tolist()

    def _likelihood_draws(self, n: int, generator: torch.Generator) -> torch.Tensor | None:
        if len(self.classes_) == 2:
            return None
        eps = torch.randn(n, _MC_SAMPLES // 2, len(self.classes_), generator=generator, dtype=torch.float64)
        return torch.cat([eps, -eps], dim=1)  # antithetic pairs: the first-order noise of the estimate cancels

    def _init_fixed(self, x: torch.Tensor, y: torch.Tensor) -> None:
        # linear fixed effects start at the empirical class log-frequencies (zero slopes)
        if self.fixed_effects != "linear" or len(self.classes_) == 2:
            return
        counts = torch.bincount(y.long(), minlength=len(self.classes_)).to(x.dtype)
        fixed = cast(torch.nn.Linear, self.network_.fixed)  # linear fixed effects
        with torch.no_grad():
            fixed.weight.zero_()
            fixed.bias.copy_(counts.log() - counts.log().mean())

    def _expected_nll(
        self, mean: torch.Tensor, var: torch.Tensor, y: torch.Tensor, draws: torch.Tensor | None = None
    ) -> torch.Tensor:
        if draws is not None:
            # C classes: -E[log softmax(eta)_y], eta ~ N(mean, cov) (``var`` is the (batch, C, C) covariance: the
            # classes' effects of one level are jointly Gaussian), by reparameterised Monte Carlo
            jitter = 1e-10 * torch.eye(var.shape[-1], dtype=var.dtype, device=var.device)
            chol = torch.linalg.cholesky(var + jitter)
            eta = mean.unsqueeze(1) + draws @ chol.transpose(-1, -2)  # (batch, S, C)
            log_p = torch.log_softmax(eta, dim=-1)
            picked = log_p.gather(-1, y.long()[:, None, None].expand(-1, eta.shape[1], 1))
            return -picked[..., 0].mean(1)
        mean, var = mean[:, 0], var[:, 0]
        gauss_nodes, gauss_weights = np.polynomial.hermite.hermgauss(_QUADRATURE_NODES)
        nodes = torch.as_tensor(gauss_nodes, dtype=mean.dtype, device=mean.device)
        weights = torch.as_tensor(gauss_weights / np.sqrt(np.pi), dtype=mean.dtype, device=mean.device)
        # E[softplus(eta)] for eta ~ N(mean, var); -log p(y | eta) = softplus(eta) - y * eta
        eta = mean[:, None] + torch.sqrt(2 * var.clamp_min(0))[:, None] * nodes
        return (F.softplus(eta) * weights).sum(-1) - y * mean

    def predict_proba(self, X, groups=None) -> np.ndarray:
        """Class probabilities ``(n, C)`` (columns in the order of ``classes_``, rows sum to 1) at the modes."""
        scores = self.decision_function(X, groups)
        if scores.ndim == 1:
            p = 1.0 / (1.0 + np.exp(-scores))
            return np.stack([1 - p, p], axis=1)
        return torch.softmax(torch.as_tensor(scores), dim=1).numpy()

    def predict(self, X, groups=None) -> np.ndarray:
        """Most probable class (a label of ``classes_``); ``groups=None`` or an unseen level: the population."""
        scores = self.decision_function(X, groups)
        if scores.ndim == 1:
            return self.classes_[(scores > 0).astype(int)]
        return self.classes_[scores.argmax(1)]

    def score(self, X, y, groups=None, sample_weight=None) -> float:
        """Accuracy of ``predict(X, groups)``: the conditional prediction (known levels' conditional modes) when
        ``groups`` is given, the population-level prediction (every random effect 0) when it is None."""
        from sklearn.metrics import accuracy_score

        return float(accuracy_score(y, self.predict(X, groups), sample_weight=sample_weight))
