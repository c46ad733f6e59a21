# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The synthetic-data subpackage: old import paths still work (with a deprecation warning), public names are
importable from ``monai_medl.data``, and the generator modules import no private names from each other."""

from __future__ import annotations

import ast
import importlib
import pathlib
import sys
import warnings

import pytest

import monai_medl.data
import monai_medl.data.synthetic as synthetic

MOVED = {
    "cohort": "mri_cohort",
    "segmentation_cohort": "segmentation_cohort",
    "template_cohort": "cohort_files",
    "template": "template",
    "livecell": "livecell",
    "spirals": "spirals",
    "grouped_simulation": "grouped_simulation",
    "generated_folder": "generated_folder",
}
SYNTHETIC_DIR = pathlib.Path(synthetic.__file__).parent


@pytest.mark.parametrize("old, new", sorted(MOVED.items()))
def test_old_path_warns_and_reexports_the_moved_module(old, new):
    moved = importlib.import_module(f"monai_medl.data.synthetic.{new}")
    sys.modules.pop(f"monai_medl.data.{old}", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shim = importlib.import_module(f"monai_medl.data.{old}")
    messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert any(f"monai_medl.data.{old} is deprecated" in m and f"synthetic.{new}" in m for m in messages), messages
    assert shim.__all__ == moved.__all__
    for name in moved.__all__:
        assert getattr(shim, name) is getattr(moved, name)


def test_public_names_are_importable_from_monai_medl_data():
    for name in synthetic.__all__:
        assert getattr(monai_medl.data, name) is getattr(synthetic, name)
    assert {"generate_mri_cohort", "generate_segmentation_cohort", "make_livecell", "make_spirals"} <= set(
        monai_medl.data.__all__
    )
    with pytest.raises(AttributeError, match="no attribute 'generate_nothing'"):
        _ = monai_medl.data.generate_nothing


def _private_imports(path: pathlib.Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("monai_medl"):
            found += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    return found


def _code_lines(node: ast.FunctionDef) -> int:
    body = node.body
    has_doc = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
    start = body[1].lineno if has_doc and len(body) > 1 else body[0].lineno
    return node.end_lineno - start + 1


@pytest.mark.parametrize("path", sorted(SYNTHETIC_DIR.glob("*.py")), ids=lambda p: p.name)
def test_generator_modules_import_no_private_names_and_have_short_functions(path):
    assert _private_imports(path) == []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    long = {n.name: _code_lines(n) for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and _code_lines(n) > 80}
    assert long == {}
