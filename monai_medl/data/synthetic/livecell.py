# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Multi-batch live-cell image tiles built from scikit-image's real live-cell image, with imaging-day effects.

The only image data used is ``skimage/data/cell.png`` (a quantitative-phase image of one live cell, CC0), read from
the installed scikit-image package at run time; nothing is downloaded or committed. Each tile shows that real cell,
with its real internal texture and phase halo, on a crop of the real background of the same image, after a random
size, rotation and elongation. The **phenotype label** is a measured shape feature: 1 when the elongation
(major / minor axis of the warped cell mask, measured with ``skimage.measure.regionprops`` at tile resolution)
exceeds ``elongation_threshold``, i.e. "spread/elongated" versus "rounded". It is a morphology phenotype made by a
geometric warp of one real cell, not a biological cell state. Each imaging batch ("day") applies its own imaging
effects (gain, offset, multiplicative illumination gradient, blur, noise and a smooth background haze) and its own
phenotype prevalence, so batch and label are confounded in the training days.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi

from monai_medl.data.synthetic.generated_folder import claim_output_folder

__all__ = [
    "CELL_IMAGE_SHA256",
    "ImagingBatchEffect",
    "LiveCellData",
    "load_cell_image",
    "sample_batch_effects",
    "render_cell_tile",
    "make_livecell",
    "generate_livecell_dataset",
]

CELL_IMAGE_SHA256 = "8d23a7fb81f7cc877cd09f330357fc7f595651306e84e17252f6e0a1b3f61515"  # scikit-image 0.26
_SPLITS = ("training", "validation", "test_seen", "test_unseen")


def _cell_png_path() -> str:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the live-cell generator needs scikit-image (pip install scikit-image).")
    path = os.path.join(spec.submodule_search_locations[0], "data", "cell.png")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"scikit-image's bundled live-cell image is missing: {path}.")
    return path


def load_cell_image() -> np.ndarray:
    """Scikit-image's bundled live-cell image ``skimage/data/cell.png`` as float32 in [0, 1], shape ``(660, 550)``.

    Example::

        >>> img = load_cell_image()
        >>> img.shape, img.dtype
        ((660, 550), dtype('float32'))
    """
    from skimage.io import imread

    img = imread(_cell_png_path())
    if img.ndim != 2:
        raise ValueError(f"expected a 2D grey-level cell image, got shape {img.shape}.")
    return (img.astype(np.float32) / 255.0).astype(np.float32)


