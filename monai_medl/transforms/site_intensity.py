# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Per-site intensity normalisation whose statistics are fitted on training data only.

:class:`SiteIntensityStats` is fitted once, on the training split, and saved to JSON; the transforms only *apply*
it and never update it, so validation and test images cannot leak into the preprocessing. A site that has no
statistics (an unseen site) falls back to the statistics pooled over all training sites (or, if asked, to the
image's own statistics, or to an error).

Both methods are an affine map ``(x - center) / scale``:

* ``"zscore"``: ``center`` = mean, ``scale`` = standard deviation of the site's voxels;
* ``"percentile"``: ``center`` = the ``lower`` percentile, ``scale`` = ``upper`` - ``lower`` percentile, so the
  site's robust range maps to [0, 1].

With ``nonzero=True`` (default, for skull-stripped images) statistics use the non-zero voxels only and background
voxels stay zero.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor, ensure_tuple

from monai_medl.transforms.json_io import JsonFileMixin
from monai_medl.transforms.key_errors import errors_name_key
from monai_medl.transforms.site import canonical_site

__all__ = [
    "SiteIntensityStats",
    "NormalizeBySite",
    "NormalizeBySited",
    "NormalizeBySiteD",
    "NormalizeBySiteDict",
]

_METHODS = ("zscore", "percentile")
_FALLBACKS = ("pooled", "image", "error")
POOLED = "__pooled__"


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.as_tensor() if hasattr(x, "as_tensor") else x
        return x.numpy()
    return np.asarray(x)


def _affine_of(values: np.ndarray, method: str, lower: float, upper: float) -> dict[str, float]:
    """Statistics and the (center, scale) of the normalisation for one set of voxel values."""
    if method == "zscore":
        mean, std = float(values.mean()), float(values.std())
        return {"mean": mean, "std": std, "center": mean, "scale": std}
    lo, hi = (float(v) for v in np.percentile(values, [lower, upper]))
    return {"p_lower": lo, "p_upper": hi, "center": lo, "scale": hi - lo}


class SiteIntensityStats(JsonFileMixin):
    """Per-site (and pooled) intensity statistics for one or more image keys, fitted on training data only.

    Build it with :meth:`fit` on the training entries, save it with :meth:`to_json`, and load it at evaluation and
    inference time with :meth:`from_json`. Apply it with :class:`NormalizeBySited`.

    Args:
        stats: ``{key: {site: {"center": c, "scale": s, ...}, "__pooled__": {...}}}`` (as produced by :meth:`fit`).
        method: ``"zscore"`` or ``"percentile"``.
        lower, upper: percentiles of the ``"percentile"`` method.
        nonzero: statistics were computed on non-zero voxels only, and normalisation leaves zeros at zero.

    Example::

        >>> rng = np.random.default_rng(0)
        >>> train = [{"image": rng.normal(100, 10, (1, 8, 8, 8)), "site": "a"},
        ...          {"image": rng.normal(500, 50, (1, 8, 8, 8)), "site": "b"}]
        >>> stats = SiteIntensityStats.fit(train, keys="image", nonzero=False)
        >>> [round(float(stats.get("image", site)["center"]), -1) for site in ("a", "b")]  # each site's mean, to 10
        [100.0, 500.0]
    """

    json_description = "intensity statistics"

    def __init__(
        self,
        stats: Mapping[str, Mapping[str, Mapping[str, float]]],
        method: str = "zscore",
        lower: float = 1.0,
        upper: float = 99.0,
        nonzero: bool = True,
    ) -> None:
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}.")
        for key, per_site in stats.items():
            if POOLED not in per_site:
                raise ValueError(
                    f"statistics of key {key!r} have no pooled entry {POOLED!r} (the unseen-site fallback)."
                )
            for site, s in per_site.items():
                if "center" not in s or "scale" not in s:
                    raise ValueError(f"statistics of key {key!r}, site {site!r} need 'center' and 'scale', got {s}.")
        self.stats = {str(k): {str(s): dict(v) for s, v in d.items()} for k, d in stats.items()}
        self.method, self.lower, self.upper, self.nonzero = method, float(lower), float(upper), bool(nonzero)

    @classmethod
    def fit(
        cls,
        data: Iterable[Mapping[Hashable, Any]],
        keys: KeysCollection = "image",
        site_key: str = "site",
        method: str = "zscore",
        lower: float = 1.0,
        upper: float = 99.0,
        nonzero: bool = True,
        transform: Callable[[Mapping], Mapping] | None = None,
        max_voxels: int = 100_000,
        seed: int = 0,
    ) -> SiteIntensityStats:
        """Fit per-site and pooled statistics on ``data`` -- pass the **training** entries only.

        Args:
            data: entries with the image keys (arrays, tensors or file paths) and a site.
            keys: image keys to fit (one set of statistics per key, e.g. per modality). A key missing from an entry
                (a modality not acquired there) is skipped for that entry.
            site_key: key of the raw site name (apply before :class:`~monai_medl.transforms.SiteToIndexd`).
            method: ``"zscore"`` or ``"percentile"``.
            lower, upper: percentiles for ``"percentile"``.
            nonzero: use non-zero voxels only (skull-stripped images).
            transform: optional preprocessing applied to each entry first (e.g. the training pipeline's
                deterministic part: ``Compose([LoadImaged(...), Orientationd(...), ...])``). Without it, file paths
                are read with :class:`monai.transforms.LoadImage`.
            max_voxels: for ``"percentile"``, at most this many voxels per image are kept (a seeded random sample).
            seed: seed of that sample.

        Raises:
            ValueError: naming the entry/key when an entry has no site or an image has no usable voxels, or naming
                the site whose voxels are constant.
        """
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}.")
        keys = tuple(str(k) for k in ensure_tuple(keys))
        rng = np.random.default_rng(seed)
        loader = None
        # zscore: exact running sums; percentile: a voxel sample per image
        sums: dict[str, dict[str, np.ndarray]] = {k: {} for k in keys}
        samples: dict[str, dict[str, list[np.ndarray]]] = {k: {} for k in keys}
        for i, item in enumerate(data):
            item = transform(item) if transform is not None else item
            if site_key not in item or item[site_key] is None:
                raise ValueError(f"entry {i} has no site (key {site_key!r}); statistics are fitted per site.")
            site = canonical_site(item[site_key])
            for key in keys:
                if key not in item or item[key] is None:
                    continue
                img = item[key]
                if isinstance(img, str | os.PathLike):
                    if loader is None:
                        from monai.transforms import LoadImage

                        loader = LoadImage(image_only=True)
                    img = loader(img)
                values = _to_numpy(img).astype(np.float64, copy=False).reshape(-1)
                values = values[np.isfinite(values)]
                if nonzero:
                    values = values[values != 0]
                if values.size == 0:
                    raise ValueError(f"entry {i}, key {key!r} (site {site!r}) has no finite non-background voxels.")
                if method == "zscore":
                    acc = sums[key].setdefault(site, np.zeros(3))
                    acc += (values.size, values.sum(), np.square(values).sum())
                else:
                    if values.size > max_voxels:
                        values = rng.choice(values, size=max_voxels, replace=False)
                    samples[key].setdefault(site, []).append(values)
        stats: dict[str, dict[str, dict[str, float]]] = {}
        for key in keys:
            per_site: dict[str, dict[str, float]] = {}
            if method == "zscore":
                for site, (n, s1, s2) in sums[key].items():
                    mean = s1 / n
                    std = float(np.sqrt(max(s2 / n - mean * mean, 0.0)))
                    per_site[site] = {"mean": mean, "std": std, "center": mean, "scale": std, "num_voxels": int(n)}
                if per_site:
                    n, s1, s2 = np.sum(list(sums[key].values()), axis=0)
                    mean = s1 / n
                    std = float(np.sqrt(max(s2 / n - mean * mean, 0.0)))
                    per_site[POOLED] = {"mean": mean, "std": std, "center": mean, "scale": std, "num_voxels": int(n)}
            else:
                for site, parts in samples[key].items():
                    per_site[site] = _affine_of(np.concatenate(parts), method, lower, upper)
                if per_site:
                    per_site[POOLED] = _affine_of(
                        np.concatenate([v for parts in samples[key].values() for v in parts]), method, lower, upper
                    )
            if not per_site:
                raise ValueError(f"no entry has image key {key!r}; cannot fit its statistics.")
            for site, s in per_site.items():
                if not s["scale"] > 0:
                    raise ValueError(f"key {key!r}, site {site!r}: intensities are constant (scale {s['scale']}).")
            stats[key] = per_site
        return cls(stats, method=method, lower=lower, upper=upper, nonzero=nonzero)

    @property
    def keys(self) -> tuple[str, ...]:
        """Image keys with statistics."""
        return tuple(self.stats)

    def sites(self, key: str = "image") -> tuple[str, ...]:
        """Sites with their own statistics for ``key`` (the training sites)."""
        return tuple(s for s in self.stats[key] if s != POOLED)

    def get(self, key: str, site: Any, fallback: str = "pooled") -> dict[str, float] | None:
        """Statistics of ``site`` for ``key``; for an unknown site the pooled ones (``fallback="pooled"``), ``None``
        (``"image"``: the caller uses the image's own statistics) or a ``ValueError`` (``"error"``)."""
        if fallback not in _FALLBACKS:
            raise ValueError(f"fallback must be one of {_FALLBACKS}, got {fallback!r}.")
        if key not in self.stats:
            raise ValueError(f"no intensity statistics for key {key!r}; fitted keys: {list(self.stats)}.")
        name = canonical_site(site)
        if name in self.stats[key] and name != POOLED:
            return self.stats[key][name]
        if fallback == "error":
            raise ValueError(
                f"site {name!r} has no intensity statistics for key {key!r} (fitted sites: {list(self.sites(key))})."
            )
        return self.stats[key][POOLED] if fallback == "pooled" else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "method": self.method,
            "lower": self.lower,
            "upper": self.upper,
            "nonzero": self.nonzero,
            "pooled_key": POOLED,
            "stats": self.stats,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SiteIntensityStats:
        """Inverse of :meth:`to_dict`."""
        if "stats" not in data:
            raise ValueError(f"intensity statistics need a 'stats' item, got keys {sorted(data)}.")
        return cls(
            data["stats"],
            method=data.get("method", "zscore"),
            lower=data.get("lower", 1.0),
            upper=data.get("upper", 99.0),
            nonzero=data.get("nonzero", True),
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SiteIntensityStats) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        sites = {k: list(self.sites(k)) for k in self.stats}
        return f"SiteIntensityStats(method={self.method!r}, nonzero={self.nonzero}, sites={sites})"


