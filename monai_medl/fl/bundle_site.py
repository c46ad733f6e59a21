# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""A bundle's network and data pipeline at one federated site (``--bundle_root``).

The site model is the bundle's ``network_def`` from ``configs/train.json`` with ``num_sites = 1`` (the site's own
random-effects row, ``z = 1``); the site's datalist is read and validated with the bundle's ``datalist_spec``
(:func:`~monai_medl.data.load_datalist`) and preprocessed with the bundle's ``load_transforms`` followed by the
site's own intensity normalisation (:class:`~monai_medl.transforms.NormalizeBySited`, statistics fitted on the
site's training items, never sent). The bundle's ``SiteToIndexd`` has no counterpart: a site has one cluster.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose
from torch import nn

from monai_medl.data import DatalistSpec, load_datalist
from monai_medl.fl.site_datalist import SiteData, SiteDataError
from monai_medl.transforms import NormalizeBySited, SiteIntensityStats

__all__ = ["bundle_parser", "bundle_site_network", "bundle_model_config", "bundle_site_entries", "load_bundle_site"]

RESERVED_OVERRIDES = ("num_sites",)


def bundle_parser(bundle_root: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> ConfigParser:
    """The bundle's ``configs/train.json`` with ``bundle_root``, ``num_sites = 1`` and ``overrides`` applied
    (config ids such as ``"spatial_size"`` or ``"network_def#backbone#channels"``)."""
    overrides = dict(overrides or {})
    reserved = [k for k in RESERVED_OVERRIDES if k in overrides]
    if reserved:
        raise ValueError(f"bundle overrides: {reserved} are set by monai_medl.fl (one cluster per site).")
    config = Path(bundle_root) / "configs" / "train.json"
    if not config.is_file():
        raise FileNotFoundError(f"--bundle_root {str(bundle_root)!r}: no configs/train.json at {str(config)!r}.")
    parser = ConfigParser()
    parser.read_config(str(config))
    parser.update({"bundle_root": str(bundle_root), "num_sites": 1, **overrides})
    return parser


def bundle_site_network(bundle_root: str, overrides: Mapping[str, Any] | None = None) -> nn.Module:
    """The bundle's ``network_def`` with one cluster (the site); NVFlare's server builds it the same way.

    Example (a minimal bundle; the bundles' own ``train.json`` work the same way)::

        >>> import json, os, tempfile
        >>> root = tempfile.mkdtemp()
        >>> os.makedirs(os.path.join(root, "configs"))
        >>> net_def = {"_target_": "monai_medl.networks.nets.MixedEffectsMLP", "in_features": "@num_features",
        ...            "out_channels": 1, "num_clusters": "@num_sites"}
        >>> with open(os.path.join(root, "configs", "train.json"), "w") as f:
        ...     json.dump({"num_sites": 4, "num_features": 3, "network_def": net_def}, f)
        >>> net = bundle_site_network(root, {"num_features": 2})
        >>> net.num_clusters, net.in_features
        (1, 2)
    """
    network = bundle_parser(bundle_root, overrides).get_parsed_content("network_def", instantiate=True)
    if not isinstance(network, nn.Module):
        raise ValueError(f"bundle {bundle_root!r}: network_def is not a torch module, got {type(network).__name__}.")
    return network


def bundle_model_config(bundle_root: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The recipe's model as NVFlare's ``{"path", "args"}`` dictionary (the server calls
    :func:`bundle_site_network` with these arguments)."""
    return {
        "path": f"{__name__}.bundle_site_network",
        "args": {"bundle_root": str(Path(bundle_root).resolve()), "overrides": dict(overrides or {})},
    }


def bundle_site_entries(
    path: str | os.PathLike, site: str, parser: ConfigParser, check_voxels: bool = False
) -> tuple[list[dict], str]:
    """Read and validate one site's datalist (its ``"training"`` items) with the bundle's ``datalist_spec``; return
    the entries and the site's one site name.

    Raises:
        SiteDataError: naming ``site``, the file, and (from the datalist validation) each entry and key at fault.
    """
    spec = parser.get_parsed_content("datalist_spec", instantiate=True)
    if not isinstance(spec, DatalistSpec):
        raise ValueError(f"bundle datalist_spec is not a DatalistSpec, got {type(spec).__name__}.")
    if len(spec.image_keys) != 1 or spec.label_key is None:
        raise ValueError(
            f"monai_medl.fl federates bundles with one image key and a class label; this bundle's datalist_spec has "
            f"image_keys {list(spec.image_keys)} and label_key {spec.label_key!r}."
        )
    spec = spec.replace(min_training_sites=0, check_voxels=check_voxels)
    try:
        entries = load_datalist(path, spec.training_key, spec=spec)
    except (OSError, ValueError) as e:  # DatalistError is a ValueError naming each entry, key and file
        raise SiteDataError(f"site {site!r}: {e}") from None
    if not entries:
        raise SiteDataError(f"site {site!r}: datalist {str(path)!r} has no {spec.training_key!r} items.")
    names = {str(e[spec.site_key or "site"]) for e in entries}
    if len(names) != 1:
        raise SiteDataError(
            f"site {site!r}: datalist {str(path)!r} holds items of several sites {sorted(names)}: a site trains on "
            "its own items only."
        )
    return entries, names.pop()


def load_bundle_site(
    path: str | os.PathLike, site: str, bundle_root: str, overrides: Mapping[str, Any] | None = None
) -> SiteData:
    """One site's training items through the bundle's preprocessing, stacked in memory (``features`` is
    ``(n, C, *spatial_size)``, as the bundle's ``CacheDataset`` with ``cache_rate 1``).

    The intensity statistics are fitted on this site's items only (the bundle fits them per site too).
    """
    parser = bundle_parser(bundle_root, overrides)
    entries, site_name = bundle_site_entries(path, site, parser, check_voxels=True)
    load = Compose(parser.get_parsed_content("load_transforms", instantiate=True))
    # z-scores over all voxels, as the bundle's fitter (fit_intensity_stats' defaults)
    stats = SiteIntensityStats.fit(entries, keys="image", method="zscore", nonzero=False, transform=load)
    pipeline = Compose([load, NormalizeBySited(keys="image", stats=stats, fallback="image")])
    items = [pipeline(dict(e)) for e in entries]
    images = torch.stack([torch.as_tensor(np.asarray(item["image"]), dtype=torch.float32) for item in items])
    labels = torch.tensor([float(e["label"]) for e in entries], dtype=torch.float32)[:, None]
    return SiteData(site, Path(path), site_name, images, labels)
