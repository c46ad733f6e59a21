# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""A realistic multi-site 3D brain MRI cohort with known ground truth, built from the MNI152 template.

Real anatomy comes from the MNI ICBM152 2009a template and its tissue maps, read from the installed nilearn
package (:mod:`monai_medl.data.synthetic.template`). Every subject is the template with

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
  predicts the label; the held-out ("unseen") sites are balanced (``unseen_prevalence``).
* **arms** (``arm``, see :mod:`~monai_medl.data.synthetic.mri_arms`): beyond this nuisance-only cohort, site-specific
  diagnostic thresholds on a continuous severity (``"threshold"``), a site-specific disease effect size
  (``"slope"``) or a scanner cue tied to the label, reversed at the unseen sites (``"shortcut"``).

Output (``out_dir``): ``images/sub-XXXX_T1w.nii.gz`` (and ``_FLAIR``/``_T2w``), int16 NIfTI in MNI space readable by
nibabel and SimpleITK; ``datalist.json`` with ``training``/``validation`` (seen sites) and ``test`` (held-out
subjects of the seen sites plus every unseen-site subject) sections of ``{"image", "label", "severity", "site",
"subject", "age", "sex"}`` entries (``"flair"``/``"t2"`` for the second modality, absent where it was not
acquired); and ``ground_truth.json`` with every site's and subject's true effects and the seen/unseen sites.
The output is byte-identical for the same arguments. Generated data must not be committed.

