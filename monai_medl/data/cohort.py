# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""A realistic multi-site 3D brain MRI cohort with known ground truth, built from the MNI152 template.

Real anatomy comes from the MNI ICBM152 2009a template and its tissue maps, read from the installed nilearn
package (:mod:`monai_medl.data.template`). Every subject is the template with

* **subject variation**: head size (sex-dependent), a small translation and a smooth random deformation;
  age-related grey-matter thinning and ventricular enlargement;
* **disease** (label 1) with a continuous ``severity`` in [0, 1] (controls have a small sub-clinical value, so it
  also works as a regression target): grey-matter loss in both medial temporal lobes (around MNI (+-25, -20, -15),
  the lost tissue becomes CSF), ventricular enlargement (a local expansion around the lateral ventricles) and, on
  FLAIR/T2, periventricular white-matter hyperintensities;
* **site (scanner) effects**: tissue contrast per modality and a contrast gamma, a smooth multiplicative bias
  field (2nd-order polynomial, per site, with a small per-scan jitter), Rician noise level, in-plane blur and
  slice thickness (blur along a site-specific slice axis), gain and intensity offset;
* **confounding**: the training ("seen") sites have disease prevalences spread from 20% to 80%, so the site
  predicts the label; the held-out ("unseen") sites are balanced.

Output (``out_dir``): ``images/sub-XXXX_T1w.nii.gz`` (and ``_FLAIR``/``_T2w``), int16 NIfTI in MNI space readable by
nibabel and SimpleITK; ``datalist.json`` with ``training``/``validation`` (seen sites) and ``test`` (held-out
subjects of the seen sites plus every unseen-site subject) sections of ``{"image", "label", "severity", "site",
"subject", "age", "sex"}`` entries (``"flair"``/``"t2"`` for the second modality, absent where it was not
acquired); and ``ground_truth.json`` with every site's and subject's true effects and the seen/unseen sites.
The output is byte-identical for the same arguments. Generated data must not be committed.

Command line::

    python -m monai_medl.data.cohort --out /tmp/cohort --num-subjects 200 --seed 0 --modalities t1 flair
