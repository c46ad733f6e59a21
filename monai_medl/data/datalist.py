# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Read, validate and write MONAI-style datalist JSON files whose entries carry a site.

The file format is the one of :func:`monai.data.load_decathlon_datalist` (Medical Segmentation Decathlon)::

    {"description": "...",
     "training": [{"image": "images/sub-0001_T1w.nii.gz", "label": 1, "site": "site_a", "subject": "sub-0001"}],
     "validation": [...], "test": [...]}

Image paths (the ``image_keys``) may be relative to the datalist's folder (or ``base_dir``); other keys (label,
site, subject, covariates such as age) are never rewritten. That is why the reader does not call
:func:`monai.data.load_decathlon_datalist` itself: it joins *any* string value with the base folder when a file or
folder of that name exists there, so a site called ``"site_a"`` next to a folder ``site_a/`` would silently become
a path.
"""

from __future__ import annotations

import difflib
import json
import math
import numbers
import os
import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, cast

import numpy as np
from monai.utils import ensure_tuple

from monai_medl.data.datalist_spec import DatalistSpec
from monai_medl.data.image_info import ImageInfo, ImageReadError, read_image_info
from monai_medl.data.image_survey import ImageInfoCache, read_image_infos

__all__ = [
    "DatalistSpec",
    "DatalistError",
    "load_datalist",
    "write_datalist",
    "validate_datalist",
    "check_image_file",
    "resolve_entry",
    "image_paths",
]


class DatalistError(ValueError):
    """A datalist failed validation; ``problems`` lists one message per bad entry/key."""

    def __init__(self, path: str, problems: Sequence[str], max_listed: int = 20) -> None:
        self.path = path
        self.problems = list(problems)
        shown = "\n  ".join(self.problems[:max_listed])
        more = f"\n  ... and {len(self.problems) - max_listed} more" if len(self.problems) > max_listed else ""
        super().__init__(f"datalist {path!r} has {len(self.problems)} problem(s):\n  {shown}{more}")


def _resolve(base_dir: str, value: Any) -> Any:
    """Join a relative image path (or a list of them, for a multi-file image) with ``base_dir``."""
    if isinstance(value, str | os.PathLike):
        return os.path.normpath(os.path.join(base_dir, os.fspath(value)))
    if isinstance(value, list | tuple) and all(isinstance(v, str | os.PathLike) for v in value):
        return [_resolve(base_dir, v) for v in value]
    return value


def resolve_entry(entry: Any, base_dir: str, image_keys: Sequence[str]) -> Any:
    """``entry`` with the values of its ``image_keys`` joined to ``base_dir`` (other keys, and non-dictionaries such
    as a bad entry that validation will report, are returned unchanged)."""
    if not isinstance(entry, Mapping):
        return entry
    return {k: (_resolve(base_dir, v) if k in image_keys else v) for k, v in entry.items()}


def check_image_file(
    path: str, spatial_dims: int | None = 3, check_voxels: bool = True, in_channels: int | None = None
) -> str | None:
    """Return ``None`` if ``path`` is a readable image of the expected dimensionality with finite voxels, else why not.

    Args:
        path: image file.
        spatial_dims: expected number of spatial dimensions; an extra channel axis is allowed. ``None`` skips the
            check.
        check_voxels: read every voxel (detects truncated files and NaN/Inf values), not only the header.
        in_channels: expected number of channels (``None``: any).
    """
    try:
        _inspect_image(path, spatial_dims, check_voxels, in_channels)
    except ImageReadError as e:
        return str(e)
    return None


def image_paths(entries: Sequence[Any], image_keys: Sequence[str]) -> list[str]:
    """Every image file named by the entries (folders, e.g. DICOM series, and non-paths excluded)."""
    paths = []
    for item in entries:
        if isinstance(item, Mapping):
            for key in image_keys:
                for path in ensure_tuple(item.get(key)) if item.get(key) is not None else ():
                    if isinstance(path, str | os.PathLike) and not os.path.isdir(path):
                        paths.append(os.fspath(path))
    return paths


def _inspect_image(path: str, spatial_dims: int | None, check_voxels: bool, in_channels: int | None) -> ImageInfo:
    """:func:`read_image_info` plus the dimensionality and channel checks; raises :class:`ImageReadError`."""
    return _check_info(
        read_image_info(path, spatial_dims=spatial_dims or 3, load_voxels=check_voxels), spatial_dims, in_channels
    )


def _check_info(info: ImageInfo | ImageReadError, spatial_dims: int | None, in_channels: int | None) -> ImageInfo:
    """The dimensionality and channel checks of one image's summary; raises :class:`ImageReadError`."""
    if isinstance(info, ImageReadError):
        raise info
    path = info.path
    if spatial_dims is not None:
        shape = (*info.spatial_shape, info.channels) if info.channels > 1 else info.spatial_shape
        if len(info.spatial_shape) != spatial_dims:
            raise ImageReadError(
                f"image {path} has shape {shape} ({len(shape)}-D); expected {spatial_dims}-D (plus optional channels)"
            )
        flat = [i for i, n in enumerate(info.spatial_shape) if n <= 1]
        if flat:
            raise ImageReadError(
                f"image {path} has shape {info.spatial_shape}: spatial axis {flat[0]} has one voxel, i.e. a "
                f"{spatial_dims - len(flat)}-D image; expected a {spatial_dims}-D volume"
            )
    if in_channels is not None and info.channels != in_channels:
        raise ImageReadError(f"image {path} has {info.channels} channel(s); expected {in_channels}")
    return info


