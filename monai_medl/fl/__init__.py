# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Federated mixed effects on NVIDIA FLARE (``pip install monai-medl[fl]``).

The fixed effects are averaged (FedAvg), each site's random-effects rows and site-vocabulary entry stay at the site,
the variance components come from the sites' posterior moments and invariance from shared class-conditional
feature statistics. The modules importing ``nvflare`` (:mod:`.aggregator`, :mod:`.client`, :mod:`.recipe`'s
:func:`federated_me_recipe`, :mod:`.job`) do so where they need it, so this package imports without it.
"""

from .bundle_site import bundle_model_config, bundle_parser, bundle_site_entries, bundle_site_network, load_bundle_site
from .feature_statistics import FederatedAlignmentLoss, class_statistics, pool_statistics
from .in_process import InProcessFederation, federate_in_process
from .local_state import load_local_state, load_shared, local_keys, prior_scale_keys, save_local_state, shared_state
from .local_training import LocalTrainingSettings, site_feature_statistics, train_locally
from .network import SiteNetwork, site_network
from .recipe import FederatedJobPaths, check_site_datalists, federated_me_recipe
from .site_datalist import SiteData, SiteDataError, load_site_datalist
from .unseen_site import join_federation, population_network
from .variance_components import (
    additive_layers,
    pool_moments,
    posterior_moments,
    prior_scales,
    recentre,
    set_prior_scales,
    variance_components,
)
