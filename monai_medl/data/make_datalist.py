# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Build a bundle's datalist from a BIDS dataset or a spreadsheet: whole held-out sites, grouped stratified splits.

The datalist has ``training``, ``validation`` and ``test`` sections of ``{"image", "label", "site", "subject"}``
entries (the format of :mod:`monai_medl.data.datalist`, read by the bundles' ``--datalist``). The held-out
("unseen") sites go to ``test`` whole; the other sites' subjects are split into training, validation and a seen-site
test part by :func:`~monai_medl.data.stratified_group_kfold` (all scans of a subject on one side, label x site
strata balanced). A report (scans per site and label in each section) is printed and written next to the datalist.

Command lines::

    python -m monai_medl.data.make_datalist --bids /data/study --site-column site --label-column diagnosis \\
        --label-map CN=0,AD=1 --holdout-sites 1 --seed 0 --out /data/study/datalist.json
    python -m monai_medl.data.make_datalist --table scans.csv --path-column file --subject-column patient \\
        --site-column Manufacturer,MagneticFieldStrength --label-column dx --holdout-sites hospital_c --out dl.json

``--site-column`` may name several columns joined by commas (e.g. scanner fields of the BIDS sidecars); the site is
their values joined by ``_``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from monai_medl.data.bids import read_bids_t1w
from monai_medl.data.datalist import write_datalist
from monai_medl.data.splits import leave_sites_out, stratified_group_kfold
from monai_medl.data.study_table import StudyTableError, is_missing, read_table, require_columns

__all__ = ["table_records", "study_entries", "split_study", "site_label_report", "make_datalist", "main"]

SECTIONS = ("training", "validation", "test")


def table_records(
    table: str | os.PathLike,
    path_column: str,
    subject_column: str | None = None,
    required: Mapping[str, str | Sequence[str]] | None = None,
) -> list[dict]:
    """One record per row of a CSV/TSV with an image path column (relative paths start at the table's folder).

    ``required`` (option -> column or columns, e.g. ``{"--site-column": "hospital"}``) is checked on the header
    first, so that a misspelt column is reported for the table, not for its first scan.

    Raises:
        StudyTableError: a chosen column is absent, or image files are missing (each named with its line).
    """
    table = os.path.abspath(os.fspath(table))
    rows = read_table(table)
    if not rows:
        raise StudyTableError(f"table {table!r} has a header but no rows.")
    require_columns(table, rows, {"--path-column": path_column, "--subject-column": subject_column})
    for option, columns in (required or {}).items():
        for column in [columns] if isinstance(columns, str) else columns:
            require_columns(table, rows, {option: column})
    base, records, missing = os.path.dirname(table), [], []
    for line, row in enumerate(rows, start=2):
        image = os.path.normpath(os.path.join(base, row[path_column])) if row[path_column] else ""
        if not image or not os.path.exists(image):
            missing.append(f"line {line}: {row[path_column]!r}" + (f" ({image})" if image else " (empty)"))
        subject = row[subject_column] if subject_column else f"{os.path.basename(table)}:{line}"
        records.append({"image": image, "subject": subject, "session": None, "columns": row, "sources": [table]})
    if missing:
        listing = "\n  ".join(missing[:10]) + (f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise StudyTableError(
            f"{table}: {len(missing)} image file(s) of column {path_column!r} do not exist:\n  {listing}"
        )
    return records


def _parse_label(value: str, label_map: Mapping[str, int] | None, where: str, column: str) -> int:
    if label_map is not None:
        if value not in label_map:
            raise StudyTableError(f"{where}: label {value!r} (column {column!r}) is not in --label-map {label_map}.")
        return label_map[value]
    try:
        number = float(value)
    except ValueError:
        raise StudyTableError(
            f"{where}: label {value!r} (column {column!r}) is not a number; map text labels to classes with "
            "--label-map, e.g. --label-map CN=0,AD=1"
        ) from None
    if number != int(number) or number < 0:
        raise StudyTableError(f"{where}: label {value!r} (column {column!r}) should be a class 0, 1, ...")
    return int(number)


def _entry(
    record: Mapping[str, Any],
    site_columns: Sequence[str],
    label_column: str,
    label_map: Mapping[str, int] | None,
    extra_columns: Sequence[str],
) -> dict[str, Any]:
    columns, where = record["columns"], f"{record['image']} (from {', '.join(record['sources'])})"
    chosen = [*(("--site-column", c) for c in site_columns), ("--label-column", label_column)]
    for option, column in [*chosen, *(("--extra-columns", c) for c in extra_columns)]:
        require_columns(where, [columns], {option: column})
    empty = [c for c in (*site_columns, label_column) if is_missing(columns[c])]
    if empty:
        raise StudyTableError(f"{where}: column(s) {empty} are empty (n/a) for subject {record['subject']!r}.")
    entry = {
        "image": record["image"],
        "label": _parse_label(columns[label_column], label_map, where, label_column),
        "site": "_".join(columns[c] for c in site_columns),
        "subject": record["subject"],
    }
    if record.get("session"):
        entry["session"] = record["session"]
    entry.update({c: _number_or_text(columns[c]) for c in extra_columns if not is_missing(columns[c])})
    return entry


def _number_or_text(value: str) -> int | float | str:
    """A covariate cell as a number when it reads as one (ages, scores), else the text (sex, scanner)."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def study_entries(
    records: Sequence[Mapping[str, Any]],
    site_column: str | Sequence[str],
    label_column: str,
    label_map: Mapping[str, int] | None = None,
    extra_columns: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Datalist entries of the records (:func:`table_records`, :func:`~monai_medl.data.bids.read_bids_t1w`).

    Raises:
        StudyTableError: a chosen column is missing or empty, a label is not a class, a subject is found at more
            than one site, or the study has a single site.

    Example::

        >>> records = [{"image": f"/d/{s}{i}.nii.gz", "subject": f"{s}{i}", "session": None, "sources": ["t.csv"],
        ...             "columns": {"hospital": s, "dx": str(i % 2)}} for s in "ab" for i in range(2)]
        >>> [(e["site"], e["label"]) for e in study_entries(records, "hospital", "dx")]
        [('a', 0), ('a', 1), ('b', 0), ('b', 1)]
    """
    site_columns = [c.strip() for c in site_column.split(",")] if isinstance(site_column, str) else list(site_column)
    entries = [_entry(r, site_columns, label_column, label_map, extra_columns) for r in records]
    sites_of: dict[str, set[str]] = {}
    for e in entries:
        sites_of.setdefault(str(e["subject"]), set()).add(e["site"])
    straddling = {s: sorted(v) for s, v in sites_of.items() if len(v) > 1}
    if straddling:
        listed = "; ".join(f"{s}: {v}" for s, v in list(straddling.items())[:10])
        raise StudyTableError(
            f"{len(straddling)} subject(s) appear at more than one site (column(s) {site_columns}): {listed}. "
            "A subject's scans must share one site; if these are different people, make the subject IDs unique "
            "per site."
        )
    sites = sorted({e["site"] for e in entries})
    if len(sites) < 2:
        raise StudyTableError(
            f"only one site {sites} in column(s) {site_columns} over {len(entries)} scans: a mixed-effects model "
            "learns from differences between sites and the bundles need at least 2 training sites (choose another "
            "--site-column, e.g. a scanner field such as Manufacturer)."
        )
    return entries


def _first_fold(entries: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(rest, held): ``held`` is one fold of ``round(1 / fraction)`` subject-grouped label x site folds."""
    fold = stratified_group_kfold(entries, n_splits=max(2, round(1 / fraction)), seed=seed)[0]
    return fold["training"], fold["validation"]


def split_study(
    entries: Sequence[dict],
    holdout_sites: Sequence[str] | int | None = None,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
) -> dict[str, list[dict]]:
    """Training/validation/test sections: held-out sites whole in ``test``, the other subjects split grouped.

    Args:
        entries: :func:`study_entries`.
        holdout_sites: site names held out whole, or a number of sites drawn at random with ``seed``; None or
            ``[]``: no unseen site.
        seed: seed of the site draw and of the folds.
        val_fraction: share of the seen sites' subjects in ``validation`` (rounded to one of ``1/k`` folds).
        test_fraction: share of the seen sites' subjects in ``test`` (0: the test holds the unseen sites only).

    Raises:
        StudyTableError: unknown held-out site names, or fewer than 2 sites left for training.

    Example::

        >>> data = [{"site": s, "subject": f"{s}{i}", "label": i % 2} for s in "abcd" for i in range(10)]
        >>> parts = split_study(data, holdout_sites=["d"], seed=0)
        >>> {k: len(v) for k, v in parts.items()}, sorted({e["site"] for e in parts["test"]})
        ({'training': 18, 'validation': 6, 'test': 16}, ['a', 'b', 'c', 'd'])
    """
    entries = list(entries)
    sites = sorted({e["site"] for e in entries})
    if isinstance(holdout_sites, int):
        parts = leave_sites_out(entries, num_unseen=holdout_sites, seed=seed) if holdout_sites else None
    elif holdout_sites:
        unknown = sorted(set(holdout_sites) - set(sites))
        if unknown:
            raise StudyTableError(f"--holdout-sites {unknown} are not sites of the study; its sites are {sites}.")
        parts = leave_sites_out(entries, unseen_sites=list(holdout_sites))
    else:
        parts = None
    seen, unseen = (parts["seen"], parts["unseen"]) if parts else (entries, [])
    seen_sites = sorted({e["site"] for e in seen})
    if len(seen_sites) < 2:
        raise StudyTableError(
            f"holding out {sorted(set(sites) - set(seen_sites))} leaves {len(seen_sites)} training site(s) "
            f"{seen_sites}; the bundles need at least 2 (hold out fewer sites)."
        )
    rest, test = _first_fold(seen, test_fraction, seed) if test_fraction > 0 else (seen, [])
    training, validation = _first_fold(rest, val_fraction / (1 - test_fraction), seed + 1)
    return {"training": training, "validation": validation, "test": test + unseen}


def site_label_report(sections: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """Markdown table: one row per site, per section the scans of each label (``label 0 / label 1 / ...``).

    Example::

        >>> print(site_label_report({"training": [{"site": "a", "label": 0}, {"site": "a", "label": 1}],
        ...                          "test": [{"site": "b", "label": 1}]}))
        | site | unseen | training (0/1) | test (0/1) | subjects |
        |---|---|---|---|---|
        | a |  | 1/1 | 0/0 | 0 |
        | b | yes | 0/0 | 0/1 | 0 |
    """
    labels = sorted({e["label"] for entries in sections.values() for e in entries})
    training_sites = {e["site"] for e in sections.get("training", [])}
    sites = sorted({e["site"] for entries in sections.values() for e in entries})
    head = "/".join(str(x) for x in labels)
    lines = [
        "| site | unseen | " + " | ".join(f"{name} ({head})" for name in sections) + " | subjects |",
        "|---|---|" + "---|" * len(sections) + "---|",
    ]
    for site in sites:
        cells = []
        for entries in sections.values():
            count = Counter(e["label"] for e in entries if e["site"] == site)
            cells.append("/".join(str(count.get(x, 0)) for x in labels))
        subjects = {
            e["subject"] for entries in sections.values() for e in entries if e["site"] == site and "subject" in e
        }
        unseen = "" if site in training_sites else "yes"
        lines.append(f"| {site} | {unseen} | " + " | ".join(cells) + f" | {len(subjects)} |")
    return "\n".join(lines)


def make_datalist(
    out: str | os.PathLike,
    records: Sequence[Mapping[str, Any]],
    site_column: str | Sequence[str],
    label_column: str,
    label_map: Mapping[str, int] | None = None,
    holdout_sites: Sequence[str] | int | None = None,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    extra_columns: Sequence[str] = (),
    description: str = "",
) -> tuple[str, str]:
    """Entries, splits, datalist JSON and report (``<out>`` and ``<out stem>_report.md``); returns both paths."""
    entries = study_entries(records, site_column, label_column, label_map, extra_columns)
    sections = split_study(entries, holdout_sites, seed, val_fraction, test_fraction)
    unseen = sorted({e["site"] for e in sections["test"]} - {e["site"] for e in sections["training"]})
    path = write_datalist(
        out,
        sections,
        description=description or "built by python -m monai_medl.data.make_datalist",
        num_classes=max(e["label"] for e in entries) + 1,
        label_map=dict(label_map) if label_map else None,
        unseen_sites=unseen,
        seed=seed,
    )
    report = os.path.splitext(path)[0] + "_report.md"
    table = site_label_report(sections)
    sizes = ", ".join(f"{name} {len(v)}" for name, v in sections.items())
    with open(report, "w", encoding="utf-8") as f:
        f.write(f"# Datalist {os.path.basename(path)}\n\nScans: {sizes}; unseen (held-out) sites: {unseen}.\n\n")
        f.write(f"Scans per site and label ({label_column}):\n\n{table}\n")
    return path, report


def _label_map(text: str | None) -> dict[str, int] | None:
    if not text:
        return None
    try:
        pairs = [item.split("=", 1) for item in text.split(",")]
        return {k.strip(): int(v) for k, v in pairs}
    except ValueError:
        raise StudyTableError(f"--label-map {text!r} should read like CN=0,AD=1 (text label = class).") from None


def _holdout(values: Sequence[str] | None) -> Sequence[str] | int | None:
    """A single integer is a number of sites to draw (unless it names a site, decided by split_study's check)."""
    if values and len(values) == 1 and values[0].isdigit():
        return int(values[0])
    return values


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m monai_medl.data.make_datalist", description=__doc__.split("\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--bids", help="BIDS root (participants.tsv, sub-*/[ses-*/]anat/*_T1w.nii.gz)")
    source.add_argument("--table", help="CSV or TSV with one row per scan")
    p.add_argument("--path-column", help="--table: the column of image paths (relative to the table's folder)")
    p.add_argument("--subject-column", help="--table: the subject column (default: every row its own subject)")
    p.add_argument("--site-column", required=True, help="site column(s), comma-separated to combine")
    p.add_argument("--label-column", required=True, help="class label column")
    p.add_argument("--label-map", help="text label to class, e.g. CN=0,AD=1")
    p.add_argument("--holdout-sites", nargs="*", help="site names held out whole (unseen), or a number to draw")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--test-fraction", type=float, default=0.2, help="seen-site subjects in test (0: none)")
    p.add_argument("--extra-columns", nargs="*", default=[], help="columns copied into each entry (age, sex, ...)")
    p.add_argument("--out", required=True, help="datalist JSON to write")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.table and not args.path_column:
            raise StudyTableError("--table needs --path-column (the column of image paths).")
        if args.bids:
            records = read_bids_t1w(args.bids)
        else:
            chosen = {"--site-column": args.site_column.split(","), "--label-column": args.label_column}
            records = table_records(args.table, args.path_column, args.subject_column, chosen)
        path, report = make_datalist(
            args.out,
            records,
            args.site_column,
            args.label_column,
            _label_map(args.label_map),
            _holdout(args.holdout_sites),
            args.seed,
            args.val_fraction,
            args.test_fraction,
            args.extra_columns,
            description=f"from {args.bids or args.table}",
        )
    except StudyTableError as e:
        print(f"make_datalist: error: {e}", file=sys.stderr)
        return 2
    with open(report, encoding="utf-8") as f:
        print(f.read())
    print(f"datalist: {path}\nreport: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
