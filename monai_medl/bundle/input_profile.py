# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The geometry and intensity range of the training images, and per-scan warnings for inputs far outside it.

A bundle resizes every scan to its network's input size, so a scan at another resolution, field of view or
intensity scale still gets a confident probability. Training records what it saw (:func:`summarize_images`, kept
in the model's manifest); inference compares each scan with it (:func:`compare_to_profile`) and warns per scan.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from monai_medl.data.image_info import ImageInfo

__all__ = ["summarize_images", "compare_to_profile"]

SPACING_TOLERANCE = 2.0
"""A scan's voxel size may be up to this factor finer or coarser than the training range."""
EXTENT_TOLERANCE = 1.5
"""A scan's physical extent (field of view) may be up to this factor smaller or larger than the training range."""
INTENSITY_TOLERANCE = 10.0
"""A scan's 99th intensity percentile may be up to this factor off the training range (raw units)."""


def summarize_images(infos: Iterable[ImageInfo]) -> dict[str, Any]:
    """Ranges of spacing, extent, shape and intensity, and the orientations of ``infos`` (JSON-friendly).

    Example::

        >>> import os, tempfile
        >>> import nibabel as nib
        >>> import numpy as np
        >>> from monai_medl.data import read_image_info
        >>> folder = tempfile.mkdtemp()
        >>> infos = []
        >>> for i in range(2):  # two training scans on a 6 mm grid
        ...     path = os.path.join(folder, f"sub-{i}.nii.gz")
        ...     nib.save(nib.Nifti1Image(np.random.rand(16, 16, 16).astype(np.float32), np.diag([6.0, 6.0, 6.0, 1.0])),
        ...              path)
        ...     infos.append(read_image_info(path))
        >>> profile = summarize_images(infos)
        >>> profile["count"], profile["spacing"], profile["orientations"]
        (2, {'min': [6.0, 6.0, 6.0], 'max': [6.0, 6.0, 6.0]}, ['RAS'])
    """
    infos = list(infos)
    if not infos:
        return {"count": 0}

    def span(rows: list) -> dict[str, list[float]]:
        arr = np.asarray(rows, dtype=float)
        return {"min": arr.min(0).round(4).tolist(), "max": arr.max(0).round(4).tolist()}

    dims = {len(i.spatial_shape) for i in infos}
    profile: dict[str, Any] = {"count": len(infos), "orientations": sorted({i.orientation for i in infos})}
    if len(dims) == 1:
        profile["spacing"] = span([i.spacing for i in infos])
        profile["extent"] = span([i.extent for i in infos])
        profile["shape"] = span([i.spatial_shape for i in infos])
    with_intensity = [i.intensity for i in infos if i.intensity is not None]
    if with_intensity:
        profile["p99"] = span([[v[2]] for v in with_intensity])
    return profile


def _outside(values: Any, lo: Any, hi: Any, factor: float) -> bool:
    values, lo, hi = (np.asarray(v, dtype=float) for v in (values, lo, hi))
    return bool(np.any(values < lo / factor) or np.any(values > hi * factor))


def compare_to_profile(info: ImageInfo, profile: Mapping[str, Any] | None) -> list[str]:
    """Why ``info`` lies far outside the training ``profile`` (one phrase per reason; empty when it does not).

    Spacing and extent must lie within :data:`SPACING_TOLERANCE` / :data:`EXTENT_TOLERANCE` of the training range
    per axis, the orientation must be one seen in training, the 99th intensity percentile within
    :data:`INTENSITY_TOLERANCE` of the training range.
    """
    if not profile or not profile.get("count"):
        return []
    reasons = []
    ndim = len(info.spatial_shape)
    for name, values, factor in (
        ("spacing", info.spacing, SPACING_TOLERANCE),
        ("extent", info.extent, EXTENT_TOLERANCE),
    ):
        rng = profile.get(name)
        if rng and len(rng["min"]) == ndim and _outside(values, rng["min"], rng["max"], factor):
            unit = "mm" if name == "spacing" else "mm field of view"
            reasons.append(
                f"{name} {tuple(round(v, 2) for v in values)} {unit} is far from the training range "
                f"{tuple(rng['min'])}..{tuple(rng['max'])}"
            )
    orientations = [o for o in profile.get("orientations", []) if o]
    if info.orientation and orientations and info.orientation not in orientations:
        reasons.append(f"orientation {info.orientation} was not seen in training ({', '.join(orientations)})")
    rng = profile.get("p99")
    if (
        rng
        and info.intensity is not None
        and _outside([info.intensity[2]], rng["min"], rng["max"], INTENSITY_TOLERANCE)
    ):
        reasons.append(
            f"99th intensity percentile {info.intensity[2]:.4g} is far from the training range "
            f"{rng['min'][0]:.4g}..{rng['max'][0]:.4g}"
        )
    return reasons
