# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Run every docstring example (``>>>``) of the package, one test per module."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil
import random
import tempfile

import numpy as np
import pytest
import torch

import monai_medl

OPTIONFLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _module_names() -> list[str]:
    """Every module of the package whose source has a ``>>>`` example (found without importing it)."""
    names = [monai_medl.__name__]
    names += [info.name for info in pkgutil.walk_packages(monai_medl.__path__, prefix=f"{monai_medl.__name__}.")]
    with_examples = []
    for name in names:
        origin = importlib.util.find_spec(name).origin
        with open(origin, encoding="utf-8") as f:
            if ">>>" in f.read():
                with_examples.append(name)
    return sorted(with_examples)


@pytest.mark.parametrize("module_name", _module_names())
def test_doctests(module_name: str, tmp_path, monkeypatch) -> None:
    module = importlib.import_module(module_name)
    tests = [t for t in doctest.DocTestFinder().find(module, module_name) if t.examples]
    assert tests, f"{module_name} has '>>>' in its source but no docstring example was found"
    monkeypatch.chdir(tmp_path)  # examples that write files (runs/, *.json) write them here
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    runner = doctest.DocTestRunner(optionflags=OPTIONFLAGS)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples failed in {module_name}"
