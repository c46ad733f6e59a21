# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import warnings

import pytest
import torch

torch.set_num_threads(1)  # CI has 2 cores; one thread keeps tiny-tensor tests fast and timings stable


@pytest.fixture(autouse=True)
def _quiet_and_seeded():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield
