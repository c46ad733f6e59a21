# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Acceptance: four training runs of one bundle started at the same instant, with evaluations running throughout.

Every run gets its own folder and exits 0, the final ``models/`` is exactly one promoting run's set, and no
evaluation fails for lack of a consistent set. The processes are forked from the test (the package is imported
once), one epoch on a 12-scan cohort of 16^3 images.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import time
import traceback
from pathlib import Path

import nibabel as nib
import numpy as np

from tests.bundle.bundle_checks import run_workflow

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "mri_me_cnn_classification"
TINY = {"spatial_size": [16, 16, 16], "generate_cohort": False, "train#dataloader#batch_size": 4}
RUNS = [  # (run_name, replace_models)
    (None, True),
    ("named", True),
    ("kept", False),
    (None, True),
]


def _cohort(root: Path) -> Path:
    root.mkdir()
    sections: dict[str, list] = {"training": [], "validation": [], "test": []}
    for i in range(12):
        label, site = i % 2, "ab"[(i // 2) % 2]
        section = "training" if i < 8 else "validation" if i < 10 else "test"
        data = np.random.default_rng(i).normal(100.0 + 20.0 * label, 10.0, size=(16, 16, 16)).astype(np.float32)
        nib.save(nib.Nifti1Image(data, np.diag([4.0, 4.0, 4.0, 1.0])), str(root / f"s{i}.nii.gz"))
        sections[section].append({"image": f"s{i}.nii.gz", "label": label, "site": site})
    (root / "datalist.json").write_text(json.dumps(sections))
    return root / "datalist.json"


def _train(root: Path, datalist: Path, run_name, replace: bool, start) -> None:
    if start is not None:
        start.wait()
    overrides = {**TINY, "datalist": str(datalist), "replace_models": replace, "train#trainer#max_epochs": 1}
    if run_name is not None:
        overrides["run_name"] = run_name
    run_workflow(root / "configs", "train.json", root, "train", **overrides)


def _evaluate_until(root: Path, datalist: Path, stop: Path, log: Path) -> None:
    """Evaluate ``models/`` again and again until ``stop`` exists; one JSON line per evaluation."""
    from monai_medl.bundle.locks import release_shared

    n = 0
    while True:
        last = stop.exists()
        record = {"start": time.time()}
        try:
            wf = run_workflow(
                root / "configs", ["train.json", "evaluate.json"], root, "eval", check_properties=False,
                datalist=str(datalist), output_dir=str(root / f"eval_{n}"), **TINY,
            )  # fmt: skip
            record["run"] = wf.parser.get_parsed_content("manifest")["run"]
        except Exception:  # noqa: BLE001 - recorded and asserted on by the test
            record["error"] = traceback.format_exc()[-2000:]
        finally:
            release_shared(root / "models")
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps({**record, "end": time.time()}) + "\n")
        n += 1
        if last:
            return


def _child(target, *args) -> None:
    try:
        target(*args)
        code = 0
    except BaseException:  # noqa: BLE001 - the exit code tells the test
        traceback.print_exc()
        code = 1
    os._exit(code)


def test_four_runs_at_once_leave_one_runs_set_and_evaluations_never_fail(tmp_path):
    datalist = _cohort(tmp_path / "data")
    first = tmp_path / "first"  # a set for this cohort to evaluate before any of the four runs has promoted
    for part in ("configs", "models"):
        shutil.copytree(BUNDLE / part, first / part)
    _train(first, datalist, None, True, None)
    root = tmp_path / "bundle"
    shutil.copytree(first / "configs", root / "configs")
    shutil.copytree(first / "models", root / "models")
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(len(RUNS))
    stop, log = tmp_path / "stop", tmp_path / "evaluations.jsonl"
    trainers = [ctx.Process(target=_child, args=(_train, root, datalist, n, r, start)) for n, r in RUNS]
    evaluator = ctx.Process(target=_child, args=(_evaluate_until, root, datalist, stop, log))
    for p in [*trainers, evaluator]:
        p.start()
    for p in trainers:
        p.join(timeout=600)
    stop.touch()
    evaluator.join(timeout=300)
    assert [p.exitcode for p in trainers] == [0] * len(RUNS)
    assert evaluator.exitcode == 0

    runs = sorted(p for p in (root / "runs").iterdir() if p.is_dir())
    assert len(runs) == 4 and {"named", "kept"} <= {r.name for r in runs}
    assert all((r / "models" / "manifest.json").is_file() for r in runs)
    manifest = json.loads((root / "models" / "manifest.json").read_text())
    winner = Path(manifest["run"])
    assert winner in runs and winner.name != "kept"  # a run that asked for promotion
    assert manifest == json.loads((winner / "models" / "manifest.json").read_text())  # that run's set, whole
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((root / "models" / name).read_bytes()).hexdigest() == digest
        assert hashlib.sha256((winner / "models" / name).read_bytes()).hexdigest() == digest
    assert not list(root.glob("models.*"))

    evaluations = [json.loads(line) for line in log.read_text().splitlines()]
    assert evaluations and not [e["error"] for e in evaluations if "error" in e]
    assert evaluations[-1]["run"] == str(winner)  # the last evaluation read the final set
    seen = [Path(e["run"]).parent.parent.name + "/" + Path(e["run"]).name for e in evaluations]
    print(f"{len(evaluations)} evaluations, sets seen in order: {seen}")
