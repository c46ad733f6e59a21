# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""scikit-learn-style mixed-effects estimators for tabular data (crossed, nested and correlated random effects)."""

from __future__ import annotations

from .base import EstimatorNotFittedError, MixedEffectsEstimatorBase
from .classifier import MixedEffectsClassifier
from .conjugate_posterior import ConjugatePosterior
from .elbo_training import train_elbo
from .exact_fit import fixed_effects_table
from .grouping import GroupEncoder, as_group_frame, parse_nested, validation_rows
from .likelihood_ratio import anova
from .mixed_formula import MixedFormula, parse_mixed_formula
from .mixed_model_summary import MixedModelSummary
from .poisson import MixedEffectsPoissonRegressor
from .profiled_deviance import ExactLmmFit, ProfiledDeviance, RandomTerm, fit_exact_lmm
from .regressor import MixedEffectsRegressor
