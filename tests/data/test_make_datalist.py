# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""make_datalist: BIDS and table sources, grouped stratified splits with held-out sites, and every bad input."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest

from monai_medl.bundle import load_bundle_inputs
from monai_medl.data import DatalistSpec, write_datalist
from monai_medl.data.bids import read_bids_t1w
from monai_medl.data.bids_export import datalist_to_bids
from monai_medl.data.make_datalist import main
from monai_medl.data.study_table import StudyTableError

SITES = ("north", "south", "east", "west")


def _image(path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((6, 6, 6)).astype(np.float32), np.eye(4)), path)
    return path


@pytest.fixture(scope="module")
def bids_root(tmp_path_factory):
    """4 sites x 10 subjects (labels alternate), exported as BIDS by datalist_to_bids."""
    tmp = tmp_path_factory.mktemp("study")
    image = _image(str(tmp / "scans" / "one.nii.gz"))
    entries = [
        {"image": image, "label": i % 2, "site": site, "subject": f"sub-{site[:2]}{i:02d}", "age": 60 + i}
        for site in SITES
        for i in range(10)
    ]
    datalist = write_datalist(tmp / "scans" / "source.json", {"training": entries})
    return datalist_to_bids(datalist, tmp / "bids")


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_bids_to_datalist_holds_out_sites_and_keeps_subjects_whole(bids_root, tmp_path, capsys):
    out = tmp_path / "datalist.json"
    argv = ["--bids", bids_root, "--site-column", "site", "--label-column", "diagnosis"]
    argv += ["--label-map", "control=0,patient=1", "--holdout-sites", "west", "--extra-columns", "age", "--out", out]
    code, printed, err = _run(argv, capsys)
    assert code == 0, err
    content = json.loads(out.read_text())
    sections = {k: content[k] for k in ("training", "validation", "test")}
    assert {e["site"] for e in sections["training"]} == {"north", "south", "east"}
    assert {e["site"] for e in sections["test"] if e["site"] == "west"} and content["unseen_sites"] == ["west"]
    assert sum(len(v) for v in sections.values()) == 40
    assert not {e["site"] for e in sections["validation"]} - {"north", "south", "east"}
    subjects = [{e["subject"] for e in v} for v in sections.values()]
    assert not (subjects[0] & subjects[1] or subjects[0] & subjects[2] or subjects[1] & subjects[2])
    # stratified: every training site keeps both labels, as the source had 5/5 at each site
    for site in ("north", "south", "east"):
        assert {e["label"] for e in sections["training"] if e["site"] == site} == {0, 1}
    assert {type(e["age"]) for v in sections.values() for e in v} == {int}  # covariates read as numbers
    assert "| west | yes |" in printed and (tmp_path / "datalist_report.md").read_text().count("| north |") == 1
    # the bundles read it: every section validates and training spans >= 2 sites
    spec = DatalistSpec(num_classes=2, min_training_sites=2)
    inputs = load_bundle_inputs(out, spec, sections={"training": True, "validation": True, "test": False})
    assert len(inputs.sections["test"]) == len(sections["test"])


def test_a_number_of_holdout_sites_is_drawn_with_the_seed(bids_root, tmp_path, capsys):
    drawn = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        argv = ["--bids", bids_root, "--site-column", "InstitutionName", "--label-column", "diagnosis"]
        argv += ["--label-map", "control=0,patient=1", "--holdout-sites", "2", "--seed", seed, "--out"]
        assert _run([*argv, tmp_path / f"{name}.json"], capsys)[0] == 0
        drawn.append(json.loads((tmp_path / f"{name}.json").read_text())["unseen_sites"])
    assert len(drawn[0]) == 2 and drawn[0] == drawn[1]
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()  # same seed, same datalist


def test_sessions_and_sidecar_scanner_fields_define_the_site(tmp_path):
    root = tmp_path / "bids"
    (root).mkdir()
    (root / "participants.tsv").write_text("participant_id\tdx\nsub-01\t1\nsub-02\t0\n")
    (root / "T1w.json").write_text('{"Manufacturer": "Acme", "MagneticFieldStrength": 3}')
    (root / "sub-01" / "sub-01_sessions.tsv").parent.mkdir()
    (root / "sub-01" / "sub-01_sessions.tsv").write_text("session_id\tage\nses-1\t70\nses-2\t72\n")
    for ses in ("ses-1", "ses-2"):
        _image(str(root / "sub-01" / ses / "anat" / f"sub-01_{ses}_run-1_T1w.nii.gz"))
    (root / "sub-01" / "ses-2" / "anat" / "sub-01_ses-2_run-1_T1w.json").write_text('{"MagneticFieldStrength": 1.5}')
    _image(str(root / "sub-02" / "anat" / "sub-02_T1w.nii.gz"))
    records = read_bids_t1w(root)
    got = [
        (r["subject"], r["session"], r["columns"].get("age"), r["columns"]["MagneticFieldStrength"]) for r in records
    ]
    assert got == [("sub-01", "ses-1", "70", "3"), ("sub-01", "ses-2", "72", "1.5"), ("sub-02", None, None, "3")]


