# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""What a federated site keeps and what it shares: the split of a mixed-effects network's state."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from monai_medl.networks.utils import random_effects_layers, require_mean_field

__all__ = [
    "LOCAL_PARAMETERS",
    "local_keys",
    "prior_scale_keys",
    "shared_state",
    "load_shared",
    "save_local_state",
    "load_local_state",
]

LOCAL_PARAMETERS = ("loc", "rho")
"""The parameters of a random-effects layer that belong to one site: its posterior means and scales."""


def local_keys(network: nn.Module) -> list[str]:
    """State-dict keys of ``network`` that never leave a site: every random-effects layer's ``loc`` and ``rho``.

    Raises:
        ValueError: when the network has correlated/grouped random effects (their rows are not split per site here).
    """
    require_mean_field(network, "federated training (monai_medl.fl)")
    return [f"{name}.{p}" for name in random_effects_layers(network) for p in LOCAL_PARAMETERS]


def prior_scale_keys(network: nn.Module) -> dict[str, str]:
    """Random-effects layer name -> the state-dict key of its prior scale, set by the server from the moments."""
    return {name: f"{name}.log_prior_scale" for name in random_effects_layers(network)}


def shared_state(network: nn.Module) -> dict[str, torch.Tensor]:
    """The fixed-effects state a site sends for averaging: the state dict without the local and prior-scale keys.

    Example::

        >>> from monai_medl.networks.nets import MixedEffectsMLP
        >>> net = MixedEffectsMLP(3, 1, num_clusters=1, hidden=(4,))
        >>> shared = shared_state(net)
        >>> any(key.endswith((".loc", ".rho")) for key in shared)
        False
        >>> "head.linear.weight" in shared
        True
    """
    dropped = set(local_keys(network)) | set(prior_scale_keys(network).values())
    return {k: v.detach().clone() for k, v in network.state_dict().items() if k not in dropped}


def save_local_state(path: str | Path, network: nn.Module, site_vocabulary: Mapping[str, int], **extra) -> Path:
    """Write the site's random effects and site vocabulary to ``path`` atomically (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = network.state_dict()
    payload = {
        "random_effects": {k: state[k].detach().clone() for k in local_keys(network)},
        "site_vocabulary": dict(site_vocabulary),
        **extra,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_local_state(path: str | Path) -> dict:
    """Read what :func:`save_local_state` wrote (tensors only: ``weights_only`` loading)."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)


@torch.no_grad()
def load_shared(network: nn.Module, params: Mapping[str, object], origin: str = "the global model") -> list[str]:
    """Load the shared entries of ``params`` (global model from the server) into ``network``; return the keys loaded.

    Keys of the site's own random-effects rows are never taken from ``params`` (the server's checkpoint holds only
    the untouched initial placeholders for them); every other key of ``network`` must be there.

    Raises:
        KeyError: naming ``origin`` and the shared keys it lacks.
    """
    own = set(local_keys(network))
    wanted = [k for k in network.state_dict() if k not in own]
    missing = [k for k in wanted if k not in params]
    if missing:
        raise KeyError(f"{origin} lacks the shared entries {missing} of {type(network).__name__}.")
    state = {k: torch.as_tensor(params[k]).to(network.state_dict()[k].dtype) for k in wanted}
    network.load_state_dict(state, strict=False)
    return wanted
