# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Datalists of a site-aware bundle: generate the embedded cohort on first run, fit site preprocessing on the
training split only, and build inference datalists (a datalist or a folder of NIfTI files) with unseen-site
warnings."""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch.distributed as dist
from monai.utils import ensure_tuple

from monai_medl.bundle.artifacts import file_sha256
from monai_medl.bundle.input_profile import compare_to_profile, summarize_images
from monai_medl.bundle.inputs import BundleInputError, load_bundle_inputs, read_datalist_json
from monai_medl.bundle.locks import ModelsLock
from monai_medl.data.datalist import image_paths, resolve_entry, validate_datalist
from monai_medl.data.datalist_spec import DatalistSpec
from monai_medl.data.image_survey import read_image_infos
from monai_medl.transforms.site import SiteVocabulary
from monai_medl.transforms.site_intensity import SiteIntensityStats

__all__ = [
    "SiteData",
    "prepare_site_data",
    "fit_intensity_stats",
    "InferenceInputs",
    "inference_inputs",
    "UNKNOWN_SITE",
]

UNKNOWN_SITE = "unknown"
"""Site name given to scans whose site is not known (e.g. a plain folder of NIfTI files); never a training site."""

logger = logging.getLogger(__name__)


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class SiteData:
    """The validated splits of a site-aware bundle and the site vocabulary fitted on its training split.

    Built by :func:`prepare_site_data`; referenced in bundle configs as ``"$@site_data.training"`` etc.

    Attributes:
        training, validation, test: datalist entries (each with a ``split`` tag); ``test`` may be empty.
        vocabulary: the :class:`~monai_medl.transforms.SiteVocabulary` of the training sites.
        vocabulary_file: where the vocabulary is stored (JSON).
        datalist_file: the datalist the splits come from.
        profile: geometry and intensity ranges of the training images (:func:`summarize_images`), for the manifest.
    """

    def __init__(
        self,
        training: list[dict],
        validation: list[dict],
        test: list[dict],
        vocabulary: SiteVocabulary,
        vocabulary_file: str,
        datalist_file: str = "",
        profile: dict | None = None,
    ) -> None:
        self.training = training
        self.validation = validation
        self.test = test
        self.vocabulary = vocabulary
        self.vocabulary_file = vocabulary_file
        self.datalist_file = datalist_file
        self.profile = profile or {}

    @property
    def num_sites(self) -> int:
        """Number of training sites (width of the design vector ``z``)."""
        return self.vocabulary.num_sites

    @property
    def evaluation(self) -> list[dict]:
        """Training then test entries: the training scans choose thresholds, the test scans are reported."""
        return self.training + self.test

    def manifest_record(self, seed: int | None = None, **extra: Any) -> dict[str, Any]:
        """What a run's manifest records about its data: sites, datalist hash, split sizes, image profile."""
        return {
            "sites": list(self.vocabulary.sites),
            "num_sites": self.num_sites,
            "seed": seed,
            "datalist": {"path": os.path.abspath(self.datalist_file), "sha256": file_sha256(self.datalist_file)},
            "split_sizes": {"training": len(self.training), "validation": len(self.validation), "test": len(self.test)},
            "input_profile": self.profile,
            **extra,
        }

    def __repr__(self) -> str:
        return (
            f"SiteData(training={len(self.training)}, validation={len(self.validation)}, test={len(self.test)}, "
            f"sites={list(self.vocabulary.sites)})"
        )


def _generate(datalist_file: str, generate: Callable[[], Any] | None, training_key: str, validation_key: str) -> None:
    """Create a missing datalist with ``generate()``, under an exclusive lock beside its folder, so that runs
    started together generate it once (the others wait, then find it)."""
    if generate is None:
        raise FileNotFoundError(
            f"datalist {datalist_file!r} does not exist; point 'datalist' at a MONAI datalist JSON with "
            f"{training_key!r}/{validation_key!r} sections of {{'image', 'label', 'site'}} entries, or "
            f"enable cohort generation."
        )
    folder = os.path.dirname(os.path.abspath(datalist_file))
    with ModelsLock(folder).exclusive():
        if os.path.isfile(datalist_file):
            return  # another run generated it while this one waited
        logger.info(f"datalist {datalist_file!r} not found: generating the cohort (first run)")
        generate()
    if not os.path.isfile(datalist_file):
        raise FileNotFoundError(f"cohort generation did not create the datalist {datalist_file!r}.")