"""

from __future__ import annotations

import argparse
import gzip
import inspect
import os
import string
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from monai_medl.data.generated_folder import reuse_or_claim
from monai_medl.data.splits import stratified_group_kfold
from monai_medl.data.template import TissueTemplate, load_tissue_template
from monai_medl.data.template_cohort import (
    add_cohort_arguments,
    check_grid,
    check_num_subjects,
    check_split_fractions,
    cohort_arguments,
    record_splits,
    write_cohort_datalist,
    write_ground_truth,
)

__all__ = [
    "MODALITY_KEYS",
    "MEDIAL_TEMPORAL_CENTERS",
    "VENTRICLE_CENTER",
    "COHORT_PRESETS",
    "cohort_settings",
    "cohort_grid",
    "generate_mri_cohort",
    "generate_preset_cohort",
    "site_sizes",
    "main",
]

MODALITY_KEYS = {"t1": "image", "flair": "flair", "t2": "t2"}
"""Datalist key of each modality (T1 is the primary ``"image"``)."""
_FILE_SUFFIX = {"t1": "T1w", "flair": "FLAIR", "t2": "T2w"}
_GENERATOR_VERSION = 3

MEDIAL_TEMPORAL_CENTERS = ((-25.0, -20.0, -15.0), (25.0, -20.0, -15.0))
"""MNI coordinates (mm) of the left and right medial temporal atrophy regions."""
MEDIAL_TEMPORAL_SIGMA = 9.0
VENTRICLE_CENTER = (0.0, -16.0, 13.0)
"""MNI coordinate (mm) of the centre of the lateral ventricles (CSF centroid of the template's central region)."""
VENTRICLE_SIGMA = (18.0, 26.0, 12.0)

# pure-tissue intensities relative to the brightest tissue; T1's CSF/GM come from the template fit
_BASE_CONTRAST = {
    "t1": {"csf": None, "gm": None, "wm": 1.0},
    "flair": {"csf": 0.08, "gm": 1.0, "wm": 0.72},
    "t2": {"csf": 1.0, "gm": 0.55, "wm": 0.40},
}
_WMH_CONTRAST = {"t1": -0.25, "flair": 0.6, "t2": 0.4}
_CONTROL_POINTS = 5  # per axis, of the smooth random deformation
_MIN_PER_SITE = 4

COHORT_PRESETS: dict[str, dict[str, Any]] = {
    # the MRI bundles' and benchmarks' cohort: 6 seen sites (prevalence confounded with site), 2 balanced unseen
    # sites, 32^3 voxels of 6 mm. The shipped models' manifests record the datalist this generates: do not change.
    "mri_bundle": {
        "num_subjects": 800,
        "sites": 6,
        "unseen_sites": 2,
        "seed": 2024,
        "spatial_size": [32, 32, 32],
        "spacing": [6.0, 6.0, 6.0],
        "disease_strength": 0.4,
    },
}
"""Named keyword sets of :func:`generate_mri_cohort`, the one source of the cohort settings bundles and benchmarks
share (see :func:`cohort_settings`)."""


def cohort_grid(spatial_size: Sequence[int], spacing: Sequence[float], center: Sequence[float]) -> np.ndarray:
    """Affine (4 x 4, RAS, MNI mm) of an axis-aligned grid of ``spatial_size`` voxels of ``spacing`` mm centred at
    ``center``."""
    size, sp, c = np.asarray(spatial_size, float), np.asarray(spacing, float), np.asarray(center, float)
    affine = np.diag([*sp, 1.0])
    affine[:3, 3] = c - (size - 1) / 2.0 * sp
    return affine


def _site_names(sites: int | Sequence[str], unseen_sites: int | Sequence[str]) -> tuple[list[str], list[str]]:
    def names(spec: int | Sequence[str], start: int) -> list[str]:
        if isinstance(spec, int | np.integer):
            if spec < 0 or start + spec > 26 * 27:
                raise ValueError(f"number of sites must be between 0 and {26 * 27 - start}, got {spec}.")
            out = []
            for i in range(start, start + int(spec)):
                hi, lo = divmod(i, 26)
                out.append("site_" + (string.ascii_lowercase[hi - 1] if hi else "") + string.ascii_lowercase[lo])
            return out
        return [str(s) for s in spec]

    seen = names(sites, 0)
    unseen = names(unseen_sites, len(seen))
    if not seen:
        raise ValueError("the cohort needs at least one seen (training) site.")
    everyone = seen + unseen
    clash = sorted({s for s in everyone if everyone.count(s) > 1})
    if clash:
        raise ValueError(f"site names must be unique across seen and unseen sites, repeated: {clash}.")
    return seen, unseen


def _allocate(total: int, weights: np.ndarray, minimum: int) -> np.ndarray:
    """Split ``total`` subjects over sites in proportion to ``weights`` (largest remainder), at least ``minimum``."""
    extra = total - minimum * len(weights)
    raw = weights / weights.sum() * extra
    counts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: extra - counts.sum()]] += 1
    return counts + minimum


def _site_counts(seed: int, num_sites: int, num_subjects: int) -> tuple[np.ndarray, np.random.Generator]:
    """Subjects per site (seen sites first) and the cohort's random stream after drawing them."""
    rng = np.random.default_rng([seed, 2])
    return _allocate(num_subjects, rng.uniform(0.75, 1.25, size=num_sites), _MIN_PER_SITE), rng


def site_sizes(
    num_subjects: int = 200,
    sites: int | Sequence[str] = 6,
    unseen_sites: int | Sequence[str] = 2,
    seed: int = 0,
    extra_unseen_subjects: int = 0,
    **_: Any,
) -> dict[str, int]:
    """Scans per site of the cohort :func:`generate_mri_cohort` makes with these arguments (others are ignored),
    without generating it.

    Example::

        >>> sum(site_sizes(**cohort_settings("mri_bundle", extra_unseen_subjects=100)).values())
        900
    """
    seen, unseen = _site_names(sites, unseen_sites)
    counts = _site_counts(seed, len(seen) + len(unseen), int(num_subjects))[0]
    sizes = {name: int(n) for name, n in zip(seen + unseen, counts)}
    for name, _label in _extra_unseen_rows(seed, unseen, int(extra_unseen_subjects), 0.5):
        sizes[name] += 1
    return sizes


def _extra_unseen_rows(seed: int, unseen: Sequence[str], total: int, prevalence: float) -> list[tuple[str, int]]:
    """``(site, label)`` of ``total`` subjects added to the unseen sites: split evenly over the sites, ``prevalence``
    diseased at each, in a seeded order drawn from a stream of its own (the rest of the cohort is unchanged)."""
    if total == 0:
        return []
    rng = np.random.default_rng([seed, 3])
    rows: list[tuple[str, int]] = []
    for name, n in zip(unseen, _allocate(total, np.ones(len(unseen)), 0)):
        n_dis = int(round(prevalence * n))
        rows += [(name, int(lab)) for lab in rng.permutation(np.r_[np.ones(n_dis, int), np.zeros(n - n_dis, int)])]
    return [rows[i] for i in rng.permutation(len(rows))]


