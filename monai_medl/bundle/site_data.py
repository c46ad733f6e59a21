# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Datalists of a site-aware bundle: generate the embedded cohort on first run, fit site preprocessing on the
training split only, and build inference datalists (a datalist or a folder of NIfTI files) with unseen-site
warnings."""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch.distributed as dist
from monai.data import load_decathlon_datalist

from monai_medl.transforms.site import SiteVocabulary
from monai_medl.transforms.site_intensity import SiteIntensityStats

__all__ = ["SiteData", "prepare_site_data", "fit_intensity_stats", "load_split", "inference_datalist", "UNKNOWN_SITE"]

UNKNOWN_SITE = "unknown"
"""Site name given to scans whose site is not known (e.g. a plain folder of NIfTI files); never a training site."""

logger = logging.getLogger(__name__)


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def load_split(
    datalist_file: str | os.PathLike,
    key: str,
    split: str | None = None,
    required_keys: Sequence[str] = ("image", "site"),
    base_dir: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Entries of one section of a MONAI datalist JSON, with paths made absolute and a ``split`` tag.

    Args:
        datalist_file: datalist JSON (``{"training": [...], "validation": [...], "test": [...]}``), entries
            ``{"image": path, "label": 0/1, "site": name}``; relative paths are relative to ``base_dir``.
        key: the section to read.
        split: value of the ``split`` key added to each entry. Defaults to ``key``.
        required_keys: keys every entry must have. Defaults to ``("image", "site")``.
        base_dir: directory of relative paths. Defaults to the datalist's directory.

    Raises:
        ValueError: naming the file when the section is missing or an entry lacks a required key.
    """
    try:
        items = load_decathlon_datalist(datalist_file, is_segmentation=False, data_list_key=key, base_dir=base_dir)
    except ValueError as e:
        raise ValueError(f"datalist {os.fspath(datalist_file)!r}: {e}") from e
    for i, item in enumerate(items):
        missing = [k for k in required_keys if k not in item]
        if missing:
            raise ValueError(
                f"datalist {os.fspath(datalist_file)!r}, section {key!r}, entry {i}: missing key(s) {missing}; "
                f"every entry needs {list(required_keys)} (keys found: {sorted(item)})."
            )
        item["split"] = split or key
    return items


class SiteData:
    """The splits of a site-aware bundle and the site vocabulary fitted on its training split.

    Built by :func:`prepare_site_data`; referenced in bundle configs as ``"$@site_data.training"`` etc.

    Attributes:
        training, validation, test: datalist entries (each with a ``split`` tag); ``test`` may be empty.
        vocabulary: the :class:`~monai_medl.transforms.SiteVocabulary` of the training sites.
        vocabulary_file: where the vocabulary is stored (JSON).
    """

    def __init__(
        self,
        training: list[dict],
        validation: list[dict],
        test: list[dict],
        vocabulary: SiteVocabulary,
        vocabulary_file: str,
    ) -> None:
        self.training = training
        self.validation = validation
        self.test = test
        self.vocabulary = vocabulary
        self.vocabulary_file = vocabulary_file

    @property
    def num_sites(self) -> int:
        """Number of training sites (width of the design vector ``z``)."""
        return self.vocabulary.num_sites

    @property
    def evaluation(self) -> list[dict]:
        """Training then test entries: the training scans choose thresholds, the test scans are reported."""
        return self.training + self.test

    def __repr__(self) -> str:
        return (
            f"SiteData(training={len(self.training)}, validation={len(self.validation)}, test={len(self.test)}, "
            f"sites={list(self.vocabulary.sites)})"
        )


