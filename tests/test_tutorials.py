# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Every tutorial runs end to end (shortened) and its key result points the way the tutorial says."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((REPO / "tutorials").glob("[0-9][0-9]_*.py"))


def test_tutorials_are_found():
    assert TUTORIALS, "no tutorials/NN_*.py found"


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_runs(path, tmp_path):
    # the checkout's package first: an installed (e.g. editable) monai_medl elsewhere must not be what runs
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "MONAI_MEDL_TUTORIAL_QUICK": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath}
    proc = subprocess.run(
        [sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    KEY_RESULTS[path.stem](proc.stdout)


def _spirals_shortcut(out: str) -> None:
    """Tutorial 1: the mixed-effects MLP relies less on the site shortcut than the conventional one."""
    share = {
        m.group(1).strip(): float(m.group(2))
        for m in re.finditer(r"^(.+?)\s+AUROC seen .* shortcut share ([\d.]+)", out, re.M)
    }
    assert share["mixed effects"] < share["conventional"], out[-2000:]


def _fallback_routing(out: str) -> None:
    """Tutorial 2: ModalityFallback gives the two-contrast network's result with FLAIR, the T1 network's without."""
    auroc = {
        m.group(1).strip(): float(m.group(2)) for m in re.finditer(r"^(.+?)\s+unseen-site AUROC ([\d.]+)", out, re.M)
    }
    assert auroc["ModalityFallback, FLAIR present"] == auroc["two-contrast network, FLAIR present"], out[-2000:]
    assert auroc["ModalityFallback, FLAIR withheld"] == auroc["T1-only network"], out[-2000:]


def _study_end_to_end(out: str) -> None:
    """Tutorial 3: the held-out site never reaches training, evaluation draws all four figures, the new hospital's
    scans are all predicted at population level."""
    held = re.search(r"^training sites (\[.*?\]); held out \(unseen\) (\[.*?\])", out, re.M)
    assert held and not set(ast.literal_eval(held.group(1))) & set(ast.literal_eval(held.group(2))), out[-2000:]
    assert re.search(r"^figures: 4 ", out, re.M), out[-2000:]
    scans = int(re.search(r"^new hospital '.+?': (\d+) scans", out, re.M).group(1))
    predicted = re.search(r"^new-hospital predictions: (\d+) scans, z \['zero'\]", out, re.M)
    assert scans > 0 and predicted and int(predicted.group(1)) == scans, out[-2000:]


KEY_RESULTS = {
    "01_mixed_effects_mlp_spirals": _spirals_shortcut,
    "02_missing_modalities": _fallback_routing,
    "03_your_own_study_bids": _study_end_to_end,
}


def test_every_tutorial_has_a_key_result_check():
    assert {p.stem for p in TUTORIALS} == set(KEY_RESULTS)