def _near_misses(item: Mapping, expected: Sequence[str]) -> list[str]:
    """Keys of ``item`` that look like a misspelt expected key (other case, small typo), as did-you-mean hints."""
    hints = []
    lowered = {k.lower(): k for k in expected}
    for key in item:
        if not isinstance(key, str) or key in expected:
            continue
        match = lowered.get(key.lower()) or next(iter(difflib.get_close_matches(key, expected, n=1, cutoff=0.8)), None)
        if match is not None and match not in item:
            hints.append(f"key {key!r} is not used: did you mean {match!r}? (keys are case-sensitive)")
    return hints


def _geometry_mismatch(infos: Mapping[str, ImageInfo]) -> str | None:
    """Why the images of one entry (one per modality) do not describe the same grid, or None."""
    (ref_key, ref), *others = infos.items()
    for key, info in others:
        if info.spatial_shape != ref.spatial_shape or info.orientation != ref.orientation:
            return (
                f"modalities {ref_key!r} and {key!r} differ in shape/orientation: {ref.spatial_shape} "
                f"{ref.orientation or '?'} vs {info.spatial_shape} {info.orientation or '?'}"
            )
        if not np.allclose(info.spacing, ref.spacing, rtol=1e-3):
            return f"modalities {ref_key!r} and {key!r} differ in spacing: {ref.spacing} vs {info.spacing}"
    return None


def _check_label(label: Any, num_classes: int | None) -> str | None:
    if isinstance(label, bool) or not isinstance(label, numbers.Number):
        return f"label {label!r} is not a number"
    value = cast(float, label)  # a numbers.Number, which float() and int() take as every JSON number
    if not math.isfinite(float(value)):
        return f"label {label!r} is not finite"
    if num_classes is not None and (float(value) != int(value) or not 0 <= int(value) < num_classes):
        return f"label {label!r} is outside the declared classes 0..{num_classes - 1}"
    return None


def validate_datalist(
    entries: Sequence[Mapping[Hashable, Any]],
    spec: DatalistSpec | None = None,
    labelled: bool = True,
    image_infos: dict[tuple[int, str], ImageInfo] | None = None,
    workers: int | None = None,
    cache: ImageInfoCache | str | os.PathLike | Mapping[str, Any] | None = None,
) -> list[str]:
    """Check every entry against ``spec`` and return a list of problems, each naming the entry (index, subject,
    file) and the key.

    Checks: the entry is a dictionary; each image key is present (keys in ``optional_image_keys`` may be absent,
    e.g. a modality missing at some sites) and points to a readable image with ``spatial_dims`` dimensions,
    ``in_channels`` channels and finite voxels; the images of one entry (one per modality) share shape,
    orientation and spacing; a key that differs from an image key only by case or a small typo is reported with a
    did-you-mean hint (it would otherwise be ignored silently); the site is present and not empty; the label, when
    ``label_key`` is present, is a finite number and, if the entries are ``labelled`` and ``num_classes`` is given,
    present and an integer class in ``0 .. num_classes-1``.

    Args:
        entries: datalist entries with resolved (absolute) image paths.
        spec: the expected content (:class:`~monai_medl.data.DatalistSpec`); None: ``DatalistSpec()``.
        labelled: the entries must carry a label of ``spec.num_classes`` classes (False: a label, when present,
            need only be a finite number, e.g. scans to predict).
        image_infos: if a dictionary is given, it is filled with the :class:`ImageInfo` of every readable image,
            keyed ``(entry index, image key)`` (geometry and intensity summaries for later comparisons).
        workers: processes reading the images (None: every core; each file is read once, see
            :func:`~monai_medl.data.image_survey.read_image_infos`).
        cache: an :class:`~monai_medl.data.image_survey.ImageInfoCache` (or its file) of earlier reads, keyed by
            file identity: an unchanged dataset is revalidated without decoding a scan; or the mapping returned by
            :func:`~monai_medl.data.image_survey.read_image_infos` for these entries.

    Example::

        >>> from monai_medl.data import DatalistSpec
        >>> problems = validate_datalist([{"image": "a.nii.gz", "site": "s1", "label": 2}], DatalistSpec(num_classes=2))
        >>> for problem in problems:
        ...     print(problem)
        entry 0 [a.nii.gz]: key 'image': file not found: a.nii.gz
        entry 0 [a.nii.gz]: label 2 is outside the declared classes 0..1 (key 'label')
    """
    spec = spec if spec is not None else DatalistSpec()
    paths = image_paths(entries, spec.image_keys)
    read = read_image_infos(paths, spec.spatial_dims or 3, spec.check_voxels, workers, cache)
    num_classes = spec.num_classes if labelled else None
    problems: list[str] = []
    for i, item in enumerate(entries):
        if not isinstance(item, Mapping):
            problems.append(f"entry {i}: expected a dictionary, got {type(item).__name__}")
            continue
        first = item.get(spec.image_keys[0])
        who = f"entry {i}" + (f" (subject {item['subject']!r})" if "subject" in item else "")
        who += f" [{first}]" if isinstance(first, str) else ""
        infos, found = _image_problems(item, spec, read)
        problems.extend(f"{who}: {p}" for p in found)
        if image_infos is not None:
            image_infos.update({(i, k): v for k, v in infos.items()})
        problems.extend(f"{who}: {p}" for p in _site_and_label_problems(item, spec, num_classes))
    return problems


