# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""What a datalist must look like for one network: its image keys, classes, geometry, site and label keys.

One :class:`DatalistSpec` is built from a bundle's config and handed to validation
(:func:`~monai_medl.data.validate_datalist`), loading (:func:`~monai_medl.data.load_datalist`,
:func:`~monai_medl.bundle.load_bundle_inputs`) and the site data (:func:`~monai_medl.bundle.prepare_site_data`,
:func:`~monai_medl.bundle.inference_inputs`), instead of the same ten arguments passed to each.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from monai.utils import ensure_tuple

__all__ = ["DatalistSpec"]


@dataclasses.dataclass(frozen=True)
class DatalistSpec:
    """The expected content of a site-aware datalist (immutable; lists given in a config become tuples).

    Args:
        image_keys: the network's image keys, one per modality (case-sensitive).
        optional_image_keys: those of ``image_keys`` an entry may lack (a modality missing at some sites).
        num_classes: labels of labelled sections must be integers ``0 .. num_classes-1``; None accepts any number.
        spatial_dims: spatial dimensionality of every image (None: not checked).
        in_channels: channels per image file (None: any).
        site_key: the site key, required in every entry (None: no site required).
        label_key: the class-label key; None when there is no class label (e.g. a segmentation whose label image
            is one of ``image_keys``).
        check_voxels: read every voxel (truncated files, NaN/Inf, intensity range); headers only otherwise.
        min_training_sites: the training section must span at least this many sites.
        training_key: the training section's name.
        allow_subject_overlap: accept a subject (key ``"subject"``) in more than one section; by default such a
            datalist is refused, naming the subject and the sections (a bundle's ``allow_subject_overlap`` key).

    Raises:
        ValueError: naming the field and the value expected.

    Example::

        >>> spec = DatalistSpec(image_keys=["image", "flair"], optional_image_keys="flair", num_classes=2)
        >>> spec.image_keys, spec.optional_image_keys, spec.required_image_keys
        (('image', 'flair'), ('flair',), ('image',))

    Example (bundle config, built once and referenced as ``"@datalist_spec"``)::

        "datalist_spec": {"_target_": "monai_medl.data.DatalistSpec", "image_keys": ["image"], "num_classes": 2,
                          "spatial_dims": 3, "in_channels": 1, "min_training_sites": 2}
    """

    image_keys: Sequence[str] = ("image",)
    optional_image_keys: Sequence[str] = ()
    num_classes: int | None = None
    spatial_dims: int | None = 3
    in_channels: int | None = None
    site_key: str | None = "site"
    label_key: str | None = "label"
    check_voxels: bool = True
    min_training_sites: int = 0
    training_key: str = "training"
    allow_subject_overlap: bool = False

    def __post_init__(self) -> None:
        image_keys, optional = tuple(ensure_tuple(self.image_keys)), tuple(ensure_tuple(self.optional_image_keys))
        object.__setattr__(self, "image_keys", image_keys)
        object.__setattr__(self, "optional_image_keys", optional)
        if not image_keys or not all(isinstance(k, str) and k for k in image_keys):
            raise ValueError(f"DatalistSpec image_keys must be non-empty strings, got {list(image_keys)}.")
        stray = [k for k in optional if k not in image_keys]
        if stray:
            raise ValueError(
                f"optional_image_keys {stray} must also be listed in image_keys {list(image_keys)} (they are image "
                "keys that may be absent from an entry)."
            )
        for name, low in (("num_classes", 1), ("spatial_dims", 1), ("in_channels", 1)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise ValueError(f"DatalistSpec {name} must be None or an integer >= {low}, got {value!r}.")
        for name in ("allow_subject_overlap",):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"DatalistSpec {name} must be true or false, got {getattr(self, name)!r}.")
        if isinstance(self.min_training_sites, bool) or not isinstance(self.min_training_sites, int):
            raise ValueError(f"DatalistSpec min_training_sites must be an integer, got {self.min_training_sites!r}.")

    @property
    def required_image_keys(self) -> tuple[str, ...]:
        """The image keys every entry must have."""
        return tuple(k for k in self.image_keys if k not in self.optional_image_keys)

    def replace(self, **changes) -> DatalistSpec:
        """A copy with ``changes`` (e.g. ``min_training_sites=0`` for evaluation)."""
        return dataclasses.replace(self, **changes)
