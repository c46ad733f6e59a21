# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""What every MNI-template cohort draws and renders: site names and sizes, scanner (site) effects, subject anatomy
and disease effects, the renderer that turns them into images on a brain-centred grid, and the NIfTI writer.

The MRI classification cohort (:mod:`monai_medl.data.synthetic.mri_cohort`) and the tissue segmentation cohort
(:mod:`monai_medl.data.synthetic.segmentation_cohort`) both build on these pieces, so their scanners and subjects
are alike and a seed gives the same draws in both.
"""

from __future__ import annotations

import gzip
import string
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from monai_medl.data.synthetic.template import TissueTemplate, load_tissue_template

__all__ = [
    "MEDIAL_TEMPORAL_CENTERS",
    "MEDIAL_TEMPORAL_SIGMA",
    "VENTRICLE_CENTER",
    "VENTRICLE_SIGMA",
    "cohort_grid",
    "site_names",
    "allocate_subjects",
    "sample_site_effects",
    "sample_subject",
    "TemplateRenderer",
    "write_nifti",
]

MEDIAL_TEMPORAL_CENTERS = ((-25.0, -20.0, -15.0), (25.0, -20.0, -15.0))
"""MNI coordinates (mm) of the left and right medial temporal atrophy regions."""
MEDIAL_TEMPORAL_SIGMA = 9.0
VENTRICLE_CENTER = (0.0, -16.0, 13.0)
"""MNI coordinate (mm) of the centre of the lateral ventricles (CSF centroid of the template's central region)."""
VENTRICLE_SIGMA = (18.0, 26.0, 12.0)

# pure-tissue intensities relative to the brightest tissue; T1's CSF/GM come from the template fit
_BASE_CONTRAST: dict[str, dict[str, float | None]] = {
    "t1": {"csf": None, "gm": None, "wm": 1.0},
    "flair": {"csf": 0.08, "gm": 1.0, "wm": 0.72},
    "t2": {"csf": 1.0, "gm": 0.55, "wm": 0.40},
}
_WMH_CONTRAST = {"t1": -0.25, "flair": 0.6, "t2": 0.4}
_CONTROL_POINTS = 5  # per axis, of the smooth random deformation


def cohort_grid(
    spatial_size: Sequence[int], spacing: Sequence[float], center: Sequence[float] | np.ndarray
) -> np.ndarray:
    """Affine (4 x 4, RAS, MNI mm) of an axis-aligned grid of ``spatial_size`` voxels of ``spacing`` mm centred at
    ``center``."""
    size, sp, c = np.asarray(spatial_size, float), np.asarray(spacing, float), np.asarray(center, float)
    affine = np.diag([*sp, 1.0])
    affine[:3, 3] = c - (size - 1) / 2.0 * sp
    return affine


def site_names(sites: int | Sequence[str], unseen_sites: int | Sequence[str]) -> tuple[list[str], list[str]]:
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


def allocate_subjects(total: int, weights: np.ndarray, minimum: int) -> np.ndarray:
    """Split ``total`` subjects over sites in proportion to ``weights`` (largest remainder), at least ``minimum``."""
    extra = total - minimum * len(weights)
    raw = weights / weights.sum() * extra
    counts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: extra - counts.sum()]] += 1
    return counts + minimum


def sample_site_effects(rng: np.random.Generator, modalities: Sequence[str], strength: float, tissue_t1: dict) -> dict:
    """Draw one scanner's effects (all values recorded in the ground truth)."""
    contrast, gain, gamma = {}, {}, {}
    for mod in modalities:
        base = {t: round(tissue_t1[t], 4) if v is None else v for t, v in _BASE_CONTRAST[mod].items()}
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


def sample_subject(rng: np.random.Generator, label: int, strength: float, severity: float | None = None) -> dict:
    """Draw one subject's anatomy, covariates and disease effects (all recorded in the ground truth).

    Args:
        rng: the subject's random stream.
        label: 1 diseased, 0 control.
        strength: multiplies the disease effects of the severity.
        severity: the subject's disease severity in [0, 1]; by default drawn given the label (diseased 0.2-1,
            controls a small sub-clinical value). The stream is consumed the same way either way.
    """
    sex = int(rng.integers(2))  # 1 = male
    age = float(np.clip(rng.normal(70.0 + 4.0 * label, 7.0), 50.0, 92.0))
    drawn = float(0.2 + 0.8 * rng.beta(2.0, 2.5)) if label else float(0.15 * rng.beta(1.2, 6.0))
    severity = drawn if severity is None else float(severity)
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


class TemplateRenderer:
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
    def on_grid(cls, spatial_size: Sequence[int], spacing: Sequence[float]) -> TemplateRenderer:
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
    def _gauss(points: np.ndarray, center: Sequence[float], sigma: Sequence[float] | float | np.ndarray) -> np.ndarray:
        c = np.asarray(center, np.float32).reshape(3, 1, 1, 1)
        s = np.broadcast_to(np.asarray(sigma, np.float32), (3,)).reshape(3, 1, 1, 1)
        return np.exp(-0.5 * np.sum(((points - c) / s) ** 2, axis=0))

    def marker(self, center: Sequence[float], sigma: float) -> np.ndarray:
        """A Gaussian blob (peak 1) at world point ``center`` (mm) on the output grid, e.g. a scanner's cue."""
        return self._gauss(self.world, center, sigma)

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
        if "cue" in maps:  # a scanner cue (the MRI cohort's shortcut arm), in the tissue intensity scale
            x = x + maps["cue"]
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


def write_nifti(path: str, array: np.ndarray, affine: np.ndarray) -> None:
    """NIfTI-1 (gzipped with a fixed timestamp, so files are byte-identical across runs)."""
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with open(path, "wb") as f:
        f.write(gzip.compress(img.to_bytes(), compresslevel=1, mtime=0))
