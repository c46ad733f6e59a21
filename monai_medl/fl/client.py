# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""The NVFlare client script of federated mixed effects (run by the recipe's ScriptRunner at every site).

Per round: receive the global model, load its shared entries and prior scales (never the random-effects rows),
subtract the mean row the server moved into the shared parameters from the site's rows, train
on the site's own datalist, keep the random effects and the site vocabulary in the site's state folder, and send
the fixed effects, the posterior moments and (with alignment) the class-conditional feature statistics.
"""

from __future__ import annotations

import argparse
import json
import zlib
from pathlib import Path

import torch

from monai_medl.fl.aggregator import NUM_SAMPLES
from monai_medl.fl.local_state import load_shared, save_local_state, shared_state
from monai_medl.fl.local_training import LocalTrainingSettings, site_feature_statistics, train_locally
from monai_medl.fl.network import site_network
from monai_medl.fl.site_datalist import SiteData, load_site_datalist
from monai_medl.fl.variance_components import SHIFT_META, posterior_moments, recentre

__all__ = ["client_parser", "outgoing_params", "site_setup", "run_site"]


def client_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="monai_medl federated mixed-effects client (one site)")
    parser.add_argument("--config", required=True, help="job config JSON: {'network': {...}, 'training': {...}}")
    parser.add_argument("--datalist", required=True, help="this site's own datalist JSON")
    parser.add_argument("--state_dir", required=True, help="this site's private folder (random effects, vocabulary)")
    return parser


def outgoing_params(network, data, settings: LocalTrainingSettings) -> dict[str, torch.Tensor]:
    """Everything a site sends after a round: shared state, posterior moments, feature statistics (alignment)."""
    params = {**shared_state(network), **posterior_moments(network)}
    if settings.align_weight > 0:
        params.update(site_feature_statistics(network, data, settings.label_classes))
    return params


def site_setup(config: dict, datalist: str, site: str) -> tuple[torch.nn.Module, SiteData]:
    """The site's network and its own data from the job config: a bundle's (``config["bundle"]``) or a tabular
    :class:`~monai_medl.fl.network.SiteNetwork` (``config["network"]``)."""
    if "bundle" in config:
        from monai_medl.fl.bundle_site import bundle_site_network, load_bundle_site

        root, overrides = config["bundle"]["bundle_root"], config["bundle"]["overrides"]
        return bundle_site_network(root, overrides), load_bundle_site(datalist, site, root, overrides)
    data = load_site_datalist(datalist, site, in_features=config["network"]["in_features"])
    return site_network(config["network"]), data


def run_site(argv: list[str] | None = None) -> None:
    """The client loop (``flare.init``, then ``receive`` / train / ``send`` until the federation stops)."""
    import nvflare.client as flare
    from nvflare.app_common.abstract.fl_model import FLModel

    args = client_parser().parse_args(argv)
    config = json.loads(Path(args.config).read_text(encoding="utf-8"))
    settings = LocalTrainingSettings(**config["training"])
    flare.init()
    site = flare.get_site_name()
    torch.set_num_threads(1)
    site_seed = settings.seed + zlib.crc32(site.encode()) % 10_000
    torch.manual_seed(site_seed)
    network, data = site_setup(config, args.datalist, site)
    state_dir = Path(args.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    while flare.is_running():
        received = flare.receive()
        if received is None:
            break
        round_ = int(received.current_round or 0)
        load_shared(network, received.params, origin=f"the global model of round {round_} received by site {site!r}")
        recentre(network, (received.meta or {}).get(SHIFT_META))  # the mean row the server moved into the bias
        torch.save(shared_state(network), state_dir / f"received_round{round_}.pt")
        federation_stats = (received.meta or {}).get("feature_statistics")
        steps = train_locally(network, data, settings, federation_stats, seed=site_seed + round_)
        save_local_state(state_dir / "local_state.pt", network, {data.site_name: 0}, round=round_, site=site)
        params = outgoing_params(network, data, settings)
        flare.send(FLModel(params=params, meta={NUM_SAMPLES: len(data.features), "NUM_STEPS_CURRENT_ROUND": steps}))


if __name__ == "__main__":
    run_site()