def _site_effects(rng: np.random.Generator, modalities: Sequence[str], strength: float, tissue_t1: dict) -> dict:
    """Draw one scanner's effects (all values recorded in the ground truth)."""
    contrast, gain, gamma = {}, {}, {}
    for mod in modalities:
        base = dict(_BASE_CONTRAST[mod])
        if mod == "t1":
            base.update(gm=round(tissue_t1["gm"], 4), csf=round(tissue_t1["csf"], 4))
        # the brightest tissue is the reference (1.0); the others vary by site
        contrast[mod] = {
            t: float(np.clip(v + strength * rng.normal(0, 0.05 if v < 1 else 0.0), 0.02, 1.2)) for t, v in base.items()
        }
        gain[mod] = float(1000.0 * np.exp(strength * rng.normal(0, 0.3)))
        gamma[mod] = float(np.exp(strength * rng.normal(0, 0.12)))
    amplitude = float(strength * rng.uniform(0.03, 0.12))
    return {
        "contrast": contrast,
        "gamma": gamma,
        "gain": gain,
        "offset": float(strength * rng.normal(0, 0.05)),
        "bias_field_coefficients": [float(c) for c in rng.normal(0, amplitude, size=9)],
        "bias_field_amplitude": amplitude,
        "noise_sigma": float(0.004 + strength * rng.uniform(0.006, 0.045)),
        "inplane_blur_sigma_vox": float(strength * rng.uniform(0.0, 0.4)),
        "slice_axis": int(rng.integers(3)),
        "slice_blur_sigma_vox": float(strength * rng.uniform(0.0, 0.8)),
    }


def _subject_params(rng: np.random.Generator, label: int, strength: float) -> dict:
    """Draw one subject's anatomy, covariates and disease effects (all recorded in the ground truth)."""
    sex = int(rng.integers(2))  # 1 = male
    age = float(np.clip(rng.normal(70.0 + 4.0 * label, 7.0), 50.0, 92.0))
    severity = float(0.2 + 0.8 * rng.beta(2.0, 2.5)) if label else float(0.15 * rng.beta(1.2, 6.0))
    asym = rng.uniform(0.8, 1.2, size=2)
    mtl_normal = np.abs(rng.normal(0.0, 0.06, size=2))  # normal variation of medial temporal grey matter
    vent_normal = rng.normal(0.0, 0.06)  # normal variation of ventricle size
    age_term = (age - 70.0) / 10.0
    return {
        "label": int(label),
        "severity": round(severity, 6),
        "age": round(age, 2),
        "sex": sex,
        "head_scale": float(np.exp(rng.normal(0.0, 0.035)) * (1.025 if sex else 0.975)),
        "translation_mm": [float(t) for t in rng.normal(0.0, 1.5, size=3)],
        "deformation_sd_mm": float(rng.uniform(1.0, 2.5)),
        "deformation_seed": int(rng.integers(2**31)),
        "mtl_gm_loss": [float(np.clip(0.45 * strength * severity * a + n, 0, 0.9)) for a, n in zip(asym, mtl_normal)],
        "ventricle_expansion": float(np.clip(0.22 * strength * severity + 0.03 * age_term + vent_normal, -0.2, 0.45)),
        "global_gm_loss": float(np.clip(0.03 * age_term, -0.05, 0.1)),
        "mtl_normal_variation": [float(n) for n in mtl_normal],
        "ventricle_normal_variation": float(vent_normal),
        "wmh_load": float(np.clip(strength * severity * 0.8 + 0.05 * age_term, 0.0, 1.0)),
        "bias_jitter": [float(c) for c in rng.normal(0, 0.02, size=9)],
        "noise_seed": int(rng.integers(2**31)),
    }


