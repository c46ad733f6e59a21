# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The power model of the MRI benchmark's design: the paired t-test's power, the minimum detectable effect and the
power of a design under the variance model ``benchmarks/results/mri_power.json`` holds.

:mod:`benchmarks.mri` states the power of its design in its plan from here; :mod:`benchmarks.mri_power` fits the
variance model (a committed run plus a pilot, see its docstring) and writes the file. This module imports neither,
so the two depend on it and not on each other.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scipy import optimize, stats

from benchmarks._common import DEFAULT_OUT
from monai_medl.data.synthetic.mri_cohort import site_sizes

__all__ = [
    "POWER_FILE",
    "design_power",
    "load_power",
    "minimum_detectable_effect",
    "paired_t_power",
    "required_repeats",
    "sd_at",
    "seen_sites",
]

POWER_FILE = DEFAULT_OUT / "mri_power.json"


def paired_t_power(difference: float, sd: float, repeats: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test at level ``alpha`` with ``repeats`` pairs of s.d. ``sd``."""
    df = repeats - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = difference * math.sqrt(repeats) / sd
    power = float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
    return power if math.isfinite(power) else float(nc > crit)  # scipy's nct fails far in the tail


def minimum_detectable_effect(sd: float, repeats: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """The difference the paired t-test detects with ``power`` (two-sided, level ``alpha``).

    Example::

        >>> round(minimum_detectable_effect(0.03, 20), 4)
        0.0198
    """
    upper = 30 * sd / math.sqrt(repeats) + stats.t.ppf(1 - alpha / 2, repeats - 1) * sd  # power ~1 there
    return float(optimize.brentq(lambda d: paired_t_power(d, sd, repeats, alpha) - power, 1e-9, upper))


def required_repeats(difference: float, sd: float, power: float = 0.8, alpha: float = 0.05) -> int:
    """The fewest repeats (>= 2) whose paired t-test detects ``difference`` with ``power``."""
    repeats = 2
    while paired_t_power(difference, sd, repeats, alpha) < power:
        repeats += 1
    return repeats


def sd_at(n: float, variance: Mapping[str, float]) -> float:
    """The s.d. of the paired differences at ``n`` unseen scans under the variance model ``variance``."""
    return math.sqrt(variance["train"] + variance["test_constant"] / n)


def seen_sites(cohort: Mapping[str, Any]) -> set[str]:
    """The seen sites of a cohort of :func:`~monai_medl.data.synthetic.mri_cohort.generate_mri_cohort` settings."""
    sizes = list(site_sizes(**cohort))
    unseen = cohort.get("unseen_sites", 2)
    count = unseen if isinstance(unseen, int) else len(unseen)
    return set(sizes[: len(sizes) - count])


def load_power(path: str | os.PathLike = POWER_FILE) -> dict[str, Any]:
    """The power analysis :mod:`benchmarks.mri_power` wrote (the ``analysis`` of ``mri_power.json``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `python -m benchmarks.mri_power` first.")
    record = json.loads(path.read_text())
    if "analysis" not in record:
        raise KeyError(
            f"{path} has no 'analysis' (status {record.get('status', 'unknown')!r}): rerun benchmarks.mri_power."
        )
    return record["analysis"]


def design_power(cfg: Mapping[str, Any], power: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The MDE (and power at the target difference) of the design in ``cfg`` (its repeats and cohort) under the
    variance model of ``power`` (default: :func:`load_power`), for the run's plan."""
    power = load_power() if power is None else power
    seen = seen_sites(cfg["cohort"])
    n = sum(v for s, v in site_sizes(**cfg["cohort"]).items() if s not in seen)
    sd = sd_at(n, power["variance"])
    target = power["target"]
    repeats = int(cfg["repeats"])
    return {
        "comparison": f"{target['model']} - {target['reference']}, unseen-site AUROC, paired t over repeats",
        "repeats": repeats,
        "unseen_scans": n,
        "expected_sd_of_paired_differences": round(sd, 5),
        "minimum_detectable_effect": round(minimum_detectable_effect(sd, repeats, target["power"], target["alpha"]), 4),
        "power_at_target_difference": round(paired_t_power(target["difference"], sd, repeats, target["alpha"]), 3),
        "repeats_for_target_at_these_unseen_scans": required_repeats(
            target["difference"], sd, target["power"], target["alpha"]
        ),
        "target_reachable_within_budget": bool(power["target_reached"]),
        "budget": f"{power['cost']['budget_seconds'] / 60:.0f} min wall on one idle core, planned at "
        f"{power['cost']['budget_fraction']:.0%} of it",
        "target": {k: target[k] for k in ("difference", "power", "alpha")},
        "source": "benchmarks/results/mri_power.json (benchmarks.mri_power: committed run's paired s.d. + pilot)",
    }
