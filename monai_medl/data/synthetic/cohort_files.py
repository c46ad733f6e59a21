# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""What the MNI-template cohort generators share around the renderer: command-line options, argument checks, the
split record and the ``datalist.json`` / ``ground_truth.json`` files.

The MRI classification cohort (:mod:`monai_medl.data.synthetic.mri_cohort`) and the tissue segmentation cohort
(:mod:`monai_medl.data.synthetic.segmentation_cohort`) render subjects with the same template, grid and scanner
model (:mod:`monai_medl.data.synthetic.rendering`), and their output folders have the same layout: seen-site
``training``/``validation`` sections, a ``test`` section with the held-out subjects of the seen sites plus every
unseen-site subject, and a ground truth that starts with the generator, its arguments, the template's checksums and
the grid. Keeping these pieces here keeps the two cohorts' files alike (readers such as the bundles rely on the
common part) and their argument errors worded alike.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from monai_medl.data.datalist import write_datalist
from monai_medl.data.synthetic.template import template_checksums

__all__ = [
    "TEMPLATE_SOURCE",
    "add_cohort_arguments",
    "cohort_arguments",
    "check_grid",
    "check_num_subjects",
    "check_split_fractions",
    "cohort_config",
    "record_splits",
    "write_cohort_datalist",
    "write_ground_truth",
]

TEMPLATE_SOURCE = "MNI ICBM152 2009a symmetric T1 and GM/WM maps shipped in nilearn (loaded at run time)"
"""How the ground truth describes the anatomy source (the checksums of the files read are recorded beside it)."""


def add_cohort_arguments(parser: argparse.ArgumentParser, num_subjects: int, sites: int) -> None:
    """Add the command-line options every template cohort has (output folder, subjects, sites, seed, grid,
    ``--overwrite``) to ``parser``, with the generator's defaults ``num_subjects`` and ``sites``; read them back
    with :func:`cohort_arguments`.

    Example::

        >>> parser = argparse.ArgumentParser()
        >>> add_cohort_arguments(parser, num_subjects=60, sites=4)
        >>> cohort_arguments(parser.parse_args(["--out", "/tmp/c"]))["num_subjects"]
        60
    """
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-subjects", type=int, default=num_subjects)
    parser.add_argument("--sites", type=int, default=sites, help="number of seen (training) sites")
    parser.add_argument("--unseen-sites", type=int, default=2, help="number of held-out sites")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spatial-size", type=int, nargs=3, default=(48, 48, 48))
    parser.add_argument("--spacing", type=float, nargs=3, default=(4.0, 4.0, 4.0))
    parser.add_argument("--overwrite", action="store_true", help="replace a cohort generated with other arguments")


