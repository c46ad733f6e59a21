"""One name per role: the old names still build the same network for one release, with a DeprecationWarning."""

from __future__ import annotations

import pytest
import torch

from monai_medl.networks.nets import (
    ClusterAdversary,
    ClusterClassifier,
    ClusterPredictor,
    MultimodalMECNN,
    MultimodalMixedEffectsCNN,
    make_multimodal_me_cnn,
)


@pytest.mark.parametrize("old", [ClusterAdversary, ClusterPredictor])
def test_old_cluster_classifier_names_warn_and_build_the_same_network(old):
    torch.manual_seed(0)
    new = ClusterClassifier(in_features=6, num_clusters=3, hidden=(4,))
    torch.manual_seed(0)
    with pytest.warns(DeprecationWarning, match=f"{old.__name__} is deprecated.*use ClusterClassifier"):
        legacy = old(in_features=6, num_clusters=3, hidden=(4,))
    assert isinstance(legacy, ClusterClassifier)
    assert legacy.state_dict().keys() == new.state_dict().keys()
    x = torch.randn(5, 6)
    assert torch.equal(legacy.eval()(x), new.eval()(x))


@pytest.mark.parametrize("old", [MultimodalMixedEffectsCNN, MultimodalMECNN])
def test_old_factory_names_warn_and_build_what_the_factory_builds(old):
    torch.manual_seed(0)
    new = make_multimodal_me_cnn(num_clusters=2, modalities=("t1", "flair"), spatial_dims=2, fusion="concat")
    torch.manual_seed(0)
    with pytest.warns(DeprecationWarning, match=f"{old.__name__} is deprecated.*use make_multimodal_me_cnn"):
        legacy = old(num_clusters=2, modalities=("t1", "flair"), spatial_dims=2, fusion="concat")
    assert type(legacy) is type(new)
    assert all(torch.equal(a, b) for a, b in zip(legacy.state_dict().values(), new.state_dict().values()))


def test_the_new_names_do_not_warn(recwarn):
    ClusterClassifier(in_features=4, num_clusters=2)
    make_multimodal_me_cnn(num_clusters=2, spatial_dims=2)
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]