def _image_problems(item: Mapping, spec: DatalistSpec, read: Mapping[str, Any]) -> tuple[dict[str, ImageInfo], list]:
    """The images of one entry (key -> summary) and what is wrong with them."""
    problems = list(_near_misses(item, spec.image_keys))
    infos: dict[str, ImageInfo] = {}
    for key in spec.image_keys:
        if key not in item or item[key] is None:
            if key not in spec.optional_image_keys:
                problems.append(f"missing image key {key!r}")
            continue
        for path in ensure_tuple(item[key]):
            if not isinstance(path, str | os.PathLike):
                problems.append(f"key {key!r} should be a file path, got {path!r}")
                continue
            if os.path.isdir(path):
                continue  # a DICOM series folder; its content is checked by the reader at load time
            try:
                infos[key] = _check_info(read[os.fspath(path)], spec.spatial_dims, spec.in_channels)
            except ImageReadError as e:
                problems.append(f"key {key!r}: {e}")
    if len(infos) > 1:
        why = _geometry_mismatch(infos)
        if why:
            problems.append(why)
    return infos, problems


def _site_and_label_problems(item: Mapping, spec: DatalistSpec, num_classes: int | None) -> list[str]:
    problems = []
    site_key, label_key = spec.site_key, spec.label_key
    if site_key is not None:
        site = item.get(site_key)
        if site is None or (isinstance(site, str) and not site.strip()):
            problems.append(f"missing site (key {site_key!r}); every entry needs its site")
        elif isinstance(site, bool) or not isinstance(site, str | numbers.Integral):
            problems.append(f"site {site!r} should be a string or an integer")
    if label_key is not None and label_key in item:
        why = _check_label(item[label_key], num_classes)
        if why:
            problems.append(f"{why} (key {label_key!r})")
    elif label_key is not None and num_classes is not None:
        problems.append(f"missing label (key {label_key!r})")
    return problems


