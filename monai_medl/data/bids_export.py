# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Lay a datalist's scans out as a BIDS dataset (e.g. the synthetic cohort, to try the BIDS path end to end)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence

from monai_medl.data.datalist import load_datalist

__all__ = ["datalist_to_bids"]


def datalist_to_bids(
    datalist_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    sections: Sequence[str] = ("training", "validation", "test"),
    columns: Sequence[str] = ("site", "age", "sex"),
    label_column: str = "diagnosis",
    label_names: Sequence[str] = ("control", "patient"),
    sites: Sequence[str] | None = None,
) -> str:
    """Write ``out_dir`` as BIDS: ``participants.tsv``, ``sub-*/anat/sub-*_T1w.nii.gz`` and a sidecar per scan.

    The participant row holds ``columns`` of the entry and its label as text (``label_names[label]`` in
    ``label_column``); the sidecar JSON records the site as ``InstitutionName`` (so the site can be read from either
    place). Images are copied (hard-linked where possible); the datalist's split is forgotten on purpose.

    Args:
        datalist_file: a datalist whose entries carry ``subject``, ``site`` and ``label``.
        out_dir: the BIDS root to write (must not exist, or be empty).
        sections: datalist sections to export.
        columns: entry keys copied into ``participants.tsv`` (absent keys are written as ``n/a``).
        label_column: the participants column of the label.
        label_names: text of each class.
        sites: export only the scans of these sites (None: all), e.g. to keep one site aside as a new hospital.

    Returns:
        the BIDS root.

    Example::

        >>> import tempfile
        >>> import nibabel as nib
        >>> import numpy as np
        >>> from monai_medl.data import write_datalist
        >>> data = tempfile.mkdtemp()
        >>> nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), os.path.join(data, "a.nii.gz"))
        >>> dl = write_datalist(os.path.join(data, "datalist.json"), {"training": [
        ...     {"image": os.path.join(data, "a.nii.gz"), "label": 1, "site": "s1", "subject": "sub-0001"}]})
        >>> root = datalist_to_bids(dl, os.path.join(data, "bids"))
        >>> print(open(os.path.join(root, "participants.tsv")).read().strip())  # doctest: +NORMALIZE_WHITESPACE
        participant_id  site  age  sex  diagnosis
        sub-0001        s1    n/a  n/a  patient
    """
    root = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(root) and os.listdir(root):
        raise FileExistsError(f"BIDS output folder {root!r} exists and is not empty.")
    rows = []
    for section in sections:
        try:
            entries = load_datalist(datalist_file, section, validate=False)
        except ValueError:
            continue  # an absent section (e.g. no test split)
        for e in entries:
            if sites is not None and str(e["site"]) not in sites:
                continue
            subject = str(e["subject"]) if str(e["subject"]).startswith("sub-") else f"sub-{e['subject']}"
            anat = os.path.join(root, subject, "anat")
            os.makedirs(anat, exist_ok=True)
            target = os.path.join(anat, f"{subject}_T1w.nii.gz")
            try:
                os.link(e["image"], target)
            except OSError:
                shutil.copyfile(e["image"], target)
            with open(os.path.join(anat, f"{subject}_T1w.json"), "w", encoding="utf-8") as f:
                json.dump({"InstitutionName": str(e["site"])}, f)
            values = [str(e.get(c, "n/a")) for c in columns]
            rows.append("\t".join([subject, *values, label_names[int(e["label"])]]))
    with open(os.path.join(root, "participants.tsv"), "w", encoding="utf-8") as f:
        f.write("\t".join(["participant_id", *columns, label_column]) + "\n" + "\n".join(rows) + "\n")
    with open(os.path.join(root, "dataset_description.json"), "w", encoding="utf-8") as f:
        json.dump({"Name": f"exported from {os.path.basename(os.fspath(datalist_file))}", "BIDSVersion": "1.9.0"}, f)
    return root
