# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""One object holding a mixed-effects network's random-effects hyper-parameters (the single source of defaults)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Union

from monai_medl.networks.layers.random_effects import RandomEffects

__all__ = [
    "RandomEffectsSettings",
    "resolve_random_effects",
    "HEAD_KEYWORDS",
    "IMAGE_HEAD_KEYWORDS",
    "MLP_KEYWORDS",
    "UNET_KEYWORDS",
]


@dataclasses.dataclass(frozen=True)
class RandomEffectsSettings:
    """Random-effects hyper-parameters shared by :class:`~monai_medl.networks.nets.MixedEffectsMLP`,
    :class:`~monai_medl.networks.nets.MixedEffectsCNN`, :class:`~monai_medl.networks.blocks.MixedEffectsHead` and
    :class:`~monai_medl.networks.nets.MixedEffectsUNet`.

    The networks take it as ``random_effects=`` (the object or a plain dictionary, so a bundle's JSON config can
    write it inline); their individual keyword arguments (``slope_prior_scale=...``) still work and override the
    matching field. The defaults below are the only ones: a network keyword left at None takes the field's value.

    Args:
        random_slopes: random slopes on the penultimate features ``h`` (``h * (1 + u_s(z))``; for
            ``MixedEffectsMLP`` this is ``nonlinear_slopes``). Defaults to True.
        linear_slopes: random slopes on the inputs (``MixedEffectsMLP`` only; other networks have no input slopes
            and ignore it). Defaults to True.
        random_intercept: a random intercept per output. Defaults to True.
        slope_prior_scale: prior s.d. of the random slopes. Defaults to 0.1.
        intercept_prior_scale: prior s.d. of the random intercept. Defaults to 0.1.
        cluster_prior_scale: prior s.d. of the cluster scale/bias effects on feature maps (image networks).
            Defaults to 0.25.
        learn_prior_scale: learn every prior s.d. (variance components; use ``kl_weight="elbo"`` in the loss).
            Defaults to False.
        post_loc_init_scale: s.d. of the initial posterior means. Defaults to 0.1.
        correlated: each grouping factor's random intercept and input slopes get a joint Gaussian posterior and a
            learned prior covariance (lme4's ``(x | g)``, via
            :class:`~monai_medl.networks.layers.GroupedRandomEffects`); else independent terms. Used by
            ``MixedEffectsMLP`` (its intercept and input slopes); the feature-map and feature-vector slopes of the
            image networks are always independent. Defaults to False.

    Example::

        >>> settings = RandomEffectsSettings(intercept_prior_scale=0.5, learn_prior_scale=True)
        >>> settings.replace(random_slopes=False).random_slopes
        False
        >>> RandomEffectsSettings.from_any({"slope_prior_scale": 0.2}).slope_prior_scale
        0.2
        >>> RandomEffectsSettings(slope_prior_scale=-1.0)
        Traceback (most recent call last):
        ...
        ValueError: RandomEffectsSettings.slope_prior_scale must be a positive number, got -1.0.
    """

    random_slopes: bool = True
    linear_slopes: bool = True
    random_intercept: bool = True
    slope_prior_scale: float = 0.1
    intercept_prior_scale: float = 0.1
    cluster_prior_scale: float = 0.25
    learn_prior_scale: bool = False
    post_loc_init_scale: float = 0.1
    correlated: bool = False

    _POSITIVE = ("slope_prior_scale", "intercept_prior_scale", "cluster_prior_scale")
    _NON_NEGATIVE = ("post_loc_init_scale",)

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type in ("bool", bool):
                if not isinstance(value, bool):
                    raise TypeError(f"RandomEffectsSettings.{field.name} must be True or False, got {value!r}.")
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise TypeError(f"RandomEffectsSettings.{field.name} must be a number, got {value!r}.")
            if field.name in self._POSITIVE and not value > 0:
                raise ValueError(f"RandomEffectsSettings.{field.name} must be a positive number, got {value!r}.")
            if field.name in self._NON_NEGATIVE and value < 0:
                raise ValueError(f"RandomEffectsSettings.{field.name} must be >= 0, got {value!r}.")
            object.__setattr__(self, field.name, float(value))

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of the settings, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_any(cls, value: RandomEffectsSettings | Mapping[str, Any] | None) -> RandomEffectsSettings:
        """The settings object for ``value``: itself, one built from a dictionary, or the defaults for None."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            unknown = sorted(set(map(str, value)) - set(cls.field_names()))
            if unknown:
                raise ValueError(
                    f"random_effects has unknown key(s) {unknown}; expected keys among {list(cls.field_names())}."
                )
            return cls(**dict(value))
        raise TypeError(
            f"random_effects must be a RandomEffectsSettings, a dictionary or None, got {type(value).__name__}."
        )

    def replace(self, **changes: Any) -> RandomEffectsSettings:
        """A copy with ``changes`` applied (validated like a new object)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dictionary (JSON-serialisable)."""
        return dataclasses.asdict(self)

    def effects(self, num_clusters: int, units: int, prior_scale: float) -> RandomEffects:
        """A :class:`~monai_medl.networks.layers.RandomEffects` layer of ``units`` effects per cluster with prior s.d.
        ``prior_scale`` (``slope_prior_scale`` or ``intercept_prior_scale``, whichever term it is) and these
        settings' ``learn_prior_scale`` and ``post_loc_init_scale``.

        Example::

            >>> layer = RandomEffectsSettings(learn_prior_scale=True).effects(4, units=3, prior_scale=0.2)
            >>> layer.num_clusters, layer.units, layer.learn_prior_scale
            (4, 3, True)
        """
        return RandomEffects(
            num_clusters,
            units=units,
            prior_scale=prior_scale,
            learn_prior_scale=self.learn_prior_scale,
            post_loc_init_scale=self.post_loc_init_scale,
        )


# the individual random-effects keyword arguments each network takes (``**random_effects_kwargs``)
HEAD_KEYWORDS = (
    "random_slopes",
    "random_intercept",
    "slope_prior_scale",
    "intercept_prior_scale",
    "learn_prior_scale",
    "post_loc_init_scale",
)
"""MixedEffectsHead: slopes on the feature vector and an intercept."""
IMAGE_HEAD_KEYWORDS = (*HEAD_KEYWORDS, "cluster_prior_scale")
"""MixedEffectsCNN and the multimodal networks: the head's, plus the cluster scale/bias prior."""
MLP_KEYWORDS = ("linear_slopes", "nonlinear_slopes", *HEAD_KEYWORDS[1:])
"""MixedEffectsMLP: input slopes, ``nonlinear_slopes`` (its name for ``random_slopes``) and the rest of the head's."""
UNET_KEYWORDS = (
    "random_intercept",
    "intercept_prior_scale",
    "cluster_prior_scale",
    "learn_prior_scale",
    "post_loc_init_scale",
)
"""MixedEffectsUNet: no feature-vector slopes (its slopes are the cluster scale/bias blocks)."""

