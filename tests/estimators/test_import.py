# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""``import monai_medl.estimators`` does not import MONAI (the estimators use nothing of it; MONAI's import is slow)."""

from __future__ import annotations

import os
import subprocess
import sys


def test_estimators_import_without_monai():
    code = (
        "import sys, monai_medl.estimators as e\n"
        "assert e.MixedEffectsRegressor and e.MixedEffectsClassifier and e.anova\n"
        "print(sorted(m for m in sys.modules if m == 'monai' or m.startswith(('monai.', 'monai_medl.networks'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ), check=True)
    assert out.stdout.strip() == "[]", out.stdout
