# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Several image modalities per sample, some of which may be missing: a presence mask and channel stacking.

The data contract for multimodal samples: one dictionary key per modality (``"t1"``, ``"flair"``, ...). A
modality that was not acquired for a sample is absent from its dictionary, or its value is None or ``""``.
:class:`ModalityMaskd` records which modalities a sample has (``"modality_mask"``, 1 = present) and removes the
absent keys, so loading and intensity transforms run with ``allow_missing_keys=True`` on the present images only.
:class:`StackModalitiesd` then stacks the modalities on the channel axis in a fixed order, giving absent ones a
constant placeholder so samples batch together. The placeholder is not an imputed image: the mask travels with
the batch and :class:`~monai_medl.networks.nets.make_multimodal_me_cnn` never reads an absent modality's
channels.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import convert_to_tensor

__all__ = [
    "ModalityMaskd",
    "ModalityMaskD",
    "ModalityMaskDict",
    "StackModalitiesd",
    "StackModalitiesD",
    "StackModalitiesDict",
    "is_absent",
]


def is_absent(value: Any) -> bool:
    """True for the values that mark a modality as not acquired: None and the empty string."""
    return value is None or (isinstance(value, str) and not value.strip())


def _describe(d: Mapping, id_keys: Sequence[str]) -> str:
    found = [f"{k}={d[k]!r}" for k in id_keys if k in d and not isinstance(d[k], torch.Tensor)]
    return f" (sample {', '.join(found)})" if found else ""