def prepare_site_data(
    datalist_file: str | os.PathLike,
    vocabulary_file: str | os.PathLike,
    fit: bool = True,
    generate: Callable[[], Any] | None = None,
    fitters: Sequence[Callable[[list[dict]], Any]] = (),
    training_key: str = "training",
    validation_key: str = "validation",
    test_key: str | None = "test",
    site_key: str = "site",
) -> SiteData:
    """Load (and on first run generate) a site-aware datalist; fit or load the site vocabulary.

    1. If ``datalist_file`` does not exist, ``generate()`` is called to create it (e.g. the embedded synthetic
       cohort, ``functools.partial(generate_mri_cohort, output_dir)``); without ``generate`` a missing file is
       an error.
    2. With ``fit=True`` (training) the :class:`~monai_medl.transforms.SiteVocabulary` is fitted on the
       training section only and written to ``vocabulary_file``, and every ``fitter(training)`` is called to fit
       and write other training-only preprocessing state (e.g. :func:`fit_intensity_stats`). With ``fit=False``
       (evaluation, inference) the stored vocabulary is read instead and nothing is fitted.

    Under ``torch.distributed`` only rank 0 generates and writes; the other ranks wait for it.

    Args:
        datalist_file: MONAI datalist JSON with ``training``/``validation`` (and optional ``test``) sections of
            ``{"image", "label", "site"}`` entries.
        vocabulary_file: JSON file of the site vocabulary (written when ``fit``, read otherwise).
        fit: fit on the training section (True) or load the stored state (False). Defaults to True.
        generate: zero-argument callable creating ``datalist_file`` when it is missing. Defaults to None.
        fitters: callables ``fn(training_entries)`` run when ``fit`` (on rank 0); each writes its own file.
        training_key, validation_key, test_key: datalist sections (``test_key`` None or absent: no test split).
        site_key: the site key of the entries. Defaults to ``"site"``.

    Raises:
        FileNotFoundError: naming the missing datalist or vocabulary file and how to provide it.

    Example (bundle config)::

        "site_data": {"_target_": "monai_medl.bundle.prepare_site_data", "datalist_file": "@datalist",
                      "vocabulary_file": "@site_vocabulary_file", "generate": "@cohort"}
    """
    datalist_file, vocabulary_file = os.fspath(datalist_file), os.fspath(vocabulary_file)
    if _rank() == 0:
        if not os.path.isfile(datalist_file):
            if generate is None:
                raise FileNotFoundError(
                    f"datalist {datalist_file!r} does not exist; point 'datalist' at a MONAI datalist JSON with "
                    f"{training_key!r}/{validation_key!r} sections of {{'image', 'label', 'site'}} entries, or "
                    f"enable cohort generation."
                )
            logger.info(f"datalist {datalist_file!r} not found: generating the cohort (first run)")
            generate()
            if not os.path.isfile(datalist_file):
                raise FileNotFoundError(f"cohort generation did not create the datalist {datalist_file!r}.")
    _barrier()
    training = load_split(datalist_file, training_key, split="train", required_keys=("image", "label", site_key))
    validation = load_split(datalist_file, validation_key, split="validation", required_keys=("image", site_key))
    test: list[dict] = []
    if test_key:
        with open(datalist_file, encoding="utf-8") as f:
            has_test = test_key in json.load(f)
        if has_test:
            test = load_split(datalist_file, test_key, split="test", required_keys=("image", site_key))
    if fit:
        vocabulary = SiteVocabulary.from_datalist(training, site_key=site_key)
        if _rank() == 0:
            os.makedirs(os.path.dirname(os.path.abspath(vocabulary_file)), exist_ok=True)
            vocabulary.to_json(vocabulary_file)
            for fn in fitters or ():
                fn(training)
        _barrier()
    else:
        if not os.path.isfile(vocabulary_file):
            raise FileNotFoundError(
                f"site vocabulary {vocabulary_file!r} not found: it is written by training (train.json)."
            )
        vocabulary = SiteVocabulary.from_json(vocabulary_file)
    unseen = sorted({str(e[site_key]) for e in validation + test if e[site_key] not in vocabulary})
    logger.info(
        f"{len(training)} training / {len(validation)} validation / {len(test)} test scans; "
        f"{vocabulary.num_sites} training sites {list(vocabulary.sites)}; unseen sites in validation/test: {unseen}"
    )
    return SiteData(training, validation, test, vocabulary, vocabulary_file)