class NormalizeBySite(Transform):
    """Normalise an image with the fitted statistics of its site: ``(x - center) / scale``.

    Args:
        stats: fitted :class:`SiteIntensityStats` (or the path of its JSON file).
        key: which key's statistics to use. Defaults to ``"image"``.
        fallback: for a site without statistics: ``"pooled"`` (default; all training sites together), ``"image"``
            (the image's own statistics, computed the same way) or ``"error"``.
        dtype: output dtype. Defaults to float32.

    Example::

        >>> rng = np.random.default_rng(0)
        >>> train = [{"image": rng.normal(100, 10, (1, 8, 8, 8)), "site": "site_a"},
        ...          {"image": rng.normal(500, 50, (1, 8, 8, 8)), "site": "site_b"}]
        >>> stats = SiteIntensityStats.fit(train, keys="image", nonzero=False)
        >>> normalize = NormalizeBySite(stats, key="image")
        >>> image = torch.as_tensor(train[0]["image"], dtype=torch.float32)
        >>> out = normalize(image, site="site_a")
        >>> out.dtype, round(float(out.mean()), 3), round(float(out.std()), 2)  # site_a's own mean and s.d.
        (torch.float32, 0.0, 1.0)
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        stats: SiteIntensityStats | str | os.PathLike,
        key: str = "image",
        fallback: str = "pooled",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if not isinstance(stats, SiteIntensityStats):
            stats = SiteIntensityStats.from_json(stats)
        if fallback not in _FALLBACKS:
            raise ValueError(f"fallback must be one of {_FALLBACKS}, got {fallback!r}.")
        if key not in stats.stats:
            raise ValueError(f"no intensity statistics for key {key!r}; fitted keys: {list(stats.stats)}.")
        self.stats, self.key, self.fallback, self.dtype = stats, key, fallback, dtype

    def __call__(self, img: Any, site: Any) -> Any:  # type: ignore[override]  # the site is a required input
        s = self.stats.get(self.key, site, fallback=self.fallback)
        x = convert_to_tensor(img, track_meta=get_track_meta(), dtype=self.dtype)
        fg = x != 0 if self.stats.nonzero else torch.ones_like(x, dtype=torch.bool)
        if s is None:  # the image's own statistics
            values = _to_numpy(x[fg]).astype(np.float64)
            if values.size == 0:
                raise ValueError("the image has no non-background voxels to compute its own statistics.")
            s = _affine_of(values, self.stats.method, self.stats.lower, self.stats.upper)
            if not s["scale"] > 0:
                raise ValueError("the image's intensities are constant; cannot normalise it by its own statistics.")
        out = torch.where(fg, (x - s["center"]) / s["scale"], torch.zeros_like(x))
        if isinstance(img, np.ndarray):
            return convert_to_dst_type(out, img, dtype=np.float32)[0]
        return out


class NormalizeBySited(MapTransform):
    """Dictionary-based version :py:class:`monai_medl.transforms.NormalizeBySite`.

    Normalises each image key with the statistics of the sample's site for that key. Place it before
    :class:`~monai_medl.transforms.SiteToIndexd` (it needs the raw site name), or point ``site_key`` at the raw
    name kept by ``SiteToIndexd(raw_key_postfix="name")``.

    Args:
        keys: image keys to normalise (each needs fitted statistics). Defaults to ``"image"``.
        stats: fitted :class:`SiteIntensityStats` (or the path of its JSON file).
        site_key: key of the raw site. Defaults to ``"site"``.
        fallback: ``"pooled"`` (default), ``"image"`` or ``"error"`` for a site without statistics.
        allow_missing_keys: don't raise if a key is missing (e.g. a modality not acquired at some sites).

    Example::

        >>> import os, tempfile
        >>> rng = np.random.default_rng(0)
        >>> train_entries = [{"image": rng.normal(100, 10, (1, 8, 8, 8)), "site": "site_a"},
        ...                  {"image": rng.normal(500, 50, (1, 8, 8, 8)), "site": "site_b"}]
        >>> stats = SiteIntensityStats.fit(train_entries, keys="image")  # training split only
        >>> path = os.path.join(tempfile.mkdtemp(), "intensity_stats.json")
        >>> stats.to_json(path)
        >>> t = NormalizeBySited(keys="image", stats=path)
        >>> out = t({"image": rng.normal(500, 50, (1, 8, 8, 8)), "site": "site_b"})
        >>> abs(float(out["image"].mean())) < 0.2  # centred with site_b's statistics
        True
        >>> out = t({"image": rng.normal(500, 50, (1, 8, 8, 8)), "site": "site_new"})  # unseen: pooled statistics
        >>> out["image"].shape
        (1, 8, 8, 8)
    """

    backend = NormalizeBySite.backend

    def __init__(
        self,
        keys: KeysCollection = "image",
        stats: SiteIntensityStats | str | os.PathLike | None = None,
        site_key: str = "site",
        fallback: str = "pooled",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if stats is None:
            raise ValueError("NormalizeBySited needs fitted SiteIntensityStats (fit them on the training split).")
        if not isinstance(stats, SiteIntensityStats):
            stats = SiteIntensityStats.from_json(stats)
        self.site_key = site_key
        self.normalizers = {k: NormalizeBySite(stats, key=str(k), fallback=fallback) for k in self.keys}

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if self.site_key not in d:
                raise KeyError(f"NormalizeBySited: the sample has no site key {self.site_key!r} (keys: {list(d)}).")
            with errors_name_key(key):
                d[key] = self.normalizers[key](d[key], d[self.site_key])
        return d


NormalizeBySiteD = NormalizeBySiteDict = NormalizeBySited