class _Renderer:
    """Renders subjects on one grid: holds the template, grid affine and coordinates, and bias-field basis."""

    def __init__(self, template: TissueTemplate, affine: np.ndarray, spatial_size: Sequence[int]) -> None:
        self.tpl = template
        self.affine = affine
        self.shape = tuple(int(s) for s in spatial_size)
        idx = np.indices(self.shape, dtype=np.float32).reshape(3, -1)
        self.world = (affine[:3, :3] @ idx + affine[:3, 3:4]).astype(np.float32).reshape((3, *self.shape))
        self.axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in self.shape]
        # cubic-spline upsampling of a 5^3 control grid, one matrix per axis (the tensor product is the 3-D zoom)
        eye = np.eye(_CONTROL_POINTS, dtype=np.float32)
        self.upsample = [
            np.stack([ndimage.zoom(e, n / _CONTROL_POINTS, order=3, mode="nearest", grid_mode=True) for e in eye], 1)
            for n in self.shape
        ]

    @classmethod
    def on_grid(cls, spatial_size: Sequence[int], spacing: Sequence[float]) -> _Renderer:
        """The renderer of a brain-centred grid of ``spatial_size`` voxels of ``spacing`` mm (every template cohort's
        grid: the template resampled to ``spacing``, the grid centred on its brain)."""
        template = load_tissue_template(spacing)
        return cls(template, cohort_grid(spatial_size, spacing, template.center), spatial_size)

    def bias_field(self, c: np.ndarray) -> np.ndarray:
        """``exp`` of the 2nd-order polynomial with coefficients of x, y, z, P2(x), P2(y), P2(z), xy, xz, yz."""
        x, y, z = self.axes
        log = (c[0] * x + c[3] * (1.5 * x * x - 0.5))[:, None, None]
        log = log + (c[1] * y + c[4] * (1.5 * y * y - 0.5))[None, :, None]
        log = log + (c[2] * z + c[5] * (1.5 * z * z - 0.5))[None, None, :]
        log = log + c[6] * np.multiply.outer(x, y)[:, :, None] + c[7] * np.multiply.outer(x, z)[:, None, :]
        return np.exp(log + c[8] * np.multiply.outer(y, z)[None, :, :])

    @staticmethod
    def _gauss(points: np.ndarray, center: Sequence[float], sigma: Sequence[float] | float) -> np.ndarray:
        c = np.asarray(center, np.float32).reshape(3, 1, 1, 1)
        s = np.broadcast_to(np.asarray(sigma, np.float32), (3,)).reshape(3, 1, 1, 1)
        return np.exp(-0.5 * np.sum(((points - c) / s) ** 2, axis=0))

    def anatomy(self, p: dict) -> dict[str, np.ndarray]:
        """Tissue maps of one subject on the output grid."""
        c = self.tpl.center.reshape(3, 1, 1, 1).astype(np.float32)
        src = c + (self.world - c) / p["head_scale"] - np.asarray(p["translation_mm"], np.float32).reshape(3, 1, 1, 1)
        drng = np.random.default_rng(p["deformation_seed"])
        size = (3, _CONTROL_POINTS, _CONTROL_POINTS, _CONTROL_POINTS)
        coarse = drng.normal(0.0, p["deformation_sd_mm"], size=size).astype(np.float32)
        ux, uy, uz = self.upsample
        src += np.einsum("ai,bj,ck,dijk->dabc", ux, uy, uz, coarse, optimize=True)
        # ventricular enlargement: sample closer to the ventricle centre where the weight is high
        cv = np.asarray(VENTRICLE_CENTER, np.float32).reshape(3, 1, 1, 1)
        src = cv + (src - cv) * (1.0 - p["ventricle_expansion"] * self._gauss(src, VENTRICLE_CENTER, VENTRICLE_SIGMA))
        gm, wm, mask, residual = self.tpl.sample(src)
        csf = np.clip(mask - gm - wm, 0.0, None)
        mtl = sum(
            a * self._gauss(src, ctr, MEDIAL_TEMPORAL_SIGMA)
            for a, ctr in zip(p["mtl_gm_loss"], MEDIAL_TEMPORAL_CENTERS)
        )
        loss = 1.0 - (1.0 - np.clip(mtl, 0.0, 0.9)) * (1.0 - p["global_gm_loss"])
        lost = gm * loss
        shell = self._gauss(src, VENTRICLE_CENTER, np.asarray(VENTRICLE_SIGMA) * 1.4) - self._gauss(
            src, VENTRICLE_CENTER, VENTRICLE_SIGMA
        )
        wmh = p["wmh_load"] * np.clip(shell / 0.35, 0.0, 1.0) * wm
        return {"gm": gm - lost, "wm": wm, "csf": csf + lost, "mask": mask, "residual": residual, "wmh": wmh}

    def image(self, maps: dict, mod: str, site: dict, p: dict, rng: np.random.Generator) -> np.ndarray:
        """One modality of one subject as scanned at ``site``: int16 array."""
        c = site["contrast"][mod]
        x = c["csf"] * maps["csf"] + c["gm"] * maps["gm"] + c["wm"] * maps["wm"]
        if mod == "t1":
            x = x + (c["wm"] - c["csf"]) * maps["residual"]
        x = np.clip(x + _WMH_CONTRAST[mod] * maps["wmh"], 0.0, None) ** site["gamma"][mod]
        sigma = [site["inplane_blur_sigma_vox"]] * 3
        sigma[site["slice_axis"]] = float(np.hypot(site["slice_blur_sigma_vox"], site["inplane_blur_sigma_vox"]))
        x = ndimage.gaussian_filter(x, sigma) if max(sigma) > 0.05 else x
        coeffs = np.asarray(site["bias_field_coefficients"], np.float32) + np.asarray(p["bias_jitter"], np.float32)
        x = x * self.bias_field(coeffs)
        x = site["gain"][mod] * np.clip(x + site["offset"] * maps["mask"], 0.0, None)
        noise = site["noise_sigma"] * site["gain"][mod]
        x = np.sqrt((x + rng.normal(0.0, noise, x.shape)) ** 2 + rng.normal(0.0, noise, x.shape) ** 2)
        x = x * (maps["mask"] > 0.3)  # skull-stripped, like the template
        return np.clip(np.round(x), 0, np.iinfo(np.int16).max).astype(np.int16)


