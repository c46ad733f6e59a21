# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Random site-effect augmentation: make each training image look as if acquired on another scanner.

One draw simulates a scanner, in acquisition order: tissue contrast (gamma), point-spread blur / slice thickness
(anisotropic Gaussian), a smooth multiplicative bias field, gain and offset, and noise. Each step is one of MONAI's
own intensity transforms (:class:`~monai.transforms.RandAdjustContrast`, :class:`~monai.transforms.RandGaussianSmooth`,
:class:`~monai.transforms.RandBiasField`, :class:`~monai.transforms.RandScaleIntensity`,
:class:`~monai.transforms.RandShiftIntensity`, :class:`~monai.transforms.RandGaussianNoise`); this module only draws
them together so that all image keys of a sample (its modalities) share the same simulated scanner. The site label
is not changed: the augmentation widens the appearance of each site rather than inventing new sites.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.data.meta_obj import get_track_meta
from monai.transforms import (
    MapTransform,
    RandAdjustContrast,
    RandBiasField,
    RandGaussianNoise,
    RandGaussianSmooth,
    RandomizableTransform,
    RandScaleIntensity,
    RandShiftIntensity,
)
from monai.utils import convert_to_tensor

__all__ = ["RandSiteEffect", "RandSiteEffectd", "RandSiteEffectD", "RandSiteEffectDict"]

# the scanner steps (each a MONAI random intensity transform that takes ``randomize=False``)
_Step = (
    RandAdjustContrast
    | RandGaussianSmooth
    | RandBiasField
    | RandScaleIntensity
    | RandShiftIntensity
    | RandGaussianNoise
)