def prepare_site_data(
    datalist_file: str | os.PathLike,
    vocabulary_file: str | os.PathLike,
    spec: DatalistSpec | None = None,
    fit: bool = True,
    generate: Callable[[], Any] | None = None,
    fitters: Sequence[Callable[[list[dict]], Any]] = (),
    validation_key: str = "validation",
    test_key: str | None = "test",
    workers: int | None = None,
    validation_cache: str | os.PathLike | None = None,
) -> SiteData:
    """Load (and on first run generate) a site-aware datalist, validate all of it, then fit or load the vocabulary.

    1. If ``datalist_file`` does not exist, ``generate()`` is called to create it (e.g. the embedded synthetic
       cohort; generators write only into an empty folder or one they made, never into a user's data); without
       ``generate`` a missing file is an error.
    2. Every section is validated by :func:`~monai_medl.bundle.load_bundle_inputs` *before anything is written*:
       all problems are reported together in one :class:`~monai_medl.bundle.BundleInputError`.
    3. With ``fit=True`` (training) the :class:`~monai_medl.transforms.SiteVocabulary` is fitted on the
       training section only and written to ``vocabulary_file`` (in the run's own folder), and every
       ``fitter(training)`` is called to fit and write other training-only preprocessing state (e.g.
       :func:`fit_intensity_stats`). With ``fit=False`` (evaluation) the stored vocabulary is read instead.

    Under ``torch.distributed`` only rank 0 generates and writes; the other ranks wait for it.

    Args:
        datalist_file: MONAI datalist JSON with ``training``/``validation`` (and optional ``test``) sections of
            ``{"image", "label", "site"}`` entries.
        vocabulary_file: JSON file of the site vocabulary (written when ``fit``, read otherwise).
        fit: fit on the training section (True) or load the stored state (False). Defaults to True.
        generate: zero-argument callable creating ``datalist_file`` when it is missing. Defaults to None.
        fitters: callables ``fn(training_entries)`` run when ``fit`` (on rank 0); each writes its own file.
        spec: what the datalist must hold (:class:`~monai_medl.data.DatalistSpec`: image keys, classes,
            geometry, site/label keys, voxel check, minimum training sites, training section); built once in the
            bundle config. None: ``DatalistSpec(num_classes=2, in_channels=1, min_training_sites=2)``. The minimum
            number of training sites applies when ``fit`` only.
        validation_key, test_key: datalist sections (``test_key`` None or absent: no test split).
        workers: processes reading the scans during validation (None: every core).
        validation_cache: an :class:`~monai_medl.data.image_survey.ImageInfoCache` file: scans unchanged since an
            earlier validation are not read again. None: no cache.

    Raises:
        FileNotFoundError: naming the missing datalist or vocabulary file and how to provide it.
        BundleInputError: listing every invalid section, entry, file and key.

    Example (bundle config)::

        "site_data": {"_target_": "monai_medl.bundle.prepare_site_data", "datalist_file": "@datalist",
                      "vocabulary_file": "@site_vocabulary_file", "generate": "@cohort"}
    """
    spec = spec if spec is not None else DatalistSpec(num_classes=2, in_channels=1, min_training_sites=2)
    training_key, site_key = spec.training_key, spec.site_key or "site"
    datalist_file, vocabulary_file = os.fspath(datalist_file), os.fspath(vocabulary_file)
    if _rank() == 0 and not os.path.isfile(datalist_file):
        _generate(datalist_file, generate, training_key, validation_key)
    _barrier()
    sections = {training_key: True, validation_key: True}
    if test_key:
        sections[test_key] = False
    inputs = load_bundle_inputs(
        datalist_file,
        spec if fit else spec.replace(min_training_sites=0),
        sections=sections,
        labelled=(training_key, validation_key) if spec.label_key else (),
        workers=workers,
        cache=validation_cache,
    )
    tags = {training_key: "train", validation_key: "validation", test_key: "test"}
    for name, entries in inputs.sections.items():
        for e in entries:
            e["split"] = tags[name]
    training = inputs.sections[training_key]
    validation = inputs.sections[validation_key]
    test = inputs.sections.get(test_key, []) if test_key else []
    profile = {key: summarize_images(inputs.infos(training_key, key)) for key in spec.image_keys}
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
        f"{len(training)} training / {len(validation)} validation / {len(test)} test scans (all validated); "
        f"{vocabulary.num_sites} training sites {list(vocabulary.sites)}; unseen sites in validation/test: {unseen}"
    )
    return SiteData(training, validation, test, vocabulary, vocabulary_file, datalist_file, profile)


