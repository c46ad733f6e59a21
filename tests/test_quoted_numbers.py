# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Every result quoted in the README, docs and model cards names its source and equals it exactly.

A quoted result (a number with three or more decimals) must be a markdown link to a value of a results file, a JSON
pointer into ``benchmarks/results/*.json`` or a bundle's ``docs/evaluation.json``, and equal that value rounded to
the printed decimals (``benchmarks.citations``). Code blocks, inline code (settings) and the generated evaluation
blocks of the cards are not prose and are skipped. ``CHANGELOG.md`` is a history of superseded runs and is not checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.citations import check_document, cite, quoted_numbers

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted(REPO.glob("bundles/*/docs/README.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_quoted_results_link_to_the_value_they_quote(doc):
    problems = check_document(doc)
    assert not problems, "\n".join(problems)


@pytest.fixture
def results(tmp_path):
    data = {"models": {"me": {"seen": {"mean": 0.8351, "ci95": [-0.0104, 0.0212]}}}, "mse": 0.00221}
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "r.json").write_text(json.dumps(data))
    return tmp_path


def _problems(folder: Path, text: str) -> list[str]:
    (folder / "doc.md").write_text(text)
    return [p.split(": ", 1)[1] for p in check_document(folder / "doc.md")]


def test_a_correct_link_passes_and_a_number_typed_by_hand_is_caught(results):
    ok = "[0.835](results/r.json#/models/me/seen/mean) [[-0.010](results/r.json#/models/me/seen/ci95/0)"
    assert (
        _problems(results, ok + ", [+0.021](results/r.json#/models/me/seen/ci95/1)], [2.210](results/r.json#/mse*1000)")
        == []
    )
    assert _problems(results, "seen 0.835 at the end of a sentence 0.912.") == [
        "0.835 is not a link to a results value",
        "0.912 is not a link to a results value",
    ]


def test_a_link_to_a_wrong_value_key_or_file_is_caught(results):
    assert _problems(results, "[0.836](results/r.json#/models/me/seen/mean)") == [
        "0.836 quotes results/r.json#/models/me/seen/mean, which is 0.8351"
    ]
    assert "no '/models/conventional'" in _problems(results, "[0.835](results/r.json#/models/conventional/seen)")[0]
    assert _problems(results, "[0.835](results/x.json#/a)") == ["0.835 links to results/x.json, which does not exist"]
    assert "not a number" in _problems(results, "[0.835](results/r.json#/models/me/seen/ci95)")[0]
    # the sign is part of the quote: an unsigned 0.010 does not quote -0.0104
    assert "which is -0.0104" in _problems(results, "[0.010](results/r.json#/models/me/seen/ci95/0)")[0]


def test_numbers_inside_a_link_target_are_not_quotes(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"choice": {"adversary@0.003": 0.6233}}))
    assert _problems(tmp_path, "[0.623](r.json#/choice/adversary@0.003) but 0.003.") == [
        "0.003 is not a link to a results value"
    ]


def test_cite_writes_a_link_that_checks(results):
    link = cite(results / "results" / "r.json", "/models/me/seen/ci95/1", results, signed=True)
    assert link == "[+0.021](results/r.json#/models/me/seen/ci95/1)"
    assert _problems(results, f"difference {link}") == []


def test_code_blocks_and_generated_evaluation_blocks_are_not_prose():
    generated = "<!-- evaluation:begin -->0.777<!-- evaluation:end -->"
    text = f"a 0.8351\n```\n0.999\n```\n{generated}\nlr 1e-3, `lr=0.003`, 0.25, arXiv 2211.02701"
    assert quoted_numbers(text) == ["0.8351"]
