# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Site identity: a vocabulary fitted on the training sites, site -> index, and index -> design vector ``z``.

The conventions shared by the whole package:

* A :class:`SiteVocabulary` maps the training sites, in sorted order, to ``0 .. K-1``.
* A site that is not in the vocabulary maps to :data:`UNSEEN_SITE` (``-1``), never to a new index.
* The design vector ``z`` of a seen site is one-hot of length ``K``; for ``UNSEEN_SITE`` it is all zeros,
  which asks a mixed-effects model for its population-level (fixed-effects) prediction.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import ensure_tuple_rep

from monai_medl.transforms.json_io import JsonFileMixin
from monai_medl.transforms.key_errors import errors_name_key

__all__ = [
    "UNSEEN_SITE",
    "canonical_site",
    "SiteVocabulary",
    "site_index_to_design",
    "SiteToIndex",
    "SiteToDesign",
    "SiteToIndexd",
    "SiteToIndexD",
    "SiteToIndexDict",
    "SiteToDesignd",
    "SiteToDesignD",
    "SiteToDesignDict",
]

UNSEEN_SITE: int = -1
"""Index given to a site that was not seen in training (its design vector is all zeros)."""

_UNSEEN_MODES = ("marker", "error")


def canonical_site(site: Any) -> str:
    """Canonical (string) name of a raw site value, so that ``3``, ``np.int64(3)``, ``tensor(3)`` and ``"3"`` agree.

    Example::

        >>> canonical_site(np.int64(3)), canonical_site("site_a")
        ('3', 'site_a')
    """
    if isinstance(site, torch.Tensor | np.ndarray):
        if int(np.prod(site.shape)) != 1:
            raise ValueError(f"a site must be a single value, got an array of shape {tuple(site.shape)}.")
        site = site.reshape(-1)[0].item()
    if isinstance(site, bool | np.bool_):
        raise TypeError(f"a site must be a string or an integer, got the boolean {site!r}.")
    if isinstance(site, str):
        if not site.strip():
            raise ValueError("a site name must not be empty.")
        return site
    if isinstance(site, int | np.integer):
        return str(int(site))
    if isinstance(site, float | np.floating) and float(site).is_integer():
        return str(int(site))
    raise TypeError(f"a site must be a string or an integer, got {site!r} of type {type(site).__name__}.")


def _site_sort_key(name: str) -> tuple[int, int, str]:
    """Integer-like names sort numerically (``"2" < "10"``) and before the other names, which sort as strings."""
    try:
        return (0, int(name), "")
    except ValueError:
        return (1, 0, name)