def _image_sha256() -> str:
    with open(_cell_png_path(), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@dataclass(frozen=True)
class ImagingBatchEffect:
    """Imaging effects of one batch (imaging day), applied to a clean tile in this order: blur (point-spread
    function), multiplicative illumination gradient and gain, additive offset and smooth background haze,
    Gaussian noise, clipping to [0, 1].

    Attributes:
        gain: global intensity gain.
        offset: additive intensity offset.
        gradient_amplitude: amplitude of the linear illumination ramp (``1 + a * ramp``, ramp in [-1, 1]).
        gradient_angle: direction of the ramp in radians.
        blur_sigma: Gaussian blur s.d. in pixels (0 = sharp).
        noise_sd: s.d. of additive Gaussian noise.
        background_amplitude: amplitude of a smooth random background haze fixed for the batch.
        background_seed: seed of that haze pattern.
    """

    gain: float
    offset: float
    gradient_amplitude: float
    gradient_angle: float
    blur_sigma: float
    noise_sd: float
    background_amplitude: float
    background_seed: int

    def field(self, tile_size: int) -> tuple[np.ndarray, np.ndarray]:
        """The batch's multiplicative illumination field and additive background for a square tile."""
        yy, xx = np.mgrid[0:tile_size, 0:tile_size].astype(np.float32) / max(tile_size - 1, 1) * 2 - 1
        ramp = math.cos(self.gradient_angle) * xx + math.sin(self.gradient_angle) * yy
        mult = self.gain * (1 + self.gradient_amplitude * ramp / math.sqrt(2))
        haze = np.random.default_rng(self.background_seed).standard_normal((tile_size, tile_size))
        haze = ndi.gaussian_filter(haze, sigma=tile_size / 6, mode="wrap")
        haze = haze / (np.abs(haze).max() + 1e-8)
        add = self.offset + self.background_amplitude * haze.astype(np.float32)
        return mult.astype(np.float32), add.astype(np.float32)

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Image a clean ``(H, W)`` tile in this batch (``rng`` draws the noise)."""
        out = ndi.gaussian_filter(image, self.blur_sigma) if self.blur_sigma > 0 else image.copy()
        mult, add = self.field(image.shape[-1])
        out = out * mult + add + self.noise_sd * rng.standard_normal(image.shape).astype(np.float32)
        return np.clip(out, 0.0, 1.0).astype(np.float32)


def sample_batch_effects(num_batches: int, rng: np.random.Generator, strength: float = 1.0) -> list[ImagingBatchEffect]:
    """Draw ``num_batches`` imaging effects; ``strength`` scales every deviation from a neutral acquisition."""
    effects = []
    for _ in range(num_batches):
        effects.append(
            ImagingBatchEffect(
                gain=float(1 + strength * rng.uniform(-0.35, 0.35)),
                offset=float(strength * rng.uniform(-0.12, 0.12)),
                gradient_amplitude=float(strength * rng.uniform(0.0, 0.4)),
                gradient_angle=float(rng.uniform(0, 2 * math.pi)),
                blur_sigma=float(strength * rng.uniform(0.0, 1.2)),
                noise_sd=float(0.01 + strength * rng.uniform(0.0, 0.04)),
                background_amplitude=float(strength * rng.uniform(0.0, 0.06)),
                background_seed=int(rng.integers(0, 2**31 - 1)),
            )
        )
    return effects


class _CellSource:
    """The real cell (crop, soft alpha, mask) and the real background region of ``cell.png``."""

    def __init__(self) -> None:
        from skimage import filters, measure

        img = load_cell_image()
        smooth = ndi.gaussian_filter(img, 3)
        labels = measure.label(smooth > filters.threshold_otsu(smooth))
        cell = max(measure.regionprops(labels), key=lambda p: p.area)
        cy, cx = (int(round(c)) for c in cell.centroid)
        radius = math.sqrt(cell.area / math.pi)
        half = int(round(1.6 * radius))
        box = (slice(cy - half, cy + half), slice(cx - half, cx + half))
        self.radius = radius
        self.patch = img[box]
        self.mask = ndi.binary_fill_holes(labels[box] == cell.label).astype(np.float32)
        yy, xx = np.mgrid[-half:half, -half:half]
        dist = np.sqrt(yy**2 + xx**2) / radius
        self.alpha = np.clip((1.5 - dist) / 0.35, 0, 1).astype(np.float32)  # cell + halo, soft edge
        # background: rows/cols far enough from the cell
        self.background = img[: cy - int(2.2 * radius), :]
        self.background_level = float(np.median(self.background))


def _warp(src: np.ndarray, matrix: np.ndarray, tile_size: int, order: int) -> np.ndarray:
    from skimage.transform import AffineTransform, warp

    return warp(src, AffineTransform(matrix=matrix), output_shape=(tile_size, tile_size), order=order, cval=0.0).astype(
        np.float32
    )


def render_cell_tile(
    source: _CellSource,
    tile_size: int,
    diameter: float,
    elongation: float,
    angle: float,
    shift: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Clean tile (real cell over a real background crop) and its cell mask, both ``(tile_size, tile_size)``.

    The cell is scaled to ``diameter`` pixels (area-preserving), stretched by ``elongation`` along ``angle`` and
    shifted by ``shift`` pixels from the tile centre.
    """
    from skimage.transform import resize

    # background crop, at the cell's zoom where the background region is large enough
    zoom = diameter / (2 * source.radius)
    bh, bw = source.background.shape
    crop = min(int(math.ceil(tile_size / zoom)), bh - 1, bw - 1)
    r0, c0 = int(rng.integers(0, bh - crop)), int(rng.integers(0, bw - crop))
    bg = resize(source.background[r0 : r0 + crop, c0 : c0 + crop], (tile_size, tile_size), anti_aliasing=True)
    if rng.random() < 0.5:
        bg = bg[:, ::-1]
    # output pixel -> source pixel map: inverse of (translate to tile centre) o rotate o stretch o scale
    sa, sb = math.sqrt(elongation), 1 / math.sqrt(elongation)
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    fwd = rot @ np.diag([sa, sb]) @ rot.T * zoom  # maps source offsets to output offsets (x, y order)
    inv = np.linalg.inv(fwd)
    half = source.patch.shape[0] / 2
    centre = np.array([tile_size / 2 + shift[0], tile_size / 2 + shift[1]])
    matrix = np.eye(3)
    matrix[:2, :2] = inv
    matrix[:2, 2] = np.array([half, half]) - inv @ centre
    patch = _warp(source.patch, matrix, tile_size, order=1)
    alpha = _warp(source.alpha, matrix, tile_size, order=1)
    mask = _warp(source.mask, matrix, tile_size, order=0)
    tile = alpha * patch + (1 - alpha) * bg
    return tile.astype(np.float32), (mask > 0.5).astype(np.uint8)


def _measured_elongation(mask: np.ndarray) -> float:
    from skimage.measure import regionprops

    props = regionprops(mask.astype(np.int32))
    if not props or props[0].axis_minor_length <= 0:
        return float("nan")
    return float(props[0].axis_major_length / props[0].axis_minor_length)


@dataclass
class LiveCellData:
    """In-memory live-cell set with its ground truth.

    Attributes:
        image: imaged tiles ``(n, 1, T, T)`` float32 in [0, 1].
        clean: the same tiles before the batch's imaging effects ``(n, 1, T, T)``.
        mask: cell masks ``(n, 1, T, T)`` uint8.
        label: phenotype ``(n,)`` int64 (1 = measured elongation > threshold).
        elongation: measured elongation of every tile's cell ``(n,)``.
        batch: imaging batch index ``(n,)`` int64, ``0 .. num_batches - 1``; the last ``num_unseen_batches`` are
            unseen.
        split: ``(n,)`` strings in ``("training", "validation", "test_seen", "test_unseen")``.
        effects: the imaging effect of every batch.
        prevalence: the phenotype prevalence every batch was drawn with.
        config: the generator's arguments.
    """

    image: np.ndarray
    clean: np.ndarray
    mask: np.ndarray
    label: np.ndarray
    elongation: np.ndarray
    batch: np.ndarray
    split: np.ndarray
    effects: list[ImagingBatchEffect]
    prevalence: np.ndarray
    config: dict

    @property
    def batch_names(self) -> list[str]:
        """Site names of the batches, ``"day_01"``, ``"day_02"``, ..."""
        return [f"day_{i + 1:02d}" for i in range(len(self.effects))]

    def select(self, split: str) -> np.ndarray:
        """Indices of the tiles in ``split``."""
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, got {split!r}.")
        return np.flatnonzero(self.split == split)

    def ground_truth(self) -> dict:
        """JSON-serialisable description of the generating process."""
        return {
            "source_image": "skimage/data/cell.png (scikit-image, CC0), loaded from the installed package",
            "source_sha256": _image_sha256(),
            "label_definition": (
                "1 if the measured elongation (major/minor axis of the warped real-cell mask at tile resolution, "
                f"skimage.measure.regionprops) > {self.config['elongation_threshold']}, else 0"
            ),
            "imaging_order": "blur -> gain * (1 + gradient) -> + offset + background haze -> + noise -> clip [0, 1]",
            "batches": {
                name: {
                    **asdict(e),
                    "prevalence": float(p),
                    "unseen": i >= len(self.effects) - self.config["num_unseen"],
                }
                for i, (name, e, p) in enumerate(zip(self.batch_names, self.effects, self.prevalence))
            },
            "config": self.config,
            "counts": {s: int((self.split == s).sum()) for s in _SPLITS},
        }


def make_livecell(
    num_batches: int = 8,
    num_unseen: int = 2,
    tiles_per_batch: int = 100,
    tile_size: int = 32,
    seed: int = 0,
    effect_strength: float = 1.0,
    prevalence_range: tuple[float, float] = (0.25, 0.75),
    elongation_threshold: float = 1.4,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
) -> LiveCellData:
    """Build a multi-batch live-cell tile set in memory.

    Every tile shows the real cell of ``skimage/data/cell.png`` (diameter 35-50% of the tile, random rotation and
    position jitter) on a real background crop. A target class is drawn with the batch's prevalence and the warp's
    elongation from ``[1.0, 1.5]`` (class 0) or ``[1.3, 2.2]`` (class 1); the **label is then re-measured** from the
    warped mask (see module docstring), so it reflects the tile's actual morphology. Seen batches are split into
    training/validation/test_seen tiles; the last ``num_unseen`` batches are test_unseen only.

    Args:
        num_batches: number of imaging batches (days), seen and unseen.
        num_unseen: how many of them (the last ones) are never used for training.
        tiles_per_batch: tiles per batch.
        tile_size: tile side in pixels.
        seed: seed of everything (effects, cells, noise, splits).
        effect_strength: scales the imaging effects (0 = identical acquisitions).
        prevalence_range: range of the per-batch phenotype prevalence.
        elongation_threshold: elongation above which a cell is labelled 1.
        val_fraction: fraction of each seen batch for validation.
        test_fraction: fraction of each seen batch held out as test_seen.

    Example::

        >>> data = make_livecell(num_batches=3, num_unseen=1, tiles_per_batch=10, tile_size=32)
        >>> data.image.shape, sorted(set(data.split.tolist()))
        ((30, 1, 32, 32), ['test_seen', 'test_unseen', 'training', 'validation'])
    """
    _check_arguments(num_batches, num_unseen, tiles_per_batch, tile_size)
    rng = np.random.default_rng(seed)  # one stream, drawn in this order: effects, prevalences, then tile by tile
    source = _CellSource()
    effects = sample_batch_effects(num_batches, rng, effect_strength)
    prevalence = rng.uniform(*prevalence_range, size=num_batches)
    n_seen = num_batches - num_unseen
    tiles: dict[str, list] = {k: [] for k in ("image", "clean", "mask", "label", "elongation", "batch", "split")}
    for b in range(num_batches):
        order = rng.permutation(tiles_per_batch)
        n_val, n_test = int(round(val_fraction * tiles_per_batch)), int(round(test_fraction * tiles_per_batch))
        for i in range(tiles_per_batch):
            clean, mask, e = _draw_tile(rng, source, tile_size, bool(rng.random() < prevalence[b]))
            tiles["image"].append(effects[b].apply(clean, rng))
            tiles["clean"].append(clean)
            tiles["mask"].append(mask)
            tiles["elongation"].append(e)
            tiles["label"].append(int(e > elongation_threshold))
            tiles["batch"].append(b)
            rank = int(np.flatnonzero(order == i)[0])
            split = "validation" if rank < n_val else "test_seen" if rank < n_val + n_test else "training"
            tiles["split"].append("test_unseen" if b >= n_seen else split)
    config = {
        "num_batches": num_batches,
        "num_unseen": num_unseen,
        "tiles_per_batch": tiles_per_batch,
        "tile_size": tile_size,
        "seed": seed,
        "effect_strength": effect_strength,
        "prevalence_range": list(prevalence_range),
        "elongation_threshold": elongation_threshold,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
    }
    return LiveCellData(
        image=np.stack(tiles["image"])[:, None],
        clean=np.stack(tiles["clean"])[:, None],
        mask=np.stack(tiles["mask"])[:, None],
        label=np.asarray(tiles["label"], dtype=np.int64),
        elongation=np.asarray(tiles["elongation"], dtype=np.float64),
        batch=np.asarray(tiles["batch"], dtype=np.int64),
        split=np.asarray(tiles["split"]),
        effects=effects,
        prevalence=prevalence,
        config=config,
    )


def _check_arguments(num_batches: int, num_unseen: int, tiles_per_batch: int, tile_size: int) -> None:
    if not 0 < num_unseen < num_batches:
        raise ValueError(f"need 0 < num_unseen < num_batches, got num_unseen={num_unseen}, num_batches={num_batches}.")
    if tiles_per_batch < 5 or tile_size < 16:
        raise ValueError(f"need tiles_per_batch >= 5 and tile_size >= 16, got {tiles_per_batch}, {tile_size}.")


def _draw_tile(
    rng: np.random.Generator, source: _CellSource, tile_size: int, elongated: bool
) -> tuple[np.ndarray, np.ndarray, float]:
    """One clean tile of the real cell with a drawn size, stretch, angle and shift; its mask and measured
    elongation."""
    stretch = rng.uniform(1.3, 2.2) if elongated else rng.uniform(1.0, 1.5)
    clean, mask = render_cell_tile(
        source,
        tile_size,
        diameter=float(rng.uniform(0.35, 0.5) * tile_size),
        elongation=float(stretch),
        angle=float(rng.uniform(0, math.pi)),
        shift=(float(rng.uniform(-2, 2)), float(rng.uniform(-2, 2))),
        rng=rng,
    )
    return clean, mask, _measured_elongation(mask)


def generate_livecell_dataset(out_dir: str | os.PathLike, overwrite: bool = False, **kwargs) -> dict:
    """Write a live-cell set to ``out_dir`` (once) and return its datalist.

    Files: ``images/<id>.npy`` (imaged tile, ``(1, T, T)`` float32), ``clean/<id>.npy`` (before imaging effects),
    ``datalist.json`` (MONAI datalist with sections ``training``, ``validation``, ``test_seen``, ``test_unseen``;
    every entry ``{"image", "clean", "label", "site", "elongation"}`` with paths relative to ``out_dir``) and
    ``ground_truth.json`` (batch effects, prevalences, label definition, source checksum). If ``datalist.json``
    already exists with the same generator arguments it is returned unchanged unless ``overwrite``.

    Args:
        out_dir: output folder (created if missing).
        overwrite: regenerate even if a matching set exists.
        kwargs: arguments of :func:`make_livecell`.

    Example::

        >>> import tempfile
        >>> out_dir = os.path.join(tempfile.mkdtemp(), "livecell")  # e.g. "data/livecell" in a project
        >>> datalist = generate_livecell_dataset(out_dir, tiles_per_batch=20)
        >>> sorted(datalist)
        ['test_seen', 'test_unseen', 'training', 'validation']
    """
    out_dir = os.fspath(out_dir)
    list_path = os.path.join(out_dir, "datalist.json")
    truth_path = os.path.join(out_dir, "ground_truth.json")
    if not overwrite and os.path.isfile(list_path) and os.path.isfile(truth_path):
        with open(truth_path, encoding="utf-8") as f:
            stored = json.load(f).get("config", {})
        wanted = {**stored, **{k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}}
        if stored == wanted:
            with open(list_path, encoding="utf-8") as f:
                return json.load(f)
    claim_output_folder(out_dir, "generate_livecell_dataset")
    return _write_dataset(out_dir, make_livecell(**kwargs))


def _write_dataset(out_dir: str, data: LiveCellData) -> dict:
    """The write step of :func:`generate_livecell_dataset`: tiles as ``.npy``, then the ground truth and datalist."""
    for sub in ("images", "clean"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    datalist: dict[str, list] = {s: [] for s in _SPLITS}
    names = data.batch_names
    for i in range(len(data.label)):
        name = f"{names[data.batch[i]]}_{i:05d}.npy"
        np.save(os.path.join(out_dir, "images", name), data.image[i])
        np.save(os.path.join(out_dir, "clean", name), data.clean[i])
        datalist[str(data.split[i])].append(
            {
                "image": f"images/{name}",
                "clean": f"clean/{name}",
                "label": int(data.label[i]),
                "site": names[data.batch[i]],
                "elongation": round(float(data.elongation[i]), 4),
            }
        )
    with open(os.path.join(out_dir, "ground_truth.json"), "w", encoding="utf-8") as f:
        json.dump(data.ground_truth(), f, indent=2)
    with open(os.path.join(out_dir, "datalist.json"), "w", encoding="utf-8") as f:
        json.dump(datalist, f, indent=1)
    return datalist