def _write_table(tmp_path, text: str, images=("a.nii.gz", "b.nii.gz", "c.nii.gz")) -> str:
    for name in images:
        _image(str(tmp_path / "img" / name))
    path = tmp_path / "scans.csv"
    path.write_text(text)
    return str(path)


TABLE = "file,patient,hospital,dx\nimg/a.nii.gz,p1,h1,0\nimg/b.nii.gz,p2,h2,1\nimg/c.nii.gz,p3,h2,0\n"


@pytest.mark.parametrize(
    "text, argv, expected",
    [
        (
            TABLE,
            ["--site-column", "site"],
            "scans.csv: no column 'site' (chosen by --site-column); the columns are",
        ),
        (TABLE, ["--site-column", "hospital", "--path-column", "path"], "scans.csv: no column 'path' (chosen by"),
        (TABLE.replace("img/c", "img/missing"), ["--site-column", "hospital"], "line 4: 'img/missing.nii.gz'"),
        (TABLE.replace("h1", "h2"), ["--site-column", "hospital"], "only one site ['h2'] in column(s) ['hospital']"),
        (TABLE.replace("p3", "p1"), ["--site-column", "hospital"], "subject(s) appear at more than one site"),
        (TABLE.replace(",1\n", ",AD\n"), ["--site-column", "hospital"], "label 'AD' (column 'dx') is not a number"),
        (TABLE, ["--site-column", "hospital", "--holdout-sites", "h9"], "--holdout-sites ['h9'] are not sites"),
        (TABLE, ["--site-column", "hospital", "--holdout-sites", "h1"], "leaves 1 training site(s) ['h2']"),
    ],
)
def test_bad_tables_print_what_and_where(tmp_path, capsys, text, argv, expected):
    table = _write_table(tmp_path, text)
    base = ["--table", table, "--path-column", "file", "--subject-column", "patient", "--label-column", "dx"]
    code, _, err = _run([*base, *argv, "--out", tmp_path / "dl.json"], capsys)
    assert code == 2 and err.startswith("make_datalist: error: ") and expected in err, err
    assert not (tmp_path / "dl.json").exists()


def test_bad_bids_layouts_name_the_file(tmp_path, capsys):
    with pytest.raises(StudyTableError, match="participants.tsv is missing"):
        read_bids_t1w(tmp_path)
    (tmp_path / "participants.tsv").write_text("participant_id\tdx\nsub-01\t1\n")
    with pytest.raises(StudyTableError, match="no T1w scan found"):
        read_bids_t1w(tmp_path)
    _image(str(tmp_path / "sub-02" / "anat" / "sub-02_T1w.nii.gz"))
    with pytest.raises(StudyTableError, match="no row for participant_id 'sub-02'"):
        read_bids_t1w(tmp_path)
    _image(str(tmp_path / "sub-01" / "anat" / "sub-1_T1w.nii.gz"))
    with pytest.raises(StudyTableError, match="does not follow the BIDS layout: expected sub-01/anat/sub-01"):
        read_bids_t1w(tmp_path)
    (tmp_path / "sub-01" / "anat" / "sub-1_T1w.nii.gz").unlink()
    _image(str(tmp_path / "sub-01" / "anat" / "sub-01_T1w.nii.gz"))
    (tmp_path / "participants.tsv").write_text("participant_id\tdx\nsub-01\t1\nsub-02\t0\n")
    code = main(["--bids", str(tmp_path), "--site-column", "Manufacturer", "--label-column", "dx", "--out", "x.json"])
    err = capsys.readouterr().err
    assert code == 2 and "sub-01_T1w.nii.gz (from " in err and "participants.tsv, the sidecar JSON): no column" in err
    assert "'Manufacturer' (chosen by --site-column); the columns are ['participant_id', 'dx']" in err
    (tmp_path / "participants.tsv").write_text("participant_id\tdx\nsub-01\t1\nsub-01\t0\n")
    with pytest.raises(StudyTableError, match="line 3: participant_id 'sub-01' is listed twice"):
        read_bids_t1w(tmp_path)