def load_datalist(
    path: str | os.PathLike,
    data_list_key: str = "training",
    base_dir: str | os.PathLike | None = None,
    validate: bool = True,
    spec: DatalistSpec | None = None,
    **legacy: Any,
) -> list[dict]:
    """Load one section of a datalist JSON, resolve its image paths and (by default) validate every entry.

    Args:
        path: the datalist JSON file.
        data_list_key: section to load (``"training"``, ``"validation"``, ``"test"``, ...).
        base_dir: folder relative image paths start from. Defaults to the datalist's folder.
        validate: run :func:`validate_datalist` and raise :class:`DatalistError` listing every problem.
        spec: image keys, classes, geometry, site and label keys (:class:`~monai_medl.data.DatalistSpec`);
            None: ``DatalistSpec()`` (one ``"image"`` key, any label, 3-D images, a site).
        legacy: the spec's fields as separate keywords (``num_classes=2``, ...), deprecated: accepted for one
            release with a ``DeprecationWarning``.

    Returns:
        a list of dictionaries with absolute image paths, ready for :class:`monai.data.Dataset`.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not JSON or has no list under ``data_list_key``.
        DatalistError: if validation finds problems (the message names each entry and key).

    Example::

        >>> import tempfile
        >>> import nibabel as nib
        >>> from monai_medl.data import DatalistSpec
        >>> cohort = tempfile.mkdtemp()
        >>> os.makedirs(os.path.join(cohort, "images"))
        >>> nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)),
        ...          os.path.join(cohort, "images", "sub-0001_T1w.nii.gz"))
        >>> with open(os.path.join(cohort, "datalist.json"), "w") as f:  # image paths relative to the datalist
        ...     _ = f.write('{"training": [{"image": "images/sub-0001_T1w.nii.gz", "label": 1, "site": "site_a"}]}')
        >>> train = load_datalist(os.path.join(cohort, "datalist.json"), "training", spec=DatalistSpec(num_classes=2))
        >>> train[0]["site"], train[0]["image"] == os.path.join(cohort, "images", "sub-0001_T1w.nii.gz")  # absolute
        ('site_a', True)
    """
    if legacy:
        if spec is not None:
            raise TypeError(f"load_datalist: give either spec or the keywords {sorted(legacy)}, not both.")
        warnings.warn(
            f"load_datalist({', '.join(f'{k}=...' for k in legacy)}) is deprecated: pass spec=DatalistSpec(...).",
            DeprecationWarning,
            stacklevel=2,
        )
        spec = DatalistSpec(**legacy)
    spec = spec if spec is not None else DatalistSpec()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"datalist file {path!r} does not exist.")
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"datalist {path!r} is not valid JSON: {e}") from e
    if not isinstance(content, Mapping) or data_list_key not in content:
        keys = sorted(content) if isinstance(content, Mapping) else type(content).__name__
        raise ValueError(f"datalist {path!r} has no section {data_list_key!r}; found {keys}.")
    section = content[data_list_key]
    if not isinstance(section, list):
        raise ValueError(
            f"datalist {path!r}: section {data_list_key!r} should be a list, got {type(section).__name__}."
        )
    base = os.fspath(base_dir) if base_dir is not None else os.path.dirname(os.path.abspath(path))
    entries = []
    for item in section:
        if isinstance(item, str):  # decathlon "test" sections may list bare image paths
            item = {spec.image_keys[0]: item}
        if isinstance(item, Mapping):
            item = resolve_entry(item, base, spec.image_keys)
        entries.append(item)
    if validate:
        problems = validate_datalist(entries, spec)
        if problems:
            raise DatalistError(f"{path} [{data_list_key}]", problems)
    return entries


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "tolist"):  # numpy arrays and torch tensors
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def write_datalist(
    path: str | os.PathLike,
    sections: Mapping[str, Sequence[Mapping[str, Any]]],
    image_keys: Sequence[str] | str = ("image",),
    relative: bool = True,
    **metadata: Any,
) -> str:
    """Write datalist sections (``{"training": [...], "validation": [...], ...}``) and metadata to a JSON file.

    Args:
        path: output JSON file (its folder is created).
        sections: section name -> list of entry dictionaries.
        image_keys: keys holding image paths.
        relative: store image paths under the datalist's folder relative to it, so the folder can be moved.
        metadata: extra top-level items (``description``, ``labels``, ``num_classes``, ...).

    Returns:
        the path written.

    Example::

        >>> import tempfile
        >>> out = tempfile.mkdtemp()
        >>> path = write_datalist(os.path.join(out, "datalist.json"),
        ...                       {"training": [{"image": os.path.join(out, "a.nii.gz"), "label": 0, "site": "s1"}]},
        ...                       description="toy")
        >>> with open(path) as f:
        ...     print(f.read())
        {
          "description": "toy",
          "training": [
            {
              "image": "a.nii.gz",
              "label": 0,
              "site": "s1"
            }
          ]
        }
        <BLANKLINE>
    """
    path = os.path.abspath(os.fspath(path))
    root = os.path.dirname(path)
    os.makedirs(root, exist_ok=True)
    image_keys = ensure_tuple(image_keys)

    def rel(v: Any) -> Any:
        if isinstance(v, list | tuple):
            return [rel(x) for x in v]
        if not isinstance(v, str | os.PathLike):
            return v
        v = os.fspath(v)
        if relative and os.path.isabs(v) and os.path.commonpath([root, os.path.abspath(v)]) == root:
            return os.path.relpath(v, root).replace(os.sep, "/")
        return v

    content: dict[str, Any] = _to_jsonable(dict(metadata))
    for name, entries in sections.items():
        if name in content:
            raise ValueError(f"section name {name!r} clashes with a metadata item of the same name.")
        content[name] = [_to_jsonable({k: (rel(v) if k in image_keys else v) for k, v in e.items()}) for e in entries]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(content, f, indent=2)
        f.write("\n")
    return path