class SiteVocabulary(JsonFileMixin):
    """Map the sites of the training set to indices ``0 .. K-1`` (sorted order), unseen sites to ``UNSEEN_SITE``.

    Raw sites may be strings (``"site_a"``) or integers (``3``); they are stored under a canonical string name,
    so ``3``, ``np.int64(3)`` and ``"3"`` are the same site. Integer-like names sort numerically. Fit the
    vocabulary on the training split only and save it with :meth:`to_json`, so that inference uses the same
    indices and recognises every other site as unseen.

    Args:
        sites: the training sites (repeats are fine; a datalist's site column can be passed as is).

    Raises:
        ValueError: if ``sites`` is empty.

    Example::

        >>> vocab = SiteVocabulary(["site_b", "site_a", "site_b"])
        >>> vocab.num_sites, vocab.sites
        (2, ('site_a', 'site_b'))
        >>> vocab.index("site_b"), vocab.index("site_z")
        (1, -1)
    """

    json_description = "site vocabulary"

    def __init__(self, sites: Iterable[Any]) -> None:
        names = {canonical_site(s) for s in sites}
        if not names:
            raise ValueError("SiteVocabulary needs at least one training site, got none.")
        self._sites: tuple[str, ...] = tuple(sorted(names, key=_site_sort_key))
        self._index: dict[str, int] = {name: i for i, name in enumerate(self._sites)}

    @classmethod
    def from_datalist(cls, datalist: Sequence[Mapping[Hashable, Any]], site_key: str = "site") -> SiteVocabulary:
        """Fit on the ``site_key`` entries of a list of dictionaries (e.g. the training datalist).

        Raises:
            KeyError: naming the first entry that has no ``site_key``.
        """
        sites = []
        for i, item in enumerate(datalist):
            if site_key not in item:
                raise KeyError(f"datalist entry {i} has no site key {site_key!r} (keys: {sorted(map(str, item))}).")
            sites.append(item[site_key])
        return cls(sites)

    @property
    def num_sites(self) -> int:
        """Number of training sites ``K`` (the length of the design vector ``z``)."""
        return len(self._sites)

    @property
    def sites(self) -> tuple[str, ...]:
        """Canonical site names in index order."""
        return self._sites

    def __len__(self) -> int:
        return self.num_sites

    def __contains__(self, site: Any) -> bool:
        try:
            return canonical_site(site) in self._index
        except (TypeError, ValueError):
            return False

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SiteVocabulary) and self._sites == other._sites

    def __hash__(self) -> int:
        return hash(self._sites)

    def __repr__(self) -> str:
        return f"SiteVocabulary(sites={list(self._sites)})"

    def index(self, site: Any, unseen: str = "marker") -> int:
        """Index of ``site``; an unknown site gives ``UNSEEN_SITE`` (``unseen="marker"``) or raises (``"error"``)."""
        if unseen not in _UNSEEN_MODES:
            raise ValueError(f"unseen must be one of {_UNSEEN_MODES}, got {unseen!r}.")
        name = canonical_site(site)
        idx = self._index.get(name, UNSEEN_SITE)
        if idx == UNSEEN_SITE and unseen == "error":
            raise ValueError(f"site {name!r} is not in the training vocabulary {list(self._sites)}.")
        return idx

    def name(self, index: int) -> str:
        """Canonical name of a seen-site index (``0 .. K-1``)."""
        index = int(index)
        if not 0 <= index < self.num_sites:
            raise ValueError(f"site index {index} is not a seen site; expected 0 <= index < {self.num_sites}.")
        return self._sites[index]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: ``{"sites": [...], "unseen_index": -1}``."""
        return {"sites": list(self._sites), "unseen_index": UNSEEN_SITE}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SiteVocabulary:
        """Inverse of :meth:`to_dict`; the stored order must be the sorted order (indices never move)."""
        if "sites" not in data:
            raise ValueError(f"a site vocabulary needs a 'sites' list, got keys {sorted(data)}.")
        vocab = cls(data["sites"])
        if list(vocab.sites) != [canonical_site(s) for s in data["sites"]]:
            raise ValueError(
                f"stored site vocabulary {list(data['sites'])} is not unique and sorted; expected {list(vocab.sites)}."
            )
        return vocab


def _as_index_tensor(index: Any) -> torch.Tensor:
    """Flatten site indices (int, sequence, array or tensor of shape (), (B,) or (B, 1)) to a long tensor (B,)."""
    t = torch.as_tensor(index.as_tensor() if hasattr(index, "as_tensor") else index)
    if t.ndim > 1 and t.shape[-1] == 1:
        t = t.reshape(t.shape[:-1])
    if t.ndim > 1:
        raise ValueError(f"site indices must have shape (B,) or (B, 1), got {tuple(t.shape)}.")
    t = t.reshape(-1)
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"site indices must be integers, got dtype {t.dtype}.")
    if t.is_floating_point():
        if not bool(torch.all(torch.isfinite(t) & (t == torch.round(t)))):
            raise ValueError(f"site indices must be whole numbers, got {t.tolist()}.")
    return t.long()


def site_index_to_design(index: Any, num_sites: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Turn site indices into the design matrix ``z`` of shape ``(B, num_sites)``.

    A seen index ``0 <= i < num_sites`` gives a one-hot row, ``UNSEEN_SITE`` (``-1``) an all-zero row (population
    level). This is the batch form used by ``prepare_batch``; :class:`SiteToDesignd` is the per-sample transform.

    Args:
        index: site indices, an int or an array/tensor of shape ``()``, ``(B,)`` or ``(B, 1)``.
        num_sites: ``K``, the number of training sites.
        dtype: floating dtype of the result. Defaults to ``torch.float32``.

    Raises:
        ValueError: if an index is ``>= num_sites`` or ``< -1`` (the message lists the offending positions).

    Example::

        >>> site_index_to_design(torch.tensor([0, 2, -1]), num_sites=3)
        tensor([[1., 0., 0.],
                [0., 0., 1.],
                [0., 0., 0.]])
    """
    if isinstance(num_sites, bool) or int(num_sites) != num_sites or num_sites < 1:
        raise ValueError(f"num_sites must be a positive integer, got {num_sites!r}.")
    num_sites = int(num_sites)
    idx = _as_index_tensor(index)
    bad = (idx < UNSEEN_SITE) | (idx >= num_sites)
    if bool(bad.any()):
        pos = torch.nonzero(bad).reshape(-1).tolist()
        raise ValueError(
            f"site index out of range at batch positions {pos[:10]} (values {idx[bad].tolist()[:10]}); "
            f"expected 0 <= index < num_sites={num_sites}, or {UNSEEN_SITE} for an unseen site."
        )
    z = torch.zeros(idx.shape[0], num_sites, dtype=dtype, device=idx.device)
    seen = idx != UNSEEN_SITE
    z[seen, idx[seen]] = 1
    return z