RandomEffectsLike = Union[RandomEffectsSettings, Mapping[str, Any], None]  # noqa: UP007


def resolve_random_effects(
    random_effects: RandomEffectsLike,
    base: RandomEffectsSettings | None = None,
    *,
    network: str = "the network",
    accepts: Sequence[str] | None = None,
    aliases: Mapping[str, str] | None = None,
    unsupported: Mapping[str, str] | None = None,
    **keywords: Any,
) -> RandomEffectsSettings:
    """The one way a network turns its ``random_effects`` argument and individual keywords into settings.

    Every mixed-effects network takes ``random_effects=`` (a :class:`RandomEffectsSettings`, its dictionary or None)
    plus the individual settings as keyword arguments (``slope_prior_scale=0.2``; collected with ``**kwargs``),
    and forwards both here. Keywords that are None were not given and take the settings' value; a keyword given
    together with a ``random_effects`` object that already sets it is ambiguous and raises.

    Args:
        random_effects: the network's ``random_effects`` argument (object, dictionary or None).
        base: the network's default settings when ``random_effects`` is None (e.g. a larger intercept prior for
            segmentation). Defaults to ``RandomEffectsSettings()``.
        network: the network's name, for error messages.
        accepts: the keyword names the network takes, as it spells them; None for every field name.
        aliases: the network's own name for a field, e.g. ``{"nonlinear_slopes": "random_slopes"}``.
        unsupported: fields the network cannot turn on, mapped to the reason; a True value raises.
        keywords: the network's individual keyword arguments (None: not given).

    Raises:
        TypeError: for a keyword the network does not take (as Python does for an unexpected argument).
        ValueError: for a keyword set twice, or an unsupported field turned on.

    Example::

        >>> resolve_random_effects({"slope_prior_scale": 0.2}, intercept_prior_scale=0.5).intercept_prior_scale
        0.5
        >>> resolve_random_effects(None, network="MixedEffectsMLP", accepts=["nonlinear_slopes"],
        ...                        aliases={"nonlinear_slopes": "random_slopes"}, nonlinear_slopes=False).random_slopes
        False
    """
    aliases = dict(aliases or {})
    names = list(RandomEffectsSettings.field_names() if accepts is None else accepts)
    unknown = [k for k in keywords if k not in names]
    if unknown:
        raise TypeError(
            f"{network} got unexpected keyword argument(s) {unknown}; its random-effects keywords are {names} "
            "(or random_effects=RandomEffectsSettings(...))."
        )
    given = {aliases.get(k, k): v for k, v in keywords.items() if v is not None}
    if random_effects is None:
        settings = base or RandomEffectsSettings()
    else:
        settings = RandomEffectsSettings.from_any(random_effects)
        explicit = (
            set(random_effects) if isinstance(random_effects, Mapping) else set(RandomEffectsSettings.field_names())
        )
        clash = sorted(set(given) & explicit)
        if clash:
            raise ValueError(
                f"{clash} given both as keyword argument(s) and in random_effects; set each in one place only."
            )
    settings = settings.replace(**given) if given else settings
    for name, reason in (unsupported or {}).items():
        if getattr(settings, name):
            raise ValueError(
                f"random_effects.{name}=True is not available in {network} ({reason}); expected {name}=False."
            )
    return settings
