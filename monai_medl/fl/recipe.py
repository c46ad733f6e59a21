# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""An NVFlare ``FedAvgRecipe`` for federated mixed effects: one client runner per site, each given its own datalist."""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai_medl.fl.local_state import local_keys, prior_scale_keys
from monai_medl.fl.local_training import LocalTrainingSettings
from monai_medl.fl.network import site_network
from monai_medl.fl.site_datalist import SiteDataError, load_site_datalist
from monai_medl.fl.variance_components import additive_layers

__all__ = ["FederatedJobPaths", "check_site_datalists", "federated_me_recipe"]

CLIENT_SCRIPT = Path(__file__).with_name("client.py")


@dataclass
class FederatedJobPaths:
    """Where a job writes: ``config`` (network and training settings), ``sites/<site>`` (each site's private state),
    ``server`` (the aggregator's audit trail: what every site sent, per round) and ``simulator`` (NVFlare's
    workspace, with the global model checkpoint)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    def site(self, site: str) -> Path:
        return self.root / "sites" / site

    @property
    def server(self) -> Path:
        return self.root / "server"

    @property
    def simulator(self) -> Path:
        return self.root / "simulator"


def check_site_datalists(
    site_datalists: Mapping[str, str | Path], in_features: int | None = None, bundle_parser=None
) -> dict[str, str]:
    """Read every site's datalist before anything is written; return site -> its site name (the vocabulary entry).

    Tabular datalists are checked for ``in_features``; with ``bundle_parser`` (a bundle's parsed config, see
    :func:`~monai_medl.fl.bundle_site.bundle_parser`) image datalists are validated with the bundle's
    ``datalist_spec`` (headers only: the site reads every voxel when it starts).
    Only the simulation can do this (one machine holds every datalist); in a real deployment each site's client
    checks its own file at start. Raises :class:`SiteDataError` naming the site and the file.
    """
    if bundle_parser is not None:
        from monai_medl.fl.bundle_site import bundle_site_entries

        names = {site: bundle_site_entries(path, site, bundle_parser)[1] for site, path in site_datalists.items()}
    else:
        names = {site: load_site_datalist(path, site, in_features).site_name for site, path in site_datalists.items()}
    seen: dict[str, str] = {}
    for site, name in names.items():
        if name in seen:
            raise SiteDataError(
                f"site {site!r}: datalist {str(site_datalists[site])!r} holds site name {name!r}, which site "
                f"{seen[name]!r}'s datalist {str(site_datalists[seen[name]])!r} already holds."
            )
        seen[name] = site
    return names


def federated_me_recipe(
    site_datalists: Mapping[str, str | Path],
    network: Mapping | None,
    out_dir: str | Path,
    training: LocalTrainingSettings | None = None,
    num_rounds: int = 2,
    name: str = "monai_medl_fedme",
    bundle_root: str | Path | None = None,
    bundle_overrides: Mapping[str, Any] | None = None,
):
    """A ``FedAvgRecipe`` (``nvflare.app_opt.pt.recipes.fedavg``) running :mod:`monai_medl.fl.client` at each site.

    Each site's runner gets its own ``--datalist`` and private ``--state_dir`` (per-site config), the server a
    :class:`~monai_medl.fl.aggregator.MixedEffectsAggregator`. Run it with ``recipe.execute(SimEnv(clients=...))``.

    Args:
        site_datalists: site (NVFlare client name) -> its datalist JSON.
        network: :func:`~monai_medl.fl.network.site_network` spec (MixedEffectsMLP arguments); None with
            ``bundle_root``.
        out_dir: the job's folder (see :class:`FederatedJobPaths`).
        training: the sites' :class:`~monai_medl.fl.local_training.LocalTrainingSettings`.
        num_rounds: federated rounds.
        name: job name.
        bundle_root: a bundle folder: the sites train its ``network_def`` on image datalists in its format
            (:mod:`monai_medl.fl.bundle_site`); ``training.task`` must be the bundle loss's task.
        bundle_overrides: config ids of the bundle's ``train.json`` to replace (e.g. ``{"spatial_size": [16, 16,
            16]}``).

    Returns:
        ``(recipe, paths)``.
    """
    from nvflare.app_opt.pt.recipes.fedavg import FedAvgRecipe
    from nvflare.recipe.utils import set_per_site_config

    from monai_medl.fl.aggregator import MixedEffectsAggregator

    if len(site_datalists) < 2:
        raise ValueError(f"a federation needs at least 2 sites, got {list(site_datalists)}.")
    if num_rounds < 1:
        raise ValueError(f"num_rounds must be >= 1, got {num_rounds}.")
    training = training or LocalTrainingSettings()
    model, recipe_model, site_config = _site_model(site_datalists, network, training, bundle_root, bundle_overrides)
    paths = FederatedJobPaths(Path(out_dir).resolve())
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.config.write_text(json.dumps({**site_config, "training": training.to_dict()}, indent=1))
    aggregator = MixedEffectsAggregator(
        local_keys(model), prior_scale_keys(model), record_dir=str(paths.server), shift_keys=additive_layers(model)
    )
    recipe = FedAvgRecipe(
        name=name,
        model=recipe_model,
        min_clients=len(site_datalists),
        num_rounds=num_rounds,
        train_script=str(CLIENT_SCRIPT),
        aggregator=aggregator,
    )
    per_site = {}
    for site, datalist in site_datalists.items():
        args = ["--config", str(paths.config), "--datalist", str(Path(datalist).resolve())]
        per_site[site] = {"train_args": shlex.join(args + ["--state_dir", str(paths.site(site))])}
    set_per_site_config(recipe, per_site)
    return recipe, paths


def _site_model(site_datalists, network, training: LocalTrainingSettings, bundle_root, bundle_overrides):
    """The site model, what the recipe is given to rebuild it on the server, and the sites' config entry; every
    site's datalist is checked first."""
    if bundle_root is None:
        if network is None:
            raise ValueError("federated_me_recipe needs a network spec or a bundle_root.")
        if training.task == "gaussian_nll" and not network.get("learn_noise_scale"):
            raise ValueError(
                "task 'gaussian_nll' needs the network spec to set learn_noise_scale=true (the noise s.d.)."
            )
        model = site_network(network)
        check_site_datalists(site_datalists, int(network["in_features"]))
        return model, model, {"network": dict(network)}
    from monai_medl.fl.bundle_site import bundle_model_config, bundle_parser, bundle_site_network

    if network is not None:
        raise ValueError("give either a network spec or a bundle_root, not both.")
    parser = bundle_parser(bundle_root, bundle_overrides)
    task = parser.get_parsed_content("loss#task", instantiate=False)
    if training.task != task:
        raise ValueError(f"bundle {str(bundle_root)!r} trains with loss task {task!r}: set training task={task!r}.")
    check_site_datalists(site_datalists, bundle_parser=parser)
    recipe_model = bundle_model_config(str(bundle_root), bundle_overrides)
    return bundle_site_network(**recipe_model["args"]), recipe_model, {"bundle": recipe_model["args"]}