def fit_intensity_stats(
    training: Sequence[dict],
    path: str | os.PathLike,
    keys: str | Sequence[str] = "image",
    transform: Callable[[dict], dict] | None = None,
    method: str = "zscore",
    nonzero: bool = False,
    site_key: str = "site",
) -> SiteIntensityStats:
    """Fit per-site intensity statistics on the training entries and write them to ``path`` (JSON).

    A thin wrapper of :meth:`~monai_medl.transforms.SiteIntensityStats.fit` for :func:`prepare_site_data`'s
    ``fitters``; apply the result with :class:`~monai_medl.transforms.NormalizeBySited` (``stats=path``).

    Args:
        training: the training entries (never validation or test data).
        path: output JSON file.
        keys: image keys. Defaults to ``"image"``.
        transform: the deterministic loading part of the pipeline, applied to each entry before fitting (so the
            statistics describe the images the normaliser will see).
        method: ``"zscore"`` or ``"percentile"``. Defaults to ``"zscore"``.
        nonzero: statistics on non-zero voxels only (skull-stripped images with a zero background). Defaults to
            False.
        site_key: the raw site key. Defaults to ``"site"``.

    Example (bundle config, a fitter of ``prepare_site_data``)::

        {"_target_": "monai_medl.bundle.fit_intensity_stats", "_mode_": "callable",
         "path": "@intensity_stats_file", "transform": "@load_transforms"}
    """
    stats = SiteIntensityStats.fit(
        training, keys=keys, site_key=site_key, method=method, nonzero=nonzero, transform=transform
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    stats.to_json(path)
    logger.info(f"intensity statistics of {len(stats.sites(stats.keys[0]))} training sites written to {path}")
    return stats


_NIFTI_PATTERNS = ("*.nii", "*.nii.gz")


def inference_datalist(
    source: str | os.PathLike,
    vocabulary: SiteVocabulary | str | os.PathLike,
    unseen_mode: str = "inferred",
    section: str = "test",
    site: str | None = None,
    site_key: str = "site",
) -> list[dict[str, Any]]:
    """Entries to predict from a datalist JSON or a folder of NIfTI files, warning about unseen sites.

    A seen site is predicted with its own random effects (mixed model, one-hot ``z``). Scans from sites not in
    the training vocabulary, and scans without a site (a plain folder), get ``unseen_mode``: ``"population"``
    (``z = 0``: fixed effects only) or ``"inferred"`` (``z`` from the z-predictor); a warning names the sites and
    the mode used.

    Args:
        source: a datalist JSON (entries ``{"image", "site"}``, under ``section`` or a top-level list) or a
            directory searched recursively for ``*.nii``/``*.nii.gz``.
        vocabulary: the training site vocabulary or the path of its JSON file.
        unseen_mode: ``"population"`` or ``"inferred"``. Defaults to ``"inferred"``.
        section: datalist section to read. Defaults to ``"test"``.
        site: site assigned to every scan of a folder (and to datalist entries without one). Defaults to
            :data:`UNKNOWN_SITE`.
        site_key: the site key. Defaults to ``"site"``.

    Raises:
        FileNotFoundError: if ``source`` does not exist or a folder holds no NIfTI file.
        ValueError: for an invalid ``unseen_mode`` or datalist.
    """
    if unseen_mode not in ("population", "inferred"):
        raise ValueError(f"unseen_mode must be 'population' or 'inferred', got {unseen_mode!r}.")
    if not isinstance(vocabulary, SiteVocabulary):
        vocabulary = SiteVocabulary.from_json(vocabulary)
    source = os.fspath(source)
    default_site = UNKNOWN_SITE if site is None else site
    if os.path.isdir(source):
        files = sorted({f for p in _NIFTI_PATTERNS for f in glob.glob(os.path.join(source, "**", p), recursive=True)})
        if not files:
            raise FileNotFoundError(f"no NIfTI files (*.nii, *.nii.gz) found under {source!r}.")
        items = [{"image": f, site_key: default_site} for f in files]
    elif os.path.isfile(source):
        with open(source, encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(data, list):
            base = os.path.dirname(os.path.abspath(source))
            items = [dict(e) for e in data]
            for e in items:
                if "image" in e and not os.path.isabs(e["image"]):
                    e["image"] = os.path.join(base, e["image"])
        else:
            items = load_split(source, section, required_keys=("image",))
        for i, e in enumerate(items):
            if "image" not in e:
                raise ValueError(f"datalist {source!r} entry {i} has no 'image' key (keys: {sorted(e)}).")
            e.setdefault(site_key, default_site)
    else:
        raise FileNotFoundError(f"inference input {source!r} is neither a datalist JSON nor a directory.")
    for e in items:
        e.setdefault("split", "inference")
    unseen: dict[str, int] = {}
    for e in items:
        if e[site_key] not in vocabulary:
            unseen[str(e[site_key])] = unseen.get(str(e[site_key]), 0) + 1
    if unseen:
        how = (
            "z inferred by the z-predictor (probability-weighted random effects of the training sites)"
            if unseen_mode == "inferred"
            else "z = 0 (population level: fixed effects only)"
        )
        listing = ", ".join(f"{name!r} ({n} scans)" for name, n in sorted(unseen.items()))
        logger.warning(f"sites not seen in training: {listing}; predicting them with mode {unseen_mode!r}: {how}.")
    return items
