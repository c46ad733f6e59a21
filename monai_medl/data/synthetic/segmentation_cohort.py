# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Multi-site brain tissue segmentation from the MNI152 template, with scanner and label-protocol site effects.

The subjects and scanners are those of the MRI cohort generator (renderer, subject anatomy and site effects from
:mod:`~monai_medl.data.synthetic.rendering`): the template's anatomy with head size, translation and a smooth
deformation per subject, age-related and (optionally) disease-related atrophy, and per-site tissue contrast, gamma,
bias field, Rician noise, blur and slice thickness. Each T1 scan comes with a tissue label map on the same grid:
0 background (outside the skull-stripped brain, exactly where the image is zero), 1 CSF (the rest of the brain mask),
2 grey matter, 3 white matter (the most probable tissue per voxel).

**Label protocols** (a random effect on the labels, not only on the images): ``label_shift`` gives sites whose
annotators draw grey matter thicker (positive voxels of dilation into the neighbouring brain tissue) or thinner
(negative: erosion, given back to white matter inside and CSF outside). The ground truth records each site's shift
and the measured change of its grey-matter volume, so a model's per-site label intercepts can be compared with it.

Output (``out_dir``): ``images/sub-XXXX_T1w.nii.gz`` and ``labels/sub-XXXX_seg.nii.gz`` (int16/uint8 NIfTI in MNI
space), ``datalist.json`` with ``training``/``validation`` (seen sites) and ``test`` (held-out subjects of the seen
sites plus every unseen-site subject) sections of ``{"image", "label", "site", "subject"}`` entries, and
``ground_truth.json``. Byte-identical for the same arguments; written only into a folder the generator owns
(:func:`~monai_medl.data.claim_output_folder`). Generated data must not be committed.

Command line::

    python -m monai_medl.data.synthetic.segmentation_cohort --out /tmp/seg --num-subjects 60 --label-shift site_b=1
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from monai_medl.data.synthetic import cohort_files
from monai_medl.data.synthetic.generated_folder import reuse_or_claim
from monai_medl.data.synthetic.rendering import (
    TemplateRenderer,
    allocate_subjects,
    sample_site_effects,
    sample_subject,
    site_names,
    write_nifti,
)

__all__ = ["TISSUE_LABELS", "tissue_labels", "apply_label_shift", "generate_segmentation_cohort", "main"]

TISSUE_LABELS = {"0": "background", "1": "csf", "2": "grey_matter", "3": "white_matter"}
_GENERATOR_VERSION = 1
_BRAIN_THRESHOLD = 0.3  # the renderer's skull-strip threshold on the intracranial mask
_MIN_PER_SITE = 3


def tissue_labels(maps: Mapping[str, np.ndarray]) -> np.ndarray:
    """Label map (uint8) from the renderer's tissue maps: 0 outside the brain, else 1 + argmax(csf, gm, wm)."""
    tissue = np.argmax(np.stack([maps["csf"], maps["gm"], maps["wm"]]), axis=0).astype(np.uint8) + 1
    return np.where(maps["mask"] > _BRAIN_THRESHOLD, tissue, 0).astype(np.uint8)


def apply_label_shift(labels: np.ndarray, voxels: int) -> np.ndarray:
    """A label protocol that draws grey matter ``voxels`` thicker (dilation, > 0) or thinner (erosion, < 0).

    Dilation takes brain voxels next to grey matter (CSF or white matter); erosion gives the removed voxels to white
    matter where they touch it and to CSF elsewhere. The background is never changed.
    """
    if voxels == 0:
        return labels
    gm = labels == 2
    out = labels.copy()
    if voxels > 0:
        out[ndimage.binary_dilation(gm, iterations=voxels) & (labels > 0)] = 2
        return out
    removed = gm & ~ndimage.binary_erosion(gm, iterations=-voxels, border_value=1)
    near_wm = ndimage.binary_dilation(labels == 3, iterations=-voxels)
    out[removed] = np.where(near_wm[removed], 3, 1)
    return out