class ModalityMaskd(MapTransform):
    """Record which modalities a sample has and drop the absent ones from the dictionary.

    A modality is absent when its key is missing or holds None or ``""``. The mask is a float tensor with one
    entry per key, in ``keys`` order (1 present, 0 absent), stored under ``mask_key``; it batches to
    ``(batch, num_modalities)``, the ``mask`` argument of
    :class:`~monai_medl.networks.nets.make_multimodal_me_cnn`. Put it before ``LoadImaged(keys,
    allow_missing_keys=True)``.

    Args:
        keys: the modality keys, in channel order.
        mask_key: where to store the mask. Defaults to ``"modality_mask"``.
        required: keys that every sample must have; a sample without one raises a ValueError naming the key
            (and the sample's ``site``/``id`` when present). True for all keys. Defaults to ``()``.
        id_keys: keys identifying a sample in error messages. Defaults to ``("id", "subject", "site")``.

    Example::

        >>> t = ModalityMaskd(["t1", "flair"], required=["t1"])
        >>> out = t({"t1": "s1_t1.nii.gz", "flair": None, "label": 1})
        >>> out["modality_mask"].tolist(), "flair" in out
        ([1.0, 0.0], False)
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "modality_mask",
        required: Sequence[Hashable] | bool = (),
        id_keys: Sequence[str] = ("id", "subject", "site"),
    ) -> None:
        super().__init__(keys, allow_missing_keys=True)
        if required is True:
            required = list(self.keys)
        elif required is False or required is None:
            required = []
        required = [required] if isinstance(required, str) else list(required)
        unknown = [r for r in required if r not in self.keys]
        if unknown:
            raise ValueError(f"required keys {unknown} are not among the modality keys {list(self.keys)}.")
        self.mask_key = mask_key
        self.required = required
        self.id_keys = tuple(id_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        mask = []
        for key in self.keys:
            present = key in d and not is_absent(d[key])
            if not present:
                if key in self.required:
                    raise ValueError(
                        f"modality {key!r} is required but absent{_describe(d, self.id_keys)}; "
                        f"present keys: {sorted(str(k) for k in d)}."
                    )
                d.pop(key, None)
            mask.append(1.0 if present else 0.0)
        if not any(mask):
            raise ValueError(f"no modality of {list(self.keys)} is present{_describe(d, self.id_keys)}.")
        d[self.mask_key] = torch.tensor(mask, dtype=torch.float32)
        return d


class StackModalitiesd(MapTransform):
    """Stack the modality images on the channel axis, in ``keys`` order, with a placeholder for absent ones.

    Every present image must be channel-first with the same spatial shape. An absent modality (its key missing,
    or marked 0 in ``mask_key``) gets ``fill_value`` with the channel count of ``channels_per_key``. The result
    (a MetaTensor carrying the first present image's metadata) is stored under ``name``; the per-modality keys
    are removed unless ``keep_keys``.

    Args:
        keys: the modality keys, in channel order.
        name: output key. Defaults to ``"image"``.
        mask_key: the mask written by :class:`ModalityMaskd` (if it is missing, the mask is made from the keys
            present here). Defaults to ``"modality_mask"``.
        channels_per_key: channels of each modality (int or one per key). Defaults to 1.
        fill_value: value of an absent modality's placeholder channels. Defaults to 0.0.
        keep_keys: keep the per-modality entries. Defaults to False.

    Example::

        >>> t = StackModalitiesd(["t1", "flair"])
        >>> out = t({"t1": torch.ones(1, 4, 4), "modality_mask": torch.tensor([1.0, 0.0])})
        >>> out["image"].shape, out["image"][1].abs().sum().item()
        (torch.Size([2, 4, 4]), 0.0)
    """

    def __init__(
        self,
        keys: KeysCollection,
        name: str = "image",
        mask_key: str = "modality_mask",
        channels_per_key: int | Sequence[int] = 1,
        fill_value: float = 0.0,
        keep_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys=True)
        chans = [channels_per_key] * len(self.keys) if isinstance(channels_per_key, int) else list(channels_per_key)
        if len(chans) != len(self.keys) or min(chans) < 1:
            raise ValueError(f"channels_per_key must be a positive int or one per key {list(self.keys)}, got {chans}.")
        self.name = name
        self.mask_key = mask_key
        self.channels = [int(c) for c in chans]
        self.fill_value = float(fill_value)
        self.keep_keys = keep_keys

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.mask_key in d:
            mask = torch.as_tensor(d[self.mask_key]).flatten().tolist()
            if len(mask) != len(self.keys):
                raise ValueError(
                    f"{self.mask_key!r} has {len(mask)} entries but there are {len(self.keys)} modality keys "
                    f"{list(self.keys)}."
                )
        else:
            mask = [1.0 if k in d and not is_absent(d[k]) else 0.0 for k in self.keys]
            d[self.mask_key] = torch.tensor(mask, dtype=torch.float32)
        images: dict[Hashable, torch.Tensor] = {}
        for key, present, chans in zip(self.keys, mask, self.channels):
            if not present:
                continue
            if key not in d:
                raise KeyError(f"modality {key!r} is marked present in {self.mask_key!r} but missing from the data.")
            img = convert_to_tensor(d[key], track_meta=True)
            if img.shape[0] != chans:
                raise ValueError(
                    f"modality {key!r} must be channel-first with {chans} channel(s), got shape {tuple(img.shape)}."
                )
            images[key] = img
        if not images:
            raise ValueError(f"no modality of {list(self.keys)} is present; cannot stack.")
        ref_key, ref = next(iter(images.items()))
        for key, img in images.items():
            if img.shape[1:] != ref.shape[1:]:
                raise ValueError(
                    f"modality {key!r} has spatial shape {tuple(img.shape[1:])} but {ref_key!r} has "
                    f"{tuple(ref.shape[1:])}; resample them to one grid before stacking."
                )
        parts = []
        for key, chans in zip(self.keys, self.channels):
            if key in images:
                parts.append(images[key].to(ref.dtype))
            else:
                parts.append(torch.full((chans, *ref.shape[1:]), self.fill_value, dtype=ref.dtype))
        stacked = torch.cat([p.as_tensor() if isinstance(p, MetaTensor) else p for p in parts], dim=0)
        if isinstance(ref, MetaTensor):
            stacked = MetaTensor(stacked, meta=ref.meta, applied_operations=ref.applied_operations)
        d[self.name] = stacked
        if not self.keep_keys:
            for key in self.keys:
                if key != self.name:
                    d.pop(key, None)
        return d


ModalityMaskD = ModalityMaskDict = ModalityMaskd
StackModalitiesD = StackModalitiesDict = StackModalitiesd
