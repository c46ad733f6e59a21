# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Grouping factors of tabular data: names, nesting and level vocabularies with an unseen marker."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

try:  # pandas is optional (the stats extra); importing it here, not through MONAI, keeps MONAI out of the import
    import pandas as pd

    has_pandas = True
except ImportError:  # pragma: no cover - exercised only without pandas
    pd, has_pandas = None, False

__all__ = ["GroupEncoder", "as_group_frame", "parse_nested", "validation_rows"]


def as_group_frame(groups, n: int | None = None, arg: str = "groups"):
    """Grouping columns as a ``pandas.DataFrame`` (one column per factor), validated.

    Accepts a 1-D array or Series (one factor, named after the Series or ``"group"``), a 2-D array (factors
    ``g0, g1, ...``), a DataFrame or a mapping name -> 1-D array. Raises ValueError naming ``arg`` for a wrong
    length, a missing value or a wrong shape.
    """
    if not has_pandas:
        raise ImportError("the estimators need pandas (pip install monai-medl[stats]).")
    if isinstance(groups, pd.DataFrame):
        frame = groups.reset_index(drop=True)
    elif isinstance(groups, pd.Series):
        frame = pd.DataFrame({groups.name if groups.name is not None else "group": groups.to_numpy()})
    elif isinstance(groups, Mapping):
        frame = pd.DataFrame({str(k): np.asarray(v) for k, v in groups.items()})
    else:
        array = np.asarray(groups, dtype=object)
        if array.ndim == 1:
            frame = pd.DataFrame({"group": array})
        elif array.ndim == 2:
            frame = pd.DataFrame({f"g{i}": array[:, i] for i in range(array.shape[1])})
        else:
            raise ValueError(f"{arg} must be 1-D (one factor) or 2-D (one column per factor), got {array.ndim}-D.")
    if frame.shape[1] == 0:
        raise ValueError(f"{arg} has no grouping factor.")
    frame.columns = [str(c) for c in frame.columns]
    if n is not None and len(frame) != n:
        raise ValueError(f"{arg} has {len(frame)} rows but X has {n}.")
    missing = frame.columns[frame.isna().any()].tolist()
    if missing:
        raise ValueError(f"{arg} has missing values in {missing}.")
    return frame


def parse_nested(nested: str | Sequence[str] | None, columns: Sequence[str]) -> dict[str, list[str]]:
    """Nesting specs ``"site/subject"`` (lme4's ``site/subject``, chains ``"a/b/c"`` allowed) -> factor: path.

    Returns, for every grouping column, the columns whose combination defines its levels: ``{"site": ["site"],
    "subject": ["site", "subject"]}`` for ``"site/subject"``. Raises ValueError naming ``nested`` for an unknown
    column or a factor nested in two different parents.
    """
    paths = {c: [c] for c in columns}
    specs = [nested] if isinstance(nested, str) else list(nested or [])
    for spec in specs:
        parts = [p.strip() for p in str(spec).split("/")]
        unknown = [p for p in parts if p not in paths]
        if len(parts) < 2 or unknown or "" in parts:
            raise ValueError(
                f"nested spec {spec!r} must be 'parent/child' over the grouping columns {list(columns)}"
                + (f"; unknown: {unknown}" if unknown else "")
                + "."
            )
        for i in range(1, len(parts)):
            path = parts[: i + 1]
            if paths[parts[i]] not in ([parts[i]], path):
                raise ValueError(f"nested: {parts[i]!r} is nested in two different parents ({paths[parts[i]]}).")
            paths[parts[i]] = path
    return paths


class GroupEncoder:
    """Level vocabulary of every grouping factor, fitted on training data; unseen levels encode as ``-1``.

    A nested factor's levels are the combinations of its path (``(site, subject)`` pairs), so a known subject code
    under a new site is a new level, and a new subject under a known site is a new subject level of a known site.

    Args:
        paths: factor -> columns defining its levels (:func:`parse_nested`).

    Example::

        >>> import pandas as pd
        >>> enc = GroupEncoder(parse_nested("site/subject", ["site", "subject"]))
        >>> enc.fit(pd.DataFrame({"site": ["a", "a", "b"], "subject": [1, 2, 1]})).num_levels
        {'site': 2, 'subject': 3}
        >>> enc.transform(pd.DataFrame({"site": ["a", "c"], "subject": [9, 1]})).tolist()
        [[0, -1], [-1, -1]]
    """

    def __init__(self, paths: Mapping[str, Sequence[str]]) -> None:
        self.paths = {k: list(v) for k, v in paths.items()}
        self.levels: dict = {}

    @property
    def factors(self) -> list[str]:
        """Factor names, in the column order of the encoded indices."""
        return list(self.paths)

    @property
    def num_levels(self) -> dict[str, int]:
        """Number of training levels per factor."""
        return {k: len(v) for k, v in self.levels.items()}

    def label(self, factor: str) -> str:
        """lme4-style name of a factor: ``"subject:site"`` for ``subject`` nested in ``site``."""
        return ":".join(reversed(self.paths[factor]))

    def _keys(self, frame, factor: str):
        path = self.paths[factor]
        if len(path) == 1:
            return pd.Index(frame[factor].to_numpy())
        return pd.MultiIndex.from_arrays([frame[c].to_numpy() for c in path], names=path)

    def fit(self, frame) -> GroupEncoder:
        """Learn the levels of every factor from a grouping DataFrame (:func:`as_group_frame`)."""
        self._check_columns(frame)
        self.levels = {}
        for factor in self.paths:
            keys = self._keys(frame, factor).unique()
            self.levels[factor] = keys.sort_values() if _sortable(keys) else keys
        return self

    def transform(self, frame) -> np.ndarray:
        """Indices ``(n, num_factors)`` (int64), ``-1`` where a level was not seen in training."""
        self._check_columns(frame)
        return np.stack([self.levels[f].get_indexer(self._keys(frame, f)) for f in self.paths], axis=1).astype(np.int64)

    def _check_columns(self, frame) -> None:
        needed = {c for path in self.paths.values() for c in path}
        if set(frame.columns) != needed:
            raise ValueError(f"groups must have the columns {sorted(needed)}, got {sorted(frame.columns)}.")


def validation_rows(groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A held-out share of every group's rows: ``round(fraction * size)`` of them (at least one), at random.

    Groups with a single row keep it (so every level keeps at least one row outside the validation rows). The rows
    of a group are drawn with one ``numpy`` permutation per group, groups in sorted order, from ``seed``.

    Args:
        groups: group label per row ``(n,)``, or ``(n, f)`` level indices of several factors (then a group is one
            combination of levels).
        fraction: share of each group's rows held out, in ``(0, 1)``.
        seed: seed of the draw.

    Returns:
        Sorted row indices of the validation rows.

    Example::

        >>> validation_rows(np.array([0, 0, 0, 0, 0, 1, 2, 2]), 0.2, seed=0).size  # 1 of group 0 and of group 2
        2
    """
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}.")
    groups = np.asarray(groups)
    labels = np.unique(groups, axis=0, return_inverse=True)[1].reshape(-1) if groups.ndim == 2 else groups
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])  # ascending rows per group
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(rows)[: max(1, int(round(fraction * len(rows))))] for rows in members if len(rows) >= 2]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def _sortable(index) -> bool:
    try:
        index.sort_values()
    except TypeError:
        return False
    return True