def _check_soft_design(z: Any, num_sites: int, where: str) -> torch.Tensor:
    """Validate a soft design vector (length ``K``, finite, entries in [0, 1], sum <= 1)."""
    t = torch.as_tensor(z.as_tensor() if hasattr(z, "as_tensor") else z, dtype=torch.float32).reshape(-1)
    if t.numel() != num_sites:
        raise ValueError(f"{where}: a soft design vector needs {num_sites} entries (num_sites), got {t.numel()}.")
    if not bool(torch.all(torch.isfinite(t))) or bool(torch.any(t < 0)) or bool(torch.any(t > 1)):
        raise ValueError(f"{where}: soft design entries must be finite and in [0, 1], got {t.tolist()}.")
    if float(t.sum()) > 1 + 1e-4:
        raise ValueError(f"{where}: soft design entries must sum to at most 1, got {float(t.sum()):.6f}.")
    return t


class SiteToIndex(Transform):
    """Map one raw site (string or integer name) to its vocabulary index, ``UNSEEN_SITE`` for an unseen site.

    Args:
        vocabulary: a fitted :class:`SiteVocabulary`, or the path of its JSON file.
        unseen: ``"marker"`` returns ``UNSEEN_SITE`` for a site not in the vocabulary; ``"error"`` raises.

    Example::

        >>> to_index = SiteToIndex(SiteVocabulary(["site_a", "site_b"]))
        >>> to_index("site_b"), to_index("site_q")
        (1, -1)
    """

    backend: list = []

    def __init__(self, vocabulary: SiteVocabulary | str | os.PathLike, unseen: str = "marker") -> None:
        if not isinstance(vocabulary, SiteVocabulary):
            vocabulary = SiteVocabulary.from_json(vocabulary)
        if unseen not in _UNSEEN_MODES:
            raise ValueError(f"unseen must be one of {_UNSEEN_MODES}, got {unseen!r}.")
        self.vocabulary = vocabulary
        self.unseen = unseen

    def __call__(self, site: Any) -> int:
        return self.vocabulary.index(site, unseen=self.unseen)


class SiteToDesign(Transform):
    """Design vector ``z`` (float32, length ``num_sites``) of one site index: one-hot, or zeros for ``UNSEEN_SITE``.

    Args:
        num_sites: ``K``, the number of training sites.

    Example::

        >>> SiteToDesign(3)(1)
        tensor([0., 1., 0.])
    """

    backend: list = []

    def __init__(self, num_sites: int) -> None:
        if isinstance(num_sites, bool) or int(num_sites) != num_sites or num_sites < 1:
            raise ValueError(f"num_sites must be a positive integer, got {num_sites!r}.")
        self.num_sites = int(num_sites)

    def __call__(self, index: Any) -> torch.Tensor:
        idx = _as_index_tensor(index)
        if idx.numel() != 1:
            raise ValueError(f"SiteToDesign expects one site index per sample, got {idx.numel()} values.")
        return site_index_to_design(idx, self.num_sites)[0]


