# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The MNI152 template brain that ships inside nilearn, as tissue maps ready for synthetic-MRI sampling.

nilearn's wheel contains the MNI ICBM152 2009a symmetric T1 template (skull-stripped, 1 mm, 197 x 233 x 189) and
its grey- and white-matter probability maps. They are read from the installed package at run time and never
copied into this repository (the template's own licence is not stated, so it must not be redistributed).
CSF is the rest of the intracranial mask: ``csf = mask * (1 - gm - wm)``. Because smoothing and interpolation are
linear, the CSF of a resampled or smoothed template is ``mask - gm - wm`` as well, so it is not stored.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from nibabel.spatialimages import SpatialImage

__all__ = ["TEMPLATE_FILES", "template_dir", "template_checksums", "TissueTemplate", "load_tissue_template"]

TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
"""File names of the template maps inside ``nilearn/datasets/data``."""


def template_dir() -> str:
    """Folder of the template files inside the installed nilearn package (found without importing nilearn).

    Raises:
        ImportError: if nilearn is not installed (``pip install "monai-medl[data]"``).
        FileNotFoundError: if this nilearn version does not ship the template files.
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError('the MRI cohort needs nilearn\'s MNI152 template: pip install "monai-medl[data]".')
    folder = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data")
    missing = [f for f in TEMPLATE_FILES.values() if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise FileNotFoundError(f"the installed nilearn has no template file(s) {missing} in {folder}.")
    return folder


@functools.lru_cache(maxsize=1)
def template_checksums() -> dict[str, str]:
    """SHA-256 of each template file, recorded in a cohort's ground truth so its provenance is exact."""
    folder = template_dir()
    out = {}
    for name, fname in TEMPLATE_FILES.items():
        with open(os.path.join(folder, fname), "rb") as f:
            out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


@dataclass(frozen=True)
class TissueTemplate:
    """Tissue maps on a 1 mm grid (cropped to the brain), pre-smoothed for a target voxel spacing.

    Attributes:
        maps: ``(4, X, Y, Z)`` float32 array of grey matter, white matter, intracranial mask and the T1
            residual (template T1 minus its tissue-mixture fit, in units of the white-matter/CSF contrast, i.e. the
            anatomy detail that three tissue classes do not explain, such as darker deep grey matter).
        origin: world (MNI, mm) coordinate of voxel ``(0, 0, 0)``.
        step: voxel size (mm) of the maps' grid, which is axis-aligned: 1 mm, or 2 mm when the target spacing is
            4 mm or more (the smoothed maps hold nothing finer, and sampling a smaller array is faster).
        center: world coordinate of the centre of the brain's bounding box.
        tissue_t1: the fitted template T1 intensity of pure GM, WM and CSF (scaled so that WM is 1).
    """

    maps: np.ndarray
    origin: np.ndarray
    step: int
    center: np.ndarray
    tissue_t1: dict[str, float]

    GM, WM, MASK, RESIDUAL = range(4)

    def sample(self, world: np.ndarray) -> np.ndarray:
        """Trilinear samples of all maps at world points ``world`` (shape ``(3, ...)``); zero outside the grid."""
        coords = (world - self.origin.reshape((3,) + (1,) * (world.ndim - 1))) / self.step
        return np.stack(
            [ndimage.map_coordinates(m, coords, order=1, mode="constant", cval=0.0) for m in self.maps]
        ).astype(np.float32)


def _read(name: str) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = cast("SpatialImage", nib.load(os.path.join(template_dir(), TEMPLATE_FILES[name])))
    return np.asarray(img.dataobj, dtype=np.float32) / 255.0, img.affine


@functools.lru_cache(maxsize=4)
def load_tissue_template(spacing: tuple[float, float, float] = (1.0, 1.0, 1.0), margin: int = 6) -> TissueTemplate:
    """Load the template tissue maps, cropped to the brain, smoothed so that sampling at ``spacing`` (mm) does not
    alias (Gaussian with FWHM ``sqrt(spacing^2 - 1)`` mm on the native 1 mm grid), and kept on a 1 mm grid (2 mm for
    spacings of 4 mm or more). Cached per process.

    Args:
        spacing: target voxel size in mm.
        margin: voxels kept around the brain's bounding box.

    Example::

        >>> tpl = load_tissue_template((4.0, 4.0, 4.0))
        >>> tpl.maps.shape
        (4, 79, 97, 81)
    """
    t1, affine = _read("t1")
    if not np.allclose(affine[:3, :3], np.eye(3)):
        raise ValueError(f"expected the 1 mm axis-aligned MNI152 template, got affine\n{affine}")
    inside = t1 > 0
    lo, hi, mid = [], [], []
    for axis in range(3):
        extent = np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != axis)))
        mid.append((extent[0] + extent[-1]) / 2.0)
        lo.append(max(int(extent[0]) - margin, 0))
        hi.append(min(int(extent[-1]) + margin + 1, t1.shape[axis]))
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    t1, inside = t1[crop], inside[crop]
    mask = inside.astype(np.float32)
    gm = _read("gm")[0][crop] * mask
    wm = _read("wm")[0][crop] * mask
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * mask

    # what a three-tissue mixture does not explain of the real T1 (deep grey matter, fibre tracts, ...)
    design = np.stack([gm[inside], wm[inside], csf[inside]], axis=1)
    target = t1[inside]
    coef = np.linalg.solve((design.T @ design).astype(np.float64), (design.T @ target).astype(np.float64))
    c_gm, c_wm, c_csf = (float(c) for c in coef)
    residual = np.zeros_like(t1)
    residual[inside] = (target - design @ coef.astype(np.float32)) / (c_wm - c_csf)

    sigma = [np.sqrt(max(float(s) ** 2 - 1.0, 0.0)) / 2.3548 for s in spacing]
    step = 2 if min(spacing) >= 4.0 else 1
    shape = tuple(len(range(0, n, step)) for n in t1.shape)
    maps = np.empty((4, *shape), dtype=np.float32)
    smoothed = np.empty_like(t1)
    for i, m in enumerate((gm, wm, mask, residual)):
        if max(sigma) > 0:
            ndimage.gaussian_filter(m, sigma, output=smoothed)
        else:
            smoothed[...] = m
        maps[i] = smoothed[::step, ::step, ::step]
    origin = affine[:3, 3] + np.asarray(lo)
    center = affine[:3, 3] + np.asarray(mid)
    tissue = {"gm": c_gm / c_wm, "wm": 1.0, "csf": c_csf / c_wm}
    return TissueTemplate(maps=maps, origin=origin, step=step, center=center, tissue_t1=tissue)
