# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Deprecated: moved to :mod:`monai_medl.data.synthetic.template`; this path is removed in the next release."""

from __future__ import annotations

from monai_medl.data._deprecated import moved_module_shim
from monai_medl.data.synthetic import template as _moved
from monai_medl.data.synthetic.template import *  # noqa: F403

__all__, __getattr__ = moved_module_shim("monai_medl.data.template", _moved)