class SiteToIndexd(MapTransform):
    """Dictionary-based version :py:class:`monai_medl.transforms.SiteToIndex`.

    Replaces the raw site under each key by its integer index (``UNSEEN_SITE`` for a site outside the training
    vocabulary, unless ``unseen="error"``).

    Args:
        keys: keys holding the raw site (or the level of another grouping factor, e.g. ``"subject"``).
            Defaults to ``"site"``.
        vocabulary: a fitted :class:`SiteVocabulary`, or the path of its JSON file; or, for several grouping
            factors, a mapping key -> vocabulary (or path), one per key (each factor has its own levels).
        unseen: ``"marker"`` (default) or ``"error"``.
        raw_key_postfix: if given, the raw site is also kept under ``f"{key}_{raw_key_postfix}"``
            (e.g. ``"site_name"``), which per-site metrics for unseen sites need.
        allow_missing_keys: don't raise if a key is missing.

    Example::

        >>> t = SiteToIndexd(keys="site", vocabulary=SiteVocabulary(["site_a", "site_b"]))
        >>> t({"site": "site_b"})["site"], t({"site": "site_new"})["site"]
        (1, -1)
        >>> vocabs = {"site": SiteVocabulary(["a", "b"]), "subject": SiteVocabulary(["a/1", "a/2", "b/1"])}
        >>> t = SiteToIndexd(keys=["site", "subject"], vocabulary=vocabs)  # subject nested in site: "site/subject"
        >>> d = t({"site": "b", "subject": "b/7"})  # a known site with a new subject
        >>> d["site"], d["subject"]
        (1, -1)
    """

    backend = SiteToIndex.backend

    def __init__(
        self,
        keys: KeysCollection = "site",
        vocabulary: SiteVocabulary | str | os.PathLike | None = None,
        unseen: str = "marker",
        raw_key_postfix: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if vocabulary is None:
            raise ValueError("SiteToIndexd needs a fitted SiteVocabulary (or the path of its JSON file).")
        if isinstance(vocabulary, Mapping):
            missing = [k for k in self.keys if k not in vocabulary]
            if missing:
                raise ValueError(
                    f"vocabulary has no entry for key(s) {missing}; expected one vocabulary per key {list(self.keys)}."
                )
            self.converters = {k: SiteToIndex(vocabulary[k], unseen=unseen) for k in self.keys}
        else:
            converter = SiteToIndex(vocabulary, unseen=unseen)
            self.converters = dict.fromkeys(self.keys, converter)
        self.raw_key_postfix = raw_key_postfix

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if self.raw_key_postfix:
                d[f"{key}_{self.raw_key_postfix}"] = d[key]
            with errors_name_key(key):
                d[key] = self.converters[key](d[key])
        return d


class SiteToDesignd(MapTransform):
    """Dictionary-based version :py:class:`monai_medl.transforms.SiteToDesign`.

    Writes the design vector ``z`` of the site index under each key to a new key ``name``; the index itself is
    kept. If ``soft_key`` is given and present, its probability vector (e.g. from a z-predictor) is used as ``z``
    instead, after checking it has ``num_sites`` entries in [0, 1] summing to at most 1.

    Args:
        keys: keys holding site indices (already mapped by :class:`SiteToIndexd`). Defaults to ``"site"``.
        num_sites: ``K``; one value, or one per key for several grouping factors.
        name: output key(s) for ``z``, one per key. Defaults to ``"z"``.
        soft_key: optional key of a soft design vector that overrides the one-hot ``z`` when present.
        allow_missing_keys: don't raise if a key is missing.

    Raises:
        ValueError: for an index ``>= num_sites`` or ``< -1``, naming the key.

    Example::

        >>> SiteToDesignd(keys="site", num_sites=3)({"site": 2})["z"]
        tensor([0., 0., 1.])
    """

    backend = SiteToDesign.backend

    def __init__(
        self,
        keys: KeysCollection = "site",
        num_sites: int | Sequence[int] | None = None,
        name: str | Sequence[str] = "z",
        soft_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if num_sites is None:
            raise ValueError("SiteToDesignd needs num_sites (the vocabulary's num_sites, K).")
        names = ensure_tuple_rep(name, len(self.keys))
        if len(set(names)) != len(names):
            raise ValueError(f"each key needs its own output name, got name={name!r} for keys {self.keys}.")
        self.names = names
        self.converters = [SiteToDesign(k) for k in ensure_tuple_rep(num_sites, len(self.keys))]
        self.soft_key = soft_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, out, conv in self.key_iterator(d, self.names, self.converters):
            if self.soft_key is not None and self.soft_key in d and d[self.soft_key] is not None:
                d[out] = _check_soft_design(d[self.soft_key], conv.num_sites, f"key {self.soft_key!r}")
                continue
            with errors_name_key(key):
                d[out] = conv(d[key])
        return d


SiteToIndexD = SiteToIndexDict = SiteToIndexd
SiteToDesignD = SiteToDesignDict = SiteToDesignd
