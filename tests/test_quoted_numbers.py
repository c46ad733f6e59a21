# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Every result quoted in the README, docs and model cards comes from a committed results file.

A quoted result is a number with three or more decimals (``0.835``, ``-0.350``, ``6.311``): hyper-parameters and
versions have fewer. Each must equal, at the precision quoted, a value in ``benchmarks/results/*.json`` or a bundle's
``docs/evaluation.json`` (also in thousandths, as MSEs are quoted in 1e-3 units). Code blocks and the generated
evaluation blocks of the cards are not prose and are skipped.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted(REPO.glob("bundles/*/docs/README.md"))]
RESULT_FILES = [*sorted(REPO.glob("benchmarks/results/*.json")), *sorted(REPO.glob("bundles/*/docs/evaluation.json"))]
QUOTED = re.compile(r"(?<![\w.])[-+]?\d{1,3}\.\d{3,}(?![\w.])")  # 4-digit integer parts are ids (arXiv 2211.02701)


def _numbers(obj, out: list[float]) -> list[float]:
    if isinstance(obj, dict):
        for v in obj.values():
            _numbers(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _numbers(v, out)
    elif isinstance(obj, int | float) and not isinstance(obj, bool):
        out.append(float(obj))
    return out


def _known(decimals: int) -> set[str]:
    values = [v for path in RESULT_FILES for v in _numbers(json.loads(path.read_text()), [])]
    return {f"{round(x, decimals):.{decimals}f}" for v in values for x in (abs(v), abs(v) * 1e3)}


def quoted_numbers(text: str) -> list[str]:
    """The quoted results of a markdown text (outside code blocks and generated evaluation blocks)."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"<!-- evaluation:begin -->.*?<!-- evaluation:end -->", "", text, flags=re.S)
    return [m.group(0).lstrip("+-") for m in QUOTED.finditer(text)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_quoted_results_appear_in_results_files(doc):
    known = {d: _known(d) for d in (3, 4, 5)}
    missing = [n for n in quoted_numbers(doc.read_text()) if n not in known[min(len(n.split(".")[1]), 5)]]
    assert not missing, f"{doc.name} quotes numbers found in no results file: {missing}"


def test_a_number_typed_by_hand_is_caught():
    assert quoted_numbers("seen AUROC 0.8351 (+0.0123)\n```\n0.999\n```\nlr 1e-3, 0.25, arXiv 2211.02701") == [
        "0.8351",
        "0.0123",
    ]
    assert "9.8765" not in _known(4)  # a made-up value is in no results file
