# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The one validation path of the bundles: read a datalist, check every section and entry, report all problems.

Training, evaluation and inference call :func:`load_bundle_inputs` before anything is written. It reads the
datalist JSON (a syntax error names the file, line and column), checks each section with
:func:`~monai_medl.data.validate_datalist` (files exist and are readable images of the expected dimensionality
and channel count with finite voxels, labels of the task's type and range, site present, image keys exactly the
network's, modalities of one subject on one grid) and the sections as a whole (non-empty training and validation
splits, enough training sites for the adversary), and raises one :class:`BundleInputError` listing every problem,
each naming the section, entry, subject, file and key.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from monai_medl.data.datalist import DatalistError, resolve_entry, validate_datalist
from monai_medl.data.datalist_spec import DatalistSpec
from monai_medl.data.image_info import ImageInfo
from monai_medl.data.image_survey import ImageInfoCache
from monai_medl.data.subject_overlap import subject_overlap_problems

__all__ = [
    "voxel_check",
    "VALIDATION_LEVELS",
    "BundleInputError",
    "BundleInputs",
    "read_datalist_json",
    "load_bundle_inputs",
]

logger = logging.getLogger(__name__)

VALIDATION_LEVELS = {
    "full": "every voxel of every scan is read (truncated files, NaN/Inf, intensity range)",
    "header": (
        "headers only: truncated files, NaN/Inf voxels and the intensity range are NOT checked (a damaged scan "
        "fails later, when it is loaded) and the manifest's input profile has no intensity range, so inference "
        "cannot warn about intensities far from training"
    ),
}


def voxel_check(validate: str = "full") -> bool:
    """Whether the ``validate`` level (``"full"`` or ``"header"``) reads voxels; logs what ``"header"`` skips.

    Example (bundle config; ``--validate_inputs header`` on the command line: the bundles' ``validate`` key is
    already their validation section)::

        "validate_inputs": "full",
        "datalist_spec": {"_target_": "monai_medl.data.DatalistSpec",
                          "check_voxels": "$monai_medl.bundle.voxel_check(@validate_inputs)"}
    """
    if validate not in VALIDATION_LEVELS:
        raise ValueError(f"validate must be one of {sorted(VALIDATION_LEVELS)}, got {validate!r}.")
    if validate == "header":
        logger.warning(f"validate 'header': {VALIDATION_LEVELS['header']}.")
    return validate == "full"


class BundleInputError(DatalistError):
    """The bundle's inputs failed validation; nothing was written. ``problems`` lists every problem found."""


class BundleInputs:
    """Validated datalist sections and the image summaries read while validating them.

    Attributes:
        datalist_file: the datalist JSON.
        sections: section name -> entries (image paths absolute).
        image_infos: section name -> ``{(entry index, image key): ImageInfo}``.
    """

    def __init__(
        self,
        datalist_file: str,
        sections: dict[str, list[dict]],
        image_infos: dict[str, dict[tuple[int, str], ImageInfo]],
    ) -> None:
        self.datalist_file = datalist_file
        self.sections = sections
        self.image_infos = image_infos

    def infos(self, section: str, key: str | None = None) -> list[ImageInfo]:
        """The :class:`ImageInfo` of a section's images (of one image key, or all)."""
        return [v for (_, k), v in self.image_infos.get(section, {}).items() if key is None or k == key]


