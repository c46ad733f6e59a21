# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""What the scikit-learn-style mixed-effects estimators share: input checks, standardisation, ELBO fit, read-outs."""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from torch import nn

from monai_medl.estimators.elbo_training import train_elbo
from monai_medl.estimators.exact_fit import (
    METHOD_LABELS,
    METHODS,
    exact_linear_predictor,
    fit_estimator_exact,
    fixed_effects_table,
)
from monai_medl.estimators.grouping import GroupEncoder, as_group_frame, has_pandas, parse_nested, pd, validation_rows
from monai_medl.estimators.mixed_model_summary import MixedModelSummary
from monai_medl.estimators.variance_intervals import interval_table

if TYPE_CHECKING:
    from monai_medl.networks.layers.correlated_random_effects import CorrelatedRandomEffects

__all__ = ["MixedEffectsEstimatorBase", "EstimatorNotFittedError"]

_FIXED = ("linear", "mlp")


class EstimatorNotFittedError(NotFittedError, RuntimeError):
    """scikit-learn's ``NotFittedError`` (also a RuntimeError, which these estimators raised before)."""


class MixedEffectsEstimatorBase(BaseEstimator):
    """Base of :class:`MixedEffectsRegressor` and :class:`MixedEffectsClassifier` (see their docstrings).

    Subclasses define ``_target`` (checks and encodes ``y``), ``_expected_nll`` (per-sample expected negative
    log-likelihood under the posterior, from the ``(batch, C)`` posterior means and variances of the linear
    predictor), the output scale ``_y_center``/``_y_scale``, and may override ``_num_outputs`` (C, 1 by default)
    and ``_likelihood_draws`` (fixed standard-normal draws per sample for a Monte-Carlo expected likelihood),
    ``_validation_loss`` (the held-out loss of early stopping; the expected negative log-likelihood by default) and,
    with ``_conjugate = True``, ``_posterior_update`` (a callable setting the random effects' posterior to its
    closed-form ELBO optimum, see :class:`~monai_medl.estimators.ConjugatePosterior`).
    """

    _default_method = "elbo"  # the fit of method=None with linear fixed effects
    _conjugate = False  # True where the random effects' posterior has a closed-form ELBO optimum
    _marginal = False  # True where the marginal likelihood given the network is exact (a Gaussian response)

    def __init__(
        self,
        random_slopes: Sequence | Mapping[str, Sequence] | None = None,
        correlated: bool | Mapping[str, bool] = True,
        nested: str | Sequence[str] | None = None,
        fixed_effects: str = "linear",
        hidden: Sequence[int] = (32, 32),
        posterior: str = "full",
        optimizer: str = "lbfgs",
        max_iter: int = 1000,
        lr: float | None = None,
        batch_size: int | None = None,
        tol: float = 1e-10,
        conjugate_update: bool | None = None,
        early_stopping: bool | None = None,
        validation_fraction: float = 0.2,
        n_iter_no_change: int = 20,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype = "float64",
        random_state: int = 0,
        method: str | None = None,
    ) -> None:
        self.random_slopes = random_slopes
        self.correlated = correlated
        self.nested = nested
        self.fixed_effects = fixed_effects
        self.hidden = hidden
        self.posterior = posterior
        self.optimizer = optimizer
        self.max_iter = max_iter
        self.lr = lr
        self.batch_size = batch_size
        self.tol = tol
        self.conjugate_update = conjugate_update
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.device = device
        self.dtype = dtype
        self.random_state = random_state
        self.method = method

    @classmethod
    def from_formula(cls, formula: str, data, **params):
        """Fit an lme4-style formula, ``"y ~ x + (x | g) + (1 | site/subject)"``, on a DataFrame; returns the fit.

        The fixed part is built by ``formulaic`` (``pip install monai-medl[formula]``: categorical coding,
        interactions, transforms); the random part uses lme4's bars (``|`` correlated, ``||`` uncorrelated, ``/``
        nesting, ``:`` a combined factor), see :func:`~monai_medl.estimators.mixed_formula.parse_mixed_formula`.
        ``params`` are the other constructor arguments (``method``, ...). ``fit.formula_.new_inputs(new_data)``
        gives ``(X, groups)`` of new rows with the training coding, for ``predict``.

        Example::

            >>> import numpy as np, pandas as pd
            >>> from monai_medl.estimators import MixedEffectsRegressor
            >>> rng = np.random.default_rng(0)
            >>> df = pd.DataFrame({"x": rng.normal(size=120), "g": np.repeat(np.arange(12), 10)})
            >>> df["y"] = 1 + 2 * df.x + rng.normal(0, 1, 12)[df.g] + rng.normal(0, 0.5, 120)
            >>> fit = MixedEffectsRegressor.from_formula("y ~ x + (x || g)", df)
            >>> fit.fit_info_["method"], list(fit.fixed_effects_.index)
            ('exact REML', ['(Intercept)', 'x'])
            >>> x, groups = fit.formula_.new_inputs(df.head(3))
            >>> fit.predict(x, groups=groups).shape
            (3,)
        """
        from monai_medl.estimators.mixed_formula import parse_mixed_formula

        spec = parse_mixed_formula(formula)
        x, y, groups, arguments = spec.inputs(data)
        clash = sorted(set(arguments) & set(params))
        if clash:
            raise ValueError(f"from_formula: {clash} come from the formula; do not pass them as well.")
        fitted = cls(**arguments, **params).fit(x, y, groups)
        fitted.formula_ = spec
        return fitted

    # ----------------------------------------------------------------------------------------- input handling
    def _features(self, X, n: int | None = None, fitting: bool = False) -> np.ndarray:
        if X is None:
            if n is None:
                raise ValueError("X is None: give X (or y, so the number of rows is known).")
            array, names = np.zeros((n, 0)), []
        elif has_pandas and isinstance(X, pd.DataFrame):
            array, names = X.to_numpy(dtype=float), [str(c) for c in X.columns]
        elif has_pandas and isinstance(X, pd.Series):
            array, names = X.to_numpy(dtype=float)[:, None], [str(X.name if X.name is not None else "x0")]
        else:
            array = np.asarray(X, dtype=float)
            array = array[:, None] if array.ndim == 1 else array
            names = [f"x{i}" for i in range(array.shape[1])] if array.ndim == 2 else []
        if array.ndim != 2:
            raise ValueError(f"X must be 2-D (samples, features), got shape {array.shape}.")
        bad = ~np.isfinite(array)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            column = names[col] if col < len(names) else f"x{col}"
            raise ValueError(
                f"X has missing or infinite values ({int(bad.sum())} entries; first at row {row}, column "
                f"{column!r}): every entry must be a finite number."
            )
        if fitting:
            self.feature_names_in_ = np.asarray(names, dtype=object)
            self.n_features_in_ = array.shape[1]
        elif array.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {array.shape[1]} features, the model was fitted with {self.n_features_in_}.")
        return array

    def _slope_columns(self, factors: Sequence[str]) -> dict[str, list[int]]:
        names = list(self.feature_names_in_)
        spec = self.random_slopes
        if spec is None:
            return {}
        if isinstance(spec, (str, int)):
            spec = [spec]
        per_factor = dict(spec) if isinstance(spec, Mapping) else {f: list(spec) for f in factors}
        unknown = set(per_factor) - set(factors)
        if unknown:
            raise ValueError(f"random_slopes names unknown grouping factors {sorted(unknown)}; factors: {factors}.")
        out = {}
        for factor, columns in per_factor.items():
            columns = [columns] if isinstance(columns, (str, int)) else list(columns)
            index = []
            for c in columns:
                if isinstance(c, str) and c in names:
                    index.append(names.index(c))
                elif isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= c < len(names):
                    index.append(int(c))
                else:
                    raise ValueError(f"random_slopes: {c!r} is not a column of X ({names}).")
            out[factor] = index
        return out

    def _correlated_for(self, factors: Sequence[str]) -> dict[str, bool]:
        if isinstance(self.correlated, Mapping):
            unknown = set(self.correlated) - set(factors)
            if unknown:
                raise ValueError(f"correlated names unknown grouping factors {sorted(unknown)}; factors: {factors}.")
            return {f: bool(self.correlated.get(f, True)) for f in factors}
        return dict.fromkeys(factors, bool(self.correlated))

    def _device(self) -> torch.device:
        if self.device is not None:
            return torch.device(self.device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def _torch_dtype(self) -> torch.dtype:
        # a string default keeps the parameter a plain value, as scikit-learn's estimator checks require
        dtype = getattr(torch, self.dtype, None) if isinstance(self.dtype, str) else self.dtype
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"dtype must be a torch dtype or its name ('float64', 'float32'), got {self.dtype!r}.")
        return dtype

    def _tensor(self, array: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.as_tensor(array, dtype=dtype or self._torch_dtype(), device=self._device_)

    # -------------------------------------------------------------------------------------------------- fit
    def fit(self, X, y, groups):
        """Fit the mixed model: exact (RE)ML (``method="reml"``/``"ml"``) or by maximising its ELBO (``"elbo"``).

        Args:
            X: fixed-effects covariates, ``(n, p)`` array or DataFrame (``None`` for an intercept-only model).
            y: outcome, length ``n``.
            groups: grouping factor(s): a 1-D array/Series (one factor), a 2-D array, a DataFrame or a mapping
                name -> array (one column per factor). Nesting is declared with the ``nested`` parameter.

        Returns:
            self.
        """
        if self.fixed_effects not in _FIXED:
            raise ValueError(f"fixed_effects must be one of {_FIXED}, got {self.fixed_effects!r}.")
        y_array = np.asarray(y)
        if y_array.ndim != 1:
            raise ValueError(f"y must be 1-D, got shape {y_array.shape}.")
        n = len(y_array)
        x = self._features(X, n=n, fitting=True)
        if len(x) != n:
            raise ValueError(f"X has {len(x)} rows but y has {n}: X must have one row per entry of y ({n}).")
        target = self._target(y_array)
        frame = as_group_frame(groups, n=n)
        self.encoder_ = GroupEncoder(parse_nested(self.nested, list(frame.columns))).fit(frame)
        clusters = self.encoder_.transform(frame)
        factors = self.encoder_.factors
        slopes = self._slope_columns(factors)
        correlated = self._correlated_for(factors)
        self.n_obs_, self.slope_columns_, self.correlated_ = n, slopes, correlated
        self.fit_method_ = self._resolve_method(factors)
        self.exact_ = None
        if self.fit_method_ not in ("elbo", "marginal"):
            self.__dict__.pop("network_", None)  # a previous variational fit's network
            start = time.perf_counter()
            exact_y = target if self._family != "gaussian" else y_array.astype(float)  # data units / 0-1 labels
            self.exact_ = fit_estimator_exact(
                x,
                exact_y,
                clusters,
                factors,
                self.encoder_.num_levels,
                slopes,
                correlated,
                self.fit_method_,
                self._family,
                self.device if self._family == "gaussian" else None,  # the Laplace fit runs on numpy/scipy
            )
            backend = "numpy/scipy" if self.exact_.model is None else self.exact_.model.backend
            self.fit_info_ = {
                "method": METHOD_LABELS[self.fit_method_],
                "iterations": self.exact_.nfev,
                "loss": self.exact_.deviance,
                "converged": self.exact_.converged,
                "seconds": time.perf_counter() - start,
                "backend": backend,
            }
            return self
        # centring a slope column re-parameterises each cluster's (intercept, slope) by an invertible linear map,
        # which a full prior covariance absorbs exactly; a diagonal one does not, so those columns stay uncentred
        uncentred = {c for f, cols in slopes.items() if not correlated[f] for c in cols}
        self.x_center_ = np.array([0.0 if j in uncentred else x[:, j].mean() for j in range(x.shape[1])])
        scale = x.std(0)
        self.x_scale_ = np.where(scale > 0, scale, 1.0)
        self._device_ = self._device()
        x_std = self._tensor((x - self.x_center_) / self.x_scale_)
        index = torch.as_tensor(clusters, device=self._device_)
        y_t = self._tensor(target)
        conjugate = self.fit_method_ == "elbo" and self._use_conjugate(factors, slopes)
        early = self._use_early_stopping()
        held_out = validation_rows(clusters, self.validation_fraction, self.random_state) if early else None
        if early and held_out.size == 0:
            warnings.warn(
                "early_stopping: no level (combination) has two rows to hold one out; fitting without early stopping.",
                stacklevel=2,
            )
            early = False
        start = time.perf_counter()
        info = self._fit_network(x_std, index, y_t, slopes, correlated, conjugate, held_out if early else None)
        info["conjugate_update"] = conjugate
        info["method"] = METHOD_LABELS[self.fit_method_]
        if "loglik" in info:  # the marginal fit's log-likelihood of the standardised y, in data units
            info["loglik"] -= n * float(np.log(self._y_scale))
        info["seconds"] = time.perf_counter() - start
        self.fit_info_ = info
        self.network_.eval()
        return self

    def _resolve_method(self, factors: Sequence[str] = ("groups",)) -> str:
        """``method`` with None resolved and checked for the grouping ``factors``: ``_default_method`` for linear
        fixed effects; for an MLP the exact marginal likelihood given the network where it exists (a Gaussian
        response, one grouping factor), else the ELBO."""
        linear = self.fixed_effects == "linear"
        method = self.method
        if method is None:
            collapsed = self._marginal and len(factors) == 1
            method = self._default_method if linear else ("marginal" if collapsed else "elbo")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS} or None, got {self.method!r}.")
        if method == "marginal" and not self._marginal:
            raise ValueError(
                f"method='marginal' needs a Gaussian response (MixedEffectsRegressor), not this "
                f"{type(self).__name__}; use method='elbo' or None."
            )
        if method == "marginal" and len(factors) != 1:
            raise ValueError(
                f"method='marginal' integrates out one grouping factor, got {len(factors)} ({list(factors)}): use "
                "method='elbo' for crossed or nested factors."
            )
        if method not in ("elbo", "marginal") and (method not in self._exact_methods() or not linear):
            raise ValueError(
                f"method={method!r} needs fixed_effects='linear' and is one of {self._exact_methods()} for this "
                f"{type(self).__name__} (fixed_effects={self.fixed_effects!r}); use method='elbo' or None."
            )
        return method

    def _exact_methods(self) -> tuple[str, ...]:
        """The non-variational fits this estimator has (``"reml"``/``"ml"`` Gaussian, ``"laplace"`` binomial)."""
        return ()

    def _use_conjugate(self, factors: Sequence[str], slopes: Mapping[str, Sequence[int]]) -> bool:
        """Whether the random effects' posterior is updated in closed form (:class:`ConjugatePosterior`)."""
        exact = (
            self._conjugate
            and self.optimizer == "lbfgs"
            and len(factors) == 1
            and (self.posterior == "full" or not slopes.get(factors[0]))
        )
        if self.conjugate_update is None:
            return exact
        if self.conjugate_update and not exact:
            raise ValueError(
                "conjugate_update=True needs a Gaussian likelihood (regression), optimizer='lbfgs', one grouping "
                "factor and posterior='full' (or no random slopes); use None or False here."
            )
        return bool(self.conjugate_update)

    def _use_early_stopping(self) -> bool:
        early = self.fixed_effects == "mlp" if self.early_stopping is None else bool(self.early_stopping)
        if early and self.n_iter_no_change < 1:
            raise ValueError(f"n_iter_no_change must be >= 1, got {self.n_iter_no_change}.")
        if early and not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}.")
        return early

    def _fit_network(self, x, index, y, slopes, correlated, conjugate: bool, held_out=None) -> dict:
        """Build the network from ``random_state`` and maximise the ELBO of rows ``(x, index, y)``.

        ``held_out``: validation rows for early stopping (None: none). Stage 1 maximises the ELBO of the other
        rows, monitoring ``_validation_loss`` on the held-out ones, and keeps the parameters where it was lowest
        (:func:`train_elbo`); stage 2 freezes the fixed-effects network and maximises the ELBO of every row over the
        rest (noise s.d., variance components, random effects).
        """
        # imported here: the networks package imports MONAI, which the exact path and the import never need
        from monai_medl.networks.layers.grouped_random_effects import GroupedRandomEffects
        from monai_medl.networks.nets.grouped_mixed_effects_net import GroupedMixedEffectsNet

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_state)
            outputs = self._num_outputs()
            fixed = self._fixed_network(x.shape[1], outputs)
            random_effects = GroupedRandomEffects(
                self.encoder_.num_levels, slopes, correlated=correlated, posterior=self.posterior, out_channels=outputs
            )
            self.network_ = GroupedMixedEffectsNet(fixed, random_effects, learn_noise_scale=self._learn_noise)
            self.network_.to(device=self._device_, dtype=self._torch_dtype())
            self._init_fixed(x, y)
            generator = torch.Generator().manual_seed(self.random_state)
            self.network_.train()
            if held_out is None:
                return self._maximise_elbo(x, index, y, conjugate, generator)
            rows = torch.as_tensor(np.setdiff1d(np.arange(len(y)), held_out), device=self._device_)
            valid = torch.as_tensor(held_out, device=self._device_)
            validation = (x[valid], index[valid], y[valid])
            search = self._maximise_elbo(x[rows], index[rows], y[rows], conjugate, generator, validation)
            frozen = [p for p in self.network_.fixed.parameters() if p.requires_grad]
            for p in frozen:
                p.requires_grad_(False)
            info = self._maximise_elbo(x, index, y, conjugate, generator)
            for p in frozen:
                p.requires_grad_(True)
        info["early_stopping"] = {
            "validation_rows": int(len(held_out)),
            "best_iteration": search["best_iteration"],
            "stopped_at": search["iterations"],
            "validation_loss": search["best_monitor"],
        }
        return info

    def _maximise_elbo(self, x, index, y, conjugate: bool, generator: torch.Generator, validation=None) -> dict:
        """One :func:`train_elbo` run on rows ``(x, index, y)`` over the network's trainable parameters (with
        ``method="marginal"`` one :func:`train_marginal` run)."""
        if self.fit_method_ == "marginal":
            from monai_medl.estimators.marginal_training import train_marginal

            return train_marginal(self.network_, x, index, y, validation, **self._train_args(generator))
        n = len(y)
        draws = self._likelihood_draws(n, generator)
        draws = None if draws is None else draws.to(device=self._device_, dtype=self._torch_dtype())
        refresh, posterior = None, []
        if conjugate:
            # the posterior is set in closed form before every evaluation: no gradients for it
            refresh = self._posterior_update(x, index, y)
            layers = self.network_.random_effects.factors.values()
            posterior = [
                p
                for layer in layers
                for p in cast("CorrelatedRandomEffects", layer).posterior_parameters()
                if p.requires_grad
            ]
            for p in posterior:
                p.requires_grad_(False)

        def objective(rows: torch.Tensor | None) -> torch.Tensor:
            if refresh is not None:
                refresh()  # the posterior's exact optimum at the current parameters (rows is None: L-BFGS)
            xb, cb, yb = (x, index, y) if rows is None else (x[rows], index[rows], y[rows])
            db = draws if draws is None or rows is None else draws[rows.to(draws.device)]
            mean, spread = self.network_.moments(xb, cb, full_covariance=draws is not None)
            return self._expected_nll(mean, spread, yb, db).mean() + self.network_.kl() / n

        monitor = None
        if validation is not None:
            xv, cv, yv = validation
            dv = self._likelihood_draws(len(yv), generator)
            dv = None if dv is None else dv.to(device=self._device_, dtype=self._torch_dtype())

            def monitor() -> float:
                with torch.no_grad():
                    if refresh is not None:
                        refresh()
                    mean, spread = self.network_.moments(xv, cv, full_covariance=dv is not None)
                    return float(self._validation_loss(mean, spread, yv, dv))

        info = train_elbo(
            objective, list(self.network_.parameters()), n, monitor=monitor, **self._train_args(generator)
        )
        if refresh is not None:
            refresh()  # the posterior at the returned parameters (early stopping may restore earlier ones)
        for p in posterior:
            p.requires_grad_(True)
        return info

    def _train_args(self, generator: torch.Generator) -> dict:
        """The optimiser settings :func:`train_elbo` takes from the constructor."""
        return {
            "optimizer": self.optimizer,
            "max_iter": self.max_iter,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "tol": self.tol,
            "generator": generator,
            "device": self._device_,
            "patience": self.n_iter_no_change,
        }

    def _validation_loss(self, mean: torch.Tensor, spread: torch.Tensor, y: torch.Tensor, draws=None) -> torch.Tensor:
        """Held-out loss monitored for early stopping (default: the expected negative log-likelihood)."""
        return self._expected_nll(mean, spread, y, draws).mean()

    def _posterior_update(self, x: torch.Tensor, index: torch.Tensor, y: torch.Tensor):
        """A callable setting the random effects' posterior to its exact optimum (regression only, see
        :class:`ConjugatePosterior`)."""
        raise NotImplementedError

    def _num_outputs(self) -> int:
        """Number of output channels ``C`` of the linear predictor (1; C-class classification: C)."""
        return 1

    def _likelihood_draws(self, n: int, generator: torch.Generator) -> torch.Tensor | None:
        """Fixed standard-normal draws per sample for a Monte-Carlo expected likelihood (None: closed form).

        When given, ``_expected_nll`` receives the ``(batch, C, C)`` posterior covariance of the linear predictor
        instead of its variances.
        """
        return None

    def _fixed_network(self, in_features: int, out_features: int = 1) -> nn.Module:
        from monai_medl.networks.nets.me_mlp import glorot_init_

        if self.fixed_effects == "linear":
            return nn.Linear(in_features, out_features)
        layers, width = [], in_features
        for units in self.hidden:
            layers += [nn.Linear(width, units), nn.ReLU()]
            width = units
        return glorot_init_(nn.Sequential(*layers, nn.Linear(width, out_features)))

    def _init_fixed(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Start linear fixed effects at the least-squares fit (subclasses may override)."""

    # --------------------------------------------------------------------------------------------- predict
    def _check_fitted(self) -> None:
        if not hasattr(self, "fit_method_"):
            raise EstimatorNotFittedError(
                f"this {type(self).__name__} is not fitted yet: call fit(X, y, groups) first."
            )

    def decision_function(self, X, groups=None) -> np.ndarray:
        """Linear predictor in data units (the outcome scale for regression, the logit for classification).

        ``(n,)``, or ``(n, C)`` (one logit per class, columns in the order of ``classes_``) for a C-class model.
        ``groups=None`` gives population-level predictions (every random effect 0). A level not seen in training
        contributes its factor's population value 0, while the other factors' effects still apply.
        """
        self._check_fitted()
        x = self._features(X, n=None if groups is None else len(as_group_frame(groups)))
        if self.exact_ is not None:
            clusters = None if groups is None else self.encoder_.transform(as_group_frame(groups, n=len(x)))
            return exact_linear_predictor(self.exact_, x, clusters, self.encoder_.factors, self.slope_columns_)
        x_std = self._tensor((x - self.x_center_) / self.x_scale_)
        clusters = None
        if groups is not None:
            clusters = torch.as_tensor(self.encoder_.transform(as_group_frame(groups, n=len(x))), device=x_std.device)
        with torch.no_grad():
            out = self.network_.eval()(x_std, clusters).cpu().numpy()
        out = out[:, 0] if out.shape[1] == 1 else out
        return self._y_center + self._y_scale * out

    # ------------------------------------------------------------------------------------------- read-outs
    def _transform(self, factor: str) -> np.ndarray:
        """``A`` with ``u_data = A u_standardised`` for one factor's effect vector (intercept first)."""
        columns = self.slope_columns_.get(factor, [])
        q = len(columns) + 1
        t = np.eye(q)
        for i, c in enumerate(columns, start=1):
            t[i, i] = 1.0 / self.x_scale_[c]
            t[i, 0] = -self.x_center_[c] / self.x_scale_[c]
        return self._y_scale * t.T

    def _channel_labels(self) -> list | None:
        """Labels of the output channels when there are several (the classes of a C-class model), else None."""
        return None

    def _channel(self, cls) -> int:
        """Output channel of class ``cls`` (0 for a single-output model, where ``cls`` must be None)."""
        labels = self._channel_labels()
        if labels is None:
            if cls is not None:
                raise ValueError("cls is only for a model with one output per class; this one has one output.")
            return 0
        matches = [i for i, label in enumerate(labels) if label == cls]
        if cls is None or not matches:
            raise ValueError(f"cls must be one of the classes {list(labels)} (effects are per class), got {cls!r}.")
        return matches[0]

    def term_names(self, factor: str) -> list[str]:
        """Names of a factor's random-effect terms: ``(Intercept)`` and the slope columns."""
        self._check_fitted()
        return ["(Intercept)", *[str(self.feature_names_in_[c]) for c in self.slope_columns_.get(factor, [])]]

    def covariance(self, factor: str, cls=None) -> np.ndarray:
        """Estimated covariance of a factor's random effects in data units, ``(q, q)``.

        A C-class classifier has independent random effects per class: ``cls`` (one of ``classes_``) picks them.
        """
        self._check_fitted()
        self._check_factor(factor)
        block = self._channel_block(factor, self._channel(cls))
        if self.exact_ is not None:
            return self.exact_.covariances[self.encoder_.factors.index(factor)].copy()
        a = self._transform(factor)
        layer = cast("CorrelatedRandomEffects", self.network_.random_effects.factors[factor])
        cov = layer.prior_covariance().detach().cpu().double().numpy()
        return a @ cov[block, block] @ a.T

    def _channel_block(self, factor: str, channel: int) -> slice:
        """Positions of one output channel's terms in a factor's effect vector (channels are consecutive blocks)."""
        q = len(self.slope_columns_.get(factor, [])) + 1
        return slice(channel * q, (channel + 1) * q)

    def _check_factor(self, factor: str) -> None:
        if factor not in self.encoder_.factors:
            raise ValueError(f"unknown grouping factor {factor!r}; factors: {self.encoder_.factors}.")

    @property
    def residual_sd_(self) -> float | None:
        """Residual s.d. in data units (regression), else None."""
        self._check_fitted()
        if self.exact_ is not None:
            return self.exact_.sigma if self.exact_.family == "gaussian" else None
        noise = self.network_.log_noise_scale
        return None if noise is None else float(noise.detach().exp()) * self._y_scale

    @property
    def fixed_effects_(self):
        """Fixed-effects coefficients in data units (linear fixed effects only).

        A ``pandas.Series``, or for a C-class classifier a DataFrame (terms x classes) centred to sum to zero over
        the classes in every row (softmax logits are identified only up to a shift common to all classes).
        """
        self._check_fitted()
        if self.fixed_effects != "linear":
            raise AttributeError("fixed_effects_ exists for fixed_effects='linear' only (an MLP has no coefficients).")
        index = ["(Intercept)", *self.feature_names_in_]
        if self.exact_ is not None:
            return pd.Series(self.exact_.beta, index=index, name="estimate")
        linear: nn.Linear = self.network_.fixed
        w = linear.weight.detach().cpu().double().numpy() * self._y_scale / self.x_scale_  # (C, p)
        bias = linear.bias.detach().cpu().double().numpy()
        intercept = self._y_center + self._y_scale * bias - w @ self.x_center_
        table = np.column_stack([intercept, w])  # (C, 1 + p)
        labels = self._channel_labels()
        if labels is None:
            return pd.Series(table[0], index=index, name="estimate")
        table = table - table.mean(0, keepdims=True)
        return pd.DataFrame(table.T, index=index, columns=pd.Index(labels, name="class"))

    def var_corr(self):
        """lme4 ``as.data.frame(VarCorr(fit))``: one row per variance, covariance and the residual, in data units.

        Columns ``grp`` (lme4-style factor name, ``subject:site`` when nested), ``var1``, ``var2`` (None for a
        variance), ``vcov`` (variance or covariance) and ``sdcor`` (s.d. or correlation). A C-class classifier
        has independent random effects per class, each with its own variance components: its table has an extra
        column ``class`` (after ``grp``) naming the class whose logit the effects shift.
        """
        self._check_fitted()
        labels = self._channel_labels()
        rows = []
        for factor in self.encoder_.factors:
            names, grp = self.term_names(factor), self.encoder_.label(factor)
            correlated = self.correlated_[factor]
            for cls in [None] if labels is None else labels:
                cov = self.covariance(factor, cls)
                sd = np.sqrt(np.diag(cov))
                tag = {} if labels is None else {"class": cls}
                rows += [
                    {"grp": grp, **tag, "var1": n, "var2": None, "vcov": cov[i, i], "sdcor": sd[i]}
                    for i, n in enumerate(names)
                ]
                for i in range(len(names) if correlated else 0):
                    for j in range(i):
                        corr = cov[i, j] / (sd[i] * sd[j]) if sd[i] * sd[j] > 0 else 0.0
                        rows.append(
                            {"grp": grp, **tag, "var1": names[j], "var2": names[i], "vcov": cov[i, j], "sdcor": corr}
                        )
        if self.residual_sd_ is not None:
            rows.append(
                {
                    "grp": "Residual",
                    "var1": None,
                    "var2": None,
                    "vcov": self.residual_sd_**2,
                    "sdcor": self.residual_sd_,
                }
            )
        return pd.DataFrame(rows)

    def random_effects(self, factor: str | None = None):
        """Conditional modes (posterior means) per level in data units, like lme4's ``ranef``.

        Returns a DataFrame (levels x terms) for ``factor``, or a dict factor -> DataFrame when ``factor`` is None.
        A nested factor's index has one level per column of its path (``site``, ``subject``). For a C-class
        classifier the columns are a MultiIndex ``(class, term)``.
        """
        self._check_fitted()
        if factor is None:
            return {f: self.random_effects(f) for f in self.encoder_.factors}
        self._check_factor(factor)
        names = self.term_names(factor)
        if self.exact_ is not None:
            b = self.exact_.b[self.encoder_.factors.index(factor)]
            return pd.DataFrame(b, index=self.encoder_.levels[factor], columns=names)
        a = self._transform(factor)
        loc = (
            cast("CorrelatedRandomEffects", self.network_.random_effects.factors[factor])
            .loc.detach()
            .cpu()
            .double()
            .numpy()
        )
        labels = self._channel_labels()
        blocks = [loc[:, self._channel_block(factor, c)] @ a.T for c in range(1 if labels is None else len(labels))]
        columns = names if labels is None else pd.MultiIndex.from_product([labels, names], names=["class", "term"])
        return pd.DataFrame(np.concatenate(blocks, axis=1), index=self.encoder_.levels[factor], columns=columns)

    ranef = random_effects

    def summary(self, intervals: str | None = None) -> MixedModelSummary:
        """lme4-style summary in data units: the fit used (exact REML / ML or variational ELBO), variance
        components with correlations, fixed effects (with s.e., t and Wald intervals for an exact fit), the
        criteria (REML criterion or log-likelihood, AIC, BIC) and group counts; with ``intervals`` ``"profile"``
        or ``"bootstrap"`` also :meth:`confint`'s 95% intervals (exact fits)."""
        self._check_fitted()
        fixed = self.fixed_effects_ if self.fixed_effects == "linear" else None
        criteria = {}
        if self.exact_ is not None:
            fixed = self.fixed_effects_table()
            criteria = {"logLik": self.loglik_, "AIC": self.aic_, "BIC": self.bic_}
            criteria["REML criterion" if self.exact_.reml else "deviance"] = self.exact_.deviance
        elif self.fit_method_ == "marginal":
            criteria = {"logLik given the network": self.fit_info_["loglik"]}
        return MixedModelSummary(
            model=type(self).__name__,
            family=self._family,
            var_corr=self.var_corr(),
            fixed_effects=fixed,
            num_obs=self.n_obs_,
            num_levels={self.encoder_.label(f): n for f, n in self.encoder_.num_levels.items()},
            fit_info=dict(self.fit_info_),
            method=METHOD_LABELS[self.fit_method_],
            criteria=criteria,
            intervals=None if intervals is None else self.confint(intervals),
            intervals_method=intervals,
        )

    # ----------------------------------------------------------------------------- inference (exact fits)
    def _exact_fit(self, what: str):
        self._check_fitted()
        if self.exact_ is None:
            raise AttributeError(
                f"{what} needs a likelihood fit of linear fixed effects (method 'reml', 'ml' or 'laplace'), not the "
                f"{METHOD_LABELS[self.fit_method_]}."
            )
        return self.exact_

    def fixed_effects_table(self, level: float = 0.95):
        """Fixed effects with standard errors, t values and Wald ``level`` intervals (exact fits), a DataFrame
        indexed by term with columns ``estimate``, ``std_error``, ``t_value``, ``ci_lower``, ``ci_upper``."""
        fit = self._exact_fit("fixed_effects_table")
        return fixed_effects_table(fit, ["(Intercept)", *self.feature_names_in_], level)

    def confint(self, method: str = "profile", level: float = 0.95, nsim: int = 200, random_state: int | None = 0):
        """Confidence intervals for the variance components, the residual s.d. and the fixed effects (lme4's
        ``confint(fit, oldNames = FALSE)``; exact fits).

        Args:
            method: ``"profile"`` (Gaussian fits): profile likelihood on the ML deviance, as lme4 (a REML fit is
                profiled at its ML refit, whose estimates the ``estimate`` column shows); ``"bootstrap"`` (every
                family): percentile parametric bootstrap of ``nsim`` refits.
            level: confidence level.
            nsim: bootstrap refits; ``random_state``: their seed.

        Returns:
            DataFrame indexed ``sd_<term>|<group>``, ``cor_<term>.<term>|<group>``, ``sigma`` and the fixed effects,
            with columns ``estimate`` and the lower and upper limits (``"2.5 %"``, ``"97.5 %"``).

        Example::

            >>> import numpy as np
            >>> rng = np.random.default_rng(0)
            >>> g = np.repeat(np.arange(8), 6)
            >>> y = 10 + rng.normal(0, 2, 8)[g] + rng.normal(0, 1, 48)
            >>> from monai_medl.estimators import MixedEffectsRegressor
            >>> table = MixedEffectsRegressor(method="ml").fit(None, y, groups=g).confint()
            >>> table.index.tolist(), table.columns.tolist()
            (['sd_(Intercept)|group', 'sigma', '(Intercept)'], ['estimate', '2.5 %', '97.5 %'])
            >>> bool((table["2.5 %"] < table["estimate"]).all() and (table["estimate"] < table["97.5 %"]).all())
            True
        """
        fit = self._exact_fit("confint")
        factors = [(self.encoder_.label(f), self.term_names(f)) for f in self.encoder_.factors]
        names = ["(Intercept)", *self.feature_names_in_]
        return interval_table(fit, factors, names, method, level, nsim, random_state)

    @property
    def fixed_effects_cov_(self) -> np.ndarray:
        """Covariance of the fixed-effects estimates, ``sigma^2 (R_X^T R_X)^{-1}`` (lme4's ``vcov``; exact fits)."""
        return self._exact_fit("fixed_effects_cov_").cov_beta.copy()

    @property
    def loglik_(self) -> float:
        """Maximised log-likelihood (ML fit) or REML log-likelihood (REML fit), as lme4's ``logLik``."""
        return self._exact_fit("loglik_").loglik

    @property
    def deviance_(self) -> float:
        """``-2 loglik_``: the ML deviance of an ML fit, the REML criterion of a REML fit."""
        return self._exact_fit("deviance_").deviance

    @property
    def reml_criterion_(self) -> float | None:
        """lme4's ``REMLcrit``: the REML criterion at the optimum of a REML fit (None for an ML fit)."""
        fit = self._exact_fit("reml_criterion_")
        return fit.deviance if fit.reml else None

    @property
    def n_params_(self) -> int:
        """Parameters counted by AIC and BIC: fixed effects, covariance parameters, residual variance."""
        return self._exact_fit("n_params_").num_params

    @property
    def aic_(self) -> float:
        """Akaike's criterion, ``-2 loglik_ + 2 n_params_``."""
        return -2 * self.loglik_ + 2 * self.n_params_

    @property
    def bic_(self) -> float:
        """Bayesian criterion, ``-2 loglik_ + log(n) n_params_`` (``n`` rows, as lme4)."""
        return -2 * self.loglik_ + np.log(self.n_obs_) * self.n_params_

    def conditional_variances(self, factor: str) -> np.ndarray:
        """Covariance of each level's effects given the data, ``(levels, terms, terms)`` in data units, levels in
        the order of :meth:`random_effects` (lme4's ``condVar``, fixed effects at their estimate; exact fits)."""
        fit = self._exact_fit("conditional_variances")
        self._check_factor(factor)
        return fit.conditional_covariances(self.encoder_.factors.index(factor))