Command line::

    python -m monai_medl.data.synthetic.mri_cohort --out /tmp/cohort --num-subjects 200 --seed 0 --modalities t1 flair
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from monai_medl.data.splits import stratified_group_kfold
from monai_medl.data.synthetic.cohort_files import (
    add_cohort_arguments,
    check_grid,
    check_num_subjects,
    check_split_fractions,
    cohort_arguments,
    cohort_config,
    record_splits,
    write_cohort_datalist,
    write_ground_truth,
)
from monai_medl.data.synthetic.generated_folder import reuse_or_claim
from monai_medl.data.synthetic.mri_arms import (
    COHORT_ARMS,
    THRESHOLD_LAYOUTS,
    arm_record,
    check_arm,
    draw_arm_sites,
    shortcut_cue,
    threshold_severity,
)
from monai_medl.data.synthetic.rendering import (
    MEDIAL_TEMPORAL_CENTERS,
    MEDIAL_TEMPORAL_SIGMA,
    VENTRICLE_CENTER,
    VENTRICLE_SIGMA,
    TemplateRenderer,
    allocate_subjects,
    cohort_grid,
    sample_site_effects,
    sample_subject,
    site_names,
    write_nifti,
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


def _site_counts(seed: int, num_sites: int, num_subjects: int) -> tuple[np.ndarray, np.random.Generator]:
    """Subjects per site (seen sites first) and the cohort's random stream after drawing them."""
    rng = np.random.default_rng([seed, 2])
    return allocate_subjects(num_subjects, rng.uniform(0.75, 1.25, size=num_sites), _MIN_PER_SITE), rng


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
    seen, unseen = site_names(sites, unseen_sites)
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
    for name, n in zip(unseen, allocate_subjects(total, np.ones(len(unseen)), 0)):
        n_dis = int(round(prevalence * n))
        rows += [(name, int(lab)) for lab in rng.permutation(np.r_[np.ones(n_dis, int), np.zeros(n - n_dis, int)])]
    return [rows[i] for i in rng.permutation(len(rows))]


def _holdout(entries: list[dict], fraction: float, seed: int) -> dict[str, list]:
    """One fold of a stratified (label x site, or label only for tiny cohorts) subject-grouped k-fold split."""
    n_splits = min(max(2, round(1 / fraction)), len(entries))
    try:
        return stratified_group_kfold(entries, n_splits=n_splits, seed=seed)[0]
    except ValueError:
        return stratified_group_kfold(entries, n_splits=n_splits, seed=seed, site_key=None)[0]


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

        "cohort": {"_target_": "monai_medl.data.synthetic.mri_cohort.generate_preset_cohort", "_mode_": "callable",
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
    arm: str = "nuisance",
    threshold_layout: str = "symmetric",
    arm_effect: float | None = None,
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
        arm: how the label relates to disease and site (see :mod:`~monai_medl.data.synthetic.mri_arms`):
            ``"nuisance"`` (default; today's cohort, byte-identical), ``"threshold"`` (site-specific diagnostic
            thresholds on a continuous latent severity), ``"slope"`` (a site-specific disease effect size) or
            ``"shortcut"`` (a scanner cue tied to the label at the seen sites, reversed at the unseen sites).
        threshold_layout: ``arm="threshold"`` only: the unseen sites' thresholds ``"symmetric"`` around the seen
            ones' mean or ``"asymmetric"`` (all above the seen range).
        arm_effect: the arm's one parameter (None: its default in
            :data:`~monai_medl.data.synthetic.mri_arms.ARM_EFFECT_DEFAULTS`): the half-range of the seen sites'
            thresholds (``"threshold"``, 0.15), the s.d. of the per-site disease-effect factor (``"slope"``, 0.4),
            P(cue | disease) = P(no cue | control) at the seen sites (``"shortcut"``, 0.85). Not for ``"nuisance"``.
        overwrite: replace a cohort generated with other arguments.

    Returns:
        path of ``datalist.json``; ``ground_truth.json`` is next to it. Every datalist entry and subject record has
        the subject's ``severity`` (the latent severity of the threshold arm); for arms other than ``"nuisance"``
        the ground truth has an ``arm`` record (name, effect, description) and each site's parameters in
        ``sites[name]["arm"]``; in the shortcut arm each subject record says whether its scan has the cue
        (``shortcut_cue``).

    Raises:
        ValueError: for invalid arguments (the message names the argument and the accepted values).
        FileExistsError: if ``out_dir`` holds a different cohort and ``overwrite`` is False, or holds files no
            generator made (see :func:`~monai_medl.data.claim_output_folder`): a user's data is never written into.

    Example::

        >>> import tempfile
        >>> from monai_medl.data import DatalistSpec, load_datalist
        >>> out_dir = os.path.join(tempfile.mkdtemp(), "cohort")
        >>> path = generate_mri_cohort(out_dir, num_subjects=16, sites=2, unseen_sites=1, spatial_size=(16, 16, 16),
        ...                            spacing=(8.0, 8.0, 8.0), seed=1)  # a tiny cohort; the defaults are larger
        >>> train = load_datalist(path, "training", spec=DatalistSpec(num_classes=2))
        >>> sorted({entry["site"] for entry in train}), sorted(train[0])
        (['site_a', 'site_b'], ['age', 'image', 'label', 'severity', 'sex', 'site', 'subject'])
    """
    args = dict(locals())
    config, prev_seen = _cohort_config({k: v for k, v in args.items() if k not in ("out_dir", "overwrite")})
    out_dir = os.path.abspath(os.fspath(out_dir))
    existing = reuse_or_claim(out_dir, config, "generate_mri_cohort", overwrite)
    if existing:
        return existing
    image_dir = os.path.join(out_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    renderer = TemplateRenderer.on_grid(tuple(config["spatial_size"]), tuple(config["spacing"]))
    site_info, rows = _draw_sites(config, prev_seen, renderer)
    entries, subjects = _render_subjects(config, site_info, rows, renderer, image_dir)
    sections = _split_sections(entries, site_info, config)
    record_splits(subjects, sections)
    return _write_cohort(out_dir, config, sections, site_info, subjects, renderer)


def _check_modalities(modalities: Sequence[str], missing: list[str], all_sites: list[str]) -> tuple[str, ...]:
    modalities = tuple(str(m).lower() for m in modalities)
    if not modalities or modalities[0] != "t1" or len(modalities) > 2 or len(set(modalities)) != len(modalities):
        raise ValueError(f"modalities must be ('t1',), ('t1', 'flair') or ('t1', 't2'), got {modalities}.")
    unknown = [m for m in modalities if m not in MODALITY_KEYS]
    if unknown:
        raise ValueError(f"unknown modalities {unknown}; choose from {sorted(MODALITY_KEYS)}.")
    if missing and len(modalities) < 2:
        raise ValueError("missing_modality_sites needs a second modality, e.g. modalities=('t1', 'flair').")
    bad = sorted(set(missing) - set(all_sites))
    if bad:
        raise ValueError(f"missing_modality_sites {bad} are not cohort sites {all_sites}.")
    return modalities


def _seen_prevalence(prevalence: Sequence[float] | None, num_seen: int, seed: int) -> np.ndarray:
    if prevalence is None:
        prev_seen = np.linspace(0.2, 0.8, num_seen) if num_seen > 1 else np.array([0.5])
        return prev_seen[np.random.default_rng([seed, 7]).permutation(num_seen)]
    prev_seen = np.asarray(prevalence, float)
    if prev_seen.shape != (num_seen,) or np.any((prev_seen < 0) | (prev_seen > 1)):
        raise ValueError(f"prevalence needs one value in [0, 1] per seen site ({num_seen}), got {list(prevalence)}.")
    return prev_seen


def _cohort_config(a: dict[str, Any]) -> tuple[dict[str, Any], np.ndarray]:
    """Step 1: check the arguments; the config recorded in (and compared with) the ground truth, and the seen sites'
    prevalences (unrounded)."""
    spatial_size, spacing = check_grid(a["spatial_size"], a["spacing"])
    seen, unseen = site_names(a["sites"], a["unseen_sites"])
    missing = [str(s) for s in a["missing_modality_sites"]]
    modalities = _check_modalities(a["modalities"], missing, seen + unseen)
    prev_seen = _seen_prevalence(a["prevalence"], len(seen), a["seed"])
    check_num_subjects(a["num_subjects"], len(seen + unseen), _MIN_PER_SITE)
    if not 0 <= a["unseen_prevalence"] <= 1:
        raise ValueError(f"unseen_prevalence must be in [0, 1], got {a['unseen_prevalence']}.")
    extra = a["extra_unseen_subjects"]
    if int(extra) != extra or extra < 0:
        raise ValueError(f"extra_unseen_subjects must be a non-negative integer, got {extra!r}.")
    if extra and not unseen:
        raise ValueError("extra_unseen_subjects needs at least one unseen site (unseen_sites > 0).")
    check_split_fractions(a["validation_fraction"], a["test_fraction"])
    arm = check_arm(a["arm"], a["threshold_layout"], a["arm_effect"])
    if arm.get("arm") == "threshold" and np.any((prev_seen <= 0) | (prev_seen >= 1)):
        raise ValueError(f"arm='threshold' needs seen-site prevalences in (0, 1), got {prev_seen.tolist()}.")
    specific = {
        "modalities": list(modalities),
        "missing_modality_sites": missing,
        "prevalence": [round(float(p), 6) for p in prev_seen],
        "unseen_prevalence": float(a["unseen_prevalence"]),
    }
    config = cohort_config(a, (seen, unseen), (spatial_size, spacing), _GENERATOR_VERSION, specific)
    if extra:  # absent by default, so cohorts generated before this option are reused as they are
        config["extra_unseen_subjects"] = int(extra)
    config.update(arm)  # likewise absent for the nuisance arm
    return config, prev_seen


def _draw_sites(
    config: dict[str, Any], prev_seen: np.ndarray, renderer: TemplateRenderer
) -> tuple[dict[str, dict], list[tuple[str, int]]]:
    """Step 2a: every site's size, prevalence, scanner effects and arm parameters, and the ``(site, label)`` rows of
    the subjects in subject order."""
    seen, unseen, seed = config["sites"], config["unseen_sites"], config["seed"]
    all_sites, extra = seen + unseen, config.get("extra_unseen_subjects", 0)
    counts, cohort_rng = _site_counts(seed, len(all_sites), config["num_subjects"])
    prevs = [float(p) for p in prev_seen] + [config["unseen_prevalence"]] * len(unseen)
    arms = draw_arm_sites(config, prevs, len(seen), renderer.tpl.center)
    site_info: dict[str, dict] = {}
    rows: list[tuple[str, int]] = []
    for s, name in enumerate(all_sites):
        n_dis = int(round(prevs[s] * counts[s]))
        labels = np.r_[np.ones(n_dis, int), np.zeros(counts[s] - n_dis, int)]
        rows += [(name, int(lab)) for lab in cohort_rng.permutation(labels)]
        effects = sample_site_effects(
            np.random.default_rng([seed, 0, s]), config["modalities"], config["site_strength"], renderer.tpl.tissue_t1
        )
        site_info[name] = {
            "seen": s < len(seen),
            "num_subjects": int(counts[s]),
            "target_prevalence": prevs[s],
            "prevalence": n_dis / counts[s],
            "modalities": [
                m for m in config["modalities"] if not (m != "t1" and name in config["missing_modality_sites"])
            ],
            "effects": effects,
            **({"arm": arms[s]} if arms[s] else {}),
        }
    order = cohort_rng.permutation(len(rows))  # subject ids do not reveal the site
    rows = [rows[r] for r in order] + _extra_unseen_rows(seed, unseen, extra, config["unseen_prevalence"])
    for name in unseen if extra else ():
        site_labels = [label for site, label in rows if site == name]
        site_info[name].update(num_subjects=len(site_labels), prevalence=sum(site_labels) / len(site_labels))
    return site_info, rows


def _draw_subject(config: dict[str, Any], site: dict[str, Any], k: int, label: int) -> dict[str, Any]:
    """Step 2b: subject ``k``'s anatomy, covariates and disease effects under the site's arm (the arms draw from
    streams of their own, ``[seed, 21, k]`` and ``[seed, 22, k]``, so the other draws are the nuisance arm's)."""
    seed, arm = config["seed"], site.get("arm", {})
    severity = threshold_severity(np.random.default_rng([seed, 21, k]), label, arm) if "threshold" in arm else None
    strength = config["disease_strength"] * arm.get("disease_scale", 1.0)
    p = sample_subject(np.random.default_rng([seed, 1, k]), label, strength, severity)
    if "p_cue_given_disease" in arm:
        p["shortcut_cue"] = shortcut_cue(np.random.default_rng([seed, 22, k]), label, arm)
    return p


def _render_subjects(
    config: dict[str, Any],
    site_info: dict[str, dict],
    rows: list[tuple[str, int]],
    renderer: TemplateRenderer,
    image_dir: str,
) -> tuple[list[dict], dict[str, dict]]:
    """Step 3: draw, render and write every subject's scans; their datalist entries and ground-truth records."""
    subjects: dict[str, dict] = {}
    entries: list[dict] = []
    for k, (site, label) in enumerate(rows):
        subject = f"sub-{k + 1:04d}"
        p = _draw_subject(config, site_info[site], k, label)
        maps = renderer.anatomy(p)
        if p.get("shortcut_cue"):
            arm = site_info[site]["arm"]
            cue = renderer.marker(arm["cue_center_mm"], arm["cue_sigma_mm"])
            maps["cue"] = arm["cue_amplitude"] * cue * maps["mask"]
        noise_rng = np.random.default_rng(p["noise_seed"])
        entry: dict[str, Any] = {}
        for mod in site_info[site]["modalities"]:
            path = os.path.join(image_dir, f"{subject}_{_FILE_SUFFIX[mod]}.nii.gz")
            write_nifti(path, renderer.image(maps, mod, site_info[site]["effects"], p, noise_rng), renderer.affine)
            entry[MODALITY_KEYS[mod]] = path
        covariates = {"age": p["age"], "sex": p["sex"]}
        entry.update(label=label, severity=p["severity"], site=site, subject=subject, **covariates)
        entries.append(entry)
        subjects[subject] = {"site": site, **p}
    return entries, subjects


def _split_sections(entries: list[dict], site_info: dict[str, dict], config: dict[str, Any]) -> dict[str, list]:
    """Step 4a: stratified (label x site) held-out test and validation subjects of the seen sites; the unseen sites'
    subjects are all in ``test``."""
    test_fraction, seed = config["test_fraction"], config["seed"]
    seen_entries = [e for e in entries if site_info[e["site"]]["seen"]]
    test_fold = _holdout(seen_entries, test_fraction, seed)
    val_fold = _holdout(test_fold["training"], config["validation_fraction"] / (1 - test_fraction), seed + 1)
    return {
        "training": val_fold["training"],
        "validation": val_fold["validation"],
        "test": test_fold["validation"] + [e for e in entries if not site_info[e["site"]]["seen"]],
    }


def _write_cohort(
    out_dir: str, config: dict, sections: dict, site_info: dict, subjects: dict, renderer: TemplateRenderer
) -> str:
    """Step 4b: write ``datalist.json`` and ``ground_truth.json``; the datalist's path."""
    import nibabel
    import scipy

    seen, unseen, modalities = config["sites"], config["unseen_sites"], config["modalities"]
    datalist_path = os.path.join(out_dir, "datalist.json")
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
    regions = {
        "medial_temporal": {
            "centers_mm": [list(c) for c in MEDIAL_TEMPORAL_CENTERS],
            "sigma_mm": MEDIAL_TEMPORAL_SIGMA,
        },
        "ventricles": {"center_mm": list(VENTRICLE_CENTER), "sigma_mm": list(VENTRICLE_SIGMA)},
    }
    arm = {"arm": arm_record(config)} if "arm" in config else {}
    write_ground_truth(
        out_dir,
        "monai_medl.data.cohort.generate_mri_cohort",  # the files' provenance string, kept so outputs stay identical
        config,
        renderer.affine,
        seen_sites=seen,
        unseen_sites=unseen,
        regions=regions,
        effects_description=_EFFECTS_DESCRIPTION,
        **arm,
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
        prog="python -m monai_medl.data.synthetic.mri_cohort",
        description="Generate a synthetic multi-site 3D brain MRI cohort with known site and disease effects.",
    )
    add_cohort_arguments(parser, num_subjects=200, sites=6)
    parser.add_argument("--modalities", nargs="+", default=["t1"], help="t1, or t1 flair, or t1 t2")
    parser.add_argument("--missing-modality-sites", nargs="*", default=[])
    parser.add_argument("--disease-strength", type=float, default=1.0)
    parser.add_argument("--site-strength", type=float, default=1.0)
    parser.add_argument("--unseen-prevalence", type=float, default=0.5)
    parser.add_argument("--extra-unseen-subjects", type=int, default=0)
    parser.add_argument("--arm", choices=COHORT_ARMS, default="nuisance", help="see monai_medl.data.synthetic.mri_arms")
    parser.add_argument("--threshold-layout", choices=THRESHOLD_LAYOUTS, default="symmetric")
    parser.add_argument("--arm-effect", type=float, default=None, help="the arm's parameter (default: the arm's)")
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
        unseen_prevalence=args.unseen_prevalence,
        extra_unseen_subjects=args.extra_unseen_subjects,
        arm=args.arm,
        threshold_layout=args.threshold_layout,
        arm_effect=args.arm_effect,
    )
    print(f"cohort datalist: {path} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
