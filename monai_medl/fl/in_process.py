# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The federation's rounds in one process: the simulator's algorithm without its transport (for studies and tests).

The same client steps (:func:`~monai_medl.fl.local_training.train_locally`,
:func:`~monai_medl.fl.client.outgoing_params`) and the same :class:`~monai_medl.fl.aggregator.MixedEffectsAggregator`
as a real job, called in a loop; use :mod:`monai_medl.fl.job` for anything that must show the data stay apart.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from monai_medl.fl.local_state import load_shared, local_keys, prior_scale_keys
from monai_medl.fl.local_training import LocalTrainingSettings, train_locally
from monai_medl.fl.network import site_network
from monai_medl.fl.site_datalist import SiteData
from monai_medl.fl.variance_components import SHIFT_META, additive_layers, recentre

__all__ = ["InProcessFederation", "federate_in_process"]


@dataclass
class InProcessFederation:
    """``networks`` (one per site, its own rows), the last ``global_params`` and ``meta``, bytes sent per round."""

    networks: list[nn.Module]
    global_params: dict[str, np.ndarray]
    meta: dict
    bytes_sent: list[dict[str, int]] = field(default_factory=list)

    def site_model(self, k: int) -> nn.Module:
        """Site ``k``'s model as it predicts after the job: the global shared state plus its own rows, moved by the
        last round's shift (eval mode; a copy)."""
        network = copy.deepcopy(self.networks[k])
        load_shared(network, self.global_params, origin="the federation's global model")
        recentre(network, self.meta.get(SHIFT_META))
        return network.eval()


def federate_in_process(
    sites: Sequence[SiteData],
    spec: Mapping | Callable[[], nn.Module],
    settings: LocalTrainingSettings,
    rounds: int,
    seed: int = 0,
    on_round: Callable[[int, InProcessFederation], None] | None = None,
    centre: bool = True,
) -> InProcessFederation:
    """Run ``rounds`` rounds over ``sites`` (each a :class:`SiteData`) and return the federation's state.

    ``spec`` is a :func:`~monai_medl.fl.network.site_network` spec or a function building a site's network (e.g.
    ``functools.partial(bundle_site_network, bundle_root, overrides)``).

    ``on_round(r, state)``, if given, is called after each round's aggregation (e.g. to score the global model).
    ``centre=False`` turns the server's centring of the additive rows off: no shift, ``s^2`` about zero (the plain EM
    of the first version, an ablation).
    """
    from nvflare.app_common.abstract.fl_model import FLModel

    from monai_medl.fl.aggregator import NUM_SAMPLES, MixedEffectsAggregator
    from monai_medl.fl.client import outgoing_params

    torch.manual_seed(seed)
    build = spec if callable(spec) else lambda: site_network(spec)
    networks = [build() for _ in sites]
    net0 = networks[0]
    aggregator = MixedEffectsAggregator(
        local_keys(net0), prior_scale_keys(net0), shift_keys=additive_layers(net0) if centre else {}
    )
    params: Mapping[str, Any] = build().state_dict()
    meta: dict = {}
    sent_bytes = []
    for r in range(rounds):
        aggregator.reset_stats()
        for k, (net, data) in enumerate(zip(networks, sites)):
            load_shared(net, params, origin=f"round {r}")
            recentre(net, meta.get(SHIFT_META))
            train_locally(net, data, settings, meta.get("feature_statistics"), seed=seed + 1000 * r + k)
            sent = {key: v.numpy() for key, v in outgoing_params(net, data, settings).items()}
            aggregator.accept_model(
                FLModel(params=sent, meta={NUM_SAMPLES: len(data.labels), "client_name": data.site})
            )
        sent_bytes.append(dict(aggregator.bytes_received))
        result = aggregator.aggregate_model()
        params, meta = result.params, result.meta or {}
        if on_round is not None:
            on_round(r, InProcessFederation(networks, dict(params), meta, sent_bytes))
    return InProcessFederation(networks, dict(params), meta, sent_bytes)