def _symmetric(value: float | Sequence[float] | None, name: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return (-abs(float(value)), abs(float(value)))
    lo, hi = (float(v) for v in value)
    if lo > hi:
        raise ValueError(f"{name} range must be (low, high) with low <= high, got {value}.")
    return lo, hi


def _interval(value: Sequence[float] | None, name: str, minimum: float = 0.0) -> tuple[float, float] | None:
    if value is None:
        return None
    lo, hi = (float(v) for v in value)
    if not minimum <= lo <= hi:
        raise ValueError(f"{name} must be (low, high) with {minimum} <= low <= high, got {value}.")
    return lo, hi


class RandSiteEffect(RandomizableTransform):
    """Apply a random simulated scanner (contrast, blur, bias field, gain/offset, noise) to a channel-first image.

    With probability ``prob`` the scanner is simulated; each of its steps then happens with probability
    ``component_prob``. Pass ``None`` for a range to switch that step off.

    Args:
        prob: probability of simulating a scanner. Defaults to 0.1.
        gamma: contrast exponent range (:class:`~monai.transforms.RandAdjustContrast`). Defaults to (0.7, 1.5).
        smooth_sigma: Gaussian blur sigma range in voxels, drawn per axis so that thick slices appear
            (:class:`~monai.transforms.RandGaussianSmooth`). Defaults to (0.0, 1.0).
        bias_coeff: bias-field coefficient range (:class:`~monai.transforms.RandBiasField`). Defaults to (0.0, 0.1).
        bias_degree: bias-field polynomial degree. Defaults to 3.
        scale: gain range as a relative change ``v * (1 + f)``; a float ``s`` means ``(-s, s)``. Defaults to 0.1.
        shift: offset range (image units); a float ``s`` means ``(-s, s)``. Defaults to 0.1.
        noise_std: maximum Gaussian noise s.d. in image units (drawn uniformly up to it). Defaults to 0.05.
        component_prob: probability of each step within a simulated scanner. Defaults to 1.0.

    Intensities are in image units, so put it after the per-site normalisation
    (:class:`~monai_medl.transforms.NormalizeBySited`) to make ``shift`` and ``noise_std`` relative.

    Example::

        >>> import torch
        >>> aug = RandSiteEffect(prob=1.0).set_random_state(0)
        >>> x = torch.rand(1, 16, 16, 16)
        >>> out = aug(x)
        >>> out.shape, torch.equal(out, x)  # the same image as if acquired on another scanner
        (torch.Size([1, 16, 16, 16]), False)
    """

    backend = RandBiasField.backend

    def __init__(
        self,
        prob: float = 0.1,
        gamma: Sequence[float] | None = (0.7, 1.5),
        smooth_sigma: Sequence[float] | None = (0.0, 1.0),
        bias_coeff: Sequence[float] | None = (0.0, 0.1),
        bias_degree: int = 3,
        scale: float | Sequence[float] | None = 0.1,
        shift: float | Sequence[float] | None = 0.1,
        noise_std: float | None = 0.05,
        component_prob: float = 1.0,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        gamma = _interval(gamma, "gamma", minimum=1e-3)
        sigma = _interval(smooth_sigma, "smooth_sigma")
        coeff = _interval(bias_coeff, "bias_coeff")
        scale = _symmetric(scale, "scale")
        shift = _symmetric(shift, "shift")
        if noise_std is not None and noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}.")
        p = float(component_prob)
        # acquisition order: contrast -> point spread -> coil sensitivity -> gain/offset -> noise
        steps: list[tuple[str, _Step]] = []
        if gamma is not None:
            steps.append(("contrast", RandAdjustContrast(prob=p, gamma=gamma)))
        if sigma is not None:
            steps.append(("smooth", RandGaussianSmooth(sigma_x=sigma, sigma_y=sigma, sigma_z=sigma, prob=p)))
        if coeff is not None:
            steps.append(("bias", RandBiasField(degree=bias_degree, coeff_range=coeff, prob=p)))
        if scale is not None:
            steps.append(("scale", RandScaleIntensity(factors=scale, prob=p)))
        if shift is not None:
            steps.append(("shift", RandShiftIntensity(offsets=shift, prob=p)))
        if noise_std is not None and noise_std > 0:
            steps.append(("noise", RandGaussianNoise(prob=p, std=float(noise_std), sample_std=True)))
        self.steps = dict(steps)
        self.set_random_state(state=self.R)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandSiteEffect:
        super().set_random_state(seed, state)
        for step in getattr(self, "steps", {}).values():
            step.set_random_state(state=self.R)  # one stream: the draws are reproducible from one seed
        return self

    def randomize(self, img: Any) -> None:
        """Draw whether to simulate a scanner and, if so, every step's parameters (``img`` gives the shape)."""
        super().randomize(None)
        if not self._do_transform:
            return
        for step in self.steps.values():
            if isinstance(step, RandBiasField):
                step.randomize(img_size=img.shape[1:])
            elif isinstance(step, RandGaussianNoise):
                step.randomize(img)
            else:
                step.randomize(None)

    def __call__(self, img: Any, randomize: bool = True) -> Any:
        """Apply the scanner drawn by :meth:`randomize` (drawn here unless ``randomize=False``)."""
        if randomize:
            self.randomize(img)
        if not self._do_transform:
            return convert_to_tensor(img, track_meta=get_track_meta())
        for step in self.steps.values():
            img = step(img, randomize=False)
        return img


class RandSiteEffectd(RandomizableTransform, MapTransform):
    """Dictionary-based version :py:class:`monai_medl.transforms.RandSiteEffect`.

    All ``keys`` of a sample (e.g. its modalities, which should have the same spatial shape) get the same
    simulated scanner; as in MONAI's :class:`~monai.transforms.RandGaussianNoised`, one noise field is drawn per
    sample. The site key is left as is.

    Args:
        keys: image keys. Defaults to ``"image"``.
        prob: probability of applying the effect to a sample. Defaults to 0.1.
        allow_missing_keys: don't raise if a key is missing (e.g. a modality not acquired at some sites).
        effect: the other arguments of :class:`RandSiteEffect` (``gamma``, ``smooth_sigma``, ``bias_coeff``,
            ``bias_degree``, ``scale``, ``shift``, ``noise_std``, ``component_prob``), by name, same defaults.

    Example::

        >>> import torch
        >>> aug = RandSiteEffectd(keys=("image", "flair"), prob=0.5).set_random_state(0)
        >>> sample = {"image": torch.rand(1, 16, 16, 16), "flair": torch.rand(1, 16, 16, 16), "site": "site_a"}
        >>> outs = [aug(sample) for _ in range(12)]
        >>> changed = [(not torch.equal(o["image"], sample["image"]), not torch.equal(o["flair"], sample["flair"]))
        ...            for o in outs]
        >>> all(a == b for a, b in changed), sum(a for a, _ in changed)  # both modalities or neither; about half
        (True, 6)
    """

    backend = RandSiteEffect.backend

    def __init__(
        self, keys: KeysCollection = "image", prob: float = 0.1, allow_missing_keys: bool = False, **effect: Any
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.effect = RandSiteEffect(prob=1.0, **effect)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandSiteEffectd:
        super().set_random_state(seed, state)
        self.effect.set_random_state(state=self.R)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        first = self.first_key(d)
        if first == ():
            return d
        if self._do_transform:
            self.effect.randomize(d[first])
        for key in self.key_iterator(d):
            if self._do_transform:
                d[key] = self.effect(d[key], randomize=False)
            else:
                d[key] = convert_to_tensor(d[key], track_meta=get_track_meta())
        return d


RandSiteEffectD = RandSiteEffectDict = RandSiteEffectd