def generate_segmentation_cohort(
    out_dir: str | os.PathLike,
    num_subjects: int = 60,
    sites: int | Sequence[str] = 4,
    unseen_sites: int | Sequence[str] = 2,
    seed: int = 0,
    spatial_size: Sequence[int] = (48, 48, 48),
    spacing: Sequence[float] = (4.0, 4.0, 4.0),
    label_shift: Mapping[str, int] | None = None,
    disease_strength: float = 0.5,
    site_strength: float = 1.0,
    validation_fraction: float = 0.15,
    test_fraction: float = 0.2,
    unseen_label_shift: int | None = None,
    overwrite: bool = False,
) -> str:
    """Generate the segmentation cohort (see the module docstring) and return the path of its datalist.

    A folder holding a cohort generated with the same arguments is reused as it is (bundles call this on every
    run); one made with other arguments is an error unless ``overwrite``.

    Args:
        out_dir: output folder (empty, new, or made by a monai_medl generator).
        num_subjects: scans over all sites (one per subject).
        sites: seen (training) sites, a count (``site_a``, ``site_b``, ...) or names.
        unseen_sites: held-out sites, a count (named after the seen ones) or names.
        seed: random seed; the same arguments give byte-identical files.
        spatial_size: grid in voxels, centred on the brain.
        spacing: voxel size in mm.
        label_shift: site name -> grey-matter label protocol shift in voxels (+ dilation, - erosion). Defaults to
            None (one protocol everywhere).
        unseen_label_shift: the label protocol of every unseen site that ``label_shift`` does not name, e.g. ``2``
            with seen shifts ``{+1, -1}``: an unseen protocol that is not the mean of the seen ones (the best case
            for a population model). Defaults to None (0, the protocol of sites not in ``label_shift``). With it, the
            ground truth's ``label_protocol`` records the seen sites' mean shift and each unseen site's distance
            from it.
        disease_strength: atrophy of half of the subjects (cohort's disease model; 0 for none). Defaults to 0.5.
        site_strength: multiplies the scanner effects (0: identical scanners). Defaults to 1.0.
        validation_fraction: fraction of each seen site's subjects in ``validation``.
        test_fraction: fraction of each seen site's subjects held out in ``test``.
        overwrite: replace a cohort generated with other arguments.

    Returns:
        path of ``datalist.json`` (``ground_truth.json`` is next to it).

    Raises:
        ValueError: for invalid arguments, naming the argument.
        FileExistsError: if ``out_dir`` holds a different cohort (without ``overwrite``) or files no generator made.

    Example::

        >>> import json, tempfile
        >>> out_dir = os.path.join(tempfile.mkdtemp(), "seg")
        >>> path = generate_segmentation_cohort(out_dir, num_subjects=12, sites=2, unseen_sites=1,
        ...                                     spatial_size=(16, 16, 16), spacing=(8.0, 8.0, 8.0),
        ...                                     label_shift={"site_b": 1}, unseen_label_shift=2)
        >>> with open(path) as f:
        ...     datalist = json.load(f)
        >>> datalist["seen_sites"], datalist["unseen_sites"], datalist["num_classes"]
        (['site_a', 'site_b'], ['site_c'], 4)
        >>> datalist["training"][0]["label"]  # a tissue label map per scan
        'labels/sub-0002_seg.nii.gz'
        >>> with open(os.path.join(out_dir, "ground_truth.json")) as f:
        ...     truth = json.load(f)
        >>> truth["label_protocol"]["seen_mean_shift_vox"], truth["label_protocol"]["unseen_minus_seen_mean_vox"]
        (0.5, {'site_c': 1.5})
    """
    config = _cohort_config({k: v for k, v in dict(locals()).items() if k not in ("out_dir", "overwrite")})
    out_dir = os.path.abspath(os.fspath(out_dir))
    existing = reuse_or_claim(out_dir, config, "generate_segmentation_cohort", overwrite)
    if existing:
        return existing
    for sub in ("images", "labels"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    renderer = TemplateRenderer.on_grid(tuple(config["spatial_size"]), tuple(config["spacing"]))
    site_info, rows = _draw_sites(config, renderer)
    entries, subjects = _render_subjects(config, site_info, rows, renderer, out_dir)
    sections = _split_sections(entries, site_info, config)
    cohort_files.record_splits(subjects, sections)
    return _write_cohort(out_dir, config, sections, site_info, subjects, renderer)


def _cohort_config(a: dict) -> dict:
    """Step 1: check the arguments; the config recorded in (and compared with) the ground truth."""
    spatial_size, spacing = cohort_files.check_grid(a["spatial_size"], a["spacing"])
    seen, unseen = site_names(a["sites"], a["unseen_sites"])
    all_sites = seen + unseen
    shifts = {str(k): int(v) for k, v in (a["label_shift"] or {}).items()}
    bad = sorted(set(shifts) - set(all_sites))
    if bad:
        raise ValueError(f"label_shift names sites {bad} that are not cohort sites {all_sites}.")
    unseen_shift = a["unseen_label_shift"]
    if unseen_shift is not None:
        if int(unseen_shift) != unseen_shift or not unseen:
            raise ValueError(f"unseen_label_shift needs an integer and unseen sites, got {unseen_shift!r}.")
        shifts = {**{s: int(unseen_shift) for s in unseen}, **shifts}
    cohort_files.check_num_subjects(a["num_subjects"], len(all_sites), _MIN_PER_SITE)
    cohort_files.check_split_fractions(a["validation_fraction"], a["test_fraction"])
    specific = {"label_shift": {s: shifts.get(s, 0) for s in all_sites}}
    config = cohort_files.cohort_config(a, (seen, unseen), (spatial_size, spacing), _GENERATOR_VERSION, specific)
    if unseen_shift is not None:  # absent by default, so cohorts generated before this option are reused as they are
        config["unseen_label_shift"] = int(unseen_shift)
    return config


def _draw_sites(config: dict, renderer: TemplateRenderer) -> tuple[dict[str, dict], list[str]]:
    """Step 2: every site's size, scanner effects and label protocol, and the subjects' sites in subject order."""
    seed, seen = config["seed"], config["sites"]
    all_sites = seen + config["unseen_sites"]
    rng = np.random.default_rng([seed, 12])
    counts = allocate_subjects(config["num_subjects"], rng.uniform(0.75, 1.25, size=len(all_sites)), _MIN_PER_SITE)
    tissue_t1, strength = renderer.tpl.tissue_t1, config["site_strength"]
    site_info = {
        name: {
            "seen": s < len(seen),
            "num_subjects": int(counts[s]),
            "effects": sample_site_effects(np.random.default_rng([seed, 0, s]), ("t1",), strength, tissue_t1),
            "label_shift_vox": config["label_shift"][name],
        }
        for s, name in enumerate(all_sites)
    }
    rows = [name for name in all_sites for _ in range(site_info[name]["num_subjects"])]
    order = rng.permutation(len(rows))  # subject ids do not reveal the site
    return site_info, [rows[r] for r in order]


def _render_subjects(
    config: dict, site_info: dict[str, dict], rows: list[str], renderer: TemplateRenderer, out_dir: str
) -> tuple[list[dict], dict[str, dict]]:
    """Step 3: draw, render and write every subject's scan and label map; their entries and ground-truth records
    (and each site's mean grey-matter volume change by its protocol, in ``site_info``)."""
    subjects: dict[str, dict] = {}
    entries: list[dict] = []
    gm_change: dict[str, list[float]] = {s: [] for s in site_info}
    for k, site in enumerate(rows):
        subject = f"sub-{k + 1:04d}"
        srng = np.random.default_rng([config["seed"], 1, k])
        p = sample_subject(srng, int(srng.integers(2)), config["disease_strength"])
        maps = renderer.anatomy(p)
        image = renderer.image(maps, "t1", site_info[site]["effects"], p, np.random.default_rng(p["noise_seed"]))
        truth = tissue_labels(maps)
        labels = apply_label_shift(truth, site_info[site]["label_shift_vox"])
        gm_change[site].append(float((labels == 2).sum()) / max(float((truth == 2).sum()), 1.0) - 1.0)
        image_path = os.path.join(out_dir, "images", f"{subject}_T1w.nii.gz")
        label_path = os.path.join(out_dir, "labels", f"{subject}_seg.nii.gz")
        write_nifti(image_path, image, renderer.affine)
        write_nifti(label_path, labels, renderer.affine)
        entries.append({"image": image_path, "label": label_path, "site": site, "subject": subject})
        subjects[subject] = {"site": site, **p}
    for name, changes in gm_change.items():
        site_info[name]["gm_volume_change"] = float(np.mean(changes))
    return entries, subjects


def _split_sections(entries: list[dict], site_info: dict[str, dict], config: dict) -> dict[str, list[dict]]:
    """Step 4a: per seen site, a seeded shuffle into test, validation and training subjects; the unseen sites'
    subjects are all in ``test``."""
    sections: dict[str, list[dict]] = {"training": [], "validation": [], "test": []}
    for s, name in enumerate(site_info):
        part = [e for e in entries if e["site"] == name]
        if not site_info[name]["seen"]:
            sections["test"] += part
            continue
        part = [part[i] for i in np.random.default_rng([config["seed"], 3, s]).permutation(len(part))]
        n_test = max(1, round(config["test_fraction"] * len(part)))
        n_val = max(1, round(config["validation_fraction"] * len(part)))
        sections["test"] += part[:n_test]
        sections["validation"] += part[n_test : n_test + n_val]
        sections["training"] += part[n_test + n_val :]
    return sections


def _label_protocol(config: dict) -> dict:
    """How far each unseen site's protocol is from the seen sites' mean (0: the best case for z = 0)."""
    mean = float(np.mean([config["label_shift"][s] for s in config["sites"]]))
    return {
        "seen_mean_shift_vox": mean,
        "unseen_minus_seen_mean_vox": {s: config["label_shift"][s] - mean for s in config["unseen_sites"]},
    }


def _write_cohort(
    out_dir: str, config: dict, sections: dict, site_info: dict, subjects: dict, renderer: TemplateRenderer
) -> str:
    """Step 4b: write ``datalist.json`` and ``ground_truth.json``; the datalist's path."""
    datalist_path = os.path.join(out_dir, "datalist.json")
    seen, unseen = config["sites"], config["unseen_sites"]
    cohort_files.write_cohort_datalist(
        datalist_path,
        sections,
        image_keys=("image", "label"),
        description="Synthetic multi-site brain tissue segmentation (MNI152 anatomy), "
        "monai_medl.data.segmentation_cohort; see ground_truth.json",
        labels=TISSUE_LABELS,
        num_classes=len(TISSUE_LABELS),
        modality={"0": "T1"},
        seen_sites=seen,
        unseen_sites=unseen,
    )
    # written with unseen_label_shift only, so cohorts generated before this option stay byte-identical
    extra = {"label_protocol": _label_protocol(config)} if "unseen_label_shift" in config else {}
    cohort_files.write_ground_truth(
        out_dir,
        "monai_medl.data.segmentation_cohort.generate_segmentation_cohort",  # provenance string, kept unchanged
        config,
        renderer.affine,
        labels=TISSUE_LABELS,
        seen_sites=seen,
        unseen_sites=unseen,
        **extra,
        sites=site_info,
        subjects=subjects,
        effects_description={
            "site.label_shift_vox": "grey-matter label protocol: voxels of dilation (+) or erosion (-)",
            "site.gm_volume_change": "mean relative change of the labelled grey-matter volume by the protocol",
            "site.effects": "scanner effects as in monai_medl.data.cohort (contrast, gamma, bias field, noise, blur)",
        },
    )
    return datalist_path


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; prints the datalist path."""
    parser = argparse.ArgumentParser(
        prog="python -m monai_medl.data.synthetic.segmentation_cohort", description=__doc__
    )
    cohort_files.add_cohort_arguments(parser, num_subjects=60, sites=4)
    parser.add_argument("--label-shift", nargs="*", default=[], help="site=voxels, e.g. site_b=1")
    parser.add_argument("--unseen-label-shift", type=int, default=None, help="protocol of the other unseen sites")
    args = parser.parse_args(argv)
    shifts = {}
    for item in args.label_shift:
        name, _, value = item.partition("=")
        shifts[name] = int(value)
    path = generate_segmentation_cohort(
        **cohort_files.cohort_arguments(args), label_shift=shifts, unseen_label_shift=args.unseen_label_shift
    )
    print(f"segmentation cohort datalist: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