def fit_intensity_stats(
    training: Sequence[dict],
    path: str | os.PathLike,
    keys: str | Sequence[str] = "image",
    transform: Callable[[Mapping], Mapping] | None = None,
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


class InferenceInputs:
    """The scans an inference run predicts, and the ones it cannot (each with the reason).

    Attributes:
        entries: valid entries, ready for a MONAI ``Dataset`` (``input_warning`` holds per-scan warnings).
        errors: one row per invalid entry (``image``, ``site``, ``split``, ``error``), written into the predictions
            file by :func:`~monai_medl.bundle.write_predictions`.
    """

    def __init__(self, entries: list[dict[str, Any]], errors: list[dict[str, Any]]) -> None:
        self.entries = entries
        self.errors = errors

    def __repr__(self) -> str:
        return f"InferenceInputs({len(self.entries)} scans to predict, {len(self.errors)} invalid)"


def inference_inputs(
    source: str | os.PathLike,
    vocabulary: SiteVocabulary | str | os.PathLike,
    spec: DatalistSpec | None = None,
    unseen_mode: str = "inferred",
    section: str | Sequence[str] = "test",
    site: str | None = None,
    profile: Mapping[str, Any] | None = None,
    workers: int | None = None,
    validation_cache: str | os.PathLike | None = None,
) -> InferenceInputs:
    """Scans to predict from a datalist JSON or a folder of NIfTI files, validated one by one.

    Each entry is validated like training data (readable image of the expected dimensionality and channel count,
    finite voxels, image keys exactly the network's, modalities on one grid, a site). An invalid entry does not
    stop the run: it becomes an error row (file and reason) and the others are predicted. Each valid scan is
    compared with the training images' ``profile`` (from the model's manifest): a scan far outside it (spacing,
    field of view, orientation, intensity range) gets a per-scan warning, logged and kept in its row.

    A seen site is predicted with its own random effects (mixed model, one-hot ``z``). Scans from sites not in
    the training vocabulary, and scans without a site (a plain folder), get ``unseen_mode``: ``"population"``
    (``z = 0``: fixed effects only) or ``"inferred"`` (``z`` from the z-predictor); a warning names the sites and
    the mode used.

    Args:
        source: a datalist JSON (entries ``{"image", "site"}``, under ``section`` or a top-level list) or a
            directory searched recursively for ``*.nii``/``*.nii.gz``.
        vocabulary: the training site vocabulary or the path of its JSON file.
        spec: the network's image keys, geometry, channels and site key (:class:`~monai_medl.data.DatalistSpec`;
            labels are not required); None: ``DatalistSpec(in_channels=1)``.
        unseen_mode: ``"population"`` or ``"inferred"``. Defaults to ``"inferred"``.
        section: datalist section(s) to read, in order. Defaults to ``"test"``.
        site: site assigned to every scan of a folder (and to datalist entries without one). Defaults to
            :data:`UNKNOWN_SITE`.
        profile: image key -> training profile (the manifest's ``input_profile``); None skips the comparison.
        workers: processes reading the scans (None: every core); each scan is read once.
        validation_cache: an :class:`~monai_medl.data.image_survey.ImageInfoCache` file (None: no cache).

    Raises:
        FileNotFoundError: if ``source`` does not exist or a folder holds no NIfTI file.
        BundleInputError: the datalist is not valid JSON or has no ``section``.
        ValueError: for an invalid ``unseen_mode``.

    Example (bundle config)::

        "inputs": {"_target_": "monai_medl.bundle.inference_inputs", "source": "@input",
                   "vocabulary": "@site_vocabulary", "profile": "@manifest['input_profile']"}
    """
    if unseen_mode not in ("population", "inferred"):
        raise ValueError(f"unseen_mode must be 'population' or 'inferred', got {unseen_mode!r}.")
    if not isinstance(vocabulary, SiteVocabulary):
        vocabulary = SiteVocabulary.from_json(vocabulary)
    spec = spec if spec is not None else DatalistSpec(in_channels=1)
    image_keys, site_key = spec.image_keys, spec.site_key or "site"
    source = os.fspath(source)
    items = _inference_items(source, section, image_keys, site_key, UNKNOWN_SITE if site is None else site)
    entries, errors = [], []
    read = read_image_infos(
        image_paths(items, image_keys), spec.spatial_dims or 3, spec.check_voxels, workers, validation_cache
    )
    for i, e in enumerate(items):
        infos: dict[tuple[int, str], Any] = {}
        problems = validate_datalist([e], spec, labelled=False, image_infos=infos, cache=read)
        first = e.get(image_keys[0]) if isinstance(e, Mapping) else None
        if problems:
            reason = "; ".join(p.split(": ", 1)[-1] for p in problems)
            logger.error(f"{source} entry {i}: cannot predict it: {reason}")
            errors.append(
                {
                    "split": "inference",
                    "image": str(first or ""),
                    "site": str(e.get(site_key, "")) if isinstance(e, Mapping) else "",
                    "error": reason,
                }
            )
            continue
        warnings = [w for (_, key), info in infos.items() for w in compare_to_profile(info, (profile or {}).get(key))]
        if warnings:
            logger.warning(f"{first}: far from the training images: {'; '.join(warnings)}")
        e.setdefault("split", "inference")
        e["input_warning"] = "; ".join(warnings)
        entries.append(e)
    _warn_unseen_sites(entries, vocabulary, site_key, unseen_mode)
    return InferenceInputs(entries, errors)


def _inference_items(
    source: str, section: str | Sequence[str], image_keys: Sequence[str], site_key: str, default_site: str
) -> list[Any]:
    """The entries of a folder of NIfTI files or of a datalist's ``section``(s), each with a site (``default_site``
    where it has none); image paths resolved against the datalist's folder."""
    if os.path.isdir(source):
        files = sorted({f for p in _NIFTI_PATTERNS for f in glob.glob(os.path.join(source, "**", p), recursive=True)})
        if not files:
            raise FileNotFoundError(f"no NIfTI files (*.nii, *.nii.gz) found under {source!r}.")
        items: list[Any] = [{image_keys[0]: f, site_key: default_site} for f in files]
    elif os.path.isfile(source):
        content = read_datalist_json(source)
        data: list[Any] = content if isinstance(content, list) else []
        for name in ensure_tuple(section) if isinstance(content, Mapping) else ():
            if name not in content:
                raise BundleInputError(source, [f"no section {name!r} (sections found: {sorted(content)})"])
            if not isinstance(content[name], list):
                raise BundleInputError(
                    source, [f"section {name!r} should be a list, got {type(content[name]).__name__}"]
                )
            data += content[name]
        if not isinstance(content, list | Mapping):
            raise BundleInputError(source, [f"expected sections or a list of entries, got {type(content).__name__}"])
        base = os.path.dirname(os.path.abspath(source))
        items = [resolve_entry(e, base, image_keys) for e in data]
        for e in items:
            if isinstance(e, dict):
                e.setdefault(site_key, default_site)
    else:
        raise FileNotFoundError(f"inference input {source!r} is neither a datalist JSON nor a directory.")
    return items


def _warn_unseen_sites(
    entries: Sequence[Mapping[str, Any]], vocabulary: SiteVocabulary, site_key: str, unseen_mode: str
) -> None:
    """One warning naming the sites not seen in training (and their scan counts) and how they are predicted."""
    unseen: dict[str, int] = {}
    for e in entries:
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