def read_datalist_json(path: str | os.PathLike) -> Any:
    """The parsed content of a datalist JSON; a missing file or a syntax error raises naming the file and line.

    Raises:
        FileNotFoundError: the file does not exist.
        BundleInputError: the file is not valid JSON (the message gives line and column).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"datalist {path!r} does not exist.")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise BundleInputError(path, [f"not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}"]) from e
    except UnicodeDecodeError as e:
        raise BundleInputError(path, [f"not a UTF-8 text file ({e})"]) from e


def _site_count_problems(training: Sequence[Any], spec: DatalistSpec) -> list[str]:
    sites = {str(e.get(spec.site_key)) for e in training if isinstance(e, Mapping) and e.get(spec.site_key) is not None}
    if training and len(sites) < spec.min_training_sites:
        return [
            f"[{spec.training_key}] spans {len(sites)} site(s) {sorted(sites)}; this bundle needs at least "
            f"{spec.min_training_sites} (the adversary and the random effects learn from differences between sites)"
        ]
    return []


def load_bundle_inputs(
    datalist_file: str | os.PathLike,
    spec: DatalistSpec | None = None,
    sections: Mapping[str, bool] | Sequence[str] = ("training", "validation"),
    labelled: Sequence[str] = ("training", "validation"),
    base_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    cache: ImageInfoCache | str | os.PathLike | None = None,
) -> BundleInputs:
    """Read and validate the sections of a site-aware datalist; raise one error listing every problem.

    Args:
        datalist_file: MONAI datalist JSON (``{"training": [...], "validation": [...], "test": [...]}``);
            relative image paths start from its folder (or ``base_dir``).
        spec: image keys, classes, geometry, site/label keys, voxel check, minimum training sites and training
            section (:class:`~monai_medl.data.DatalistSpec`); None: ``DatalistSpec(num_classes=2, in_channels=1)``.
        sections: the sections to read; a mapping ``name -> required`` (an optional section may be absent, never
            empty when present) or a sequence of required names.
        labelled: sections whose entries must carry a valid label.
        base_dir: folder relative paths start from. Defaults to the datalist's folder.
        workers: processes reading the scans (None: every core); each scan is read once for all checks.
        cache: an :class:`~monai_medl.data.image_survey.ImageInfoCache` or its file (None: read every scan).

    Returns:
        the validated :class:`BundleInputs`.

    Raises:
        FileNotFoundError: the datalist does not exist.
        BundleInputError: listing every problem ("[section] entry i (subject s) [file]: key 'k': why").

    Example::

        >>> import tempfile
        >>> import nibabel as nib
        >>> import numpy as np
        >>> from monai_medl.data import DatalistSpec, write_datalist
        >>> data = tempfile.mkdtemp()  # a bundle's data/ folder
        >>> entries = []
        >>> for i, site in enumerate(["site_a", "site_a", "site_b", "site_b", "site_b"]):
        ...     path = os.path.join(data, f"sub-{i}.nii.gz")
        ...     nib.save(nib.Nifti1Image(np.random.rand(8, 8, 8).astype(np.float32), np.eye(4)), path)
        ...     entries.append({"image": path, "label": i % 2, "site": site})
        >>> datalist = write_datalist(os.path.join(data, "datalist.json"),
        ...                           {"training": entries[:4], "validation": entries[4:]})
        >>> spec = DatalistSpec(num_classes=2, in_channels=1, min_training_sites=2)
        >>> inputs = load_bundle_inputs(datalist, spec)
        >>> len(inputs.sections["training"]), len(inputs.sections["validation"])
        (4, 1)
        >>> entries[0]["label"] = 2  # not a class of a binary task: every problem is listed in one error
        >>> datalist = write_datalist(os.path.join(data, "datalist.json"),
        ...                           {"training": entries[:2], "validation": entries[4:]})
        >>> load_bundle_inputs(datalist, spec)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        monai_medl.bundle.inputs.BundleInputError: datalist '...datalist.json' has 2 problem(s):
          [training] entry 0 [...sub-0.nii.gz]: label 2 is outside the declared classes 0..1 (key 'label')
          [training] spans 1 site(s) ['site_a']; this bundle needs at least 2 (the adversary and the random ...
    """
    spec = spec if spec is not None else DatalistSpec(num_classes=2, in_channels=1)
    path = os.fspath(datalist_file)
    content = read_datalist_json(path)
    wanted = dict(sections) if isinstance(sections, Mapping) else dict.fromkeys(sections, True)
    base = os.fspath(base_dir) if base_dir is not None else os.path.dirname(os.path.abspath(path))
    problems: list[str] = []
    if not isinstance(content, Mapping):
        raise BundleInputError(path, [f"expected a JSON object with sections {list(wanted)}, got a JSON array/value"])
    loaded: dict[str, list[dict]] = {}
    infos: dict[str, dict[tuple[int, str], ImageInfo]] = {}
    for name, required in wanted.items():
        if name not in content:
            if required:
                problems.append(f"[{name}] section missing (sections found: {sorted(content)})")
            continue
        section = content[name]
        if not isinstance(section, list):
            problems.append(f"[{name}] should be a list of entries, got {type(section).__name__}")
            continue
        if not section:
            problems.append(f"[{name}] is empty: it needs at least one entry")
            continue
        entries = [resolve_entry(e, base, spec.image_keys) for e in section]
        infos[name] = {}
        found = validate_datalist(entries, spec, name in labelled, infos[name], workers, cache)
        label_key = spec.label_key
        if name in labelled and spec.num_classes is None and label_key is not None:  # labels required, any number
            found += [
                f"entry {i}: missing label (key {label_key!r})" for i, e in enumerate(entries) if label_key not in e
            ]
        problems.extend(f"[{name}] {p}" for p in found)
        loaded[name] = entries
    problems.extend(_site_count_problems(loaded.get(spec.training_key, []), spec))
    problems += subject_overlap_problems(loaded, allow=spec.allow_subject_overlap)
    if problems:
        raise BundleInputError(path, problems)
    return BundleInputs(path, loaded, infos)
