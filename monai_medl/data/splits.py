# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Site-aware splits of a datalist: whole sites held out, stratified subject-grouped folds, Monte-Carlo splits.

Every function takes a list of entry dictionaries (a datalist section) and returns lists of the same dictionaries,
so the result can be fed to :class:`monai.data.Dataset` or written with :func:`monai_medl.data.write_datalist`.
The grouping unit is the subject (``group_key="subject"``): all scans of a subject always land on the same side of
a split. An entry without a subject is its own group. All splits are reproducible from ``seed`` and built on
scikit-learn's group splitters.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.model_selection import GroupKFold, GroupShuffleSplit, LeaveOneGroupOut, StratifiedGroupKFold

from monai_medl.transforms.site import canonical_site

__all__ = ["leave_sites_out", "site_folds", "stratified_group_kfold", "monte_carlo_splits", "check_disjoint_subjects"]

Entry = Mapping[Hashable, Any]


def _sites(datalist: Sequence[Entry], site_key: str) -> list[str]:
    out = []
    for i, item in enumerate(datalist):
        if site_key not in item or item[site_key] is None:
            raise KeyError(f"datalist entry {i} has no site (key {site_key!r}); every entry needs its site.")
        out.append(canonical_site(item[site_key]))
    return out


def _groups(datalist: Sequence[Entry], group_key: str | None) -> list[str]:
    """Subject of each entry (entries without one are their own group)."""
    if group_key is None:
        return [f"\0entry{i}" for i in range(len(datalist))]
    return [
        str(item[group_key]) if item.get(group_key) is not None else f"\0entry{i}" for i, item in enumerate(datalist)
    ]


def _pick(datalist: Sequence[Entry], indices: np.ndarray) -> list:
    return [datalist[int(i)] for i in np.sort(indices)]


def _as_parts(datalist: Sequence[Entry], index_pairs: Any) -> list[dict[str, list]]:
    """``[{"training": [...], "validation": [...]}]`` from a splitter's (train, validation) index pairs."""
    return [{"training": _pick(datalist, tr), "validation": _pick(datalist, va)} for tr, va in index_pairs]


def check_disjoint_subjects(*parts: Sequence[Entry], group_key: str = "subject") -> None:
    """Raise ``ValueError`` naming the subjects that appear in more than one of ``parts``."""
    owner: dict[str, int] = {}
    shared: set[str] = set()
    for p, part in enumerate(parts):
        for item in part:
            subject = item.get(group_key)
            if subject is None:
                continue
            if owner.setdefault(str(subject), p) != p:
                shared.add(str(subject))
    if shared:
        raise ValueError(f"subjects appear in more than one split part: {sorted(shared)[:10]} ({len(shared)} in all).")


def leave_sites_out(
    datalist: Sequence[Entry],
    unseen_sites: Sequence[Any] | None = None,
    num_unseen: int | None = None,
    seed: int = 0,
    site_key: str = "site",
    group_key: str | None = "subject",
) -> dict[str, list]:
    """Split into seen sites (for training) and whole held-out unseen sites (for the unseen-site test).

    Either name the unseen sites, or ask for ``num_unseen`` sites drawn reproducibly from ``seed`` (scikit-learn's
    :class:`~sklearn.model_selection.GroupShuffleSplit` over sites).

    Args:
        datalist: entries with a site.
        unseen_sites: the sites to hold out (raw names or integers).
        num_unseen: number of sites to draw when ``unseen_sites`` is not given.
        seed: random seed for drawing sites.
        site_key: key of the site.
        group_key: key of the subject; a subject scanned at both a seen and an unseen site is an error.

    Returns:
        ``{"seen": [...], "unseen": [...], "unseen_sites": [...]}``.

    Example::

        >>> data = [{"site": s, "subject": f"{s}{i}"} for s in "abcd" for i in range(3)]
        >>> parts = leave_sites_out(data, unseen_sites=["d"])
        >>> len(parts["seen"]), len(parts["unseen"])
        (9, 3)
    """
    sites = _sites(datalist, site_key)
    present = sorted(set(sites))
    if (unseen_sites is None) == (num_unseen is None):
        raise ValueError("give exactly one of unseen_sites (names) or num_unseen (a count).")
    if unseen_sites is not None:
        held = {canonical_site(s) for s in unseen_sites}
        missing = sorted(held - set(present))
        if missing:
            raise ValueError(f"unseen sites {missing} are not in the datalist; its sites are {present}.")
    else:
        assert num_unseen is not None  # exactly one of the two was given (checked above)
        if not 0 < num_unseen < len(present):
            raise ValueError(f"num_unseen must be between 1 and {len(present) - 1} (there are {len(present)} sites).")
        splitter = GroupShuffleSplit(n_splits=1, test_size=int(num_unseen), random_state=seed)
        _, test_idx = next(splitter.split(np.zeros(len(sites)), groups=sites))
        held = {sites[i] for i in test_idx}
    is_unseen = np.array([s in held for s in sites])
    parts = {"seen": _pick(datalist, np.flatnonzero(~is_unseen)), "unseen": _pick(datalist, np.flatnonzero(is_unseen))}
    if group_key is not None:
        check_disjoint_subjects(parts["seen"], parts["unseen"], group_key=group_key)
    parts["unseen_sites"] = sorted(held)
    return parts


