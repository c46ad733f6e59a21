# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Deprecated: moved to :mod:`monai_medl.data.synthetic.mri_cohort`; this path is removed in the next release."""

from __future__ import annotations

import warnings
from typing import Any

from monai_medl.data.synthetic import mri_cohort as _moved
from monai_medl.data.synthetic.mri_cohort import *  # noqa: F403

__all__ = list(_moved.__all__)

warnings.warn(
    "monai_medl.data.cohort is deprecated and will be removed in the next release; "
    "import from monai_medl.data.synthetic.mri_cohort (or monai_medl.data) instead.",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str) -> Any:
    return getattr(_moved, name)


if __name__ == "__main__":
    import sys

    sys.exit(_moved.main())