def _holdout(entries: list[dict], fraction: float, seed: int) -> dict[str, list]:
    """One fold of a stratified (label x site, or label only for tiny cohorts) subject-grouped k-fold split."""
    n_splits = min(max(2, round(1 / fraction)), len(entries))
    try:
        return stratified_group_kfold(entries, n_splits=n_splits, seed=seed)[0]
    except ValueError:
        return stratified_group_kfold(entries, n_splits=n_splits, seed=seed, site_key=None)[0]


def _write_nifti(path: str, array: np.ndarray, affine: np.ndarray) -> None:
    """NIfTI-1 (gzipped with a fixed timestamp, so files are byte-identical across runs)."""
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with open(path, "wb") as f:
        f.write(gzip.compress(img.to_bytes(), compresslevel=1, mtime=0))


def cohort_settings(preset: str, **overrides: Any) -> dict[str, Any]:
    """The keyword arguments of :func:`generate_mri_cohort` for ``preset`` of :data:`COHORT_PRESETS`, with
    ``overrides`` applied (a fresh dictionary; the preset itself is never modified).

    Args:
        preset: a key of :data:`COHORT_PRESETS`, e.g. ``"mri_bundle"``.
        overrides: arguments of :func:`generate_mri_cohort` that replace or add to the preset's.

    Example::

        >>> cohort_settings("mri_bundle", num_subjects=400)["num_subjects"]
        400
    """
    if preset not in COHORT_PRESETS:
        raise ValueError(f"unknown cohort preset {preset!r}; choose from {sorted(COHORT_PRESETS)}.")
    unknown = sorted(set(overrides) - _GENERATOR_ARGS)
    if unknown:
        raise ValueError(
            f"cohort overrides {unknown} are not arguments of generate_mri_cohort {sorted(_GENERATOR_ARGS)}."
        )
    settings = {k: list(v) if isinstance(v, list) else v for k, v in COHORT_PRESETS[preset].items()}
    settings.update(overrides)
    return settings


def generate_preset_cohort(out_dir: str | os.PathLike, preset: str, **overrides: Any) -> str:
    """:func:`generate_mri_cohort` in ``out_dir`` with the settings of ``preset`` (see :func:`cohort_settings`).

    Example (a bundle config)::

        "cohort": {"_target_": "monai_medl.data.cohort.generate_preset_cohort", "_mode_": "callable",
                   "preset": "mri_bundle", "out_dir": "@dataset_dir"}
    """
    return generate_mri_cohort(out_dir, **cohort_settings(preset, **overrides))