def site_folds(datalist: Sequence[Entry], n_splits: int | None = None, site_key: str = "site") -> list[dict[str, list]]:
    """Cross-validation over sites: each fold's validation part is one or more whole sites.

    ``n_splits=None`` is leave-one-site-out (:class:`~sklearn.model_selection.LeaveOneGroupOut`); otherwise sites
    are spread over ``n_splits`` folds by :class:`~sklearn.model_selection.GroupKFold` (deterministic).

    Returns:
        a list of ``{"training": [...], "validation": [...]}``, one per fold.
    """
    sites = _sites(datalist, site_key)
    n_sites = len(set(sites))
    if n_sites < 2:
        raise ValueError(f"site folds need at least 2 sites, got {n_sites}.")
    if n_splits is not None and not 2 <= n_splits <= n_sites:
        raise ValueError(f"n_splits must be between 2 and the number of sites ({n_sites}), got {n_splits}.")
    splitter = LeaveOneGroupOut() if n_splits is None else GroupKFold(n_splits=n_splits)
    x = np.zeros(len(sites))
    return [
        {"training": _pick(datalist, tr), "validation": _pick(datalist, va)}
        for tr, va in splitter.split(x, groups=sites)
    ]


def _strata(datalist: Sequence[Entry], label_key: str | None, site_key: str | None) -> np.ndarray:
    sites = _sites(datalist, site_key) if site_key is not None else [""] * len(datalist)
    if label_key is None:
        return np.asarray(sites)
    labels = []
    for i, item in enumerate(datalist):
        if label_key not in item:
            raise KeyError(f"datalist entry {i} has no label (key {label_key!r}) to stratify on.")
        labels.append(str(item[label_key]))
    return np.asarray([f"{lab}|{s}" for lab, s in zip(labels, sites)])


def stratified_group_kfold(
    datalist: Sequence[Entry],
    n_splits: int = 5,
    seed: int = 0,
    label_key: str | None = "label",
    site_key: str | None = "site",
    group_key: str | None = "subject",
) -> list[dict[str, list]]:
    """K folds stratified on label x site, grouped by subject (no subject straddles folds).

    Built on :class:`~sklearn.model_selection.StratifiedGroupKFold` with ``shuffle=True``. With ``label_key=None``
    (e.g. a regression target) it stratifies on site only; with ``site_key=None`` on label only. Apply it to the
    seen part of :func:`leave_sites_out` so that unseen sites never reach training.

    Returns:
        a list of ``{"training": [...], "validation": [...]}``, one per fold.

    Example::

        >>> data = [{"site": s, "subject": f"{s}{i}", "label": i % 2} for s in "ab" for i in range(10)]
        >>> folds = stratified_group_kfold(data, n_splits=5, seed=0)
        >>> [len(f["validation"]) for f in folds]
        [4, 4, 4, 4, 4]
    """
    if len(datalist) < n_splits:
        raise ValueError(f"cannot make {n_splits} folds from {len(datalist)} entries.")
    strata = _strata(datalist, label_key, site_key)
    groups = _groups(datalist, group_key)
    counts = Counter(strata.tolist())
    if max(counts.values()) < n_splits:
        raise ValueError(
            f"cannot make {n_splits} stratified folds: the largest label x site stratum has only "
            f"{max(counts.values())} entries; use fewer folds or stratify on fewer keys (label_key/site_key=None)."
        )
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    x = np.zeros(len(datalist))
    with warnings.catch_warnings():
        # small strata are expected (e.g. a rare label at one site); they are spread as evenly as possible
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        folds = list(splitter.split(x, strata, groups))
    return _as_parts(datalist, folds)


def monte_carlo_splits(
    datalist: Sequence[Entry],
    n_repeats: int = 5,
    test_size: float = 0.2,
    seed: int = 0,
    group_key: str | None = "subject",
) -> list[dict[str, list]]:
    """Repeated random subject-level splits (:class:`~sklearn.model_selection.GroupShuffleSplit`).

    Args:
        datalist: entries.
        n_repeats: number of random splits.
        test_size: fraction (float) or number (int) of subjects in each validation part.
        seed: random seed; the same seed gives the same splits.
        group_key: key of the subject.

    Returns:
        a list of ``{"training": [...], "validation": [...]}``, one per repeat.
    """
    groups = _groups(datalist, group_key)
    splitter = GroupShuffleSplit(n_splits=n_repeats, test_size=test_size, random_state=seed)
    x = np.zeros(len(datalist))
    return [
        {"training": _pick(datalist, tr), "validation": _pick(datalist, va)}
        for tr, va in splitter.split(x, groups=groups)
    ]
