# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The network a federated site trains: a mixed-effects MLP with one cluster, the site itself."""

from __future__ import annotations

from collections.abc import Mapping

from monai_medl.networks.nets import MixedEffectsMLP

__all__ = ["SiteNetwork", "site_network"]


class SiteNetwork(MixedEffectsMLP):
    """``MixedEffectsMLP(num_clusters=1, **spec)``: at a site, ``z = 1`` selects the site's own random-effects row.

    One constructor argument, the ``spec`` dictionary, kept as an attribute: NVFlare writes a component's
    constructor arguments from its attributes into the job config, so the server rebuilds exactly this network.
    The prior scales are fixed within a round (the server sets them from the sites' moments), so ``spec`` may not
    ask for ``learn_prior_scale`` or ``num_clusters``.

    Example::

        >>> net = SiteNetwork({"in_features": 3, "out_channels": 1, "hidden": [4]})
        >>> net.num_clusters, net.spec["hidden"]
        (1, [4])
    """

    def __init__(self, spec: Mapping) -> None:
        spec = dict(spec)
        for key in ("num_clusters", "learn_prior_scale"):
            if key in spec:
                raise ValueError(
                    f"network spec: {key!r} is set by monai_medl.fl (one cluster per site, prior scales from the "
                    f"server); remove it from {sorted(spec)}."
                )
        if "in_features" not in spec:
            raise ValueError(
                f"network spec needs 'in_features' (the datalists' number of features), got {sorted(spec)}."
            )
        super().__init__(num_clusters=1, learn_prior_scale=False, **spec)
        self.spec = spec


def site_network(spec: Mapping) -> SiteNetwork:
    """:class:`SiteNetwork` of ``spec`` (MixedEffectsMLP arguments without ``num_clusters``)."""
    return SiteNetwork(spec)
