# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Strict reading of a study's tables (CSV/TSV, BIDS ``participants.tsv``/``sessions.tsv``) for datalist building.

Every error is a :class:`StudyTableError` whose message names the file, the row or column and what was expected
(the columns that are present, the value found), so that a user can fix the spreadsheet without a traceback.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence

__all__ = ["StudyTableError", "MISSING_VALUES", "read_table", "require_columns", "is_missing"]

MISSING_VALUES = frozenset({"", "n/a", "na", "nan", "none", "null"})
"""Cell values read as missing (BIDS writes ``n/a``), compared case-insensitively after stripping blanks."""


class StudyTableError(ValueError):
    """A study table, folder or column choice cannot give a valid datalist; the message says where and why."""


def is_missing(value: object) -> bool:
    """Whether a cell is empty or one of :data:`MISSING_VALUES`."""
    return value is None or (isinstance(value, str) and value.strip().lower() in MISSING_VALUES)


def read_table(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a CSV (``,``) or TSV (``.tsv``: tab) file as dictionaries of stripped strings.

    Raises:
        StudyTableError: the file is missing, empty, has duplicate or empty column names, or a row with more cells
            than the header (each naming the file and line).

    Example::

        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "participants.tsv")
        >>> with open(path, "w") as f:
        ...     _ = f.write("participant_id\\tsite\\tdiagnosis\\nsub-01\\tboston\\t1\\n")
        >>> read_table(path)
        [{'participant_id': 'sub-01', 'site': 'boston', 'diagnosis': '1'}]
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise StudyTableError(f"table {path!r} does not exist.")
    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    with open(path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: spreadsheets often write a BOM
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, None)
        if not header:
            raise StudyTableError(f"table {path!r} is empty: expected a header row of column names.")
        header = [h.strip() for h in header]
        duplicated = sorted({h for h in header if header.count(h) > 1})
        if duplicated or "" in header:
            raise StudyTableError(f"table {path!r} has duplicate or empty column names in its header: {header}.")
        rows = []
        for line, cells in enumerate(reader, start=2):
            if not any(c.strip() for c in cells):
                continue
            if len(cells) > len(header):
                sep = "tabs" if delimiter == "\t" else "commas"
                raise StudyTableError(
                    f"table {path!r} line {line} has {len(cells)} cells but the header has {len(header)} columns "
                    f"(cells are separated by {sep})."
                )
            cells = [c.strip() for c in cells] + [""] * (len(header) - len(cells))
            rows.append(dict(zip(header, cells)))
    return rows


def require_columns(
    path: str, rows: Sequence[Mapping[str, str]], columns: Mapping[str, str | None], present: Sequence[str] = ()
) -> None:
    """Raise naming the file, the option and the columns present if a chosen column is absent.

    Args:
        path: the table (or a description of the sources, for the message).
        rows: its rows.
        columns: option name -> chosen column (``None``: not chosen, skipped).
        present: the columns available; defaults to those of the first row.
    """
    present = list(present) if present else list(rows[0]) if rows else []
    for option, column in columns.items():
        if column is not None and column not in present:
            raise StudyTableError(f"{path}: no column {column!r} (chosen by {option}); the columns are {present}.")
