# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""A strict reader of the anatomical part of a BIDS dataset: one record per T1-weighted scan.

Layout read (BIDS 1.x)::

    ROOT/participants.tsv                    participant_id + columns (site, diagnosis, age, ...)
    ROOT/T1w.json                            optional, inherited by every T1w scan
    ROOT/sub-<label>/sub-<label>_sessions.tsv   optional: session_id + columns (scanner, age at the session, ...)
    ROOT/sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-<label>][_<entity>-<value>...]_T1w.nii[.gz]
    ... next to each scan: the same name with .json (its sidecar: Manufacturer, MagneticFieldStrength, ...)

Each scan's columns are those of its participant row, then of its session row, then of its sidecars (the
inheritance principle: a field of a more specific file wins). Strict means: a scan whose file name does not start
with its folders' ``sub-``/``ses-`` labels, a subject folder missing from ``participants.tsv``, a duplicate
participant or session row, or an unreadable sidecar is an error naming the file. No BIDS library is needed
(pybids pulls pandas, SQLAlchemy and more for what is a few ``glob`` calls here).
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any

from monai_medl.data.study_table import StudyTableError, read_table, require_columns

__all__ = ["read_bids_t1w"]

_SCAN = re.compile(r"^(sub-[A-Za-z0-9]+)(?:_(ses-[A-Za-z0-9]+))?(?:_[A-Za-z]+-[A-Za-z0-9]+)*_T1w\.nii(?:\.gz)?$")


def _index_rows(path: str, rows: list[dict[str, str]], key: str) -> dict[str, dict[str, str]]:
    require_columns(path, rows, {"the BIDS specification": key})
    out: dict[str, dict[str, str]] = {}
    for line, row in enumerate(rows, start=2):
        if row[key] in out:
            raise StudyTableError(f"{path} line {line}: {key} {row[key]!r} is listed twice.")
        out[row[key]] = row
    return out


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise StudyTableError(f"sidecar {path!r} cannot be read as JSON: {e}") from e
    if not isinstance(content, dict):
        raise StudyTableError(f"sidecar {path!r} should hold a JSON object, got {type(content).__name__}.")
    return content


def _sidecar_fields(root: str, scan: str, subject: str) -> dict[str, str]:
    """Inherited sidecar fields of a scan: ``ROOT/T1w.json``, ``sub-X/sub-X_T1w.json``, then its own JSON."""
    own = re.sub(r"\.nii(\.gz)?$", ".json", scan)
    fields: dict[str, str] = {}
    for path in (os.path.join(root, "T1w.json"), os.path.join(root, subject, f"{subject}_T1w.json"), own):
        if os.path.isfile(path):
            fields.update({k: str(v) for k, v in _read_json(path).items() if isinstance(v, str | int | float)})
    return fields


def _subject_sessions(root: str, subject: str) -> dict[str, dict[str, str]]:
    path = os.path.join(root, subject, f"{subject}_sessions.tsv")
    return _index_rows(path, read_table(path), "session_id") if os.path.isfile(path) else {}


def read_bids_t1w(root: str | os.PathLike) -> list[dict[str, Any]]:
    """One record per T1w scan of a BIDS dataset: ``{"image", "subject", "session", "columns", "sources"}``.

    ``columns`` merges the participant row, the session row (``sessions.tsv``) and the sidecar JSON fields;
    ``sources`` names the files they came from (for error messages).

    Raises:
        StudyTableError: no ``participants.tsv``, no T1w scan, a scan named against the layout or a subject
            without a participant row (each naming the file).

    Example::

        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> with open(os.path.join(root, "participants.tsv"), "w") as f:
        ...     _ = f.write("participant_id\\tdiagnosis\\nsub-01\\t1\\n")
        >>> os.makedirs(os.path.join(root, "sub-01", "anat"))
        >>> open(os.path.join(root, "sub-01", "anat", "sub-01_T1w.nii.gz"), "wb").close()
        >>> with open(os.path.join(root, "sub-01", "anat", "sub-01_T1w.json"), "w") as f:
        ...     _ = f.write('{"Manufacturer": "Siemens", "MagneticFieldStrength": 3}')
        >>> [(r["subject"], r["session"], r["columns"]) for r in read_bids_t1w(root)]  # doctest: +NORMALIZE_WHITESPACE
        [('sub-01', None, {'participant_id': 'sub-01', 'diagnosis': '1', 'Manufacturer': 'Siemens',
          'MagneticFieldStrength': '3'})]
    """
    root = os.path.abspath(os.fspath(root))
    participants_file = os.path.join(root, "participants.tsv")
    if not os.path.isfile(participants_file):
        raise StudyTableError(
            f"{root!r} is not a BIDS dataset: participants.tsv is missing (it lists participant_id and the site and "
            "label columns); use --table FILE --path-column COL for a plain spreadsheet."
        )
    participants = _index_rows(participants_file, read_table(participants_file), "participant_id")
    pattern = os.path.join(root, "sub-*", "**", "anat", "*_T1w.nii*")
    records = []
    for scan in sorted(glob.glob(pattern, recursive=True)):
        rel = os.path.relpath(scan, root).split(os.sep)
        subject, session = rel[0], rel[1] if len(rel) == 4 and rel[1].startswith("ses-") else None
        match = _SCAN.match(rel[-1])
        if len(rel) not in (3, 4) or match is None or match.group(1) != subject or match.group(2) != session:
            raise StudyTableError(
                f"scan {scan!r} does not follow the BIDS layout: expected {subject}/"
                f"{session + '/' if session else ''}anat/{subject}{'_' + session if session else ''}[_<entity>-"
                "<value>...]_T1w.nii.gz"
            )
        if subject not in participants:
            raise StudyTableError(
                f"{participants_file}: no row for participant_id {subject!r}, whose scan {scan!r} exists; add it."
            )
        sessions = _subject_sessions(root, subject)
        columns = dict(participants[subject])
        sources = [participants_file]
        if session is not None and session in sessions:
            columns.update({k: v for k, v in sessions[session].items()})
            sources.append(os.path.join(root, subject, f"{subject}_sessions.tsv"))
        columns.update(_sidecar_fields(root, scan, subject))
        sources.append("the sidecar JSON")
        records.append({"image": scan, "subject": subject, "session": session, "columns": columns, "sources": sources})
    if not records:
        raise StudyTableError(f"no T1w scan found in {root!r} (looked for {os.path.relpath(pattern, root)}).")
    return records