def generate_mri_cohort(
    out_dir: str | os.PathLike,
    num_subjects: int = 200,
    sites: int | Sequence[str] = 6,
    unseen_sites: int | Sequence[str] = 2,
    seed: int = 0,
    spatial_size: Sequence[int] = (48, 48, 48),
    spacing: Sequence[float] = (4.0, 4.0, 4.0),
    modalities: Sequence[str] = ("t1",),
    missing_modality_sites: Sequence[str] = (),
    prevalence: Sequence[float] | None = None,
    unseen_prevalence: float = 0.5,
    disease_strength: float = 1.0,
    site_strength: float = 1.0,
    validation_fraction: float = 0.15,
    test_fraction: float = 0.2,
    extra_unseen_subjects: int = 0,
    overwrite: bool = False,
) -> str:
    """Generate the multi-site 3D MRI cohort (see the module docstring) and return the path of its datalist.

    If ``out_dir`` already holds a cohort generated with the same arguments, nothing is regenerated (so bundles
    can call this on every run); a cohort made with other arguments is an error unless ``overwrite``.

    Args:
        out_dir: output folder.
        num_subjects: total subjects (one scan each) over all sites.
        sites: seen (training) sites: a count (named ``site_a``, ``site_b``, ...) or a list of names.
        unseen_sites: held-out sites: a count (named after the seen ones) or a list of names.
        seed: random seed; the same arguments give byte-identical files.
        spatial_size: output grid in voxels (centred on the brain). The default 48^3 at 4 mm covers the brain.
        spacing: voxel size in mm.
        modalities: ``("t1",)``, or T1 plus a second contrast: ``("t1", "flair")`` or ``("t1", "t2")``.
        missing_modality_sites: sites where the second modality was not acquired (its key is absent there).
        prevalence: disease prevalence per seen site. Defaults to evenly spaced 20%..80% in a seeded order.
        unseen_prevalence: prevalence at the unseen sites. Defaults to 0.5 (balanced).
        disease_strength: multiplies the disease effects (0 gives an unlearnable cohort, e.g. for null checks).
        site_strength: multiplies the site effects (0 gives identical scanners).
        validation_fraction: approximate fraction of seen-site subjects in ``validation``.
        test_fraction: approximate fraction of seen-site subjects held out in ``test`` (stratified by label x site).
        extra_unseen_subjects: subjects added to the unseen sites (split evenly, prevalence ``unseen_prevalence``)
            after the ``num_subjects`` of the cohort, which stay byte-identical: a larger unseen-site test set at
            the cost of generating its scans only. Their subject numbers follow the cohort's, so no added subject
            shares a random stream with another subject.
        overwrite: replace a cohort generated with other arguments.

    Returns:
        path of ``datalist.json``; ``ground_truth.json`` is next to it.

    Raises:
        ValueError: for invalid arguments (the message names the argument and the accepted values).
        FileExistsError: if ``out_dir`` holds a different cohort and ``overwrite`` is False, or holds files no
            generator made (see :func:`~monai_medl.data.claim_output_folder`): a user's data is never written into.

    Example::

        >>> import tempfile
        >>> from monai_medl.data import load_datalist
        >>> out_dir = os.path.join(tempfile.mkdtemp(), "cohort")
        >>> path = generate_mri_cohort(out_dir, num_subjects=16, sites=2, unseen_sites=1, spatial_size=(16, 16, 16),
        ...                            spacing=(8.0, 8.0, 8.0), seed=1)  # a tiny cohort; the defaults are larger
        >>> train = load_datalist(path, "training", num_classes=2)
        >>> sorted({entry["site"] for entry in train}), sorted(train[0])
        (['site_a', 'site_b'], ['age', 'image', 'label', 'severity', 'sex', 'site', 'subject'])
    """
    modalities = tuple(str(m).lower() for m in modalities)
    if not modalities or modalities[0] != "t1" or len(modalities) > 2 or len(set(modalities)) != len(modalities):
        raise ValueError(f"modalities must be ('t1',), ('t1', 'flair') or ('t1', 't2'), got {modalities}.")
    unknown = [m for m in modalities if m not in MODALITY_KEYS]
    if unknown:
        raise ValueError(f"unknown modalities {unknown}; choose from {sorted(MODALITY_KEYS)}.")
    spatial_size, spacing = check_grid(spatial_size, spacing)
    seen, unseen = _site_names(sites, unseen_sites)
    all_sites = seen + unseen
    missing = [str(s) for s in missing_modality_sites]
    if missing and len(modalities) < 2:
        raise ValueError("missing_modality_sites needs a second modality, e.g. modalities=('t1', 'flair').")
    bad = sorted(set(missing) - set(all_sites))
    if bad:
        raise ValueError(f"missing_modality_sites {bad} are not cohort sites {all_sites}.")
    if prevalence is None:
        prev_seen = np.linspace(0.2, 0.8, len(seen)) if len(seen) > 1 else np.array([0.5])
        prev_seen = prev_seen[np.random.default_rng([seed, 7]).permutation(len(seen))]
    else:
        prev_seen = np.asarray(prevalence, float)
        if prev_seen.shape != (len(seen),) or np.any((prev_seen < 0) | (prev_seen > 1)):
            raise ValueError(
                f"prevalence needs one value in [0, 1] per seen site ({len(seen)}), got {list(prevalence)}."
            )
    check_num_subjects(num_subjects, len(all_sites), _MIN_PER_SITE)
    if not 0 <= unseen_prevalence <= 1:
        raise ValueError(f"unseen_prevalence must be in [0, 1], got {unseen_prevalence}.")
    if int(extra_unseen_subjects) != extra_unseen_subjects or extra_unseen_subjects < 0:
        raise ValueError(f"extra_unseen_subjects must be a non-negative integer, got {extra_unseen_subjects!r}.")
    if extra_unseen_subjects and not unseen:
        raise ValueError("extra_unseen_subjects needs at least one unseen site (unseen_sites > 0).")
    check_split_fractions(validation_fraction, test_fraction)

    config = {
        "num_subjects": int(num_subjects),
        "sites": seen,
        "unseen_sites": unseen,
        "seed": int(seed),
        "spatial_size": list(spatial_size),
        "spacing": list(spacing),
        "modalities": list(modalities),
        "missing_modality_sites": missing,
        "prevalence": [round(float(p), 6) for p in prev_seen],
        "unseen_prevalence": float(unseen_prevalence),
        "disease_strength": float(disease_strength),
        "site_strength": float(site_strength),
        "validation_fraction": float(validation_fraction),
        "test_fraction": float(test_fraction),
        "generator_version": _GENERATOR_VERSION,
    }
    if extra_unseen_subjects:  # absent by default, so cohorts generated before this option are reused as they are
        config["extra_unseen_subjects"] = int(extra_unseen_subjects)
    out_dir = os.path.abspath(os.fspath(out_dir))
    existing = reuse_or_claim(out_dir, config, "generate_mri_cohort", overwrite)
    if existing:
        return existing
    datalist_path = os.path.join(out_dir, "datalist.json")
    truth_path = os.path.join(out_dir, "ground_truth.json")
    image_dir = os.path.join(out_dir, "images")
    os.makedirs(image_dir, exist_ok=True)

    renderer = _Renderer.on_grid(spatial_size, spacing)

    # sites: sizes, prevalences, scanner effects
    counts, cohort_rng = _site_counts(seed, len(all_sites), int(num_subjects))
    site_info: dict[str, dict] = {}
    rows: list[tuple[str, int]] = []
    for s, name in enumerate(all_sites):
        is_seen = s < len(seen)
        prev = float(prev_seen[s]) if is_seen else float(unseen_prevalence)
        n_dis = int(round(prev * counts[s]))
        labels = np.r_[np.ones(n_dis, int), np.zeros(counts[s] - n_dis, int)]
        rows += [(name, int(lab)) for lab in cohort_rng.permutation(labels)]
        effects = _site_effects(np.random.default_rng([seed, 0, s]), modalities, site_strength, renderer.tpl.tissue_t1)
        site_info[name] = {
            "seen": is_seen,
            "num_subjects": int(counts[s]),
            "target_prevalence": prev,
            "prevalence": n_dis / counts[s],
            "modalities": [m for m in modalities if not (m != "t1" and name in missing)],
            "effects": effects,
        }
    order = cohort_rng.permutation(len(rows))  # subject ids do not reveal the site
    rows = [rows[r] for r in order] + _extra_unseen_rows(seed, unseen, int(extra_unseen_subjects), unseen_prevalence)
    for name in unseen if extra_unseen_subjects else ():
        site_labels = [label for site, label in rows if site == name]
        site_info[name].update(num_subjects=len(site_labels), prevalence=sum(site_labels) / len(site_labels))

    subjects: dict[str, dict] = {}
    entries: list[dict] = []
    for k, (site, label) in enumerate(rows):
        subject = f"sub-{k + 1:04d}"
        rng = np.random.default_rng([seed, 1, k])
        p = _subject_params(rng, label, disease_strength)
        maps = renderer.anatomy(p)
        noise_rng = np.random.default_rng(p["noise_seed"])
        entry: dict[str, Any] = {}
        for mod in site_info[site]["modalities"]:
            path = os.path.join(image_dir, f"{subject}_{_FILE_SUFFIX[mod]}.nii.gz")
            _write_nifti(path, renderer.image(maps, mod, site_info[site]["effects"], p, noise_rng), renderer.affine)
            entry[MODALITY_KEYS[mod]] = path
        covariates = {"age": p["age"], "sex": p["sex"]}
        entry.update(label=label, severity=p["severity"], site=site, subject=subject, **covariates)
        entries.append(entry)
        subjects[subject] = {"site": site, **p}

    # splits: stratified (label x site) held-out test and validation subjects of the seen sites
    seen_entries = [e for e in entries if site_info[e["site"]]["seen"]]
    test_fold = _holdout(seen_entries, test_fraction, seed)
    val_fold = _holdout(test_fold["training"], validation_fraction / (1 - test_fraction), seed + 1)
    sections = {
        "training": val_fold["training"],
        "validation": val_fold["validation"],
        "test": test_fold["validation"] + [e for e in entries if not site_info[e["site"]]["seen"]],
    }
    record_splits(subjects, sections)

    write_cohort_datalist(
        datalist_path,
        sections,
        image_keys=[MODALITY_KEYS[m] for m in modalities],
        description="Synthetic multi-site 3D brain MRI (MNI152 anatomy), monai_medl.data.cohort; see ground_truth.json",
        labels={"0": "control", "1": "disease"},
        num_classes=2,
        modality={str(i): MODALITY_KEYS[m] for i, m in enumerate(modalities)},
        seen_sites=seen,
        unseen_sites=unseen,
    )
    import nibabel
    import scipy

    write_ground_truth(
        truth_path,
        "monai_medl.data.cohort.generate_mri_cohort",
        config,
        spatial_size,
        spacing,
        renderer.affine,
        seen_sites=seen,
        unseen_sites=unseen,
        regions={
            "medial_temporal": {
                "centers_mm": [list(c) for c in MEDIAL_TEMPORAL_CENTERS],
                "sigma_mm": MEDIAL_TEMPORAL_SIGMA,
            },
            "ventricles": {"center_mm": list(VENTRICLE_CENTER), "sigma_mm": list(VENTRICLE_SIGMA)},
        },
        effects_description=_EFFECTS_DESCRIPTION,
        sites=site_info,
        subjects=subjects,
        versions={"numpy": np.__version__, "scipy": scipy.__version__, "nibabel": nibabel.__version__},
    )
    return datalist_path


