# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Reproducible benchmarks: ``python -m benchmarks.<name> [--quick] [--out DIR]``; results in ``benchmarks/results``."""