def cohort_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The generator keyword arguments (``out_dir``, ``num_subjects``, ...) of the options of
    :func:`add_cohort_arguments`."""
    return {
        "out_dir": args.out,
        "num_subjects": args.num_subjects,
        "sites": args.sites,
        "unseen_sites": args.unseen_sites,
        "seed": args.seed,
        "spatial_size": args.spatial_size,
        "spacing": args.spacing,
        "overwrite": args.overwrite,
    }


def check_grid(spatial_size: Sequence[int], spacing: Sequence[float]) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """``(spatial_size, spacing)`` as int and float tuples after checking there are 3 sizes >= 8 and 3 spacings > 0.

    Example::

        >>> check_grid([32, 32, 32], [6, 6, 6])
        ((32, 32, 32), (6.0, 6.0, 6.0))
    """
    spatial_size = tuple(int(s) for s in spatial_size)
    spacing = tuple(float(s) for s in spacing)
    if len(spatial_size) != 3 or min(spatial_size) < 8 or len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(
            f"spatial_size needs 3 sizes >= 8 and spacing 3 positive values, got {spatial_size}, {spacing}."
        )
    return spatial_size, spacing


def check_num_subjects(num_subjects: int, num_sites: int, minimum: int) -> None:
    """Raise a ValueError naming ``num_subjects`` unless every one of ``num_sites`` sites can get ``minimum`` subjects
    (the split needs a few subjects per site).

    Example::

        >>> check_num_subjects(40, num_sites=8, minimum=4)
    """
    if int(num_subjects) < minimum * num_sites:
        raise ValueError(
            f"num_subjects={num_subjects} is too small for {num_sites} sites "
            f"(need at least {minimum} per site, {minimum * num_sites} in all)."
        )


def check_split_fractions(validation_fraction: float, test_fraction: float) -> None:
    """Raise a ValueError naming the argument unless both fractions of a seen site's subjects are in (0, 0.5).

    Example::

        >>> check_split_fractions(0.15, 0.2)
    """
    for name, frac in (("validation_fraction", validation_fraction), ("test_fraction", test_fraction)):
        if not 0 < frac < 0.5:
            raise ValueError(f"{name} must be in (0, 0.5), got {frac}.")


def cohort_config(
    a: Mapping[str, Any],
    sites: tuple[list[str], list[str]],
    grid: tuple[Sequence[int], Sequence[float]],
    version: int,
    specific: Mapping[str, Any],
) -> dict[str, Any]:
    """The config a template cohort records: subjects, ``sites`` (seen, unseen), seed and ``grid`` (spatial size,
    spacing) first, the generator's ``specific`` entries next, then the effect strengths, split fractions and
    ``version`` (this order is the order in ``ground_truth.json``).

    Example::

        >>> a = {"num_subjects": 8, "seed": 0, "disease_strength": 1, "site_strength": 1,
        ...      "validation_fraction": 0.1, "test_fraction": 0.2}
        >>> config = cohort_config(a, (["a"], []), ((8, 8, 8), (6.0, 6.0, 6.0)), 1, {"label_shift": {"a": 0}})
        >>> list(config)[5:7], config["spacing"]
        (['spacing', 'label_shift'], [6.0, 6.0, 6.0])
    """
    return {
        "num_subjects": int(a["num_subjects"]),
        "sites": sites[0],
        "unseen_sites": sites[1],
        "seed": int(a["seed"]),
        "spatial_size": list(grid[0]),
        "spacing": list(grid[1]),
        **specific,
        "disease_strength": float(a["disease_strength"]),
        "site_strength": float(a["site_strength"]),
        "validation_fraction": float(a["validation_fraction"]),
        "test_fraction": float(a["test_fraction"]),
        "generator_version": version,
    }


def record_splits(subjects: Mapping[str, dict], sections: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
    """Write each subject's section name into its ground-truth record (``subjects[subject]["split"]``), in place.

    Example::

        >>> subjects = {"sub-0001": {"site": "site_a"}}
        >>> record_splits(subjects, {"training": [{"subject": "sub-0001"}], "test": []})
        >>> subjects["sub-0001"]["split"]
        'training'
    """
    for name, part in sections.items():
        for e in part:
            subjects[e["subject"]]["split"] = name


def write_cohort_datalist(
    path: str,
    sections: Mapping[str, Sequence[Mapping[str, Any]]],
    image_keys: Sequence[str],
    seen_sites: Sequence[str],
    unseen_sites: Sequence[str],
    **metadata: Any,
) -> str:
    """:func:`~monai_medl.data.write_datalist` of a cohort: ``sections`` with its ``metadata`` (description, labels,
    ...) followed by what every cohort datalist records: the seen and unseen sites and the training and test counts.

    Example::

        >>> import os, tempfile
        >>> out = tempfile.mkdtemp()
        >>> sections = {"training": [{"image": os.path.join(out, "a.nii.gz"), "label": 0, "site": "site_a"}],
        ...             "test": [{"image": os.path.join(out, "b.nii.gz"), "label": 1, "site": "site_b"}]}
        >>> path = write_cohort_datalist(os.path.join(out, "datalist.json"), sections, ("image",), ["site_a"],
        ...                              ["site_b"], description="toy cohort", num_classes=2)
        >>> with open(path) as f:
        ...     datalist = json.load(f)
        >>> list(datalist)
        ['description', 'num_classes', 'seen_sites', 'unseen_sites', 'numTraining', 'numTest', 'training', 'test']
        >>> datalist["test"][0]["image"]  # relative to the datalist's folder
        'b.nii.gz'
    """
    return write_datalist(
        path,
        sections,
        image_keys=image_keys,
        **metadata,
        seen_sites=seen_sites,
        unseen_sites=unseen_sites,
        numTraining=len(sections["training"]),
        numTest=len(sections["test"]),
    )


def write_ground_truth(
    out_dir: str | os.PathLike,
    generator: str,
    config: Mapping[str, Any],
    affine: np.ndarray,
    **record: Any,
) -> None:
    """Write ``out_dir/ground_truth.json``: the generator, its ``config``, the template source and checksums and
    the grid (``config``'s ``spatial_size`` and ``spacing``, and ``affine``) first (the part every template cohort
    shares), then ``record`` in the order given.

    Example::

        >>> import os, tempfile
        >>> out_dir, affine = tempfile.mkdtemp(), np.diag([6.0, 6.0, 6.0, 1.0])
        >>> config = {"num_subjects": 1, "seed": 0, "spatial_size": [32, 32, 32], "spacing": [6.0, 6.0, 6.0]}
        >>> site_info, subjects = {"site_a": {"seen": True}}, {"sub-0001": {"site": "site_a", "label": 1}}
        >>> write_ground_truth(out_dir, "my.generator", config, affine, sites=site_info, subjects=subjects)
        >>> with open(os.path.join(out_dir, "ground_truth.json")) as f:
        ...     truth = json.load(f)
        >>> list(truth), truth["grid"]["spacing"]
        (['generator', 'config', 'template', 'grid', 'sites', 'subjects'], [6.0, 6.0, 6.0])
    """
    truth = {
        "generator": generator,
        "config": config,
        "template": {"source": TEMPLATE_SOURCE, "sha256": template_checksums()},
        "grid": {
            "spatial_size": list(config["spatial_size"]),
            "spacing": list(config["spacing"]),
            "affine": affine.tolist(),
        },
        **record,
    }
    with open(os.path.join(out_dir, "ground_truth.json"), "w", encoding="utf-8") as f:
        json.dump(truth, f, indent=1)
        f.write("\n")