_GENERATOR_ARGS = frozenset(inspect.signature(generate_mri_cohort).parameters) - {"out_dir"}

_EFFECTS_DESCRIPTION = {
    "site.contrast": "pure-tissue intensity (csf, gm, wm) per modality before gamma, bias, gain",
    "site.gamma": "contrast exponent applied to the tissue image per modality",
    "site.bias_field_coefficients": "coefficients of x, y, z, P2(x), P2(y), P2(z), xy, xz, yz on [-1, 1]^3; "
    "field = exp(sum), plus the subject's bias_jitter",
    "site.noise_sigma": "Rician noise s.d. relative to the gain",
    "site.inplane_blur_sigma_vox": "Gaussian blur (voxels) on all axes",
    "site.slice_blur_sigma_vox": "extra Gaussian blur (voxels) along slice_axis (slice thickness)",
    "site.gain": "scanner gain per modality (intensity of white matter on T1 before gamma and bias)",
    "site.offset": "intensity offset inside the brain, in units of the gain",
    "subject.severity": "disease severity in [0, 1]; controls have a small sub-clinical value",
    "subject.mtl_gm_loss": "peak fraction of grey matter lost in the left and right medial temporal regions: "
    "0.45 * disease_strength * severity * asymmetry + mtl_normal_variation",
    "subject.ventricle_expansion": "local expansion factor e around the ventricles (magnification 1 / (1 - e)): "
    "0.22 * disease_strength * severity + 0.03 * (age - 70) / 10 + ventricle_normal_variation",
    "subject.global_gm_loss": "age-related fraction of grey matter lost everywhere",
    "subject.wmh_load": "periventricular white-matter hyperintensity load (FLAIR/T2 bright, T1 dark)",
    "subject.head_scale": "global scaling of the anatomy (sex-dependent)",
}


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m monai_medl.data.cohort",
        description="Generate a synthetic multi-site 3D brain MRI cohort with known site and disease effects.",
    )
    add_cohort_arguments(parser, num_subjects=200, sites=6)
    parser.add_argument("--modalities", nargs="+", default=["t1"], help="t1, or t1 flair, or t1 t2")
    parser.add_argument("--missing-modality-sites", nargs="*", default=[])
    parser.add_argument("--disease-strength", type=float, default=1.0)
    parser.add_argument("--site-strength", type=float, default=1.0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; prints the datalist path and the generation time."""
    args = _parse_args(argv)
    start = time.perf_counter()
    path = generate_mri_cohort(
        **cohort_arguments(args),
        modalities=args.modalities,
        missing_modality_sites=args.missing_modality_sites,
        disease_strength=args.disease_strength,
        site_strength=args.site_strength,
    )
    print(f"cohort datalist: {path} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
