# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Subjects whose scans straddle the sections of a datalist (training, validation, test).

A subject scanned twice (two sessions, or a T1 and a repeat) whose scans land in training and in test makes the
test optimistic: the network has seen that person. :func:`subject_overlap_problems` names every such subject and
the sections it appears in; the bundles refuse such a datalist unless the design wants it
(``allow_subject_overlap``, e.g. a longitudinal study that predicts a later session from earlier ones).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

__all__ = ["subject_sections", "subject_overlap_problems"]


def subject_sections(
    sections: Mapping[str, Sequence[Mapping[Hashable, Any]]], subject_key: str = "subject"
) -> dict[str, list[str]]:
    """Subject -> the sections (in datalist order) it appears in, for the subjects found in more than one.

    Entries without a subject (or that are not dictionaries) are skipped: they cannot be matched.

    Example::

        >>> subject_sections({"training": [{"subject": "sub-01"}, {"subject": "sub-02"}],
        ...                   "test": [{"subject": "sub-02"}, {"image": "x.nii.gz"}]})
        {'sub-02': ['training', 'test']}
    """
    seen: dict[str, list[str]] = {}
    for name, entries in sections.items():
        for entry in entries:
            subject = entry.get(subject_key) if isinstance(entry, Mapping) else None
            if subject is None or (isinstance(subject, str) and not subject.strip()):
                continue
            names = seen.setdefault(str(subject), [])
            if name not in names:
                names.append(name)
    return {s: names for s, names in seen.items() if len(names) > 1}


def subject_overlap_problems(
    sections: Mapping[str, Sequence[Mapping[Hashable, Any]]],
    subject_key: str = "subject",
    allow: bool = False,
    max_listed: int = 10,
) -> list[str]:
    """One problem message per subject found in more than one section (none when ``allow``).

    Args:
        sections: section name -> entries (e.g. ``{"training": [...], "validation": [...], "test": [...]}``).
        subject_key: the entries' subject key. Defaults to ``"subject"``.
        allow: the study design wants subjects in several sections: report nothing. Defaults to False.
        max_listed: subjects listed one by one; the rest are counted in one last message.

    Example::

        >>> problems = subject_overlap_problems({"training": [{"subject": "sub-01"}], "test": [{"subject": "sub-01"}]})
        >>> print(problems[0])  # doctest: +ELLIPSIS
        subject 'sub-01' (key 'subject') appears in sections training and test: ...
        >>> subject_overlap_problems({"training": [{"subject": "sub-01"}], "test": [{"subject": "sub-01"}]},
        ...                          allow=True)
        []
    """
    if allow:
        return []
    shared = subject_sections(sections, subject_key)
    problems = [
        f"subject {subject!r} (key {subject_key!r}) appears in sections {' and '.join(names)}: all scans of a "
        "subject must be in one section (set allow_subject_overlap to true in the bundle config if the design "
        "wants this, e.g. longitudinal sessions)"
        for subject, names in list(shared.items())[:max_listed]
    ]
    if len(shared) > max_listed:
        problems.append(f"... and {len(shared) - max_listed} more subject(s) in more than one section")
    return problems
